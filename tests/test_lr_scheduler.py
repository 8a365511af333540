"""Learning-rate schedules: PyTorch's formulas and ``step()`` semantics (300 steps, every group's rate within a
relative 1e-12 of ``torch.optim.lr_scheduler``'s on an equivalent torch optimizer, the parameters stepped with those
rates too), ``get_last_lr``, ``state_dict`` round trips, schedules made before the optimizer has parameters, refused
arguments, and scikit-learn's ``invscaling``."""

from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import datasets, layers, optim
from fastopt.optim import lr_scheduler

STEPS, RATE_RTOL, PARAMETER_RTOL = 300, 1e-12, 1e-10
GROUP_RATES = {"one-group": (0.1,), "two-groups": (0.1, 0.003)}

# Each schedule is built the same way from either module (fastopt's or PyTorch's): the same names and signatures.
SCHEDULES = {
    "StepLR": lambda m, opt: m.StepLR(opt, step_size=7, gamma=0.5),
    "MultiStepLR": lambda m, opt: m.MultiStepLR(opt, milestones=[3, 30, 30, 100], gamma=0.3),
    "ExponentialLR": lambda m, opt: m.ExponentialLR(opt, gamma=0.98),
    # 300 steps run through eight periods: PyTorch's recursive cosine rises again after T_max
    "CosineAnnealingLR": lambda m, opt: m.CosineAnnealingLR(opt, T_max=37, eta_min=1e-4),
    "LinearLR": lambda m, opt: m.LinearLR(opt, start_factor=0.1, end_factor=0.9, total_iters=50),
    # total_steps 301: the 300 steps stay inside the cycle (see test_one_cycle_end)
    "OneCycleLR-cos": lambda m, opt: m.OneCycleLR(opt, max_lr=0.5, total_steps=STEPS + 1),
    "OneCycleLR-linear": lambda m, opt: m.OneCycleLR(opt, max_lr=0.5, total_steps=STEPS + 1, anneal_strategy="linear"),
    "OneCycleLR-three-phase": lambda m, opt: m.OneCycleLR(
        opt, max_lr=0.4, total_steps=STEPS + 1, pct_start=0.25, three_phase=True, div_factor=10.0
    ),
    "OneCycleLR-three-phase-linear": lambda m, opt: m.OneCycleLR(
        opt, max_lr=0.4, epochs=7, steps_per_epoch=43, three_phase=True, anneal_strategy="linear"
    ),
    "SequentialLR-warmup-cosine": lambda m, opt: m.SequentialLR(
        opt, [m.LinearLR(opt, start_factor=0.1, total_iters=10), m.CosineAnnealingLR(opt, T_max=50)], milestones=[10]
    ),
    "SequentialLR-three": lambda m, opt: m.SequentialLR(
        opt,
        [m.LinearLR(opt, start_factor=0.2, total_iters=10), m.ExponentialLR(opt, gamma=0.95), m.StepLR(opt, 20, 0.5)],
        milestones=[10, 100],
    ),
}


def _plateau(mode: str, threshold_mode: str, groups: int):
    """From 0.1 the rate halves down to 0.003125, where the next half would be cut at min_lr 0.0031: a change of
    2.5e-5, below eps, so PyTorch leaves the rate (the second group's stops at 1.875e-4 likewise)."""
    min_lr = [3.1e-3, 1e-4] if groups == 2 else 3.1e-3
    return lambda m, opt: m.ReduceLROnPlateau(
        opt, mode=mode, factor=0.5, patience=3, threshold=0.01, threshold_mode=threshold_mode, cooldown=2,
        min_lr=min_lr, eps=1e-4,
    )  # fmt: skip


