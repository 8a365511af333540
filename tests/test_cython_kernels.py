"""The compiled kernels against the NumPy reference, through the public checked methods of both backends.

Tolerances (relative): float64 1e-12, float32 1e-5. Elementwise wherever the two backends perform the
same operations in the same order (optimizers, activations, the dense epilogue and backward prologue,
bias gradients: in practice these agree bitwise). Normwise (``max|a - b| <= rtol * max|b|``) where a sum
is reordered: GEMM outputs (both backends call ``numpy.matmul`` today, but BLAS may block its sums
differently), the row sums of softmax backward and of the cross-entropy gradient, whose entries can
cancel. Losses are compared as scalars with the relative bound.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from fastopt.numpy_backend import NumpyBackend  # noqa: E402

NB = NumpyBackend()
CB = cython_backend.CythonBackend()
DTYPES = [np.float32, np.float64]
ACTIVATIONS = ["identity", "relu", "sigmoid", "tanh"]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def rtol(dtype: object) -> float:
    return RTOL[np.dtype(dtype)]


def assert_close(
    actual: np.ndarray, expected: np.ndarray, *, normwise: bool = False, float64_tol: float | None = None
) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    tol = float64_tol if float64_tol is not None and expected.dtype == np.float64 else rtol(expected.dtype)
    if normwise:
        scale = float(np.max(np.abs(expected))) if expected.size else 0.0
        np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale)
    else:
        np.testing.assert_allclose(actual, expected, rtol=tol, atol=0)


def assert_scalar_close(actual: float, expected: float, dtype: object) -> None:
    assert isinstance(actual, float)
    assert actual == pytest.approx(expected, rel=rtol(dtype), abs=0)


def rand(rng: np.random.Generator, shape: tuple[int, ...], dtype: object, scale: float = 1.0, readonly: bool = False):
    array = (rng.standard_normal(shape) * scale).astype(dtype)
    array.flags.writeable = not readonly
    return array


shapes_2d = st.tuples(st.integers(1, 70), st.integers(1, 45))
dense_shapes = st.tuples(st.integers(1, 40), st.integers(1, 50), st.integers(1, 30))
seeds = st.integers(0, 2**32 - 1)


# ------------------------------------------------------------------------------------------ build
def test_build_info_and_threads() -> None:
    info = cython_backend.build_info()
    assert isinstance(info["openmp"], bool)
    assert isinstance(info["openmp_threads"], int) and info["openmp_threads"] >= 1
    assert isinstance(info["compile_args"], list) and all(isinstance(arg, str) for arg in info["compile_args"])
    assert "-march=native" not in info["compile_args"]
    assert info["isa"] in ("avx2+fma", "x86-64 baseline") or isinstance(info["isa"], str)
    before = info["openmp_threads"]
    try:
        cython_backend.set_openmp_threads(1)
        assert cython_backend.build_info()["openmp_threads"] == 1
    finally:
        cython_backend.set_openmp_threads(before)
    with pytest.raises(ValueError):
        cython_backend.set_openmp_threads(0)
    assert CB.name == "cython"


# ------------------------------------------------------------------------------------------ dense
def run_dense(backend, x, weight, bias, activation, grad_out, with_grad_x):  # type: ignore[no-untyped-def]
    batch, n_out = x.shape[0], weight.shape[1]
    out = np.full((batch, n_out), np.nan, dtype=x.dtype)
    backend.dense_forward(x, weight, bias, out, activation)
    out.flags.writeable = False
    grad = grad_out.copy()
    grad_weight = np.full(weight.shape, np.nan, dtype=x.dtype)
    grad_bias = np.full(bias.shape, np.nan, dtype=x.dtype)
    grad_x = np.full(x.shape, np.nan, dtype=x.dtype) if with_grad_x else None
    backend.dense_backward(x, weight, out, grad, grad_weight, grad_bias, grad_x, activation)
    return out, grad, grad_weight, grad_bias, grad_x


def check_dense(shape, dtype, activation, seed, readonly=True, with_grad_x=True):  # type: ignore[no-untyped-def]
    batch, n_in, n_out = shape
    rng = np.random.default_rng(seed)
    x = rand(rng, (batch, n_in), dtype, readonly=readonly)
    weight = rand(rng, (n_in, n_out), dtype, scale=1 / np.sqrt(n_in), readonly=readonly)
    bias = rand(rng, (n_out,), dtype, readonly=readonly)
    grad_out = rand(rng, (batch, n_out), dtype)
    # The backward pass starts from the reference's forward output so both derivatives see the same input.
    ref = run_dense(NB, x, weight, bias, activation, grad_out, with_grad_x)
    out = np.empty_like(ref[0])
    CB.dense_forward(x, weight, bias, out, activation)
    assert_close(out, ref[0], normwise=True)
    grad = grad_out.copy()
    grad_weight, grad_bias = np.empty_like(weight), np.empty_like(bias)
    grad_x = np.empty_like(x) if with_grad_x else None
    CB.dense_backward(x, weight, ref[0], grad, grad_weight, grad_bias, grad_x, activation)
    assert_close(grad, ref[1])  # grad_out * f'(out): elementwise, same operations
    assert_close(grad_bias, ref[3])  # column sums, rows in order as NumPy's reduction
    assert_close(grad_weight, ref[2], normwise=True)
    if with_grad_x:
        assert_close(grad_x, ref[4], normwise=True)


@SETTINGS
@given(shape=dense_shapes, dtype=st.sampled_from(DTYPES), activation=st.sampled_from(ACTIVATIONS), seed=seeds,
       readonly=st.booleans(), with_grad_x=st.booleans())  # fmt: skip
def test_dense_random(shape, dtype, activation, seed, readonly, with_grad_x) -> None:  # type: ignore[no-untyped-def]
    check_dense(shape, dtype, activation, seed, readonly, with_grad_x)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3, 1), (33, 17, 5), (512, 784, 128)])
def test_dense_fixed_shapes(shape, dtype, activation) -> None:  # type: ignore[no-untyped-def]
    check_dense(shape, dtype, activation, seed=sum(shape))


# ------------------------------------------------------------------------------------------ activations
@SETTINGS
@given(shape=st.sampled_from([(1,), (1, 1), (7,), (3, 5, 2), (129, 33)]), dtype=st.sampled_from(DTYPES),
       activation=st.sampled_from(ACTIVATIONS), seed=seeds, scale=st.sampled_from([1.0, 30.0]))  # fmt: skip
def test_activations(shape, dtype, activation, seed, scale) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    x = rand(rng, shape, dtype, scale=scale, readonly=True)
    expected, actual = np.empty_like(x), np.empty_like(x)
    NB.activation_forward(activation, x, expected)
    CB.activation_forward(activation, x, actual)
    assert_close(actual, expected)
    expected.flags.writeable = False
    grad_out = rand(rng, shape, dtype, readonly=True)
    grad_expected, grad_actual = np.empty_like(x), np.empty_like(x)
    NB.activation_backward(activation, expected, grad_out, grad_expected)
    CB.activation_backward(activation, expected, grad_out, grad_actual)
    assert_close(grad_actual, grad_expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sigmoid_extremes(dtype) -> None:  # type: ignore[no-untyped-def]
    x = np.array([-1e4, -745.0, -100.0, -30.0, -1e-8, -0.0, 0.0, 1e-8, 30.0, 100.0, 1e4], dtype=dtype)
    expected, actual = np.empty_like(x), np.empty_like(x)
    with np.errstate(over="ignore", under="ignore"):
        NB.activation_forward("sigmoid", x, expected)
    CB.activation_forward("sigmoid", x, actual)
    assert np.all(np.isfinite(actual))
    assert_close(actual, expected)


# ------------------------------------------------------------------------------------------ softmax and losses
@SETTINGS
@given(shape=shapes_2d, dtype=st.sampled_from(DTYPES), seed=seeds, scale=st.sampled_from([1.0, 50.0]))
def test_softmax(shape, dtype, seed, scale) -> None:  # type: ignore[no-untyped-def]
    """Documented float64 bound 1e-10 (normwise): NumPy sums each row pairwise, the kernel sequentially, and the
    backward pass subtracts the row's dot product from each gradient, which can cancel (2.6e-12 seen)."""
    rng = np.random.default_rng(seed)
    x = rand(rng, shape, dtype, scale=scale, readonly=True)
    expected, actual = np.empty_like(x), np.empty_like(x)
    NB.softmax_forward(x, expected)
    CB.softmax_forward(x, actual)
    assert_close(actual, expected, normwise=True, float64_tol=1e-10)
    expected.flags.writeable = False
    grad_out = rand(rng, shape, dtype, readonly=True)
    grad_expected, grad_actual = np.empty_like(x), np.empty_like(x)
    NB.softmax_backward(expected, grad_out, grad_expected)
    CB.softmax_backward(expected, grad_out, grad_actual)
    # grad = y (g - <g, y>): its rounding error scales with y (|g| + |<g, y>|), not with the result.
    dot = np.abs((grad_out * expected).sum(axis=1, keepdims=True))
    bound = float(np.max(expected * (np.abs(grad_out) + dot)))
    tol = 1e-10 if dtype == np.float64 else rtol(dtype)
    np.testing.assert_allclose(grad_actual, grad_expected, rtol=tol, atol=tol * bound)


