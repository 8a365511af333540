"""Learning-rate schedules with PyTorch's names, constructor signatures, ``step()`` semantics and formulas
(``torch.optim.lr_scheduler``: the same recursive "chainable" updates, so that rates agree to rounding), plus
scikit-learn's ``invscaling``.

In a hand-written loop: ``sched = CosineAnnealingLR(opt, T_max=10)``, then ``sched.step()`` after each epoch's
optimizer steps; ``get_last_lr()``, ``state_dict()``, ``load_state_dict()``. In ``fit``, pass the scheduler among
the callbacks: it steps after each epoch (``interval="epoch"``, the default) or after each batch
(``interval="batch"``, the default of ``OneCycleLR``); ``ReduceLROnPlateau`` steps on the metric it ``monitor``s.
A scheduler made for an optimizer without parameters yet (``Adam()`` given to ``fit``) sets the rate its
parameter groups will start from. Its state goes into ``fit``'s checkpoints, and its settings (``config``) into the
run's fingerprint: a checkpoint resumes only with the same schedules.

As in PyTorch, every scheduler attached to an optimizer starts from the rates its groups had when the first one was
attached (PyTorch's ``group["initial_lr"]``; ``OneCycleLR`` replaces them by ``max_lr / div_factor``), so that
schedulers built one after the other for ``SequentialLR`` each decay from the optimizer's rates. One deliberate
difference: ``OneCycleLR`` stepped ``total_steps`` times (after the cycle's last optimizer step) holds the cycle's
final rate, where PyTorch extrapolates one step beyond the cycle (a negative rate with ``anneal_strategy="linear"``).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

from fastopt._checks import (
    check_metric_name,
    check_metric_value,
    check_nonnegative_int,
    check_positive_int,
    check_scalar,
)
from fastopt.callbacks import Callback
from fastopt.optim.optimizer import Optimizer


def _groups(optimizer: Optimizer) -> list[dict[str, Any]]:
    """The dicts holding the learning rates: the parameter groups, or the defaults of an optimizer not bound yet."""
    return optimizer.param_groups or [optimizer.defaults]


def _check_rates(value: object, name: str, groups: int) -> None:
    """A saved list of learning rates (``base_lrs``, ``_last_lr``): one number >= 0 per parameter group."""
    if not isinstance(value, list) or len(value) != groups:
        raise ValueError(f"{name} must be a list of {groups} rates (one per parameter group)")
    for index, item in enumerate(value):
        check_scalar(item, f"{name}[{index}]")


_INITIAL_LRS = "_scheduler_initial_lrs"  # kept on the optimizer: its groups accept only its own hyperparameters


def _initial_lrs(optimizer: Optimizer, replace: list[float] | None = None) -> list[float]:
    """PyTorch's ``group["initial_lr"]`` of each group: set by the first scheduler attached to ``optimizer`` (to the
    groups' rates then, or to ``replace``), and the ``base_lrs`` of every scheduler attached after it."""
    current = [float(group["lr"]) for group in _groups(optimizer)]
    saved = getattr(optimizer, _INITIAL_LRS, None)
    if replace is not None or saved is None or len(saved) != len(current):  # a new optimizer, or bound since
        saved = list(current if replace is None else replace)
        setattr(optimizer, _INITIAL_LRS, saved)
    return list(saved)