def plateau_metric(step: int, mode: str) -> float:
    """A loss-like curve with plateaus and noise near 1% (the relative threshold): some epochs improve, most not."""
    noise = 0.012 * math.sin(1.7 * step)
    value = 1.0 / (1 + step // 25) + noise / (1 + step // 25)
    return value if mode == "min" else 2.0 - value


class Pair:
    """A fastopt optimizer and the equivalent torch one (float64, the same parameters and groups)."""

    def __init__(self, kind: str, rates: tuple[float, ...]) -> None:
        torch = pytest.importorskip("torch")
        rng = np.random.default_rng(0)
        self.arrays = [rng.standard_normal(5) for _ in rates]
        self.tensors = [torch.tensor(array.copy(), requires_grad=True) for array in self.arrays]
        fastopt_groups = [{"params": [array], "lr": lr} for array, lr in zip(self.arrays, rates)]
        torch_groups = [{"params": [tensor], "lr": lr} for tensor, lr in zip(self.tensors, rates)]
        if kind == "sgd":
            self.mine, self.theirs = (
                optim.SGD(fastopt_groups, momentum=0.9),
                torch.optim.SGD(torch_groups, momentum=0.9),
            )
        else:
            self.mine, self.theirs = optim.Adam(fastopt_groups), torch.optim.Adam(torch_groups)
        self.rng, self.torch = rng, torch

    def optimizer_step(self) -> None:
        grads = [self.rng.standard_normal(5) for _ in self.arrays]
        self.mine.step(grads)
        for tensor, grad in zip(self.tensors, grads):
            tensor.grad = self.torch.tensor(grad)
        self.theirs.step()

    def assert_same_rates(self, mine, theirs, where: str) -> None:
        for index, (group, reference) in enumerate(zip(self.mine.param_groups, self.theirs.param_groups)):
            assert group["lr"] == pytest.approx(reference["lr"], rel=RATE_RTOL, abs=0), f"{where}, group {index}"
            if "betas" in reference:
                assert group["betas"][0] == pytest.approx(reference["betas"][0], rel=RATE_RTOL), where
            else:
                assert group["momentum"] == pytest.approx(reference["momentum"], rel=RATE_RTOL), where
        assert mine.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=RATE_RTOL, abs=0), where

    def assert_same_parameters(self) -> None:
        for array, tensor in zip(self.arrays, self.tensors):
            reference = tensor.detach().numpy()
            assert np.abs(array - reference).max() <= PARAMETER_RTOL * np.abs(reference).max()


def _run_against_pytorch(make, kind: str, rates: tuple[float, ...], metric=None) -> None:
    pair = Pair(kind, rates)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # PyTorch's warnings about the order of optimizer and scheduler steps
        mine, theirs = make(lr_scheduler, pair.mine), make(pair.torch.optim.lr_scheduler, pair.theirs)
        pair.assert_same_rates(mine, theirs, "after construction")
        for step in range(1, STEPS + 1):
            pair.optimizer_step()
            if metric is None:
                mine.step()
                theirs.step()
            else:
                mine.step(metric(step))
                theirs.step(metric(step))
            pair.assert_same_rates(mine, theirs, f"after step {step}")
    pair.assert_same_parameters()  # the scheduled rates (and momenta) reached the optimizer's kernels


@pytest.mark.parametrize("groups", sorted(GROUP_RATES))
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_pytorch(name, kind, groups):
    _run_against_pytorch(SCHEDULES[name], kind, GROUP_RATES[groups])


@pytest.mark.parametrize("groups", sorted(GROUP_RATES))
@pytest.mark.parametrize("threshold_mode", ["rel", "abs"])
@pytest.mark.parametrize("mode", ["min", "max"])
def test_reduce_on_plateau_matches_pytorch(mode, threshold_mode, groups):
    rates = GROUP_RATES[groups]
    _run_against_pytorch(
        _plateau(mode, threshold_mode, len(rates)), "sgd", rates, lambda step: plateau_metric(step, mode)
    )


