"""Refused inputs: every case names its exception type and the problem in the message, and a refused call
leaves the model (and optimizer, and kernel outputs) untouched."""

from __future__ import annotations

import numpy as np
import pytest

import fastopt
from fastopt import layers, losses, optim
from fastopt.backend import resolve_backend

BACKENDS = fastopt.available_backends()
N_FEATURES, N_CLASSES, N_SAMPLES = 4, 10, 6


def _X(**changes):
    X = np.random.default_rng(0).random((N_SAMPLES, N_FEATURES)).astype(np.float32)
    for (row, col), value in changes.get("set", {}).items():
        X[row, col] = value
    return X


def _y():
    return np.arange(N_SAMPLES) % N_CLASSES


def _model():
    return fastopt.Sequential(
        [layers.Dense(N_FEATURES, 8), layers.ReLU(), layers.Dense(8, N_CLASSES)], dtype="float32", seed=0
    )


def _big_X(bad):
    X = np.zeros((2**16 + 3, N_FEATURES), dtype=np.float32)
    X[-1, -1] = bad
    return X


def _not_one_hot():
    rows = np.eye(N_CLASSES)[_y()]
    rows[2, 5] = 1  # two ones in a row
    return rows


# (overrides of fit's arguments, exception type, message pattern)
FIT_CASES = [
    pytest.param({"y": np.arange(5)}, ValueError, "different lengths: 6 and 5", id="X-y-length-mismatch"),
    pytest.param({"X": np.zeros((6, 5))}, ValueError, "5 features but the model expects 4", id="wrong-feature-count"),
    pytest.param({"X": np.zeros(4)}, ValueError, "must be 2-D.*1-D", id="X-1d"),
    pytest.param({"X": np.zeros((6, 4, 1))}, ValueError, "must be 2-D.*3-D", id="X-3d"),
    pytest.param({"X": np.full((6, 4), object())}, TypeError, "real numbers.*object", id="X-object-dtype"),
    pytest.param({"X": np.full((6, 4), "a")}, TypeError, "real numbers.*<U1", id="X-strings"),
    pytest.param({"X": np.ones((6, 4), dtype=np.complex128)}, TypeError, "real numbers.*complex", id="X-complex"),
    pytest.param({"X": _X(set={(1, 2): np.nan})}, ValueError, "NaN or Inf", id="X-nan"),
    pytest.param({"X": _X(set={(3, 0): np.inf})}, ValueError, "NaN or Inf", id="X-inf"),
    pytest.param({"X": _X(set={(3, 0): -np.inf})}, ValueError, "NaN or Inf", id="X-minus-inf"),
    pytest.param(
        {"X": np.full((6, 4), 1e39)},
        ValueError,
        "too large for float32",
        id="X-overflows-float32",
        marks=pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning"),
    ),
    pytest.param({"y": np.array([0, 1, 2, 3, 4, 10])}, ValueError, "out of range.*10 classes", id="label-too-large"),
    pytest.param({"y": np.array([0, 1, -1, 3, 4, 5])}, ValueError, "out of range.*-1", id="label-negative"),
    pytest.param({"y": np.array([0, 1, 0.5, 3, 4, 5])}, ValueError, "non-integer labels", id="label-fraction"),
    pytest.param({"y": np.array([0, 1, np.nan, 3, 4, 5])}, ValueError, "non-integer labels", id="label-nan"),
    pytest.param({"y": np.array(["a"] * 6)}, TypeError, "class labels", id="label-strings"),
    pytest.param({"y": _not_one_hot()}, ValueError, "not one-hot", id="rows-not-one-hot"),
    pytest.param({"y": np.zeros((6, 10))}, ValueError, "not one-hot", id="rows-all-zero"),
    pytest.param(
        {"y": np.eye(3)[[0, 1, 2, 0, 1, 2]]}, ValueError, "3 columns but the model has 10", id="one-hot-width"
    ),
    pytest.param({"y": np.zeros((6, 10, 1), dtype=int)}, ValueError, "1-D labels or 2-D one-hot", id="y-3d"),
    pytest.param({"X": np.zeros((0, 4)), "y": np.zeros(0, dtype=int)}, ValueError, "empty", id="X-empty"),
    pytest.param({"batch_size": 0}, ValueError, "batch_size must be >= 1", id="batch-size-0"),
    pytest.param({"batch_size": -1}, ValueError, "batch_size must be >= 1", id="batch-size-negative"),
    pytest.param({"batch_size": 2.5}, TypeError, "batch_size must be an integer", id="batch-size-float"),
    pytest.param({"batch_size": True}, TypeError, "batch_size must be an integer", id="batch-size-bool"),
    pytest.param({"epochs": 0}, ValueError, "epochs must be >= 1", id="epochs-0"),
    pytest.param({"epochs": "3"}, TypeError, "epochs must be an integer", id="epochs-string"),
    pytest.param({"loss": "cross_entropy"}, TypeError, "loss must be a fastopt loss", id="bad-loss-object"),
    pytest.param({"loss": losses.CrossEntropy}, TypeError, "loss must be a fastopt loss", id="loss-class"),
    pytest.param({"optimizer": "adam"}, TypeError, "optimizer must be a fastopt optimizer", id="bad-optimizer-object"),
    pytest.param({"optimizer": optim.Adam}, TypeError, "optimizer must be a fastopt optimizer", id="optimizer-class"),
    pytest.param(
        {"validation_data": (_X(),)}, ValueError, "validation_data must be a pair", id="validation-not-a-pair"
    ),
    pytest.param({"validation_data": _X()}, ValueError, "validation_data must be a pair", id="validation-an-array"),
    pytest.param(
        {"validation_data": (np.zeros((3, 5)), np.zeros(3, dtype=int))},
        ValueError,
        "X_val has 5 features",
        id="validation-X-wrong-features",
    ),
    pytest.param(
        {"validation_data": (_X(), np.arange(5))},
        ValueError,
        "X_val and y_val have different lengths",
        id="validation-length-mismatch",
    ),
    pytest.param(
        {"validation_data": (_X(), np.full(6, 11))}, ValueError, "out of range", id="validation-label-out-of-range"
    ),
    pytest.param(
        {"validation_data": (_X(set={(5, 3): np.nan}), _y())}, ValueError, "X_val contains NaN", id="validation-X-nan"
    ),
    # More than 2**18 values: the compiled NaN/Inf check splits them over threads; the bad value is the last.
    pytest.param({"X": _big_X(np.inf)}, ValueError, "X contains NaN or Inf", id="X-big-inf-last"),
    pytest.param({"X": _big_X(np.nan)}, ValueError, "X contains NaN or Inf", id="X-big-nan-last"),
    pytest.param(
        {"optimizer": optim.Adam(lr=1e-3, eps=1e39)},
        ValueError,
        "eps=1e\\+39 is beyond the range of float32",
        id="eps-beyond-the-float32-model",
    ),
]


