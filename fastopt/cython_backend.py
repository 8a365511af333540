"""The compiled backend: the kernels of ``fastopt/_kernels/*.pyx`` behind the ``Backend`` interface.

Importing this module raises ImportError when the extension is not built; ``fastopt`` then falls
back to the NumPy backend and says why.

Design, chosen by measurement on a 2-core AMD EPYC (AVX2/FMA), float32, medians:

- **tanh** is NumPy's (SIMD) ``np.tanh`` applied in place, 7x faster than glibc's scalar ``tanhf``;
  everything else around it (bias add, derivative, bias gradient) is compiled.
- **GEMMs are made by NumPy's own OpenBLAS**, called from the kernels through its CBLAS ``sgemm``/``dgemm``
  (addresses found at import, below), single-threaded, on fixed blocks of each output shared among
  fastopt's OpenMP threads (``fastopt/_kernels/_nn.pyx``). Same library and speed as ``numpy.matmul``
  (a batch-32 step's eight GEMMs: 126 vs 130 us; batch 512: 1.42 vs 1.43 ms), but the bits no longer
  depend on the thread count (OpenBLAS's own threading rounds float32 differently on 1 and 2 threads),
  and BLAS's threads stay asleep, so the optimizer kernels can use both cores without the two thread
  pools spinning against each other. ``scipy.linalg.cython_blas`` (scipy's older OpenBLAS) measured
  1.05-1.35x slower at 32-512 rows, so scipy is not a dependency. When NumPy's BLAS is not an OpenBLAS
  whose functions can be found (``gemm_path()`` says why), the GEMMs go to ``numpy.matmul`` and one fused
  Cython pass follows each: ``out = f(out + bias)``; ``grad_out *= f'(out)`` with the bias gradient.
- **Optimizers** are one fused pass each, vectorized by gcc (``-O3 -fno-math-errno -ffp-contract=off``:
  bitwise equal to the reference), their hyperparameters passed by name (one struct per optimizer kind).
  Large updates are split into one contiguous chunk per OpenMP thread (see ``fastopt/_kernels/_optim.pyx``).
- **Threads only while they pay**: one thread policy (``fastopt/_kernels/_threads.pyx``) holds every size
  threshold, the training-time settings and the stall guard (which runs the kernels serially for a while,
  with the same blocks and the same bits, when another process makes a parallel region wait).
- **Instruction set**: each module is built twice, for the x86-64 baseline and with ``-mavx2 -mfma``;
  the AVX2 copy is imported only when the CPU reports AVX2 and FMA (NumPy's CPU feature detection).
  ``FASTOPT_ISA=baseline`` in the environment forces the portable copy.

The underscore methods trust their arguments (checked once by ``Backend``'s public methods, or by
the model and optimizers when they allocate buffers) and add only a dictionary lookup or two before
the compiled call. Optimizer buffers of any shape are passed as flat views of their memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import inspect
import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info

# An ImportError here means the extension is not built: fastopt then falls back to NumPy.
from fastopt._kernels import _nn as _nn_baseline
from fastopt._kernels import _optim as _optim_baseline
from fastopt._kernels import _threads
from fastopt.backend import Backend, StepTiming
from fastopt.kernel_table import KERNELS, OPTIMIZER_KERNELS

__all__ = [
    "CythonBackend",
    "StepThreads",
    "build_info",
    "cpu_has_avx2_fma",
    "gemm_path",
    "set_gemm_path",
    "set_openmp_threads",
    "set_parallel_threshold",
]


def cpu_has_avx2_fma() -> bool:
    """Whether this CPU runs AVX2 and FMA code (as detected by NumPy at import)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # NumPy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as features  # type: ignore[no-redef]
        except ImportError:
            return False
    return bool(features.get("AVX2") and features.get("FMA3"))