def test_plateau_metric_exercises_every_rule():
    """The metric above makes PyTorch's plateau schedule improve, reduce, cool down, and stop reducing at min_lr
    because of eps: otherwise the comparison would prove little."""
    torch = pytest.importorskip("torch")
    tensor = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.SGD([tensor], lr=0.1)
    schedule = _plateau("min", "rel", 1)(torch.optim.lr_scheduler, optimizer)
    rates, cooling, improved = [0.1], 0, 0
    for step in range(1, STEPS + 1):
        bad_before = schedule.num_bad_epochs
        schedule.step(plateau_metric(step, "min"))
        rates.append(optimizer.param_groups[0]["lr"])
        cooling += schedule.cooldown_counter > 0
        improved += bad_before > 0 and schedule.best == plateau_metric(step, "min")
    reductions = sum(after < before for before, after in itertools.pairwise(rates))
    assert reductions == 5 and cooling > 0 and improved > 0
    assert rates[-1] == 0.1 / 2**5 > 3.1e-3  # the reduction to min_lr was smaller than eps


def test_one_cycle_end():
    """At step total_steps (after the cycle's last optimizer step) fastopt holds the cycle's final rate and
    momentum, where PyTorch extrapolates one step beyond the cycle (negative with a linear anneal, which fastopt
    refuses as a rate); one step more is refused by both."""
    torch = pytest.importorskip("torch")
    for strategy in ("cos", "linear"):
        pair = Pair("sgd", (0.1,))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mine = lr_scheduler.OneCycleLR(pair.mine, max_lr=0.5, total_steps=50, anneal_strategy=strategy)
            theirs = torch.optim.lr_scheduler.OneCycleLR(pair.theirs, max_lr=0.5, total_steps=50,
                                                         anneal_strategy=strategy)  # fmt: skip
            for _ in range(49):
                mine.step()
                theirs.step()
            assert mine.get_last_lr() == pytest.approx(theirs.get_last_lr(), rel=RATE_RTOL)
            mine.step()
            theirs.step()
        assert mine.get_last_lr() == pytest.approx([0.5 / 25 / 1e4], rel=1e-12)
        assert pair.mine.param_groups[0]["momentum"] == pytest.approx(0.95, rel=1e-12)
        assert (theirs.get_last_lr()[0] < 0) == (strategy == "linear")
        with pytest.raises(ValueError, match="Tried to step 51 times"):
            mine.step()


# ------------------------------------------------------------------------------------ get_last_lr, state_dict
def _fresh_fastopt(make, rates: tuple[float, ...], kind: str = "adam"):
    arrays = [np.zeros(3) for _ in rates]
    groups = [{"params": [array], "lr": lr} for array, lr in zip(arrays, rates)]
    optimizer = optim.SGD(groups, momentum=0.9) if kind == "sgd" else optim.Adam(groups)
    return optimizer, make(lr_scheduler, optimizer)


def _step(schedule, step: int, metric) -> None:
    schedule.step() if metric is None else schedule.step(metric(step))


ROUND_TRIPS = {**SCHEDULES, "ReduceLROnPlateau": _plateau("min", "rel", 2)}


@pytest.mark.parametrize("name", sorted(ROUND_TRIPS))
def test_state_dict_round_trip_mid_schedule_continues_the_same(name):
    """After 120 steps, the optimizer's and the schedule's states (through JSON, as checkpoints hold them) given
    to a new optimizer and schedule: the next 180 rates are equal, bit for bit, to the uninterrupted schedule's."""
    make, rates = ROUND_TRIPS[name], GROUP_RATES["two-groups"]
    metric = (lambda step: plateau_metric(step, "min")) if name == "ReduceLROnPlateau" else None
    optimizer, schedule = _fresh_fastopt(make, rates, "sgd")
    for step in range(1, 121):
        _step(schedule, step, metric)
    state = json.loads(json.dumps(schedule.state_dict()))
    optimizer_state = optimizer.state_dict()
    resumed_optimizer, resumed = _fresh_fastopt(make, rates, "sgd")
    resumed_optimizer.load_state_dict(optimizer_state)
    resumed.load_state_dict(state)
    assert resumed.get_last_lr() == schedule.get_last_lr()
    for step in range(121, STEPS + 1):
        _step(schedule, step, metric)
        _step(resumed, step, metric)
        assert resumed.get_last_lr() == schedule.get_last_lr(), step
        assert [g["lr"] for g in resumed_optimizer.param_groups] == [g["lr"] for g in optimizer.param_groups]
        assert [g["momentum"] for g in resumed_optimizer.param_groups] == [
            g["momentum"] for g in optimizer.param_groups
        ]


