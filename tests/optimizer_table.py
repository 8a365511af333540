"""The optimizer table of the tests, on the model of PyTorch's ``OptimizerInfo``: one ``OptimizerInfo`` per
class in ``fastopt.optim.OPTIMIZERS``, holding everything a per-optimizer test needs (documented defaults,
option variants, an independent scalar reference, the PyTorch counterpart, state buffers, refused and
accepted hyperparameters, parameter-group options). Tests iterate over ``TABLE``: an optimizer missing from
it fails ``test_the_table_covers_every_optimizer``, never falls into another optimizer's branch.

The references are written from the math of each class's docstring (and README's table) in plain Python
floats, one scalar coordinate at a time: ``step(hp, state, p, g, t, lr_t) -> p`` updates ``state`` (a dict
of floats, empty before the first step) and returns the parameter after step ``t``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from fastopt import optim

Hyper = dict[str, Any]
ReferenceStep = Callable[[Hyper, dict, float, float, int, float], float]

NAN, INF = float("nan"), float("inf")
BELOW_ZERO = math.nextafter(0.0, -1.0)  # the number just below a lower bound of 0 (-5e-324)
BELOW_ONE = math.nextafter(1.0, 0.0)  # the largest number inside [0, 1)
ABOVE_ONE = math.nextafter(1.0, 2.0)  # the number just above an upper bound of 1


@dataclass(frozen=True)
class Variant:
    """Constructor keywords of one test case; ``name`` says which option it exercises ("plain": lr only)."""

    name: str
    options: Hyper


@dataclass(frozen=True)
class BadHyperparameter:
    """Constructor keywords the optimizer must refuse with ``error``, its message matching ``match``."""

    options: Hyper
    error: type[Exception]
    match: str

    @property
    def id(self) -> str:
        return ",".join(f"{key}={value!r}" for key, value in self.options.items())


@dataclass(frozen=True)
class OptimizerInfo:
    """One optimizer of the tests.

    ``defaults``: the documented defaults, written out (the constructor's are checked against them).
    ``variants``: option sets covering every option (each hyperparameter changed at least once, every flag
    both ways). ``reference``: the scalar reference step. ``state_names(hp)``: the state buffers the options
    need (per-element buffers, then ``scalar_state``, the per-parameter 0-d float64 scalars).
    ``torch_class``/``torch_options(hp)``: the ``torch.optim`` class and its keywords (None: PyTorch has no such
    optimizer); ``torch_state_names``: fastopt state names PyTorch spells differently. ``decay_by_scheduler``:
    PyTorch has no ``decay`` option, so the comparison applies it with ``LambdaLR`` (AdaGrad maps it to
    ``lr_decay``). ``param_groups``: per-group options of the parameter-groups tests (empty: no groups).
    """

    cls: type[optim.Optimizer]
    defaults: Hyper
    variants: tuple[Variant, ...]
    reference: ReferenceStep
    state_names: Callable[[Hyper], tuple[str, ...]]
    bad_hyperparameters: tuple[BadHyperparameter, ...]
    edge_hyperparameters: tuple[Hyper, ...]
    torch_class: str | None
    torch_options: Callable[[Hyper], Hyper] | None
    param_groups: tuple[Hyper, ...]
    torch_state_names: tuple[tuple[str, str], ...] = ()
    scalar_state: tuple[str, ...] = ()
    decay_by_scheduler: bool = True

    @property
    def name(self) -> str:
        return self.cls.__name__

    def hyper(self, options: Hyper) -> Hyper:
        """Every hyperparameter of a variant: its options over the documented defaults."""
        return {**self.defaults, **options}

    def torch_state_name(self, name: str) -> str:
        return dict(self.torch_state_names).get(name, name)

    @property
    def richest(self) -> Variant:
        """The (first) variant with the most state buffers."""
        return max(self.variants, key=lambda variant: len(self.state_names(self.hyper(variant.options))))


# ------------------------------------------------------------------------------------------ references
def learning_rate(hp: Hyper, t: int) -> float:
    """``lr_t = lr / (1 + decay (t - 1))``."""
    return hp["lr"] / (1.0 + hp["decay"] * (t - 1))


def reference_run(reference: ReferenceStep, hp: Hyper, p: float, grads: list[float]) -> tuple[list[float], dict]:
    """The parameter after each step of the scalar reference, and the reference's final state."""
    state: dict = {}
    history = []
    for t, g in enumerate(grads, start=1):
        p = reference(hp, state, p, float(g), t, learning_rate(hp, t))
        history.append(p)
    return history, state


def _weight_decayed(hp: Hyper, p: float, g: float, lr_t: float, decoupled: bool) -> tuple[float, float]:
    """(p, g) after weight decay: decoupled shrinks p by ``lr_t wd``, coupled adds ``wd p`` to g."""
    if decoupled:
        return p * (1.0 - lr_t * hp["weight_decay"]), g
    return p, g + hp["weight_decay"] * p


def _moments(hp: Hyper, state: dict, g: float) -> tuple[float, float]:
    """Adam's running averages of g and g^2 (``m``, ``v``), updated in ``state``."""
    b1, b2 = hp["betas"]
    state["m"] = b1 * state.get("m", 0.0) + (1.0 - b1) * g
    state["v"] = b2 * state.get("v", 0.0) + (1.0 - b2) * g * g
    return state["m"], state["v"]


def sgd_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float) -> float:
    g = g + hp["weight_decay"] * p
    mu = hp["momentum"]
    if mu != 0:
        b = state["b"] = g if t == 1 else mu * state["b"] + (1.0 - hp["dampening"]) * g
        g = g + mu * b if hp["nesterov"] else b
    return p - lr_t * g


