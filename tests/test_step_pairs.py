"""A batch's gradients as two halves (``Sequential._pair_gradients``, the scikit-learn estimators' batches from
``PAIRED_FROM_ROWS`` rows): the compiled step pair (``_nn.StepPair``) gives the bits of the Python halves on any
thread count, the halves' weighted mean is the whole batch's gradient, a half of zero weight counts for nothing,
the twin model is never copied or pickled, and a pair refuses steps that would write each other's buffers."""

from __future__ import annotations

import pickle
import warnings
from dataclasses import replace

import numpy as np
import pytest

import fastopt
from fastopt import layers, losses
from fastopt.backend import resolve_backend

cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")
_nn = cython_backend._nn

N_ROWS, N_FEATURES = 300, 12
RNG = np.random.default_rng(11)
X = RNG.normal(size=(N_ROWS, N_FEATURES))
LABELS = RNG.integers(0, 4, N_ROWS)
SAMPLE_WEIGHTS = RNG.random(N_ROWS)

# name: (hidden activation, outputs, loss, targets)
CASES = {
    "cross_entropy": (layers.ReLU, 4, losses.CrossEntropy, LABELS),
    "binary": (layers.Sigmoid, 3, losses.BinaryCrossEntropy, (RNG.random((N_ROWS, 3)) > 0.5).astype(float)),
    "mse": (lambda: layers.LeakyReLU(0.1), 2, losses.MSE, RNG.normal(size=(N_ROWS, 2))),
    "huber": (layers.ReLU, 1, lambda: losses.Huber(delta=0.5), RNG.normal(size=N_ROWS)),
}


def _direct_gemm_or_skip() -> None:
    if cython_backend.gemm_path() != "direct":
        pytest.skip("the compiled step runs on the direct GEMM path only, unavailable here")


def _problem(case: str, dtype: str, weights: np.ndarray | None, backend: str = "cython"):  # type: ignore[no-untyped-def]
    """A model, its loss, the data set's inputs and targets (with ``weights``) in the model's dtype."""
    activation, outputs, loss_class, targets = CASES[case]
    model = fastopt.Sequential([layers.Dense(N_FEATURES, 16), activation(), layers.Dense(16, outputs)],
                               backend=backend, dtype=dtype, seed=3)  # fmt: skip
    loss = loss_class()
    targets = loss.targets(targets, outputs, model.dtype)
    if weights is not None:
        targets = replace(targets, weights=weights.astype(model.dtype))
    return model, loss, X.astype(dtype), targets


def _pair(model, loss, inputs, targets, rows, compiled=True):  # type: ignore[no-untyped-def]
    backend = resolve_backend(model.backend)
    return model._pair_gradients(backend, loss, inputs, targets, rows, compiled=compiled), model.gradients.copy()