def test_get_last_lr_is_a_copy_of_each_groups_rate():
    optimizer, schedule = _fresh_fastopt(SCHEDULES["ExponentialLR"], (0.1, 0.003))
    schedule.step()
    last = schedule.get_last_lr()
    assert last == [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.098, 0.00294], rel=1e-15)
    last[0] = 123.0
    assert schedule.get_last_lr()[0] == pytest.approx(0.098, rel=1e-15)


def test_a_state_without_a_field_is_refused():
    _, schedule = _fresh_fastopt(SCHEDULES["StepLR"], (0.1,))
    state = schedule.state_dict()
    del state["last_epoch"]
    with pytest.raises(ValueError, match=r"lacks \['last_epoch'\]"):
        schedule.load_state_dict(state)


# ------------------------------------------------------------------------------------ optimizers without parameters
def _model() -> fastopt.Sequential:
    return fastopt.Sequential([layers.Dense(784, 8), layers.ReLU(), layers.Dense(8, 10)], seed=0, dtype="float64")


@pytest.fixture(scope="module")
def small():
    X, y, _, _ = datasets.mini()
    return X[:96], y[:96]


def test_a_schedule_made_before_the_optimizer_has_parameters_sets_their_starting_rate(small):
    """``Adam(lr=0.1)`` with a LinearLR warm-up, given to ``fit``: the group starts at 0.1 * start_factor and the
    epochs' rates are PyTorch's warm-up (the logged ``learning_rate`` is each epoch's)."""
    X, y = small
    optimizer = optim.Adam(lr=0.1)
    schedule = lr_scheduler.LinearLR(optimizer, start_factor=0.25, total_iters=4)
    assert optimizer.param_groups == [] and optimizer.lr == pytest.approx(0.025, rel=1e-15)
    history = _model().fit(X, y, optimizer=optimizer, epochs=6, batch_size=32, callbacks=[schedule])
    expected = [0.1 * (0.25 + 0.75 * min(epoch, 4) / 4) for epoch in range(6)]
    assert history.history["learning_rate"] == pytest.approx(expected, rel=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1, rel=1e-12) == schedule.get_last_lr()[0]


def test_one_cycle_made_before_the_optimizer_has_parameters_sets_rate_and_beta1(small):
    X, y = small
    optimizer = optim.Adam(lr=0.5)
    schedule = lr_scheduler.OneCycleLR(optimizer, max_lr=0.01, epochs=2, steps_per_epoch=3)
    assert optimizer.defaults["lr"] == pytest.approx(0.01 / 25) and optimizer.defaults["betas"][0] == 0.95
    _model().fit(X, y, optimizer=optimizer, epochs=2, batch_size=32, callbacks=[schedule])
    assert schedule.last_epoch == 6 and optimizer.step_count == 6
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / 25 / 1e4, rel=1e-12)


def test_one_cycle_shorter_than_the_fit_is_refused_before_training(small):
    """steps_per_epoch must count the fit's batches, ceil(96 / 40) = 3: with 2 the cycle would end mid-fit."""
    X, y = small
    model, optimizer = _model(), optim.SGD(lr=0.1, momentum=0.9)
    before = model.parameters.copy()
    schedule = lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=2, steps_per_epoch=2)
    with pytest.raises(ValueError, match=r"total_steps=4\) is shorter than this fit: 2 epochs of 3 batches"):
        model.fit(X, y, optimizer=optimizer, epochs=2, batch_size=40, callbacks=[schedule])
    assert np.array_equal(model.parameters, before) and optimizer.step_count == 0