@SETTINGS
@given(shape=shapes_2d, dtype=st.sampled_from(DTYPES), seed=seeds, scale=st.sampled_from([1.0, 20.0]),
       with_grad=st.booleans())  # fmt: skip
def test_softmax_cross_entropy(shape, dtype, seed, scale, with_grad) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    logits = rand(rng, shape, dtype, scale=scale, readonly=True)
    labels = rng.integers(0, shape[1], size=shape[0])
    labels.flags.writeable = False
    grad_expected = np.empty_like(logits) if with_grad else None
    grad_actual = np.empty_like(logits) if with_grad else None
    expected = NB.softmax_cross_entropy(logits, labels, grad_expected)
    actual = CB.softmax_cross_entropy(logits, labels, grad_actual)
    if dtype == np.float32:
        # The reference rounds each row's log-sum-exp to float32 before averaging; the kernel keeps it in double.
        assert actual == pytest.approx(expected, rel=1e-5, abs=1e-6 * (1 + scale))
    else:
        assert_scalar_close(actual, expected, dtype)
    if with_grad:
        assert_close(grad_actual, grad_expected, normwise=True)


def test_softmax_cross_entropy_is_stable() -> None:
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -999.0]])
    labels = np.array([0, 2])
    grad = np.empty_like(logits)
    loss = CB.softmax_cross_entropy(logits, labels, grad)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(NB.softmax_cross_entropy(logits, labels), rel=1e-12)