def _per_group(value: float | Sequence[float], name: str, count: int) -> list[float]:
    """A hyperparameter given once for every group or as a list of one value per group (PyTorch's form)."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise ValueError(f"{name} must be one number or a list of {count} (one per parameter group), got {value!r}")
        return [check_scalar(item, f"{name}[{index}]") for index, item in enumerate(value)]
    return [check_scalar(value, name)] * count


def _check_interval(interval: str) -> str:
    if interval not in ("epoch", "batch"):
        raise ValueError(f"interval must be 'epoch' or 'batch', got {interval!r}")
    return interval


class LRScheduler(Callback):
    """Base class (PyTorch's ``LRScheduler``): ``last_epoch`` counts the steps; ``step()`` sets every group's rate to
    ``get_lr()``. Subclasses give ``get_lr`` (the chainable form) and, where PyTorch has one, ``_closed_form_lr``."""

    default_interval = "epoch"
    _CONFIG: ClassVar[tuple[str, ...]] = ()  # the settings a resumed run must share, beyond interval and base_lrs

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1, interval: str | None = None) -> None:
        super().__init__()
        _check_optimizer(optimizer, last_epoch)
        self.interval = _check_interval(interval or self.default_interval)
        self.optimizer = optimizer
        self.base_lrs = _initial_lrs(optimizer)
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def get_lr(self) -> list[float]:
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The rates the last ``step`` set, one per parameter group."""
        return list(self._last_lr)

    def step(self) -> None:
        """Advance the schedule by one epoch (or batch) and set every group's learning rate; a step refused (past
        the schedule's end, a rate that is no rate) changes nothing, its counts included."""
        self._step_count += 1
        try:
            self._update_lr()
        except BaseException:
            self._step_count -= 1
            raise

    def _update_lr(self, epoch: int | None = None) -> None:
        groups = _groups(self.optimizer)
        if len(self.base_lrs) != len(groups):
            raise ValueError(
                f"{type(self).__name__} was made for {len(self.base_lrs)} parameter groups, the optimizer has "
                f"{len(groups)} now: make the scheduler once the optimizer has its parameters"
            )
        previous = self.last_epoch
        try:
            if epoch is None:
                self.last_epoch += 1
                values = self.get_lr()
            else:
                self.last_epoch = epoch
                values = self._closed_form_lr() if hasattr(self, "_closed_form_lr") else self.get_lr()
            checked = [check_scalar(lr, "the scheduled learning rate") for lr in values]  # all, before any is set
        except BaseException:
            self.last_epoch = previous
            raise
        for group, lr in zip(groups, checked):
            group["lr"] = lr
        self._last_lr = [float(group["lr"]) for group in groups]

    def _current(self) -> list[float]:
        return [float(group["lr"]) for group in _groups(self.optimizer)]

    # ------------------------------------------------------------------ the callback side (fit)
    def check_run(self, optimizer: Any) -> None:
        """A schedule of another optimizer than the fit's would change rates nothing uses: refused."""
        if optimizer is not None and optimizer is not self.optimizer:
            raise ValueError(
                f"{type(self).__name__} schedules another optimizer than this fit's {type(optimizer).__name__}: "
                "make it with the optimizer given to fit"
            )

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None:
            logs["learning_rate"] = self._current()[0]
        if self.interval == "epoch":
            self.step()

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.interval == "batch":
            self.step()

    _STATE = ("base_lrs", "last_epoch", "_step_count", "_last_lr")

    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self._STATE}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back ``state_dict()`` output, checked whole first (``check_state_dict``)."""
        self.check_state_dict(state)
        for name in self._STATE:
            value = state[name]
            setattr(self, name, [float(item) for item in value] if isinstance(value, list) else value)

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` or ``TypeError`` naming the field unless ``state`` is one this scheduler's runs save:
        the counts whole numbers >= 0, the rates one number >= 0 per parameter group."""
        if not isinstance(state, dict):
            raise ValueError(f"{type(self).__name__}: a state must be a dict, got {type(state).__name__}")
        missing = set(self._STATE) - set(state)
        if missing:
            raise ValueError(f"{type(self).__name__}.load_state_dict: the state lacks {sorted(missing)}")
        groups = len(_groups(self.optimizer))
        for name in self._STATE:
            value = state[name]
            if name in ("base_lrs", "_last_lr"):
                _check_rates(value, name, groups)
            elif name == "best":
                check_metric_value(value, "best")
            else:
                check_nonnegative_int(value, name)

    def config(self) -> dict[str, Any]:
        settings = {key: getattr(self, key) for key in self._CONFIG}
        return {"interval": self.interval, "base_lrs": self.base_lrs, **settings}


def _check_optimizer(optimizer: object, last_epoch: int) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not a fastopt optimizer")
    if last_epoch != -1:
        raise ValueError("last_epoch must be -1; to resume a schedule, use load_state_dict")


class StepLR(LRScheduler):
    """Multiply the rate by ``gamma`` every ``step_size`` epochs."""

    _CONFIG = ("step_size", "gamma")

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1, **options: Any):
        self.step_size = check_positive_int(step_size, "step_size")
        self.gamma = check_scalar(gamma, "gamma")
        super().__init__(optimizer, last_epoch, **options)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma ** (self.last_epoch // self.step_size) for base in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the rate by ``gamma`` at each epoch of ``milestones``."""

    _CONFIG = ("gamma",)

    def __init__(
        self, optimizer: Optimizer, milestones: Sequence[int], gamma: float = 0.1, last_epoch: int = -1, **options: Any
    ):
        self.milestones = Counter(check_positive_int(m, "milestones") for m in milestones)
        self.gamma = check_scalar(gamma, "gamma")
        super().__init__(optimizer, last_epoch, **options)

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return self._current()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._current()]

    def _closed_form_lr(self) -> list[float]:
        milestones = sorted(self.milestones.elements())
        return [base * self.gamma ** bisect_right(milestones, self.last_epoch) for base in self.base_lrs]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "milestones": sorted(self.milestones.elements())}


