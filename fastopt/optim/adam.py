"""Adam (with AMSGrad) and AdamW (decoupled weight decay)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastopt._checks import check_scalar
from fastopt.backend import Backend
from fastopt.optim.optimizer import Optimizer, bias_correction


class Adam(Optimizer):
    """Adam. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        g = grad + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        amsgrad:  vmax = max(vmax, v), used as v below
        p = p - (lr_t / (1 - beta1**t)) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    eps is added after the square root of the bias-corrected v (PyTorch's form).
    """

    decoupled_weight_decay = False

    def __init__(
        self,
        params: Sequence[np.ndarray] | np.ndarray | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, decay=decay, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        betas = hyper["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        if not isinstance(hyper["amsgrad"], (bool, np.bool_)):
            raise TypeError(f"amsgrad must be True or False, got {hyper['amsgrad']!r}")
        return {
            "betas": (
                check_scalar(betas[0], "beta1", high=1.0, high_open=True),
                check_scalar(betas[1], "beta2", high=1.0, high_open=True),
            ),
            "eps": check_scalar(hyper["eps"], "eps"),
            "weight_decay": check_scalar(hyper["weight_decay"], "weight_decay"),
            "amsgrad": bool(hyper["amsgrad"]),
        }

    def _state_names(self) -> tuple[str, ...]:
        return (
            ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
            if self.hyperparameters["amsgrad"]
            else ("exp_avg", "exp_avg_sq")
        )

    def _update(
        self, backend: Backend, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> None:
        hyper = self.hyperparameters
        beta1, beta2 = hyper["betas"]
        backend._adam_step(
            param,
            grad,
            state["exp_avg"],
            state["exp_avg_sq"],
            state.get("max_exp_avg_sq"),
            lr,
            beta1,
            beta2,
            hyper["eps"],
            hyper["weight_decay"],
            self.decoupled_weight_decay,
            bias_correction(beta1, self.step_count),
            bias_correction(beta2, self.step_count),
        )


class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay. At step t, first ``p = p * (1 - lr_t * weight_decay)``,
    then the Adam update with ``g = grad`` (no ``weight_decay * p`` added to the gradient)."""

    decoupled_weight_decay = True

    def __init__(
        self,
        params: Sequence[np.ndarray] | np.ndarray | None = None,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, decay=decay)