@pytest.mark.parametrize(("overrides", "exception", "match"), FIT_CASES)
def test_fit_refuses(overrides, exception, match):
    model = _model()
    before = model.parameters.copy()
    optimizer = optim.SGD(lr=0.1)
    arguments = {"X": _X(), "y": _y(), "optimizer": optimizer, "epochs": 1, "batch_size": 2}
    arguments.update(overrides)
    with pytest.raises(exception, match=match):
        model.fit(**arguments)
    assert np.array_equal(model.parameters, before)
    assert optimizer.params is None and optimizer.step_count == 0
    assert model.optimizer is None and model.loss is None


EVALUATE_CASES = [case for case in FIT_CASES if set(case.values[0]) <= {"X", "y", "loss"}]


@pytest.mark.parametrize(("overrides", "exception", "match"), EVALUATE_CASES)
def test_evaluate_refuses(overrides, exception, match):
    model = _model()
    before = model.parameters.copy()
    arguments = {"X": _X(), "y": _y()}
    arguments.update(overrides)
    with pytest.raises(exception, match=match):
        model.evaluate(**arguments)
    assert np.array_equal(model.parameters, before)


PREDICT_CASES = [
    *(case for case in FIT_CASES if set(case.values[0]) == {"X"}),
    pytest.param({"batch_size": 0}, ValueError, "batch_size must be >= 1", id="batch-size-0"),
    pytest.param({"batch_size": 2.5}, TypeError, "batch_size must be an integer", id="batch-size-float"),
]