class ExponentialLR(LRScheduler):
    """Multiply the rate by ``gamma`` every epoch."""

    _CONFIG = ("gamma",)

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1, **options: Any):
        self.gamma = check_scalar(gamma, "gamma")
        super().__init__(optimizer, last_epoch, **options)

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return self._current()
        return [lr * self.gamma for lr in self._current()]

    def _closed_form_lr(self) -> list[float]:
        return [base * self.gamma**self.last_epoch for base in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base - eta_min) (1 + cos(pi t / T_max)) / 2``, computed as PyTorch does, recursively (so that
    past ``T_max`` the rate rises again, periodically, as PyTorch's does)."""

    _CONFIG = ("T_max", "eta_min")

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1, **options: Any):
        self.T_max = check_positive_int(T_max, "T_max")
        self.eta_min = check_scalar(eta_min, "eta_min")
        super().__init__(optimizer, last_epoch, **options)

    def get_lr(self) -> list[float]:
        t, period = self.last_epoch, self.T_max
        if self._is_initial:
            return self._current()
        if self._step_count == 1 and t > 0:
            return [self.eta_min + (base - self.eta_min) * (1 + math.cos(t * math.pi / period)) / 2
                    for base in self.base_lrs]  # fmt: skip
        if (t - 1 - period) % (2 * period) == 0:
            return [lr + (base - self.eta_min) * (1 - math.cos(math.pi / period)) / 2
                    for base, lr in zip(self.base_lrs, self._current())]  # fmt: skip
        ratio = (1 + math.cos(math.pi * t / period)) / (1 + math.cos(math.pi * (t - 1) / period))
        return [ratio * (lr - self.eta_min) + self.eta_min for lr in self._current()]

    def _closed_form_lr(self) -> list[float]:
        cosine = 1 + math.cos(math.pi * self.last_epoch / self.T_max)
        return [self.eta_min + (base - self.eta_min) * cosine / 2 for base in self.base_lrs]


class LinearLR(LRScheduler):
    """Scale the rate by a factor going linearly from ``start_factor`` to ``end_factor`` over ``total_iters``
    epochs (a warm-up), then keep it."""

    _CONFIG = ("start_factor", "end_factor", "total_iters")

    def __init__(
        self,
        optimizer: Optimizer,
        start_factor: float = 1.0 / 3,
        end_factor: float = 1.0,
        total_iters: int = 5,
        last_epoch: int = -1,
        **options: Any,
    ):
        self.start_factor = check_scalar(start_factor, "start_factor", high=1.0, low_open=True)
        self.end_factor = check_scalar(end_factor, "end_factor", high=1.0)
        self.total_iters = check_positive_int(total_iters, "total_iters")
        super().__init__(optimizer, last_epoch, **options)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [lr * self.start_factor for lr in self._current()]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current()
        slope = self.end_factor - self.start_factor
        factor = 1.0 + slope / (self.total_iters * self.start_factor + (self.last_epoch - 1) * slope)
        return [lr * factor for lr in self._current()]

    def _closed_form_lr(self) -> list[float]:
        progress = min(self.total_iters, self.last_epoch) / self.total_iters
        return [base * (self.start_factor + (self.end_factor - self.start_factor) * progress) for base in self.base_lrs]


