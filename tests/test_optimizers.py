"""Optimizer tests: every optimizer and option against an independent scalar reference (GUIDE §2),
on every available backend; state_dict round trips; validation of hyperparameters, parameters,
gradients and loaded state (a refused call changes nothing)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import fastopt
from fastopt import optim
from fastopt.layers import Dense, ReLU
from fastopt.losses import CrossEntropy
from fastopt.model import Sequential

BACKENDS = fastopt.available_backends()
SHAPES = [(3, 4), (5,), (2, 3, 2)]
N_STEPS = 25

# The defaults of GUIDE §2, written out here so the constructors' defaults are checked too.
GUIDE_DEFAULTS = {
    "SGD": {"lr": 1e-2, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0, "decay": 0.0},
    "AdaGrad": {"lr": 1e-2, "eps": 1e-10, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "decay": 0.0},
    "RMSProp": {
        "lr": 1e-2,
        "alpha": 0.99,
        "eps": 1e-8,
        "momentum": 0.0,
        "centered": False,
        "weight_decay": 0.0,
        "decay": 0.0,
    },
    "Adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False, "decay": 0.0},
    "AdamW": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False, "decay": 0.0},
}

# (optimizer, option under test, constructor keywords). "plain" passes only lr, so the other defaults are used.
CASES = [
    ("SGD", "plain", {"lr": 0.1}),
    ("SGD", "momentum", {"lr": 0.1, "momentum": 0.9}),
    ("SGD", "dampening", {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    ("SGD", "nesterov", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("SGD", "weight_decay", {"lr": 0.1, "weight_decay": 0.2}),
    ("SGD", "weight_decay_momentum", {"lr": 0.1, "momentum": 0.8, "weight_decay": 0.2}),
    ("SGD", "decay", {"lr": 0.1, "momentum": 0.9, "decay": 0.1}),
    ("AdaGrad", "plain", {"lr": 0.1}),
    ("AdaGrad", "weight_decay", {"lr": 0.1, "weight_decay": 0.2}),
    ("AdaGrad", "initial_accumulator_value", {"lr": 0.1, "initial_accumulator_value": 0.5}),
    ("AdaGrad", "eps", {"lr": 0.1, "eps": 0.05}),
    ("AdaGrad", "decay", {"lr": 0.1, "decay": 0.1}),
    ("RMSProp", "plain", {"lr": 0.01}),
    ("RMSProp", "centered", {"lr": 0.01, "centered": True}),
    ("RMSProp", "momentum", {"lr": 0.01, "momentum": 0.9}),
    ("RMSProp", "centered_momentum", {"lr": 0.01, "centered": True, "momentum": 0.9}),
    ("RMSProp", "weight_decay", {"lr": 0.01, "weight_decay": 0.2}),
    ("RMSProp", "alpha_eps", {"lr": 0.01, "alpha": 0.9, "eps": 0.05}),
    ("RMSProp", "decay", {"lr": 0.01, "momentum": 0.5, "decay": 0.1}),
    ("Adam", "plain", {"lr": 0.01}),
    ("Adam", "weight_decay", {"lr": 0.01, "weight_decay": 0.2}),
    ("Adam", "amsgrad", {"lr": 0.01, "betas": (0.9, 0.9), "amsgrad": True}),
    ("Adam", "betas_eps", {"lr": 0.01, "betas": (0.8, 0.95), "eps": 0.05}),
    ("Adam", "decay", {"lr": 0.01, "decay": 0.1}),
    ("AdamW", "plain", {"lr": 0.01}),
    ("AdamW", "weight_decay", {"lr": 0.01, "weight_decay": 0.2}),
    ("AdamW", "amsgrad", {"lr": 0.01, "betas": (0.9, 0.9), "weight_decay": 0.1, "amsgrad": True}),
    ("AdamW", "decay", {"lr": 0.01, "weight_decay": 0.1, "decay": 0.1}),
]
CASE_IDS = [f"{name}-{option}" for name, option, _ in CASES]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


# ----------------------------------------------------------------------------------- the reference
def reference_scalar(name: str, options: dict, p: float, grads: list[float]) -> list[float]:
    """GUIDE §2 for one scalar parameter, in Python floats; returns the parameter after each step."""
    hp = {**GUIDE_DEFAULTS[name], **options}
    lr, decay, wd = hp["lr"], hp["decay"], hp["weight_decay"]
    b = 0.0  # momentum buffer: SGD sets it to g at t=1, RMSProp starts it at 0
    s = hp.get("initial_accumulator_value", 0.0)  # AdaGrad sum of squares
    v = a = m = vmax = 0.0
    history = []
    for t, grad in enumerate(grads, start=1):
        g = float(grad)
        lr_t = lr / (1.0 + decay * (t - 1))
        if name == "SGD":
            mu = hp["momentum"]
            g = g + wd * p
            if mu != 0:
                b = g if t == 1 else mu * b + (1.0 - hp["dampening"]) * g
                g = g + mu * b if hp["nesterov"] else b
            p = p - lr_t * g
        elif name == "AdaGrad":
            g = g + wd * p
            s = s + g * g
            p = p - lr_t * g / (math.sqrt(s) + hp["eps"])
        elif name == "RMSProp":
            alpha, mu = hp["alpha"], hp["momentum"]
            g = g + wd * p
            v = alpha * v + (1.0 - alpha) * g * g
            if hp["centered"]:
                a = alpha * a + (1.0 - alpha) * g
                d = math.sqrt(v - a * a) + hp["eps"]
            else:
                d = math.sqrt(v) + hp["eps"]
            if mu != 0:
                b = mu * b + g / d
                p = p - lr_t * b
            else:
                p = p - lr_t * g / d
        else:  # Adam and AdamW
            b1, b2 = hp["betas"]
            if name == "AdamW":
                p = p * (1.0 - lr_t * wd)
            else:
                g = g + wd * p
            m = b1 * m + (1.0 - b1) * g
            v = b2 * v + (1.0 - b2) * g * g
            if hp["amsgrad"]:
                vmax = max(vmax, v)
                v_used = vmax
            else:
                v_used = v
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            p = p - (lr_t / bc1) * m / (math.sqrt(v_used) / math.sqrt(bc2) + hp["eps"])
        history.append(p)
    return history


def reference_run(name: str, options: dict, params0: list[np.ndarray], grad_seq: list[list[np.ndarray]]):
    """The reference applied element by element; returns, per step, the list of float64 parameters."""
    per_param = []
    for index, param in enumerate(params0):
        flat = param.astype(np.float64).ravel()
        columns = [
            reference_scalar(name, options, float(flat[j]), [float(step[index].ravel()[j]) for step in grad_seq])
            for j in range(flat.size)
        ]
        per_param.append(np.array(columns).T.reshape((len(grad_seq), *param.shape)))
    return [[values[t] for values in per_param] for t in range(len(grad_seq))]


def make_problem(seed: int = 0, dtype=np.float64, n_steps: int = N_STEPS):
    """Parameters of several shapes and a gradient sequence whose scale varies from step to step
    (so AMSGrad's running maximum differs from v and eps matters)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    grads = [
        [(rng.standard_normal(shape) * rng.uniform(0.05, 2.0)).astype(dtype) for shape in SHAPES]
        for _ in range(n_steps)
    ]
    return params, grads