def test_a_schedule_of_another_optimizer_is_refused_before_training(small):
    """fit(optimizer=None) trains with a fresh Adam: a schedule made for another optimizer would do nothing."""
    X, y = small
    model = _model()
    schedule = lr_scheduler.StepLR(optim.Adam(lr=0.1), step_size=1)
    before = model.parameters.copy()
    with pytest.raises(ValueError, match="StepLR schedules another optimizer than this fit's Adam"):
        model.fit(X, y, epochs=2, callbacks=[schedule])
    assert np.array_equal(model.parameters, before)


def test_a_schedule_made_for_fewer_groups_than_the_optimizer_gets_is_refused():
    optimizer = optim.SGD(lr=0.1)
    schedule = lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    optimizer.bind([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)], "lr": 0.01}])
    with pytest.raises(ValueError, match="made for 1 parameter groups, the optimizer has 2 now"):
        schedule.step()


# ------------------------------------------------------------------------------------ refused arguments
def _sgd() -> optim.SGD:
    return optim.SGD([np.zeros(2)], lr=0.1, momentum=0.9)


BAD_ARGUMENTS = {
    "not an optimizer": (lambda: lr_scheduler.StepLR(object(), 2), TypeError, "not a fastopt optimizer"),
    "last_epoch": (lambda: lr_scheduler.StepLR(_sgd(), 2, last_epoch=3), ValueError, "last_epoch must be -1"),
    "interval": (lambda: lr_scheduler.StepLR(_sgd(), 2, interval="week"), ValueError, "interval must be"),
    "step_size 0": (lambda: lr_scheduler.StepLR(_sgd(), 0), ValueError, "step_size must be >= 1"),
    "step_size float": (lambda: lr_scheduler.StepLR(_sgd(), 2.5), TypeError, "step_size must be an integer"),
    "gamma NaN": (lambda: lr_scheduler.ExponentialLR(_sgd(), gamma=math.nan), ValueError, "gamma must be finite"),
    "gamma negative": (lambda: lr_scheduler.StepLR(_sgd(), 2, gamma=-0.1), ValueError, "gamma must be >= 0"),
    "milestone 0": (lambda: lr_scheduler.MultiStepLR(_sgd(), [0, 3]), ValueError, "milestones must be >= 1"),
    "T_max 0": (lambda: lr_scheduler.CosineAnnealingLR(_sgd(), 0), ValueError, "T_max must be >= 1"),
    "eta_min negative": (lambda: lr_scheduler.CosineAnnealingLR(_sgd(), 5, eta_min=-1.0), ValueError, "eta_min"),
    "start_factor 0": (lambda: lr_scheduler.LinearLR(_sgd(), start_factor=0.0), ValueError, "start_factor must be >"),
    "end_factor 2": (lambda: lr_scheduler.LinearLR(_sgd(), end_factor=2.0), ValueError, "end_factor must be <= 1"),
    "no total": (lambda: lr_scheduler.OneCycleLR(_sgd(), 0.1), ValueError, "needs total_steps, or epochs and"),
    "negative epochs": (
        lambda: lr_scheduler.OneCycleLR(_sgd(), 0.1, epochs=-2, steps_per_epoch=-5),
        ValueError,
        "epochs must be >= 1",
    ),
    "pct_start": (lambda: lr_scheduler.OneCycleLR(_sgd(), 0.1, 10, pct_start=1.5), ValueError, "pct_start must be"),
    "anneal": (lambda: lr_scheduler.OneCycleLR(_sgd(), 0.1, 10, anneal_strategy="exp"), ValueError, "'cos' or"),
    "max_lr per group": (lambda: lr_scheduler.OneCycleLR(_sgd(), [0.1, 0.2], 10), ValueError, "a list of 1"),
    "div_factor 0": (lambda: lr_scheduler.OneCycleLR(_sgd(), 0.1, 10, div_factor=0), ValueError, "div_factor must"),
    "no momentum": (
        lambda: lr_scheduler.OneCycleLR(optim.AdaGrad([np.zeros(2)]), 0.1, 10),
        ValueError,
        "momentum or beta1",
    ),
    "plateau mode": (lambda: lr_scheduler.ReduceLROnPlateau(_sgd(), mode="up"), ValueError, "mode must be 'min'"),
    "plateau threshold_mode": (
        lambda: lr_scheduler.ReduceLROnPlateau(_sgd(), threshold_mode="x"),
        ValueError,
        "threshold_mode must be",
    ),
    "plateau factor 1": (lambda: lr_scheduler.ReduceLROnPlateau(_sgd(), factor=1.0), ValueError, "factor must be <"),
    "plateau patience": (lambda: lr_scheduler.ReduceLROnPlateau(_sgd(), patience=-1), ValueError, "patience must be"),
    "plateau cooldown": (lambda: lr_scheduler.ReduceLROnPlateau(_sgd(), cooldown=1.5), TypeError, "cooldown must be"),
    "plateau eps": (lambda: lr_scheduler.ReduceLROnPlateau(_sgd(), eps=-1e-8), ValueError, "eps must be >= 0"),
    "plateau min_lr list": (
        lambda: lr_scheduler.ReduceLROnPlateau(_sgd(), min_lr=[0.1, 0.2]),
        ValueError,
        "min_lr must be one number",
    ),
    "sequential empty": (lambda: lr_scheduler.SequentialLR(_sgd(), [], []), ValueError, "at least one scheduler"),
    "power_t": (lambda: lr_scheduler.InvScalingLR(_sgd(), power_t=-0.5), ValueError, "power_t must be >= 0"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGUMENTS))
