"""The compiled training step (``_nn.TrainingStep``, through ``Sequential._batch_gradients``) and forward stages
(``_nn.CompiledStages``, through ``Sequential._forward`` in ``predict`` and ``evaluate``): whole fits and predictions
give the same bits with them and without them (the Python step calling the same kernels one by one), they are used
where they should be and only there, and they refuse bad buffers, inputs and rows with a clear exception."""

from __future__ import annotations

import gc
import itertools
import warnings
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import layers, losses, optim

cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")
_nn = cython_backend._nn

N_ROWS, N_FEATURES = 210, 12
RNG = np.random.default_rng(7)
X = RNG.normal(size=(N_ROWS, N_FEATURES)).astype(np.float32)
LABELS = RNG.integers(0, 4, N_ROWS)
SAMPLE_WEIGHTS = RNG.random(N_ROWS)


def _stack(activation: type[layers.Layer], outputs: int) -> list[layers.Layer]:
    return [layers.Dense(N_FEATURES, 16), activation(), layers.Dense(16, outputs)]


# name: (hidden activation, outputs, loss, targets)
CASES = {
    "cross_entropy": (layers.ReLU, 4, losses.CrossEntropy, LABELS),
    "label_smoothing_gelu": (layers.GELU, 4, lambda: losses.CrossEntropy(label_smoothing=0.1), LABELS),
    "binary_pos_weight": (
        layers.Sigmoid,
        3,
        lambda: losses.BinaryCrossEntropy(pos_weight=[1.0, 2.0, 0.5]),
        (RNG.random((N_ROWS, 3)) > 0.5).astype(np.float32),
    ),
    "mse": (lambda: layers.LeakyReLU(0.1), 2, losses.MSE, RNG.normal(size=(N_ROWS, 2))),
    "mse_one_hot_labels": (layers.ReLU, 4, losses.MSE, LABELS),  # accuracy from labels gathered for the count
    "huber": (layers.ReLU, 1, lambda: losses.Huber(delta=0.5), RNG.normal(size=N_ROWS)),
    "mae": (layers.ReLU, 1, losses.MAE, RNG.normal(size=N_ROWS)),
}


def _switched_off(monkeypatch: pytest.MonkeyPatch, method: str):  # type: ignore[no-untyped-def]
    """A function running its argument with the cython backend's ``method`` answering None (no compiled step or
    stages: the Python ones)."""

    def run(function):  # type: ignore[no-untyped-def]
        with monkeypatch.context() as patch:
            patch.setattr(cython_backend.CythonBackend, method, lambda *arguments: None)
            return function()

    return run


