"""Messages quote what the user gave: labels in their own dtype, byte order named, objects and sparse
input accepted when they convert exactly, refused with what was found (and what to do) otherwise."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastopt
from fastopt import layers, losses, optim
from fastopt._checks import DTypeError, as_labels, check_array
from fastopt.backend import available_backends, resolve_backend

BACKENDS = available_backends()


def small_model(outputs: int = 3) -> fastopt.Sequential:
    return fastopt.Sequential([layers.Dense(2, 4), layers.ReLU(), layers.Dense(4, outputs)], seed=0, backend="numpy")


X4 = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)


# ------------------------------------------------------------------------------------ labels out of range
@pytest.mark.parametrize(
    ("labels", "found"),
    [
        (np.array([0, 2**64 - 1], np.uint64), "0..18446744073709551615"),
        (np.array([1, 2**63], np.uint64), "1..9223372036854775808"),
        (np.array([0, 2**32 - 1], np.uint32), "0..4294967295"),
        (np.array([0, 255], np.uint8), "0..255"),
        (np.array([-128, 1], np.int8), "-128..1"),
        (np.array([-(2**63), 1], np.int64), "-9223372036854775808..1"),
        (np.array([0.0, 1e20]), "0.0..1e+20"),
        (np.array([0.0, 1e20], np.float32), "0.0..1e+20"),
        (np.array([-3.0, 1.0], np.float16), "-3.0..1.0"),
        (np.array([2.0**70, 3.0]), "3.0..1.1805916207174113e+21"),
        (np.array([5, 1], ">i8"), "1..5"),
    ],
    ids=lambda value: str(value.dtype) if isinstance(value, np.ndarray) else None,
)
def test_labels_out_of_range_are_quoted_as_given(labels, found):
    with pytest.raises(ValueError, match="out of range") as error:
        as_labels(labels, 3)
    assert f"found {found}," in str(error.value)
    with pytest.raises(ValueError, match=re.escape(f"found {found},")):
        small_model().fit(X4[: len(labels)], labels, loss=losses.CrossEntropy(), optimizer=optim.SGD())


def test_labels_in_range_of_every_dtype_convert_exactly():
    for dtype in (np.uint8, np.uint64, np.int8, ">i4", np.float16, np.float32, ">f8", np.bool_):
        labels = np.array([0, 1, 1, 0], dtype)
        assert as_labels(labels, 3).tolist() == [0, 1, 1, 0] and as_labels(labels, 3).dtype == np.int64


# ------------------------------------------------------------------------------------ byte order
@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [">f8", ">f4"])
def test_a_big_endian_kernel_buffer_is_named_as_such(backend_name, dtype):
    native = np.dtype(dtype).newbyteorder("=")
    param, grad = np.zeros(3, dtype), np.ones(3, native)
    with pytest.raises(DTypeError) as error:
        resolve_backend(backend_name).sgd_step(
            param, grad, None, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, first_step=True
        )
    message = str(error.value)
    assert "in native byte order, got " + np.dtype(dtype).str in message
    assert "big-endian" in message and f".astype(np.{native.name})" in message
    assert param.tolist() == [0, 0, 0]


def test_check_array_names_the_byte_order_only_when_it_is_the_difference():
    with pytest.raises(DTypeError, match=r"must have dtype float64 in native byte order, got >f8 \(big-endian\)"):
        check_array(np.zeros(2, ">f8"), "buffer", dtype=np.dtype(np.float64))
    with pytest.raises(DTypeError, match=r"must have dtype float64, got >f4$") as error:
        check_array(np.zeros(2, ">f4"), "buffer", dtype=np.dtype(np.float64))
    assert "byte order" not in str(error.value)
    with pytest.raises(DTypeError, match="must be float32 or float64, got int32"):
        check_array(np.zeros(2, np.int32), "buffer")


def test_big_endian_inputs_and_labels_are_converted():
    model = small_model()
    X, y = X4.astype(">f8"), np.array([0, 1, 2, 1], ">i2")
    expected = small_model().fit(X4, y.astype(np.int64), loss=losses.CrossEntropy(), optimizer=optim.SGD(), seed=0)
    history = model.fit(X, y, loss=losses.CrossEntropy(), optimizer=optim.SGD(), seed=0)
    assert history.history["loss"] == expected.history["loss"]
    assert np.array_equal(model.predict(X), model.predict(X4))


# ------------------------------------------------------------------------------------ objects that convert exactly
def test_pandas_nullable_frames_are_accepted_when_complete():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"a": pd.array([0.0, 0.0, 1.0, 1.0], dtype="Float32"), "b": pd.array([0, 1, 0, 1], dtype="Int64")}
    )
    labels = pd.Series(pd.array([0, 1, 2, 1], dtype="Int64"))
    assert np.asarray(frame).dtype == object  # what made the old message say "got dtype object"
    model, reference = small_model(), small_model()
    history = model.fit(frame, labels, loss=losses.CrossEntropy(), optimizer=optim.SGD(), seed=0)
    expected = reference.fit(X4, np.array([0, 1, 2, 1]), loss=losses.CrossEntropy(), optimizer=optim.SGD(), seed=0)
    assert history.history["loss"] == expected.history["loss"]
    assert np.array_equal(model.predict(frame), model.predict(X4))
    targets = pd.DataFrame({"t": pd.array([0.5, 1.0, 0.0, 2.0], dtype="Float64")})
    small_model(outputs=1).fit(frame, targets, loss=losses.MSE(), optimizer=optim.SGD())


def test_pandas_missing_values_are_refused_by_position():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(
        {"a": pd.array([0.0, 0.0, 1.0, 1.0], dtype="Float32"), "b": pd.array([0, 1, None, 1], dtype="Int64")}
    )
    with pytest.raises(ValueError, match=r"X has a missing value \(<NA>\) at index \(2, 1\): fill or drop it"):
        small_model().predict(frame)
    labels = pd.Series(pd.array([0, None, 2, 1], dtype="Int64"))  # pandas may give <NA> objects or NaN
    with pytest.raises(ValueError, match=r"missing value.* at index \(1,\)|at index \(1,\).*missing value"):
        small_model().fit(X4, labels, loss=losses.CrossEntropy())
    booleans = pd.Series(pd.array([True, None, False, True], dtype="boolean"))
    with pytest.raises(ValueError, match="missing value"):
        as_labels(booleans, 3)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (np.array([[0.5, None]], dtype=object), r"missing value \(None\) at index \(0, 1\)"),
        ([[0.5, "1.5"]], r"got dtype <U32"),
        (np.array([[0.5, "1.5"]], dtype=object), r"holds '1\.5' \(str\) at index \(0, 1\)"),
        (np.array([[0.5, 1 + 2j]], dtype=object), r"holds \(1\+2j\) \(complex\) at index \(0, 1\)"),
        (np.array([[0.5, [1]]], dtype=object), r"holds \[1\] \(list\) at index \(0, 1\)"),
        (np.array([[0.5, 2**70]], dtype=object), r"got dtype object"),
    ],
    ids=["none", "strings", "object-string", "complex", "list", "huge-int"],
)
def test_objects_that_do_not_convert_exactly_are_refused_naming_them(data, match):
    with pytest.raises(ValueError, match=match):
        fastopt.Sequential([layers.Dense(2, 3)], backend="numpy").predict(data)


def test_object_arrays_of_real_numbers_convert():
    data = np.array([[0, 1.5], [np.float32(2), True]], dtype=object)
    model = fastopt.Sequential([layers.Dense(2, 3)], backend="numpy", seed=0)
    assert np.array_equal(model.predict(data), model.predict(np.array([[0, 1.5], [2, 1]], np.float32)))
    assert as_labels(np.array([0, 2, np.int8(1)], dtype=object), 3).tolist() == [0, 2, 1]


# ------------------------------------------------------------------------------------ sparse input
@pytest.mark.parametrize("kind", ["csr_matrix", "csr_array", "coo_matrix", "csc_array", "lil_matrix"])
def test_sparse_input_is_refused_with_what_to_do(kind):
    sparse = pytest.importorskip("scipy.sparse")
    X = getattr(sparse, kind)(X4)
    message = r"sparse input is not supported: convert it with X\.toarray\(\)"
    with pytest.raises(TypeError, match=message):
        small_model().predict(X)
    with pytest.raises(TypeError, match=message):
        small_model().fit(X, np.array([0, 1, 2, 1]), loss=losses.CrossEntropy())
    with pytest.raises(TypeError, match=r"y is a sparse matrix .* convert it with y\.toarray\(\)"):
        small_model().fit(X4, getattr(sparse, kind)(np.eye(4, 3)), loss=losses.CrossEntropy())


def test_other_sparse_containers_are_refused_by_their_methods():
    class DenseLater:
        """Stands for a sparse container of another library: it converts only on request."""

        def todense(self) -> np.ndarray:
            return X4

    with pytest.raises(TypeError, match=r"convert it with X\.todense\(\)"):
        small_model().predict(DenseLater())