def test_bad_arguments_are_refused_naming_them(case):
    build, error, match = BAD_ARGUMENTS[case]
    with pytest.raises(error, match=match):
        build()


def test_sequential_arguments_are_refused_naming_them():
    optimizer, other = _sgd(), _sgd()
    warmup = lr_scheduler.LinearLR(optimizer, total_iters=3)
    decay = lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    cases = [
        (([warmup, decay], [3, 5]), "one milestone fewer than schedulers: 2 schedulers, 2 milestones"),
        (([warmup, lr_scheduler.StepLR(other, 2)], [3]), r"schedulers\[1\] belongs to another optimizer"),
        (([warmup, lr_scheduler.ReduceLROnPlateau(optimizer)], [3]), r"cannot chain schedulers\[1\]"),
        (([warmup, decay, lr_scheduler.StepLR(optimizer, 2)], [5, 3]), "milestones must be increasing"),
        (([warmup, decay], [0]), r"milestones\[0\] must be >= 1"),
    ]
    for (schedulers, milestones), match in cases:
        with pytest.raises(ValueError, match=match):
            lr_scheduler.SequentialLR(optimizer, schedulers, milestones)


def test_a_negative_scheduled_rate_is_refused():
    optimizer = _sgd()
    schedule = lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    optimizer.param_groups[0]["lr"] = -0.1  # written by hand (the optimizer's next step would refuse it too)
    with pytest.raises(ValueError, match="the scheduled learning rate must be >= 0"):
        schedule.step()


# ------------------------------------------------------------------------------------ scikit-learn's invscaling
def test_invscaling_is_scikit_learns_formula():
    optimizer = optim.SGD([np.zeros(2)], lr=0.1)
    schedule = lr_scheduler.InvScalingLR(optimizer, power_t=0.25, samples_per_step=640)
    rates = [schedule.get_last_lr()[0]]
    for _ in range(20):
        schedule.step()
        rates.append(schedule.get_last_lr()[0])
    expected = [0.1 / (640 * epoch + 1) ** 0.25 for epoch in range(21)]
    assert rates == pytest.approx(expected, rel=1e-15)