def adagrad_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float) -> float:
    g = g + hp["weight_decay"] * p
    s = state["s"] = state.get("s", hp["initial_accumulator_value"]) + g * g
    return p - lr_t * g / (math.sqrt(s) + hp["eps"])


def rmsprop_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float) -> float:
    alpha, mu = hp["alpha"], hp["momentum"]
    g = g + hp["weight_decay"] * p
    v = state["v"] = alpha * state.get("v", 0.0) + (1.0 - alpha) * g * g
    if hp["centered"]:
        a = state["a"] = alpha * state.get("a", 0.0) + (1.0 - alpha) * g
        d = math.sqrt(v - a * a) + hp["eps"]
    else:
        d = math.sqrt(v) + hp["eps"]
    if mu == 0:
        return p - lr_t * g / d
    b = state["b"] = mu * state.get("b", 0.0) + g / d
    return p - lr_t * b


def adam_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float, decoupled: bool = False) -> float:
    b1, b2 = hp["betas"]
    p, g = _weight_decayed(hp, p, g, lr_t, decoupled)
    m, v = _moments(hp, state, g)
    if hp["amsgrad"]:
        v = state["vmax"] = max(state.get("vmax", 0.0), v)
    return p - (lr_t / (1.0 - b1**t)) * m / (math.sqrt(v) / math.sqrt(1.0 - b2**t) + hp["eps"])


def nadam_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float) -> float:
    b1, b2 = hp["betas"]
    p, g = _weight_decayed(hp, p, g, lr_t, hp["decoupled_weight_decay"])
    mu = b1 * (1.0 - 0.5 * 0.96 ** (t * hp["momentum_decay"]))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * hp["momentum_decay"]))
    product = state["mu_product"] = state.get("mu_product", 1.0) * mu
    m, v = _moments(hp, state, g)
    d = math.sqrt(v / (1.0 - b2**t)) + hp["eps"]
    return p - lr_t * (1.0 - mu) / (1.0 - product) * g / d - lr_t * mu_next / (1.0 - product * mu_next) * m / d


def adamax_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float) -> float:
    b1, b2 = hp["betas"]
    g = g + hp["weight_decay"] * p
    m = state["m"] = b1 * state.get("m", 0.0) + (1.0 - b1) * g
    u = state["u"] = max(b2 * state.get("u", 0.0), abs(g) + hp["eps"])
    return p - (lr_t / (1.0 - b1**t)) * m / u


def radam_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float) -> float:
    b1, b2 = hp["betas"]
    p, g = _weight_decayed(hp, p, g, lr_t, hp["decoupled_weight_decay"])
    m, v = _moments(hp, state, g)
    m_hat = m / (1.0 - b1**t)
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho_t = rho_inf - 2.0 * t * b2**t / (1.0 - b2**t)
    if rho_t <= 5.0:
        return p - lr_t * m_hat
    r = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
    return p - lr_t * m_hat * r * math.sqrt(1.0 - b2**t) / (math.sqrt(v) + hp["eps"])


