"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt._checks import check_scalar
from fastopt.optim.optimizer import Optimizer, ParamsLike, check_option, constructor_options


class SGD(Optimizer):
    """SGD. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        g = grad + weight_decay * p
        if momentum:  b = g (t = 1),  else b = momentum * b + (1 - dampening) * g
                      g = g + momentum * b  (nesterov)  or  g = b
        p = p - lr_t * g

    Nesterov needs momentum > 0 and dampening = 0.
    """

    kernel = "sgd_step"

    def __init__(
        self,
        params: ParamsLike | None = None,
        lr: float = 1e-2,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__(params, **constructor_options(locals()))

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        momentum = check_scalar(hyper["momentum"], "momentum")
        dampening = check_scalar(hyper["dampening"], "dampening", high=1.0)
        nesterov = check_option(hyper["nesterov"], "nesterov")
        if nesterov and (momentum == 0 or dampening != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        return {
            "momentum": momentum,
            "dampening": dampening,
            "nesterov": nesterov,
            "weight_decay": check_scalar(hyper["weight_decay"], "weight_decay"),
        }

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _kernel_hyper(self, group: dict[str, Any], lr: float, state: dict[str, np.ndarray]) -> dict[str, Any]:
        return {
            "lr": lr,
            "momentum": group["momentum"],
            "dampening": group["dampening"],
            "nesterov": group["nesterov"],
            "weight_decay": group["weight_decay"],
            "first_step": self.step_count == 1,
        }
