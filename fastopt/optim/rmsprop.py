"""RMSProp, optionally centered and with momentum."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class RMSProp(Optimizer):
    """RMSProp. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

    g = grad + weight_decay * p
    v = alpha * v + (1 - alpha) * g * g
    centered:  a = alpha * a + (1 - alpha) * g;  d = sqrt(v - a * a) + eps
    else:      d = sqrt(v) + eps
    momentum:  b = momentum * b + g / d;  p = p - lr_t * b
    else:      p = p - lr_t * g / d
    """

    kernel = "rmsprop_step"
    options = {"alpha": base.fraction, "eps": base.positive, "momentum": base.nonnegative,
               "centered": base.check_option, "weight_decay": base.nonnegative}  # fmt: skip
    kernel_options = ("alpha", "eps", "momentum", "weight_decay")

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, centered: bool = False, weight_decay: float = 0.0, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on

    def _state_problem(self, state: dict[str, np.ndarray], dtype: np.dtype) -> str:
        """Also: a centered average's square above the average of squares (a negative variance), beyond the
        rounding a run can make (a few ulps)."""
        problem = super()._state_problem(state, dtype)
        if problem or "grad_avg" not in state:
            return problem
        excess = state["grad_avg"] ** 2 - state["square_avg"] * (1 + 8 * np.finfo(dtype).eps)
        return (
            "'grad_avg'**2 exceeds 'square_avg' (a negative variance)" if (excess > np.finfo(dtype).tiny).any() else ""
        )

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        centered = ("grad_avg",) if group["centered"] else ()
        return ("square_avg", *centered, *(("momentum_buffer",) if group["momentum"] != 0 else ()))
