"""RAdam: Adam with the variance of its adaptive learning rate rectified."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class RAdam(Optimizer):
    """RAdam (PyTorch's ``torch.optim.RAdam``). At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

    decoupled_weight_decay:  p = p * (1 - lr_t * weight_decay);  g = grad
    else:                    g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
    rho_inf = 2 / (1 - beta2) - 1;     rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
    rho_t > 5:  r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
                p = p - m / (1 - beta1**t) * lr_t * sqrt(1 - beta2**t) / (sqrt(v) + eps) * r
    else:       p = p - m / (1 - beta1**t) * lr_t
    """

    kernel = "radam_step"
    options = {**base.ADAM_FAMILY, "decoupled_weight_decay": base.check_option}
    state_buffers = ("exp_avg", "exp_avg_sq")
    kernel_options = ("betas", "eps", "weight_decay", "decoupled_weight_decay")

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, decoupled_weight_decay: bool = False,
                 decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on

    def _step_scalars(
        self, group: dict[str, Any], lr: float, scalars: dict[str, Any], state: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        t, beta2 = self.step_count, scalars["beta2"]
        correction2 = base.bias_correction(beta2, t)
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * t * (beta2**t) / correction2
        rectified = rho_t > 5.0
        variance_ratio = (rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)
        return {
            "bias_correction1": base.bias_correction(scalars["beta1"], t),
            "bias_correction2": correction2,
            "rectified": rectified,
            "rectification": variance_ratio**0.5 if rectified else 0.0,
        }
