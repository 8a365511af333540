"""``fastopt.torch``: PyTorch optimizers running fastopt's kernels, against ``torch.optim`` on the same model.

Every optimizer and option of the optimizer table (``tests/optimizer_table.py``) trains a small float64 PyTorch
model 300 steps with ``torch.optim.X`` and with ``fastopt.torch.X`` from the same initial weights on the same
batches: every parameter after every step within relative 1e-10 of PyTorch's (relative to the parameter's largest
element), and the state at the end. Also: parameter groups, frozen parameters, state_dict round trips and
cross-loading both ways, a learning-rate scheduler, zero-copy in-place updates, the signatures, and refusals.
"""

from __future__ import annotations

import copy
import inspect
import io
import itertools
import subprocess
import sys
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from optimizer_table import TABLE, OptimizerInfo
from test_optimizers import torch_default_float64

import fastopt
from fastopt import optim

torch = pytest.importorskip("torch")
fastopt_torch = pytest.importorskip("fastopt.torch")

BACKENDS = fastopt.available_backends()
STEPS = 300  # the bar: float64, 300 steps, relative 1e-10
RELATIVE = 1e-10
TORCH_INFOS = [info for info in TABLE if info.torch_class is not None]
# Options fastopt.torch has that the optimizer table (written for fastopt.optim) does not: torch.optim.Adam's
# decoupled_weight_decay, which fastopt.torch.Adam runs as fastopt.optim.AdamW.
EXTRA_VARIANTS = {
    "Adam": [("decoupled_weight_decay", {"lr": 0.01, "weight_decay": 0.2, "decoupled_weight_decay": True})]
}
SWITCHES = ("maximize", "foreach", "fused", "capturable", "differentiable")
MODULES = (torch.optim, fastopt_torch)  # theirs, ours


def torch_keywords(info: OptimizerInfo, options: dict) -> dict:
    """PyTorch's keywords for a variant of the table (fastopt's names and defaults translated)."""
    return info.torch_options(info.hyper(options))


def model_keywords(info: OptimizerInfo, options: dict) -> dict:
    """The keywords the model comparisons use: the table's, but RMSprop with momentum at a tenth of its lr. At
    lr 0.01 with momentum 0.9 this model's training is chaotic: a 1e-16 difference grows about 10x every 20
    steps, to 1e-5 (centered: 3e-2) at step 300, the same between torch.optim and fastopt.optim.RMSProp on the
    same model (measured); at lr 1e-3 the runs agree to 2e-15. (Fixed-gradient comparisons in
    test_optimizers.py take the table's lr.)"""
    keywords = torch_keywords(info, options)
    if info.torch_class == "RMSprop" and keywords["momentum"] != 0:
        keywords["lr"] /= 10
    return keywords


def decay_of(info: OptimizerInfo, options: dict) -> float:
    """fastopt's ``decay``, which PyTorch has only as Adagrad's lr_decay: elsewhere a LambdaLR applies it."""
    return info.hyper(options)["decay"] if info.decay_by_scheduler else 0.0


def torch_cases(backends: tuple[str, ...], richest_only: bool) -> list:
    """(backend, class name, keywords, decay) of every variant of the table (and EXTRA_VARIANTS), or of the
    richest variant of each optimizer."""
    cases = []
    for backend, info in itertools.product(backends, TORCH_INFOS):
        variants = [info.richest] if richest_only else info.variants
        for variant in variants:
            keywords, decay = model_keywords(info, variant.options), decay_of(info, variant.options)
            cases.append(
                pytest.param(
                    backend, info.torch_class, keywords, decay, id=f"{backend}-{info.torch_class}-{variant.name}"
                )
            )
        for name, keywords in [] if richest_only else EXTRA_VARIANTS.get(info.torch_class, []):
            cases.append(
                pytest.param(backend, info.torch_class, keywords, 0.0, id=f"{backend}-{info.torch_class}-{name}")
            )
    return cases