@pytest.fixture
def without_compiled_step(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    return _switched_off(monkeypatch, "_training_step")


@pytest.fixture
def made_steps(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The steps the cython backend makes during the test (None where it has none), in order (a fit drops its steps
    when it ends)."""
    made: list[object] = []
    original = cython_backend.CythonBackend._training_step

    def recording(self, *arguments):  # type: ignore[no-untyped-def]
        made.append(original(self, *arguments))
        return made[-1]

    monkeypatch.setattr(cython_backend.CythonBackend, "_training_step", recording)
    return made


def _direct_gemm_or_skip() -> None:
    if cython_backend.gemm_path() != "direct":
        pytest.skip("the compiled step runs on the direct GEMM path only, unavailable here")


def _fit(case: str, dtype: str, weighted: bool, **options: object) -> tuple[fastopt.Sequential, dict]:
    activation, outputs, loss, targets = CASES[case]
    model = fastopt.Sequential(_stack(activation, outputs), backend="cython", dtype=dtype, seed=0)
    weights = SAMPLE_WEIGHTS if weighted else None
    history = model.fit(X, targets, epochs=2, batch_size=25, optimizer=optim.Adam(lr=1e-2), loss=loss(),
                        sample_weight=weights, seed=0, progress=False, **options)  # fmt: skip
    return model, {key: value for key, value in history.history.items() if key != "seconds"}


def _compiled_steps(model: fastopt.Sequential) -> list[object]:
    workspaces = model._threads.workspaces().values()
    return [workspace.compiled[-1] for workspace in workspaces if workspace.compiled and workspace.compiled[-1]]


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_fit_gives_the_same_bits_with_the_compiled_step_and_without(  # type: ignore[no-untyped-def]
    case, dtype, weighted, without_compiled_step, made_steps
):
    _direct_gemm_or_skip()
    compiled, compiled_history = _fit(case, dtype, weighted)
    assert len(made_steps) == 2 and all(isinstance(step, _nn.TrainingStep) for step in made_steps)  # batches 25, 10
    python, python_history = without_compiled_step(lambda: _fit(case, dtype, weighted))
    assert len(made_steps) == 2
    assert compiled.parameters.tobytes() == python.parameters.tobytes()
    assert compiled.gradients.tobytes() == python.gradients.tobytes()
    assert compiled_history == python_history  # loss and accuracy sums, to the bit


def test_a_non_finite_loss_is_skipped_alike(without_compiled_step) -> None:  # type: ignore[no-untyped-def]
    _direct_gemm_or_skip()
    # Row 30 (in one batch of each epoch) at 3e38 times the signs of the first hidden unit's weights: that unit's
    # input is a sum of positive terms whose exact total exceeds float32's largest value, so it overflows in any
    # summation order (any BLAS kernel), and the loss that follows is not finite.
    first_weights = fastopt.Sequential(_stack(layers.ReLU, 4), backend="cython", seed=0).layers[0].weight[:, 0]
    assert 3e38 * np.abs(first_weights.astype(np.float64)).sum() > 2 * float(np.finfo(np.float32).max)
    poisoned = X.copy()
    poisoned[30] = 3e38 * np.sign(first_weights)

    def fit() -> tuple[bytes, dict]:
        model = fastopt.Sequential(_stack(layers.ReLU, 4), backend="cython", seed=0)
        history = model.fit(poisoned, LABELS, epochs=2, batch_size=25, seed=0, progress=False, on_nonfinite="skip")
        return model.parameters.tobytes(), {k: v for k, v in history.history.items() if k != "seconds"}

    compiled = fit()
    assert compiled[1]["skipped_batches"] == [1, 1]
    assert compiled == without_compiled_step(fit)


# ConvergenceWarning after 5 iterations, by its message: its category would import scikit-learn, which the wheel's
# test environment lacks
@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
@pytest.mark.parametrize(
    "estimator, targets",
    [("MLPClassifier", LABELS), ("MLPClassifier", LABELS % 2), ("MLPRegressor", RNG.normal(size=(N_ROWS, 2)))],
    ids=["multiclass", "binary", "regression"],
)
def test_scikit_learn_estimators_give_the_same_bits_with_the_compiled_step(  # type: ignore[no-untyped-def]
    estimator, targets, without_compiled_step, made_steps
):
    _direct_gemm_or_skip()
    estimators = pytest.importorskip("fastopt.sklearn")

    def fit() -> list[bytes]:
        model = getattr(estimators, estimator)(hidden_layer_sizes=(16,), max_iter=5, batch_size=25, random_state=0)
        model.fit(X, targets, sample_weight=SAMPLE_WEIGHTS)
        return [array.tobytes() for array in model.coefs_ + model.intercepts_]

    compiled = fit()
    assert made_steps and all(isinstance(step, _nn.TrainingStep) for step in made_steps)
    assert compiled == without_compiled_step(fit)


@pytest.mark.parametrize(
    "stack, loss",
    [
        (_stack(layers.Tanh, 4), losses.CrossEntropy()),  # tanh: NumPy's, between the kernels
        ([layers.Dense(N_FEATURES, 16), layers.Dropout(0.5), layers.Dense(16, 4)], losses.CrossEntropy()),
    ],
    ids=["tanh", "dropout"],
)
def test_models_the_step_cannot_run_train_by_the_python_step(stack, loss, made_steps) -> None:  # type: ignore[no-untyped-def]
    model = fastopt.Sequential(stack, backend="cython", seed=0)
    model.fit(X, LABELS, epochs=1, batch_size=25, loss=loss, progress=False)
    assert not any(made_steps) and np.isfinite(model.parameters).all()


def test_a_loss_with_its_own_compute_is_computed_by_it() -> None:
    calls = []

    class CountedMSE(losses.MSE):
        def compute(self, backend, output, target, grad, weights=None):  # type: ignore[no-untyped-def]
            calls.append(len(output))
            return super().compute(backend, output, target, grad, weights)

    model = fastopt.Sequential(_stack(layers.ReLU, 1), backend="cython", seed=0)
    model.fit(X, RNG.normal(size=N_ROWS), epochs=1, batch_size=25, loss=CountedMSE(), progress=False)
    assert calls == [25] * 8 + [10]


def test_a_change_of_the_gemm_setup_remakes_the_step(use_gemm_path) -> None:  # type: ignore[no-untyped-def]
    use_gemm_path("direct")
    model = fastopt.Sequential(_stack(layers.ReLU, 4), backend="cython", seed=0)
    loss, backend = losses.CrossEntropy(), fastopt.backend.resolve_backend("cython")
    targets = loss.targets(LABELS, 4, model.dtype)
    rows = np.arange(32, dtype=np.int64)
    model._batch_gradients(backend, loss, X, targets, rows, compiled=True)
    direct = model.gradients.copy()
    assert _compiled_steps(model)
    use_gemm_path("matmul")  # the step made for the direct path must not run
    model._batch_gradients(backend, loss, X, targets, rows, compiled=True)
    assert not _compiled_steps(model)
    np.testing.assert_allclose(model.gradients, direct, rtol=1e-4, atol=1e-6)


def test_the_model_keeps_no_reference_to_the_data_after_training() -> None:
    """The compiled steps hold the data set they were made for: dropped when ``fit`` (or an estimator's fit) ends,
    also by an exception."""
    _direct_gemm_or_skip()
    model = fastopt.Sequential(_stack(layers.ReLU, 4), backend="cython", seed=0)
    data = X.copy()
    alive = weakref.ref(data)
    model.fit(data, LABELS, epochs=1, batch_size=25, progress=False)
    del data
    gc.collect()
    assert alive() is None and not _compiled_steps(model)

    class Stop(Exception):
        pass

    class StopAtBatch3(fastopt.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):  # type: ignore[no-untyped-def]
            if batch == 3:
                raise Stop

    with pytest.raises(Stop):
        model.fit(X, LABELS, epochs=1, batch_size=25, progress=False, callbacks=[StopAtBatch3()])
    assert not _compiled_steps(model)
    estimators = pytest.importorskip("fastopt.sklearn")
    estimator = estimators.MLPClassifier(hidden_layer_sizes=(16,), batch_size=25, max_iter=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning after 2 iterations
        estimator.fit(X, LABELS)
    assert not _compiled_steps(estimator._model)


def test_one_off_gradients_and_short_partial_fits_make_no_step(made_steps) -> None:  # type: ignore[no-untyped-def]
    """A step is made for one data set (about 50 us): ``compute_gradients``, called on new arrays each time, and a
    ``partial_fit`` of fewer than 8 batches run the Python step."""
    _direct_gemm_or_skip()
    model = fastopt.Sequential(_stack(layers.ReLU, 4), backend="cython", seed=0)
    model.compute_gradients(X[:32], LABELS[:32])
    assert not made_steps
    estimators = pytest.importorskip("fastopt.sklearn")
    short, long = (estimators.MLPClassifier(hidden_layer_sizes=(16,), batch_size=25) for _ in range(2))
    short.partial_fit(X[: 7 * 25], LABELS[: 7 * 25], classes=np.arange(4))
    assert not made_steps
    long.partial_fit(X[: 8 * 25], LABELS[: 8 * 25], classes=np.arange(4))
    assert len(made_steps) == 1 and isinstance(made_steps[0], _nn.TrainingStep)


@settings(max_examples=40, deadline=None)
@given(
    widths=st.lists(st.integers(2, 40), min_size=1, max_size=3),  # cross-entropy needs 2 outputs
    batch=st.integers(1, 70),
    activation=st.sampled_from(["relu", "sigmoid", "leaky_relu", "gelu", "gelu_tanh", "identity"]),
    softmax_then_mse=st.booleans(),
    dtype=st.sampled_from(["float32", "float64"]),
    seed=st.integers(0, 2**16),
)
def test_one_step_of_random_networks_equals_the_python_step(widths, batch, activation, softmax_then_mse, dtype, seed):  # type: ignore[no-untyped-def]
    _direct_gemm_or_skip()
    made = {"relu": layers.ReLU, "sigmoid": layers.Sigmoid, "leaky_relu": lambda: layers.LeakyReLU(0.2),
            "gelu": layers.GELU, "gelu_tanh": lambda: layers.GELU(approximate="tanh"),
            "identity": None}[activation]  # fmt: skip
    rng = np.random.default_rng(seed)
    sizes = [int(rng.integers(1, 30)), *widths]
    stack: list[layers.Layer] = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        stack += [layers.Dense(fan_in, fan_out)] + ([made()] if made is not None else [])
    loss = losses.CrossEntropy()
    if softmax_then_mse:
        stack.append(layers.Softmax())
        loss = losses.MSE()
    model = fastopt.Sequential(stack, backend="cython", dtype=dtype, seed=seed)
    inputs = rng.normal(size=(batch + 5, sizes[0])).astype(dtype)
    targets = loss.targets(rng.integers(0, sizes[-1], batch + 5), sizes[-1], model.dtype)
    rows = rng.permutation(batch + 5)[:batch].astype(np.int64)
    backend = fastopt.backend.resolve_backend("cython")
    compiled = model._batch_gradients(backend, loss, inputs, targets, rows, compiled=True)
    assert _compiled_steps(model)
    compiled_gradients = model.gradients.copy()
    assert model._batch_gradients(backend, loss, inputs, targets, rows) == compiled  # the Python step
    assert model.gradients.tobytes() == compiled_gradients.tobytes()


# ------------------------------------------------------------------------------- bad input
def _step_arguments(dtype: type = np.float32) -> dict[str, object]:
    """The arguments of a valid TrainingStep: one dense stage of 3 -> 2 features over batches of 4 rows."""
    source, weight = np.zeros((10, 3), dtype), np.zeros((3, 2), dtype)
    stage = (0, 0, 0.0, 3, 2, np.zeros((4, 2), dtype), np.zeros((4, 2), dtype), weight, np.zeros(2, dtype),
             np.zeros_like(weight), np.zeros(2, dtype))  # fmt: skip
    data = (source, np.zeros((4, 3), dtype), np.zeros(10, np.int64), np.zeros(4, np.int64), None, None, None, None)
    return {"stages": (stage,), "data": data, "loss": (0, 0, 0.0, None, 1.0, 1.0, 1)}


def test_a_valid_step_runs() -> None:
    if not _nn.build_info()["blas_installed"]:
        pytest.skip("no BLAS installed for the direct GEMMs")
    arguments = _step_arguments()
    step = _nn.TrainingStep(**arguments)
    loss, correct, finite = step.run(np.array([0, 9, 3, 3], dtype=np.int64))
    assert loss == pytest.approx(np.log(2)) and correct == 4 and finite  # zero weights: even odds, argmax 0


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a["stages"][0].__setitem__(7, np.zeros((2, 3), np.float32)), "weight must be"),
        (lambda a: a["stages"][0].__setitem__(9, np.zeros((3, 2), np.float32)[::1].T.copy().T), "grad_weight must be"),
        (lambda a: a["stages"][0].__setitem__(6, np.zeros((4, 2), np.float64)), "grad_out must be"),
        (lambda a: a["stages"][0].__setitem__(3, 5), "takes 5 features"),
        (lambda a: a["stages"][0].__setitem__(0, 1), "kind 1"),
        (lambda a: a["data"].__setitem__(3, np.zeros(4, np.int32)), "targets must be"),
        (lambda a: a["data"].__setitem__(1, np.zeros((4, 6), np.float32)[:, ::2]), "inputs must be"),
        (lambda a: a["loss"].__setitem__(0, 9), "no training step for the loss"),
        (lambda a: a["loss"].__setitem__(6, 2), "no count 2"),
        (lambda a: a["stages"][0][10].setflags(write=False), "read-only"),
        # fewer target rows than input rows: the gather read past the targets' end
        (lambda a: a["data"].__setitem__(2, np.zeros(3, np.int64)), "target_source must be"),
        # activations a dense stage cannot apply (GELU's forward pass was the identity) or that are no activation
        (lambda a: a["stages"][0].__setitem__(1, 5), "no activation 5"),
        (lambda a: a["stages"][0].__setitem__(slice(1, 3), [4, -0.5]), "no activation 4 \\(negative slope -0.5\\)"),
        (lambda a: a["stages"][0].__setitem__(1, 99), "no activation 99"),
        # a written buffer sharing bytes with another: silently wrong gradients, or memcpy over its own source
        (lambda a: a["stages"][0].__setitem__(6, a["stages"][0][5]), "stage 0's out overlaps stage 0's grad_out"),
        (lambda a: a["data"].__setitem__(1, a["data"][0][3:7]), "inputs overlaps source"),
        (lambda a: a["stages"][0].__setitem__(10, a["stages"][0][9].reshape(-1)[1:3]), "grad_bias overlaps"),
    ],
)
def test_bad_buffers_are_refused_when_the_step_is_made(change, message) -> None:  # type: ignore[no-untyped-def]
    if not _nn.build_info()["blas_installed"]:
        pytest.skip("no BLAS installed for the direct GEMMs")
    arguments = _step_arguments()
    arguments = {"stages": [list(arguments["stages"][0])], "data": list(arguments["data"]),
                 "loss": list(arguments["loss"])}  # fmt: skip
    change(arguments)
    with pytest.raises(ValueError, match=message):
        _nn.TrainingStep((tuple(arguments["stages"][0]),), tuple(arguments["data"]), tuple(arguments["loss"]))


@pytest.mark.parametrize(
    "rows, error, message",
    [
        ([0, 1, 2], ValueError, "takes 4 rows, got 3"),
        ([0, 1, 2, 10], IndexError, "row 10 is outside the data set's 10 rows"),
        ([0, -1, 2, 3], IndexError, "row -1"),
    ],
)
def test_bad_rows_are_refused_before_anything_is_written(rows, error, message) -> None:  # type: ignore[no-untyped-def]
    if not _nn.build_info()["blas_installed"]:
        pytest.skip("no BLAS installed for the direct GEMMs")
    arguments = _step_arguments()
    inputs = arguments["data"][1]
    inputs[...] = 5
    step = _nn.TrainingStep(**arguments)
    with pytest.raises(error, match=message):
        step.run(np.array(rows, dtype=np.int64))
    assert (inputs == 5).all()


def test_rows_that_view_a_buffer_the_step_writes_are_read_as_checked() -> None:
    """The rows view the step's own outputs (zeros when checked, then overwritten by the forward pass) and are read
    again after it (the correct predictions counted against labels of their own): the step runs on a copy of its
    rows made as they are checked."""
    _direct_gemm_or_skip()
    model = fastopt.Sequential(_stack(layers.ReLU, 4), backend="cython", dtype="float64", seed=3)
    targets = losses.Targets(values=np.eye(4)[LABELS], labels=LABELS, classes=4)  # MSE on one-hot rows
    backend = fastopt.backend.resolve_backend("cython")
    workspace = model._training_workspace(100, targets)
    step = model._compiled_step(backend, workspace, losses.MSE(), X.astype(np.float64), targets)
    expected = step.run(np.zeros(100, np.int64)), model.gradients.copy()
    workspace.outputs[-1][...] = 0.0
    assert step.run(workspace.outputs[-1].reshape(-1)[:100].view(np.int64)) == expected[0]
    assert model.gradients.tobytes() == expected[1].tobytes()


# ------------------------------------------------------------------------------- compiled forward stages
@pytest.fixture
def without_compiled_stages(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    return _switched_off(monkeypatch, "_forward_stages")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "stack",
    [
        lambda: _stack(layers.ReLU, 4),
        lambda: [*_stack(layers.GELU, 3), layers.Softmax()],
        lambda: [layers.Dense(N_FEATURES, 1)],
        lambda: [*_stack(lambda: layers.LeakyReLU(0.3), 5), layers.Sigmoid()],
    ],
    ids=["relu", "gelu_softmax", "one_layer", "leaky_sigmoid"],
)
def test_predictions_give_the_same_bits_with_the_compiled_stages_and_without(stack, dtype, without_compiled_stages):  # type: ignore[no-untyped-def]
    _direct_gemm_or_skip()
    model = fastopt.Sequential(stack(), backend="cython", dtype=dtype, seed=3)
    inputs = X.astype(dtype)
    targets = LABELS % model.out_features
    probabilities = model.out_features == 1 or isinstance(model.layers[-1], layers.Softmax)
    loss = losses.MSE() if probabilities else losses.CrossEntropy()

    def outputs() -> list[object]:
        # three batch sizes (1, 32, 70), within the workspaces a thread keeps (MAX_WORKSPACES)
        return [model.predict(inputs[:1]).tobytes(), model.predict(inputs[:32]).tobytes(),
                model.predict(inputs, batch_size=70).tobytes(),
                model.evaluate(inputs, targets, loss=loss, batch_size=70)]  # fmt: skip

    first = outputs()  # each workspace's first use: its stages are made at the second
    compiled = outputs()
    workspaces = model._threads.workspaces().values()
    assert all(isinstance(workspace.stages[2], _nn.CompiledStages) for workspace in workspaces)
    assert compiled == first == without_compiled_stages(outputs)


def test_stages_are_not_shared_across_backends_and_gemm_paths(use_gemm_path) -> None:  # type: ignore[no-untyped-def]
    use_gemm_path("direct")
    model = fastopt.Sequential(_stack(layers.ReLU, 4), seed=0)  # follows the current backend
    with fastopt.use_backend("cython"):
        model.predict(X)
        direct = model.predict(X)  # the second use makes the stages
    stages = model._workspace(len(X)).stages[2]
    assert isinstance(stages, _nn.CompiledStages)
    with fastopt.use_backend("numpy"):
        for _ in range(2):
            np.testing.assert_allclose(model.predict(X), direct, rtol=1e-5, atol=1e-6)
    assert model._workspace(len(X)).stages[2] is None  # the numpy backend has none
    use_gemm_path("matmul")
    with fastopt.use_backend("cython"):
        np.testing.assert_allclose(model.predict(X), direct, rtol=1e-5, atol=1e-6)
        assert stages.forward(X) is False  # made for the direct path: out of date, it runs nothing


@pytest.mark.parametrize(
    "inputs, message",
    [
        (np.zeros((4, 3), np.float64), "Buffer dtype mismatch"),
        (np.zeros((5, 3), np.float32), r"take \(4, 3\) inputs, got \(5, 3\)"),
        (np.zeros((4, 6), np.float32)[:, ::2], "contiguous"),
        (np.zeros(12, np.float32), "Buffer has wrong number of dimensions"),
    ],
    ids=["dtype", "rows", "strided", "1-D"],
)
def test_compiled_stages_refuse_bad_inputs(inputs, message) -> None:  # type: ignore[no-untyped-def]
    if not _nn.build_info()["blas_installed"]:
        pytest.skip("no BLAS installed for the direct GEMMs")
    stage = _step_arguments()["stages"][0]
    stages = _nn.CompiledStages((stage,), 4, 3, 4)
    out = stage[5]
    out[...] = 7
    with pytest.raises(ValueError, match=message):
        stages.forward(inputs)
    assert (out == 7).all()  # nothing written
    assert stages.forward(np.ones((4, 3), np.float32)) is True and not out.any()  # zero weights and bias: zeros


@pytest.mark.parametrize("dtype", [np.float16, np.longdouble])
def test_a_step_of_another_float_width_is_refused(dtype) -> None:  # type: ignore[no-untyped-def]
    """Every buffer of float16 (or long double) passed the shape and item-size checks, and the step then ran its
    float32 loops over them: writing twice their bytes (heap corruption)."""
    if not _nn.build_info()["blas_installed"]:
        pytest.skip("no BLAS installed for the direct GEMMs")
    with pytest.raises(ValueError, match="float32 or float64"):
        _nn.TrainingStep(**_step_arguments(dtype))


def test_a_label_outside_the_classes_is_refused_before_anything_is_written() -> None:
    """The cross-entropy kernel subtracts the target at its label's column: a label beyond the outputs wrote
    outside the gradient buffer (a segfault for a large one). Labels are read at each call, so a label changed in
    place after the step was made is refused too."""
    if not _nn.build_info()["blas_installed"]:
        pytest.skip("no BLAS installed for the direct GEMMs")
    arguments = _step_arguments()
    inputs, labels = arguments["data"][1], arguments["data"][2]
    inputs[...] = 5
    step = _nn.TrainingStep(**arguments)
    for bad in (2, -1, 10**12):
        labels[7] = bad
        with pytest.raises(ValueError, match=f"row 7's label {bad} is not one of the 2 classes"):
            step.run(np.array([0, 1, 7, 3], dtype=np.int64))
        assert (inputs == 5).all()
    labels[7] = 1
    assert step.run(np.array([0, 1, 7, 3], dtype=np.int64))[1] == 3  # argmax 0 of zero logits: label 1 is wrong


def test_a_step_is_made_once_and_only_made_steps_run() -> None:
    """A second ``__init__`` replaced the list that kept the first call's arrays alive, while the stages still
    pointed into them: once it failed, ``run`` wrote into freed memory. A step made by ``__new__`` alone read its
    NULL stages."""
    if not _nn.build_info()["blas_installed"]:
        pytest.skip("no BLAS installed for the direct GEMMs")
    step = _nn.TrainingStep(**_step_arguments())
    with pytest.raises(TypeError, match="made once"):
        step.__init__(**_step_arguments())
    assert step.run(np.arange(4, dtype=np.int64))[2]  # still the first call's step, whose arrays it keeps
    with pytest.raises(ValueError, match="was not made"):
        _nn.TrainingStep.__new__(_nn.TrainingStep).run(np.zeros(0, dtype=np.int64))
    with pytest.raises(ValueError, match="were not made"):
        _nn.CompiledStages.__new__(_nn.CompiledStages).forward(np.zeros((1, 1), np.float32))
    stages = _nn.CompiledStages((_step_arguments()["stages"][0],), 4, 3, 4)
    with pytest.raises(TypeError, match="made once"):
        stages.__init__((_step_arguments()["stages"][0],), 4, 3, 4)
