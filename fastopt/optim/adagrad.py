"""AdaGrad: per-coordinate learning rates from the sum of squared gradients."""

from __future__ import annotations

from typing import Any

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class AdaGrad(Optimizer):
    """AdaGrad. At step t, with ``lr_t = lr / (1 + decay (t - 1))`` (PyTorch's ``lr_decay``)::

    g = grad + weight_decay * p
    s = s + g * g                      (s starts at initial_accumulator_value)
    p = p - lr_t * g / (sqrt(s) + eps)
    """

    kernel = "adagrad_step"
    options = {"eps": base.positive, "weight_decay": base.nonnegative, "initial_accumulator_value": base.nonnegative}
    state_buffers = ("sum_squares",)
    kernel_options = ("eps", "weight_decay")

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 1e-2, eps: float = 1e-10,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on

    def _initial_state(self, name: str, group: dict[str, Any]) -> float:
        return group["initial_accumulator_value"]