# Every variant on the default backend (the compiled one when it is built), the richest ones on the others too:
# which kernel runs is fastopt's backend choice, tested equal to the reference by the kernel tests.
DEFAULT_BACKEND = fastopt.get_backend()
CASES = torch_cases((DEFAULT_BACKEND,), False) + torch_cases(
    tuple(name for name in BACKENDS if name != DEFAULT_BACKEND), True
)
RICHEST = [
    pytest.param(info.torch_class, model_keywords(info, info.richest.options), id=info.torch_class)
    for info in TORCH_INFOS
]


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """PyTorch on one thread: this model is tiny, and on a shared 2-core machine PyTorch's two OpenMP threads
    made a step 10-40x slower (each waits for the other to be scheduled)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def default_float64() -> Iterator[None]:
    """PyTorch keeps its step counts (and NAdam's mu_product) in the default dtype: float64 here, so that the
    comparison is of the math and not of PyTorch's float32 counters."""
    with torch_default_float64(torch):
        yield


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    with fastopt.use_backend(request.param):
        yield request.param


# ----------------------------------------------------------------------------------- the model and the loop
def make_model(seed: int = 0, dtype=None):
    """A 6-8-5-3 tanh MLP with PyTorch's initialization from ``seed``."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    )
    return model.to(dtype or torch.float64)


DATA_ROWS, BATCH = 96, 8
_RNG = np.random.default_rng(7)
DATA_X = _RNG.standard_normal((DATA_ROWS, 6))
DATA_Y = _RNG.integers(0, 3, DATA_ROWS)


def train_step(model, optimizer, t: int) -> None:
    """Step ``t`` on the batch of rows ``t * BATCH ...`` (cycling): zero_grad, cross-entropy, backward, step."""
    start = (t * BATCH) % DATA_ROWS
    dtype = next(model.parameters()).dtype
    inputs = torch.tensor(DATA_X[start : start + BATCH], dtype=dtype)
    labels = torch.tensor(DATA_Y[start : start + BATCH])
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(inputs), labels).backward()
    optimizer.step()


def assert_close(ours, theirs, relative: float = RELATIVE, what: str = "") -> None:
    """``ours`` within ``relative`` of ``theirs``, relative to the largest element of ``theirs``."""
    ours, theirs = np.asarray(ours.detach()), np.asarray(theirs.detach())
    assert ours.shape == theirs.shape, what
    scale = max(np.abs(theirs).max(initial=0.0), np.finfo(np.float64).tiny)
    assert np.abs(ours - theirs).max(initial=0.0) <= relative * scale, what


def assert_same_params(ours, theirs, relative: float = RELATIVE, what: str = "") -> None:
    for (name, mine), other in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(mine, other, relative, f"{what} {name}")


def assert_same_state(ours, theirs, relative: float = RELATIVE) -> None:
    """Both optimizers hold state for the same parameters, under the same names, with the same values."""
    mine, other = ours.state_dict()["state"], theirs.state_dict()["state"]
    assert mine.keys() == other.keys()
    for index in mine:
        assert mine[index].keys() == other[index].keys(), index
        for name, value in mine[index].items():
            assert_close(value, other[index][name], relative, f"state[{index}][{name!r}]")


def lambda_decay(optimizer, decay: float):
    """fastopt's ``decay`` as a PyTorch schedule (None when 0): ``lr / (1 + decay * steps)``."""
    if decay == 0:
        return None
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda steps: 1.0 / (1.0 + decay * steps))


def train_side_by_side(make_theirs: Callable, make_ours: Callable, steps: int, check_every: int = 25):
    """Two copies of the model, one per optimizer factory (model -> (optimizer, scheduler or None)), trained in
    lockstep on the same batches; the parameters are compared every ``check_every`` steps and after the last."""
    models = make_model(), make_model()
    (theirs, their_schedule), (ours, our_schedule) = make_theirs(models[0]), make_ours(models[1])
    for t in range(steps):
        for model, optimizer, schedule in ((models[0], theirs, their_schedule), (models[1], ours, our_schedule)):
            train_step(model, optimizer, t)
            if schedule is not None:
                schedule.step()
        if (t + 1) % check_every == 0 or t == steps - 1:
            assert_same_params(models[1], models[0], what=f"step {t + 1}")
    return models, theirs, ours


# ----------------------------------------------------------------------------------- against torch.optim
@pytest.mark.parametrize(("backend_name", "name", "keywords", "decay"), CASES)
def test_matches_torch_optim(backend_name, name, keywords, decay):
    """float64, 300 steps of a small MLP: the parameters (every 25 steps and at the end) and the state at the
    end within relative 1e-10 of torch.optim's."""

    def factory(module):
        def make(model):
            optimizer = getattr(module, name)(model.parameters(), **keywords)
            return optimizer, lambda_decay(optimizer, decay)

        return make

    with fastopt.use_backend(backend_name):
        _, theirs, ours = train_side_by_side(factory(torch.optim), factory(fastopt_torch), STEPS)
    assert_same_state(ours, theirs)


BITWISE_CASES = [
    pytest.param(info, variant, id=f"{info.name}-{variant.name}")
    for info in TABLE
    for variant in info.variants
    if info.hyper(variant.options)["decay"] == 0 or not info.decay_by_scheduler
]


@pytest.mark.parametrize(("info", "variant"), BITWISE_CASES)
def test_runs_fastopt_optims_update_bit_for_bit(backend, info, variant):
    """fastopt.torch.X is fastopt.optim.X's update: on a second copy of the model, fastopt.optim.X over NumPy views
    of its parameters and gradients gives the same bits for 50 steps (every variant with the table's options,
    chaotic ones included; Lion too, which PyTorch has not). Variants with ``decay`` are left out where PyTorch
    has no such option (a LambdaLR rounds ``lr * (1 / (1 + decay t))``, fastopt ``lr / (1 + decay t)``)."""
    if info.torch_class is None:
        name, keywords = info.name, {key: value for key, value in variant.options.items() if key != "decay"}
    else:
        name, keywords = info.torch_class, torch_keywords(info, variant.options)
    models = make_model(), make_model()
    ours = getattr(fastopt_torch, name)(models[0].parameters(), **keywords)
    reference = info.cls([param.detach().numpy() for param in models[1].parameters()], **variant.options)
    for t in range(50):
        train_step(models[0], ours, t)
        train_step(models[1], NumpyStep(models[1], reference), t)
    for mine, other in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(mine, other)