def fastopt_run(name: str, options: dict, params0, grad_seq, backend: str):
    params = [p.copy() for p in params0]
    opt = getattr(optim, name)(params, **options)
    history = []
    with fastopt.use_backend(backend):
        for grads in grad_seq:
            opt.step([g.copy() for g in grads])
            history.append([p.copy() for p in params])
    return opt, history


# ----------------------------------------------------------------------------------- the math
@pytest.mark.parametrize(("name", "option", "options"), CASES, ids=CASE_IDS)
def test_matches_reference_float64(backend, name, option, options):
    params0, grad_seq = make_problem(seed=1)
    expected = reference_run(name, options, params0, grad_seq)
    opt, history = fastopt_run(name, options, params0, grad_seq, backend)
    assert opt.step_count == N_STEPS
    for t, (got_step, want_step) in enumerate(zip(history, expected), start=1):
        for got, want in zip(got_step, want_step):
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")


@pytest.mark.parametrize(("name", "option", "options"), CASES, ids=CASE_IDS)
def test_matches_reference_float32(backend, name, option, options):
    params0, grad_seq = make_problem(seed=2, dtype=np.float32)
    expected = reference_run(name, options, params0, grad_seq)  # computed in float64 from the float32 inputs
    _, history = fastopt_run(name, options, params0, grad_seq, backend)
    for t, (got_step, want_step) in enumerate(zip(history, expected), start=1):
        for got, want in zip(got_step, want_step):
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")


OPTION_KEYS = [(name, options, key) for name, _, options in CASES for key in options if key != "lr"]


@pytest.mark.parametrize(
    ("name", "options", "key"),
    OPTION_KEYS,
    ids=[f"{name}-{'-'.join(options)}-without-{key}" for name, options, key in OPTION_KEYS],
)
def test_every_option_changes_the_trajectory(name, options, key):
    """Guards the comparisons above: resetting any one keyword of a case to its default must change the
    reference trajectory, else that case would not test the option."""
    params0, grad_seq = make_problem(seed=1)
    without = {**options, key: GUIDE_DEFAULTS[name][key]}
    with_option = reference_run(name, options, params0, grad_seq)[-1]
    reset = reference_run(name, without, params0, grad_seq)[-1]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(with_option, reset)) > 1e-4


