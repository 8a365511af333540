"""The compiled kernels against the NumPy reference, through the public checked methods of both backends.

Tolerances (relative): float64 1e-12, float32 1e-5. Elementwise wherever the two backends perform the
same operations in the same order (optimizers, activations, the dense epilogue and backward prologue,
bias gradients: in practice these agree bitwise). Normwise (``max|a - b| <= rtol * max|b|``) where a sum
is reordered: GEMM outputs, the row sums of softmax backward and of the cross-entropy gradient, whose
entries can cancel. Losses are compared as scalars with the relative bound.

The dense tests run on both GEMM paths of the compiled backend (the ``gemm_path`` fixture of conftest.py).
"matmul" makes the same ``numpy.matmul`` calls as the reference, but with BLAS's own threads, which round
float32 differently on 1 and 2 threads; "direct" calls the same OpenBLAS ``sgemm``/``dgemm`` once per output
block, and NumPy itself calls ``gemv`` instead of ``gemm`` when the batch is 1: each of these sums the same
products in another order (seen: float32 up to 5e-7, float64 up to 5e-16, normwise), hence normwise bounds.
"""

from __future__ import annotations

import functools
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest

cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402
from kernel_arguments import call_public, kernel_arguments  # noqa: E402
from threadpoolctl import threadpool_info, threadpool_limits  # noqa: E402

from fastopt.backend import resolve_backend  # noqa: E402
from fastopt.kernel_table import KERNELS, OPTIMIZER_KERNELS  # noqa: E402
from fastopt.numpy_backend import NumpyBackend  # noqa: E402

NB = NumpyBackend()
CB = cython_backend.CythonBackend()
DTYPES = [np.float32, np.float64]
ACTIVATIONS = ["identity", "relu", "sigmoid", "tanh"]
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
# function_scoped_fixture: the fixtures used with @given (the GEMM path, the parallel threshold) hold for every example.
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


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
dense_shapes = st.tuples(st.integers(0, 40), st.integers(0, 50), st.integers(0, 30))
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
    weight = rand(rng, (n_in, n_out), dtype, scale=1 / np.sqrt(max(n_in, 1)), readonly=readonly)
    bias = rand(rng, (n_out,), dtype, readonly=readonly)
    grad_out = rand(rng, (batch, n_out), dtype)
    # The backward pass starts from the reference's forward output so both derivatives see the same input.
    ref = run_dense(NB, x, weight, bias, activation, grad_out, with_grad_x)
    # NaN-filled outputs: an element the kernel does not write (a block left out) cannot pass for a result.
    out = np.full_like(ref[0], np.nan)
    CB.dense_forward(x, weight, bias, out, activation)
    assert_close(out, ref[0], normwise=True)
    grad = grad_out.copy()
    grad_weight, grad_bias = np.full_like(weight, np.nan), np.full_like(bias, np.nan)
    grad_x = np.full_like(x, np.nan) if with_grad_x else None
    CB.dense_backward(x, weight, ref[0], grad, grad_weight, grad_bias, grad_x, activation)
    assert_close(grad, ref[1])  # grad_out * f'(out): elementwise, same operations
    assert_close(grad_bias, ref[3])  # column sums, rows in order as NumPy's reduction
    assert_close(grad_weight, ref[2], normwise=True)
    if with_grad_x:
        assert_close(grad_x, ref[4], normwise=True)


@SETTINGS
@given(shape=dense_shapes, dtype=st.sampled_from(DTYPES), activation=st.sampled_from(ACTIVATIONS), seed=seeds,
       readonly=st.booleans(), with_grad_x=st.booleans())  # fmt: skip
def test_dense_random(shape, dtype, activation, seed, readonly, with_grad_x, gemm_path) -> None:  # type: ignore[no-untyped-def]
    check_dense(shape, dtype, activation, seed, readonly, with_grad_x)


