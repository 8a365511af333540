"""RMSProp, optionally centered and with momentum."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fastopt._checks import check_scalar
from fastopt.backend import Backend
from fastopt.optim.optimizer import Optimizer


class RMSProp(Optimizer):
    """RMSProp. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

    g = grad + weight_decay * p
    v = alpha * v + (1 - alpha) * g * g
    centered:  a = alpha * a + (1 - alpha) * g;  d = sqrt(v - a * a) + eps
    else:      d = sqrt(v) + eps
    momentum:  b = momentum * b + g / d;  p = p - lr_t * b
    else:      p = p - lr_t * g / d
    """

    def __init__(
        self,
        params: Sequence[np.ndarray] | np.ndarray | None = None,
        lr: float = 1e-2,
        alpha: float = 0.99,
        eps: float = 1e-8,
        momentum: float = 0.0,
        centered: bool = False,
        weight_decay: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__(
            params,
            lr=lr,
            decay=decay,
            alpha=alpha,
            eps=eps,
            momentum=momentum,
            centered=centered,
            weight_decay=weight_decay,
        )

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(hyper["centered"], (bool, np.bool_)):
            raise TypeError(f"centered must be True or False, got {hyper['centered']!r}")
        return {
            "alpha": check_scalar(hyper["alpha"], "alpha", high=1.0),
            "eps": check_scalar(hyper["eps"], "eps"),
            "momentum": check_scalar(hyper["momentum"], "momentum"),
            "centered": bool(hyper["centered"]),
            "weight_decay": check_scalar(hyper["weight_decay"], "weight_decay"),
        }

    def _state_names(self) -> tuple[str, ...]:
        names = ["square_avg"]
        if self.hyperparameters["centered"]:
            names.append("grad_avg")
        if self.hyperparameters["momentum"] != 0:
            names.append("momentum_buffer")
        return tuple(names)

    def _update(
        self, backend: Backend, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> None:
        hyper = self.hyperparameters
        backend._rmsprop_step(
            param,
            grad,
            state["square_avg"],
            state.get("grad_avg"),
            state.get("momentum_buffer"),
            lr,
            hyper["alpha"],
            hyper["eps"],
            hyper["momentum"],
            hyper["weight_decay"],
        )
