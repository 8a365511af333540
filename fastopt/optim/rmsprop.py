"""RMSProp, optionally centered and with momentum."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt._checks import check_scalar
from fastopt.optim.optimizer import Optimizer, ParamsLike, check_option, constructor_options


class RMSProp(Optimizer):
    """RMSProp. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

    g = grad + weight_decay * p
    v = alpha * v + (1 - alpha) * g * g
    centered:  a = alpha * a + (1 - alpha) * g;  d = sqrt(v - a * a) + eps
    else:      d = sqrt(v) + eps
    momentum:  b = momentum * b + g / d;  p = p - lr_t * b
    else:      p = p - lr_t * g / d
    """

    kernel = "rmsprop_step"

    def __init__(
        self,
        params: ParamsLike | None = None,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        momentum: float = 0.0,
        centered: bool = False,
        weight_decay: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__(params, **constructor_options(locals()))

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        return {
            "alpha": check_scalar(hyper["alpha"], "alpha", high=1.0),
            "eps": check_scalar(hyper["eps"], "eps"),
            "momentum": check_scalar(hyper["momentum"], "momentum"),
            "centered": check_option(hyper["centered"], "centered"),
            "weight_decay": check_scalar(hyper["weight_decay"], "weight_decay"),
        }

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        names = ["square_avg"]
        if group["centered"]:
            names.append("grad_avg")
        if group["momentum"] != 0:
            names.append("momentum_buffer")
        return tuple(names)

    def _kernel_hyper(self, group: dict[str, Any], lr: float, state: dict[str, np.ndarray]) -> dict[str, Any]:
        return {
            "lr": lr,
            "alpha": group["alpha"],
            "eps": group["eps"],
            "momentum": group["momentum"],
            "weight_decay": group["weight_decay"],
        }