class NumpyStep:
    """A fastopt.optim optimizer behind PyTorch's zero_grad/step, on NumPy views of a model's gradients."""

    def __init__(self, model, optimizer: optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer

    def zero_grad(self) -> None:
        self.model.zero_grad()

    def step(self) -> None:
        self.optimizer.step([param.grad.numpy() for param in self.model.parameters()])


def weight_and_bias_groups(model, **bias_options) -> list[dict]:
    return [
        {"params": [param for name, param in model.named_parameters() if name.endswith("weight")]},
        {"params": [param for name, param in model.named_parameters() if name.endswith("bias")], **bias_options},
    ]


@pytest.mark.parametrize(("name", "keywords"), RICHEST)
def test_param_groups_with_their_own_lr_match_torch(backend, name, keywords):
    """Weights and biases in two groups, the biases at a third of the learning rate (and, for the Adam family,
    other betas): 300 steps within relative 1e-10 of torch.optim with the same groups."""
    bias_options = {"lr": keywords["lr"] / 3}
    if "betas" in keywords:
        bias_options["betas"] = (0.8, 0.95)

    def factory(module):
        return lambda model: (getattr(module, name)(weight_and_bias_groups(model, **bias_options), **keywords), None)

    _, theirs, ours = train_side_by_side(factory(torch.optim), factory(fastopt_torch), STEPS)
    assert [group["lr"] for group in ours.param_groups] == [keywords["lr"], keywords["lr"] / 3]
    assert_same_state(ours, theirs)


def test_parameters_without_grad_are_skipped(backend):
    """A frozen layer (requires_grad False: no gradient) is not updated and gets no state, as in PyTorch."""

    def factory(module):
        def make(model):
            model[0].requires_grad_(False)
            return module.Adam(model.parameters(), lr=0.01), None

        return make

    models, theirs, ours = train_side_by_side(factory(torch.optim), factory(fastopt_torch), 20)
    assert torch.equal(models[1][0].weight, make_model()[0].weight)
    assert ours.state_dict()["state"].keys() == theirs.state_dict()["state"].keys() == {2, 3, 4, 5}


@pytest.mark.parametrize(
    ("make_schedule", "steps_per_epoch"),
    [
        pytest.param(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5), 25, id="StepLR"),
        pytest.param(
            lambda opt: torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS), 1, id="OneCycleLR"
        ),
    ],
)
def test_lr_scheduler_drives_the_optimizer(backend, make_schedule, steps_per_epoch):
    """torch.optim.lr_scheduler sets the groups' lr (OneCycleLR also Adam's beta1, every step): 300 steps within
    relative 1e-10 of torch.optim.Adam under the same schedule, and the same learning rates."""
    models = make_model(), make_model()
    optimizers = torch.optim.Adam(models[0].parameters(), lr=0.02), fastopt_torch.Adam(models[1].parameters(), lr=0.02)
    schedules = [make_schedule(optimizer) for optimizer in optimizers]
    for t in range(STEPS):
        for model, optimizer, schedule in zip(models, optimizers, schedules):
            train_step(model, optimizer, t)
            if (t + 1) % steps_per_epoch == 0:
                schedule.step()
        assert schedules[1].get_last_lr() == schedules[0].get_last_lr()
        assert_same_params(models[1], models[0], what=f"step {t + 1}")
    assert schedules[1].get_last_lr() != [0.02]  # the schedule moved the rate


@pytest.mark.parametrize(("name", "keywords"), RICHEST)
def test_lr_set_through_param_groups_by_hand(backend, name, keywords):
    """The learning rate written into ``param_groups[0]["lr"]`` mid-run (a quarter after 100 steps, back after
    200): within relative 1e-10 of torch.optim."""
    models = make_model(), make_model()
    optimizers = [getattr(module, name)(model.parameters(), **keywords) for module, model in zip(MODULES, models)]
    for t in range(STEPS):
        for model, optimizer in zip(models, optimizers):
            if t in (100, 200):
                optimizer.param_groups[0]["lr"] = keywords["lr"] / 4 if t == 100 else keywords["lr"]
            train_step(model, optimizer, t)
    assert_same_params(models[1], models[0])
    assert_same_state(optimizers[1], optimizers[0])


def test_step_hooks_run():
    """PyTorch's step pre- and post-hooks run around fastopt's step."""
    param = torch.nn.Parameter(torch.ones(3))
    optimizer = fastopt_torch.Adam([param], lr=0.1)
    calls = []
    optimizer.register_step_pre_hook(lambda *_: calls.append(("pre", param.detach().clone())))
    optimizer.register_step_post_hook(lambda *_: calls.append(("post", param.detach().clone())))
    param.grad = torch.ones(3)
    optimizer.step()
    assert [when for when, _ in calls] == ["pre", "post"]
    assert torch.equal(calls[0][1], torch.ones(3)) and torch.allclose(calls[1][1], torch.full((3,), 0.9))


