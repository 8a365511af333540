"""Lion: the sign of an interpolated momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")."""

from __future__ import annotations

from typing import Any

import numpy as np

from fastopt.optim.optimizer import (
    Optimizer,
    ParamsLike,
    check_adam_family,
    constructor_options,
    moment_scalars,
)


class Lion(Optimizer):
    """Lion, the published update. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        c = beta1 * m + (1 - beta1) * grad
        p = p - lr_t * (sign(c) + weight_decay * p)
        m = beta2 * m + (1 - beta2) * grad

    ``sign(0)`` is 0. Its steps all have size lr_t per coordinate: use a learning rate 3-10x smaller than AdamW's.
    """

    kernel = "lion_step"

    def __init__(
        self,
        params: ParamsLike | None = None,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        decay: float = 0.0,
    ) -> None:
        super().__init__(params, **constructor_options(locals()))

    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        return check_adam_family(hyper)

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        return ("exp_avg",)

    def _kernel_hyper(self, group: dict[str, Any], lr: float, state: dict[str, np.ndarray]) -> dict[str, Any]:
        return moment_scalars(group, lr)