class InvScalingLR(LRScheduler):
    """scikit-learn's ``learning_rate="invscaling"``: ``lr = base / (t + 1) ** power_t`` where ``t`` counts the
    samples trained on: ``samples_per_step`` per step (scikit-learn steps once per epoch with the epoch's size)."""

    _CONFIG = ("power_t", "samples_per_step")

    def __init__(
        self,
        optimizer: Optimizer,
        power_t: float = 0.5,
        samples_per_step: int = 1,
        last_epoch: int = -1,
        **options: Any,
    ):
        self.power_t = check_scalar(power_t, "power_t")
        self.samples_per_step = check_positive_int(samples_per_step, "samples_per_step")
        super().__init__(optimizer, last_epoch, **options)

    def get_lr(self) -> list[float]:
        if self._is_initial:
            return self._current()
        return self._closed_form_lr()

    def _closed_form_lr(self) -> list[float]:
        samples = self.last_epoch * self.samples_per_step
        return [base / (samples + 1) ** self.power_t for base in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (PyTorch's ``OneCycleLR``): from ``max_lr / div_factor`` up to ``max_lr`` over ``pct_start``
    of ``total_steps`` (or ``epochs * steps_per_epoch``), then down to ``initial / final_div_factor``, cosine or
    linear (``three_phase``: up, back down to the initial rate, then to the final one); momentum (or beta1) cycles
    the other way between ``max_momentum`` and ``base_momentum``. ``max_lr`` and the momenta are one number, or a
    list of one per parameter group. Steps once per batch in ``fit``, where ``total_steps`` must cover the fit's
    epochs times its batches per epoch (checked when the fit begins)."""

    default_interval = "batch"
    _CONFIG = ("total_steps", "phases", "anneal_strategy", "max_lrs", "min_lrs", "cycle_momentum", "max_momenta",
               "base_momenta")  # fmt: skip

    def __init__(
        self,
        optimizer: Optimizer,
        max_lr: float | Sequence[float],
        total_steps: int | None = None,
        epochs: int | None = None,
        steps_per_epoch: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: str = "cos",
        cycle_momentum: bool = True,
        base_momentum: float | Sequence[float] = 0.85,
        max_momentum: float | Sequence[float] = 0.95,
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        last_epoch: int = -1,
        **options: Any,
    ):
        _check_optimizer(optimizer, last_epoch)
        _check_interval(options.get("interval") or self.default_interval)  # (before the optimizer is touched)
        self.total_steps = _total_steps(total_steps, epochs, steps_per_epoch)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self.anneal_strategy = anneal_strategy
        pct_start = check_scalar(pct_start, "pct_start", high=1.0, high_open=True)  # 1: a last phase of no steps
        self.phases = self._phases(pct_start, bool(three_phase))
        groups = _groups(optimizer)
        self.max_lrs = _per_group(max_lr, "max_lr", len(groups))
        self.initial_lrs = [lr / check_scalar(div_factor, "div_factor", low_open=True) for lr in self.max_lrs]
        final_div_factor = check_scalar(final_div_factor, "final_div_factor", low_open=True)
        self.min_lrs = [lr / final_div_factor for lr in self.initial_lrs]
        self.cycle_momentum = bool(cycle_momentum)
        self.max_momenta = _per_group(max_momentum, "max_momentum", len(groups))
        self.base_momenta = _per_group(base_momentum, "base_momentum", len(groups))
        if self.cycle_momentum:
            if self._momentum_key(optimizer) == "betas" and max(self.max_momenta + self.base_momenta) >= 1:
                raise ValueError("max_momentum and base_momentum set beta1 here: they must be below 1")
            for group, momentum in zip(groups, self.max_momenta):
                self._set_momentum(group, momentum)
        _initial_lrs(optimizer, replace=self.initial_lrs)
        super().__init__(optimizer, last_epoch, **options)

    def _phases(self, pct_start: float, three_phase: bool) -> list[tuple[float, str, str]]:
        """(end step, start, end) of each phase; "initial", "max", "min" name the rates, and the momenta go the other
        way (max_momentum where the rate is low)."""
        total = self.total_steps
        if three_phase:
            return [(float(pct_start * total) - 1, "initial", "max"),
                    (float(2 * pct_start * total) - 2, "max", "initial"),
                    (total - 1, "initial", "min")]  # fmt: skip
        return [(float(pct_start * total) - 1, "initial", "max"), (total - 1, "max", "min")]

    @staticmethod
    def _momentum_key(optimizer: Optimizer) -> str:
        if "betas" in optimizer.defaults:
            return "betas"
        if "momentum" in optimizer.defaults:
            return "momentum"
        raise ValueError("optimizer must support momentum or beta1 with `cycle_momentum` option enabled")

    def _set_momentum(self, group: dict[str, Any], value: float) -> None:
        if "betas" in group:
            group["betas"] = (value, group["betas"][1])
        else:
            group["momentum"] = value

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _position(self, step: int) -> tuple[str, str, float]:
        """The phase of ``step`` (the names of its start and end) and how far into it, from 0 to 1. Step
        ``total_steps``, after the cycle's last optimizer step, is the end of the last phase (PyTorch extrapolates
        one step beyond it)."""
        if step > self.total_steps:
            raise ValueError(f"Tried to step {step} times. The specified number of total steps is {self.total_steps}")
        start_step = 0.0
        for end_step, start, end in self.phases[:-1]:
            if step <= end_step:
                return start, end, (step - start_step) / (end_step - start_step)
            start_step = end_step
        end_step, start, end = self.phases[-1]
        return start, end, min((step - start_step) / (end_step - start_step), 1.0)

    def get_lr(self) -> list[float]:
        start, end, pct = self._position(self.last_epoch)
        lrs = []
        for index, group in enumerate(_groups(self.optimizer)):
            rates = {"initial": self.initial_lrs[index], "max": self.max_lrs[index], "min": self.min_lrs[index]}
            lrs.append(self._anneal(rates[start], rates[end], pct))
            if self.cycle_momentum:
                low, high = self.base_momenta[index], self.max_momenta[index]
                momenta = {"initial": high, "max": low, "min": high}
                self._set_momentum(group, self._anneal(momenta[start], momenta[end], pct))
        return lrs

    def check_run(self, optimizer: Any) -> None:
        """In ``fit``, the cycle must last the whole fit (PyTorch raises past its end)."""
        super().check_run(optimizer)
        steps, epochs = self.params.get("steps", 0), self.params.get("epochs", 0)
        needed = epochs * steps if self.interval == "batch" else epochs
        if self.last_epoch + needed > self.total_steps:
            unit = f"{epochs} epochs of {steps} batches" if self.interval == "batch" else f"{epochs} epochs"
            stepped = f" after the {self.last_epoch} it has stepped" if self.last_epoch else ""
            raise ValueError(
                f"OneCycleLR(total_steps={self.total_steps}) is shorter than this fit: {unit} are {needed} steps"
                f"{stepped} (steps_per_epoch is the number of batches, ceil(n / batch_size))"
            )


def _total_steps(total_steps: int | None, epochs: int | None, steps_per_epoch: int | None) -> int:
    if total_steps is not None:
        return check_positive_int(total_steps, "total_steps")
    if epochs is None or steps_per_epoch is None:
        raise ValueError("OneCycleLR needs total_steps, or epochs and steps_per_epoch")
    return check_positive_int(epochs, "epochs") * check_positive_int(steps_per_epoch, "steps_per_epoch")


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after the other, switching at the epochs of ``milestones`` (a warm-up, then a decay)."""

    def __init__(
        self,
        optimizer: Optimizer,
        schedulers: Sequence[LRScheduler],
        milestones: Sequence[int],
        last_epoch: int = -1,
        interval: str | None = None,
    ):
        _check_optimizer(optimizer, last_epoch)
        _check_chain(optimizer, schedulers, milestones)
        Callback.__init__(self)
        self.interval = _check_interval(interval or self.default_interval)
        self.optimizer, self._schedulers, self._milestones = optimizer, list(schedulers), list(milestones)
        self.last_epoch = last_epoch + 1
        self.base_lrs = list(schedulers[0].base_lrs)
        for group, initial in zip(_groups(optimizer), _initial_lrs(optimizer)):  # PyTorch's group["initial_lr"]
            group["lr"] = initial
        for scheduler in self._schedulers:  # undo the step each made when it was built
            scheduler.last_epoch -= 1
        first = self._schedulers[bisect_right(self._milestones, 0)]
        first._initial_step()
        self._last_lr = first.get_last_lr()

    def step(self) -> None:
        self.last_epoch += 1
        index = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[index]
        if index > 0 and self._milestones[index - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "_last_lr": self._last_lr,
                "_schedulers": [scheduler.state_dict() for scheduler in self._schedulers]}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        self.last_epoch, self._last_lr = state["last_epoch"], [float(lr) for lr in state["_last_lr"]]
        for scheduler, scheduler_state in zip(self._schedulers, state["_schedulers"]):
            scheduler.load_state_dict(scheduler_state)

    def check_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or {"last_epoch", "_last_lr", "_schedulers"} - set(state):
            raise ValueError("SequentialLR: a state needs last_epoch, _last_lr and _schedulers")
        check_nonnegative_int(state["last_epoch"], "last_epoch")
        _check_rates(state["_last_lr"], "_last_lr", len(_groups(self.optimizer)))
        saved = state["_schedulers"]
        if not isinstance(saved, list) or len(saved) != len(self._schedulers):
            raise ValueError(f"_schedulers must hold the states of {len(self._schedulers)} schedulers")
        for index, (scheduler, scheduler_state) in enumerate(zip(self._schedulers, saved)):
            try:
                scheduler.check_state_dict(scheduler_state)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"_schedulers[{index}]: {exc}") from exc

    def config(self) -> dict[str, Any]:
        return {"interval": self.interval, "milestones": self._milestones,
                "schedulers": [{"class": type(s).__name__, **s.config()} for s in self._schedulers]}  # fmt: skip