def _select_modules() -> tuple[object, object, str]:
    forced = os.environ.get("FASTOPT_ISA", "").strip().lower()
    if forced not in ("", "auto", "baseline", "avx2"):
        raise ImportError(f"FASTOPT_ISA must be 'auto', 'baseline' or 'avx2', got {forced!r}")
    if forced != "baseline" and (forced == "avx2" or cpu_has_avx2_fma()):
        try:
            from fastopt._kernels import _nn_avx2, _optim_avx2
        except ImportError as exc:
            if forced == "avx2":
                raise ImportError(f"FASTOPT_ISA=avx2 but the AVX2 kernels did not import: {exc}") from exc
            return _nn_baseline, _optim_baseline, "the AVX2 build is missing"
        if forced == "avx2" and not cpu_has_avx2_fma():
            raise ImportError("FASTOPT_ISA=avx2 but this CPU lacks AVX2/FMA")
        return _nn_avx2, _optim_avx2, "CPU has AVX2 and FMA"
    return _nn_baseline, _optim_baseline, "forced by FASTOPT_ISA" if forced else "CPU lacks AVX2 or FMA"


_nn, _optim, _ISA_REASON = _select_modules()

_ACTIVATION_CODES = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3, "leaky_relu": 4, "gelu": 5, "gelu_tanh": 6}
# tanh is the one activation left to NumPy: its SIMD tanh ran 7x faster than glibc's scalar tanhf
# (float32, 16k elements: 42 vs 301 us; float64 218 vs 289 us), and it is the reference's own function.
_EPILOGUE_CODES = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 0, "leaky_relu": 4}
_tanh = np.tanh
# The compiled training step's codes (_nn.pyx's TrainingStep): stage kinds; each loss kernel's loss and, for the
# elementwise losses, kind; the counts of correct predictions.
_STEP_STAGES = {"dense": 0, "activation": 1, "softmax": 2}
_STEP_LOSSES = {"softmax_cross_entropy": (0, 0), "binary_cross_entropy": (1, 0), "mse": (2, 0), "huber": (2, 1),
                "mae": (2, 2)}  # fmt: skip
_STEP_COUNTS = {None: 0, "values": 1, "labels": 2, "binary": 3}  # by Targets.counted_against


def _by_itemsize(fused: object) -> dict[int, object]:
    """The float32 and float64 specializations of a fused Cython function, keyed by item size (the
    buffers are trusted to be float32 or float64, so ``itemsize`` is the cheapest dtype test)."""
    return {4: fused["float"], 8: fused["double"]}  # type: ignore[index]


(_dense_epilogue, _dense_backward_prologue, _act_forward, _act_backward, _softmax_fwd, _softmax_bwd, _softmax_xent,
 _mse_kernel, _count, _all_finite, _gather, _dense_fwd, _dense_bwd) = (
    _by_itemsize(getattr(_nn, name))
    for name in ("dense_epilogue", "dense_backward_prologue", "activation_forward", "activation_backward",
                 "softmax_forward", "softmax_backward", "softmax_cross_entropy", "mse", "count_correct", "all_finite",
                 "gather_rows", "dense_forward", "dense_backward")
)  # fmt: skip
_dropout_kernel = _by_itemsize(_nn.dropout)
_huber_kernel, _mae_kernel, _bce_kernel, _count_binary = (
    _by_itemsize(getattr(_nn, name)) for name in ("huber", "mae", "binary_cross_entropy", "count_binary_correct")
)
_sum_of_squares = _by_itemsize(_optim.sum_of_squares)
_weighted_sum = _by_itemsize(_nn.weighted_sum_into)
_matmul = np.matmul
# dropout's backward pass is one product with the stored mask: NumPy's SIMD multiply, the reference's own
_multiply = np.multiply

# (symbol prefix, suffix, 64-bit integers): scipy-openblas64 (NumPy's wheels), an OpenBLAS built with
# INTERFACE64 and symbol suffix, scipy-openblas32, a plain OpenBLAS (64-bit integers if its
# configuration says USE64BITINT).
_OPENBLAS_NAMINGS = (("scipy_", "64_", True), ("", "64_", True), ("scipy_", "", None), ("", "", None))


def _inside_numpy(path: Path, numpy_dir: Path) -> bool:
    # NumPy's wheels keep their BLAS in numpy.libs/ (Linux, Windows) or numpy/.dylibs/ (macOS).
    return numpy_dir in path.parents or path.parent.name.startswith(numpy_dir.name)