@SETTINGS
@given(shape=shapes_2d, dtype=st.sampled_from(DTYPES), seed=seeds, with_grad=st.booleans())
def test_mse(shape, dtype, seed, with_grad) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    pred, target = rand(rng, shape, dtype, readonly=True), rand(rng, shape, dtype, readonly=True)
    grad_expected = np.empty_like(pred) if with_grad else None
    grad_actual = np.empty_like(pred) if with_grad else None
    assert_scalar_close(CB.mse(pred, target, grad_actual), NB.mse(pred, target, grad_expected), dtype)
    if with_grad:
        assert_close(grad_actual, grad_expected)


@SETTINGS
@given(shape=shapes_2d, dtype=st.sampled_from(DTYPES), seed=seeds, ties=st.booleans())
def test_count_correct(shape, dtype, seed, ties) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, size=shape).astype(dtype) if ties else rand(rng, shape, dtype)
    scores.flags.writeable = False
    labels = rng.integers(0, shape[1], size=shape[0])
    result = CB.count_correct(scores, labels)
    assert isinstance(result, int)
    assert result == NB.count_correct(scores, labels)


def test_count_correct_first_max_and_nan() -> None:
    scores = np.array([[1.0, 3.0, 3.0], [2.0, np.nan, 5.0], [np.nan, 1.0, 1.0], [0.0, 0.0, 0.0]])
    for labels in ([1, 1, 0, 0], [2, 2, 1, 1]):
        labels = np.array(labels)
        assert CB.count_correct(scores, labels) == NB.count_correct(scores, labels)


# ------------------------------------------------------------------------------------------ optimizers
OPT_SHAPES = [(1,), (7, 13), (3, 4, 5), (100_003,)]  # the last one runs the OpenMP path (threshold lowered below)


def sgd_options():  # type: ignore[no-untyped-def]
    for momentum, dampening, nesterov, weight_decay in itertools.product(
        (0.0, 0.9), (0.0, 0.3), (False, True), (0.0, 0.01)
    ):
        if nesterov and (momentum == 0 or dampening != 0):
            continue
        yield {"momentum": momentum, "dampening": dampening, "nesterov": nesterov, "weight_decay": weight_decay}


def rmsprop_options():  # type: ignore[no-untyped-def]
    for centered, momentum, weight_decay in itertools.product((False, True), (0.0, 0.9), (0.0, 0.1)):
        yield {"centered": centered, "momentum": momentum, "weight_decay": weight_decay}


def adam_options():  # type: ignore[no-untyped-def]
    for amsgrad, decoupled, weight_decay in itertools.product((False, True), (False, True), (0.0, 0.1)):
        yield {"amsgrad": amsgrad, "decoupled": decoupled, "weight_decay": weight_decay}