def lion_step(hp: Hyper, state: dict, p: float, g: float, t: int, lr_t: float) -> float:
    b1, b2 = hp["betas"]
    m = state.get("m", 0.0)
    c = b1 * m + (1.0 - b1) * g
    sign = float((c > 0) - (c < 0))
    state["m"] = b2 * m + (1.0 - b2) * g
    return p - lr_t * (sign + hp["weight_decay"] * p)


# ------------------------------------------------------------------------------------------ table helpers
def _bad(options: Hyper, error: type[Exception], match: str) -> BadHyperparameter:
    return BadHyperparameter(options, error, match)


def _common_bad() -> tuple[BadHyperparameter, ...]:
    """lr, weight_decay and decay, which every optimizer takes: reals in [0, inf)."""
    return (
        _bad({"lr": BELOW_ZERO}, ValueError, "^lr must be >= 0"),
        _bad({"lr": -0.1}, ValueError, "^lr must be >= 0"),
        _bad({"lr": NAN}, ValueError, "^lr must be finite"),
        _bad({"lr": INF}, ValueError, "^lr must be finite"),
        _bad({"lr": "0.1"}, TypeError, "^lr must be a real number"),
        _bad({"lr": None}, TypeError, "^lr must be a real number"),
        _bad({"lr": True}, TypeError, "^lr must be a real number"),
        _bad({"weight_decay": BELOW_ZERO}, ValueError, "^weight_decay must be >= 0"),
        _bad({"weight_decay": NAN}, ValueError, "^weight_decay must be finite"),
        _bad({"decay": BELOW_ZERO}, ValueError, "^decay must be >= 0"),
        _bad({"decay": NAN}, ValueError, "^decay must be finite"),
    )


def _eps_bad() -> tuple[BadHyperparameter, ...]:
    """eps > 0: fastopt refuses eps = 0 (PyTorch accepts it), where a zero gradient and second moment give 0 / 0."""
    return (
        _bad({"eps": BELOW_ZERO}, ValueError, "^eps must be > 0"),
        _bad({"eps": 0.0}, ValueError, "^eps must be > 0"),
        _bad({"eps": NAN}, ValueError, "^eps must be finite"),
    )


def _betas_bad() -> tuple[BadHyperparameter, ...]:
    """betas: a pair of reals in [0, 1)."""
    return (
        _bad({"betas": (1.0, 0.99)}, ValueError, "^beta1 must be < 1"),
        _bad({"betas": (BELOW_ZERO, 0.99)}, ValueError, "^beta1 must be >= 0"),
        _bad({"betas": (1.5, 0.99)}, ValueError, "^beta1 must be < 1"),
        _bad({"betas": (0.9, 1.0)}, ValueError, "^beta2 must be < 1"),
        _bad({"betas": (0.9, BELOW_ZERO)}, ValueError, "^beta2 must be >= 0"),
        _bad({"betas": (0.9, NAN)}, ValueError, "^beta2 must be finite"),
        _bad({"betas": ("0.9", 0.99)}, TypeError, "^beta1 must be a real number"),
        _bad({"betas": 0.9}, TypeError, "^betas must be a pair"),
        _bad({"betas": (0.9,)}, TypeError, "^betas must be a pair"),
        _bad({"betas": (0.9, 0.99, 0.999)}, TypeError, "^betas must be a pair"),
    )


def _flag_bad(name: str, **context: Any) -> tuple[BadHyperparameter, ...]:
    """A flag is True or False (numpy.bool_ too), never 1, a string or None."""
    return tuple(
        _bad({name: value, **context}, TypeError, f"^{name} must be True or False") for value in (1, "False", None)
    )


def _unit_bad(name: str, **context: Any) -> tuple[BadHyperparameter, ...]:
    """A real in [0, 1]."""
    return (
        _bad({name: ABOVE_ONE, **context}, ValueError, f"^{name} must be <= 1"),
        _bad({name: BELOW_ZERO, **context}, ValueError, f"^{name} must be >= 0"),
    )


def _common_edges() -> tuple[Hyper, ...]:
    return ({"lr": 0.0, "weight_decay": 0.0, "decay": 0.0}, {"lr": 1, "weight_decay": np.float32(0.5)})


def _betas_edges() -> tuple[Hyper, ...]:
    return ({"betas": (0.0, 0.0)}, {"betas": (BELOW_ONE, BELOW_ONE)}, {"betas": [0.5, 0.5]})


