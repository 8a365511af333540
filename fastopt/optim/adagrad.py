"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt._checks import check_scalar
from fastopt.optim.optimizer import Optimizer, ParamsLike, constructor_options


class AdaGrad(Optimizer):
    """AdaGrad. At step t, with ``lr_t = lr / (1 + decay (t - 1))`` (PyTorch's ``lr_decay``)::

    g = grad + weight_decay * p
    s = s + g * g                      (s starts at initial_accumulator_value)
    p = p - lr_t * g / (sqrt(s) + eps)
    """

    kernel = "adagrad_step"

    def __init__(
        self,
        params: ParamsLike | None = None,
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__(params, **constructor_options(locals()))

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        return {
            "eps": check_scalar(hyper["eps"], "eps"),
            "weight_decay": check_scalar(hyper["weight_decay"], "weight_decay"),
            "initial_accumulator_value": check_scalar(hyper["initial_accumulator_value"], "initial_accumulator_value"),
        }

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("sum_squares",)

    def _initial_state(self, name: str, group: dict[str, Any]) -> float:
        return group["initial_accumulator_value"]

    def _kernel_hyper(self, group: dict[str, Any], lr: float, state: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"lr": lr, "eps": group["eps"], "weight_decay": group["weight_decay"]}
