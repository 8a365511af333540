"""Sequential: training, History, reproducibility, prediction, files, flat buffers, backends, NaN detection."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastopt
from fastopt import _io, datasets, layers, losses, optim
from fastopt._io import FileFormatError

BACKENDS = fastopt.available_backends()
HISTORY_KEYS = {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}


@pytest.fixture(scope="module")
def mini_subset():
    X_train, y_train, X_test, y_test = datasets.mini()
    return X_train[:1000], y_train[:1000], X_test[:200], y_test[:200]


@pytest.fixture
def restore_backend():
    """Put the process-wide default backend back after a test that changes it."""
    saved = fastopt.get_backend()
    yield saved
    fastopt.set_backend(saved)


def small_mlp(dtype="float32", seed=0, backend=None, n_in=784, n_out=10):
    return fastopt.Sequential(
        [layers.Dense(n_in, 16), layers.ReLU(), layers.Dense(16, 12), layers.Tanh(), layers.Dense(12, n_out)],
        dtype=dtype,
        seed=seed,
        backend=backend,
    )


def xor_model(seed, backend):
    return fastopt.Sequential(
        [layers.Dense(2, 8), layers.Dense(8, 4), layers.Sigmoid(), layers.Dense(4, 2), layers.Softmax()],
        seed=seed,
        backend=backend,
    )


# ------------------------------------------------------------------------------------------ XOR
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_xor_is_learned_with_mse_and_rmsprop(backend, seed):
    X, y = datasets.xor()
    model = xor_model(seed, backend)
    history = model.fit(X, y, loss=losses.MSE(), optimizer=optim.RMSProp(lr=0.02), epochs=200, batch_size=4, seed=seed)
    predictions = model.predict(X)
    assert np.array_equal(predictions.argmax(axis=1), y), predictions
    assert history.history["accuracy"][-1] == 1.0
    assert history.history["loss"][-1] < history.history["loss"][0]
    # The final Softmax makes each output row a probability distribution.
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_xor_data():
    X, y = datasets.xor()
    assert X.dtype == np.float32 and X.shape == (4, 2)
    assert y.dtype == np.int64
    assert np.array_equal(y, np.logical_xor(X[:, 0], X[:, 1]).astype(np.int64))


# ------------------------------------------------------------------------------------------ History
def test_history_keys_and_lengths_with_validation(mini_subset):
    X, y, X_val, y_val = mini_subset
    model = small_mlp()
    history = model.fit(X, y, epochs=3, batch_size=64, seed=0, validation_data=(X_val, y_val))
    assert isinstance(history, fastopt.History)
    assert set(history.history) == HISTORY_KEYS
    for key, values in history.history.items():
        assert len(values) == 3, key
        assert all(math.isfinite(value) for value in values), key
    assert history.epochs == [1, 2, 3]
    assert all(0.0 <= value <= 1.0 for value in history.history["accuracy"] + history.history["val_accuracy"])
    assert all(value >= 0.0 for value in history.history["seconds"])
    # The last validation metrics are those of the final parameters.
    final = model.evaluate(X_val, y_val, loss=losses.CrossEntropy())
    assert history.history["val_loss"][-1] == pytest.approx(final["loss"], rel=1e-6)
    assert history.history["val_accuracy"][-1] == pytest.approx(final["accuracy"])


def test_history_has_no_validation_keys_without_validation_data(mini_subset):
    X, y, _, _ = mini_subset
    history = small_mlp().fit(X[:200], y[:200], epochs=2, batch_size=50, seed=0)
    assert set(history.history) == {"loss", "accuracy", "seconds"}
    assert all(len(values) == 2 for values in history.history.values())


def test_loss_decreases_on_mini_subset(mini_subset):
    X, y, X_val, y_val = mini_subset
    model = fastopt.Sequential(
        [layers.Dense(784, 128), layers.ReLU(), layers.Dense(128, 64), layers.ReLU(), layers.Dense(64, 10)], seed=0
    )
    before = model.evaluate(X, y, loss=losses.CrossEntropy())
    history = model.fit(
        X, y, loss=losses.CrossEntropy(), optimizer=optim.Adam(lr=1e-3), epochs=2, batch_size=32, seed=0
    )
    after = model.evaluate(X, y, loss=losses.CrossEntropy())
    assert history.history["loss"][1] < history.history["loss"][0]
    assert after["loss"] < before["loss"]
    assert after["accuracy"] > 0.6
    assert model.evaluate(X_val, y_val)["accuracy"] > 0.5


def test_mse_regression_reports_no_accuracy():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 4)).astype(np.float32)
    target = np.stack([X[:, 0] - X[:, 1], 0.5 * X[:, 2]], axis=1).astype(np.float32)
    model = fastopt.Sequential([layers.Dense(4, 8), layers.Tanh(), layers.Dense(8, 2)], seed=0)
    history = model.fit(
        X, target, loss=losses.MSE(), optimizer=optim.Adam(lr=1e-2), epochs=5, batch_size=16, seed=0,
        validation_data=(X[:16], target[:16]),
    )  # fmt: skip
    assert set(history.history) == {"loss", "val_loss", "seconds"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert set(model.evaluate(X, target, loss=losses.MSE())) == {"loss"}


def test_mse_with_class_labels_reports_accuracy():
    X, y = datasets.xor()
    model = xor_model(0, None)
    history = model.fit(X, y, loss=losses.MSE(), optimizer=optim.RMSProp(lr=0.02), epochs=2, batch_size=4)
    assert "accuracy" in history.history
    assert "accuracy" in model.evaluate(X, np.eye(2, dtype=np.float32)[y], loss=losses.MSE())


def test_on_epoch_end_receives_each_epochs_logs():
    X, y = datasets.xor()
    seen = []
    history = xor_model(0, None).fit(
        X, y, loss=losses.MSE(), epochs=3, batch_size=2, on_epoch_end=lambda epoch, logs: seen.append((epoch, logs))
    )
    assert [epoch for epoch, _ in seen] == [1, 2, 3]
    assert [logs["loss"] for _, logs in seen] == history.history["loss"]


# ------------------------------------------------------------------------------------------ reproducibility
def _train(mini_subset, backend, model_seed, fit_seed, dtype="float32"):
    X, y, _, _ = mini_subset
    model = small_mlp(dtype=dtype, seed=model_seed, backend=backend)
    model.fit(X[:300], y[:300], optimizer=optim.Adam(lr=1e-2), epochs=2, batch_size=32, seed=fit_seed)
    return model


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_same_seeds_give_bit_identical_parameters(mini_subset, backend, dtype):
    first = _train(mini_subset, backend, 3, 4, dtype)
    second = _train(mini_subset, backend, 3, 4, dtype)
    assert first.parameters.dtype == np.dtype(dtype)
    assert np.array_equal(first.parameters, second.parameters)


@pytest.mark.parametrize("backend", BACKENDS)
def test_different_seeds_give_different_parameters(mini_subset, backend):
    reference = _train(mini_subset, backend, 3, 4)
    other_init = _train(mini_subset, backend, 5, 4)
    other_shuffle = _train(mini_subset, backend, 3, 5)
    assert not np.array_equal(reference.parameters, other_init.parameters)
    assert not np.array_equal(reference.parameters, other_shuffle.parameters)


def test_initialization_depends_only_on_the_seed():
    assert np.array_equal(small_mlp(seed=7).parameters, small_mlp(seed=7).parameters)
    assert not np.array_equal(small_mlp(seed=7).parameters, small_mlp(seed=8).parameters)


# ------------------------------------------------------------------------------------------ prediction
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_call_and_batching_agree(mini_subset, backend, dtype):
    _, _, X_test, _ = mini_subset
    model = small_mlp(dtype=dtype, seed=1, backend=backend)
    whole = model.predict(X_test)
    assert whole.shape == (len(X_test), 10)
    assert whole.dtype == np.dtype(dtype)
    assert np.array_equal(whole, model(X_test))
    batched = model.predict(X_test, batch_size=7)
    assert batched.dtype == np.dtype(dtype)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(batched, whole, rtol=tolerance, atol=tolerance)
    # The output is a fresh array, not a view of a reused workspace buffer.
    kept = whole.copy()
    model.predict(X_test[::-1])
    assert np.array_equal(whole, kept)


def test_predict_matches_a_forward_pass_computed_by_hand():
    model = fastopt.Sequential(
        [layers.Dense(3, 4), layers.ReLU(), layers.Dense(4, 2), layers.Sigmoid()], dtype="float64", seed=2
    )
    X = np.random.default_rng(0).normal(size=(5, 3))
    first, second = model.layers[0], model.layers[2]
    hidden = np.maximum(X @ first.weight + first.bias, 0)
    expected = 1 / (1 + np.exp(-(hidden @ second.weight + second.bias)))
    np.testing.assert_allclose(model.predict(X), expected, rtol=1e-12)


@pytest.mark.parametrize("input_dtype", [np.uint8, np.int32, np.int64, np.float16, np.float64, np.bool_])
@pytest.mark.parametrize("model_dtype", ["float32", "float64"])
def test_inputs_of_other_dtypes_are_converted(input_dtype, model_dtype):
    model = small_mlp(dtype=model_dtype, seed=0, n_in=6)
    X = np.random.default_rng(0).integers(0, 2, size=(9, 6)).astype(input_dtype)
    out = model.predict(X)
    assert out.dtype == np.dtype(model_dtype)
    assert np.array_equal(out, model.predict(X.astype(model_dtype)))


def test_predict_accepts_lists_and_non_contiguous_arrays():
    model = small_mlp(seed=0, n_in=3)
    X = (np.arange(24, dtype=np.float32).reshape(4, 6) / 24)[:, ::2]
    assert not X.flags.c_contiguous
    expected = model.predict(np.ascontiguousarray(X))
    assert np.array_equal(model.predict(X), expected)
    assert np.array_equal(model.predict(X.tolist()), expected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_predict_without_input_checks_gives_the_same_bits(backend, dtype):
    model = small_mlp(dtype=dtype, seed=3, backend=backend, n_in=6)
    X = np.random.default_rng(0).normal(size=(40, 6)).astype(dtype)
    for batch_size in (1024, 7):
        checked = model.predict(X, batch_size=batch_size)
        assert np.array_equal(model.predict(X, batch_size=batch_size, check_input=False), checked)
    # the same batch size as the checked call: another one may take another BLAS kernel, with other bits
    checked = model.predict(X)
    X.flags.writeable = False  # read where it lies: a read-only batch is fine
    first = model.predict(X, check_input=False)
    model.predict(X[::-1].copy(), check_input=False)  # the workspace is reused: the first result must not change
    assert np.array_equal(first, checked)


@pytest.mark.parametrize(
    "X, exception, match",
    [
        ([[0.0] * 6], TypeError, "numpy array of float32"),
        (np.zeros((2, 6), dtype=np.float64), TypeError, "numpy array of float32"),
        (np.zeros((2, 5), dtype=np.float32), ValueError, r"shape \(N >= 1, 6\)"),
        (np.zeros((0, 6), dtype=np.float32), ValueError, r"shape \(N >= 1, 6\)"),
        (np.zeros(6, dtype=np.float32), ValueError, r"shape \(N >= 1, 6\)"),
        (np.zeros((2, 12), dtype=np.float32)[:, ::2], ValueError, "C-contiguous"),
    ],
)
def test_predict_without_input_checks_still_refuses_what_the_kernels_cannot_read(X, exception, match):
    model = small_mlp(seed=0, n_in=6)
    with pytest.raises(exception, match=match):
        model.predict(X, check_input=False)


def test_predict_without_input_checks_lets_nan_through_and_with_them_refuses_it():
    model = small_mlp(seed=0, n_in=6)
    X = np.zeros((3, 6), dtype=np.float32)
    X[1, 2] = np.nan
    assert np.isnan(model.predict(X, check_input=False)[1]).all()
    with pytest.raises(ValueError, match="NaN"):
        model.predict(X)


def test_float64_model_trains_and_keeps_float64(mini_subset):
    X, y, _, _ = mini_subset
    model = small_mlp(dtype="float64", seed=0)
    assert model.parameters.dtype == np.float64 and model.gradients.dtype == np.float64
    history = model.fit(X[:500], y[:500], epochs=2, batch_size=50, seed=0)
    assert history.history["loss"][1] < history.history["loss"][0]
    assert model.parameters.dtype == np.float64
    assert all(layer.weight.dtype == np.float64 for layer in model.layers if isinstance(layer, layers.Dense))
    assert model.predict(X[:10]).dtype == np.float64


# ------------------------------------------------------------------------------------------ files
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_load_round_trip_is_exact(tmp_path, mini_subset, dtype):
    X, y, X_test, _ = mini_subset
    model = fastopt.Sequential(
        [layers.Dense(784, 16, init="he_normal"), layers.ReLU(), layers.Dense(16, 10), layers.Softmax()],
        dtype=dtype,
        seed=11,
    )
    model.fit(X[:200], y[:200], loss=losses.MSE(), epochs=1, batch_size=50, seed=0)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fastopt.load(path)
    assert loaded.dtype == np.dtype(dtype)
    assert loaded.parameters.dtype == np.dtype(dtype)
    assert loaded.config() == model.config()
    assert [type(layer) for layer in loaded.layers] == [type(layer) for layer in model.layers]
    assert loaded.layers[0].init == "he_normal"
    assert np.array_equal(loaded.parameters, model.parameters)
    assert np.array_equal(loaded.predict(X_test), model.predict(X_test))
    # The loaded model's layers are views into its own flat buffer too.
    assert np.shares_memory(loaded.layers[0].weight, loaded.parameters)
    assert not np.shares_memory(loaded.parameters, model.parameters)
    # Saving leaves no temporary file behind and overwriting works.
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.npz"]


def test_saved_file_uses_no_pickle(tmp_path):
    path = tmp_path / "model.npz"
    small_mlp(seed=0).save(path)
    with np.load(path, allow_pickle=False) as archive:
        assert set(archive.files) == {"header", "parameters"}
        assert not any(archive[name].dtype.hasobject for name in archive.files)


def _saved(tmp_path):
    model = small_mlp(seed=0)
    path = tmp_path / "model.npz"
    model.save(path)
    return model, path


def test_load_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, header=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match="pickle"):
        fastopt.load(path)


@pytest.mark.parametrize("keep", [0, 3, 100, 0.5, -1], ids=["empty", "3-bytes", "100-bytes", "half", "minus-1"])
def test_load_refuses_truncated_files(tmp_path, keep):
    _, path = _saved(tmp_path)
    data = path.read_bytes()
    size = int(len(data) * keep) if isinstance(keep, float) else (len(data) + keep if keep < 0 else keep)
    path.write_bytes(data[:size])
    with pytest.raises(FileFormatError, match=str(path.name)):
        fastopt.load(path)


def test_load_refuses_a_flipped_byte_in_the_parameters(tmp_path):
    model, path = _saved(tmp_path)
    data = bytearray(path.read_bytes())
    start = data.find(model.parameters.tobytes())
    assert start > 0, "parameters are stored uncompressed"
    data[start + model.parameters.nbytes // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FileFormatError, match=r"corrupt|checksum"):
        fastopt.load(path)


def test_load_refuses_parameters_that_fail_the_checksum(tmp_path):
    """A well-formed archive (valid zip CRCs) whose parameters were altered after saving."""
    _, path = _saved(tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        header = archive["header"]
        parameters = archive["parameters"].copy()
    parameters[5] += 1
    tampered = tmp_path / "tampered.npz"
    np.savez(tampered, header=header, parameters=parameters)
    with pytest.raises(FileFormatError, match="checksum"):
        fastopt.load(tampered)


def test_load_refuses_other_kinds_and_versions(tmp_path):
    model = small_mlp(seed=0)
    header = {"model": model.config()}
    arrays = {"parameters": model.parameters}
    other_kind = tmp_path / "kind.npz"
    _io.write_archive(other_kind, "fastopt-optimizer", 1, header, arrays)
    with pytest.raises(FileFormatError, match="fastopt-optimizer"):
        fastopt.load(other_kind)
    newer = tmp_path / "version.npz"
    _io.write_archive(newer, "fastopt-model", 99, header, arrays)
    with pytest.raises(FileFormatError, match="version 99"):
        fastopt.load(newer)
    no_header = tmp_path / "plain.npz"
    np.savez(no_header, parameters=model.parameters)
    with pytest.raises(FileFormatError, match="no header"):
        fastopt.load(no_header)


def test_load_refuses_a_model_description_that_does_not_fit_its_parameters(tmp_path):
    model = small_mlp(seed=0)
    path = tmp_path / "mismatch.npz"
    _io.write_archive(path, "fastopt-model", 1, {"model": model.config()}, {"parameters": model.parameters[:-1]})
    with pytest.raises(FileFormatError, match="do not fit"):
        fastopt.load(path)
    config = dict(model.config(), dtype="int32")
    bad_dtype = tmp_path / "dtype.npz"
    _io.write_archive(bad_dtype, "fastopt-model", 1, {"model": config}, {"parameters": model.parameters})
    with pytest.raises(FileFormatError, match="invalid model"):
        fastopt.load(bad_dtype)
    unknown_layer = tmp_path / "layer.npz"
    config = dict(model.config(), layers=[{"type": "os.system", "command": "true"}])
    _io.write_archive(unknown_layer, "fastopt-model", 1, {"model": config}, {"parameters": model.parameters})
    with pytest.raises(FileFormatError, match="invalid model"):
        fastopt.load(unknown_layer)


def test_load_refuses_a_corrupt_header(tmp_path):
    model = small_mlp(seed=0)
    path = tmp_path / "header.npz"
    np.savez(path, header=np.array("{not json"), parameters=model.parameters)
    with pytest.raises(FileFormatError, match="corrupt header"):
        fastopt.load(path)
    path_list = tmp_path / "list.npz"
    np.savez(path_list, header=np.array(json.dumps([1, 2])), parameters=model.parameters)
    with pytest.raises(FileFormatError, match="not a fastopt"):
        fastopt.load(path_list)


def test_load_refuses_a_npy_file(tmp_path):
    """``np.load`` returns a bare array for ``.npy`` files; that must be refused as a foreign file."""
    path = tmp_path / "array.npy"
    np.save(path, np.arange(10.0))
    with pytest.raises(FileFormatError):
        fastopt.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothere\.npz"):
        fastopt.load(tmp_path / "nothere.npz")


# ------------------------------------------------------------------------------------------ flat buffers
def test_layers_are_views_into_the_flat_buffers():
    model = small_mlp(seed=0)
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    assert model.parameters.ndim == 1 and model.parameters.flags.c_contiguous
    assert (
        model.parameters.size == sum(layer.n_params for layer in dense) == 784 * 16 + 16 + 16 * 12 + 12 + 12 * 10 + 10
    )
    for layer in dense:
        assert layer.weight.shape == (layer.in_features, layer.out_features)
        assert layer.bias.shape == (layer.out_features,)
        assert np.shares_memory(layer.weight, model.parameters)
        assert np.shares_memory(layer.bias, model.parameters)
        assert np.shares_memory(layer.weight_grad, model.gradients)
        assert np.shares_memory(layer.bias_grad, model.gradients)
        assert not np.shares_memory(layer.weight, layer.bias)
        assert np.all(layer.bias == 0)
    # Writing through the flat buffer is seen by the layers, and the other way round.
    model.parameters[:] = 0.5
    assert np.all(dense[1].weight == 0.5)
    dense[2].bias[:] = 3.0
    assert np.all(model.parameters[-10:] == 3.0)


def test_fit_binds_an_optimizer_made_without_params_and_continues(mini_subset):
    X, y, _, _ = mini_subset
    model = small_mlp(seed=0)
    optimizer = optim.Adam(lr=1e-3)
    assert optimizer.params is None
    model.fit(X[:100], y[:100], optimizer=optimizer, epochs=1, batch_size=32)
    assert optimizer.params[0] is model.parameters
    assert len(optimizer.params) == 1
    assert model.optimizer is optimizer
    assert optimizer.step_count == 4  # ceil(100 / 32)
    model.fit(X[:100], y[:100], optimizer=optimizer, epochs=2, batch_size=32)
    assert optimizer.step_count == 12
    assert optimizer.params[0] is model.parameters
    # The layers still view the same buffer after training.
    assert np.shares_memory(model.layers[0].weight, model.parameters)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fitting_twice_continues_exactly_where_it_stopped(mini_subset, backend):
    X, y, _, _ = mini_subset
    once = small_mlp(seed=0, backend=backend)
    once.fit(X[:96], y[:96], optimizer=optim.Adam(lr=1e-2), epochs=2, batch_size=32, shuffle=False)
    twice = small_mlp(seed=0, backend=backend)
    optimizer = optim.Adam(lr=1e-2)
    twice.fit(X[:96], y[:96], optimizer=optimizer, epochs=1, batch_size=32, shuffle=False)
    twice.fit(X[:96], y[:96], optimizer=optimizer, epochs=1, batch_size=32, shuffle=False)
    assert np.array_equal(once.parameters, twice.parameters)
    # Without an optimizer argument the second fit keeps using the model's optimizer.
    third = small_mlp(seed=0, backend=backend)
    third.fit(X[:96], y[:96], optimizer=optim.Adam(lr=1e-2), epochs=1, batch_size=32, shuffle=False)
    third.fit(X[:96], y[:96], epochs=1, batch_size=32, shuffle=False)
    assert third.optimizer.step_count == 6
    assert np.array_equal(once.parameters, third.parameters)


def test_fit_without_optimizer_uses_default_adam(mini_subset):
    X, y, _, _ = mini_subset
    default = small_mlp(seed=0)
    default.fit(X[:200], y[:200], epochs=1, batch_size=32, seed=0)
    assert type(default.optimizer) is optim.Adam
    assert default.optimizer.initial_lr == pytest.approx(1e-3)
    explicit = small_mlp(seed=0)
    explicit.fit(X[:200], y[:200], optimizer=optim.Adam(), epochs=1, batch_size=32, seed=0)
    assert np.array_equal(default.parameters, explicit.parameters)
    assert isinstance(default.loss, losses.CrossEntropy)


def test_optimizer_bound_to_another_model_is_refused(mini_subset):
    X, y, _, _ = mini_subset
    first, second = small_mlp(seed=0), small_mlp(seed=1)
    optimizer = optim.SGD(lr=0.1)
    first.fit(X[:64], y[:64], optimizer=optimizer, epochs=1)
    before = second.parameters.copy()
    with pytest.raises(ValueError, match="already has parameters"):
        second.fit(X[:64], y[:64], optimizer=optimizer, epochs=1)
    assert np.array_equal(second.parameters, before)


def test_fit_with_cross_entropy_then_mse_at_the_same_batch_size():
    """The per-batch-size workspace must not keep a target buffer shaped for the previous loss."""
    rng = np.random.default_rng(0)
    X = rng.random((10, 4)).astype(np.float32)
    model = fastopt.Sequential([layers.Dense(4, 3)], seed=0)
    model.fit(X, np.arange(10) % 3, loss=losses.CrossEntropy(), epochs=1, batch_size=4)
    history = model.fit(X, rng.random((10, 3)), loss=losses.MSE(), epochs=1, batch_size=4)
    assert set(history.history) == {"loss", "seconds"}


def test_a_layer_cannot_join_two_models():
    shared = layers.Dense(4, 3)
    fastopt.Sequential([shared], seed=0)
    with pytest.raises(ValueError, match="already belongs to a model"):
        fastopt.Sequential([layers.Dense(2, 4), layers.ReLU(), shared])


def test_a_layer_cannot_appear_twice_in_one_model():
    """Two positions sharing one Dense would need one weight in two places of the flat buffer."""
    shared = layers.Dense(3, 3)
    with pytest.raises(ValueError, match=r"already belongs|twice|more than once|same layer"):
        fastopt.Sequential([shared, layers.ReLU(), shared])


def test_layers_of_a_refused_model_stay_usable():
    first, second = layers.Dense(2, 3), layers.Dense(3, 2)
    with pytest.raises(ValueError, match="dtype"):
        fastopt.Sequential([first, second], dtype="int32")
    model = fastopt.Sequential([first, second], seed=0)
    assert np.shares_memory(first.weight, model.parameters)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_buffers_start_on_cache_lines(mini_subset, dtype):
    """The flat parameters and gradients, a batch's buffers and the optimizer's state start on 64-byte boundaries
    (fastopt._aligned), for fresh models and for the float64 copies fastopt.sklearn predicts with."""
    X, y = mini_subset[0][:64], mini_subset[1][:64]
    model = small_mlp(dtype=dtype, seed=0)
    model.fit(X, y, loss=losses.CrossEntropy(), optimizer=optim.Adam(model.parameters), batch_size=32, verbose=0)
    workspace = model._workspace(32)
    buffers = [model.parameters, model.gradients, workspace.inputs, *workspace.outputs, *workspace.output_grads]
    buffers += [buffer for state in model.optimizer.state for buffer in state.values() if buffer.ndim]
    buffers.append(model.astype("float64" if dtype == "float32" else "float32").parameters)
    assert [buffer.ctypes.data % 64 for buffer in buffers] == [0] * len(buffers)


def test_a_model_too_large_for_memory_names_its_buffer(monkeypatch):
    """The aligned buffers are allocated as raw bytes: the MemoryError names the array asked for, not those bytes."""

    def refuse(*arguments, **options):
        raise MemoryError("Unable to allocate 1.1 GiB for an array with shape (1200000064,) and data type uint8")

    monkeypatch.setattr(np, "zeros", refuse)
    with pytest.raises(MemoryError, match=r"1.49 GiB for an array with shape \(400000000,\) and data type float32$"):
        fastopt.Sequential([layers.Dense(3, 100_000_000)], seed=0)


# ------------------------------------------------------------------------------------------ backends
def test_set_and_get_backend(restore_backend):
    for name in BACKENDS:
        fastopt.set_backend(name)
        assert fastopt.get_backend() == name
        assert small_mlp(seed=0).backend == name
    assert fastopt.get_backend() in BACKENDS


def test_use_backend_restores_on_exit_and_on_exception():
    before = fastopt.get_backend()
    model = small_mlp(seed=0)
    with fastopt.use_backend("numpy") as backend:
        assert backend.name == "numpy"
        assert fastopt.get_backend() == "numpy"
        assert model.backend == "numpy"
    assert fastopt.get_backend() == before
    with pytest.raises(RuntimeError, match="boom"), fastopt.use_backend("numpy"):
        assert fastopt.get_backend() == "numpy"
        raise RuntimeError("boom")
    assert fastopt.get_backend() == before


@pytest.mark.parametrize("outer", BACKENDS)
@pytest.mark.parametrize("inner", BACKENDS)
def test_use_backend_nests(outer, inner):
    before = fastopt.get_backend()
    with fastopt.use_backend(outer):
        with fastopt.use_backend(inner):
            assert fastopt.get_backend() == inner
        assert fastopt.get_backend() == outer
    assert fastopt.get_backend() == before


def test_pinned_backend_ignores_use_backend():
    model = small_mlp(seed=0, backend="numpy")
    for name in BACKENDS:
        with fastopt.use_backend(name):
            assert model.backend == "numpy"


@pytest.mark.parametrize(
    "call",
    [
        lambda: fastopt.set_backend("nosuch"),
        lambda: fastopt.use_backend("nosuch").__enter__(),
        lambda: small_mlp(backend="nosuch"),
    ],
    ids=["set_backend", "use_backend", "Sequential"],
)
def test_unknown_backend_is_refused_naming_the_available_ones(call, restore_backend):
    with pytest.raises(ValueError, match=r"nosuch.*available: " + re.escape(", ".join(BACKENDS))):
        call()
    assert fastopt.get_backend() == restore_backend


# ------------------------------------------------------------------------------------------ NaN detection
# A divergence certain by arithmetic on any CPU: one Dense(1, 1) unit, inputs 1, targets 0, weight and bias 1/2,
# MSE and SGD(lr=1.25). Both parameters get the same gradient 2r (r = w + b, the residual), so they stay equal and
# each step makes r -> r - 1.25 * 4r = -4r: r = (-4)**k after k steps, w = b = r/2, every value a power of two,
# hence exact whatever the summation order or the kernels. float32: the output w + b reaches 2**128 (inf) after
# 64 steps, while w = b = 2**127 and the step's gradient (-2**127) are finite; float64: the loss r**2 (summed in
# double) reaches 2**1024 (inf) after 256 steps. So the loss is first infinite at step 65 or 257.
DIVERGING_STEP = {"float32": 65, "float64": 257}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_divergence_raises_before_the_bad_update(backend, dtype):
    def diverging_unit():
        model = fastopt.Sequential([layers.Dense(1, 1)], dtype=dtype, backend=backend)
        model.parameters[:] = 0.5
        return model

    X, y = np.ones((4 * 300, 1)), np.zeros((4 * 300, 1))
    model = diverging_unit()
    optimizer = optim.SGD(lr=1.25)
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"epoch \d+, batch \d+.*step \d+") as info:
        model.fit(X, y, loss=losses.MSE(), optimizer=optimizer, epochs=3, batch_size=4, shuffle=False)
    epoch, batch, step = map(int, re.search(r"epoch (\d+), batch (\d+).*step (\d+)", str(info.value)).groups())
    assert (epoch, batch, step) == (1, DIVERGING_STEP[dtype], DIVERGING_STEP[dtype])
    assert optimizer.step_count == step - 1
    # The parameters are exactly those after the steps before the failing one: finite, (-4)**(step - 1) / 2 each.
    assert np.array_equal(model.parameters, np.full(2, (-4.0) ** (step - 1) / 2, dtype=dtype))
    replay = diverging_unit()
    replay.fit(X[: 4 * (step - 1)], y[: 4 * (step - 1)], loss=losses.MSE(), optimizer=optim.SGD(lr=1.25), batch_size=4)
    assert np.array_equal(model.parameters, replay.parameters)


# ------------------------------------------------------------------------------------------ losses
def _log_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    shifted = z - z.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_call_matches_hand_computation(backend, dtype):
    logits = np.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0], [1000.0, 0.0, -1000.0], [-3.0, 4.0, 1.0]], dtype=dtype)
    labels = np.array([0, 2, 1, 1])
    expected = -np.mean(_log_softmax(logits)[np.arange(4), labels])
    # by hand for the second row: log(3)
    assert -_log_softmax(logits)[1, 2] == pytest.approx(math.log(3))
    rel = 1e-6 if dtype == np.float32 else 1e-12
    value = losses.CrossEntropy()(logits, labels, backend=backend)
    assert math.isfinite(value)
    assert value == pytest.approx(expected, rel=rel)
    one_hot = np.eye(3)[labels]
    assert losses.CrossEntropy()(logits, one_hot, backend=backend) == pytest.approx(expected, rel=rel)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mse_call_matches_hand_computation(backend):
    pred = np.array([[1.0, 2.0], [3.0, -4.0], [0.5, 0.0]])
    target = np.array([[0.0, 2.0], [1.0, 1.0], [0.5, 1.0]])
    # squared errors: 1, 0, 4, 25, 0, 1 -> mean 31 / 6
    assert losses.MSE()(pred, target, backend=backend) == pytest.approx(31 / 6, rel=1e-12)
    assert losses.MSE()(pred.astype(np.float32), target, backend=backend) == pytest.approx(31 / 6, rel=1e-6)
    # integer labels become one-hot rows: [[0, 1], [1, 0], [1, 0]]
    labels = np.array([1, 0, 0])
    expected = np.mean((pred - np.eye(2)[labels]) ** 2)
    assert losses.MSE()(pred, labels, backend=backend) == pytest.approx(expected, rel=1e-12)


def test_evaluate_matches_the_loss_object(mini_subset):
    _, _, X_test, y_test = mini_subset
    model = small_mlp(seed=0, dtype="float64")
    result = model.evaluate(X_test, y_test, loss=losses.CrossEntropy(), batch_size=37)
    logits = model.predict(X_test)
    assert result["loss"] == pytest.approx(losses.CrossEntropy()(logits, y_test), rel=1e-10)
    assert result["accuracy"] == np.mean(logits.argmax(axis=1) == y_test)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(st.integers(1, 6), st.integers(2, 5)),
    backend=st.sampled_from(BACKENDS),
)
def test_losses_match_hand_computation_on_random_inputs(data, shape, backend):
    finite = st.floats(-50, 50, allow_nan=False, allow_infinity=False)
    logits = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    labels = data.draw(hnp.arrays(np.int64, shape[0], elements=st.integers(0, shape[1] - 1)))
    target = data.draw(hnp.arrays(np.float64, shape, elements=finite))
    expected_ce = -np.mean(_log_softmax(logits)[np.arange(shape[0]), labels])
    assert losses.CrossEntropy()(logits, labels, backend=backend) == pytest.approx(expected_ce, rel=1e-9, abs=1e-12)
    expected_mse = np.mean((logits - target) ** 2)
    assert losses.MSE()(logits, target, backend=backend) == pytest.approx(expected_mse, rel=1e-12, abs=1e-12)


def test_astype_converts_the_weights_into_a_new_model():
    model = fastopt.Sequential(
        [layers.Dense(3, 5), layers.LeakyReLU(0.1), layers.Dropout(0.2), layers.Dense(5, 2)], seed=4
    )
    wide = model.astype("float64")
    assert wide.dtype == np.float64 and wide.seed == model.seed and wide.backend == model.backend
    assert [type(layer) for layer in wide.layers] == [type(layer) for layer in model.layers]
    assert np.array_equal(wide.parameters, model.parameters.astype(np.float64))  # exact
    assert not np.shares_memory(wide.parameters, model.parameters)
    assert wide.optimizer is None and wide.loss is None
    X = np.random.default_rng(0).random((7, 3))
    np.testing.assert_allclose(wide.predict(X), model.predict(X), rtol=1e-5, atol=1e-6)
    wide.parameters[0] = 1 / 3
    narrow = wide.astype(np.float32)
    assert narrow.parameters[0] == np.float32(1 / 3)  # rounded to nearest
    assert np.array_equal(narrow.parameters[1:], model.parameters[1:])


def test_astype_refuses_weights_beyond_float32():
    wide = fastopt.Sequential([layers.Dense(2, 1)], dtype="float64", seed=0)
    wide.parameters[0] = 1e300
    with pytest.raises(ValueError, match="too large for float32"):
        wide.astype("float32")
    with pytest.raises((TypeError, ValueError), match="dtype"):
        wide.astype("int8")