def test_closure_is_evaluated_with_grad_and_its_loss_returned():
    model = make_model()
    optimizer = fastopt_torch.SGD(model.parameters(), lr=0.1)
    inputs, labels = torch.tensor(DATA_X[:BATCH]), torch.tensor(DATA_Y[:BATCH])
    calls = []

    def closure():
        calls.append(torch.is_grad_enabled())
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        return loss

    with torch.no_grad():
        loss = optimizer.step(closure)
    assert calls == [True]
    assert closure().item() < loss.item()


# ----------------------------------------------------------------------------------- zero copy
@pytest.mark.parametrize(("name", "keywords"), RICHEST)
def test_updates_happen_in_place_without_copies(backend, name, keywords):
    """The parameter tensors keep their memory (data_ptr) and are changed in it, the state tensors too; the
    autograd version counter of each parameter advances (as with PyTorch's in-place updates)."""
    model = make_model()
    optimizer = getattr(fastopt_torch, name)(model.parameters(), **keywords)
    params = list(model.parameters())
    train_step(model, optimizer, 0)
    pointers = [param.data_ptr() for param in params]
    state_pointers = {key: value.data_ptr() for param in params for key, value in optimizer.state[param].items()}
    before = [param.detach().clone() for param in params]
    versions = [param._version for param in params]
    train_step(model, optimizer, 1)
    assert [param.data_ptr() for param in params] == pointers
    assert state_pointers == {
        key: value.data_ptr() for param in params for key, value in optimizer.state[param].items()
    }
    assert all(not torch.equal(param, old) for param, old in zip(params, before))
    assert all(param._version > version for param, version in zip(params, versions))


# ----------------------------------------------------------------------------------- signatures and format
@pytest.mark.parametrize("name", [info.torch_class for info in TORCH_INFOS])
def test_signature_and_defaults_are_torchs(name):
    """The constructor takes PyTorch's arguments, in its order, of its kinds (keyword-only after ``*``), with its
    defaults; the groups hold the same keys and defaults."""

    def described(cls):
        parameters = inspect.signature(cls.__init__).parameters.values()
        return [(p.name, p.kind, p.default) for p in parameters]

    ours, theirs = getattr(fastopt_torch, name), getattr(torch.optim, name)
    assert described(ours) == described(theirs)
    assert issubclass(ours, torch.optim.Optimizer)
    params = [torch.nn.Parameter(torch.zeros(3))]
    assert ours(params).param_groups[0].keys() == theirs(params).param_groups[0].keys()
    assert {k: v for k, v in ours(params).defaults.items()} == theirs(params).defaults


def test_lion_signature_is_fastopt_optims_without_decay():
    """Lion's hyperparameters and defaults are fastopt.optim.Lion's but ``decay`` (a PyTorch scheduler does that),
    its params required as PyTorch's; fastopt.optim's spellings RMSProp and AdaGrad name PyTorch's classes."""
    ours = inspect.signature(fastopt_torch.Lion.__init__).parameters
    reference = inspect.signature(optim.Lion.__init__).parameters
    assert {name: p.default for name, p in ours.items() if name != "params"} == {
        name: p.default for name, p in reference.items() if name not in ("params", "decay")
    }
    assert ours["params"].default is inspect.Parameter.empty
    assert fastopt_torch.RMSProp is fastopt_torch.RMSprop and fastopt_torch.AdaGrad is fastopt_torch.Adagrad


@pytest.mark.parametrize(("name", "keywords"), RICHEST)
def test_state_dict_has_torchs_format(backend, name, keywords):
    """After some steps the state_dict holds the same entries, of the same dtypes and shapes, as torch.optim's."""
    _, theirs, ours = train_side_by_side(
        lambda model: (getattr(torch.optim, name)(model.parameters(), **keywords), None),
        lambda model: (getattr(fastopt_torch, name)(model.parameters(), **keywords), None),
        5,
    )
    mine, other = ours.state_dict(), theirs.state_dict()
    assert mine["param_groups"] == other["param_groups"]
    for index, entry in mine["state"].items():
        assert {k: (v.dtype, v.shape) for k, v in entry.items()} == {
            k: (v.dtype, v.shape) for k, v in other["state"][index].items()
        }


def saved_and_loaded(state_dict: dict) -> dict:
    """A state_dict through torch.save and torch.load (as a checkpoint file would take it)."""
    stream = io.BytesIO()
    torch.save(state_dict, stream)
    stream.seek(0)
    return torch.load(stream)


@pytest.mark.parametrize(("name", "keywords"), RICHEST)
def test_state_dict_round_trip_continues_bit_identically(backend, name, keywords):
    """Train 10 steps, save the state_dict (through torch.save), load it into a new optimizer on a copy of the
    model: 10 more steps on both give the same bits."""
    model = make_model()
    optimizer = getattr(fastopt_torch, name)(model.parameters(), **keywords)
    for t in range(10):
        train_step(model, optimizer, t)
    clone = copy.deepcopy(model)
    restored = getattr(fastopt_torch, name)(clone.parameters(), lr=0.5)
    restored.load_state_dict(saved_and_loaded(optimizer.state_dict()))
    for t in range(10, 20):
        train_step(model, optimizer, t)
        train_step(clone, restored, t)
    for mine, other in zip(model.parameters(), clone.parameters()):
        assert torch.equal(mine, other)