@pytest.mark.parametrize("batch", [200, 147, 2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_step_pair_gives_the_bits_of_the_halves_one_after_the_other(case, dtype, weighted, batch) -> None:  # type: ignore[no-untyped-def]
    _direct_gemm_or_skip()
    model, loss, inputs, targets = _problem(case, dtype, SAMPLE_WEIGHTS if weighted else None)
    rows = RNG.permutation(N_ROWS)[:batch].astype(np.int64)
    compiled, compiled_gradients = _pair(model, loss, inputs, targets, rows)
    pair = model._workspace(batch // 2).pair[-1]
    assert isinstance(pair, _nn.StepPair)
    python, python_gradients = _pair(model, loss, inputs, targets, rows, compiled=False)
    assert compiled == python
    assert compiled_gradients.tobytes() == python_gradients.tobytes()


@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "sample_weight"])
@pytest.mark.parametrize("backend", ["cython", "numpy"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_halves_weighted_mean_is_the_batch_gradient(case, backend, weighted) -> None:  # type: ignore[no-untyped-def]
    """In float64 the two ways differ by the order of their sums over the rows only. A sum of n terms in any order
    is within (n - 1) eps of the exact one relative to the sum of the terms' magnitudes: the weights and the rows'
    losses are not negative, so that is the sum itself; the gradient's terms have both signs, and their magnitude is
    taken as the largest gradient's (the differences measured 4e-16 to 1.5e-15 of it, under a fiftieth of the bound)."""
    model, loss, inputs, targets = _problem(case, "float64", SAMPLE_WEIGHTS if weighted else None, backend)
    rows = RNG.permutation(N_ROWS)[:201].astype(np.int64)
    order = len(rows) * np.finfo(np.float64).eps  # the halves' sums, then their weighted mean: n eps in all
    (value, correct, weight, finite), paired = _pair(model, loss, inputs, targets, rows)
    whole = model._batch_gradients(resolve_backend(backend), loss, inputs, targets, rows)
    assert finite and whole[3]
    assert (correct, weight) == (whole[1], pytest.approx(whole[2], rel=order))
    assert value == pytest.approx(whole[0], rel=2 * order)  # the weighted loss sum and the weight sum
    np.testing.assert_allclose(paired, model.gradients, rtol=0, atol=2 * order * np.abs(model.gradients).max())


@pytest.mark.parametrize("zero_half", [0, 1])
@pytest.mark.parametrize("compiled", [True, False], ids=["step_pair", "python"])
def test_a_half_of_zero_weight_counts_for_nothing(zero_half, compiled) -> None:  # type: ignore[no-untyped-def]
    """Its loss (0 / 0) is left out, and the batch's gradient is the other half's."""
    _direct_gemm_or_skip()
    rows = np.arange(200, dtype=np.int64)
    halves = (rows[:100], rows[100:])
    weights = SAMPLE_WEIGHTS.copy()
    weights[halves[zero_half]] = 0
    model, loss, inputs, targets = _problem("cross_entropy", "float32", weights)
    (value, correct, weight, finite), paired = _pair(model, loss, inputs, targets, rows, compiled)
    backend = resolve_backend("cython")
    weightless = model._batch_gradients(backend, loss, inputs, targets, halves[zero_half])
    alone = model._batch_gradients(backend, loss, inputs, targets, halves[1 - zero_half])
    assert weightless[2] == 0 and alone[2] > 0
    assert (value, correct, weight, finite) == (alone[0], alone[1] + weightless[1], alone[2], alone[3])
    assert paired.tobytes() == model.gradients.tobytes()


def test_the_step_pair_gives_the_same_bits_on_one_and_two_threads() -> None:
    _direct_gemm_or_skip()
    model, loss, inputs, targets = _problem("cross_entropy", "float32", SAMPLE_WEIGHTS)
    rows = RNG.permutation(N_ROWS)[:256].astype(np.int64)
    before = cython_backend.build_info()["openmp_threads"]
    results = []
    try:
        for threads in (1, 2):
            cython_backend.set_openmp_threads(threads)
            results.append(_pair(model, loss, inputs, targets, rows))
    finally:
        cython_backend.set_openmp_threads(before)
    assert results[0][0] == results[1][0] and results[0][1].tobytes() == results[1][1].tobytes()


def test_the_twin_shares_the_parameters_and_is_neither_copied_nor_pickled() -> None:
    _direct_gemm_or_skip()
    model, loss, inputs, targets = _problem("mse", "float32", None)
    _pair(model, loss, inputs, targets, np.arange(200, dtype=np.int64))
    twin = model._twin
    assert twin is not None and twin._parameters is model._parameters
    assert not np.shares_memory(twin._gradients, model._gradients)
    assert all(np.shares_memory(mine.weight, its.weight) for mine, its in zip(model.layers[::2], twin.layers[::2]))
    assert model.copy()._twin is None and pickle.loads(pickle.dumps(model))._twin is None
    model._forget_compiled_steps()
    assert all(workspace.compiled is None for workspace in twin._threads.workspaces().values())


def _two_steps(model, loss, inputs, targets, batch=100):  # type: ignore[no-untyped-def]
    """The compiled steps of ``model`` and its twin for ``batch`` rows."""
    backend = resolve_backend("cython")
    twin = model._twin_model()
    return tuple(
        owner._compiled_step(backend, owner._training_workspace(batch, targets), loss, inputs, targets)
        for owner in (model, twin)
    )


def test_a_step_pair_refuses_steps_that_share_what_they_write() -> None:
    _direct_gemm_or_skip()
    model, loss, inputs, targets = _problem("cross_entropy", "float32", None)
    step, twin_step = _two_steps(model, loss, inputs, targets)
    with pytest.raises(ValueError, match="two distinct training steps"):
        _nn.StepPair(step, step)
    backend = resolve_backend("cython")
    # another step of the same model (another batch size): it writes the same gradients
    same_gradients = model._compiled_step(backend, model._training_workspace(50, targets), loss, inputs, targets)
    with pytest.raises(ValueError, match="the second step's stage 0's grad_weight overlaps the first step's stage 0's "
                                         "grad_weight; a step of a pair"):  # fmt: skip
        _nn.StepPair(step, same_gradients)
    # a model whose gradients are the first model's parameters: only the second step writes what the other reads
    state = model.__getstate__()
    state.update(layers=[layers.layer_from_config(layer.config()) for layer in model.layers],
                 _parameters=np.zeros_like(model._parameters), _gradients=model._parameters, optimizer=None,
                 _optimizer_bound=False)  # fmt: skip
    writes_the_weights = fastopt.Sequential.__new__(fastopt.Sequential)
    writes_the_weights.__setstate__(state)
    its_step = writes_the_weights._compiled_step(
        backend, writes_the_weights._training_workspace(100, targets), loss, inputs, targets
    )
    with pytest.raises(ValueError, match="the second step's stage 0's grad_weight overlaps the first step's stage 0's "
                                         "weight; a step of a pair must write only buffers of its own"):  # fmt: skip
        _nn.StepPair(step, its_step)
    wide = _problem("cross_entropy", "float64", None)
    with pytest.raises(ValueError, match="one float width"):
        _nn.StepPair(step, _two_steps(*wide)[1])
    with pytest.raises(TypeError):
        _nn.StepPair(step, None)
    pair = _nn.StepPair(step, twin_step)
    with pytest.raises(TypeError, match="made once"):
        pair.__init__(step, twin_step)


@pytest.mark.parametrize("bad_half", [0, 1])
def test_bad_rows_in_either_half_are_refused_before_anything_is_written(bad_half) -> None:  # type: ignore[no-untyped-def]
    _direct_gemm_or_skip()
    model, loss, inputs, targets = _problem("cross_entropy", "float32", None)
    step, twin_step = _two_steps(model, loss, inputs, targets)
    pair = _nn.StepPair(step, twin_step)
    rows = [np.arange(100, dtype=np.int64), np.arange(100, 200, dtype=np.int64)]
    model.gradients[...] = 7.0
    model._twin.gradients[...] = 7.0
    rows[bad_half][-1] = N_ROWS
    with pytest.raises(IndexError, match=f"row {N_ROWS} is outside"):
        pair.run(*rows)
    rows[bad_half][-1] = 0
    with pytest.raises(ValueError, match="takes 100 rows"):
        pair.run(*(half[:99] if index == bad_half else half for index, half in enumerate(rows)))
    assert (model.gradients == 7).all() and (model._twin.gradients == 7).all()
    assert pair.run(*rows) is not None and not (model.gradients == 7).all()


def test_rows_that_view_a_buffer_a_step_writes_are_read_as_checked() -> None:
    """The second half's rows view the first step's gradients (zeros when checked, then overwritten): each step
    runs on a copy of its rows made as they are checked."""
    _direct_gemm_or_skip()
    model, loss, inputs, targets = _problem("cross_entropy", "float64", None)
    pair = _nn.StepPair(*_two_steps(model, loss, inputs, targets))
    first = np.arange(100, dtype=np.int64)
    model.gradients[...] = 0.0
    expected = pair.run(first, np.zeros(100, np.int64)), model.gradients.copy(), model._twin.gradients.copy()
    model.gradients[...] = 0.0
    assert pair.run(first, model.gradients[:100].view(np.int64)) == expected[0]
    assert model.gradients.tobytes() == expected[1].tobytes()
    assert model._twin.gradients.tobytes() == expected[2].tobytes()


def test_a_step_pair_is_not_pickled() -> None:
    """A pickle's state would make a pair without ``__init__``'s checks."""
    _direct_gemm_or_skip()
    model, loss, inputs, targets = _problem("cross_entropy", "float32", None)
    pair = _nn.StepPair(*_two_steps(model, loss, inputs, targets))
    with pytest.raises(TypeError):
        pickle.dumps(pair)
    assert not hasattr(pair, "__setstate_cython__")


def test_a_pair_is_made_again_when_the_twins_buffers_change() -> None:
    """Another loss's call remakes the twin's workspace of the second half's size (targets of another shape): the
    pair made before, kept in the first half's workspace, must not run with the twin's old buffers."""
    _direct_gemm_or_skip()
    model, cross_entropy, inputs, labels = _problem("cross_entropy", "float32", SAMPLE_WEIGHTS)
    mse = losses.MSE()
    values = replace(mse.targets(RNG.normal(size=(N_ROWS, 4)), 4, model.dtype), weights=100 * labels.weights)
    odd, even = (RNG.permutation(N_ROWS)[:size].astype(np.int64) for size in (201, 202))  # halves 100 + 101, 101 + 101
    expected = _pair(model, cross_entropy, inputs, labels, odd, compiled=False)
    assert _pair(model, cross_entropy, inputs, labels, odd) == (expected[0], pytest.approx(expected[1]))
    _pair(model, mse, inputs, values, even)
    again = _pair(model, cross_entropy, inputs, labels, odd)
    assert again[0] == expected[0] and again[1].tobytes() == expected[1].tobytes()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_weighted_sum_into_with_halves_agrees_across_backends_to_the_bit(dtype) -> None:  # type: ignore[no-untyped-def]
    """Weights of 0.5 make both products exact: one rounding, the sum's, in either backend (2**16 + 3 elements:
    threaded in the compiled one)."""
    a, b = (np.random.default_rng(seed).normal(size=2**16 + 3).astype(dtype) for seed in (1, 2))
    results = []
    for backend in ("cython", "numpy"):
        out = a.copy()
        resolve_backend(backend).weighted_sum_into(out, b, a_weight=0.5, b_weight=0.5)
        results.append(out)
    assert results[0].tobytes() == results[1].tobytes()
    # a + b is exact in float64 for these float32 values, and halving is exact: one rounding to the dtype
    np.testing.assert_array_equal(results[0], ((a.astype(np.float64) + b) / 2).astype(dtype))


@pytest.mark.filterwarnings("ignore:Stochastic Optimizer")
@pytest.mark.parametrize("estimator", ["MLPClassifier", "MLPRegressor"])
def test_the_estimators_pair_their_batches_with_the_same_bits_compiled_or_not(estimator, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    _direct_gemm_or_skip()
    estimators = pytest.importorskip("fastopt.sklearn")
    targets = LABELS if estimator == "MLPClassifier" else RNG.normal(size=N_ROWS)
    paired = []
    original = fastopt.Sequential._pair_gradients

    def counted(self, *arguments, **options):  # type: ignore[no-untyped-def]
        paired.append(options["compiled"])
        return original(self, *arguments, **options)

    monkeypatch.setattr(fastopt.Sequential, "_pair_gradients", counted)

    def fit() -> list[bytes]:
        model = getattr(estimators, estimator)(hidden_layer_sizes=(200,), max_iter=3, batch_size=150, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, targets, sample_weight=SAMPLE_WEIGHTS)
        return [array.tobytes() for array in model.coefs_ + model.intercepts_]

    compiled = fit()
    assert paired == [True] * 6  # 12 x 200 + 200 x k multiply-adds a row: 75-row halves pass 2**16
    monkeypatch.setattr(cython_backend.CythonBackend, "_training_step", lambda *arguments: None)
    paired.clear()
    assert fit() == compiled and len(paired) == 6
