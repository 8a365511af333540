"""Determinism: the same seed gives bit-identical parameters, whatever the run and the thread counts.

- Two fresh models with the same seeds, trained the same way, end bit-identical (every backend, float32
  and float64, several optimizers, 2 epochs on a 512-row slice of ``datasets.mini()``).
- Cython backend, threads: OpenMP 1 vs 2 with ``set_parallel_threshold(1)`` (so the optimizer kernels really
  split), BLAS 1 vs 2, in-process (``cython_backend.set_openmp_threads`` + threadpoolctl, and the public
  ``fastopt.set_num_threads``) and in subprocesses started with ``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``.
  Training runs both through ``fit`` (which adjusts the threading inside ``backend.training()``) and through a
  manual ``_batch_gradients`` + ``apply`` loop (where nothing is adjusted).
- Kernel level: every optimizer kernel on 10**6 elements, threshold 1, 1 vs 2 OpenMP threads; the dense
  forward and backward (bias gradient, pre-activation gradient, GEMMs) with 1 vs 2 OpenMP and BLAS threads.

The compiled backend makes its dense GEMMs one of two ways (``cython_backend.gemm_path()``):

- "direct" (the default where NumPy's OpenBLAS can be called): the kernels call OpenBLAS's ``sgemm``/``dgemm``
  single-threaded on fixed blocks of each output, the blocks depending on the shapes and the machine's
  processor count only. Everything is then fastopt's own work, which must be bit-identical for any OpenMP and
  BLAS thread count: **any** parameter difference across thread counts is a hard failure, float32 included.
- "matmul" (``FASTOPT_GEMM=matmul``, or no usable OpenBLAS): the GEMMs are ``numpy.matmul`` calls threaded by
  BLAS itself, whose rounding may depend on its thread count: NumPy's bundled OpenBLAS 0.3.31 rounds float32
  GEMMs differently on 1 and 2 threads with every kernel family tried (from about 8e5 multiply-adds, e.g.
  32x784 @ 784x32), and float64 ones too with its AVX-512 SkylakeX kernels (32x784 @ 784x128). Bits across BLAS
  thread counts are therefore not a promise on this path. When parameters differ there, the tests measure the
  GEMMs concerned through ``numpy.matmul`` under 1 and 2 BLAS threads: if one differs, the test skips naming
  it and the BLAS; if none does, the difference is fastopt's own and the test fails.

The in-process thread-count tests run on both paths where that is cheap (the ``gemm_path`` fixture of
conftest.py); the subprocess test runs on the default path, which its children report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastopt
from fastopt import datasets, losses, optim
from fastopt._checks import as_features
from fastopt.layers import Dense, ReLU, Tanh

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = fastopt.available_backends()
DTYPES = ["float32", "float64"]
OPTIMIZERS = {
    "sgd-nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adam-amsgrad": lambda: optim.Adam(lr=1e-3, amsgrad=True, weight_decay=1e-4),
    "adamw": lambda: optim.AdamW(lr=1e-3),
    "rmsprop-centered": lambda: optim.RMSProp(lr=1e-3, momentum=0.5, centered=True),
    "adagrad": lambda: optim.AdaGrad(lr=0.01, decay=1e-3),
}
ROWS, EPOCHS, BATCH = 512, 2, 32

try:
    from fastopt import cython_backend
except ImportError:  # pragma: no cover - the extension is not built
    cython_backend = None

needs_cython = pytest.mark.skipif(cython_backend is None, reason="the compiled extension is not built")
needs_openmp = pytest.mark.skipif(
    cython_backend is None or not cython_backend.build_info()["openmp"], reason="the extension is built without OpenMP"
)


def data() -> tuple[np.ndarray, np.ndarray]:
    X, y, _, _ = datasets.mini()
    return X[:ROWS], y[:ROWS]


def make_model(backend: str, dtype: str) -> fastopt.Sequential:
    return fastopt.Sequential([Dense(784, 32), ReLU(), Dense(32, 16), Tanh(), Dense(16, 10)], dtype=dtype, seed=0,
                              backend=backend)  # fmt: skip


def train(backend: str, dtype: str, optimizer: str, mode: str = "fit") -> np.ndarray:
    """Train a fresh model; ``mode`` "fit" (as users do) or "manual" (``_batch_gradients`` outside
    ``backend.training()``, so the OpenMP kernels keep their thread count while BLAS is threaded too)."""
    X, y = data()
    model = make_model(backend, dtype)
    opt = OPTIMIZERS[optimizer]()
    if mode == "fit":
        model.fit(X, y, optimizer=opt, epochs=EPOCHS, batch_size=BATCH, seed=1)
        return model.parameters.copy()
    resolved = fastopt.backend.resolve_backend(backend)
    loss = losses.CrossEntropy()
    inputs = as_features(X, model.in_features, model.dtype, resolved)
    targets = loss.targets(y, model.out_features, model.dtype)
    opt.bind([model.parameters], resolved)
    rng = np.random.default_rng(1)
    for _ in range(EPOCHS):
        order = np.arange(len(inputs))
        rng.shuffle(order)
        for start in range(0, len(order), BATCH):
            model._batch_gradients(resolved, loss, inputs, targets, order[start : start + BATCH])
            opt.apply([model.gradients])
    return model.parameters.copy()


def differing(a: np.ndarray, b: np.ndarray) -> str:
    mismatch = a.view(np.uint8).reshape(a.size, -1) != b.view(np.uint8).reshape(b.size, -1)
    count = int(mismatch.any(axis=1).sum())
    if not count:
        return ""
    scale = float(np.max(np.abs(b)))
    return f"{count} of {a.size} parameters differ (max |diff| {float(np.max(np.abs(a - b))):.3g}, max |p| {scale:.3g})"


# ------------------------------------------------------------------------------------ same seed, same bits
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_bits(backend: str, dtype: str, optimizer: str) -> None:
    first = train(backend, dtype, optimizer)
    second = train(backend, dtype, optimizer)
    assert not differing(first, second), differing(first, second)
    assert np.isfinite(first).all()


# ------------------------------------------------------------------------------------ thread counts
@contextmanager
def threads(openmp: int, blas: int, threshold: int | None = 1) -> Iterator[None]:
    """OpenMP threads for the cython kernels, BLAS threads, and the parallel threshold, restored after."""
    info = cython_backend.build_info()
    try:
        cython_backend.set_openmp_threads(openmp)
        if threshold is not None:
            cython_backend.set_parallel_threshold(threshold)
        with threadpool_limits(limits=blas, user_api="blas"):
            yield
    finally:
        cython_backend.set_openmp_threads(info["openmp_threads"])
        cython_backend.set_parallel_threshold(info["parallel_threshold"])


GemmCall = tuple[str, tuple[int, int], tuple[int, int], bool, bool]  # name, A shape, B shape, A.T?, B.T?


def dense_gemms(batch: int, n_in: int, n_out: int, layer: str = "") -> dict[str, GemmCall]:
    """The GEMMs of one dense layer's forward and backward, by the output they make."""
    return {
        "out": (f"x @ W{layer} ({batch}x{n_in} @ {n_in}x{n_out})", (batch, n_in), (n_in, n_out), False, False),
        "grad_weight": (f"grad W{layer} = x.T @ dz ({n_in}x{batch} @ {batch}x{n_out})", (batch, n_in),
                        (batch, n_out), True, False),
        "grad_x": (f"grad x = dz @ W{layer}.T ({batch}x{n_out} @ {n_out}x{n_in})", (batch, n_out), (n_in, n_out),
                   False, True),
    }  # fmt: skip