def run_optimizer(backend, kind, options, shape, dtype, steps=20):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(12345)
    param = rand(rng, shape, dtype)
    zeros = lambda: np.zeros(shape, dtype=dtype)  # noqa: E731
    state = {}
    for t in range(1, steps + 1):
        grad = rand(rng, shape, dtype, readonly=True)
        if kind == "sgd":
            if t == 1:
                state["buf"] = zeros() if options["momentum"] else None
            backend.sgd_step(param, grad, state["buf"], lr=0.05, first_step=t == 1, **options)
        elif kind == "adagrad":
            if t == 1:
                state["sum"] = np.full(shape, 0.1, dtype=dtype)
            backend.adagrad_step(param, grad, state["sum"], lr=0.05, eps=1e-10, weight_decay=options["weight_decay"])
        elif kind == "rmsprop":
            if t == 1:
                state = {"v": zeros(), "a": zeros() if options["centered"] else None}
                state["b"] = zeros() if options["momentum"] else None
            backend.rmsprop_step(param, grad, state["v"], state["a"], state["b"], lr=0.01, alpha=0.99, eps=1e-8,
                                 momentum=options["momentum"], weight_decay=options["weight_decay"])  # fmt: skip
        else:
            if t == 1:
                state = {"m": zeros(), "v": zeros(), "vmax": zeros() if options["amsgrad"] else None}
            lr_t = 0.01 / (1 + 0.001 * (t - 1))
            backend.adam_step(param, grad, state["m"], state["v"], state["vmax"], lr=lr_t, beta1=0.9, beta2=0.999,
                              eps=1e-8, weight_decay=options["weight_decay"],
                              decoupled_weight_decay=options["decoupled"], bias_correction1=1 - 0.9**t,
                              bias_correction2=1 - 0.999**t)  # fmt: skip
    return param, state


@pytest.fixture
def low_parallel_threshold():  # type: ignore[no-untyped-def]
    """Split updates from 4096 elements (16k for SGD) so the large case runs the threaded path."""
    default = cython_backend.build_info()["parallel_threshold"]
    cython_backend.set_parallel_threshold(4096)
    yield
    cython_backend.set_parallel_threshold(default)


OPTIMIZER_CASES = (
    [("sgd", o) for o in sgd_options()]
    + [("adagrad", {"weight_decay": wd}) for wd in (0.0, 0.1)]
    + [("rmsprop", o) for o in rmsprop_options()]
    + [("adam", o) for o in adam_options()]
)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", OPT_SHAPES, ids=str)
@pytest.mark.parametrize(("kind", "options"), OPTIMIZER_CASES, ids=lambda v: str(v) if isinstance(v, str) else None)
def test_optimizer_20_steps(kind, options, shape, dtype, low_parallel_threshold) -> None:  # type: ignore[no-untyped-def]
    expected_param, expected_state = run_optimizer(NB, kind, options, shape, dtype)
    param, state = run_optimizer(CB, kind, options, shape, dtype)
    assert_close(param, expected_param)
    for name, buffer in expected_state.items():
        if buffer is None:
            assert state[name] is None
        else:
            assert_close(state[name], buffer)


@pytest.mark.parametrize("kind", ["sgd", "adam"])
def test_optimizer_thread_count_does_not_change_results(kind, low_parallel_threshold) -> None:  # type: ignore[no-untyped-def]
    options = {"momentum": 0.9, "dampening": 0.0, "nesterov": True, "weight_decay": 0.01} if kind == "sgd" else {
        "amsgrad": True, "decoupled": True, "weight_decay": 0.1}  # fmt: skip
    before = cython_backend.build_info()["openmp_threads"]
    try:
        results = []
        for threads in (1, 2, 3):
            cython_backend.set_openmp_threads(threads)
            results.append(run_optimizer(CB, kind, options, (200_001,), np.float32, steps=3)[0])
    finally:
        cython_backend.set_openmp_threads(before)
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_isa_builds_agree() -> None:
    """The AVX2+FMA copy (when this CPU runs it) computes bitwise what the portable copy computes."""
    from fastopt._kernels import _optim

    if not cython_backend.cpu_has_avx2_fma():
        pytest.skip("CPU without AVX2/FMA")
    _optim_avx2 = pytest.importorskip("fastopt._kernels._optim_avx2")
    rng = np.random.default_rng(7)
    for dtype, name in ((np.float32, "float"), (np.float64, "double")):
        results = []
        for module in (_optim, _optim_avx2):
            param, grad = rand(rng, (10_007,), dtype), rand(rng, (10_007,), dtype)
            param, grad = np.round(param, 3), np.round(grad, 3)
            m, v, vmax = np.zeros_like(param), np.zeros_like(param), np.zeros_like(param)
            for t in range(1, 4):
                module.adam_step[name](param, grad, m, v, vmax, 1e-2, 0.9, 0.999, 1e-8, 0.1, True,
                                       1 - 0.9**t, 1 - 0.999**t)  # fmt: skip
            results.append(param)
            rng = np.random.default_rng(7)
        np.testing.assert_array_equal(results[0], results[1])