@pytest.mark.parametrize("direction", ["torch to fastopt", "fastopt to torch"])
@pytest.mark.parametrize(("name", "keywords"), RICHEST)
def test_state_dicts_load_across(backend, name, keywords, direction):
    """A state_dict saved after 10 steps by torch.optim.X loads into fastopt.torch.X (and the other way): 20
    more steps on the copy match the original run to relative 1e-10."""
    source_module, target_module = (
        (torch.optim, fastopt_torch) if direction == "torch to fastopt" else (fastopt_torch, torch.optim)
    )
    model = make_model()
    source = getattr(source_module, name)(model.parameters(), **keywords)
    for t in range(10):
        train_step(model, source, t)
    clone = copy.deepcopy(model)
    target = getattr(target_module, name)(clone.parameters())
    target.load_state_dict(saved_and_loaded(source.state_dict()))
    for t in range(10, 30):
        train_step(model, source, t)
        train_step(clone, target, t)
        assert_same_params(clone, model, what=f"step {t + 1}")
    assert_same_state(target, source)


def test_a_fused_torch_adam_state_dict_loads(backend):
    """torch.optim.Adam(fused=True) saves fused=True (and float32 step counts): it loads, with fused set back to
    None (fastopt's kernel is the implementation), and the run continues as PyTorch's does."""
    model = make_model()
    source = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    for t in range(10):
        train_step(model, source, t)
    clone = copy.deepcopy(model)
    target = fastopt_torch.Adam(clone.parameters())
    target.load_state_dict(saved_and_loaded(source.state_dict()))
    assert target.param_groups[0]["fused"] is None and target.param_groups[0]["lr"] == 0.01
    for t in range(10, 30):
        train_step(model, source, t)
        train_step(clone, target, t)
    assert_same_params(clone, model)


def relative_distance(model, reference) -> float:
    """The largest difference between two models' parameters (compared in float64), relative to each parameter's
    largest element in ``reference``."""
    worst = 0.0
    for mine, other in zip(model.parameters(), reference.parameters()):
        mine, other = mine.detach().double(), other.detach().double()
        worst = max(worst, ((mine - other).abs().max() / other.abs().max()).item())
    return worst


FLOAT32_SLACK = 8  # measured (2-core AMD EPYC Zen 4): at most 2.7x PyTorch's own float32 error (Adam, amsgrad)


@pytest.mark.parametrize(
    ("name", "keywords"),
    [
        pytest.param(info.torch_class, model_keywords(info, {**info.richest.options, "weight_decay": 0.1}), id=name)
        for info in TORCH_INFOS
        for name in [info.torch_class]
    ],
)
def test_float32_models_match_torch_within_its_own_rounding(backend, name, keywords):
    """A float32 model under PyTorch's float32 default (float32 step counts), weight decay 0.1, 300 steps beside
    torch.optim's. Their distance is judged against the run's sensitivity to float32 rounding: PyTorch's own
    float32 error, the distance of its run from a float64 run of torch.optim from the same initial weights (the
    largest so far, every 25 steps). Both sides round every operation to float32 in their own order, so each
    differs from the float64 run by about that much; a wrong scalar or formula would differ by far more."""
    torch.set_default_dtype(torch.float32)
    theirs, ours = make_model(dtype=torch.float32), make_model(dtype=torch.float32)
    exact = make_model(dtype=torch.float32).double()
    runs = [
        (theirs, getattr(torch.optim, name)(theirs.parameters(), **keywords)),
        (ours, getattr(fastopt_torch, name)(ours.parameters(), **keywords)),
        (exact, getattr(torch.optim, name)(exact.parameters(), **keywords)),
    ]
    their_error = float(np.finfo(np.float32).eps)  # the floor: one rounding
    for t in range(STEPS):
        for model, optimizer in runs:
            train_step(model, optimizer, t)
        if (t + 1) % 25 == 0:
            their_error = max(their_error, relative_distance(theirs, exact))
            distance = relative_distance(ours, theirs)
            assert distance <= FLOAT32_SLACK * their_error, f"step {t + 1}: {distance:.2e} vs {their_error:.2e}"
    assert ours[0].weight.dtype == torch.float32
    # float32 step counts and buffers, as PyTorch's; NAdam's mu_product is float64 (documented), PyTorch's float32
    states = [run[1].state[run[0][0].weight] for run in runs[:2]]
    dtypes = [{key: value.dtype for key, value in state.items() if key != "mu_product"} for state in states]
    assert dtypes[1] == dtypes[0]


# ----------------------------------------------------------------------------------- refusals
def switches_of(name: str) -> list[str]:
    return [switch for switch in SWITCHES if switch in inspect.signature(getattr(torch.optim, name)).parameters]


SWITCH_CASES = [
    pytest.param(name, switch, value, id=f"{name}-{switch}={value}")
    for name in [info.torch_class for info in TORCH_INFOS]
    for switch in switches_of(name)
    for value in ((True, False) if switch in ("foreach", "fused") else (True,))
]