def model_gemms() -> list[GemmCall]:
    """The GEMMs one training step of ``make_model`` makes (the first layer needs no input gradient)."""
    widths = [784, 32, 16, 10]
    calls = []
    for index in range(len(widths) - 1):
        gemms = dense_gemms(BATCH, widths[index], widths[index + 1], str(index))
        calls += [call for key, call in gemms.items() if index or key != "grad_x"]
    return calls


def matmul_thread_culprits(calls: list[GemmCall], dtype: str) -> list[str]:
    """The names of the GEMMs whose ``numpy.matmul`` bits differ between 1 and 2 BLAS threads here."""
    rng = np.random.default_rng(0)
    found = []
    for name, a_shape, b_shape, a_t, b_t in calls:
        a = rng.standard_normal(a_shape).astype(dtype)
        b = rng.standard_normal(b_shape).astype(dtype)
        a_op, b_op = (a.T if a_t else a), (b.T if b_t else b)
        results = []
        for count in (1, 2):
            with threadpool_limits(limits=count, user_api="blas"):
                results.append(np.matmul(a_op, b_op))
        if not np.array_equal(results[0], results[1]):
            found.append(name)
    return found


def blas_name() -> str:
    pools = [pool for pool in threadpool_info() if pool["user_api"] == "blas"]
    return ", ".join(f"{pool['internal_api']} {pool['version']} ({pool['architecture']})" for pool in pools) or "?"