def test_invscaling_follows_scikit_learns_mlp():
    """scikit-learn's MLP (solver "sgd", learning_rate "invscaling") steps its rate after each epoch from the
    samples seen; partial_fit runs one epoch per call. InvScalingLR stepped per epoch gives the same rates."""
    neural_network = pytest.importorskip("sklearn.neural_network")
    X, y, _, _ = datasets.mini()
    X, y = X[:300], y[:300]
    mlp = neural_network.MLPClassifier(
        hidden_layer_sizes=(8,), solver="sgd", learning_rate="invscaling", learning_rate_init=0.05, power_t=0.3,
        batch_size=50, momentum=0.0, random_state=0,
    )  # fmt: skip
    optimizer = optim.SGD(lr=0.05)
    schedule = lr_scheduler.InvScalingLR(optimizer, power_t=0.3, samples_per_step=len(X))
    for _ in range(8):
        mlp.partial_fit(X, y, classes=np.arange(10))
        schedule.step()
        assert schedule.get_last_lr()[0] == pytest.approx(mlp._optimizer.learning_rate, rel=1e-12)


# ------------------------------------------------------------------------------------------ refusals change nothing
def _two_group_sgd() -> optim.SGD:
    params = [np.zeros(3), np.zeros(2)]
    return optim.SGD([{"params": params[:1], "lr": 1e-3}, {"params": params[1:], "lr": 1e200}], lr=0.1)


def _lr_state(schedule: lr_scheduler.LRScheduler) -> tuple:
    return ([group["lr"] for group in schedule.optimizer.param_groups], schedule.get_last_lr(), schedule.last_epoch,
            schedule._step_count)  # fmt: skip


def test_a_refused_step_changes_no_rate_and_no_count():
    """A step whose rate for the second group is no rate (1e200 * 1e200 = inf), or past OneCycleLR's end, is
    refused with every group's rate and the counts as they were (the first group's rate was set, the counts
    advanced)."""
    schedule = lr_scheduler.ExponentialLR(_two_group_sgd(), gamma=1e200)
    before = _lr_state(schedule)
    with pytest.raises(ValueError, match="must be finite"):
        schedule.step()
    assert _lr_state(schedule) == before
    cycle = lr_scheduler.OneCycleLR(optim.SGD([np.zeros(2)], lr=0.1, momentum=0.9), max_lr=0.1, total_steps=3)
    for _ in range(3):
        cycle.step()
    before = _lr_state(cycle)
    for _ in range(2):
        with pytest.raises(ValueError, match="Tried to step 4 times"):
            cycle.step()
    assert _lr_state(cycle) == before


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"interval": "bogus"}, "interval must be 'epoch' or 'batch'"),
        ({"pct_start": 1.0}, r"pct_start must be < 1.0"),
        ({"max_momentum": 1.5}, "they must be below 1"),
    ],
)
def test_one_cycle_refuses_bad_settings_before_it_touches_the_optimizer(options, match):
    """Refused settings leave the optimizer's betas and rates as they were (the momentum and the initial rates
    were set before a bad interval was refused; beta1 1.5 or pct_start 1 failed only at a step)."""
    optimizer = optim.Adam([np.zeros(2)], lr=0.1)
    with pytest.raises(ValueError, match=match):
        lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=10, **options)
    assert optimizer.param_groups[0]["betas"] == (0.9, 0.999) and optimizer.param_groups[0]["lr"] == 0.1
    assert not hasattr(optimizer, "_scheduler_initial_lrs")


