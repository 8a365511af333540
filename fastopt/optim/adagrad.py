"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastopt._checks import check_scalar
from fastopt.backend import Backend
from fastopt.optim.optimizer import Optimizer


class AdaGrad(Optimizer):
    """AdaGrad. At step t, with ``lr_t = lr / (1 + decay (t - 1))`` (PyTorch's ``lr_decay``)::

    g = grad + weight_decay * p
    s = s + g * g                      (s starts at initial_accumulator_value)
    p = p - lr_t * g / (sqrt(s) + eps)
    """

    def __init__(
        self,
        params: Sequence[np.ndarray] | np.ndarray | None = None,
        lr: float = 1e-2,
        eps: float = 1e-10,
        weight_decay: float = 0.0,
        initial_accumulator_value: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            decay=decay,
            eps=eps,
            weight_decay=weight_decay,
            initial_accumulator_value=initial_accumulator_value,
        )

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        return {
            "eps": check_scalar(hyper["eps"], "eps"),
            "weight_decay": check_scalar(hyper["weight_decay"], "weight_decay"),
            "initial_accumulator_value": check_scalar(hyper["initial_accumulator_value"], "initial_accumulator_value"),
        }

    def _state_names(self) -> tuple[str, ...]:
        return ("sum_squares",)

    def _initial_state(self, name: str) -> float:
        return self.hyperparameters["initial_accumulator_value"]

    def _update(
        self, backend: Backend, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> None:
        hyper = self.hyperparameters
        backend._adagrad_step(param, grad, state["sum_squares"], lr, hyper["eps"], hyper["weight_decay"])
