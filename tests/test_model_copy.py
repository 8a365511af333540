"""A model survives copy, pickle and assignment (issue 11).

``copy.copy``, ``copy.deepcopy``, ``pickle`` (every protocol), ``joblib`` and ``model.copy()`` give an
independent model whose layers view its own buffers and whose optimizer (a copy, with its state) is bound to
them: continuing ``fit`` on the copy and on the original gives bit-identical parameters and optimizer state,
equal to a run that was never copied. Assigning a layer's arrays copies the values into the model's buffer,
checked; ``parameters``/``gradients`` cannot be rebound; ``get_weights``/``set_weights`` move the weights as
a list ``[W1, b1, W2, b2, ...]``.
"""

from __future__ import annotations

import copy
import io
import itertools
import pickle
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import layers, optim

BACKENDS = fastopt.available_backends()
DTYPES = ("float32", "float64")
FIT = {"batch_size": 32, "epochs": 2}  # every fit of this file: 256 samples, 8 steps per epoch

Route = Callable[[fastopt.Sequential, Path], fastopt.Sequential]


def _pickled(protocol: int) -> Route:
    return lambda model, _: pickle.loads(pickle.dumps(model, protocol=protocol))


def _joblib_in_memory(model: fastopt.Sequential, _: Path) -> fastopt.Sequential:
    joblib = pytest.importorskip("joblib")
    stream = io.BytesIO()
    joblib.dump(model, stream)
    stream.seek(0)
    return joblib.load(stream)


def _joblib_memory_mapped(model: fastopt.Sequential, folder: Path) -> fastopt.Sequential:
    """joblib's copy-on-write memory maps: writeable arrays backed by the file (Dask and loky pass models so)."""
    joblib = pytest.importorskip("joblib")
    joblib.dump(model, folder / "model.joblib")
    return joblib.load(folder / "model.joblib", mmap_mode="c")


ROUTES: dict[str, Route] = {
    "copy.copy": lambda model, _: copy.copy(model),
    "copy.deepcopy": lambda model, _: copy.deepcopy(model),
    "model.copy": lambda model, _: model.copy(),
    **{f"pickle-{protocol}": _pickled(protocol) for protocol in range(pickle.HIGHEST_PROTOCOL + 1)},
    "joblib": _joblib_in_memory,
    "joblib-mmap-c": _joblib_memory_mapped,
}


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(256, 20)), rng.integers(0, 3, size=256)


def small_model(backend: str, dtype: str, hidden: tuple[int, ...] = (16,)) -> fastopt.Sequential:
    widths = (20, *hidden, 3)
    stack: list[layers.Layer] = []
    for n_in, n_out in itertools.pairwise(widths):
        stack += [layers.Dense(n_in, n_out), layers.ReLU()]
    return fastopt.Sequential(stack[:-1], dtype=dtype, seed=0, backend=backend)


def amsgrad_adam() -> optim.Optimizer:
    return optim.Adam(lr=1e-2, amsgrad=True, decay=1e-3)  # three state buffers and a step-dependent lr


def trained(backend: str, dtype: str, data, make_optimizer=amsgrad_adam) -> fastopt.Sequential:
    model = small_model(backend, dtype)
    model.fit(*data, optimizer=make_optimizer(), seed=1, **FIT)
    return model


def continue_fit(model: fastopt.Sequential, data) -> None:
    """The same call on every model compared: the model's own optimizer, the same shuffling seed."""
    model.fit(*data, seed=2, **FIT)


def dense_layers(model: fastopt.Sequential) -> list[layers.Dense]:
    return [layer for layer in model.layers if isinstance(layer, layers.Dense)]


def assert_same_optimizer_state(state: dict, expected: dict) -> None:
    assert (state["optimizer"], state["step_count"]) == (expected["optimizer"], expected["step_count"])
    assert state["hyperparameters"] == expected["hyperparameters"]
    assert [sorted(buffers) for buffers in state["state"]] == [sorted(buffers) for buffers in expected["state"]]
    for buffers, expected_buffers in zip(state["state"], expected["state"]):
        for name, buffer in buffers.items():
            assert buffer.dtype == expected_buffers[name].dtype
            assert buffer.tobytes() == expected_buffers[name].tobytes(), f"optimizer state {name!r} differs"