@pytest.mark.parametrize(
    "state",
    [
        {"base_lrs": "xyz", "last_epoch": 2, "_step_count": 3, "_last_lr": [0.1]},
        {"base_lrs": [0.1], "last_epoch": "abc", "_step_count": 3, "_last_lr": [0.1]},
        {"base_lrs": [0.1], "last_epoch": 2, "_step_count": None, "_last_lr": [0.1]},
        {"base_lrs": [0.1], "last_epoch": 2, "_step_count": 3, "_last_lr": [math.nan]},
        {"base_lrs": [0.1, 0.2], "last_epoch": 2, "_step_count": 3, "_last_lr": [0.1]},
    ],
)
def test_load_state_dict_refuses_a_state_no_run_saves(state):
    """A crafted state is refused naming the field, with the schedule unchanged (it was taken, and a later step
    failed); ``fit`` checks a checkpoint's scheduler states so before restoring anything."""
    schedule = lr_scheduler.StepLR(optim.SGD([np.zeros(2)], lr=0.1), step_size=2)
    schedule.step()
    before = schedule.state_dict()
    with pytest.raises((TypeError, ValueError)):
        schedule.load_state_dict(state)
    assert schedule.state_dict() == before
    chain = lr_scheduler.SequentialLR(
        schedule.optimizer,
        [lr_scheduler.StepLR(schedule.optimizer, 2), lr_scheduler.ExponentialLR(schedule.optimizer, 0.9)],
        [3],
    )
    with pytest.raises(ValueError, match=r"_schedulers\[1\]|_schedulers must hold"):
        chain.load_state_dict({**chain.state_dict(), "_schedulers": [chain.state_dict()["_schedulers"][0], state]})


def test_one_cycle_stepped_before_is_refused_when_the_fit_would_outrun_it(small):
    """A cycle used for a second fit is refused before that fit trains if the steps left are too few (the check
    ran only for a fresh cycle: the fit trained, then raised past the cycle's end)."""
    X, y = small
    model, optimizer = _model(), optim.SGD(lr=0.1, momentum=0.9)
    schedule = lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, epochs=3, steps_per_epoch=3)
    model.fit(X, y, optimizer=optimizer, epochs=2, batch_size=40, callbacks=[schedule])
    before, steps = model.parameters.copy(), optimizer.step_count
    with pytest.raises(ValueError, match="are 6 steps after the 6 it has stepped"):
        model.fit(X, y, optimizer=optimizer, epochs=2, batch_size=40, callbacks=[schedule])
    assert np.array_equal(model.parameters, before) and optimizer.step_count == steps


def test_reduce_lr_on_plateau_refuses_a_monitor_that_is_no_name():
    with pytest.raises(TypeError, match="monitor must be the name of a metric"):
        lr_scheduler.ReduceLROnPlateau(optim.SGD([np.zeros(2)], lr=0.1), monitor=5)


def test_a_resume_with_a_schedule_it_cannot_run_is_refused_before_the_checkpoint_is_restored(small, tmp_path):
    """A schedule of another optimizer, or a cycle too short for the fit, is refused before ``fit`` binds the
    optimizer or restores the checkpoint (they were refused after: the model and optimizer held the checkpoint's
    run, and the optimizer was attached to the model)."""
    X, y = small
    path, options = tmp_path / "run.ckpt", {"epochs": 2, "batch_size": 40, "checkpoint": tmp_path / "run.ckpt"}
    first = optim.SGD(lr=0.1, momentum=0.9)
    _model().fit(X, y, optimizer=first, callbacks=[lr_scheduler.StepLR(first, 1)], **options)
    model, optimizer, other = _model(), optim.SGD(lr=0.1, momentum=0.9), optim.SGD(lr=0.1, momentum=0.9)
    before = model.parameters.copy()
    with pytest.raises(ValueError, match="schedules another optimizer"):
        model.fit(X, y, optimizer=optimizer, callbacks=[lr_scheduler.StepLR(other, 1)], resume=True, **options)
    cycle = lr_scheduler.OneCycleLR(optimizer, max_lr=0.1, total_steps=4)
    with pytest.raises(ValueError, match="is shorter than this fit"):
        model.fit(X, y, optimizer=optimizer, callbacks=[cycle], resume=True, **options)
    assert np.array_equal(model.parameters, before) and optimizer.step_count == 0 and not optimizer.param_groups
    assert model.optimizer is None and path.exists()