def explain_or_fail(problem: str, dtype: str, calls: list[GemmCall] | None = None, path: str | None = None) -> None:
    """Results differ across thread counts. On the direct GEMM path (``path``, by default the one in use) that
    is a failure: every GEMM is fastopt's own fixed-block work. On the matmul path, skip if one of ``calls``
    (by default the model's GEMMs) gives different bits through ``numpy.matmul`` on 1 and 2 BLAS threads
    here (no promise holds there), and fail if none does (the difference is then fastopt's own)."""
    path = path or cython_backend.gemm_path()
    if path == "direct":
        pytest.fail(f"{problem} on the direct GEMM path, where no result may depend on the thread counts")
    culprits = matmul_thread_culprits(model_gemms() if calls is None else calls, dtype)
    if culprits:
        pytest.skip(
            f"{problem}; no promise on the numpy.matmul path here: numpy.matmul ({blas_name()}) gives different "
            f"{dtype} bits on 1 and 2 BLAS threads for: {'; '.join(culprits)}"
        )
    pytest.fail(f"{problem} on the matmul path, where numpy.matmul gives the same bits on 1 and 2 BLAS threads")


CONFIGS = [(1, 1), (2, 1), (1, 2), (2, 2)]  # (OpenMP threads, BLAS threads)


# Training four times takes seconds: every combination on the default (direct) path, one per dtype on matmul.
IN_PROCESS_CASES = [("direct", dtype, mode) for dtype in DTYPES for mode in ("fit", "manual")]
IN_PROCESS_CASES += [("matmul", "float32", "fit"), ("matmul", "float64", "manual")]


@needs_openmp
@pytest.mark.parametrize(("gemm_path", "dtype", "mode"), IN_PROCESS_CASES, indirect=["gemm_path"])
def test_thread_counts_in_process(gemm_path: str, dtype: str, mode: str) -> None:
    """OpenMP 1/2 x BLAS 1/2 with parallel threshold 1: parameters equal to the serial run's."""
    results = {}
    for openmp, blas in CONFIGS:
        with threads(openmp, blas):
            results[openmp, blas] = train("cython", dtype, "adam-amsgrad", mode)
    reference = results[1, 1]
    for (openmp, blas), params in results.items():
        problem = differing(params, reference)
        if problem and blas == 1:
            pytest.fail(f"OpenMP {openmp} vs 1 thread (BLAS 1): {problem}: fastopt's own kernels depend on threads")
        if problem:
            explain_or_fail(f"OpenMP {openmp}, BLAS {blas} vs 1/1 ({mode}): {problem}", dtype)