def _check_chain(optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int]) -> None:
    """SequentialLR's arguments: schedulers of ``optimizer`` (not ReduceLROnPlateau, which steps on a metric), and
    one increasing milestone (a positive epoch) fewer than schedulers."""
    if not schedulers:
        raise ValueError("SequentialLR expects at least one scheduler")
    for index, scheduler in enumerate(schedulers):
        if isinstance(scheduler, ReduceLROnPlateau) or not isinstance(scheduler, LRScheduler):
            raise ValueError(f"SequentialLR cannot chain schedulers[{index}] ({type(scheduler).__name__})")
        if scheduler.optimizer is not optimizer:
            raise ValueError(f"schedulers[{index}] belongs to another optimizer")
    if len(milestones) != len(schedulers) - 1:
        raise ValueError(
            f"SequentialLR expects one milestone fewer than schedulers: {len(schedulers)} schedulers, "
            f"{len(milestones)} milestones"
        )
    checked = [check_positive_int(milestone, f"milestones[{index}]") for index, milestone in enumerate(milestones)]
    if checked != sorted(checked):
        raise ValueError(f"milestones must be increasing, got {list(milestones)}")


class ReduceLROnPlateau(LRScheduler):
    """Multiply each group's rate by ``factor`` once ``step(metric)`` has not improved for more than ``patience``
    epochs (PyTorch's rule: ``threshold`` relative or absolute, ``cooldown``, ``min_lr`` (one number, or one per
    group), and no change smaller than ``eps``). In ``fit`` it steps after each epoch on ``logs[monitor]`` (default
    ``"val_loss"``)."""

    # fmt: off
    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: float | Sequence[float] = 0.0, eps: float = 1e-8, monitor: str = "val_loss"):
        # fmt: on
        Callback.__init__(self)
        _check_optimizer(optimizer, -1)
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        check_metric_name(monitor)
        self.factor = check_scalar(factor, "factor", high=1.0, high_open=True)
        self.optimizer, self.mode, self.threshold_mode = optimizer, mode, threshold_mode
        self.threshold, self.eps = check_scalar(threshold, "threshold"), check_scalar(eps, "eps")
        self.patience = check_nonnegative_int(patience, "patience")
        self.cooldown = check_nonnegative_int(cooldown, "cooldown")
        self.default_min_lr = None if isinstance(min_lr, (list, tuple)) else check_scalar(min_lr, "min_lr")
        self.min_lrs = _per_group(min_lr, "min_lr", len(_groups(optimizer)))
        self.monitor, self.interval = monitor, "epoch"
        self.last_epoch = 0
        self.base_lrs = self._current()
        self._last_lr = self._current()
        self.best, self.cooldown_counter, self.num_bad_epochs = math.inf if mode == "min" else -math.inf, 0, 0

    def _is_better(self, value: float, best: float) -> bool:
        if self.mode == "min":
            return (
                value < best * (1.0 - self.threshold) if self.threshold_mode == "rel" else value < best - self.threshold
            )
        return value > best * (self.threshold + 1.0) if self.threshold_mode == "rel" else value > best + self.threshold

    def step(self, metrics: float) -> None:  # type: ignore[override]
        current = float(metrics)
        self.last_epoch += 1
        if self._is_better(current, self.best):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce()
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._last_lr = self._current()

    def _reduce(self) -> None:
        groups = _groups(self.optimizer)
        if len(self.min_lrs) != len(groups):
            if self.default_min_lr is None:
                raise ValueError(
                    f"ReduceLROnPlateau has {len(self.min_lrs)} min_lr values for the optimizer's {len(groups)} "
                    "parameter groups"
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for group, min_lr in zip(groups, self.min_lrs):
            old = float(group["lr"])
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                group["lr"] = new

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs if logs is not None else {}
        logs["learning_rate"] = self._current()[0]
        if self.monitor not in logs:
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, which the logs lack: {sorted(logs)}")
        self.step(logs[self.monitor])

    _STATE = ("last_epoch", "best", "cooldown_counter", "num_bad_epochs", "_last_lr")
    _CONFIG = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lrs", "eps", "monitor")

    def config(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in self._CONFIG}