def _numpy_openblas_path() -> str:
    """The file of the OpenBLAS NumPy loaded; LookupError when it cannot be told."""
    pools = [pool for pool in threadpool_info() if pool.get("internal_api") == "openblas"]
    numpy_dir = Path(np.__file__).resolve().parent
    own = [pool for pool in pools if _inside_numpy(Path(pool["filepath"]).resolve(), numpy_dir)]
    if len(own) != 1 and len(pools) != 1:
        found = ", ".join(pool["filepath"] for pool in pools) or "none"
        raise LookupError(f"cannot tell which OpenBLAS NumPy uses (OpenBLAS libraries loaded: {found})")
    return (own or pools)[0]["filepath"]


def _numpy_openblas() -> tuple[ctypes.CDLL, str, str, bool]:
    """NumPy's OpenBLAS, opened with ctypes: (library, symbol prefix, suffix, 64-bit integers).
    Raises LookupError saying why when NumPy's BLAS is not an OpenBLAS with CBLAS functions found here."""
    path = _numpy_openblas_path()
    library = ctypes.CDLL(path)
    for prefix, suffix, ilp64 in _OPENBLAS_NAMINGS:
        names = [f"{prefix}cblas_{kind}gemm{suffix}" for kind in "sd"]
        names += [f"{prefix}openblas_{verb}_num_threads{suffix}" for verb in ("get", "set")]
        if all(hasattr(library, name) for name in names):
            return library, prefix, suffix, _uses_64_bit_integers(library, prefix, suffix, ilp64)
    raise LookupError(f"no CBLAS gemm and thread functions found in {path}")


def _uses_64_bit_integers(library: ctypes.CDLL, prefix: str, suffix: str, known: bool | None) -> bool:
    """Whether the OpenBLAS takes 64-bit integers: known from its symbol names, else from its configuration."""
    if known is not None:
        return known
    get_config = getattr(library, f"{prefix}openblas_get_config{suffix}")
    get_config.restype = ctypes.c_char_p
    return b"USE64BITINT" in (get_config() or b"")


def _install_numpy_openblas() -> str:
    """Give the kernels NumPy's OpenBLAS gemm and thread functions, and check them against ``numpy.matmul``
    on a small product. Returns a description; raises LookupError when it cannot be used."""
    library, prefix, suffix, ilp64 = _numpy_openblas()

    def address(name: str) -> int:
        return ctypes.cast(getattr(library, f"{prefix}{name}{suffix}"), ctypes.c_void_p).value or 0

    _nn.set_blas(
        address("cblas_sgemm"),
        address("cblas_dgemm"),
        ilp64,
        address("openblas_get_num_threads"),
        address("openblas_set_num_threads"),
    )
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x, weight, bias = (rng.standard_normal(shape).astype(dtype) for shape in ((5, 7), (7, 3), (3,)))
        out = np.empty((5, 3), dtype=dtype)
        _dense_fwd[out.itemsize](x, weight, bias, out, 0, 0.0)
        if not np.allclose(out, x @ weight + bias, rtol=1e-4, atol=1e-5):
            _nn.set_blas(0, 0, False, 0, 0)
            raise LookupError(f"{prefix}cblas_sgemm{suffix} gave a wrong product ({dtype.__name__}); not used")
    kernels = _openblas_kernels(library, prefix, suffix)
    _nn.set_gemm_tiles(SMALL_PRODUCT_MULTIPLY_ADDS if kernels.lower() in UNPACKED_SMALL_PRODUCTS else 0)
    integers = "64" if ilp64 else "32"
    return (
        f"NumPy's OpenBLAS ({prefix}cblas_*gemm{suffix}, {integers}-bit integers, {kernels} kernels), called directly"
    )


# OpenBLAS's kernels that multiply products of at most 1e6 multiply-adds without packing (its "small matrix" path,
# for x86-64 AVX-512 CPUs): the direct path makes slightly larger products as several such calls (see _nn.pyx).
UNPACKED_SMALL_PRODUCTS = ("skylakex", "cooperlake", "sapphirerapids")
SMALL_PRODUCT_MULTIPLY_ADDS = 1e6


