"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastopt._checks import check_scalar
from fastopt.backend import Backend
from fastopt.optim.optimizer import Optimizer


class SGD(Optimizer):
    """SGD. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        g = grad + weight_decay * p
        if momentum:  b = g (t = 1),  else b = momentum * b + (1 - dampening) * g
                      g = g + momentum * b  (nesterov)  or  g = b
        p = p - lr_t * g

    Nesterov needs momentum > 0 and dampening = 0.
    """

    def __init__(
        self,
        params: Sequence[np.ndarray] | np.ndarray | None = None,
        lr: float = 1e-2,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            decay=decay,
            momentum=momentum,
            dampening=dampening,
            nesterov=nesterov,
            weight_decay=weight_decay,
        )

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        momentum = check_scalar(hyper["momentum"], "momentum")
        dampening = check_scalar(hyper["dampening"], "dampening", high=1.0)
        if not isinstance(hyper["nesterov"], (bool, np.bool_)):
            raise TypeError(f"nesterov must be True or False, got {hyper['nesterov']!r}")
        nesterov = bool(hyper["nesterov"])
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        return {
            "momentum": momentum,
            "dampening": dampening,
            "nesterov": nesterov,
            "weight_decay": check_scalar(hyper["weight_decay"], "weight_decay"),
        }

    def _state_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.hyperparameters["momentum"] != 0 else ()

    def _update(
        self, backend: Backend, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> None:
        hyper = self.hyperparameters
        backend._sgd_step(
            param,
            grad,
            state.get("momentum_buffer"),
            lr,
            hyper["momentum"],
            hyper["dampening"],
            hyper["nesterov"],
            hyper["weight_decay"],
            self.step_count == 1,
        )
