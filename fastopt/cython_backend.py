"""The compiled backend: the kernels of ``fastopt/_kernels/*.pyx`` behind the ``Backend`` interface.

Importing this module raises ImportError when the extension is not built; ``fastopt`` then falls
back to the NumPy backend and says why.

Design, chosen by measurement on a 2-core AMD EPYC (AVX2/FMA), float32, medians:

- **tanh** is NumPy's (SIMD) ``np.tanh`` applied in place, 7x faster than glibc's scalar ``tanhf``;
  everything else around it (bias add, derivative, bias gradient) is compiled.
- **GEMMs go to ``numpy.matmul``** (NumPy's bundled OpenBLAS), each followed by one fused Cython pass:
  the forward epilogue ``out = f(out + bias)``; the backward prologue ``grad_out *= f'(out)`` together
  with the bias gradient (column sums, row after row: deterministic, and the order NumPy uses).
  ``scipy.linalg.cython_blas.sgemm`` called from Cython measured 1.05-1.35x slower than
  ``numpy.matmul`` for 784x128 layers at 32-512 rows (forward 89 vs 66 us at 32 rows), so scipy
  is not a dependency.
- **Optimizers** are one fused pass each, vectorized by gcc (``-O3 -fno-math-errno -ffp-contract=off``:
  bitwise equal to the reference). Above ``parallel_threshold`` elements (default 2**18; 4x that for
  SGD) the flat buffer is split into one contiguous chunk per OpenMP thread. Two threads pay from ~30k
  elements on an idle machine, but a parallel region waits for a scheduler slice whenever the other
  core is busy (BLAS threads spinning after a GEMM, other processes): a 110k-parameter Adam step then
  took 1-20 ms instead of ~50 us serially, so small models stay serial by default.
- **Instruction set**: each module is built twice, for the x86-64 baseline and with ``-mavx2 -mfma``;
  the AVX2 copy is imported only when the CPU reports AVX2 and FMA (NumPy's CPU feature detection).
  ``FASTOPT_ISA=baseline`` in the environment forces the portable copy.

The underscore methods trust their arguments (checked once by ``Backend``'s public methods, or by
the model and optimizers when they allocate buffers) and add only a dictionary lookup or two before
the compiled call. Optimizer buffers of any shape are passed as flat views of their memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
from threadpoolctl import threadpool_info

# An ImportError here means the extension is not built: fastopt then falls back to NumPy.
from fastopt._kernels import _nn as _nn_baseline
from fastopt._kernels import _optim as _optim_baseline
from fastopt.backend import Backend

__all__ = ["CythonBackend", "build_info", "cpu_has_avx2_fma", "set_openmp_threads", "set_parallel_threshold"]


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

_ACTIVATION_CODES = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 3}
# tanh is the one activation left to NumPy: its SIMD tanh ran 7x faster than glibc's scalar tanhf
# (float32, 16k elements: 42 vs 301 us; float64 218 vs 289 us), and it is the reference's own function.
_EPILOGUE_CODES = {"identity": 0, "relu": 1, "sigmoid": 2, "tanh": 0}
_tanh = np.tanh


def _by_itemsize(fused: object) -> dict[int, object]:
    """The float32 and float64 specializations of a fused Cython function, keyed by item size (the
    buffers are trusted to be float32 or float64, so ``itemsize`` is the cheapest dtype test)."""
    return {4: fused["float"], 8: fused["double"]}  # type: ignore[index]


_dense_epilogue = _by_itemsize(_nn.dense_epilogue)
_dense_backward_prologue = _by_itemsize(_nn.dense_backward_prologue)
_act_forward = _by_itemsize(_nn.activation_forward)
_act_backward = _by_itemsize(_nn.activation_backward)
_softmax_fwd = _by_itemsize(_nn.softmax_forward)
_softmax_bwd = _by_itemsize(_nn.softmax_backward)
_softmax_xent = _by_itemsize(_nn.softmax_cross_entropy)
_mse_kernel = _by_itemsize(_nn.mse)
_count = _by_itemsize(_nn.count_correct)
_sgd = _by_itemsize(_optim.sgd_step)
_adagrad = _by_itemsize(_optim.adagrad_step)
_rmsprop = _by_itemsize(_optim.rmsprop_step)
_adam = _by_itemsize(_optim.adam_step)
_matmul = np.matmul


def set_openmp_threads(n: int) -> None:
    """Threads the OpenMP kernels may use (1 makes them serial). Has no effect in a serial build."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _optim.set_num_threads(n)