def assert_same_run(model: fastopt.Sequential, expected: fastopt.Sequential) -> None:
    """Bit-identical parameters and optimizer state."""
    assert model.parameters.dtype == expected.parameters.dtype
    assert model.parameters.tobytes() == expected.parameters.tobytes()
    assert_same_optimizer_state(model.optimizer.state_dict(), expected.optimizer.state_dict())


def assert_own_buffers(copied: fastopt.Sequential, original: fastopt.Sequential) -> None:
    """The copy's layers view the copy's buffers, none of the original's, and its optimizer steps them."""
    assert copied is not original
    for buffer, original_buffer in ((copied.parameters, original.parameters), (copied.gradients, original.gradients)):
        assert buffer.flags.c_contiguous and buffer.flags.writeable
        assert not np.shares_memory(buffer, original_buffer)
    for layer, original_layer in zip(dense_layers(copied), dense_layers(original)):
        assert layer is not original_layer
        for name, buffer in (("weight", copied.parameters), ("bias", copied.parameters)):
            assert np.shares_memory(getattr(layer, name), buffer), f"the copy's {name} does not view its parameters"
            assert np.shares_memory(getattr(layer, name + "_grad"), copied.gradients)
            assert not np.shares_memory(getattr(layer, name), original.parameters)
    if original.optimizer is not None:
        assert copied.optimizer is not original.optimizer
        assert copied.optimizer.is_bound_to([copied.parameters]), "the copy's optimizer steps other arrays"


def check_continuation(route: Route, backend: str, dtype: str, data, tmp_path: Path, make_optimizer) -> None:
    reference = trained(backend, dtype, data, make_optimizer)
    continue_fit(reference, data)  # a run never copied
    model = trained(backend, dtype, data, make_optimizer)
    model.predict(data[0][:5])  # a workspace of another batch size, which copies do not carry
    copied = route(model, tmp_path)
    assert_own_buffers(copied, model)
    assert_same_run(copied, model)
    np.testing.assert_array_equal(copied.predict(data[0]), model.predict(data[0]))

    parameters_before, state_before = model.parameters.copy(), model.optimizer.state_dict()
    continue_fit(copied, data)
    assert copied.parameters.tobytes() != parameters_before.tobytes(), "training the copy changed nothing"
    assert model.parameters.tobytes() == parameters_before.tobytes(), "training the copy changed the original"
    assert_same_optimizer_state(model.optimizer.state_dict(), state_before)
    continue_fit(model, data)
    assert_same_run(copied, reference)
    assert_same_run(model, reference)
    np.testing.assert_array_equal(copied.predict(data[0]), reference.predict(data[0]))

    copied.save(tmp_path / "copy.npz")  # the weights it trained, not those it was copied with
    loaded = fastopt.load(tmp_path / "copy.npz", backend=backend)
    assert loaded.parameters.tobytes() == reference.parameters.tobytes()
    np.testing.assert_array_equal(loaded.predict(data[0]), reference.predict(data[0]))


# ------------------------------------------------------------------------------------------ copies
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("route", ROUTES)
def test_a_copy_continues_the_fit_bit_identically(route, backend, dtype, data, tmp_path):
    check_continuation(ROUTES[route], backend, dtype, data, tmp_path, amsgrad_adam)