# ------------------------------------------------------------------------------------------ checked entry points
def test_rejects_mismatched_shapes() -> None:
    x, weight, bias = np.ones((4, 3)), np.ones((3, 2)), np.ones(2)
    with pytest.raises(ValueError):
        CB.dense_forward(x, weight, bias, np.empty((4, 3)))
    with pytest.raises(ValueError):
        CB.adam_step(np.ones(5), np.ones(6), np.zeros(5), np.zeros(5), None, lr=1e-3, beta1=0.9, beta2=0.999,
                     eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False, bias_correction1=0.1,
                     bias_correction2=0.001)  # fmt: skip


def test_rejects_wrong_dtypes() -> None:
    with pytest.raises(TypeError):
        CB.dense_forward(np.ones((4, 3)), np.ones((3, 2), dtype=np.float32), np.ones(2), np.empty((4, 2)))
    with pytest.raises(TypeError):
        CB.sgd_step(np.ones(5, dtype=np.int64), np.ones(5, dtype=np.int64), None, lr=0.1, momentum=0.0,
                    dampening=0.0, nesterov=False, weight_decay=0.0, first_step=True)  # fmt: skip
    with pytest.raises(TypeError):
        CB.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 1], dtype=np.int32))


def test_rejects_non_contiguous() -> None:
    x = np.ones((4, 6))[:, ::2]
    with pytest.raises(ValueError):
        CB.activation_forward("relu", x, np.empty((4, 3)))
    with pytest.raises(ValueError):
        CB.adagrad_step(np.ones((5, 4)).T, np.ones((4, 5)), np.zeros((4, 5)), lr=0.1, eps=1e-10, weight_decay=0.0)


def test_rejects_aliased_and_read_only_outputs() -> None:
    buffer = np.ones(10)
    with pytest.raises(ValueError):
        CB.activation_forward("relu", buffer, buffer)
    with pytest.raises(ValueError):
        CB.sgd_step(buffer, buffer, None, lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0,
                    first_step=True)  # fmt: skip
    param = np.ones(10)
    param.flags.writeable = False
    with pytest.raises(ValueError):
        CB.adagrad_step(param, np.ones(10), np.zeros(10), lr=0.1, eps=1e-10, weight_decay=0.0)


# ---------------------------------------------------------------------------------- subnormal numbers
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_kernels_flush_subnormals_only_while_they_run(dtype):
    """The optimizer kernels flush subnormal numbers to zero (FTZ/DAZ): results then differ from the
    reference by less than the smallest normal number, and the caller's floating-point mode is restored."""
    tiny = np.finfo(dtype).tiny
    rng = np.random.default_rng(0)
    n = 1000
    param = rng.standard_normal(n).astype(dtype)
    grad = np.zeros(n, dtype=dtype)
    grad[::3] = rng.standard_normal(len(grad[::3])).astype(dtype)
    state = [np.full(n, tiny * 1.05, dtype=dtype), np.full(n, tiny, dtype=dtype)]  # 0.9 m and 0.999 v: subnormal
    results = {}
    for name, backend in (("numpy", NB), ("cython", CB)):
        p, m, v = param.copy(), state[0].copy(), state[1].copy()
        backend.adam_step(
            p, grad, m, v, None, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
            decoupled_weight_decay=False, bias_correction1=0.1, bias_correction2=0.001,
        )  # fmt: skip
        results[name] = (p, m, v)
    reference_m = results["numpy"][1]
    assert np.count_nonzero((reference_m != 0) & (np.abs(reference_m) < tiny)) > 0  # the reference keeps subnormals
    for reference, compiled in zip(results["numpy"], results["cython"]):
        assert np.abs(reference - compiled).max() < tiny
    subnormal = np.array([tiny], dtype=dtype) / dtype(4)
    assert subnormal[0] != 0  # NumPy's own arithmetic still produces subnormals after the kernel ran