def _openblas_kernels(library: ctypes.CDLL, prefix: str, suffix: str) -> str:
    """The name of the kernels OpenBLAS chose for this CPU ("SkylakeX", "Haswell", ...), or "unknown"."""
    get_corename = getattr(library, f"{prefix}openblas_get_corename{suffix}", None)
    if get_corename is None:
        return "unknown"
    get_corename.restype = ctypes.c_char_p
    return (get_corename() or b"unknown").decode(errors="replace").strip()


try:
    _GEMM_DIRECT_INFO = _install_numpy_openblas()
except (LookupError, OSError, AttributeError) as _exc:
    _GEMM_DIRECT_INFO = ""
    _GEMM_FALLBACK_REASON = str(_exc)
else:
    _GEMM_FALLBACK_REASON = ""
_GEMM_CHOICE = os.environ.get("FASTOPT_GEMM", "").strip().lower()
if _GEMM_CHOICE not in ("", "auto", "direct", "matmul"):
    raise ImportError(f"FASTOPT_GEMM must be 'auto', 'direct' or 'matmul', got {_GEMM_CHOICE!r}")
if _GEMM_CHOICE == "direct" and not _GEMM_DIRECT_INFO:
    raise ImportError(f"FASTOPT_GEMM=direct but the direct GEMM path is unavailable: {_GEMM_FALLBACK_REASON}")
_direct_gemm = bool(_GEMM_DIRECT_INFO) and _GEMM_CHOICE != "matmul"


def gemm_path() -> str:
    """How the dense layers make their GEMMs: "direct" (NumPy's OpenBLAS called by the kernels, fixed
    blocks over fastopt's threads: bit-identical for any thread count) or "matmul" (``numpy.matmul``,
    BLAS's own threads)."""
    return "direct" if _direct_gemm else "matmul"


def set_gemm_path(path: str) -> None:
    """Choose ``gemm_path()``: "direct" (needs NumPy's OpenBLAS, see ``build_info()["gemm"]``) or "matmul".
    ``FASTOPT_GEMM=matmul`` (or ``direct``, ``auto``: direct when available) in the environment chooses at import."""
    global _direct_gemm
    if path not in ("direct", "matmul"):
        raise ValueError(f"path must be 'direct' or 'matmul', got {path!r}")
    if path == "direct" and not _GEMM_DIRECT_INFO:
        raise RuntimeError(f"the direct GEMM path is unavailable: {_GEMM_FALLBACK_REASON}")
    _direct_gemm = path == "direct"
    _nn.outdate_training_steps()  # a step made for the other path must not run


def stream_probe(param: np.ndarray, grad: np.ndarray, a: np.ndarray, b: np.ndarray, threads: int) -> None:
    """The memory-bandwidth probe of ``fastopt bench``: ``a += grad; b += grad; param += grad`` over four float32
    buffers of one length, in per-thread chunks as the optimizer kernels cut theirs (``_optim.stream_probe``)."""
    _optim.stream_probe["float"](param, grad, a, b, threads)


def gemm_probe() -> Callable[..., None] | None:
    """The GEMM probe of ``fastopt bench`` (``_nn.gemm_probe``, float32), or None when the dense kernels make their
    GEMMs with ``numpy.matmul`` (then NumPy's own rate is the one to measure)."""
    return _nn.gemm_probe["float"] if _direct_gemm else None


def set_openmp_threads(n: int) -> None:
    """Threads the OpenMP kernels may use (1 makes them serial). Has no effect in a serial build."""
    _threads.set_num_threads(int(n))


def set_parallel_threshold(n: int) -> None:
    """Smallest optimizer update with divisions (AdaGrad, RMSProp, Adam, ...) split over OpenMP threads outside
    ``fit``; streaming ones (SGD, Lion) use four times it. The default is 2**15 (see ``fastopt/_kernels/_threads.pyx``
    for the measurements); inside ``fit`` a higher setting is lowered to it."""
    _threads.set_update_threshold(int(n))


