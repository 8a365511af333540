"""Whole training runs: the backends agree, and a training step makes no new arrays."""

from __future__ import annotations

import subprocess
import sys
import threading
import tracemalloc

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import fastopt
from fastopt import datasets, layers, losses, optim

needs_cython = pytest.mark.skipif("cython" not in fastopt.available_backends(), reason="compiled backend not built")

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.01, momentum=0.9, decay=1e-3),
    "sgd-nesterov": lambda: optim.SGD(lr=0.02, momentum=0.9, nesterov=True, weight_decay=1e-4),
    "adagrad": lambda: optim.AdaGrad(lr=0.01, initial_accumulator_value=0.1),
    "rmsprop": lambda: optim.RMSProp(lr=1e-3, momentum=0.5, centered=True),
    "adam": lambda: optim.Adam(lr=1e-3, amsgrad=True, weight_decay=1e-4),
    "adamw": lambda: optim.AdamW(lr=1e-3, decay=1e-3),
    "nadam": lambda: optim.NAdam(lr=1e-3, weight_decay=1e-4, decoupled_weight_decay=True),
    "adamax": lambda: optim.Adamax(lr=1e-3, weight_decay=1e-4),
    "radam": lambda: optim.RAdam(lr=1e-3, weight_decay=1e-4, decay=1e-3),
    "lion": lambda: optim.Lion(lr=1e-4, weight_decay=1e-2),
}


@pytest.fixture(scope="module")
def mini():
    return datasets.mini()


def _mlp(dtype: str, backend: str) -> fastopt.Sequential:
    return fastopt.Sequential(
        [layers.Dense(784, 64), layers.ReLU(), layers.Dense(64, 32), layers.Tanh(), layers.Dense(32, 10)],
        dtype=dtype,
        seed=3,
        backend=backend,
    )


def _train(mini, dtype: str, backend: str, make_optimizer, nudge: bool = False) -> tuple[fastopt.Sequential, dict]:
    """Train ``_mlp`` for 3 epochs; ``nudge`` moves every initial parameter up by one ulp (``np.nextafter``)."""
    X, y, X_test, y_test = mini
    model = _mlp(dtype, backend)
    if nudge:
        model.parameters[:] = np.nextafter(model.parameters, np.inf)
    history = model.fit(
        X, y, loss=losses.CrossEntropy(), optimizer=make_optimizer(), epochs=3, batch_size=32, seed=7,
        validation_data=(X_test, y_test),
    )  # fmt: skip
    return model, history.history


@needs_cython
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_float64_training_ends_with_equal_parameters(mini, name):
    reference, reference_history = _train(mini, "float64", "numpy", OPTIMIZERS[name])
    compiled, compiled_history = _train(mini, "float64", "cython", OPTIMIZERS[name])
    scale = np.abs(reference.parameters).max()
    assert np.abs(compiled.parameters - reference.parameters).max() <= 1e-9 * scale
    np.testing.assert_allclose(compiled_history["loss"], reference_history["loss"], rtol=1e-9)
    assert compiled_history["accuracy"] == reference_history["accuracy"]