def _torch_keywords(*names: str, **renamed: str) -> Callable[[Hyper], Hyper]:
    """PyTorch's keywords: fastopt's ``names`` under the same names, ``renamed`` as torch_name=fastopt_name."""

    def keywords(hp: Hyper) -> Hyper:
        return {**{name: hp[name] for name in names}, **{theirs: hp[ours] for theirs, ours in renamed.items()}}

    return keywords


def _adam_family_defaults(lr: float, **options: Any) -> Hyper:
    """The documented defaults the Adam family shares (betas (0.9, 0.999), eps 1e-8, no weight decay, no decay),
    with its ``lr`` and its own ``options``."""
    return {"lr": lr, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, **options, "decay": 0.0}


def _weight_decay_variants(decoupled_option: bool = False) -> tuple[Variant, ...]:
    """plain (lr 0.01 only), weight decay, and decoupled weight decay where the optimizer has that option."""
    variants = (Variant("plain", {"lr": 0.01}), Variant("weight_decay", {"lr": 0.01, "weight_decay": 0.2}))
    decoupled = {"lr": 0.01, "weight_decay": 0.2, "decoupled_weight_decay": True}
    return (*variants, Variant("decoupled_weight_decay", decoupled)) if decoupled_option else variants


ADAM_STATE = ("exp_avg", "exp_avg_sq")


def _adam_state(hp: Hyper) -> tuple[str, ...]:
    return (*ADAM_STATE, "max_exp_avg_sq") if hp["amsgrad"] else ADAM_STATE


def _adam_info(cls: type[optim.Optimizer], weight_decay: float, torch_class: str) -> OptimizerInfo:
    """Adam and AdamW: the same options, only the weight decay's default and coupling differ."""
    decoupled = weight_decay != 0.0
    return OptimizerInfo(
        cls=cls,
        defaults=_adam_family_defaults(1e-3, weight_decay=weight_decay, amsgrad=False),
        variants=(
            *_weight_decay_variants(),
            Variant("amsgrad", {"lr": 0.01, "betas": (0.9, 0.9), "amsgrad": True}),
            Variant("amsgrad_weight_decay", {"lr": 0.01, "betas": (0.9, 0.9), "weight_decay": 0.1, "amsgrad": True}),
            Variant("betas_eps", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 0.05}),
            Variant("decay", {"lr": 0.01, "weight_decay": 0.1, "decay": 0.1}),
        ),
        reference=partial(adam_step, decoupled=decoupled),
        state_names=_adam_state,
        bad_hyperparameters=(*_common_bad(), *_eps_bad(), *_betas_bad(), *_flag_bad("amsgrad")),
        edge_hyperparameters=(*_common_edges(), *_betas_edges(), {"eps": 5e-324}, {"amsgrad": np.bool_(True)}),
        torch_class=torch_class,
        torch_options=_torch_keywords("lr", "betas", "eps", "weight_decay", "amsgrad"),
        param_groups=(
            {"lr": 0.02, "weight_decay": 0.2, "amsgrad": True},
            {"betas": (0.8, 0.95), "eps": 0.01, "weight_decay": 0.0, "decay": 0.1},
        ),
    )