@pytest.mark.parametrize(("name", "switch", "value"), SWITCH_CASES)
def test_non_default_switches_are_refused(name, switch, value):
    """maximize, foreach, fused, capturable and differentiable keep PyTorch's defaults; another value, given
    to the constructor or in a parameter group, is refused naming the switch and why."""
    cls = getattr(fastopt_torch, name)
    params = [torch.nn.Parameter(torch.zeros(3))]
    with pytest.raises(ValueError, match=f"{switch}={value!r} is not supported"):
        cls(params, **{switch: value})
    with pytest.raises(ValueError, match=f"{switch}={value!r} is not supported"):
        cls([{"params": params, switch: value}])


def test_a_switch_changed_after_construction_is_refused_at_the_step():
    model = make_model()
    optimizer = fastopt_torch.Adam(model.parameters(), lr=0.01)
    train_step(model, optimizer, 0)
    optimizer.param_groups[0]["maximize"] = True
    before = [param.detach().clone() for param in model.parameters()]
    with pytest.raises(ValueError, match="maximize=True is not supported"):
        train_step(model, optimizer, 1)
    assert all(torch.equal(param, old) for param, old in zip(model.parameters(), before))


def leaf(tensor):
    return tensor.requires_grad_()


BAD_PARAMS = [
    pytest.param(lambda: leaf(torch.zeros(3, device="meta")), ValueError, "is on meta", id="not-cpu"),
    pytest.param(lambda: leaf(torch.zeros(4, 3).t()), ValueError, "is not contiguous", id="non-contiguous"),
    pytest.param(lambda: leaf(torch.zeros(3, dtype=torch.float16)), TypeError, "float32 or float64", id="float16"),
    pytest.param(lambda: leaf(torch.zeros(3, dtype=torch.bfloat16)), TypeError, "float32 or float64", id="bfloat16"),
    pytest.param(lambda: leaf(torch.zeros(3, dtype=torch.complex128)), TypeError, "float32 or float64", id="complex"),
    pytest.param(lambda: leaf(torch.zeros(3, 3).to_sparse()), TypeError, "is sparse", id="sparse"),
]


@pytest.mark.parametrize(("make_param", "error", "match"), BAD_PARAMS)
@pytest.mark.parametrize("name", ["SGD", "Adam", "Lion"])
def test_bad_parameters_are_refused_at_construction(name, make_param, error, match):
    with pytest.raises(error, match=match):
        getattr(fastopt_torch, name)([make_param()])


def test_a_refused_group_is_not_added():
    model = make_model()
    optimizer = fastopt_torch.Adam(model[0].parameters())
    with pytest.raises(ValueError, match="is not contiguous"):
        optimizer.add_param_group({"params": [leaf(torch.zeros(4, 3).t())]})
    with pytest.raises(ValueError, match="lr must be >= 0"):
        optimizer.add_param_group({"params": model[2].parameters(), "lr": -1.0})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": model[2].parameters(), "lr": 0.5})
    assert len(optimizer.param_groups) == 2


def test_parameters_sharing_memory_are_refused():
    storage = torch.zeros(10)
    first, overlapping, apart = storage[:6], storage[4:], storage[6:]
    with pytest.raises(ValueError, match="share memory"):
        fastopt_torch.Adam([leaf(first), leaf(overlapping)])
    fastopt_torch.Adam([leaf(storage[:6].detach()), leaf(apart.detach())])  # disjoint views of one buffer


BAD_HYPERPARAMETERS = [
    pytest.param("Adam", {"lr": -1.0}, ValueError, "lr must be >= 0", id="negative-lr"),
    pytest.param("Adam", {"lr": float("nan")}, ValueError, "lr must be finite", id="nan-lr"),
    pytest.param("Adam", {"betas": (1.0, 0.9)}, ValueError, "beta1 must be < 1", id="beta1"),
    pytest.param("Adam", {"eps": 0.0}, ValueError, "eps must be > 0", id="zero-eps"),
    pytest.param("Adam", {"amsgrad": 1}, TypeError, "amsgrad must be True or False", id="amsgrad-int"),
    pytest.param("Adam", {"lr": torch.tensor(0.01)}, TypeError, "lr is a Tensor", id="tensor-lr"),
    pytest.param("SGD", {"nesterov": True}, ValueError, "nesterov momentum needs momentum > 0", id="nesterov"),
    pytest.param("Adagrad", {"lr_decay": -1.0}, ValueError, "lr_decay must be >= 0", id="lr_decay"),
    pytest.param("RMSprop", {"alpha": 1.5}, ValueError, "alpha must be <= 1", id="alpha"),
    pytest.param("Lion", {"weight_decay": -0.1}, ValueError, "weight_decay must be >= 0", id="lion-weight-decay"),
]