OPTIMIZERS = {
    "sgd-nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adagrad": lambda: optim.AdaGrad(lr=0.05, initial_accumulator_value=0.1),
    "rmsprop-centered": lambda: optim.RMSProp(lr=1e-3, momentum=0.5, centered=True),
    "adamw": lambda: optim.AdamW(lr=1e-2, decay=1e-2),
    "nadam-decoupled": lambda: optim.NAdam(lr=1e-2, weight_decay=1e-3, decoupled_weight_decay=True),
    "adamax": lambda: optim.Adamax(lr=1e-2, weight_decay=1e-4),
    "radam": lambda: optim.RAdam(lr=1e-2, decay=1e-2),
    "lion": lambda: optim.Lion(lr=1e-3, weight_decay=1e-2),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("route", ["copy.deepcopy", f"pickle-{pickle.HIGHEST_PROTOCOL}", "joblib"])
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_is_copied_with_its_state(optimizer, route, backend, data, tmp_path):
    check_continuation(ROUTES[route], backend, "float32", data, tmp_path, OPTIMIZERS[optimizer])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("route", ["copy.copy", "pickle-0", "joblib"])
def test_an_untrained_copy_trains_as_the_original(route, backend, data, tmp_path):
    model = small_model(backend, "float64")
    copied = ROUTES[route](model, tmp_path)
    assert copied.optimizer is None
    assert_own_buffers(copied, model)
    for each in (model, copied):
        each.fit(*data, seed=1, **FIT)  # each makes and binds its own Adam
    assert copied.optimizer is not model.optimizer
    assert_same_run(copied, model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_copies_taken_during_fit_hold_that_epoch(backend, data):
    """The "keep the best model" pattern: a copy at the end of each epoch, while training goes on."""
    model = small_model(backend, "float32")
    snapshots: list[fastopt.Sequential] = []
    model.fit(
        *data,
        optimizer=amsgrad_adam(),
        seed=1,
        batch_size=32,
        epochs=3,
        on_epoch_end=lambda *_: snapshots.append(model.copy()),
    )
    shorter = small_model(backend, "float32")
    shorter.fit(*data, optimizer=amsgrad_adam(), seed=1, batch_size=32, epochs=2)
    assert_same_run(snapshots[1], shorter)
    assert_same_run(snapshots[2], model)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_read_only_memory_map_gives_a_model_that_predicts_and_refuses_changes(backend, data, tmp_path):
    joblib = pytest.importorskip("joblib")
    model = trained(backend, "float32", data)
    joblib.dump(model, tmp_path / "model.joblib")
    mapped = joblib.load(tmp_path / "model.joblib", mmap_mode="r")
    assert not mapped.parameters.flags.writeable
    assert np.shares_memory(mapped.layers[0].weight, mapped.parameters)
    np.testing.assert_array_equal(mapped.predict(data[0]), model.predict(data[0]))
    before = mapped.parameters.copy()
    with pytest.raises(ValueError, match="read-only"):
        continue_fit(mapped, data)
    with pytest.raises(ValueError, match="read-only"):
        mapped.layers[0].bias = np.zeros(16)
    assert mapped.parameters.tobytes() == before.tobytes()
    writeable = mapped.copy()  # the way to train it: a copy owns writeable memory
    continue_fit(writeable, data)
    continue_fit(model, data)
    assert_same_run(writeable, model)


def test_a_layer_copied_alone_is_a_new_layer_not_in_a_model():
    model = small_model("numpy", "float32")
    layer = copy.deepcopy(model.layers[0])
    assert (layer.in_features, layer.out_features, layer.init) == (20, 16, "glorot_uniform")
    assert layer.weight is None and layer.bias_grad is None
    assert model.layers[0].weight is not None  # the original stays bound
    other = fastopt.Sequential([layer], seed=3)  # usable in a new model, which initializes it
    assert np.shares_memory(layer.weight, other.parameters)


# ------------------------------------------------------------------------------------------ assignment
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_assigning_a_layer_writes_its_values_into_the_model(backend, dtype, data, tmp_path):
    rng = np.random.default_rng(5)
    weight, bias = rng.normal(size=(20, 16)), [0.25] * 16  # float64 and a list: cast to the model's dtype
    model = small_model(backend, dtype)
    reference = small_model(backend, dtype)
    view = model.layers[0].weight
    model.layers[0].weight = weight
    model.layers[0].bias = bias
    assert model.layers[0].weight is view  # the view stays; its values changed
    reference.weight_parameters[: 20 * 16] = weight.reshape(-1)  # every weight first, then every bias
    reference.bias_parameters[:16] = 0.25
    assert model.parameters.tobytes() == reference.parameters.tobytes()
    np.testing.assert_array_equal(model.predict(data[0]), reference.predict(data[0]))

    model.save(tmp_path / "assigned.npz")
    np.testing.assert_array_equal(fastopt.load(tmp_path / "assigned.npz").layers[0].weight, weight.astype(dtype))
    for each in (model, reference):
        each.fit(*data, optimizer=amsgrad_adam(), seed=1, **FIT)
    assert_same_run(model, reference)  # training starts from the assigned values


def test_augmented_and_overlapping_assignments():
    model = small_model("numpy", "float64")
    layer = model.layers[2]
    before = layer.weight.copy()
    layer.bias += 1.5  # reads the view, updates it in place, assigns it back
    np.testing.assert_array_equal(model.parameters[-3:], [1.5, 1.5, 1.5])
    layer.bias += np.inf  # an in-place write, as ``layer.bias[...] += x``: not refused after it was made
    assert np.all(np.isinf(model.parameters[-3:]))
    layer.weight = layer.weight[::-1]  # a view of the buffer it is copied into
    np.testing.assert_array_equal(layer.weight, before[::-1])
    layer.weight_grad = np.ones((16, 3))
    np.testing.assert_array_equal(model.weight_gradients[20 * 16 : 20 * 16 + 48], np.ones(48))


BAD_VALUES = {
    "transposed": (
        lambda: np.zeros((16, 20)),
        ValueError,
        r"layers\[0\]\.weight must have shape \(20, 16\), got \(16, 20\)",
    ),
    "extra axis": (lambda: np.zeros((20, 16, 1)), ValueError, r"shape \(20, 16\), got \(20, 16, 1\)"),
    "scalar": (lambda: 0.0, ValueError, r"shape \(20, 16\), got \(\)"),
    "complex": (lambda: np.zeros((20, 16), complex), TypeError, "real numbers.*complex128"),
    "bool": (lambda: np.zeros((20, 16), bool), TypeError, "real numbers.*bool"),
    "strings": (lambda: np.full((20, 16), "1"), TypeError, "real numbers.*<U1"),
    "objects": (lambda: np.full((20, 16), None), TypeError, "real numbers.*object"),
    "NaN": (lambda: np.full((20, 16), np.nan), ValueError, "NaN or Inf"),
    "Inf": (lambda: np.full((20, 16), -np.inf), ValueError, "NaN or Inf"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bad", BAD_VALUES)
def test_a_bad_assignment_is_refused_and_changes_nothing(bad, dtype):
    make_value, error, message = BAD_VALUES[bad]
    model = small_model("numpy", dtype)
    before, view = model.parameters.copy(), model.layers[0].weight
    with pytest.raises(error, match=message):
        model.layers[0].weight = make_value()
    assert model.layers[0].weight is view
    assert model.parameters.tobytes() == before.tobytes()


def test_a_value_beyond_float32_is_refused_by_a_float32_model_only():
    too_large = np.full(3, 1e39)
    model32, model64 = small_model("numpy", "float32"), small_model("numpy", "float64")
    with pytest.raises(ValueError, match=r"layers\[2\]\.bias contains NaN or Inf \(or values too large for float32\)"):
        model32.layers[2].bias = too_large
    assert np.all(model32.layers[2].bias == 0)
    model64.layers[2].bias = too_large
    np.testing.assert_array_equal(model64.layers[2].bias, too_large)


def test_a_layer_outside_a_model_refuses_assignment():
    layer = layers.Dense(3, 2)
    assert layer.weight is None
    with pytest.raises(ValueError, match=r"does not belong to a model yet.*set_weights"):
        layer.weight = np.zeros((3, 2))
    assert layer.weight is None
    fastopt.Sequential([layer])  # still free to join a model


@pytest.mark.parametrize("name", ["parameters", "gradients"])
def test_the_flat_buffers_cannot_be_rebound(name):
    model = small_model("numpy", "float32")
    buffer = getattr(model, name)
    for replacement in (buffer.copy(), np.zeros(buffer.size + 100, buffer.dtype)):  # same size, and larger
        with pytest.raises(AttributeError, match=rf"model\.{name} cannot be rebound.*model\.{name}\[\.\.\.\] = values"):
            setattr(model, name, replacement)
        assert getattr(model, name) is buffer
    assert np.shares_memory(model.layers[0].weight, model.parameters)


FIXED = [
    pytest.param(make, name, id=f"{label}.{name}")
    for label, make, names in [
        ("Dense", lambda: layers.Dense(3, 2), ("in_features", "out_features", "init")),
        ("ReLU", layers.ReLU, ("kernel", "negative_slope")),
        ("LeakyReLU", lambda: layers.LeakyReLU(0.1), ("kernel", "negative_slope")),
        ("GELU", lambda: layers.GELU("tanh"), ("approximate", "kernel")),
        ("Dropout", lambda: layers.Dropout(0.2), ("p",)),
        ("CrossEntropy", lambda: fastopt.losses.CrossEntropy(0.1), ("label_smoothing",)),
        ("BinaryCrossEntropy", lambda: fastopt.losses.BinaryCrossEntropy(2.0), ("pos_weight",)),
        ("Huber", lambda: fastopt.losses.Huber(0.5), ("delta",)),
    ]
    for name in names
]


@pytest.mark.parametrize(("make", "name"), FIXED)
def test_a_layers_or_losses_configuration_is_read_only(make, name):
    """A constructor argument assigned later is refused: a model compiles its passes from it, so the model kept
    the old value while its copies and saved files took the new one (and a Dense layer's width made a kernel write
    past a buffer)."""
    made = make()
    before = getattr(made, name)
    with pytest.raises(AttributeError, match=rf"{type(made).__name__}\.{name} is fixed when it is made"):
        setattr(made, name, 5)
    assert getattr(made, name) == before


@pytest.mark.parametrize("name", ["in_features", "out_features", "dtype"])
def test_a_models_widths_and_dtype_are_read_only(name):
    """The widths and dtype are the layers' and the buffers': ``model.in_features = 20000`` made a fit write
    past the first layer's gradient (a segfault), ``out_features`` let labels index past the logits."""
    model = small_model("cython" if "cython" in fastopt.available_backends() else "numpy", "float32")
    before = getattr(model, name)
    with pytest.raises(AttributeError, match=name):
        setattr(model, name, 20000)
    assert getattr(model, name) == before
    assert (model.in_features, model.out_features) == (model.layers[0].in_features, model.layers[-1].out_features)


def test_a_models_layers_cannot_be_replaced():
    """``model.layers`` is a tuple: a layer put in its place was ignored by the model's planned stages but taken by
    its copies and saved files."""
    model = small_model("numpy", "float32")
    with pytest.raises(TypeError):
        model.layers[1] = layers.Tanh()  # type: ignore[index]
    with pytest.raises(AttributeError, match="layers"):
        model.layers = [layers.Dense(20, 3)]  # type: ignore[misc]
    assert isinstance(model.layers[1], layers.ReLU)


def test_a_model_pickled_when_its_configuration_was_plain_attributes_loads():
    model = small_model("numpy", "float32")
    state = model.__getstate__()
    state.update(layers=list(state.pop("_layers")), dtype=state.pop("_dtype"), in_features=20, out_features=3)
    old = fastopt.Sequential.__new__(fastopt.Sequential)
    old.__setstate__(state)
    x = np.linspace(0, 1, 40, dtype=np.float32).reshape(2, 20)
    assert old.predict(x).tobytes() == model.predict(x).tobytes()
    assert (old.in_features, old.out_features, old.dtype, type(old.layers)) == (20, 3, np.float32, tuple)


def test_a_loss_pickled_before_its_options_were_read_only_keeps_them():
    """Pickles of a loss made when its options were plain attributes load with those options."""
    losses = fastopt.losses
    for cls, name, value in ((losses.CrossEntropy, "label_smoothing", 0.1), (losses.Huber, "delta", 0.5)):
        old = cls.__new__(cls)
        old.__dict__.update({name: value, "_extras": (value,)})
        restored = pickle.loads(pickle.dumps(old))
        assert getattr(restored, name) == value and restored.config() == {name: value}


def test_the_parameters_message_points_to_set_weights():
    with pytest.raises(AttributeError, match="set_weights"):
        small_model("numpy", "float32").parameters = np.zeros(10)


# ------------------------------------------------------------------------------------------ get_weights / set_weights
def test_get_weights_returns_copies_in_layer_order():
    model = small_model("numpy", "float64")
    weights = model.get_weights()
    assert [array.shape for array in weights] == [(20, 16), (16,), (16, 3), (3,)]
    views = [model.layers[0].weight, model.layers[0].bias, model.layers[2].weight, model.layers[2].bias]
    for array, view in zip(weights, views):
        assert array.dtype == np.float64 and not np.shares_memory(array, model.parameters)
        np.testing.assert_array_equal(array, view)
    weights[0][...] = 7.0
    assert not np.any(model.layers[0].weight == 7.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_set_weights_moves_a_model_between_dtypes(backend, data):
    source = trained(backend, "float64", data)
    target = small_model(backend, "float32")
    target.set_weights(tuple(source.get_weights()))
    for array, expected in zip(target.get_weights(), source.get_weights()):
        assert array.dtype == np.float32
        np.testing.assert_array_equal(array, expected.astype(np.float32))
    rounding = np.finfo(np.float32).eps * float(np.abs(source.parameters).max()) * 20 * 16  # a 20-term dot product
    np.testing.assert_allclose(target.predict(data[0]), source.predict(data[0]), rtol=0, atol=10 * rounding)


def test_set_weights_reads_views_of_its_own_buffer_before_writing():
    model = small_model("numpy", "float64", hidden=(16, 16, 16))
    snapshot = model.get_weights()
    views = [view for layer in dense_layers(model) for view in (layer.weight, layer.bias)]
    order = [0, 1, 4, 5, 2, 3, 6, 7]  # the two 16x16 layers swapped
    model.set_weights([views[position] for position in order])
    for array, position in zip(model.get_weights(), order):
        np.testing.assert_array_equal(array, snapshot[position])


SET_WEIGHTS_ERRORS = {
    "an array": (lambda w: np.concatenate([a.ravel() for a in w]), TypeError, "a list of arrays"),
    "too few": (lambda w: w[:3], ValueError, "needs 4 arrays .* got 3"),
    "too many": (lambda w: [*w, w[-1]], ValueError, "needs 4 arrays .* got 5"),
    "a bad shape last": (
        lambda w: [*w[:3], np.zeros(4)],
        ValueError,
        r"weights\[3\] \(layers\[2\]\.bias\) must have shape \(3,\), got \(4,\)",
    ),
    "NaN last": (lambda w: [*w[:3], np.full(3, np.nan)], ValueError, r"weights\[3\] .* NaN or Inf"),
    "complex": (lambda w: [w[0].astype(complex), *w[1:]], TypeError, r"weights\[0\] .* real numbers"),
}


@pytest.mark.parametrize("case", SET_WEIGHTS_ERRORS)
def test_set_weights_refuses_bad_lists_and_writes_nothing(case):
    make_weights, error, message = SET_WEIGHTS_ERRORS[case]
    model = small_model("numpy", "float32")
    before = model.parameters.copy()
    new = [array + 1 for array in model.get_weights()]  # valid values first, so a partial write would show
    with pytest.raises(error, match=message):
        model.set_weights(make_weights(new))
    assert model.parameters.tobytes() == before.tobytes()


def test_messages_name_the_layer_expected_and_found():
    model = small_model("numpy", "float32")
    with pytest.raises(ValueError) as info:
        model.layers[2].weight = np.zeros((3, 16))
    assert re.fullmatch(r"layers\[2\]\.weight must have shape \(16, 3\), got \(3, 16\)", str(info.value))