def test_eps_is_added_after_the_bias_corrected_root():
    """A one-step Adam case worked by hand: m = 0.1 g, v = 0.001 g^2, bc1 = 0.1, bc2 = 0.001, so the step
    is lr * g / (|g| + eps); the "epsilon-hat" form would give lr * g / (|g| + eps / sqrt(1000))."""
    param = np.array([0.0, 0.0])
    grad = np.array([0.5, -2.0])
    opt = optim.Adam([param], lr=0.1, eps=0.5)
    opt.step([grad])
    np.testing.assert_allclose(param, [-0.1 * 0.5 / (0.5 + 0.5), 0.1 * 2.0 / (2.0 + 0.5)], rtol=1e-13)


@pytest.mark.parametrize("name", list(GUIDE_DEFAULTS))
def test_defaults_follow_the_guide(name):
    opt = getattr(optim, name)([np.zeros(3)])
    hyper = opt.state_dict()["hyperparameters"]
    expected = GUIDE_DEFAULTS[name]
    assert set(hyper) == set(expected)
    for key, value in expected.items():
        if key == "betas":
            assert tuple(hyper[key]) == value
        else:
            assert hyper[key] == value, key


@pytest.mark.parametrize(("name", "option", "options"), CASES, ids=CASE_IDS)
def test_matches_torch(backend, name, option, options):
    torch = pytest.importorskip("torch")
    hp = {**GUIDE_DEFAULTS[name], **options}
    params0, grad_seq = make_problem(seed=3)
    tensors = [torch.tensor(p.copy(), dtype=torch.float64, requires_grad=True) for p in params0]
    common = {"lr": hp["lr"], "weight_decay": hp["weight_decay"]}
    if name == "SGD":
        reference = torch.optim.SGD(
            tensors, momentum=hp["momentum"], dampening=hp["dampening"], nesterov=hp["nesterov"], **common
        )
    elif name == "AdaGrad":
        reference = torch.optim.Adagrad(
            tensors, eps=hp["eps"], initial_accumulator_value=hp["initial_accumulator_value"], **common
        )
    elif name == "RMSProp":
        reference = torch.optim.RMSprop(
            tensors, alpha=hp["alpha"], eps=hp["eps"], momentum=hp["momentum"], centered=hp["centered"], **common
        )
    else:
        cls = torch.optim.Adam if name == "Adam" else torch.optim.AdamW
        reference = cls(tensors, betas=hp["betas"], eps=hp["eps"], amsgrad=hp["amsgrad"], **common)
    decay = hp["decay"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(reference, lambda epoch: 1.0 / (1.0 + decay * epoch))
    params = [p.copy() for p in params0]
    opt = getattr(optim, name)(params, **options)
    for grads in grad_seq[:20]:
        for tensor, grad in zip(tensors, grads):
            tensor.grad = torch.tensor(grad, dtype=torch.float64)
        reference.step()
        scheduler.step()
        with fastopt.use_backend(backend):
            opt.step(grads)
        for param, tensor in zip(params, tensors):
            np.testing.assert_allclose(param, tensor.detach().numpy(), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------- lr and step_count
def test_lr_property_follows_decay_and_step_count(backend):
    param = np.ones(3)
    opt = optim.SGD([param], lr=0.3, decay=0.5)
    assert opt.step_count == 0
    assert opt.lr == pytest.approx(0.3, rel=1e-15)
    grad = np.array([1.0, -2.0, 0.5])
    with fastopt.use_backend(backend):
        for t in range(1, 6):
            lr_before = opt.lr
            assert lr_before == pytest.approx(0.3 / (1 + 0.5 * (t - 1)), rel=1e-15)
            before = param.copy()
            opt.step([grad])
            assert opt.step_count == t
            # plain SGD: the step t moved the parameter by exactly lr_t * g
            np.testing.assert_allclose(before - param, lr_before * grad, rtol=1e-12)
    assert opt.lr == pytest.approx(0.3 / (1 + 0.5 * 5), rel=1e-15)


@pytest.mark.parametrize("name", list(GUIDE_DEFAULTS))
def test_lr_without_decay_is_constant(name):
    opt = getattr(optim, name)([np.zeros(2)], lr=0.02)
    for _ in range(3):
        opt.step([np.ones(2)])
        assert opt.lr == 0.02
    assert opt.step_count == 3


# ----------------------------------------------------------------------------------- state_dict
def assert_state_dicts_equal(left: dict, right: dict) -> None:
    assert left["optimizer"] == right["optimizer"]
    assert left["step_count"] == right["step_count"]
    assert left["hyperparameters"] == right["hyperparameters"]
    assert len(left["state"]) == len(right["state"])
    for mine, theirs in zip(left["state"], right["state"]):
        assert set(mine) == set(theirs)
        for key in mine:
            assert mine[key].dtype == theirs[key].dtype
            assert np.array_equal(mine[key], theirs[key])


@pytest.mark.parametrize(("name", "option", "options"), CASES, ids=CASE_IDS)
def test_state_dict_round_trip_is_bit_identical(backend, name, option, options):
    params0, grad_seq = make_problem(seed=4, n_steps=20)
    params = [p.copy() for p in params0]
    opt = getattr(optim, name)(params, **options)
    with fastopt.use_backend(backend):
        for grads in grad_seq[:10]:
            opt.step(grads)
        saved = opt.state_dict()
        at_ten = [p.copy() for p in params]
        continued = []
        for grads in grad_seq[10:]:
            opt.step(grads)
            continued.append([p.copy() for p in params])
        # a fresh optimizer built with the defaults: loading must restore the hyperparameters as well
        resumed_params = [p.copy() for p in at_ten]
        resumed = getattr(optim, name)(resumed_params)
        resumed.load_state_dict(saved)
        assert resumed.step_count == 10
        assert resumed.lr == pytest.approx(options["lr"] / (1 + options.get("decay", 0.0) * 10), rel=1e-15)
        for t, grads in enumerate(grad_seq[10:]):
            resumed.step(grads)
            for got, want in zip(resumed_params, continued[t]):
                assert np.array_equal(got, want), f"step {t + 11}"
    assert_state_dicts_equal(resumed.state_dict(), opt.state_dict())


def test_state_dict_is_a_copy():
    params, grad_seq = make_problem(seed=5, n_steps=3)
    opt = optim.Adam(params, lr=0.01, amsgrad=True)
    for grads in grad_seq:
        opt.step(grads)
    reference = opt.state_dict()
    taken = opt.state_dict()
    taken["state"][0]["exp_avg"][...] = 123.0
    taken["state"][1]["max_exp_avg_sq"].fill(7.0)
    taken["hyperparameters"]["lr"] = 5.0
    taken["step_count"] = 99
    del taken["state"][2]
    assert_state_dicts_equal(opt.state_dict(), reference)
    assert opt.lr == 0.01


def test_loaded_state_is_a_copy():
    params, grad_seq = make_problem(seed=6, n_steps=3)
    opt = optim.RMSProp(params, centered=True, momentum=0.5)
    for grads in grad_seq:
        opt.step(grads)
    saved = opt.state_dict()
    other = optim.RMSProp([p.copy() for p in params], centered=True, momentum=0.5)
    other.load_state_dict(saved)
    expected = other.state_dict()
    saved["state"][0]["square_avg"][...] = -1.0
    saved["hyperparameters"]["lr"] = 3.0
    assert_state_dicts_equal(other.state_dict(), expected)


def _trained_adam(n_params: int = 3, steps: int = 4) -> tuple[optim.Adam, list[np.ndarray]]:
    params, grad_seq = make_problem(seed=7, n_steps=steps)
    params = params[:n_params]
    opt = optim.Adam(params, lr=0.01, amsgrad=True)
    for grads in grad_seq:
        opt.step(grads[:n_params])
    return opt, params


def _edit(edit):
    def apply(state_dict: dict) -> dict:
        edit(state_dict)
        return state_dict

    return apply


def _set_hyper(key, value):
    return _edit(lambda d: d["hyperparameters"].__setitem__(key, value))


def _del_hyper(key):
    return _edit(lambda d: d["hyperparameters"].pop(key))


BAD_LOADS = [
    ("wrong_optimizer", lambda d: optim.SGD([np.zeros(3)], momentum=0.9).state_dict(), ValueError, "SGD"),
    ("wrong_optimizer_subclass", lambda d: {**d, "optimizer": "AdamW"}, ValueError, "AdamW"),
    ("too_few_params", lambda d: _trained_adam(n_params=2)[0].state_dict(), ValueError, r"parameters 0\.\.2"),
    ("state_not_a_list", _edit(lambda d: d.__setitem__("state", None)), (ValueError, TypeError), "state"),
    ("state_wrong_shape", _edit(lambda d: d["state"][1].__setitem__("exp_avg", np.zeros(6))), ValueError, "shape"),
    (
        "state_wrong_dtype",
        _edit(lambda d: d["state"][0].__setitem__("exp_avg_sq", d["state"][0]["exp_avg_sq"].astype(np.float32))),
        ValueError,
        r"state\[0\]\['exp_avg_sq'\] must be a float64",
    ),
    (
        "state_not_an_array",
        _edit(lambda d: d["state"][2].__setitem__("exp_avg", d["state"][2]["exp_avg"].tolist())),
        (ValueError, TypeError),
        r"state\[2\]\['exp_avg'\]",
    ),
    ("missing_state_buffer", _edit(lambda d: d["state"][1].pop("max_exp_avg_sq")), ValueError, r"state\[1\]"),
    (
        "extra_state_buffer",
        _edit(lambda d: d["state"][0].__setitem__("momentum_buffer", np.zeros((3, 4)))),
        ValueError,
        r"state\[0\]",
    ),
    ("missing_key_state", _edit(lambda d: d.pop("state")), ValueError, "state"),
    ("missing_key_step_count", _edit(lambda d: d.pop("step_count")), ValueError, "step_count"),
    ("missing_key_hyperparameters", _edit(lambda d: d.pop("hyperparameters")), ValueError, "hyperparameters"),
    ("missing_hyperparameter_eps", _del_hyper("eps"), (ValueError, TypeError), "eps"),
    ("missing_hyperparameter_lr", _del_hyper("lr"), (ValueError, TypeError), "lr"),
    ("nan_in_state", _edit(lambda d: d["state"][2]["exp_avg"].__setitem__((0, 1, 0), np.nan)), ValueError, "NaN"),
    ("inf_in_state", _edit(lambda d: d["state"][0]["exp_avg_sq"].__setitem__((2, 3), np.inf)), ValueError, "Inf"),
    ("negative_lr", _set_hyper("lr", -0.1), ValueError, "lr"),
    ("nan_lr", _set_hyper("lr", float("nan")), ValueError, "lr"),
    ("beta1_one", _set_hyper("betas", (1.0, 0.999)), ValueError, "beta1"),
    ("betas_not_pair", _set_hyper("betas", 0.9), TypeError, "betas"),
    ("amsgrad_not_bool", _set_hyper("amsgrad", "yes"), TypeError, "amsgrad"),
    ("negative_step_count", _edit(lambda d: d.__setitem__("step_count", -1)), ValueError, "step_count"),
    ("float_step_count", _edit(lambda d: d.__setitem__("step_count", 4.0)), ValueError, "step_count"),
    ("not_a_dict", lambda d: [d], TypeError, "dict"),
]


@pytest.mark.parametrize(("make_bad", "error", "match"), [b[1:] for b in BAD_LOADS], ids=[b[0] for b in BAD_LOADS])
def test_load_state_dict_refuses_and_changes_nothing(make_bad, error, match):
    opt, params = _trained_adam()
    before = opt.state_dict()
    params_before = [p.copy() for p in params]
    bad = make_bad(opt.state_dict())
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    assert_state_dicts_equal(opt.state_dict(), before)
    for param, saved in zip(params, params_before):
        assert np.array_equal(param, saved)
    # and the optimizer still steps exactly like an untouched twin
    twin_params = [p.copy() for p in params]
    twin = optim.Adam(twin_params, lr=0.01, amsgrad=True)
    twin.load_state_dict(before)
    grads = make_problem(seed=8, n_steps=1)[1][0]
    opt.step(grads)
    twin.step(grads)
    for got, want in zip(params, twin_params):
        assert np.array_equal(got, want)


def test_load_state_dict_needs_parameters():
    opt, _ = _trained_adam()
    with pytest.raises(ValueError, match="parameters"):
        optim.Adam(amsgrad=True).load_state_dict(opt.state_dict())


# ----------------------------------------------------------------------------------- hyperparameters
BAD_HYPERPARAMETERS = [
    ("SGD", {"lr": -0.1}, ValueError, "lr"),
    ("AdaGrad", {"lr": -1e-3}, ValueError, "lr"),
    ("RMSProp", {"lr": -1.0}, ValueError, "lr"),
    ("Adam", {"lr": -1e-3}, ValueError, "lr"),
    ("AdamW", {"lr": -1e-3}, ValueError, "lr"),
    ("SGD", {"lr": float("nan")}, ValueError, "lr"),
    ("Adam", {"lr": float("nan")}, ValueError, "lr"),
    ("AdaGrad", {"lr": float("inf")}, ValueError, "lr"),
    ("SGD", {"lr": "0.1"}, TypeError, "lr"),
    ("Adam", {"lr": None}, TypeError, "lr"),
    ("AdaGrad", {"eps": -1e-10}, ValueError, "eps"),
    ("RMSProp", {"eps": -1e-8}, ValueError, "eps"),
    ("Adam", {"eps": -1e-8}, ValueError, "eps"),
    ("Adam", {"eps": float("nan")}, ValueError, "eps"),
    ("Adam", {"betas": (1.0, 0.999)}, ValueError, "beta1"),
    ("Adam", {"betas": (0.9, 1.0)}, ValueError, "beta2"),
    ("Adam", {"betas": (-0.1, 0.999)}, ValueError, "beta1"),
    ("Adam", {"betas": (0.9, -0.1)}, ValueError, "beta2"),
    ("AdamW", {"betas": (1.5, 0.999)}, ValueError, "beta1"),
    ("AdamW", {"betas": (0.9, 1.0)}, ValueError, "beta2"),
    ("Adam", {"betas": 0.9}, TypeError, "betas"),
    ("Adam", {"betas": (0.9,)}, TypeError, "betas"),
    ("AdamW", {"betas": (0.9, 0.99, 0.999)}, TypeError, "betas"),
    ("SGD", {"momentum": -0.1}, ValueError, "momentum"),
    ("RMSProp", {"momentum": -0.5}, ValueError, "momentum"),
    ("SGD", {"momentum": 0.9, "dampening": 1.5}, ValueError, "dampening"),
    ("SGD", {"momentum": 0.9, "dampening": -0.5}, ValueError, "dampening"),
    ("RMSProp", {"alpha": 1.01}, ValueError, "alpha"),
    ("RMSProp", {"alpha": -0.1}, ValueError, "alpha"),
    ("SGD", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ("AdaGrad", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ("RMSProp", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ("Adam", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ("AdamW", {"weight_decay": -1e-4}, ValueError, "weight_decay"),
    ("SGD", {"decay": -0.1}, ValueError, "^decay"),
    ("AdaGrad", {"decay": -0.1}, ValueError, "^decay"),
    ("RMSProp", {"decay": -0.1}, ValueError, "^decay"),
    ("Adam", {"decay": -0.1}, ValueError, "^decay"),
    ("AdamW", {"decay": float("nan")}, ValueError, "^decay"),
    ("AdaGrad", {"initial_accumulator_value": -0.1}, ValueError, "initial_accumulator_value"),
    ("SGD", {"nesterov": True}, ValueError, "nesterov"),
    ("SGD", {"nesterov": True, "momentum": 0.9, "dampening": 0.1}, ValueError, "nesterov"),
    ("SGD", {"nesterov": 1, "momentum": 0.9}, TypeError, "nesterov"),
    ("SGD", {"nesterov": "yes", "momentum": 0.9}, TypeError, "nesterov"),
    ("RMSProp", {"centered": 1}, TypeError, "centered"),
    ("RMSProp", {"centered": None}, TypeError, "centered"),
    ("Adam", {"amsgrad": 1}, TypeError, "amsgrad"),
    ("AdamW", {"amsgrad": "False"}, TypeError, "amsgrad"),
    ("SGD", {"momentum": True}, TypeError, "momentum"),
]


@pytest.mark.parametrize(
    ("name", "options", "error", "match"),
    BAD_HYPERPARAMETERS,
    ids=[f"{n}-{next(iter(o))}={next(iter(o.values()))!r}" for n, o, _, _ in BAD_HYPERPARAMETERS],
)
@pytest.mark.parametrize("with_params", [True, False], ids=["bound", "unbound"])
def test_bad_hyperparameters_are_refused(name, options, error, match, with_params):
    param = np.zeros(3)
    args = ([param],) if with_params else ()
    with pytest.raises(error, match=match):
        getattr(optim, name)(*args, **options)


def test_edge_hyperparameters_are_accepted():
    param = np.zeros(2)
    optim.SGD([param.copy()], lr=0.0, momentum=0.0, dampening=1.0)
    optim.Adam([param.copy()], betas=(0.0, 0.0), eps=0.0)
    optim.RMSProp([param.copy()], alpha=1.0, momentum=0.0)
    optim.SGD([param.copy()], momentum=0.5, nesterov=np.bool_(True))
    opt = optim.AdamW([param.copy()], betas=[0.5, 0.5])
    assert tuple(opt.state_dict()["hyperparameters"]["betas"]) == (0.5, 0.5)


# ----------------------------------------------------------------------------------- step validation
STATEFUL = [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}),
    ("AdaGrad", {"lr": 0.1}),
    ("RMSProp", {"lr": 0.01, "centered": True, "momentum": 0.5}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01}),
]
STATEFUL_IDS = [name for name, _ in STATEFUL]


def _bad_grads(params, opt, good):
    """(description, grads, expected error, message pattern); the first gradient is always valid where
    there is one, so a half-applied step would show."""
    first_state = next(iter(opt.state[1].values()))
    return [
        ("too_few", good[:2], ValueError, "2 gradients"),
        ("too_many", [*good, good[0]], ValueError, "4 gradients"),
        ("empty", [], ValueError, "0 gradients"),
        ("wrong_shape", [good[0], good[1][:4], good[2]], ValueError, r"grads\[1\].*shape"),
        ("transposed", [good[0], good[1], good[2].reshape(2, 2, 3)], ValueError, r"grads\[2\].*shape"),
        ("wrong_dtype", [good[0], good[1].astype(np.float32), good[2]], TypeError, r"grads\[1\].*float32"),
        ("int_dtype", [good[0], good[1], good[2].astype(np.int64)], TypeError, r"grads\[2\]"),
        ("is_param", [good[0], params[1], good[2]], ValueError, r"grads\[1\].*share"),
        ("view_of_param", [good[0], good[1], params[2][::-1]], ValueError, r"grads\[2\].*share"),
        ("is_state", [good[0], first_state, good[2]], ValueError, r"grads\[1\].*share"),
        ("list_not_array", [good[0], good[1].tolist(), good[2]], TypeError, r"grads\[1\]"),
        ("none_grad", [good[0], None, good[2]], TypeError, r"grads\[1\]"),
        ("grads_none", None, TypeError, "grads"),
        ("grads_string", "abc", TypeError, "grads"),
        ("grads_generator", (g for g in good), TypeError, "grads"),
        ("single_array", good[0], ValueError, "1 gradients"),
    ]


@pytest.mark.parametrize(("name", "options"), STATEFUL, ids=STATEFUL_IDS)
def test_refused_step_changes_nothing(backend, name, options):
    params, grad_seq = make_problem(seed=9, n_steps=4)
    opt = getattr(optim, name)(params, **options)
    twin_params = [p.copy() for p in params]
    twin = getattr(optim, name)(twin_params, **options)
    with fastopt.use_backend(backend):
        for grads in grad_seq[:3]:
            opt.step(grads)
            twin.step(grads)
        good = grad_seq[3]
        for description, grads, error, match in _bad_grads(params, opt, good):
            params_before = [p.copy() for p in params]
            state_before = opt.state_dict()
            with pytest.raises(error, match=match):
                opt.step(grads)
            for param, saved in zip(params, params_before):
                assert np.array_equal(param, saved), description
            assert_state_dicts_equal(opt.state_dict(), state_before)
            assert opt.step_count == 3, description
        opt.step(good)
        twin.step(good)
    for got, want in zip(params, twin_params):
        assert np.array_equal(got, want)


def test_grad_aliasing_another_parameter_is_refused_or_harmless(backend):
    """grads[1] is params[0]: a step must either refuse it or behave as if it were a copy taken before the
    step. Updating params[0] first and then reading it as the gradient of params[1] is neither."""
    params = [np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.5, 4.0])]
    twin = [p.copy() for p in params]
    opt = optim.SGD(params, lr=0.5)
    twin_opt = optim.SGD(twin, lr=0.5)
    first = np.array([1.0, 1.0, 1.0])
    with fastopt.use_backend(backend):
        twin_opt.step([first, twin[0].copy()])
        try:
            opt.step([first, params[0]])
        except ValueError:
            assert np.array_equal(params[0], [1.0, 2.0, 3.0])
            assert np.array_equal(params[1], [-1.0, 0.5, 4.0])
            assert opt.step_count == 0
            return
    for got, want in zip(params, twin):
        assert np.array_equal(got, want)


@pytest.mark.parametrize(("name", "options"), STATEFUL, ids=STATEFUL_IDS)
def test_non_contiguous_grads_give_the_same_result(backend, name, options):
    params, grad_seq = make_problem(seed=10, n_steps=5)
    contiguous_params = [p.copy() for p in params]
    strided_params = [p.copy() for p in params]
    contiguous = getattr(optim, name)(contiguous_params, **options)
    strided = getattr(optim, name)(strided_params, **options)
    with fastopt.use_backend(backend):
        for grads in grad_seq:
            wide = np.zeros((3, 8))
            wide[:, ::2] = grads[0]
            long = np.zeros(10)
            long[::2] = grads[1]
            fortran = np.asfortranarray(grads[2])
            views = [wide[:, ::2], long[::2], fortran]
            assert not any(view.flags.c_contiguous for view in views)
            copies = [v.copy() for v in views]
            strided.step(views)
            contiguous.step(grads)
            for view, saved in zip(views, copies):
                assert np.array_equal(view, saved)  # gradients are read, never written
            for got, want in zip(strided_params, contiguous_params):
                assert np.array_equal(got, want)


def test_read_only_grads_are_accepted():
    param = np.zeros(3)
    grad = np.array([1.0, 2.0, 3.0])
    grad.flags.writeable = False
    optim.SGD([param], lr=0.5).step([grad])
    assert np.array_equal(param, [-0.5, -1.0, -1.5])


# ----------------------------------------------------------------------------------- parameter validation
def _read_only(shape):
    array = np.zeros(shape)
    array.flags.writeable = False
    return array


@pytest.mark.parametrize("name", list(GUIDE_DEFAULTS))
@pytest.mark.parametrize(
    ("make_params", "error", "match"),
    [
        (lambda: [np.zeros((3, 4))[:, ::2]], ValueError, r"params\[0\].*C-contiguous"),
        (lambda: [np.zeros(3), np.asfortranarray(np.zeros((3, 4)))], ValueError, r"params\[1\].*C-contiguous"),
        (lambda: [np.zeros(3), _read_only(4)], ValueError, r"params\[1\].*read-only"),
        (lambda: [np.zeros(3, dtype=np.int64)], TypeError, r"params\[0\].*float32 or float64"),
        (lambda: [np.zeros(3, dtype=np.float16)], TypeError, r"params\[0\].*float32 or float64"),
        (lambda: [np.zeros(3, dtype=np.complex128)], TypeError, r"params\[0\]"),
        (lambda: (lambda a: [a, a])(np.zeros(3)), ValueError, r"params\[1\] and params\[0\] share memory"),
        (lambda: (lambda a: [a[:6], np.zeros(2), a[4:]])(np.zeros(10)), ValueError, "share memory"),
        (lambda: (lambda a: [a, a.reshape(2, 2)])(np.zeros(4)), ValueError, "share memory"),
        (lambda: [], ValueError, "empty"),
        (lambda: [[1.0, 2.0]], TypeError, r"params\[0\]"),
        (lambda: 3.0, TypeError, "params"),
    ],
    ids=[
        "strided",
        "fortran",
        "read_only",
        "int",
        "float16",
        "complex",
        "same_array_twice",
        "overlapping_views",
        "reshaped_view",
        "empty",
        "list_of_lists",
        "scalar",
    ],
)
def test_bad_params_are_refused_at_construction(name, make_params, error, match):
    with pytest.raises(error, match=match):
        getattr(optim, name)(make_params())


def test_disjoint_views_of_one_buffer_are_accepted():
    buffer = np.zeros(10)
    views = [buffer[:4], buffer[4:]]
    opt = optim.SGD(views, lr=1.0)
    opt.step([np.ones(4), np.full(6, 2.0)])
    assert np.array_equal(buffer, [-1.0] * 4 + [-2.0] * 6)


def test_float32_params_are_accepted_and_keep_their_dtype():
    param = np.ones(3, dtype=np.float32)
    opt = optim.Adam([param], lr=0.1, amsgrad=True)
    opt.step([np.ones(3, dtype=np.float32)])
    assert param.dtype == np.float32
    assert all(buffer.dtype == np.float32 for buffer in opt.state_dict()["state"][0].values())
    np.testing.assert_allclose(param, 0.9, rtol=1e-6)


@pytest.mark.parametrize("name", list(GUIDE_DEFAULTS))
def test_step_without_params_is_refused(name):
    opt = getattr(optim, name)()
    with pytest.raises(ValueError, match="no parameters"):
        opt.step([np.zeros(3)])
    assert opt.step_count == 0


def test_bound_optimizer_cannot_be_bound_again():
    opt = optim.Adam([np.zeros(3)])
    with pytest.raises(ValueError, match="already has parameters"):
        opt.bind([np.zeros(3)])


def _tiny_model() -> tuple[Sequential, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    model = Sequential([Dense(4, 5), ReLU(), Dense(5, 3)], dtype="float64", seed=0)
    return model, rng.standard_normal((12, 4)), rng.integers(0, 3, 12)


def test_fit_refuses_an_optimizer_bound_to_other_arrays():
    model, X, y = _tiny_model()
    other = np.zeros(7)
    opt = optim.Adam([other])
    before = model.parameters.copy()
    with pytest.raises(ValueError, match="already has parameters"):
        model.fit(X, y, loss=CrossEntropy(), optimizer=opt, epochs=1, batch_size=4)
    assert np.array_equal(model.parameters, before)
    assert np.array_equal(other, np.zeros(7))
    assert opt.step_count == 0


def test_fit_refuses_an_optimizer_bound_to_another_model():
    first, X, y = _tiny_model()
    second, _, _ = _tiny_model()
    opt = optim.SGD(lr=0.1, momentum=0.9)
    first.fit(X, y, optimizer=opt, epochs=1, batch_size=4, shuffle=False)
    assert opt.step_count == 3
    before = second.parameters.copy()
    with pytest.raises(ValueError, match="already has parameters"):
        second.fit(X, y, optimizer=opt, epochs=1, batch_size=4)
    assert np.array_equal(second.parameters, before)
    # the model it belongs to keeps training with it
    first.fit(X, y, optimizer=opt, epochs=1, batch_size=4, shuffle=False)
    assert opt.step_count == 6