@pytest.mark.parametrize(("overrides", "exception", "match"), PREDICT_CASES)
def test_predict_refuses(overrides, exception, match):
    model = _model()
    before = model.parameters.copy()
    arguments = {"X": _X()}
    arguments.update(overrides)
    with pytest.raises(exception, match=match):
        model.predict(arguments.pop("X"), **arguments)
    assert np.array_equal(model.parameters, before)


def test_mse_fit_refuses_targets_of_the_wrong_shape_or_with_nan():
    model = _model()
    before = model.parameters.copy()
    with pytest.raises(ValueError, match=r"shape \(samples, 10\)"):
        model.fit(_X(), np.zeros((6, 3)), loss=losses.MSE())
    with pytest.raises(ValueError, match="NaN or Inf"):
        model.fit(_X(), np.full((6, 10), np.nan), loss=losses.MSE())
    with pytest.raises(TypeError, match="real numbers"):
        model.fit(_X(), np.full((6, 10), "x"), loss=losses.MSE())
    assert np.array_equal(model.parameters, before)


# ------------------------------------------------------------------------------------------ construction
CONSTRUCTOR_CASES = [
    pytest.param(lambda: layers.Dense(0, 3), ValueError, "in_features must be >= 1", id="dense-zero-inputs"),
    pytest.param(lambda: layers.Dense(2, -3), ValueError, "out_features must be >= 1", id="dense-negative-outputs"),
    pytest.param(lambda: layers.Dense(2.0, 3), TypeError, "in_features must be an integer", id="dense-float-size"),
    pytest.param(lambda: layers.Dense(2, 3, init="bogus"), ValueError, "init must be one of", id="dense-bad-init"),
    pytest.param(lambda: fastopt.Sequential([]), ValueError, "non-empty list", id="sequential-empty"),
    pytest.param(
        lambda: fastopt.Sequential(layers.Dense(2, 2)), ValueError, "non-empty list", id="sequential-not-a-list"
    ),
    pytest.param(
        lambda: fastopt.Sequential([layers.ReLU(), layers.Dense(2, 2)]),
        ValueError,
        "first layer must be Dense",
        id="sequential-starts-with-activation",
    ),
    pytest.param(
        lambda: fastopt.Sequential([layers.Dense(2, 2), "relu"]),
        TypeError,
        r"layers\[1\] is not a fastopt layer",
        id="sequential-non-layer",
    ),
    pytest.param(
        lambda: fastopt.Sequential([layers.Dense(2, 2)], dtype="int32"),
        ValueError,
        "dtype must be 'float32' or 'float64', got int32",
        id="dtype-int32",
    ),
    pytest.param(
        lambda: fastopt.Sequential([layers.Dense(2, 2)], dtype="float16"),
        ValueError,
        "dtype must be 'float32' or 'float64', got float16",
        id="dtype-float16",
    ),
    pytest.param(
        lambda: fastopt.Sequential([layers.Dense(2, 2)], dtype="nonsense"),
        TypeError,
        "dtype must be 'float32' or 'float64'",
        id="dtype-nonsense",
    ),
    pytest.param(
        lambda: fastopt.Sequential([layers.Dense(2, 3), layers.ReLU(), layers.Dense(4, 2)]),
        ValueError,
        r"Dense\(4, 2\) receives 3 features",
        id="mismatched-dense-sizes",
    ),
    pytest.param(
        lambda: fastopt.Sequential([layers.Dense(2, 2)], backend="nosuch"),
        ValueError,
        "unknown backend 'nosuch'",
        id="unknown-backend",
    ),
    pytest.param(lambda: fastopt.set_backend("nosuch"), ValueError, "unknown backend 'nosuch'", id="set-backend"),
    pytest.param(lambda: fastopt.set_backend(3), TypeError, "backend must be a name", id="set-backend-not-a-name"),
    pytest.param(
        lambda: optim.Adam([np.zeros(3, np.float32)], lr=1e300),
        ValueError,
        r"lr=1e\+300 is beyond the range of float32",
        id="lr-beyond-float32",
    ),
    pytest.param(
        lambda: optim.SGD([np.zeros(3), np.zeros(2, np.float32)], lr=0.1, weight_decay=1e39),
        ValueError,
        r"weight_decay=1e\+39 is beyond the range of float32",
        id="weight-decay-beyond-the-narrowest-param",
    ),
]