def build_info() -> dict:
    """How the extension in use was built and runs: OpenMP, threads, thresholds, instruction set, compile flags."""
    policy, info, nn_info = _threads.build_info(), _optim.build_info(), _nn.build_info()
    return {
        "openmp": policy["openmp"],
        "flushes_subnormals": info["flushes_subnormals"],
        "openmp_threads": policy["num_threads"],
        "forked": policy["forked"],
        "parallel_threshold": policy["parallel_threshold"],
        "training_parallel_threshold": policy["training_update_threshold"],
        "stall_guard": policy["stall_guard"],
        "serial_spells": policy["serial_spells"],
        "training_threads": dict(_last_choice),
        "compile_args": info["compile_args"],
        "isa": info["isa"],
        "isa_reason": _ISA_REASON,
        "gemm": (
            f"{_GEMM_DIRECT_INFO}, in fixed blocks (at most {nn_info['gemm_max_blocks']} per product) "
            "shared among the OpenMP threads"
            if _direct_gemm
            else "numpy.matmul (BLAS's own threads)"
            + (f"; direct path unavailable: {_GEMM_FALLBACK_REASON}" if _GEMM_FALLBACK_REASON else "")
        ),
        "modules": [_nn.__name__, _optim.__name__, _threads.__name__],
    }


def _compilable(stages: list) -> bool:
    """Whether the compiled stages can run a model's stages: on the direct GEMMs, without dropout (its masks are
    drawn by the Python step) or tanh (NumPy's, between the kernels)."""
    return _direct_gemm and not any(stage.kind == "dropout" or stage.activation == "tanh" for stage in stages)


def _step_data(inputs: np.ndarray, workspace: Any, targets: Any, count: int) -> tuple:
    """The data set's arrays and the batch's buffers as ``_nn.TrainingStep`` takes them: (source, inputs,
    target_source, targets, weight_source, weights, label_source, labels), the last four None where unused."""
    weights = (None, None) if targets.weights is None else (targets.weights, workspace.weights)
    labels = (targets.labels, workspace.labels) if count == _STEP_COUNTS["labels"] else (None, None)
    return (inputs, workspace.inputs, targets.values, workspace.targets, *weights, *labels)


def _step_stages(stages: list, workspace: Any, in_features: int) -> tuple:
    """A model's stages as ``_nn.CompiledStages`` and ``_nn.TrainingStep`` take them: per stage (kind, activation,
    negative_slope, n_in, n_out, out, grad_out, weight, bias, grad_weight, grad_bias)."""
    made = []
    for index, stage in enumerate(stages):
        out, layer = workspace.outputs[index], stage.dense
        n_in = workspace.outputs[index - 1].shape[1] if index else in_features
        arrays = (None,) * 4 if layer is None else (layer._weight, layer._bias, layer._weight_grad, layer._bias_grad)
        made.append((_STEP_STAGES[stage.kind], _ACTIVATION_CODES[stage.activation], stage.negative_slope, n_in,
                     out.shape[1], out, workspace.output_grads[index], *arrays))  # fmt: skip
    return tuple(made)


def _optimizer_method(kernel_name: str) -> object:
    """The trusted method of an optimizer kernel: its buffers as flat views (any shape), then the compiled loop of
    their dtype with ``with_squares`` and the hyperparameters by name; returns the loop's sum of squares or None."""
    compiled = _by_itemsize(getattr(_optim, kernel_name))

    def method(self: CythonBackend, *arguments: object) -> float | None:
        param = arguments[0]
        if param.ndim == 1:  # type: ignore[attr-defined]
            # the trusted buffers all have the parameter's shape: already flat (a model's buffer or groups), so the
            # call skips the list of views (0.6 us of a 1.7 us call on a 2-core AMD EPYC Zen 4 VM)
            return compiled[param.itemsize](*arguments)  # type: ignore[attr-defined,no-any-return]
        *arrays, with_squares, hyper = arguments
        flat = [array if array is None or array.ndim == 1 else array.ravel() for array in arrays]  # type: ignore[union-attr]
        return compiled[param.itemsize](*flat, with_squares, hyper)  # type: ignore[attr-defined,no-any-return]

    method.__name__ = KERNELS[kernel_name].method
    method.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD)
         for name in ("self", *KERNELS[kernel_name].trusted_parameters())]
    )  # fmt: skip
    return method