@needs_openmp
@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_openmp_split_every_optimizer(optimizer: str) -> None:
    """Each optimizer through the manual loop: OpenMP 2 (threshold 1) vs 1, BLAS fixed at 1 thread."""
    for dtype in DTYPES:
        with threads(1, 1):
            serial = train("cython", dtype, optimizer, "manual")
        with threads(2, 1):
            parallel = train("cython", dtype, optimizer, "manual")
        assert not differing(parallel, serial), f"{dtype}: {differing(parallel, serial)}"


@needs_cython
@pytest.mark.parametrize("dtype", DTYPES)
def test_public_set_num_threads(dtype: str, gemm_path: str) -> None:
    """``fastopt.set_num_threads(1)`` vs ``(2)`` (OpenMP and BLAS together), threshold 1."""
    info = cython_backend.build_info()
    blas_before = max((p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"), default=1)
    results = {}
    try:
        cython_backend.set_parallel_threshold(1)
        for count in (1, 2):
            fastopt.set_num_threads(count)
            results[count] = (train("cython", dtype, "adam-amsgrad"), train("cython", dtype, "adam-amsgrad", "manual"))
    finally:
        fastopt.set_num_threads(blas_before)
        cython_backend.set_openmp_threads(info["openmp_threads"])
        cython_backend.set_parallel_threshold(info["parallel_threshold"])
    for index, mode in enumerate(("fit", "manual")):
        problem = differing(results[2][index], results[1][index])
        if problem:
            explain_or_fail(f"set_num_threads(2) vs (1), {mode}: {problem}", dtype)


CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    import test_determinism as t
    from fastopt import cython_backend
    from threadpoolctl import threadpool_info
    cython_backend.set_parallel_threshold(1)
    out = {{}}
    for mode in ("fit", "manual"):
        params = t.train("cython", {dtype!r}, "adam-amsgrad", mode)
        np.save({path!r} + "-" + mode + ".npy", params)
    out["openmp_threads"] = cython_backend.build_info()["openmp_threads"]
    out["gemm_path"] = cython_backend.gemm_path()
    out["blas_threads"] = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    print(json.dumps(out))
    """
)


def run_child(tmp_path: Path, dtype: str, openmp: int, blas: int) -> tuple[dict, dict[str, np.ndarray]]:
    path = str(tmp_path / f"{dtype}-{openmp}-{blas}")
    env = dict(os.environ, OMP_NUM_THREADS=str(openmp), OPENBLAS_NUM_THREADS=str(blas), FASTOPT_QUIET_FALLBACK="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    code = CHILD.format(tests=str(ROOT / "tests"), dtype=dtype, path=path)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads(done.stdout.strip().splitlines()[-1])
    return info, {mode: np.load(f"{path}-{mode}.npy") for mode in ("fit", "manual")}


@needs_openmp
@pytest.mark.parametrize("dtype", DTYPES)
def test_thread_counts_in_subprocesses(tmp_path: Path, dtype: str) -> None:
    """Fresh processes with OMP_NUM_THREADS / OPENBLAS_NUM_THREADS = 1/1, 2/1 and 2/2 (threshold 1)."""
    runs = {config: run_child(tmp_path, dtype, *config) for config in [(1, 1), (2, 1), (2, 2)]}
    for (openmp, blas), (info, _) in runs.items():
        assert info["openmp_threads"] == openmp, info
        assert all(count == blas for count in info["blas_threads"]), info
    reference = runs[1, 1][1]
    for (openmp, blas), (_, params) in runs.items():
        for mode in ("fit", "manual"):
            problem = differing(params[mode], reference[mode])
            if problem and blas == 1:
                pytest.fail(
                    f"OMP_NUM_THREADS={openmp} vs 1 ({mode}): {problem}: fastopt's own kernels depend on threads"
                )
            if problem:
                explain_or_fail(
                    f"OMP/OPENBLAS {openmp}/{blas} vs 1/1 ({mode}): {problem}", dtype, path=runs[1, 1][0]["gemm_path"]
                )


# ------------------------------------------------------------------------------------ kernel level
N = 1_000_000


SGD_MOMENTUM = dict(lr=0.1, momentum=0.9, weight_decay=1e-3, first_step=False)


def optimizer_calls(dtype: str) -> dict[str, tuple[str, dict, dict]]:
    """name -> (backend method, state buffer names with initial scale, keyword arguments)."""
    del dtype
    return {
        "sgd": ("sgd_step", {}, dict(lr=0.1, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=1e-3,
                                     first_step=True)),
        "sgd-momentum": ("sgd_step", {"momentum_buffer": 1.0}, dict(SGD_MOMENTUM, dampening=0.1, nesterov=False)),
        "sgd-nesterov": ("sgd_step", {"momentum_buffer": 1.0}, dict(SGD_MOMENTUM, dampening=0.0, nesterov=True)),
        "adagrad": ("adagrad_step", {"sum_squares": 1.0}, dict(lr=0.01, eps=1e-10, weight_decay=1e-3)),
        "rmsprop": ("rmsprop_step", {"square_avg": 1.0, "grad_avg": 0.0, "momentum_buffer": 1.0},
                    dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.5, weight_decay=1e-3)),
        "adam-amsgrad": ("adam_step", {"exp_avg": 1.0, "exp_avg_sq": 1.0, "max_exp_avg_sq": 1.0},
                         dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-3,
                              decoupled_weight_decay=False, bias_correction1=0.19, bias_correction2=0.002)),
        "adamw": ("adam_step", {"exp_avg": 1.0, "exp_avg_sq": 1.0, "max_exp_avg_sq": None},
                  dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, decoupled_weight_decay=True,
                       bias_correction1=0.19, bias_correction2=0.002)),
    }  # fmt: skip


def run_optimizer_kernel(dtype: str, name: str, steps: int = 3) -> list[np.ndarray]:
    method, state_spec, kwargs = optimizer_calls(dtype)[name]
    rng = np.random.default_rng(42)
    param = rng.standard_normal(N).astype(dtype)
    state = {}
    for key, scale in state_spec.items():
        state[key] = None if scale is None else np.abs(rng.standard_normal(N) * scale).astype(dtype)
    backend = fastopt.backend.resolve_backend("cython")
    for step in range(steps):
        grad = rng.standard_normal(N).astype(dtype)
        if method == "sgd_step":
            backend.sgd_step(param, grad, state.get("momentum_buffer"), **kwargs)
        elif method == "adagrad_step":
            backend.adagrad_step(param, grad, state["sum_squares"], **kwargs)
        elif method == "rmsprop_step":
            backend.rmsprop_step(
                param, grad, state["square_avg"], state["grad_avg"], state["momentum_buffer"], **kwargs
            )
        else:
            backend.adam_step(param, grad, state["exp_avg"], state["exp_avg_sq"], state["max_exp_avg_sq"], **kwargs)
        del step
    return [param] + [buffer for buffer in state.values() if buffer is not None]


@needs_openmp
@pytest.mark.parametrize("name", sorted(optimizer_calls("float32")))
@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizer_kernels_split_bit_identical(dtype: str, name: str) -> None:
    """10**6 elements, parallel threshold 1: 2 OpenMP threads (two chunks) vs serial, bit for bit."""
    with threads(1, 1):
        serial = run_optimizer_kernel(dtype, name)
    with threads(2, 1):
        parallel = run_optimizer_kernel(dtype, name)
    for index, (a, b) in enumerate(zip(parallel, serial)):
        assert not differing(a, b), f"buffer {index}: {differing(a, b)}"


@needs_cython
@pytest.mark.parametrize("activation", ["identity", "relu", "tanh"])
# (200, 64, 100): scikit-learn's digits network, whose products are cut into unequal blocks (100 columns 48 + 52,
# 200 rows 96 + 104)
@pytest.mark.parametrize("shape", [(32, 784, 128), (512, 784, 32), (512, 128, 10), (200, 64, 100)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_threads(dtype: str, shape: tuple[int, int, int], activation: str, gemm_path: str) -> None:
    """The dense forward and backward with 1 vs 2 BLAS threads (and 1 vs 2 OpenMP threads): the bias gradient
    and the pre-activation gradient (fastopt's own pass) must be identical; so must the GEMM outputs on the
    direct path (the shapes cut every product into blocks there). On the matmul path a GEMM output that
    differs skips the test if ``numpy.matmul`` itself differs across BLAS threads for that product here."""
    batch, n_in, n_out = shape
    rng = np.random.default_rng(7)
    x = rng.standard_normal((batch, n_in)).astype(dtype)
    weight = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(dtype)
    bias = rng.standard_normal(n_out).astype(dtype)
    grad = rng.standard_normal((batch, n_out)).astype(dtype)
    backend = fastopt.backend.resolve_backend("cython")
    results = {}
    for count in (1, 2):
        with threads(count, count):
            out = np.empty((batch, n_out), dtype=dtype)
            backend.dense_forward(x, weight, bias, out, activation)
            grad_out = grad.copy()
            grad_weight, grad_bias, grad_x = np.empty_like(weight), np.empty_like(bias), np.empty_like(x)
            # the backward starts from the same forward output on both runs, so its own work is comparable
            reference_out = results[1]["out"] if count == 2 else out
            backend.dense_backward(x, weight, reference_out, grad_out, grad_weight, grad_bias, grad_x, activation)
            results[count] = {"out": out, "grad_out": grad_out, "grad_bias": grad_bias, "grad_weight": grad_weight,
                              "grad_x": grad_x}  # fmt: skip
    for key in ("grad_out", "grad_bias"):
        assert not differing(results[2][key], results[1][key]), f"{key}: {differing(results[2][key], results[1][key])}"
    gemms = dense_gemms(batch, n_in, n_out)
    differ = [gemms[key] for key in gemms if differing(results[2][key], results[1][key])]
    if differ:
        names = "; ".join(call[0] for call in differ)
        explain_or_fail(f"{dtype}: 1 vs 2 threads give different bits for {names}", dtype, differ, gemm_path)


def test_explain_or_fail_is_strict_on_the_direct_path() -> None:
    with pytest.raises(pytest.fail.Exception, match="direct GEMM path"):
        explain_or_fail("parameters differ", "float32", path="direct")


def test_explain_or_fail_fails_when_no_matmul_differs() -> None:
    """A 2x2 product is never split over BLAS threads: a difference it cannot explain is a failure."""
    tiny = [("2x2 @ 2x2", (2, 2), (2, 2), False, False)]
    with pytest.raises(pytest.fail.Exception, match="same bits"):
        explain_or_fail("parameters differ", "float64", tiny, path="matmul")


@needs_openmp
def test_direct_dense_from_two_python_threads_gives_the_serial_bits(use_gemm_path) -> None:
    """Two Python threads calling the direct dense forward at once (as a server predicting in a thread pool
    would), BLAS at 2 threads: every result must be bit-identical to the single caller's."""
    use_gemm_path("direct")
    if cython_backend._nn.build_info()["gemm_max_blocks"] < 2:
        pytest.skip("one processor: every product is one block")
    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 784)).astype(np.float32)
    weight = (rng.standard_normal((784, 128)) / 28).astype(np.float32)
    bias = np.zeros(128, dtype=np.float32)
    backend = fastopt.backend.resolve_backend("cython")
    mismatches: list[float] = []
    with threads(2, 2, threshold=None):
        reference = backend.dense_forward(x, weight, bias, np.empty((32, 128), dtype=np.float32))

        def work() -> None:
            out = np.empty_like(reference)
            for _ in range(3000):
                if mismatches:
                    return
                backend.dense_forward(x, weight, bias, out)
                if not np.array_equal(out, reference):
                    mismatches.append(float(np.abs(out - reference).max()))

        workers = [threading.Thread(target=work) for _ in range(2)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert not mismatches, f"a result differed from the serial one by up to {max(mismatches):.3g}"