# The float32 backends round differently (the compiled exp is within 1 ulp of NumPy's, GEMMs sum in another
# order), so their loss curves agree only as far as the run itself is insensitive to rounding, which depends on
# the optimizer and on the BLAS kernels: the centred RMSProp run below ends 0.45% away from itself when its start
# moves by one ulp, the others 1e-8 to 2e-7 away. So the tolerance is measured on the run, not tuned on one machine:
# the reference trained again from a start one ulp up gives the spread of the loss and val_loss curves (the
# largest relative difference up to each epoch: sensitivity only grows with training); the compiled backend may
# differ by SPREAD_FACTOR times that, because it differs by about an ulp at every step, not only at the start (the
# ratio measured up to 5 on a 2-core AMD EPYC Zen 4 with OpenBLAS's SkylakeX, Haswell and Prescott kernels), plus
# LOSS_FLOOR, about 8 float32 ulps of a mean loss (the differences measured stay below 4e-7 where the run is not
# sensitive), which a one-ulp nudge need not show. Bugs still fail it: lr 0.1% off, a weight decay dropped, Adam's
# eps x10 or inside the square root, its first bias correction dropped, RMSProp uncentred or with v + a^2, SGD's
# Nesterov ignored, each failed the optimizers it concerns (the cross-entropy gradient 0.1% off all but the Adams,
# which are invariant to the gradient's scale).
# Lion is compared in float64 only: it steps by the sign of its momentum, so a gradient component that rounds to
# +tiny on one backend and -tiny on the other (a sum of terms that cancel) moves its parameter by a whole lr, and
# neither a nudged start nor ulp-sized noise on the gradients models that (measured: 3e-6 and 0 spread, 1.1e-4
# across backends, where float64 agrees to 1e-9 and the kernels themselves are bit-identical).
SPREAD_FACTOR, LOSS_FLOOR = 10.0, 1e-6
SIGN_BASED = {"lion"}


@needs_cython
@pytest.mark.parametrize("name", sorted(set(OPTIMIZERS) - SIGN_BASED))
def test_float32_loss_curves_agree(mini, name):
    curves = {}
    for run, backend, nudge in (
        ("reference", "numpy", False),
        ("nudged", "numpy", True),
        ("compiled", "cython", False),
    ):
        history = _train(mini, "float32", backend, OPTIMIZERS[name], nudge)[1]
        curves[run] = np.array([history["loss"], history["val_loss"]])  # (2, epochs)
    reference = curves["reference"]
    spread = np.maximum.accumulate((np.abs(curves["nudged"] - reference) / reference).max(axis=0))
    tolerance = SPREAD_FACTOR * spread + LOSS_FLOOR
    difference = np.abs(curves["compiled"] - reference) / reference
    assert (difference <= tolerance).all(), (
        f"relative differences {difference} beyond {tolerance} (self-spread of the reference {spread})"
    )


@needs_cython
@pytest.mark.parametrize("targets", ["one-hot", "values"])
def test_float64_mse_training_ends_with_equal_parameters(mini, targets):
    """MSE on float targets: the inputs' rows are gathered by the backend's kernel (the compiled one splits 48 x 784
    and the last batch's 40 x 784 over its threads), the targets' rows (and, for one-hot rows, the labels) by
    ``numpy.take``. Both backends end within 1e-9 of each other, with the same losses (and accuracies)."""
    X, y, _, _ = mini
    if targets == "one-hot":
        Y = np.eye(10)[y[:1000]]
    else:
        Y = np.random.default_rng(0).standard_normal((1000, 10))
    results = {}
    for backend in ("numpy", "cython"):
        model = _mlp("float64", backend)
        history = model.fit(
            X[:1000], Y, loss=losses.MSE(), optimizer=optim.Adam(lr=1e-3), epochs=2, batch_size=48, seed=7
        )
        results[backend] = model.parameters.copy(), history.history
    (reference, reference_history), (compiled, compiled_history) = results["numpy"], results["cython"]
    assert np.abs(compiled - reference).max() <= 1e-9 * np.abs(reference).max()
    np.testing.assert_allclose(compiled_history["loss"], reference_history["loss"], rtol=1e-9)
    assert ("accuracy" in reference_history) == (targets == "one-hot")
    assert compiled_history.get("accuracy") == reference_history.get("accuracy")


FIT_WIDE_INPUTS = """
import numpy as np
import fastopt
from fastopt import layers
X = np.random.default_rng(0).random((39, 3072)).astype(np.float32)
model = fastopt.Sequential([layers.Dense(3072, 2)], backend="cython", seed=0)
model.fit(X, np.arange(39) % 2, epochs=1, batch_size=32)
print("trained")
"""