# The choice of the last fit that made one (``build_info()["training_threads"]``): its median step times.
_last_choice: dict[str, float | int] = {}


class StepThreads(StepTiming):
    """Chooses, for one fit, between the kernels' threads and one thread, by timing the fit's own steps.

    Why: whether a step's kernels gain from several threads depends on the CPU and on how data moves between the
    cores' caches, not on one kernel's size alone. On a 2-core AMD EPYC Zen 4 VM, each kernel timed alone ran
    faster on two threads, but inside a fit the data a step shares across cores (weights updated on one core and
    read on the other, gradients written by one and read by the other) cost more than the threads gained for
    small networks: scikit-learn's digits (64-100-10, batch 200) took 125 us a step on two threads and 114 us on
    one, friedman1 (10-100-1) 52 against 39 us; the 784-128-64-10 network at batch 32 took 211 us against 273.

    The probe: threaded steps not timed for ``WARMUP_SECONDS``, then blocks of ``BLOCK_STEPS`` steps, threaded and
    serial in turn, ``ROUNDS`` blocks each; the first step of a block is not timed (it pays for moving the data the
    other way). The warm-up is there because the first threaded steps after a pause run slow while the other core
    wakes up: on a 2-core AMD EPYC Zen 4 VM the 784-128-64-10 network's batch-32 steps took 375, 299, 229, 208 us,
    then 164-179 from the sixth on, and a probe without warm-up chose one thread (250 us a step) in about one fit out
    of four. The mode of the lower median step time then stays for ``REPROBE_SECONDS``, after which the probe runs
    again: the machine changes under a long fit (another process starts; this VM's host halves its two-thread
    throughput for seconds to minutes at a time, when a threaded step took 505 us against 280 serial, and 220
    against 280 a minute later). The blocks each kernel cuts its work into never change, so neither do the bits:
    only the speed depends on the choice."""

    WARMUP_SECONDS = 0.002
    BLOCK_STEPS = 5
    ROUNDS = 2
    REPROBE_SECONDS = 10.0

    def __init__(self) -> None:
        self._steps = 0  # steps of the probe's blocks so far
        self._started = 0
        self._warm_until = 0  # perf_counter_ns when the warm-up ends (0: the probe has not started)
        self._warming = False  # the step in progress is a warm-up step
        self._times: tuple[list[int], list[int]] = ([], [])  # nanoseconds of the timed (threaded, serial) steps
        self._chosen_at = 0  # perf_counter_ns of the last choice
        self.serial: bool | None = None  # the choice in force (None while probing)

    def _serial_block(self) -> bool:
        return (self._steps // self.BLOCK_STEPS) % 2 == 1

    def begin_step(self) -> None:
        now = time.perf_counter_ns()
        if self.serial is not None:
            if now - self._chosen_at < self.REPROBE_SECONDS * 1e9:
                return
            self.serial, self._steps, self._times, self._warm_until = None, 0, ([], []), 0  # probe again
        if self._warm_until == 0:
            self._warm_until = now + int(self.WARMUP_SECONDS * 1e9)
            _threads.set_training_serial(False)
        self._warming = now < self._warm_until
        if not self._warming and self._steps % self.BLOCK_STEPS == 0:
            _threads.set_training_serial(self._serial_block())
        self._started = time.perf_counter_ns()

    def end_step(self) -> None:
        if self.serial is not None or self._warming:
            return
        elapsed = time.perf_counter_ns() - self._started
        if self._steps % self.BLOCK_STEPS:
            self._times[self._serial_block()].append(elapsed)
        self._steps += 1
        if self._steps == 2 * self.ROUNDS * self.BLOCK_STEPS:
            self.choose(statistics.median(self._times[0]) / 1e3, statistics.median(self._times[1]) / 1e3)

    def choose(self, threaded_us: float, serial_us: float) -> None:
        """Keep the faster mode for the rest of the fit, given the median step times measured in each."""
        self.serial = serial_us < threaded_us
        self._chosen_at = time.perf_counter_ns()
        _threads.set_training_serial(self.serial)
        _last_choice.update(threads=1 if self.serial else _threads.build_info()["num_threads"],
                            threaded_step_us=threaded_us, serial_step_us=serial_us)  # fmt: skip


class CythonBackend(Backend):
    """Compiled fused kernels (see the module docstring); results agree with ``NumpyBackend``."""

    name = "cython"

    @contextlib.contextmanager
    def training(self) -> Iterator[StepTiming]:
        """While models train, one thread pool at a time: OpenBLAS's threads and libgomp's both spin after their
        parallel regions, and alternated on the same cores they stalled each step for a scheduler slice (a
        535k-parameter model: 2.6 s instead of 0.16 s per 5,000 samples). With the direct GEMMs BLAS's threads
        stay asleep (the kernels hold it at one thread and split the work themselves), so the optimizer kernels
        split their work from the policy's training threshold on (a 109k-parameter Adam step: 32 instead of 56 us);
        with ``numpy.matmul`` and a multi-threaded BLAS they run serially (``_threads.begin_training``). The
        user's thread settings are not changed, so a ``set_num_threads`` made during a fit stays after it. With more
        than one thread, the fit's loop times its first steps on the threads and on one (``StepThreads``)."""
        blas_busy = (
            not _direct_gemm
            and max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1) > 1
        )
        _threads.begin_training(blas_busy)
        policy = _threads.build_info()
        try:
            yield StepThreads() if policy["num_threads"] > 1 and policy["openmp"] else StepTiming()
        finally:
            _threads.end_training()

    def set_num_threads(self, n: int) -> None:
        set_openmp_threads(n)

    def build_info(self) -> dict:
        return build_info()

    def _training_step(self, stages, workspace, inputs, targets, loss):  # type: ignore[no-untyped-def]
        """``_nn.TrainingStep`` of the model's stages, or None: for stages ``_compilable`` refuses, a loss without a
        kernel, or data not C-contiguous."""
        spec = loss._step_kernel(workspace.outputs[-1])
        if not _compilable(stages) or spec is None or spec[0] not in _STEP_LOSSES:
            return None
        count = _STEP_COUNTS[targets.counted_against]
        data = _step_data(inputs, workspace, targets, count)
        if not all(array is None or array.flags.c_contiguous for array in data):
            return None
        kernel, options, value_scale, grad_scale = spec
        code, pointwise_kind = _STEP_LOSSES[kernel]
        # the kernel's one option: binary cross-entropy's pos_weight array, or label smoothing or Huber's delta
        pos_weight = options[0] if kernel == "binary_cross_entropy" else None
        option = options[0] if options and kernel != "binary_cross_entropy" else 0.0
        return _nn.TrainingStep(
            _step_stages(stages, workspace, inputs.shape[1]), data,
            (code, pointwise_kind, option, pos_weight, value_scale, grad_scale, count),
        )  # fmt: skip

    def _step_pair(self, first, second):  # type: ignore[no-untyped-def]
        """``_nn.StepPair`` of two of this backend's training steps."""
        return _nn.StepPair(first, second)

    def _forward_stages(self, stages, workspace, in_features):  # type: ignore[no-untyped-def]
        """``_nn.CompiledStages`` of the model's stages, or None (as ``_training_step``)."""
        if not _compilable(stages):
            return None
        inputs = workspace.inputs
        return _nn.CompiledStages(
            _step_stages(stages, workspace, in_features), inputs.shape[0], inputs.shape[1], inputs.itemsize
        )

    def _dense_forward(self, x, weight, bias, out, activation, negative_slope):  # type: ignore[no-untyped-def]
        if _direct_gemm:
            _dense_fwd[out.itemsize](x, weight, bias, out, _EPILOGUE_CODES[activation], negative_slope)
        else:
            _matmul(x, weight, out=out)
            _dense_epilogue[out.itemsize](out, bias, _EPILOGUE_CODES[activation], negative_slope)
        if activation == "tanh":
            _tanh(out, out=out)

    def _dense_backward(self, x, weight, out, grad_out, grad_weight, grad_bias, grad_x, activation, negative_slope):  # type: ignore[no-untyped-def]
        code = _ACTIVATION_CODES[activation]
        if _direct_gemm:
            return _dense_bwd[out.itemsize](
                x, weight, out, grad_out, grad_weight, grad_bias, grad_x, code, negative_slope
            )
        _dense_backward_prologue[out.itemsize](grad_out, out, grad_bias, code, negative_slope)
        _matmul(x.T, grad_out, out=grad_weight)
        if grad_x is not None:
            _matmul(grad_out, weight.T, out=grad_x)
        finite = _all_finite[out.itemsize]
        return finite(grad_weight.reshape(-1)) and finite(grad_bias)

    def _activation_forward(self, activation, x, out, negative_slope):  # type: ignore[no-untyped-def]
        if activation == "tanh":
            _tanh(x, out=out)
            return
        if x.ndim != 1:
            x, out = x.ravel(), out.ravel()
        _act_forward[x.itemsize](_ACTIVATION_CODES[activation], x, out, negative_slope)

    def _activation_backward(self, activation, x, out, grad_out, grad_x, negative_slope):  # type: ignore[no-untyped-def]
        if out.ndim != 1:
            x, out, grad_out, grad_x = x.ravel(), out.ravel(), grad_out.ravel(), grad_x.ravel()
        _act_backward[out.itemsize](_ACTIVATION_CODES[activation], x, out, grad_out, grad_x, negative_slope)

    def _softmax_forward(self, x, out):  # type: ignore[no-untyped-def]
        _softmax_fwd[x.itemsize](x, out)

    def _softmax_backward(self, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        _softmax_bwd[out.itemsize](out, grad_out, grad_x)

    def _dropout(self, x, out, mask, p, key):  # type: ignore[no-untyped-def]
        if x.ndim != 1:
            x, out, mask = x.ravel(), out.ravel(), mask.ravel()
        _dropout_kernel[x.itemsize](x, out, mask, p, key)

    def _dropout_backward(self, grad_out, mask, grad_x):  # type: ignore[no-untyped-def]
        _multiply(grad_out, mask, out=grad_x)

    def _softmax_cross_entropy(self, logits, labels, grad_logits, weights, label_smoothing):  # type: ignore[no-untyped-def]
        return _softmax_xent[logits.itemsize](logits, labels, grad_logits, weights, label_smoothing)

    def _mse(self, pred, target, grad_pred, weights):  # type: ignore[no-untyped-def]
        return _mse_kernel[pred.itemsize](pred, target, grad_pred, weights)

    def _huber(self, pred, target, grad_pred, weights, delta):  # type: ignore[no-untyped-def]
        return _huber_kernel[pred.itemsize](pred, target, grad_pred, weights, delta)

    def _mae(self, pred, target, grad_pred, weights):  # type: ignore[no-untyped-def]
        return _mae_kernel[pred.itemsize](pred, target, grad_pred, weights)

    def _binary_cross_entropy(self, logits, targets, grad_logits, weights, pos_weight):  # type: ignore[no-untyped-def]
        return _bce_kernel[logits.itemsize](logits, targets, grad_logits, weights, pos_weight)

    def _count_binary_correct(self, logits, targets):  # type: ignore[no-untyped-def]
        return _count_binary[logits.itemsize](logits, targets)

    def _count_correct(self, scores, labels):  # type: ignore[no-untyped-def]
        return _count[scores.itemsize](scores, labels)

    def _all_finite(self, x):  # type: ignore[no-untyped-def]
        return _all_finite[x.itemsize](x if x.ndim == 1 else x.reshape(-1))

    def _sum_of_squares(self, x):  # type: ignore[no-untyped-def]
        return _sum_of_squares[x.itemsize](x if x.ndim == 1 else x.reshape(-1))

    def _gather_rows(self, source, rows, out):  # type: ignore[no-untyped-def]
        _gather[source.itemsize](source, rows, out)

    def _weighted_sum_into(self, a, b, a_weight, b_weight):  # type: ignore[no-untyped-def]
        _weighted_sum[a.itemsize](a, b, a_weight, b_weight)


for _name in OPTIMIZER_KERNELS:
    setattr(CythonBackend, KERNELS[_name].method, _optimizer_method(_name))