# (batch, in, out). The direct path cuts each GEMM output (forward B x O, grad_weight I x O, grad_x B x I) into
# at most one block per processor, of at least 16 rows or columns and 2**18 flops, along its longer side.
# A forward pass whose input is at least as wide as the batch is cut along the inner dimension instead
# (x's columns and the weight's rows, as grad_weight's rows), its partial products summed in block order.
# With 2 or more processors: one block everywhere for the small shapes and batch 1; (17|33, 784, 128):
# forward inner dimension cut (400 + 384), grad_weight rows (400 + 384), grad_x columns; (512, 784, 128) and
# (64, 200, 256): forward inner dimension cut too; (64, 32, 512): forward columns (256 + 256); (512, 100, 17): every
# product's rows (grad_weight 64 + 36); (512, 16, 300): grad_weight columns (160 + 140).
# The last ones are empty: no outputs, no inputs, no rows (the checked entry points accept them).
# FIRST_LAYER shapes run without grad_x (as a model's first layer): the direct backward then has only
# grad_weight's blocks to share.
DENSE_SHAPES = [
    (1, 1, 1),
    (1, 3, 1),
    (1, 7, 5),  # one row: fastopt's own loop, inputs four at a time and a tail of three
    (1, 0, 3),
    (33, 5, 3),
    (512, 5, 3),
    (33, 17, 5),
    (1, 784, 128),
    (17, 784, 128),
    (33, 784, 128),
    (512, 784, 128),
    (64, 200, 256),
    (64, 32, 512),
    (33, 100, 17),
    (512, 100, 17),
    (17, 16, 300),
    (512, 16, 300),
    (5, 3, 0),
    (5, 0, 3),
    (0, 3, 5),
    (0, 0, 0),
    (512, 784, 0),
    (0, 784, 128),
]
FIRST_LAYER = {(17, 784, 128), (512, 16, 300), (0, 784, 128)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=str)
def test_dense_fixed_shapes(shape, dtype, activation, gemm_path) -> None:  # type: ignore[no-untyped-def]
    check_dense(shape, dtype, activation, seed=sum(shape), with_grad_x=shape not in FIRST_LAYER)