@pytest.mark.parametrize(("name", "options", "error", "match"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_refused(name, options, error, match):
    """fastopt's checks, with fastopt's messages, at construction and for a group's value set before a step
    (a refused step changes nothing)."""
    with pytest.raises(error, match=match):
        getattr(fastopt_torch, name)([torch.nn.Parameter(torch.zeros(3))], **options)
    model = make_model()
    optimizer = getattr(fastopt_torch, name)(model.parameters())
    optimizer.param_groups[0].update(options)
    before = [param.detach().clone() for param in model.parameters()]
    with pytest.raises(error, match=match):
        train_step(model, optimizer, 0)
    assert all(torch.equal(param, old) for param, old in zip(model.parameters(), before))
    assert not optimizer.state or name == "Adagrad"  # Adagrad makes its state with the optimizer, as PyTorch's


def test_a_sparse_gradient_is_refused_and_nothing_changes():
    model = make_model()
    optimizer = fastopt_torch.Adam(model.parameters(), lr=0.01)
    train_step(model, optimizer, 0)
    state = copy.deepcopy(optimizer.state_dict())
    model[0].weight.grad = model[0].weight.grad.to_sparse()
    before = [param.detach().clone() for param in model.parameters()]
    with pytest.raises(TypeError, match=r"the gradient of param_groups\[0\]\['params'\]\[0\] is sparse"):
        optimizer.step()
    assert all(torch.equal(param, old) for param, old in zip(model.parameters(), before))
    assert_same_state_dicts(optimizer.state_dict(), state)


@pytest.mark.parametrize(
    ("name", "entry", "value", "match"),
    [
        ("Adam", "step", float("nan"), r"'step' holds nan"),
        ("RAdam", "step", -1.0, r"'step' holds -1.0"),
        ("Adam", "step", 0.5, r"'step' holds 0.5"),
        ("NAdam", "mu_product", float("nan"), r"'mu_product' lies outside \[0, 1\]"),
    ],
)
def test_a_count_or_scalar_set_in_place_to_no_run_is_refused_before_any_update(backend, name, entry, value, match):
    """The second parameter's step count or NAdam's momentum product filled in place with a value no run holds (the
    cached views skip the state's checks): refused naming it before the first parameter changes (the step failed
    or made NaN after the first parameter was updated)."""
    model = make_model()
    optimizer = getattr(fastopt_torch, name)(model.parameters(), lr=0.01)
    train_step(model, optimizer, 0)
    train_step(model, optimizer, 1)
    params = list(model.parameters())
    state = copy.deepcopy(optimizer.state_dict())
    optimizer.state[params[1]][entry].fill_(value)
    before = [param.detach().clone() for param in params]
    with pytest.raises(ValueError, match=rf"the optimizer state of param_groups\[0\]\['params'\]\[1\]: {match}"):
        optimizer.step()
    assert all(torch.equal(param, old) for param, old in zip(params, before))
    optimizer.state[params[1]][entry].copy_(state["state"][1][entry])
    assert_same_state_dicts(optimizer.state_dict(), state)


def assert_same_state_dicts(mine: dict, other: dict) -> None:
    assert mine["param_groups"] == other["param_groups"]
    assert mine["state"].keys() == other["state"].keys()
    for index, entry in mine["state"].items():
        assert all(torch.equal(value, other["state"][index][key]) for key, value in entry.items())


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
def test_non_contiguous_and_graph_gradients_give_the_same_result(backend):
    """A gradient that is not contiguous (read through a contiguous copy) or requires grad (backward with
    create_graph) updates as a plain one does, bit for bit."""
    models = make_model(), make_model(), make_model()
    optimizers = [fastopt_torch.Adam(model.parameters(), lr=0.01) for model in models]
    inputs, labels = torch.tensor(DATA_X[:BATCH]), torch.tensor(DATA_Y[:BATCH])
    for model, optimizer, how in zip(models, optimizers, ("plain", "transposed", "graph")):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward(create_graph=how == "graph")
        if how == "transposed":
            model[0].weight.grad = model[0].weight.grad.t().contiguous().t()
            assert not model[0].weight.grad.is_contiguous()
        optimizer.step()
    for other in models[1:]:
        assert all(torch.equal(mine, theirs) for mine, theirs in zip(models[0].parameters(), other.parameters()))


def test_a_gradient_sharing_the_parameters_memory_is_refused():
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = fastopt_torch.SGD([param], lr=0.1)
    param.grad = param.detach()
    with pytest.raises(ValueError, match="shares memory with the parameter"):
        optimizer.step()
    assert torch.equal(param, torch.ones(4))


@pytest.mark.parametrize(
    ("swapped", "match"),
    [
        pytest.param(
            lambda: torch.zeros(3, dtype=torch.float32), r"is float32 \(3,\), the parameter float32 \(10,\)", id="shape"
        ),
        pytest.param(lambda: torch.zeros(10, dtype=torch.float64), "is float64 .* the parameter float32", id="dtype"),
    ],
)
def test_a_gradient_swapped_through_data_is_checked(swapped, match):
    """``param.grad.data = ...`` can give a gradient another shape or dtype than its parameter (PyTorch checks
    only on ``param.grad = ...``): refused (never read out of bounds), nothing changes."""
    param = torch.nn.Parameter(torch.zeros(10, dtype=torch.float32))
    optimizer = fastopt_torch.Adam([param], lr=0.1)
    param.grad = torch.ones(10, dtype=torch.float32)
    optimizer.step()
    before = param.detach().clone()
    param.grad.data = swapped()
    with pytest.raises(ValueError, match=match):
        optimizer.step()
    assert torch.equal(param, before)


def test_state_memory_swapped_through_data_is_followed():
    """``state[p]["exp_avg"].data = ...`` keeps the tensor but not its memory: the next step updates the new
    memory (the old may be freed), and one of another shape is refused."""
    param = torch.nn.Parameter(torch.zeros(10))
    optimizer = fastopt_torch.Adam([param], lr=0.1, betas=(0.5, 0.999))
    param.grad = torch.ones(10)
    optimizer.step()
    optimizer.state[param]["exp_avg"].data = torch.full((10,), 3.0)
    optimizer.step()
    assert torch.equal(optimizer.state[param]["exp_avg"], torch.full((10,), 2.0))  # 0.5 * 3 + 0.5 * 1
    optimizer.state[param]["exp_avg"].data = torch.zeros(3)
    with pytest.raises(ValueError, match=r"'exp_avg' .* of shape \(10,\)"):
        optimizer.step()


def test_messages_name_named_parameters():
    """Given named parameters (PyTorch 2.x), a message names the parameter."""
    model = make_model()
    optimizer = fastopt_torch.SGD(model.named_parameters(), lr=0.1)
    train_step(model, optimizer, 0)
    model[2].bias.grad = model[2].bias.grad.to_sparse()
    with pytest.raises(TypeError, match=r"the gradient of '2\.bias' is sparse"):
        optimizer.step()


def trained_adam(steps: int = 3):
    model = make_model()
    optimizer = fastopt_torch.Adam(model.parameters(), lr=0.01)
    for t in range(steps):
        train_step(model, optimizer, t)
    return model, optimizer


def _set_state(key: str, value) -> Callable[[dict], None]:
    def change(state_dict: dict) -> None:
        state_dict["state"][0][key] = value

    return change


BAD_STATE_DICTS = [
    pytest.param(
        lambda sd: sd["param_groups"][0].update(maximize=True), "maximize=True is not supported", id="maximize"
    ),
    pytest.param(lambda sd: sd["param_groups"][0].update(lr=-0.1), "lr must be >= 0", id="lr"),
    pytest.param(_set_state("exp_avg", torch.zeros(3)), r"'exp_avg' of .* of shape \(8, 6\)", id="shape"),
    pytest.param(_set_state("exp_avg", torch.full((8, 6), float("nan"))), "'exp_avg' .* finite", id="nan"),
    pytest.param(_set_state("step", torch.tensor(-1.0)), "'step' .* whole number >= 0", id="negative-step"),
    pytest.param(_set_state("step", torch.tensor(1.5)), "'step' .* whole number >= 0", id="fractional-step"),
    pytest.param(lambda sd: sd["state"][0].pop("exp_avg_sq"), r"lacks \['exp_avg_sq'\]", id="missing"),
    pytest.param(_set_state("exp_avg_sq", -torch.ones(8, 6)), "'exp_avg_sq' holds negative values", id="negative"),
    pytest.param(lambda sd: sd["param_groups"][0].update(amsgrad=True), r"lacks \['max_exp_avg_sq'\]", id="amsgrad"),
]


@pytest.mark.parametrize(("change", "match"), BAD_STATE_DICTS)
def test_bad_state_dicts_are_refused_and_change_nothing(change, match):
    _, optimizer = trained_adam()
    state_dict = copy.deepcopy(optimizer.state_dict())
    before = copy.deepcopy(optimizer.state_dict())
    change(state_dict)
    with pytest.raises((ValueError, TypeError), match=match):
        optimizer.load_state_dict(state_dict)
    assert_same_state_dicts(optimizer.state_dict(), before)


def test_a_state_dict_for_other_groups_gets_torchs_error():
    _, optimizer = trained_adam()
    state_dict = optimizer.state_dict()
    state_dict["param_groups"] = state_dict["param_groups"] * 2
    with pytest.raises(ValueError, match="different number of parameter groups"):
        optimizer.load_state_dict(state_dict)


def test_an_option_needing_more_state_after_the_first_step_is_refused():
    """amsgrad turned on after the first step would need a max_exp_avg_sq that was never kept."""
    model, optimizer = trained_adam()
    optimizer.param_groups[0]["amsgrad"] = True
    with pytest.raises(ValueError, match=r"lacks \['max_exp_avg_sq'\]"):
        train_step(model, optimizer, 3)


def test_deepcopy_and_pickle_keep_working():
    model, optimizer = trained_adam()
    clone = copy.deepcopy({"model": model, "optimizer": optimizer})
    for t in range(3, 6):
        train_step(model, optimizer, t)
        train_step(clone["model"], clone["optimizer"], t)
    for mine, other in zip(model.parameters(), clone["model"].parameters()):
        assert torch.equal(mine, other)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_fastopt_imports_without_torch_and_fastopt_torch_says_what_to_install():
    """With torch unimportable, ``import fastopt`` works (and never imported torch), and ``import fastopt.torch``
    raises an ImportError naming PyTorch's CPU build."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import fastopt, fastopt.optim\n"
        "try:\n    import fastopt.torch\nexcept ImportError as error:\n    print('ImportError:', error)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "ImportError: fastopt.torch needs PyTorch" in result.stdout
    assert "CPU build" in result.stdout
    result = run_python("import sys, fastopt; print('torch' in sys.modules)")
    assert result.stdout.strip() == "False", result.stderr
