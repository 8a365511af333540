"""Adam (with AMSGrad) and AdamW (decoupled weight decay)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class Adam(Optimizer):
    """Adam. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        amsgrad:  vmax = max(vmax, v), used as v below
        p = p - (lr_t / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    eps is added after the square root of the bias-corrected v (PyTorch's form).
    """

    kernel = "adam_step"
    options = {**base.ADAM_FAMILY, "amsgrad": base.check_option}
    kernel_options = ("betas", "eps", "weight_decay")
    decoupled_weight_decay = False

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if group["amsgrad"] else ("exp_avg", "exp_avg_sq")

    def _step_scalars(
        self, group: dict[str, Any], lr: float, scalars: dict[str, Any], state: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        return {
            "decoupled_weight_decay": self.decoupled_weight_decay,
            "bias_correction1": base.bias_correction(scalars["beta1"], self.step_count),
            "bias_correction2": base.bias_correction(scalars["beta2"], self.step_count),
        }


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay. At step t, first ``p = p * (1 - lr_t * weight_decay)``,
    then the Adam update with ``g = grad`` (no ``weight_decay * p`` added to the gradient)."""

    decoupled_weight_decay = True

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on