def gemm_cut(m: int, n: int, k: int) -> tuple[int, str]:
    """The blocks an m x n (sum over k) GEMM output is cut into on the direct path, and the side cut (a copy of
    ``_gemm_blocks``/``_block_bounds`` in fastopt/_kernels/_nn.pyx, to check what DENSE_SHAPES covers)."""
    max_blocks = cython_backend._nn.build_info()["gemm_max_blocks"]
    blocks = max(1, min(int(2.0 * m * n * k / 262144.0), max(m, n) // 16, max_blocks))
    return blocks, ("columns" if n >= m else "rows")


def forward_cut(batch: int, n_in: int, n_out: int) -> tuple[int, str]:
    """The blocks a forward pass is cut into on the direct path, and how (a copy of ``_depth_blocks``)."""
    if n_in >= batch and (depth := gemm_cut(n_in, n_out, batch)[0]) > 1:
        return depth, "depth"
    return gemm_cut(batch, n_out, n_in)


def test_dense_shapes_cut_every_product_both_ways() -> None:
    if cython_backend._nn.build_info()["gemm_max_blocks"] < 2:
        pytest.skip("one processor: the direct path never cuts a product")
    seen = set()
    for batch, n_in, n_out in DENSE_SHAPES:
        cuts = {
            "forward": forward_cut(batch, n_in, n_out),
            "grad_weight": gemm_cut(n_in, n_out, batch),
            "grad_x": gemm_cut(batch, n_in, n_out),
        }
        seen |= {(name, side) for name, (blocks, side) in cuts.items() if blocks > 1}
    every_side = {(name, side) for name in ("forward", "grad_weight", "grad_x") for side in ("rows", "columns")}
    assert seen == every_side | {("forward", "depth")}


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", [s for s in DENSE_SHAPES if min(s) > 0], ids=str)
def test_direct_gemm_equals_matmul_float64(shape, activation, use_gemm_path) -> None:  # type: ignore[no-untyped-def]
    """float64: the direct path's outputs equal the matmul path's within 1e-12 (normwise: the products are the
    same, summed in BLAS's order for a block or for the whole output)."""
    batch, n_in, n_out = shape
    rng = np.random.default_rng(sum(shape))
    x, weight = rand(rng, (batch, n_in), np.float64), rand(rng, (n_in, n_out), np.float64, scale=1 / np.sqrt(n_in))
    bias, grad_out = rand(rng, (n_out,), np.float64), rand(rng, (batch, n_out), np.float64)
    results = {}
    for path in ("matmul", "direct"):
        use_gemm_path(path)
        results[path] = run_dense(CB, x, weight, bias, activation, grad_out, with_grad_x=True)
    for direct, matmul in zip(results["direct"], results["matmul"]):
        assert_close(direct, matmul, normwise=True, float64_tol=1e-12)


# Small-product tiles (on by default only with OpenBLAS's SkylakeX kernels): a limit of 2,000 multiply-adds cuts
# these shapes' forward and grad_weight products into 2-4 calls, along rows (33 x 5 x 17: 17 + 16 rows) or columns
# (5 x 30 x 20: 15 + 15), the last piece shorter where the side does not divide; grad_x (a transposed right
# operand) and the products over 4 times the limit stay whole.
TILED_SHAPES = [(5, 20, 30), (33, 17, 5), (7, 9, 64), (40, 11, 13), (3, 100, 40)]


@pytest.fixture
def small_tiles(use_gemm_path):  # type: ignore[no-untyped-def]
    use_gemm_path("direct")
    before = cython_backend._nn.build_info()["gemm_tile_multiply_adds"]
    cython_backend._nn.set_gemm_tiles(2000)
    yield
    cython_backend._nn.set_gemm_tiles(before)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", TILED_SHAPES, ids=str)
def test_dense_in_small_tiles(shape, dtype, small_tiles) -> None:  # type: ignore[no-untyped-def]
    """Tiled products write every element (NaN-filled outputs) and equal the reference; float64 equals the
    untiled products within 1e-12 normwise; 1 and 2 threads give the same bits."""
    check_dense(shape, dtype, "relu", seed=sum(shape))
    batch, n_in, n_out = shape
    rng = np.random.default_rng(sum(shape))
    x, weight = rand(rng, (batch, n_in), dtype), rand(rng, (n_in, n_out), dtype, scale=1 / np.sqrt(n_in))
    bias, grad_out = rand(rng, (n_out,), dtype), rand(rng, (batch, n_out), dtype)
    before = cython_backend.build_info()["openmp_threads"]
    try:
        by_threads = {}
        for threads in (1, 2):
            cython_backend.set_openmp_threads(threads)
            by_threads[threads] = run_dense(CB, x, weight, bias, "relu", grad_out, with_grad_x=True)
    finally:
        cython_backend.set_openmp_threads(before)
    for one, two in zip(by_threads[1], by_threads[2]):
        np.testing.assert_array_equal(one, two)
    if dtype == np.float64:
        cython_backend._nn.set_gemm_tiles(0)
        whole = run_dense(CB, x, weight, bias, "relu", grad_out, with_grad_x=True)
        for tiled, untiled in zip(by_threads[1], whole):
            assert_close(tiled, untiled, normwise=True, float64_tol=1e-12)


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def grows_by(calls: int, call) -> int:  # type: ignore[no-untyped-def]
    """Resident bytes gained over a second run of ``calls`` calls (the first warms the allocator)."""
    for _ in range(2):
        before = resident_bytes()
        for _ in range(calls):
            call()
    return resident_bytes() - before


needs_statm = pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc/self/statm")


@needs_statm
@pytest.mark.parametrize("batch", [1, 2], ids=lambda batch: f"batch-{batch}")
def test_dense_forward_frees_its_partial_products(batch, use_gemm_path) -> None:  # type: ignore[no-untyped-def]
    """A 512 x 512 layer is cut along its inner dimension from batch 1 (batch 1 then takes the one-row loop, which
    once returned before the partial products' scratch was freed): 40,000 calls would leak 80-160 MB."""
    use_gemm_path("direct")
    rng = np.random.default_rng(0)
    x, weight = rand(rng, (batch, 512), np.float32), rand(rng, (512, 512), np.float32, scale=0.04)
    bias, out = rand(rng, (512,), np.float32), np.empty((batch, 512), np.float32)
    assert grows_by(40000, lambda: CB._dense_forward(x, weight, bias, out, "relu", 0.0)) < 16 * 2**20


@needs_statm
def test_dense_backward_frees_its_transposed_gradient(small_tiles) -> None:  # type: ignore[no-untyped-def]
    """With the small-product tiles on, grad_x comes from a copy of dz.T (960 bytes here): 100,000 calls would leak
    96 MB."""
    rng = np.random.default_rng(0)
    x, weight, out = rand(rng, (8, 20), np.float32), rand(rng, (20, 30), np.float32), rand(rng, (8, 30), np.float32)
    grad_out, grad_weight = rand(rng, (8, 30), np.float32), np.empty((20, 30), np.float32)
    grad_bias, grad_x = np.empty(30, np.float32), np.empty((8, 20), np.float32)

    def backward() -> None:
        CB._dense_backward(x, weight, out, grad_out, grad_weight, grad_bias, grad_x, "identity", 0.0)

    assert grows_by(100000, backward) < 16 * 2**20


def test_gemm_tiles_refuse_a_negative_limit() -> None:
    with pytest.raises(ValueError, match="max_multiply_adds must be >= 0"):
        cython_backend._nn.set_gemm_tiles(-1)


def blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


@pytest.mark.parametrize("count", [1, 2, 3])
def test_dense_kernels_leave_the_blas_thread_count(count, gemm_path) -> None:  # type: ignore[no-untyped-def]
    """The direct path holds BLAS at one thread during each call: the caller's count is back afterwards
    (for multi-block and one-block products, forward and backward, both dtypes)."""
    with threadpool_limits(limits=count, user_api="blas"):
        assert blas_threads() == {count}
        for shape, dtype in itertools.product([(512, 784, 128), (3, 5, 2)], DTYPES):
            rng = np.random.default_rng(0)
            x, weight = rand(rng, shape[:2], dtype), rand(rng, shape[1:], dtype)
            bias, grad_out = rand(rng, shape[2:], dtype), rand(rng, (shape[0], shape[2]), dtype)
            out = np.empty((shape[0], shape[2]), dtype=dtype)
            CB.dense_forward(x, weight, bias, out, "relu")
            assert blas_threads() == {count}
            CB.dense_backward(x, weight, out, grad_out, np.empty_like(weight), np.empty_like(bias), np.empty_like(x))
            assert blas_threads() == {count}


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
    NB.activation_backward(activation, x, expected, grad_out, grad_expected)
    CB.activation_backward(activation, x, expected, grad_out, grad_actual)
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


def test_softmax_cross_entropy_float32_exp_is_within_one_ulp() -> None:
    # One row [0, d...] with every d <= -40: the row's sum of exponentials rounds to 1 in float32, so the
    # gradient at each d is exp(d) as the kernel computes it in float32 (its own polynomial, not libm).
    # Against the double exp: these d cover every reduced argument r = d - k ln2, and results down to
    # the subnormals (a reduction k from -58 to -150).
    rng = np.random.default_rng(0)
    shifted = np.concatenate([-40 - rng.random(200_000) * 64, np.linspace(-104.5, -86, 20_001)]).astype(np.float32)
    logits = np.concatenate([[0.0], shifted]).astype(np.float32)[None, :]
    grad = np.empty_like(logits)
    CB.softmax_cross_entropy(logits, np.array([0]), grad)
    assert grad[0, 0] == 0  # 1 / sum - 1: the sum was 1
    exact = np.exp(shifted.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(grad[0, 1:] - exact) / ulp) <= 1.0
    assert np.all(grad[0, 1:][shifted < -104] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_non_finite_logits(dtype) -> None:  # type: ignore[no-untyped-def]
    # A -inf logit has probability 0; a NaN makes its row's gradient and the loss NaN, in both backends.
    logits = np.array([[0.0, -np.inf, 1.0], [0.0, np.nan, 1.0]], dtype=dtype)
    labels = np.array([0, 2])
    grad_expected, grad_actual = np.empty_like(logits), np.empty_like(logits)
    expected = NB.softmax_cross_entropy(logits[:1], labels[:1], grad_expected[:1])
    assert CB.softmax_cross_entropy(logits[:1], labels[:1], grad_actual[:1]) == pytest.approx(expected, rel=rtol(dtype))
    assert grad_actual[0, 1] == 0
    assert_close(grad_actual[:1], grad_expected[:1])
    assert np.isnan(CB.softmax_cross_entropy(logits, labels, grad_actual))
    assert np.all(np.isnan(grad_actual[1])) and np.all(np.isfinite(grad_actual[0]))


def test_binary_cross_entropy_float32_log1p_is_within_one_ulp() -> None:
    # The float32 log1p(e) of binary_cross_entropy (its own branch-free function, not libm), e = exp(-|x|) in [0, 1],
    # against the double log1p: every 251st float of [0, 1] (all binades, subnormals included), 0, 1 and the ends of
    # its argument reduction at 1/2, in the module the backend runs (baseline or AVX2+FMA). Measured: 0.90 ulp at most.
    dense = np.arange(0, 0x3F800001, 251, dtype=np.uint32).view(np.float32)
    e = np.concatenate([dense, np.float32([0.0, 1.0, 2.0**-149, 0.5, np.nextafter(np.float32(0.5), 0)])])
    out = np.empty_like(e)
    cython_backend._nn.log1p_unit_interval_for_tests(e, out)
    exact = np.log1p(e.astype(np.float64))
    ulp = np.spacing(exact.astype(np.float32)).astype(np.float64)
    assert np.max(np.abs(out - exact) / ulp) <= 1.0
    assert out[-5] == 0 and out[-3] == e[-3]  # log1p(0) = 0; log1p(e) = e for the smallest subnormal
    cython_backend._nn.log1p_unit_interval_for_tests(np.float32([np.nan]), out[:1])
    assert np.isnan(out[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_binary_cross_entropy_non_finite_logits(dtype) -> None:  # type: ignore[no-untyped-def]
    # An infinite logit on the wrong side costs inf, with the reference's finite gradient; a NaN logit makes the loss
    # NaN and only its own gradient NaN, in both backends.
    logits = np.array([[np.inf, -np.inf, 1.0], [-2.0, np.nan, 0.5]], dtype=dtype)
    targets = np.array([[0.0, 1.0, 1.0], [0.0, 1.0, 0.3]], dtype=dtype)
    grad_expected, grad_actual = np.empty_like(logits), np.empty_like(logits)
    expected = NB.binary_cross_entropy(logits[:1], targets[:1], grad_expected[:1])
    assert expected == np.inf and CB.binary_cross_entropy(logits[:1], targets[:1], grad_actual[:1]) == np.inf
    assert_close(grad_actual[:1], grad_expected[:1])
    assert np.isnan(NB.binary_cross_entropy(logits, targets, grad_expected))
    assert np.isnan(CB.binary_cross_entropy(logits, targets, grad_actual))
    assert_close(grad_actual, grad_expected)
    assert np.array_equal(np.isnan(grad_actual), np.isnan(logits))


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


# ------------------------------------------------------------------------------------------ all_finite
# From 2**18 elements the compiled check is split over the OpenMP threads (one contiguous chunk each).
ALL_FINITE_SIZES = [1, 2, 17, 1000, 2**18 - 1, 2**18, 2**19 + 5]


def finite_values(size: int, dtype: object) -> np.ndarray:
    """Finite values of every kind: normal, zeros of both signs, the largest and smallest, subnormal."""
    finfo = np.finfo(dtype)
    x = rand(np.random.default_rng(size), (size,), dtype, scale=1e3)
    extremes = np.array([finfo.max, -finfo.max, 0.0, -0.0, finfo.tiny, finfo.smallest_subnormal], dtype=dtype)
    x[:: max(1, size // 50)] = np.resize(extremes, len(x[:: max(1, size // 50)]))
    return x


def check_all_finite(x: np.ndarray, expected: bool) -> None:
    for backend in (CB, NB):
        result = backend.all_finite(x)
        assert isinstance(result, bool) and result is expected, f"{backend.name} on {x.dtype} {x.shape}: {result}"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("size", ALL_FINITE_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_finds_one_planted_value(dtype, size, bad) -> None:  # type: ignore[no-untyped-def]
    x = finite_values(size, dtype)
    x.flags.writeable = False
    check_all_finite(x, True)
    rng = np.random.default_rng(size + 1)
    # first, last, around the middle (the boundary of two threads' chunks), anywhere, and in the second half
    positions = {
        0,
        size - 1,
        size // 2,
        max(0, size // 2 - 1),
        int(rng.integers(size)),
        int(rng.integers(size // 2, size)),
    }
    for position in sorted(positions):
        x.flags.writeable = True
        kept, x[position] = x[position], bad
        x.flags.writeable = False
        check_all_finite(x, False)
        x.flags.writeable = True
        x[position] = kept


@pytest.mark.parametrize("shape", [(), (0,), (0, 5), (3, 0, 2), (1, 1), (7, 13), (3, 4, 5), (512, 1024)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_all_finite_any_shape(dtype, shape) -> None:  # type: ignore[no-untyped-def]
    """Arrays of any number of dimensions (the checked entry point flattens them); empty arrays are finite."""
    size = int(np.prod(shape))
    x = finite_values(size, dtype).reshape(shape) if size else np.zeros(shape, dtype=dtype)
    x.flags.writeable = False
    check_all_finite(x, True)
    if size:
        y = x.copy()
        y[tuple(n - 1 for n in shape)] = np.nan  # the very last element
        check_all_finite(y, False)


@SETTINGS
@given(x=hnp.arrays(st.sampled_from(DTYPES), hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=9),
                    elements={"allow_nan": True, "allow_infinity": True, "allow_subnormal": True}),
       readonly=st.booleans())  # fmt: skip
def test_all_finite_property(x, readonly) -> None:  # type: ignore[no-untyped-def]
    x.flags.writeable = not readonly
    check_all_finite(x, bool(np.isfinite(x).all()))


def test_all_finite_on_one_and_two_threads() -> None:
    """Every thread count gives the same answer, for a bad value in either thread's chunk."""
    x = finite_values(2**19 + 5, np.float32)
    before = cython_backend.build_info()["openmp_threads"]
    try:
        for threads in (1, 2, 3):
            cython_backend.set_openmp_threads(threads)
            check_all_finite(x, True)
            for position in (5, 2**18 + 7, len(x) - 1):
                x[position] = np.inf
                check_all_finite(x, False)
                x[position] = 1.0
    finally:
        cython_backend.set_openmp_threads(before)


@pytest.mark.parametrize("n", [1, 16383, 40000, 109184, 131072 * 2 + 3, 131072 * 70])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_of_squares_on_one_and_two_threads(n, dtype) -> None:  # type: ignore[no-untyped-def]
    """The same bits for any thread count (blocks fixed by the size and the processor count; small buffers in one
    block per processor, the optimizer chunks' halves), and the reference's value within the summation's rounding."""
    x = np.random.default_rng(n).normal(size=n).astype(dtype)
    before = cython_backend.build_info()["openmp_threads"]
    sums = []
    try:
        for threads in (1, 2, 3):
            cython_backend.set_openmp_threads(threads)
            sums.append(resolve_backend("cython").sum_of_squares(x))
    finally:
        cython_backend.set_openmp_threads(before)
    assert sums[0] == sums[1] == sums[2]
    exact = float(np.dot(x.astype(np.float64), x.astype(np.float64)))
    assert sums[0] == pytest.approx(exact, rel=n * np.finfo(np.float64).eps)


@pytest.mark.parametrize("n", [5, 2048 + 3, 40000, 109184, 131072 * 2 + 7])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_name", OPTIMIZER_KERNELS)
def test_an_update_reports_the_sum_of_squares_it_read(kernel_name, dtype, n, openmp_threads) -> None:  # type: ignore[no-untyped-def]
    """With ``with_squares``, each optimizer kernel of both backends returns the sum of squares of its parameters
    before the update, the bits of its backend's ``sum_of_squares`` of them (the compiled one takes it in the same
    blocks and order, piece by piece, on any thread count), and updates every buffer to the same bits as without
    it, which returns None."""
    kernel = KERNELS[kernel_name]
    for backend in (NB, CB):
        outcomes = []
        for with_squares in (False, True):
            values = kernel_arguments(kernel, np.dtype(dtype), star=(n,), seed=n, with_squares=with_squares)
            expected = backend.sum_of_squares(values["param"])
            with np.errstate(all="ignore"):
                returned = call_public(backend, kernel, values)
            written = [values[spec.name].tobytes() for spec in kernel.arrays if values[spec.name] is not None]
            outcomes.append((returned, expected, written))
        (plain, _, plain_written), (reported, expected, reported_written) = outcomes
        assert plain is None, f"{backend.name}: {plain!r} without with_squares"
        assert reported == expected, f"{backend.name}: {reported!r} reported, sum_of_squares {expected!r}"
        assert reported_written == plain_written, f"{backend.name}: with_squares changed the update"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel_name", OPTIMIZER_KERNELS)
def test_a_compiled_update_refuses_buffers_it_cannot_take(kernel_name, dtype) -> None:  # type: ignore[no-untyped-def]
    """The compiled optimizer entry points, which the trusted methods call unchecked, check what they are handed:
    a gradient or state buffer of another length than the parameter is a ValueError (a shorter one was written
    past), None for the parameter, the gradient or a buffer the update needs a TypeError; nothing is written."""
    kernel = KERNELS[kernel_name]
    compiled = getattr(cython_backend._optim, kernel_name)["float" if dtype == np.float32 else "double"]
    for spec in kernel.arrays:
        wrongs = [] if spec.optional else [(None, TypeError, f"'{spec.name}' must not be None")]
        if spec.name != "param":
            wrongs += [(n, ValueError, f"holds {n} elements where its parameter holds 40") for n in (39, 41)]
        for length, error, match in wrongs:
            values = kernel_arguments(kernel, np.dtype(dtype), star=(40,), seed=3, with_squares=True)
            values[spec.name] = None if length is None else np.random.default_rng(length).random(length).astype(dtype)
            before = {name: value.copy() for name, value in values.items() if isinstance(value, np.ndarray)}
            arrays = [values[array.name] for array in kernel.arrays]
            hyper = {scalar.name: values[scalar.name] for scalar in kernel.hyper}
            with pytest.raises(error, match=match):
                compiled(*arrays, True, hyper)
            for name, value in before.items():
                assert values[name].tobytes() == value.tobytes(), f"{spec.name}: {name} was written"


@pytest.mark.parametrize("kernel_name", OPTIMIZER_KERNELS)
def test_an_update_counts_subnormal_parameters_in_its_sum(kernel_name) -> None:  # type: ignore[no-untyped-def]
    """The compiled updates flush subnormal numbers to zero, but not in the sum of squares they report: float32
    parameters that are all subnormal give sum_of_squares's positive sum (their squares are normal doubles)."""
    kernel = KERNELS[kernel_name]
    values = kernel_arguments(kernel, np.dtype(np.float32), star=(3000,), with_squares=True)
    values["param"] *= np.finfo(np.float32).smallest_normal
    expected = CB.sum_of_squares(values["param"])
    assert expected > 0
    with np.errstate(all="ignore"):
        assert call_public(CB, kernel, values) == expected


# ------------------------------------------------------------------------------------------ gather_rows
# out[i] = source[rows[i]]: a byte copy on both backends, so the results must agree bit for bit (NaN payloads,
# -0.0 and subnormals included). From 2**14 elements (batch x width) the compiled copy is split over the OpenMP
# threads in blocks of at least 8 rows (``blocks = _team(n_rows // 8)``), fewer than 16 rows stay serial.
# (source rows, batch, width)
GATHER_SHAPES = [
    (0, 0, 5),  # an empty source, no rows
    (5, 0, 7),  # no rows
    (9, 4, 0),  # zero width
    (1, 1, 1),
    (3, 1, 784),
    (50, 17, 1),
    (50, 33, 7),
    (9, 7, 2340),  # 16380 elements: serial
    (9, 8, 2048),  # 2**14 elements, 8 rows: one block
    (40, 15, 2048),  # 15 rows: one block
    (100, 20, 784),  # 15680 elements: serial
    (100, 21, 784),  # 16464 elements: split, 2 blocks (11 + 10)
    (20, 16, 1024),  # the smallest split: 2 blocks of 8 rows
    (4096, 2047, 8),  # 16376 elements: serial
    (4096, 2048, 8),  # 2**14 elements: split
    (4096, 2049, 8),  # uneven blocks
    (5000, 512, 784),  # a training batch of the mini data set
]
GATHER_KINDS = ["permutation-slice", "repeated-unordered", "one-row"]


def special_bits(dtype: object) -> np.ndarray:
    """Values whose bits a float operation could change: NaNs with payloads (quiet, signalling, negative), -0.0,
    infinities, the smallest subnormal."""
    if np.dtype(dtype) == np.float32:
        nans = np.array([0x7FC00123, 0x7F800001, 0xFFC00007], dtype=np.uint32).view(np.float32)
    else:
        nans = np.array([0x7FF8000000000123, 0x7FF0000000000001, 0xFFF8000000000007], dtype=np.uint64).view(np.float64)
    finfo = np.finfo(dtype)
    others = np.array([-0.0, np.inf, -np.inf, finfo.smallest_subnormal, finfo.max], dtype=dtype)
    return np.concatenate([nans, others])


@functools.cache
def gather_source(n: int, width: int, dtype: type) -> np.ndarray:
    """A read-only (n, width) source: distinct normal values with special bit patterns planted every 97th element."""
    x = rand(np.random.default_rng(n * 10_000 + width), (n, width), dtype)
    flat = x.reshape(-1)
    flat[::97] = np.resize(special_bits(dtype), len(flat[::97]))
    x.flags.writeable = False
    return x


def gather_indices(kind: str, n: int, batch: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if batch == 0:
        return np.empty(0, dtype=np.int64)
    if kind == "permutation-slice":  # as fit takes them: a view into a shuffled int64 arange, at an offset
        assert batch <= n
        order = rng.permutation(n).astype(np.int64)
        start = int(rng.integers(0, n - batch + 1))
        return order[start : start + batch]
    if kind == "repeated-unordered":  # repeats, any order, both ends of the source
        rows = rng.integers(0, n, batch).astype(np.int64)
        rows[0], rows[-1] = n - 1, 0
        return rows
    return np.full(batch, n // 2, dtype=np.int64)  # one row, batch times


def check_gather(source: np.ndarray, rows: np.ndarray) -> None:
    """Both backends write every element of out (each starts from another filler), return it, give the same
    bits as ``source[rows]``, and leave source and rows as they were."""
    source_bytes, rows_bytes = source.tobytes(), rows.tobytes()
    expected = np.full((rows.size, source.shape[1]), 7, dtype=source.dtype)
    actual = np.full_like(expected, np.nan)
    assert NB.gather_rows(source, rows, expected) is expected
    assert CB.gather_rows(source, rows, actual) is actual
    assert expected.tobytes() == source[rows].tobytes()
    assert actual.tobytes() == expected.tobytes(), f"{source.dtype} {source.shape} rows {rows.size}: bits differ"
    assert source.tobytes() == source_bytes and rows.tobytes() == rows_bytes


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}-threads")
def openmp_threads(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """Runs the test with the kernels' OpenMP thread count set to the parameter; the count before is restored."""
    before = cython_backend.build_info()["openmp_threads"]
    cython_backend.set_openmp_threads(request.param)
    try:
        yield request.param
    finally:
        cython_backend.set_openmp_threads(before)


@pytest.mark.parametrize("readonly", [True, False], ids=["read-only", "writeable"])
@pytest.mark.parametrize("kind", GATHER_KINDS)
@pytest.mark.parametrize("shape", GATHER_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_fixed_shapes(dtype, shape, kind, readonly, openmp_threads) -> None:  # type: ignore[no-untyped-def]
    n, batch, width = shape
    source = gather_source(n, width, dtype)
    rows = gather_indices(kind, n, batch, seed=sum(shape))
    if readonly:
        rows.flags.writeable = False
    else:
        source = source.copy()
    check_gather(source, rows)


@st.composite
def gather_arguments(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    # Widths up to 1024: fewer than 8 rows never reach 2**14 elements (see test_gather_rows_few_wide_rows).
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(0, 40))
    width = draw(st.one_of(st.integers(0, 12), st.sampled_from([784, 1024])))
    batch = draw(st.integers(0, 40)) if n else 0
    elements = {"allow_nan": True, "allow_infinity": True, "allow_subnormal": True}
    source = draw(hnp.arrays(dtype, (n, width), elements=elements))
    rows = draw(hnp.arrays(np.int64, (batch,), elements=st.integers(0, max(n - 1, 0))))
    readonly = draw(st.booleans())
    source.flags.writeable = rows.flags.writeable = not readonly
    return source, rows


@SETTINGS
@given(arguments=gather_arguments())
def test_gather_rows_property(arguments, openmp_threads) -> None:  # type: ignore[no-untyped-def]
    check_gather(*arguments)


@pytest.mark.parametrize("shape", [(89, 200), (96, 200), (4096, 8)], ids=str)
def test_gather_rows_on_more_threads_than_blocks_need(shape) -> None:  # type: ignore[no-untyped-def]
    """12 threads: 89 rows are cut into 11 blocks of 9 rows, the last block gets none (a negative count);
    96 rows into 12 blocks of 8; 4096 into 12 uneven blocks. Every row is still copied once."""
    batch, width = shape
    source = gather_source(2 * batch, width, np.float64)
    rows = gather_indices("repeated-unordered", 2 * batch, batch, seed=batch)
    before = cython_backend.build_info()["openmp_threads"]
    try:
        cython_backend.set_openmp_threads(12)
        check_gather(source, rows)
    finally:
        cython_backend.set_openmp_threads(before)


GATHER_IN_A_PROCESS = """
import sys
import numpy as np
from fastopt import cython_backend
batch, width, threads = (int(arg) for arg in sys.argv[1:])
cython_backend.set_openmp_threads(threads)
source = np.arange(2 * batch * width, dtype=np.float32).reshape(2 * batch, width)
rows = np.arange(batch, dtype=np.int64)[::-1].copy()
out = np.empty((batch, width), dtype=np.float32)
cython_backend.CythonBackend().gather_rows(source, rows, out)
assert np.array_equal(out, source[rows])
print("gathered")
"""


@pytest.mark.parametrize(("batch", "width", "threads"), [(1, 16384, 1), (1, 16384, 2), (7, 2341, 2)])
def test_gather_rows_few_wide_rows(batch, width, threads) -> None:  # type: ignore[no-untyped-def]
    """1 row of 16384 values, 7 rows of 2341 (16387 values): in a child process, as the kernel crashed it."""
    result = subprocess.run(
        [sys.executable, "-c", GATHER_IN_A_PROCESS, str(batch), str(width), str(threads)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and "gathered" in result.stdout, (result.returncode, result.stderr[-2000:])


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
                hyper = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.1,
                         "decoupled_weight_decay": True, "bias_correction1": 1 - 0.9**t,
                         "bias_correction2": 1 - 0.999**t}  # fmt: skip
                module.adam_step[name](param, grad, m, v, vmax, False, hyper)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lion_keeps_subnormal_momentum(dtype) -> None:
    """Lion steps by sign(beta1 m + (1 - beta1) g): a subnormal momentum (a dead unit's, decayed for thousands of
    steps) must give the reference's whole-lr step, not the zero step a flush to zero would give."""
    tiny = np.finfo(dtype).smallest_subnormal * 3
    results = []
    for backend in (NumpyBackend(), CB):
        param, grad = np.zeros(64, dtype), np.zeros(64, dtype)
        exp_avg = np.full(64, tiny, dtype) * np.where(np.arange(64) % 2, 1, -1).astype(dtype)
        backend.lion_step(param, grad, exp_avg, lr=1e-3, beta1=0.9, beta2=0.99, weight_decay=0.0)
        results.append((param, exp_avg))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    assert np.all(np.abs(results[1][0]) == dtype(1e-3))