@needs_cython
def test_fit_with_a_short_last_batch_of_wide_rows():
    """39 samples of 3072 features (a CIFAR-10 image's size) in batches of 32, in a child process."""
    result = subprocess.run([sys.executable, "-c", FIT_WIDE_INPUTS], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "trained" in result.stdout, (result.returncode, result.stderr[-2000:])


@needs_cython
def test_float64_training_equal_on_both_gemm_paths(mini, use_gemm_path):
    """One epoch in float64: the direct GEMMs (fixed blocks of NumPy's OpenBLAS) and numpy.matmul end with
    parameters equal within 1e-9 (relative to the largest), and the same loss and accuracy."""
    X, y, _, _ = mini
    results = {}
    for path in ("matmul", "direct"):
        use_gemm_path(path)
        model = _mlp("float64", "cython")
        history = model.fit(X[:1024], y[:1024], optimizer=optim.Adam(lr=1e-3), epochs=1, batch_size=32, seed=7)
        results[path] = model.parameters.copy(), history.history
    (direct, direct_history), (matmul, matmul_history) = results["direct"], results["matmul"]
    assert np.abs(direct - matmul).max() <= 1e-9 * np.abs(matmul).max()
    np.testing.assert_allclose(direct_history["loss"], matmul_history["loss"], rtol=1e-9)
    assert direct_history["accuracy"] == matmul_history["accuracy"]


def _threading() -> dict:
    """The user's thread settings (BLAS, OpenMP, the update threshold) and the policy in force now."""
    from fastopt import cython_backend
    from fastopt._kernels import _threads

    info, policy = cython_backend.build_info(), _threads.build_info()
    blas = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    return {
        "blas": blas,
        "openmp": info["openmp_threads"],
        "threshold": info["parallel_threshold"],
        "effective_threshold": policy["update_threshold"],
        "serial_updates": policy["training_serial_updates"],
    }


@needs_cython
@pytest.mark.parametrize("threshold", [None, 1000], ids=["default-threshold", "threshold-1000"])
@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_fit_sets_threading_inside_and_restores_it(mini, gemm_path, threshold, fails):
    """Seen from ``on_epoch_end`` (inside ``backend.training()``): the user's settings are untouched; on the direct
    path the optimizer updates split from ``min(threshold, training threshold)``; on the matmul path with a 2-thread
    BLAS they run serially. After ``fit``, returning or raising, the policy is what it was."""
    from fastopt import cython_backend

    X, y, _, _ = mini
    inside = []

    def on_epoch_end(epoch: int, logs: dict) -> None:
        inside.append(_threading())
        if fails:
            raise KeyboardInterrupt

    default = cython_backend.build_info()["parallel_threshold"]
    try:
        if threshold is not None:
            cython_backend.set_parallel_threshold(threshold)
        with threadpool_limits(limits=2, user_api="blas"):
            before = _threading()
            assert before["blas"] == {2}
            model = _mlp("float32", "cython")
            arguments = {"optimizer": optim.Adam(lr=1e-3), "epochs": 2, "batch_size": 32, "on_epoch_end": on_epoch_end}
            if fails:
                with pytest.raises(KeyboardInterrupt):
                    model.fit(X[:64], y[:64], **arguments)
            else:
                model.fit(X[:64], y[:64], **arguments)
            after = _threading()
    finally:
        cython_backend.set_parallel_threshold(default)
    assert after == before
    assert len(inside) == (1 if fails else 2)
    training_threshold = cython_backend.build_info()["training_parallel_threshold"]
    expected = dict(before, effective_threshold=min(before["threshold"], training_threshold), serial_updates=False)
    if gemm_path == "matmul":
        expected = dict(before, serial_updates=True)
    assert all(state == expected for state in inside), inside


@needs_cython
def test_set_num_threads_during_a_fit_stays_after_it(mini):
    """A thread count set while a model trains (from a callback, or another Python thread) is the user's
    setting: the end of the fit keeps it, in every kernel module (one thread policy)."""
    from fastopt import cython_backend

    X, y, _, _ = mini
    before = _threading()
    model = _mlp("float32", "cython")
    try:
        model.fit(X[:64], y[:64], epochs=1, on_epoch_end=lambda epoch, logs: cython_backend.set_openmp_threads(1))
        assert _threading()["openmp"] == 1
        assert cython_backend.build_info()["openmp_threads"] == 1
    finally:
        cython_backend.set_openmp_threads(before["openmp"])


@needs_cython
def test_overlapping_fits_in_two_threads_restore_threading(mini, gemm_path):
    """Two models trained at once in two threads (the kernels release the GIL): A starts, B starts while A is
    inside ``training()``, A ends, then B ends (ordered with events, not timing). Afterwards the BLAS thread
    count, the OpenMP thread count and the policy must be what they were before."""
    from fastopt import cython_backend

    X, y, _, _ = mini
    a_inside, b_inside = threading.Event(), threading.Event()

    def fit(on_epoch_end) -> None:  # type: ignore[no-untyped-def]
        model = _mlp("float32", "cython")
        model.fit(X[:64], y[:64], optimizer=optim.SGD(lr=0.01), epochs=1, on_epoch_end=on_epoch_end)

    before = _threading()
    try:
        first = threading.Thread(target=fit, args=(lambda epoch, logs: (a_inside.set(), b_inside.wait(30)),))
        first.start()
        assert a_inside.wait(30)
        fit(lambda epoch, logs: (b_inside.set(), first.join(30)))
        assert not first.is_alive()
        after = _threading()
    finally:  # leave the process as it was for the other tests
        threadpool_limits(limits=max(before["blas"]), user_api="blas")
        cython_backend.set_openmp_threads(before["openmp"])
        cython_backend.set_parallel_threshold(before["threshold"])
    assert after == before


def _traced_bytes_during(function) -> tuple[int, int]:
    """(bytes still allocated after, peak bytes allocated during) a call, as tracemalloc sees them."""
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        function()
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return after - before, peak - before


@pytest.mark.parametrize("backend", fastopt.available_backends())
def test_training_steps_reuse_their_buffers(mini, backend):
    """After warm-up, steps keep no memory and reuse the same buffers. The compiled backend's steps
    allocate no arrays at all: their peak (a few Python floats) stays below the size of the smallest
    hidden activation (32 x 32 float32 = 4 KiB); the NumPy reference's kernels make temporaries."""
    X, y, _, _ = mini
    model = _mlp("float32", backend)
    compute = fastopt.backend.resolve_backend(backend)
    optimizer = optim.Adam(lr=1e-3)
    optimizer.bind([model.parameters], compute)
    loss = losses.CrossEntropy()
    inputs = np.ascontiguousarray(X[:640])
    targets = loss.targets(y[:640], 10, model.dtype)
    batches = [np.arange(start, start + 32) for start in range(0, 640, 32)]

    def steps(count: int) -> None:
        for step in range(count):
            model._batch_gradients(compute, loss, inputs, targets, batches[step % len(batches)])
            optimizer.apply([model.gradients])

    steps(50)  # the first batch allocates the workspace; NumPy's small-object caches fill up
    workspace = model._workspace(32)
    buffer_ids = [id(buffer) for buffer in (workspace.inputs, *workspace.outputs, *workspace.output_grads)]
    retained, peak = _traced_bytes_during(lambda: steps(300))
    assert retained < 1024, f"300 steps kept {retained} bytes allocated"
    assert [id(buffer) for buffer in (workspace.inputs, *workspace.outputs, *workspace.output_grads)] == buffer_ids
    assert model._threads.workspaces().keys() == {32}
    if backend == "cython":
        assert peak < 32 * 32 * 4, f"a compiled training step allocated {peak} bytes at its peak"


def test_last_partial_batch_gets_its_own_workspace_once(mini):
    X, y, _, _ = mini
    model = _mlp("float32", "numpy")
    model.fit(X[:100], y[:100], loss=losses.CrossEntropy(), optimizer=optim.SGD(lr=0.01), epochs=2, batch_size=32)
    assert sorted(model._threads.workspaces()) == [4, 32]
