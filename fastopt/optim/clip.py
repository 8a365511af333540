"""Gradient clipping for optimizers on your own arrays, with PyTorch's names and semantics
(``torch.nn.utils.clip_grad_norm_``, ``clip_grad_value_``); ``fit(clip_norm=..., clip_value=...)`` does the same on
a model's gradients."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fastopt._checks import check_array, check_scalar
from fastopt.backend import resolve_backend


def _checked_grads(grads: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    arrays = [grads] if isinstance(grads, np.ndarray) else grads
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"grads must be a list of numpy arrays, got {type(grads).__name__}")
    return [check_array(grad, f"grads[{index}]", writeable=True) for index, grad in enumerate(arrays)]


def clip_grad_norm_(
    grads: Sequence[np.ndarray] | np.ndarray,
    max_norm: float,
    norm_type: float = 2.0,
    error_if_nonfinite: bool = False,
    backend: str | None = None,
) -> float:
    """Scale ``grads`` in place so that their global norm is at most ``max_norm``: by ``max_norm / (norm + 1e-6)``
    when that is below 1 (PyTorch's rule). ``norm_type`` 2 (the L2 norm, summed in float64 in one pass) or
    ``inf`` (the largest magnitude). Returns the norm before scaling; a NaN or Inf norm raises
    ``FloatingPointError`` with ``error_if_nonfinite=True``, else scales by 0 (Inf) or leaves NaN, as PyTorch."""
    arrays = _checked_grads(grads)
    max_norm = check_scalar(max_norm, "max_norm")
    if norm_type not in (2, 2.0, math.inf):
        raise ValueError(f"norm_type must be 2 or inf, got {norm_type!r}")
    kernels = resolve_backend(backend)
    if norm_type == math.inf:
        norm = max((float(np.max(np.abs(grad))) for grad in arrays if grad.size), default=0.0)
    else:
        norm = math.sqrt(sum(kernels.sum_of_squares(grad) for grad in arrays))
    if error_if_nonfinite and not math.isfinite(norm):
        raise FloatingPointError(f"the total norm of the gradients is {norm}; nothing was clipped")
    coefficient = max_norm / (norm + 1e-6)
    if coefficient < 1.0:
        for grad in arrays:
            grad *= coefficient
    return norm


def clip_grad_value_(grads: Sequence[np.ndarray] | np.ndarray, clip_value: float) -> None:
    """Clamp every gradient value into [-clip_value, clip_value] in place (NaN stays NaN), as PyTorch's."""
    clip_value = check_scalar(clip_value, "clip_value")
    for grad in _checked_grads(grads):
        np.clip(grad, -clip_value, clip_value, out=grad)
