"""Stochastic gradient descent with momentum, dampening, Nesterov momentum and weight decay."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class SGD(Optimizer):
    """SGD. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        g = grad + weight_decay * p
        if momentum:  b = g (t = 1),  else b = momentum * b + (1 - dampening) * g
                      g = g + momentum * b  (nesterov)  or  g = b
        p = p - lr_t * g

    Nesterov needs momentum > 0 and dampening = 0.
    """

    kernel = "sgd_step"
    options = {"momentum": base.nonnegative, "dampening": base.fraction, "nesterov": base.check_option,
               "weight_decay": base.nonnegative}  # fmt: skip
    kernel_options = ("momentum", "dampening", "nesterov", "weight_decay")

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 1e-2, momentum: float = 0.0,
                 dampening: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        checked = super()._check_hyperparameters(hyper)
        if checked["nesterov"] and (checked["momentum"] == 0 or checked["dampening"] != 0):
            raise ValueError("nesterov momentum needs momentum > 0 and dampening = 0")
        return checked

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("momentum_buffer",) if group["momentum"] != 0 else ()

    def _step_scalars(
        self, group: dict[str, Any], lr: float, scalars: dict[str, Any], state: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        return {"first_step": self.step_count == 1}