# ------------------------------------------------------------------------------------------ the table
SGD = OptimizerInfo(
    cls=optim.SGD,
    defaults={"lr": 1e-2, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0, "decay": 0.0},
    variants=(
        Variant("plain", {"lr": 0.1}),
        Variant("momentum", {"lr": 0.1, "momentum": 0.9}),
        Variant("dampening", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
        Variant("nesterov", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
        Variant("weight_decay", {"lr": 0.1, "weight_decay": 0.2}),
        Variant("weight_decay_momentum", {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.2}),
        Variant("decay", {"lr": 0.1, "momentum": 0.9, "decay": 0.1}),
    ),
    reference=sgd_step,
    state_names=lambda hp: ("momentum_buffer",) if hp["momentum"] != 0 else (),
    bad_hyperparameters=(
        *_common_bad(),
        _bad({"momentum": BELOW_ZERO}, ValueError, "^momentum must be >= 0"),
        _bad({"momentum": True}, TypeError, "^momentum must be a real number"),
        *_unit_bad("dampening", momentum=0.9),
        _bad({"nesterov": True}, ValueError, "^nesterov momentum needs momentum > 0"),
        _bad({"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "^nesterov .* dampening = 0"),
        *_flag_bad("nesterov", momentum=0.9),
    ),
    edge_hyperparameters=(
        *_common_edges(),
        {"momentum": 0.0, "dampening": 1.0},
        {"momentum": 0.5, "dampening": 0.0, "nesterov": np.bool_(True)},
    ),
    torch_class="SGD",
    torch_options=_torch_keywords("lr", "momentum", "dampening", "nesterov", "weight_decay"),
    param_groups=({"lr": 0.05, "weight_decay": 0.1}, {"momentum": 0.9, "nesterov": True, "decay": 0.1}),
)

ADAGRAD = OptimizerInfo(
    cls=optim.AdaGrad,
    defaults={"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "decay": 0.0},
    variants=(
        Variant("plain", {"lr": 0.1}),
        Variant("weight_decay", {"lr": 0.1, "weight_decay": 0.2}),
        Variant("initial_accumulator_value", {"lr": 0.1, "initial_accumulator_value": 0.5}),
        Variant("eps", {"lr": 0.1, "eps": 0.05}),
        Variant("decay", {"lr": 0.1, "decay": 0.1}),
    ),
    reference=adagrad_step,
    state_names=lambda hp: ("sum_squares",),
    bad_hyperparameters=(
        *_common_bad(),
        *_eps_bad(),
        _bad({"initial_accumulator_value": BELOW_ZERO}, ValueError, "^initial_accumulator_value must be >= 0"),
    ),
    edge_hyperparameters=(*_common_edges(), {"eps": 5e-324, "initial_accumulator_value": 0.0}),
    torch_class="Adagrad",
    torch_options=_torch_keywords("lr", "eps", "weight_decay", "initial_accumulator_value", lr_decay="decay"),
    torch_state_names=(("sum_squares", "sum"),),
    decay_by_scheduler=False,
    param_groups=({"lr": 0.05, "weight_decay": 0.1, "initial_accumulator_value": 0.3}, {"eps": 0.01, "decay": 0.1}),
)

RMSPROP = OptimizerInfo(
    cls=optim.RMSProp,
    defaults={
        "lr": 1e-2,
        "alpha": 0.99,
        "eps": 1e-8,
        "momentum": 0.0,
        "centered": False,
        "weight_decay": 0.0,
        "decay": 0.0,
    },
    variants=(
        Variant("plain", {"lr": 0.01}),
        Variant("centered", {"lr": 0.01, "centered": True}),
        Variant("momentum", {"lr": 0.01, "momentum": 0.9}),
        Variant("centered_momentum", {"lr": 0.01, "centered": True, "momentum": 0.9}),
        Variant("weight_decay", {"lr": 0.01, "weight_decay": 0.2}),
        Variant("alpha_eps", {"lr": 0.02, "alpha": 0.9, "eps": 0.05}),
        Variant("decay", {"lr": 0.01, "momentum": 0.5, "decay": 0.1}),
    ),
    reference=rmsprop_step,
    state_names=lambda hp: (
        "square_avg",
        *(("grad_avg",) if hp["centered"] else ()),
        *(("momentum_buffer",) if hp["momentum"] != 0 else ()),
    ),
    bad_hyperparameters=(
        *_common_bad(),
        *_eps_bad(),
        *_unit_bad("alpha"),
        _bad({"momentum": BELOW_ZERO}, ValueError, "^momentum must be >= 0"),
        *_flag_bad("centered"),
    ),
    edge_hyperparameters=(
        *_common_edges(),
        {"alpha": 1.0},
        {"eps": 5e-324},
        {"alpha": 0.0, "centered": np.bool_(True)},
    ),
    torch_class="RMSprop",
    torch_options=_torch_keywords("lr", "alpha", "eps", "momentum", "centered", "weight_decay"),
    param_groups=({"lr": 0.005, "weight_decay": 0.1, "centered": True}, {"momentum": 0.9, "alpha": 0.9}),
)

ADAM = _adam_info(optim.Adam, 0.0, "Adam")
ADAMW = _adam_info(optim.AdamW, 1e-2, "AdamW")

NADAM = OptimizerInfo(
    cls=optim.NAdam,
    defaults=_adam_family_defaults(2e-3, momentum_decay=4e-3, decoupled_weight_decay=False),
    variants=(
        *_weight_decay_variants(decoupled_option=True),
        Variant("momentum_decay", {"lr": 0.01, "momentum_decay": 0.5}),
        Variant("betas_eps", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 0.05}),
        Variant("decay", {"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True, "decay": 0.1}),
    ),
    reference=nadam_step,
    state_names=lambda hp: (*ADAM_STATE, "mu_product"),
    scalar_state=("mu_product",),
    bad_hyperparameters=(
        *_common_bad(),
        *_eps_bad(),
        *_betas_bad(),
        _bad({"momentum_decay": BELOW_ZERO}, ValueError, "^momentum_decay must be >= 0"),
        _bad({"momentum_decay": INF}, ValueError, "^momentum_decay must be finite"),
        *_flag_bad("decoupled_weight_decay"),
    ),
    edge_hyperparameters=(
        *_common_edges(),
        *_betas_edges(),
        {"eps": 5e-324, "momentum_decay": 0.0},
        {"decoupled_weight_decay": np.bool_(True)},
    ),
    torch_class="NAdam",
    torch_options=_torch_keywords("lr", "betas", "eps", "weight_decay", "momentum_decay", "decoupled_weight_decay"),
    param_groups=(
        {"lr": 0.02, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"momentum_decay": 0.5, "betas": (0.8, 0.9), "decay": 0.1},
    ),
)

ADAMAX = OptimizerInfo(
    cls=optim.Adamax,
    defaults=_adam_family_defaults(2e-3),
    variants=(
        *_weight_decay_variants(),
        Variant("betas", {"lr": 0.01, "betas": (0.8, 0.9)}),
        Variant("eps", {"lr": 0.01, "eps": 0.5}),
        Variant("decay", {"lr": 0.01, "decay": 0.1}),
    ),
    reference=adamax_step,
    state_names=lambda hp: ("exp_avg", "exp_inf"),
    bad_hyperparameters=(*_common_bad(), *_eps_bad(), *_betas_bad()),
    edge_hyperparameters=(*_common_edges(), *_betas_edges(), {"eps": 5e-324}),
    torch_class="Adamax",
    torch_options=_torch_keywords("lr", "betas", "eps", "weight_decay"),
    param_groups=({"lr": 0.02, "weight_decay": 0.1}, {"betas": (0.8, 0.9), "eps": 0.01, "decay": 0.1}),
)

RADAM = OptimizerInfo(
    cls=optim.RAdam,
    defaults=_adam_family_defaults(1e-3, decoupled_weight_decay=False),
    variants=(
        *_weight_decay_variants(decoupled_option=True),
        Variant("betas", {"lr": 0.01, "betas": (0.8, 0.9)}),  # rectified from step 6, as with beta2 = 0.999
        Variant("eps", {"lr": 0.01, "eps": 0.05}),
        Variant("decay", {"lr": 0.01, "decay": 0.1}),
    ),
    reference=radam_step,
    state_names=lambda hp: ADAM_STATE,
    bad_hyperparameters=(*_common_bad(), *_eps_bad(), *_betas_bad(), *_flag_bad("decoupled_weight_decay")),
    edge_hyperparameters=(*_common_edges(), *_betas_edges(), {"eps": 5e-324, "decoupled_weight_decay": np.bool_(True)}),
    torch_class="RAdam",
    torch_options=_torch_keywords("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay"),
    param_groups=(
        {"lr": 0.02, "weight_decay": 0.1, "decoupled_weight_decay": True},
        {"betas": (0.8, 0.9), "eps": 0.01, "decay": 0.1},
    ),
)

LION = OptimizerInfo(
    cls=optim.Lion,
    defaults={"lr": 1e-4, "betas": (0.9, 0.99), "weight_decay": 0.0, "decay": 0.0},
    variants=(
        Variant("plain", {"lr": 0.01}),
        Variant("weight_decay", {"lr": 0.01, "weight_decay": 0.5}),
        Variant("betas", {"lr": 0.01, "betas": (0.5, 0.9)}),
        Variant("decay", {"lr": 0.01, "decay": 0.1}),
    ),
    reference=lion_step,
    state_names=lambda hp: ("exp_avg",),
    bad_hyperparameters=(*_common_bad(), *_betas_bad()),
    edge_hyperparameters=(*_common_edges(), *_betas_edges()),
    torch_class=None,
    torch_options=None,
    param_groups=({"lr": 0.02, "weight_decay": 0.1}, {"betas": (0.5, 0.9), "decay": 0.1}),
)

TABLE: tuple[OptimizerInfo, ...] = (SGD, ADAGRAD, RMSPROP, ADAM, ADAMW, NADAM, ADAMAX, RADAM, LION)