def set_parallel_threshold(n: int) -> None:
    """Smallest AdaGrad/RMSProp/Adam update (elements) split over OpenMP threads; SGD uses four times it.
    The default, 2**18, keeps small models serial (see ``fastopt/_kernels/_optim.pyx`` for why)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _optim.set_parallel_threshold(n)


def build_info() -> dict:
    """How the extension in use was built: OpenMP, threads, instruction set, compile flags."""
    info = _optim.build_info()
    return {
        "openmp": info["openmp"],
        "flushes_subnormals": info["flushes_subnormals"],
        "openmp_threads": info["num_threads"] if info["openmp"] else 1,
        "parallel_threshold": info["parallel_threshold"],
        "compile_args": info["compile_args"],
        "isa": info["isa"],
        "isa_reason": _ISA_REASON,
        "modules": [_nn.__name__, _optim.__name__],
    }


class CythonBackend(Backend):
    """Compiled fused kernels (see the module docstring); results agree with ``NumpyBackend``."""

    name = "cython"

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Serial optimizer kernels while a model trains with a multi-threaded BLAS. OpenBLAS's threads and
        libgomp's both spin after their parallel regions; alternated on the same cores they stalled each
        step for a scheduler slice (a 535k-parameter model: 2.6 s instead of 0.16 s per 5,000 samples)."""
        threads = _optim.build_info()["num_threads"]
        blas_threads = max((pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"), default=1)
        if blas_threads > 1:
            _optim.set_num_threads(1)
        try:
            yield
        finally:
            _optim.set_num_threads(threads)

    def _dense_forward(self, x, weight, bias, out, activation):  # type: ignore[no-untyped-def]
        _matmul(x, weight, out=out)
        _dense_epilogue[out.itemsize](out, bias, _EPILOGUE_CODES[activation])
        if activation == "tanh":
            _tanh(out, out=out)

    def _dense_backward(self, x, weight, out, grad_out, grad_weight, grad_bias, grad_x, activation):  # type: ignore[no-untyped-def]
        _dense_backward_prologue[out.itemsize](grad_out, out, grad_bias, _ACTIVATION_CODES[activation])
        _matmul(x.T, grad_out, out=grad_weight)
        if grad_x is not None:
            _matmul(grad_out, weight.T, out=grad_x)

    def _activation_forward(self, activation, x, out):  # type: ignore[no-untyped-def]
        if activation == "tanh":
            _tanh(x, out=out)
            return
        if x.ndim != 1:
            x, out = x.ravel(), out.ravel()
        _act_forward[x.itemsize](_ACTIVATION_CODES[activation], x, out)

    def _activation_backward(self, activation, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        if out.ndim != 1:
            out, grad_out, grad_x = out.ravel(), grad_out.ravel(), grad_x.ravel()
        _act_backward[out.itemsize](_ACTIVATION_CODES[activation], out, grad_out, grad_x)

    def _softmax_forward(self, x, out):  # type: ignore[no-untyped-def]
        _softmax_fwd[x.itemsize](x, out)

    def _softmax_backward(self, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        _softmax_bwd[out.itemsize](out, grad_out, grad_x)

    def _softmax_cross_entropy(self, logits, labels, grad_logits):  # type: ignore[no-untyped-def]
        return _softmax_xent[logits.itemsize](logits, labels, grad_logits)

    def _mse(self, pred, target, grad_pred):  # type: ignore[no-untyped-def]
        if pred.ndim != 1:
            pred, target = pred.ravel(), target.ravel()
            if grad_pred is not None:
                grad_pred = grad_pred.ravel()
        return _mse_kernel[pred.itemsize](pred, target, grad_pred)

    def _count_correct(self, scores, labels):  # type: ignore[no-untyped-def]
        return _count[scores.itemsize](scores, labels)

    def _sgd_step(self, param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay, first_step):  # type: ignore[no-untyped-def]
        if param.ndim != 1:
            param, grad = param.ravel(), grad.ravel()
            if momentum_buffer is not None:
                momentum_buffer = momentum_buffer.ravel()
        _sgd[param.itemsize](param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay, first_step)

    def _adagrad_step(self, param, grad, sum_squares, lr, eps, weight_decay):  # type: ignore[no-untyped-def]
        if param.ndim != 1:
            param, grad, sum_squares = param.ravel(), grad.ravel(), sum_squares.ravel()
        _adagrad[param.itemsize](param, grad, sum_squares, lr, eps, weight_decay)

    def _rmsprop_step(self, param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, momentum, weight_decay):  # type: ignore[no-untyped-def]
        if param.ndim != 1:
            param, grad, square_avg = param.ravel(), grad.ravel(), square_avg.ravel()
            if grad_avg is not None:
                grad_avg = grad_avg.ravel()
            if momentum_buffer is not None:
                momentum_buffer = momentum_buffer.ravel()
        _rmsprop[param.itemsize](
            param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, momentum, weight_decay
        )

    def _adam_step(  # type: ignore[no-untyped-def]
        self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
        decoupled_weight_decay, bias_correction1, bias_correction2,
    ):  # fmt: skip
        if param.ndim != 1:
            param, grad, exp_avg, exp_avg_sq = param.ravel(), grad.ravel(), exp_avg.ravel(), exp_avg_sq.ravel()
            if max_exp_avg_sq is not None:
                max_exp_avg_sq = max_exp_avg_sq.ravel()
        _adam[param.itemsize](
            param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, lr, beta1, beta2, eps, weight_decay,
            decoupled_weight_decay, bias_correction1, bias_correction2,
        )  # fmt: skip
