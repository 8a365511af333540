"""Adamax: Adam with the infinity norm in place of the second moment."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class Adamax(Optimizer):
    """Adamax (PyTorch's ``torch.optim.Adamax``). At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

    g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    u = max(beta2 * u, |g| + eps)
    p = p - (lr_t / (1 - beta1**t)) * m / u
    """

    kernel = "adamax_step"
    options = base.ADAM_FAMILY
    state_buffers = ("exp_avg", "exp_inf")
    kernel_options = ("betas", "eps", "weight_decay")

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on

    def _step_scalars(
        self, group: dict[str, Any], lr: float, scalars: dict[str, Any], state: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        return {"bias_correction1": base.bias_correction(scalars["beta1"], self.step_count)}