@pytest.mark.parametrize(("make", "exception", "match"), CONSTRUCTOR_CASES)
def test_construction_refuses(make, exception, match):
    backend_before = fastopt.get_backend()
    with pytest.raises(exception, match=match):
        make()
    assert fastopt.get_backend() == backend_before


def test_cross_entropy_needs_two_outputs():
    model = fastopt.Sequential([layers.Dense(4, 1)], seed=0)
    before = model.parameters.copy()
    with pytest.raises(ValueError, match="at least 2 outputs"):
        model.fit(_X(), np.zeros(6, dtype=int), loss=losses.CrossEntropy())
    assert np.array_equal(model.parameters, before)


# ------------------------------------------------------------------------------------------ loss objects
MSE, CE = losses.MSE(), losses.CrossEntropy()
# (loss, y_pred, y_true, exception type, message pattern)
LOSS_CALL_CASES = [
    pytest.param(MSE, np.zeros(3), np.zeros(3), ValueError, "y_pred must be a 2-D float", id="mse-1d-pred"),
    pytest.param(CE, np.zeros((3, 2), dtype=int), [0, 1, 0], ValueError, "y_pred must be a 2-D float", id="ce-int"),
    pytest.param(CE, np.zeros((3, 2)), [0, 1, 2], ValueError, "out of range", id="ce-label-range"),
    pytest.param(CE, np.zeros((3, 2)), [0, 1], ValueError, "different lengths: 3 and 2", id="ce-lengths"),
    pytest.param(MSE, np.zeros((3, 2)), np.zeros((3, 3)), ValueError, r"shape \(samples, 2\)", id="mse-shape"),
    pytest.param(MSE, np.zeros((3, 2)), np.zeros((2, 2)), ValueError, "different lengths: 3 and 2", id="mse-lengths"),
    pytest.param(
        MSE, np.zeros((3, 2), np.float16), np.zeros((3, 2)), ValueError, "'float32' or 'float64'", id="mse-float16"
    ),
    # An empty batch has no mean: it must be refused, not answered with NaN.
    pytest.param(MSE, np.zeros((0, 2)), np.zeros((0, 2)), ValueError, "empty", id="mse-empty-batch"),
    pytest.param(CE, np.zeros((0, 2)), np.zeros(0, np.int64), ValueError, "empty|batch >= 1", id="ce-empty-batch"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("loss", "y_pred", "y_true", "exception", "match"), LOSS_CALL_CASES)
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_loss_call_refuses(loss, y_pred, y_true, exception, match, backend):
    with pytest.raises(exception, match=match):
        loss(y_pred, y_true, backend=backend)


# ------------------------------------------------------------------------------------------ kernel entry points
def _dense_arrays(dtype=np.float32, batch=3, n_in=4, n_out=2):
    rng = np.random.default_rng(0)
    return {
        "x": rng.random((batch, n_in)).astype(dtype),
        "weight": rng.random((n_in, n_out)).astype(dtype),
        "bias": rng.random(n_out).astype(dtype),
        "out": np.full((batch, n_out), 7, dtype=dtype),
    }


def _dense_case(activation="identity", **changes):
    def make(backend):
        arrays = _dense_arrays()
        for name, change in changes.items():
            arrays[name] = change(arrays)
        return lambda: backend.dense_forward(**arrays, activation=activation), [arrays["out"], arrays["x"]]

    return make


def _read_only(array):
    array.flags.writeable = False
    return array


def _aliasing_out(backend):
    x = np.random.default_rng(0).random((3, 3)).astype(np.float32)
    weight = np.eye(3, dtype=np.float32)
    bias = np.zeros(3, dtype=np.float32)
    return lambda: backend.dense_forward(x, weight, bias, x), [x]


def _adam_arrays(n=5, dtype=np.float64):
    rng = np.random.default_rng(0)
    return {
        "param": rng.random(n).astype(dtype),
        "grad": rng.random(n).astype(dtype),
        "exp_avg": np.zeros(n, dtype=dtype),
        "exp_avg_sq": np.zeros(n, dtype=dtype),
        "max_exp_avg_sq": None,
    }


ADAM_SCALARS = {
    "lr": 1e-3,
    "beta1": 0.9,
    "beta2": 0.999,
    "eps": 1e-8,
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "bias_correction1": 0.1,
    "bias_correction2": 0.001,
}


def _adam_case(scalars=None, **changes):
    def make(backend):
        arrays = _adam_arrays()
        for name, change in changes.items():
            arrays[name] = change(arrays)
        options = dict(ADAM_SCALARS, **(scalars or {}))
        watched = [array for array in arrays.values() if array is not None]
        return lambda: backend.adam_step(**arrays, **options), watched

    return make


def _cross_entropy_case(labels):
    def make(backend):
        logits = np.zeros((3, 4))
        grad = np.full((3, 4), 7.0)
        return lambda: backend.softmax_cross_entropy(logits, labels, grad), [grad]

    return make


def _sgd_without_buffer(backend):
    param, grad = np.ones(4), np.ones(4)
    call = lambda: backend.sgd_step(  # noqa: E731
        param, grad, None, lr=0.1, momentum=0.9, dampening=0.0, nesterov=False, weight_decay=0.0, first_step=True
    )
    return call, [param]


def _mse_mixed_dtype(backend):
    pred, grad = np.zeros((2, 3), dtype=np.float32), np.full((2, 3), 7, dtype=np.float32)
    return lambda: backend.mse(pred, np.zeros((2, 3)), grad), [grad]


def _all_finite_case(x):
    def make(backend):
        return lambda: backend.all_finite(x), [x] if isinstance(x, np.ndarray) and x.dtype != object else []

    return make


def _gather_arrays(dtype=np.float32):
    """source (6, 4), rows (3,), out (3, 4): the valid call each gather_rows case changes one thing of."""
    return {
        "source": np.random.default_rng(0).random((6, 4)).astype(dtype),
        "rows": np.array([5, 0, 2], dtype=np.int64),
        "out": np.full((3, 4), 7, dtype=dtype),
    }


def _gather_case(dtype=np.float32, **changes):
    def make(backend):
        arrays = _gather_arrays(dtype)
        for name, change in changes.items():
            arrays[name] = change(arrays)
        watched = [array for array in arrays.values() if isinstance(array, np.ndarray) and array.dtype != object]
        return lambda: backend.gather_rows(**arrays), watched

    return make


def _rows(*values, dtype=np.int64):
    return lambda a: np.array(values, dtype=dtype)


KERNEL_CASES = [
    pytest.param(
        _dense_case(weight=lambda a: np.ones((5, 2), np.float32)),
        ValueError,
        r"weight must have shape \(4, out_features\)",
        id="dense-wrong-weight-shape",
    ),
    pytest.param(
        _dense_case(weight=lambda a: a["weight"].astype(np.float64)),
        TypeError,
        "weight must have dtype float32, got float64",
        id="dense-float32-x-float64-weight",
    ),
    pytest.param(
        _dense_case(x=lambda a: np.ones((3, 8), np.float32)[:, ::2]),
        ValueError,
        "x must be C-contiguous",
        id="dense-non-contiguous-x",
    ),
    pytest.param(
        _dense_case(x=lambda a: np.asfortranarray(np.ones((3, 4), np.float32))),
        ValueError,
        "x must be C-contiguous",
        id="dense-fortran-x",
    ),
    pytest.param(
        _dense_case(out=lambda a: _read_only(a["out"])), ValueError, "out is read-only", id="dense-read-only-out"
    ),
    pytest.param(_aliasing_out, ValueError, "out and x share memory", id="dense-out-aliases-x"),
    pytest.param(
        _dense_case(bias=lambda a: np.zeros(3, np.float32)), ValueError, r"bias must have shape \(2,\)", id="dense-bias"
    ),
    pytest.param(
        _dense_case(out=lambda a: np.zeros((3, 3), np.float32)),
        ValueError,
        r"out must have shape",
        id="dense-out-shape",
    ),
    pytest.param(
        _dense_case(x=lambda a: a["x"].astype(np.int64)), TypeError, "x must be float32 or float64", id="dense-int-x"
    ),
    pytest.param(_dense_case(x=lambda a: a["x"].tolist()), TypeError, "x must be a numpy.ndarray", id="dense-list-x"),
    pytest.param(
        _dense_case(activation="gelu"), ValueError, "activation must be one of", id="dense-unknown-activation"
    ),
    pytest.param(
        _adam_case(exp_avg=lambda a: a["param"]), ValueError, "param and exp_avg share memory", id="adam-param-is-m"
    ),
    pytest.param(
        _adam_case(exp_avg_sq=lambda a: a["exp_avg"]),
        ValueError,
        "exp_avg and exp_avg_sq share memory",
        id="adam-m-is-v",
    ),
    pytest.param(
        _adam_case(grad=lambda a: np.ones(6)), ValueError, r"grad must have shape \(5,\)", id="adam-grad-shape"
    ),
    pytest.param(
        _adam_case(grad=lambda a: a["param"]), ValueError, "param and grad share memory", id="adam-grad-is-param"
    ),
    pytest.param(
        _adam_case(exp_avg=lambda a: np.zeros(5, np.float32)),
        TypeError,
        "exp_avg must have dtype float64",
        id="adam-state-dtype",
    ),
    pytest.param(_adam_case({"beta1": 1.0}), ValueError, "beta1 must be < 1.0", id="adam-beta1-one"),
    pytest.param(_adam_case({"lr": -1.0}), ValueError, "lr must be >= 0", id="adam-negative-lr"),
    pytest.param(_adam_case({"eps": float("nan")}), ValueError, "eps must be finite", id="adam-nan-eps"),
    pytest.param(
        _adam_case({"bias_correction1": 0.0}), ValueError, "bias_correction1 must be > 0", id="adam-zero-correction"
    ),
    pytest.param(
        _cross_entropy_case(np.array([0, 4, 1])), ValueError, r"labels must lie in \[0, 4\)", id="ce-label-too-large"
    ),
    pytest.param(
        _cross_entropy_case(np.array([0, -1, 1])), ValueError, r"labels must lie in \[0, 4\)", id="ce-label-negative"
    ),
    pytest.param(
        _cross_entropy_case(np.array([0, 1, 2], dtype=np.int32)),
        TypeError,
        "labels must have dtype int64, got int32",
        id="ce-int32-labels",
    ),
    pytest.param(
        _cross_entropy_case(np.array([0, 1])), ValueError, r"labels must have shape \(3,\)", id="ce-labels-length"
    ),
    pytest.param(_sgd_without_buffer, ValueError, "momentum_buffer must be given", id="sgd-missing-buffer"),
    pytest.param(
        _all_finite_case(np.ones(5, dtype=np.int64)),
        TypeError,
        "x must be float32 or float64, got int64",
        id="all-finite-int",
    ),
    pytest.param(
        _all_finite_case(np.ones(5, dtype=bool)),
        TypeError,
        "x must be float32 or float64, got bool",
        id="all-finite-bool",
    ),
    pytest.param(
        _all_finite_case(np.ones(5, dtype=np.float16)),
        TypeError,
        "x must be float32 or float64",
        id="all-finite-float16",
    ),
    pytest.param(
        _all_finite_case(np.ones(5, dtype=np.complex128)),
        TypeError,
        "x must be float32 or float64",
        id="all-finite-complex",
    ),
    pytest.param(
        _all_finite_case(np.ones(5, dtype=object)),
        TypeError,
        "x must be float32 or float64, got object",
        id="all-finite-object",
    ),
    pytest.param(
        _all_finite_case(np.ones(5, dtype=">f8")),
        TypeError,
        "x must be float32 or float64",
        id="all-finite-byte-swapped",
    ),
    pytest.param(_all_finite_case(np.ones(10)[::2]), ValueError, "x must be C-contiguous", id="all-finite-strided"),
    pytest.param(_all_finite_case(np.ones((3, 4)).T), ValueError, "x must be C-contiguous", id="all-finite-transposed"),
    pytest.param(_all_finite_case([1.0, 2.0]), TypeError, "x must be a numpy.ndarray, got list", id="all-finite-list"),
    pytest.param(_all_finite_case(1.0), TypeError, "x must be a numpy.ndarray, got float", id="all-finite-scalar"),
    pytest.param(_all_finite_case(None), TypeError, "x must be a numpy.ndarray, got NoneType", id="all-finite-none"),
    pytest.param(_mse_mixed_dtype, TypeError, "target must have dtype float32", id="mse-mixed-dtype"),
    pytest.param(
        _gather_case(rows=_rows(0, -1, 2)),
        ValueError,
        r"rows must lie in \[0, 6\), found -1\.\.2",
        id="gather-row-negative",
    ),
    pytest.param(
        _gather_case(rows=_rows(0, 6, 2)),
        ValueError,
        r"rows must lie in \[0, 6\), found 0\.\.6",
        id="gather-row-equals-n",
    ),
    pytest.param(_gather_case(rows=_rows(0, 2**40, 2)), ValueError, r"rows must lie in \[0, 6\)", id="gather-row-huge"),
    pytest.param(
        _gather_case(source=lambda a: np.zeros((0, 4), np.float32)),
        ValueError,
        r"rows must lie in \[0, 0\)",
        id="gather-empty-source",
    ),
    pytest.param(
        _gather_case(rows=_rows(0.0, 1.0, 2.0, dtype=np.float64)),
        TypeError,
        "rows must have dtype int64, got float64",
        id="gather-float-rows",
    ),
    pytest.param(
        _gather_case(rows=_rows(0, 1, 2, dtype=np.int32)),
        TypeError,
        "rows must have dtype int64, got int32",
        id="gather-int32-rows",
    ),
    pytest.param(
        _gather_case(rows=_rows(0, 1, 2, dtype=np.uint64)),
        TypeError,
        "rows must have dtype int64, got uint64",
        id="gather-uint64-rows",
    ),
    pytest.param(
        _gather_case(rows=_rows(0, 1, 2, dtype=">i8")),
        TypeError,
        "rows must have dtype int64",
        id="gather-byte-swapped-rows",
    ),
    pytest.param(
        _gather_case(rows=_rows(True, False, True, dtype=bool)),
        TypeError,
        "rows must have dtype int64, got bool",
        id="gather-bool-rows",
    ),
    pytest.param(
        _gather_case(rows=lambda a: np.array([[0, 1], [2, 3]], dtype=np.int64)),
        ValueError,
        r"rows must be 1-D \(batch\), got shape \(2, 2\)",
        id="gather-2d-rows",
    ),
    pytest.param(
        _gather_case(rows=lambda a: np.array(1, dtype=np.int64)),
        ValueError,
        r"rows must be 1-D \(batch\), got shape \(\)",
        id="gather-0d-rows",
    ),
    pytest.param(
        _gather_case(rows=lambda a: np.arange(6, dtype=np.int64)[::2]),
        ValueError,
        "rows must be C-contiguous",
        id="gather-strided-rows",
    ),
    pytest.param(
        _gather_case(rows=lambda a: [5, 0, 2]),
        TypeError,
        "rows must be a numpy.ndarray, got list",
        id="gather-list-rows",
    ),
    pytest.param(
        _gather_case(rows=lambda a: None),
        TypeError,
        "rows must be a numpy.ndarray, got NoneType",
        id="gather-none-rows",
    ),
    pytest.param(
        _gather_case(source=lambda a: a["source"].reshape(-1)),
        ValueError,
        r"source must be 2-D \(samples, features\), got shape \(24,\)",
        id="gather-1d-source",
    ),
    pytest.param(
        _gather_case(source=lambda a: a["source"].reshape(6, 2, 2)),
        ValueError,
        r"source must be 2-D \(samples, features\), got shape \(6, 2, 2\)",
        id="gather-3d-source",
    ),
    pytest.param(
        _gather_case(source=lambda a: a["source"].astype(np.int64)),
        TypeError,
        "source must be float32 or float64, got int64",
        id="gather-int-source",
    ),
    pytest.param(
        _gather_case(source=lambda a: a["source"].astype(np.float16)),
        TypeError,
        "source must be float32 or float64, got float16",
        id="gather-float16-source",
    ),
    pytest.param(
        _gather_case(source=lambda a: np.asfortranarray(a["source"])),
        ValueError,
        "source must be C-contiguous",
        id="gather-fortran-source",
    ),
    pytest.param(
        _gather_case(source=lambda a: a["source"].tolist()),
        TypeError,
        "source must be a numpy.ndarray, got list",
        id="gather-list-source",
    ),
    pytest.param(
        _gather_case(source=lambda a: 1.0),
        TypeError,
        "source must be a numpy.ndarray, got float",
        id="gather-scalar-source",
    ),
    pytest.param(
        _gather_case(out=lambda a: np.full((3, 5), 7, np.float32)),
        ValueError,
        r"out must have shape \(3, 4\), got \(3, 5\)",
        id="gather-out-width",
    ),
    pytest.param(
        _gather_case(out=lambda a: np.full((2, 4), 7, np.float32)),
        ValueError,
        r"out must have shape \(3, 4\), got \(2, 4\)",
        id="gather-out-batch",
    ),
    pytest.param(
        _gather_case(out=lambda a: np.full(12, 7, np.float32)),
        ValueError,
        r"out must have shape \(3, 4\), got \(12,\)",
        id="gather-out-flat",
    ),
    pytest.param(
        _gather_case(out=lambda a: np.full((3, 4), 7, np.float64)),
        TypeError,
        "out must have dtype float32, got float64",
        id="gather-out-dtype",
    ),
    pytest.param(
        _gather_case(np.float64, out=lambda a: np.full((3, 4), 7, np.float32)),
        TypeError,
        "out must have dtype float64, got float32",
        id="gather-float64-source-float32-out",
    ),
    pytest.param(
        _gather_case(out=lambda a: _read_only(a["out"])), ValueError, "out is read-only", id="gather-read-only-out"
    ),
    pytest.param(
        _gather_case(out=lambda a: np.full((3, 8), 7, np.float32)[:, ::2]),
        ValueError,
        "out must be C-contiguous",
        id="gather-strided-out",
    ),
    pytest.param(
        _gather_case(out=lambda a: np.asfortranarray(a["out"])),
        ValueError,
        "out must be C-contiguous",
        id="gather-fortran-out",
    ),
    pytest.param(
        _gather_case(out=lambda a: a["source"][:3]),
        ValueError,
        "out and source share memory",
        id="gather-out-is-source-head",
    ),
    pytest.param(
        _gather_case(out=lambda a: a["source"][2:5]),
        ValueError,
        "out and source share memory",
        id="gather-out-inside-source",
    ),
    pytest.param(
        _gather_case(
            np.float64, source=lambda a: np.ones((6, 1)), out=lambda a: a["rows"].view(np.float64).reshape(3, 1)
        ),
        ValueError,
        "out and rows share memory",
        id="gather-out-is-rows",
    ),
    pytest.param(
        _gather_case(out=lambda a: a["out"].tolist()),
        TypeError,
        "out must be a numpy.ndarray, got list",
        id="gather-list-out",
    ),
    pytest.param(
        _gather_case(out=lambda a: None), TypeError, "out must be a numpy.ndarray, got NoneType", id="gather-none-out"
    ),
]


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(("make", "exception", "match"), KERNEL_CASES)
def test_kernel_entry_point_refuses(backend_name, make, exception, match):
    backend = resolve_backend(backend_name)
    call, watched = make(backend)
    copies = [np.array(array, copy=True) for array in watched]
    with pytest.raises(exception, match=match):
        call()
    for array, copy in zip(watched, copies):
        assert np.array_equal(array, copy), "a refused kernel call wrote into its buffers"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_kernel_entry_points_accept_read_only_inputs(backend_name):
    """The counterpart of the refusals: read-only inputs are fine, only outputs must be writeable."""
    backend = resolve_backend(backend_name)
    arrays = _dense_arrays(dtype=np.float64)
    for name in ("x", "weight", "bias"):
        _read_only(arrays[name])
    out = backend.dense_forward(**arrays, activation="relu")
    np.testing.assert_allclose(out, np.maximum(arrays["x"] @ arrays["weight"] + arrays["bias"], 0), rtol=1e-12)


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gather_rows_accepts_edge_rows_and_read_only_inputs(backend_name, dtype):
    """The counterpart of the gather_rows refusals: rows 0 and N - 1, repeated and unordered, from read-only
    inputs; an empty batch (also from an empty source); the output is returned."""
    backend = resolve_backend(backend_name)
    arrays = _gather_arrays(dtype)
    source, rows = _read_only(arrays["source"]), _read_only(np.array([5, 0, 5, 3, 0], dtype=np.int64))
    out = np.full((5, 4), 7, dtype=dtype)
    assert backend.gather_rows(source, rows, out) is out
    assert np.array_equal(out, source[[5, 0, 5, 3, 0]])
    for empty_source in (source, np.zeros((0, 4), dtype=dtype)):
        out = np.empty((0, 4), dtype=dtype)
        assert backend.gather_rows(empty_source, np.empty(0, dtype=np.int64), out) is out
