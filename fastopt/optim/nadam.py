"""NAdam: Adam with Nesterov momentum and PyTorch's momentum-decay schedule."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class NAdam(Optimizer):
    """NAdam (PyTorch's ``torch.optim.NAdam``). At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        decoupled_weight_decay:  p = p * (1 - lr_t * weight_decay);  g = grad
        else:                    g = grad + weight_decay * p
        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay));  mu_{t+1} likewise;  P_t = mu_1 ... mu_t
        m = beta1 * m + (1 - beta1) * g;   v = beta2 * v + (1 - beta2) * g * g
        d = sqrt(v / (1 - beta2**t)) + eps
        p = p - lr_t (1 - mu_t) / (1 - P_t) * g / d - lr_t mu_{t+1} / (1 - P_t mu_{t+1}) * m / d

    The product P_t is kept per parameter (``state[i]["mu_product"]``, float64), as PyTorch does.
    """

    kernel = "nadam_step"
    options = {**base.ADAM_FAMILY, "momentum_decay": base.nonnegative, "decoupled_weight_decay": base.check_option}
    state_buffers = ("exp_avg", "exp_avg_sq")
    kernel_options = ("betas", "eps", "weight_decay", "decoupled_weight_decay")
    scalar_state = {"mu_product": 1.0}

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on

    def _state_problem(self, state: dict[str, np.ndarray], dtype: np.dtype) -> str:
        return super()._state_problem(state, dtype) or self._scalar_state_problem(state)

    def _scalar_state_problem(self, state: dict[str, Any]) -> str:
        """The momentum product, a product of factors in (0, 1), must lie in [0, 1] (it underflows to 0 in a long
        run whose beta1 is below 0.5)."""
        return "" if 0 <= float(state["mu_product"]) <= 1 else "'mu_product' lies outside [0, 1]"

    @staticmethod
    def _momentum(group: dict[str, Any], beta1: float, t: int) -> float:
        """mu_t = beta1 (1 - 0.5 * 0.96 ** (t momentum_decay))."""
        return beta1 * (1.0 - 0.5 * 0.96 ** (t * group["momentum_decay"]))

    def _step_scalars(
        self, group: dict[str, Any], lr: float, scalars: dict[str, Any], state: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """The step's scalars from this parameter's ``mu_product`` advanced to step t (written by
        ``_advance_state`` once the step's updates are made)."""
        t, beta1 = self.step_count, scalars["beta1"]
        mu, mu_next = self._momentum(group, beta1, t), self._momentum(group, beta1, t + 1)
        mu_product = float(state["mu_product"]) * mu
        return {
            "bias_correction2": base.bias_correction(scalars["beta2"], t),
            "grad_step": lr * (1.0 - mu) / (1.0 - mu_product),
            "momentum_step": lr * mu_next / (1.0 - mu_product * mu_next),
        }

    def _advance_state(self, group: dict[str, Any], state: dict[str, np.ndarray], t: int) -> None:
        state["mu_product"][...] = float(state["mu_product"]) * self._momentum(group, group["betas"][0], t)
