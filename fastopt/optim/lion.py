"""Lion: the sign of an interpolated momentum (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms")."""

from __future__ import annotations

from fastopt.optim import optimizer as base
from fastopt.optim.optimizer import Optimizer, ParamsLike


class Lion(Optimizer):
    """Lion, the published update. At step t, with ``lr_t = lr / (1 + decay (t - 1))``::

        c = beta1 * m + (1 - beta1) * grad
        p = p - lr_t * (sign(c) + weight_decay * p)
        m = beta2 * m + (1 - beta2) * grad

    ``sign(0)`` is 0. Its steps all have size lr_t per coordinate: use a learning rate 3-10x smaller than AdamW's.
    """

    kernel = "lion_step"
    options = {"betas": base.check_betas, "weight_decay": base.nonnegative}
    state_buffers = ("exp_avg",)
    kernel_options = ("betas", "weight_decay")

    # fmt: off
    def __init__(self, params: ParamsLike | None = None, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0, decay: float = 0.0) -> None:
        super().__init__(params, **base.constructor_options(locals()))
    # fmt: on
