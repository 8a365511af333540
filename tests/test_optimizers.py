"""Optimizer tests, generic over the optimizer table (``tests/optimizer_table.py``): every optimizer and option
against an independent scalar reference and against PyTorch, on every available backend; documented defaults;
state_dict round trips; parameter groups; validation of hyperparameters, parameters, gradients and loaded state
(a refused call changes nothing)."""

from __future__ import annotations

import contextlib
import copy
import inspect
import pickle
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from optimizer_table import TABLE, BadHyperparameter, OptimizerInfo, Variant, reference_run

import fastopt
from fastopt import optim
from fastopt.layers import Dense, ReLU
from fastopt.losses import CrossEntropy
from fastopt.model import Sequential

BACKENDS = fastopt.available_backends()
SHAPES = [(3, 4), (5,), (2, 3, 2)]
N_STEPS = 25
TORCH_STEPS = 300  # the bar: float64, 300 steps, relative 1e-10

ENTRIES = [pytest.param(info, id=info.name) for info in TABLE]
VARIANTS = [
    pytest.param(info, variant, id=f"{info.name}-{variant.name}") for info in TABLE for variant in info.variants
]
TORCH_VARIANTS = [
    pytest.param(info, variant, id=f"{info.name}-{variant.name}")
    for info in TABLE
    if info.torch_class is not None
    for variant in info.variants
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


# ----------------------------------------------------------------------------------- helpers
def make_problem(seed: int = 0, dtype=np.float64, n_steps: int = N_STEPS):
    """Parameters of several shapes and a gradient sequence whose scale varies from step to step
    (so AMSGrad's running maximum differs from v, eps matters, and Adamax's maximum switches)."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    grads = [
        [(rng.standard_normal(shape) * rng.uniform(0.05, 2.0)).astype(dtype) for shape in SHAPES]
        for _ in range(n_steps)
    ]
    return params, grads


def reference_arrays(info: OptimizerInfo, options: dict, params0, grad_seq):
    """The scalar reference applied element by element; returns, per step, the list of float64 parameters."""
    hp = info.hyper(options)
    per_param = []
    for index, param in enumerate(params0):
        flat = param.astype(np.float64).ravel()
        columns = [
            reference_run(info.reference, hp, float(flat[j]), [float(step[index].ravel()[j]) for step in grad_seq])[0]
            for j in range(flat.size)
        ]
        per_param.append(np.array(columns).T.reshape((len(grad_seq), *param.shape)))
    return [[values[t] for values in per_param] for t in range(len(grad_seq))]


def fastopt_run(info: OptimizerInfo, options: dict, params0, grad_seq, backend: str):
    params = [p.copy() for p in params0]
    opt = info.cls(params, **options)
    history = []
    with fastopt.use_backend(backend):
        for grads in grad_seq:
            opt.step([g.copy() for g in grads])
            history.append([p.copy() for p in params])
    return opt, history


def trained(info: OptimizerInfo, options: dict, seed: int = 7, steps: int = 4, n_params: int = 3):
    """An optimizer over ``n_params`` of the problem's parameters after ``steps`` steps; (opt, params)."""
    params, grad_seq = make_problem(seed=seed, n_steps=steps)
    params = params[:n_params]
    opt = info.cls(params, **options)
    for grads in grad_seq:
        opt.step(grads[:n_params])
    return opt, params


def assert_state_dicts_equal(left: dict, right: dict) -> None:
    assert left["optimizer"] == right["optimizer"]
    assert left["step_count"] == right["step_count"]
    assert left["hyperparameters"] == right["hyperparameters"]
    assert left["param_groups"] == right["param_groups"]
    assert len(left["state"]) == len(right["state"])
    for mine, theirs in zip(left["state"], right["state"]):
        assert set(mine) == set(theirs)
        for key in mine:
            assert mine[key].dtype == theirs[key].dtype and mine[key].shape == theirs[key].shape
            assert mine[key].tobytes() == theirs[key].tobytes(), key


def assert_steps_alike(opt, params, twin, twin_params, grad_seq, backend: str | None = None) -> None:
    """``opt`` and ``twin`` take the same steps and keep bit-identical parameters."""
    with fastopt.use_backend(backend) if backend else contextlib.nullcontext():
        for grads in grad_seq:
            opt.step(grads)
            twin.step(grads)
            for got, want in zip(params, twin_params):
                assert got.tobytes() == want.tobytes()


# ----------------------------------------------------------------------------------- the table itself
def test_the_table_covers_every_optimizer():
    assert [info.cls for info in TABLE] == list(dict.fromkeys(info.cls for info in TABLE)), "an optimizer twice"
    assert {info.cls for info in TABLE} == set(optim.OPTIMIZERS.values())


@pytest.mark.parametrize("info", ENTRIES)
def test_the_variants_cover_every_option(info):
    """Each hyperparameter is changed from its default by some variant, every flag is tried both ways, every
    hyperparameter has refused values, and the first variant is plain (lr only)."""
    assert info.variants[0] == Variant("plain", {"lr": info.variants[0].options["lr"]})
    for variant in info.variants:
        assert set(variant.options) <= set(info.defaults), variant.name
    changed = {key for v in info.variants for key, value in v.options.items() if value != info.defaults[key]}
    assert changed == set(info.defaults)
    for key, default in info.defaults.items():
        if isinstance(default, bool):
            assert {info.hyper(v.options)[key] for v in info.variants} == {False, True}, key
    refused = {key for bad in info.bad_hyperparameters for key in bad.options}
    assert refused == set(info.defaults)


# ----------------------------------------------------------------------------------- the math
@pytest.mark.parametrize(("info", "variant"), VARIANTS)
def test_matches_reference_float64(backend, info, variant):
    params0, grad_seq = make_problem(seed=1)
    expected = reference_arrays(info, variant.options, params0, grad_seq)
    opt, history = fastopt_run(info, variant.options, params0, grad_seq, backend)
    assert opt.step_count == N_STEPS
    for t, (got_step, want_step) in enumerate(zip(history, expected), start=1):
        for got, want in zip(got_step, want_step):
            assert got.dtype == np.float64
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14, err_msg=f"step {t}")


@pytest.mark.parametrize(("info", "variant"), VARIANTS)
def test_matches_reference_float32(backend, info, variant):
    params0, grad_seq = make_problem(seed=2, dtype=np.float32)
    expected = reference_arrays(info, variant.options, params0, grad_seq)  # in float64 from the float32 inputs
    _, history = fastopt_run(info, variant.options, params0, grad_seq, backend)
    for t, (got_step, want_step) in enumerate(zip(history, expected), start=1):
        for got, want in zip(got_step, want_step):
            assert got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=f"step {t}")


OPTION_KEYS = [
    pytest.param(info, variant, key, id=f"{info.name}-{variant.name}-without-{key}")
    for info in TABLE
    for variant in info.variants
    for key in variant.options
    if key != "lr"
]


@pytest.mark.parametrize(("info", "variant", "key"), OPTION_KEYS)
def test_every_option_changes_the_trajectory(info, variant, key):
    """Guards the comparisons above: resetting any one keyword of a variant to its default must change the
    reference trajectory, else that variant would not test the option."""
    params0, grad_seq = make_problem(seed=1)
    without = {**variant.options, key: info.defaults[key]}
    with_option = reference_arrays(info, variant.options, params0, grad_seq)[-1]
    reset = reference_arrays(info, without, params0, grad_seq)[-1]
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(with_option, reset)) > 1e-4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("info", "variant"), VARIANTS)
def test_state_buffers_follow_the_options(info, variant, dtype):
    """The state buffers the options need, by name: per-element buffers in the parameters' shape and dtype,
    per-parameter scalars (NAdam's mu_product) as 0-d float64 arrays, whatever the parameters' dtype."""
    params, grad_seq = make_problem(seed=1, dtype=dtype, n_steps=2)
    opt = info.cls(params, **variant.options)
    opt.step(grad_seq[0])
    expected = info.state_names(info.hyper(variant.options))
    for param, state in zip(params, opt.state):
        assert list(state) == list(expected)
        for name, buffer in state.items():
            if name in info.scalar_state:
                assert (buffer.shape, buffer.dtype) == ((), np.float64), name
            else:
                assert (buffer.shape, buffer.dtype) == (param.shape, param.dtype), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("info", "variant"), [p for p in VARIANTS if p.values[0].scalar_state])
def test_scalar_state_follows_the_reference(backend, info, variant, dtype):
    """NAdam's mu_product after each step is the reference's product of the mu_t, in float64 for any dtype."""
    params0, grad_seq = make_problem(seed=1, dtype=dtype)
    params = [p.copy() for p in params0]
    opt = info.cls(params, **variant.options)
    hp = info.hyper(variant.options)
    with fastopt.use_backend(backend):
        for t, grads in enumerate(grad_seq, start=1):
            opt.step(grads)
            _, expected = reference_run(info.reference, hp, 0.0, [0.0] * t)
            for state in opt.state:
                for name in info.scalar_state:
                    assert float(state[name]) == pytest.approx(expected[name], rel=1e-15, abs=0.0), (name, t)


def test_eps_is_added_after_the_bias_corrected_root():
    """A one-step Adam case worked by hand: m = 0.1 g, v = 0.001 g^2, bc1 = 0.1, bc2 = 0.001, so the step
    is lr * g / (|g| + eps); the "epsilon-hat" form would give lr * g / (|g| + eps / sqrt(1000))."""
    param = np.array([0.0, 0.0])
    grad = np.array([0.5, -2.0])
    opt = optim.Adam([param], lr=0.1, eps=0.5)
    opt.step([grad])
    np.testing.assert_allclose(param, [-0.1 * 0.5 / (0.5 + 0.5), 0.1 * 2.0 / (2.0 + 0.5)], rtol=1e-13)


@pytest.mark.parametrize("info", ENTRIES)
def test_defaults_are_the_documented_ones(info):
    """The constructor's signature, the hyperparameters of an optimizer made without options (bound or not)
    and its parameter group all hold the documented defaults."""
    signature = inspect.signature(info.cls.__init__).parameters
    assert {name: signature[name].default for name in info.defaults} == info.defaults
    assert set(signature) == {"self", "params", *info.defaults}
    assert info.cls().hyperparameters == info.defaults
    opt = info.cls([np.zeros(3)])
    assert opt.state_dict()["hyperparameters"] == info.defaults
    assert {k: v for k, v in opt.param_groups[0].items() if k != "params"} == info.defaults


# ----------------------------------------------------------------------------------- PyTorch
@contextlib.contextmanager
def torch_default_float64(torch) -> Iterator[None]:
    """PyTorch keeps NAdam's mu_product and every step count in the default dtype: float64 for the comparison."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def make_torch_optimizer(torch, info: OptimizerInfo, hp: dict, tensors):
    """The PyTorch optimizer of ``info`` with ``hp``, and the scheduler that applies fastopt's ``decay``
    (``lr / (1 + decay (t - 1))``) where PyTorch has no such option (None where it has, or decay is 0)."""
    reference = getattr(torch.optim, info.torch_class)(tensors, **info.torch_options(hp))
    if not info.decay_by_scheduler or hp["decay"] == 0:
        return reference, None
    decay = hp["decay"]
    return reference, torch.optim.lr_scheduler.LambdaLR(reference, lambda epoch: 1.0 / (1.0 + decay * epoch))


@pytest.mark.parametrize(("info", "variant"), TORCH_VARIANTS)
def test_matches_torch(backend, info, variant):
    """float64, 300 steps: every parameter after every step within relative 1e-10 of PyTorch's, and the state
    buffers (NAdam's mu_product included) at the end."""
    torch = pytest.importorskip("torch")
    params0, grad_seq = make_problem(seed=3, n_steps=TORCH_STEPS)
    params = [p.copy() for p in params0]
    opt = info.cls(params, **variant.options)
    with torch_default_float64(torch):
        tensors = [torch.tensor(p.copy(), dtype=torch.float64, requires_grad=True) for p in params0]
        reference, scheduler = make_torch_optimizer(torch, info, info.hyper(variant.options), tensors)
        for t, grads in enumerate(grad_seq, start=1):
            for tensor, grad in zip(tensors, grads):
                tensor.grad = torch.tensor(grad, dtype=torch.float64)
            reference.step()
            if scheduler is not None:
                scheduler.step()
            with fastopt.use_backend(backend):
                opt.step(grads)
            for param, tensor in zip(params, tensors):
                np.testing.assert_allclose(param, tensor.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=f"step {t}")
        for state, tensor in zip(opt.state, tensors):
            theirs = reference.state[tensor]
            for name, buffer in state.items():
                np.testing.assert_allclose(
                    buffer, theirs[info.torch_state_name(name)].numpy(), rtol=1e-10, atol=1e-12, err_msg=name
                )


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


@pytest.mark.parametrize("info", ENTRIES)
def test_apply_reports_the_sum_of_squares_asked_for(backend, info):
    """``apply(grads, squares_of=k)`` returns the sum of squares of ``params[k]`` before the update (the bits of the
    backend's ``sum_of_squares``) and updates every parameter as ``apply(grads)`` does, which returns None; an index
    that names no parameter is refused before anything changes."""
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(5000), rng.standard_normal(40)]
    twins = [param.copy() for param in params]
    with fastopt.use_backend(backend) as current:
        reporting, plain = info.cls(params, lr=0.01), info.cls(twins, lr=0.01)
        for step in range(3):
            grads = [rng.standard_normal(param.shape) for param in params]
            asked = step % 2
            expected = current.sum_of_squares(params[asked])
            assert reporting.apply(grads, squares_of=asked) == expected
            assert plain.apply([grad.copy() for grad in grads]) is None
            for param, twin in zip(params, twins):
                assert param.tobytes() == twin.tobytes()
        before = [param.copy() for param in params]
        for wrong in (2, -1):
            with pytest.raises(IndexError, match="names no parameter"):
                reporting.apply(grads, squares_of=wrong)
        assert reporting.step_count == 3 and all(np.array_equal(a, b) for a, b in zip(params, before))


@pytest.mark.parametrize("info", ENTRIES)
def test_a_pickled_or_copied_optimizer_steps_on_as_the_original(backend, info):
    """An optimizer pickled or deep-copied after steps (``_check_step`` has made its kernel method and the groups'
    kernel options, which are left out) continues with the original's bits, on its own copy of the parameters."""
    rng = np.random.default_rng(11)
    params = [rng.standard_normal(300), rng.standard_normal((4, 5))]
    with fastopt.use_backend(backend):
        opt = info.cls(params, lr=0.01)
        opt.step([rng.standard_normal(param.shape) for param in params])
        twins = [pickle.loads(pickle.dumps(opt)), copy.deepcopy(opt)]
        for _ in range(2):
            grads = [rng.standard_normal(param.shape) for param in params]
            for optimizer in (opt, *twins):
                optimizer.step([grad.copy() for grad in grads])
        for twin in twins:
            assert twin.step_count == opt.step_count == 3
            for param, copied in zip(opt.params, twin.params):
                assert copied is not param and copied.tobytes() == param.tobytes()


def test_a_group_option_set_between_steps_is_used_at_the_next_step(backend):
    """A kernel option written into ``param_groups`` between steps (weight decay here) is the one the next step
    uses: the options each check makes for its steps are made again at every step's check."""
    param, grad = np.ones(3), np.array([1.0, -2.0, 0.5])
    opt = optim.SGD([param], lr=0.1)
    with fastopt.use_backend(backend):
        opt.step([grad])
        opt.param_groups[0]["weight_decay"] = 0.5
        before = param.copy()
        opt.step([grad])
    np.testing.assert_allclose(before - param, 0.1 * (grad + 0.5 * before), rtol=1e-12)


@pytest.mark.parametrize("info", ENTRIES)
def test_lr_without_decay_is_constant(info):
    opt = info.cls([np.zeros(2)], lr=0.02)
    for _ in range(3):
        opt.step([np.ones(2)])
        assert opt.lr == 0.02
    assert opt.step_count == 3


# ----------------------------------------------------------------------------------- state_dict
@pytest.mark.parametrize(("info", "variant"), VARIANTS)
def test_state_dict_round_trip_is_bit_identical(backend, info, variant):
    params0, grad_seq = make_problem(seed=4, n_steps=20)
    params = [p.copy() for p in params0]
    opt = info.cls(params, **variant.options)
    with fastopt.use_backend(backend):
        for grads in grad_seq[:10]:
            opt.step(grads)
        saved = opt.state_dict()
        # a fresh optimizer built with the defaults: loading must restore the hyperparameters as well
        resumed_params = [p.copy() for p in params]
        resumed = info.cls(resumed_params)
        resumed.load_state_dict(saved)
        assert resumed.step_count == 10
        lr, decay = variant.options["lr"], variant.options.get("decay", 0.0)
        assert resumed.lr == pytest.approx(lr / (1 + decay * 10), rel=1e-15)
        assert_state_dicts_equal(resumed.state_dict(), saved)
    assert_steps_alike(opt, params, resumed, resumed_params, grad_seq[10:], backend)
    assert_state_dicts_equal(resumed.state_dict(), opt.state_dict())


@pytest.mark.parametrize("info", ENTRIES)
def test_state_dict_is_a_copy(info):
    opt, _ = trained(info, info.richest.options, seed=5, steps=3)
    reference = opt.state_dict()
    taken = opt.state_dict()
    for state in taken["state"]:
        for buffer in state.values():
            buffer[...] = 123.0
    taken["hyperparameters"]["lr"] = 5.0
    taken["param_groups"][0]["lr"] = 5.0
    taken["param_groups"][0]["params"].append(3)
    taken["step_count"] = 99
    del taken["state"][2]
    assert_state_dicts_equal(opt.state_dict(), reference)
    assert opt.param_groups[0]["lr"] == reference["param_groups"][0]["lr"]


@pytest.mark.parametrize("info", ENTRIES)
def test_loaded_state_is_a_copy(info):
    opt, params = trained(info, info.richest.options, seed=6, steps=3)
    saved = opt.state_dict()
    other = info.cls([p.copy() for p in params], **info.richest.options)
    other.load_state_dict(saved)
    expected = other.state_dict()
    for state in saved["state"]:
        for buffer in state.values():
            buffer[...] = -1.0
    saved["hyperparameters"]["lr"] = 3.0
    saved["param_groups"][0]["lr"] = 3.0
    assert_state_dicts_equal(other.state_dict(), expected)


def _edit(edit: Callable[[dict], object]) -> Callable[[dict], dict]:
    def apply(state_dict: dict) -> dict:
        edit(state_dict)
        return state_dict

    return apply


def _structural_bad_loads(info: OptimizerInfo) -> list[tuple[str, Callable[[dict], object], object, str]]:
    """(id, edit of a state_dict, expected error, message pattern): refusals of the whole, its keys, the step
    count, the hyperparameters and the parameter groups."""
    other = TABLE[(TABLE.index(info) + 1) % len(TABLE)]
    fewer = lambda d: trained(info, info.richest.options, n_params=2)[0].state_dict()  # noqa: E731
    cases = [
        ("not_a_dict", lambda d: [d], TypeError, "state_dict must be a dict"),
        ("other_optimizer", lambda d: trained(other, other.richest.options)[0].state_dict(), ValueError,
         f"is for {other.name}, not {info.name}"),
        ("renamed_optimizer", lambda d: {**d, "optimizer": "Bogus"}, ValueError, "is for Bogus"),
        ("too_few_params", fewer, ValueError, r"must hold parameters 0\.\.2"),
        ("step_count_negative", _edit(lambda d: d.update(step_count=-1)), ValueError, "step_count"),
        ("step_count_float", _edit(lambda d: d.update(step_count=4.0)), ValueError, "step_count"),
        ("step_count_bool", _edit(lambda d: d.update(step_count=True)), ValueError, "step_count"),
        ("step_count_2**53", _edit(lambda d: d.update(step_count=2**53)), ValueError, "below 2"),
        ("hyperparameters_not_a_dict", _edit(lambda d: d.update(hyperparameters=[])), TypeError, "hyperparameters"),
        ("unknown_hyperparameter", _edit(lambda d: d["hyperparameters"].update(bogus=1.0)), ValueError,
         r"unknown \['bogus'\]"),
        ("param_groups_not_a_list", _edit(lambda d: d.update(param_groups="abc")), ValueError, "list of 1 groups"),
        ("param_groups_two", _edit(lambda d: d["param_groups"].append(d["param_groups"][0])), ValueError,
         "list of 1 groups"),
        ("param_group_unknown_key", _edit(lambda d: d["param_groups"][0].update(bogus=1.0)), ValueError,
         r"param_groups\[0\] must hold exactly"),
        ("param_group_lacks_lr", _edit(lambda d: d["param_groups"][0].pop("lr")), ValueError,
         r"param_groups\[0\] must hold exactly"),
        ("param_group_wrong_params", _edit(lambda d: d["param_groups"][0].update(params=[0, 2, 1])), ValueError,
         r"param_groups\[0\] must hold parameters 0\.\.2"),
        ("state_not_a_list", _edit(lambda d: d.update(state=None)), ValueError, "state must be a list"),
        ("state_too_short", _edit(lambda d: d["state"].pop()), ValueError, "holds state for 2 parameters"),
        ("extra_state_buffer", _edit(lambda d: d["state"][0].update(bogus=np.zeros((3, 4)))), ValueError,
         r"state\[0\] must hold exactly"),
    ]  # fmt: skip
    cases += [(f"missing_key_{key}", _edit(lambda d, key=key: d.pop(key)), ValueError, f"lacks \\['{key}'\\]")
              for key in ("optimizer", "step_count", "hyperparameters", "state")]  # fmt: skip
    cases += [(f"missing_hyperparameter_{key}", _edit(lambda d, key=key: d["hyperparameters"].pop(key)), ValueError,
               f"lack \\['{key}'\\]") for key in info.defaults]  # fmt: skip
    return cases


def _buffer_bad_loads(info: OptimizerInfo) -> list[tuple[str, Callable[[dict], object], object, str]]:
    """Refusals of each state buffer of the richest variant: missing, NaN, Inf, wrong shape, dtype or type."""

    def set_buffer(index: int, name: str, make: Callable[[np.ndarray], object]):
        return _edit(lambda d: d["state"][index].update({name: make(d["state"][index][name])}))

    def poke(index: int, name: str, value: float):
        return _edit(lambda d: d["state"][index][name].flat.__setitem__(0, value))

    cases = []
    for name in info.state_names(info.hyper(info.richest.options)):
        where = rf"state\[2\]\['{name}'\]"
        cases += [
            (f"missing_{name}", _edit(lambda d, name=name: d["state"][1].pop(name)), ValueError,
             r"state\[1\] must hold exactly"),
            (f"nan_in_{name}", poke(2, name, np.nan), ValueError, f"{where} contains NaN"),
            (f"inf_in_{name}", poke(2, name, -np.inf), ValueError, f"{where} contains NaN or Inf"),
            (f"{name}_wrong_shape", set_buffer(2, name, lambda b: np.zeros(b.size + 1)), ValueError,
             f"{where} must be a float64 array of shape"),
            (f"{name}_float32", set_buffer(2, name, lambda b: b.astype(np.float32)), ValueError,
             f"{where} must be a float64 array"),
            (f"{name}_a_list", set_buffer(2, name, lambda b: b.tolist()), ValueError, f"{where} must be a float64"),
        ]  # fmt: skip
    return cases


BAD_LOADS = [
    pytest.param(info, make_bad, error, match, id=f"{info.name}-{case}")
    for info in TABLE
    for case, make_bad, error, match in _structural_bad_loads(info) + _buffer_bad_loads(info)
]


def assert_refused_load_changes_nothing(info, options, make_bad, error, match) -> None:
    """Loading ``make_bad(state_dict)`` into a trained optimizer is refused and changes nothing: its state_dict,
    its parameters, and its next step (bit-identical to an untouched twin's)."""
    opt, params = trained(info, options)
    before = opt.state_dict()
    params_before = [p.copy() for p in params]
    bad = make_bad(opt.state_dict())
    with pytest.raises(error, match=match):
        opt.load_state_dict(bad)
    assert_state_dicts_equal(opt.state_dict(), before)
    for param, saved in zip(params, params_before):
        assert param.tobytes() == saved.tobytes()
    twin_params = [p.copy() for p in params]
    twin = info.cls(twin_params, **options)
    twin.load_state_dict(before)
    assert_steps_alike(opt, params, twin, twin_params, make_problem(seed=8, n_steps=2)[1])


@pytest.mark.parametrize(("info", "make_bad", "error", "match"), BAD_LOADS)
def test_load_state_dict_refuses_and_changes_nothing(info, make_bad, error, match):
    assert_refused_load_changes_nothing(info, info.richest.options, make_bad, error, match)


BAD_HYPERPARAMETERS = [
    pytest.param(info, bad, id=f"{info.name}-{bad.id}") for info in TABLE for bad in info.bad_hyperparameters
]


@pytest.mark.parametrize("where", ["hyperparameters", "param_groups"])
@pytest.mark.parametrize(("info", "bad"), BAD_HYPERPARAMETERS)
def test_load_state_dict_refuses_bad_hyperparameters(info, bad, where):
    """The values the constructor refuses (over the defaults) are refused in a loaded state_dict too, as the
    defaults or as a group's options."""

    def make_bad(state_dict: dict) -> dict:
        target = state_dict["hyperparameters"] if where == "hyperparameters" else state_dict["param_groups"][0]
        target.update(bad.options)
        return state_dict

    assert_refused_load_changes_nothing(info, {}, make_bad, bad.error, bad.match)


@pytest.mark.parametrize("info", ENTRIES)
def test_load_state_dict_needs_parameters(info):
    opt, _ = trained(info, info.richest.options)
    with pytest.raises(ValueError, match="parameters"):
        info.cls(**info.richest.options).load_state_dict(opt.state_dict())


# ----------------------------------------------------------------------------------- hyperparameters
@pytest.mark.parametrize("where", ["bound", "unbound", "param_group"])
@pytest.mark.parametrize(("info", "bad"), BAD_HYPERPARAMETERS)
def test_bad_hyperparameters_are_refused(info, bad: BadHyperparameter, where):
    param = np.zeros(3)
    with pytest.raises(bad.error, match=bad.match):
        if where == "bound":
            info.cls([param], **bad.options)
        elif where == "unbound":
            info.cls(**bad.options)
        else:
            info.cls([{"params": [np.zeros(2)]}, {"params": [param], **bad.options}])


EDGES = [
    pytest.param(info, edge, id=f"{info.name}-{','.join(f'{k}={v!r}' for k, v in edge.items())}")
    for info in TABLE
    for edge in info.edge_hyperparameters
]


@pytest.mark.parametrize(("info", "edge"), EDGES)
def test_edge_hyperparameters_are_accepted(info, edge):
    """Values on the closed side of each bound (0, 1 for dampening and alpha, the largest float below 1 for
    the betas), integers, numpy scalars and lists are accepted, normalized (floats, bools, a tuple of betas),
    and a step with them gives finite parameters."""
    param = np.array([0.5, -1.0, 2.0])
    opt = info.cls([param], **edge)
    hyper = opt.state_dict()["hyperparameters"]
    for key, value in edge.items():
        normalized = tuple(float(v) for v in value) if key == "betas" else value
        assert hyper[key] == normalized and type(hyper[key]) is type(info.defaults[key]), key
    opt.step([np.array([0.25, -1.5, 3.0])])
    assert np.isfinite(param).all()


@pytest.mark.parametrize("info", ENTRIES)
def test_hyperparameters_beyond_the_parameters_precision_are_refused(info):
    """lr = 1e39 is finite in float64 but inf in float32: refused when float32 parameters are bound, so that no
    kernel turns every parameter into NaN."""
    with pytest.raises(ValueError, match=r"^lr=1e\+39 is beyond the range of float32"):
        info.cls([np.zeros(3, np.float32)], lr=1e39)
    unbound = info.cls(lr=1e39)
    with pytest.raises(ValueError, match="beyond the range of float32"):
        unbound.bind([np.zeros(2), np.zeros(3, np.float32)])
    assert unbound.params is None
    info.cls([np.zeros(3)], lr=1e39)  # float64 holds it


# ----------------------------------------------------------------------------------- step validation
def _bad_grads(params, opt, good):
    """(description, grads, expected error, message pattern); the first gradient is always valid where
    there is one, so a half-applied step would show."""
    cases = [
        ("too_few", good[:2], ValueError, "2 gradients"),
        ("too_many", [*good, good[0]], ValueError, "4 gradients"),
        ("empty", [], ValueError, "0 gradients"),
        ("wrong_shape", [good[0], good[1][:4], good[2]], ValueError, r"grads\[1\].*shape"),
        ("transposed", [good[0], good[1], good[2].reshape(2, 2, 3)], ValueError, r"grads\[2\].*shape"),
        ("wrong_dtype", [good[0], good[1].astype(np.float32), good[2]], TypeError, r"grads\[1\].*float32"),
        ("int_dtype", [good[0], good[1], good[2].astype(np.int64)], TypeError, r"grads\[2\]"),
        ("is_param", [good[0], params[1], good[2]], ValueError, r"grads\[1\].*share"),
        ("view_of_param", [good[0], good[1], params[2][::-1]], ValueError, r"grads\[2\].*share"),
        ("list_not_array", [good[0], good[1].tolist(), good[2]], TypeError, r"grads\[1\]"),
        ("none_grad", [good[0], None, good[2]], TypeError, r"grads\[1\]"),
        ("grads_none", None, TypeError, "grads"),
        ("grads_string", "abc", TypeError, "grads"),
        ("grads_generator", (g for g in good), TypeError, "grads"),
        ("single_array", good[0], ValueError, "1 gradients"),
    ]
    for name, buffer in opt.state[1].items():
        if buffer.shape == params[1].shape:
            cases.append((f"is_state_{name}", [good[0], buffer, good[2]], ValueError, r"grads\[1\].*share"))
    return cases


@pytest.mark.parametrize(("info", "variant"), VARIANTS)
def test_refused_step_changes_nothing(backend, info, variant):
    params, grad_seq = make_problem(seed=9, n_steps=5)
    opt = info.cls(params, **variant.options)
    twin_params = [p.copy() for p in params]
    twin = info.cls(twin_params, **variant.options)
    assert_steps_alike(opt, params, twin, twin_params, grad_seq[:3], backend)
    with fastopt.use_backend(backend):
        for description, grads, error, match in _bad_grads(params, opt, grad_seq[3]):
            params_before = [p.copy() for p in params]
            state_before = opt.state_dict()
            with pytest.raises(error, match=match):
                opt.step(grads)
            for param, saved in zip(params, params_before):
                assert np.array_equal(param, saved), description
            assert_state_dicts_equal(opt.state_dict(), state_before)
            assert opt.step_count == 3, description
    assert_steps_alike(opt, params, twin, twin_params, grad_seq[3:], backend)


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


@pytest.mark.parametrize(("info", "variant"), VARIANTS)
def test_non_contiguous_grads_give_the_same_result(backend, info, variant):
    params, grad_seq = make_problem(seed=10, n_steps=5)
    contiguous_params = [p.copy() for p in params]
    strided_params = [p.copy() for p in params]
    contiguous = info.cls(contiguous_params, **variant.options)
    strided = info.cls(strided_params, **variant.options)
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


@pytest.mark.parametrize("info", ENTRIES)
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
        (lambda: (lambda a: [{"params": [a]}, {"params": [a]}])(np.zeros(3)), ValueError, "share memory"),
        (lambda: [{"params": [np.zeros(3)]}, np.zeros(3)], TypeError, r"params\[0\] must be a numpy.ndarray"),
        (lambda: [{"params": [np.zeros(3)]}, {"lr": 0.1}], ValueError, "parameter group 1 has no 'params'"),
        (lambda: [{"params": "abc"}], TypeError, r"param_groups\[0\] must be a list"),
        (lambda: [{"params": []}], ValueError, "empty"),
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
        "same_array_in_two_groups",
        "groups_mixed_with_arrays",
        "group_without_params",
        "group_params_a_string",
        "group_of_no_params",
    ],
)
def test_bad_params_are_refused_at_construction(info, make_params, error, match):
    with pytest.raises(error, match=match):
        info.cls(make_params())


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


@pytest.mark.parametrize("info", ENTRIES)
def test_step_without_params_is_refused(info):
    opt = info.cls()
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


# ----------------------------------------------------------------------------------- parameter groups
GROUPED = [pytest.param(info, id=info.name) for info in TABLE if info.param_groups]


def grouped(info: OptimizerInfo, params, with_options: bool = True):
    """``info``'s optimizer over two parameter groups (params[:2], params[2:]), each with its options from the
    table over the plain variant's (the constructor's keywords)."""
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    if with_options:
        groups = [{**group, **options} for group, options in zip(groups, info.param_groups)]
    return info.cls(groups, **info.variants[0].options)


@pytest.mark.parametrize("info", GROUPED)
def test_param_groups_equal_separate_optimizers(backend, info):
    """Each group steps exactly as an optimizer of its own with the group's options would (bit-identical
    parameters and state), a group's lr changed between steps included; the options change the result."""
    params, grad_seq = make_problem(seed=12, n_steps=8)
    base = info.variants[0].options
    together_params = [p.copy() for p in params]
    together = grouped(info, together_params)
    parts = [(slice(0, 2), {**base, **info.param_groups[0]}), (slice(2, 3), {**base, **info.param_groups[1]})]
    separate = [(part, info.cls([p.copy() for p in params[part]], **options)) for part, options in parts]
    _, plain = fastopt_run(info, base, params, grad_seq, backend)
    with fastopt.use_backend(backend):
        for t, grads in enumerate(grad_seq):
            if t == 4:  # as a schedule would: one group's lr, between two steps
                lr = 0.5 * together.param_groups[1]["lr"]
                together.param_groups[1]["lr"] = lr
                separate[1][1].lr = lr
            together.step(grads)
            for part, opt in separate:
                opt.step(grads[part])
    for (part, opt), options in zip(separate, info.param_groups):
        for got, want, state, want_state in zip(together_params[part], opt.params, together.state[part], opt.state):
            assert got.tobytes() == want.tobytes()
            assert list(state) == list(info.state_names(info.hyper({**base, **options})))
            assert all(state[name].tobytes() == want_state[name].tobytes() for name in state)
    assert all(np.abs(got - want).max() > 1e-6 for got, want in zip(together_params, plain[-1]))


@pytest.mark.parametrize("info", GROUPED)
def test_param_groups_state_dict_round_trip(backend, info):
    """A grouped optimizer's state_dict restores each group's options into an optimizer made with the same
    groups but none of their options, which then continues bit-identically."""
    params, grad_seq = make_problem(seed=13, n_steps=10)
    opt = grouped(info, params)
    with fastopt.use_backend(backend):
        for grads in grad_seq[:5]:
            opt.step(grads)
    saved = opt.state_dict()
    assert [group["params"] for group in saved["param_groups"]] == [[0, 1], [2]]
    resumed_params = [p.copy() for p in params]
    resumed = grouped(info, resumed_params, with_options=False)
    resumed.load_state_dict(saved)
    assert_state_dicts_equal(resumed.state_dict(), saved)
    for group, options in zip(resumed.param_groups, info.param_groups):
        assert {key: group[key] for key in options} == {key: info.hyper(options)[key] for key in options}
    assert_steps_alike(opt, params, resumed, resumed_params, grad_seq[5:], backend)
    assert_state_dicts_equal(resumed.state_dict(), opt.state_dict())


@pytest.mark.parametrize("info", GROUPED)
def test_unknown_group_options_are_refused(info):
    foreign = sorted(set().union(*(other.defaults for other in TABLE)) - set(info.defaults))[0]
    for key in ("bogus", foreign):
        with pytest.raises(ValueError, match=rf"unknown {info.name} options in a parameter group: \['{key}'\]"):
            info.cls([{"params": [np.zeros(2)]}, {"params": [np.zeros(3)], key: 0.5}])


LR_REFUSALS = [
    pytest.param(-0.1, ValueError, "^lr must be >= 0", id="negative"),
    pytest.param(float("nan"), ValueError, "^lr must be finite", id="nan"),
    pytest.param(float("inf"), ValueError, "^lr must be finite", id="inf"),
    pytest.param(1e39, ValueError, r"^lr=1e\+39 is beyond the range of float32", id="beyond-float32"),
    pytest.param("0.1", TypeError, "^lr must be a real number", id="string"),
]


@pytest.mark.parametrize("info", GROUPED)
def test_setting_lr_sets_every_group(backend, info):
    """``opt.lr = x`` sets lr of every group (the defaults keep the constructor's value, as PyTorch's schedulers
    leave them: a checkpoint recognises its run by them): the steps are then those of an optimizer made with lr x
    in every group."""
    params, grad_seq = make_problem(seed=14, dtype=np.float32, n_steps=4)
    opt = grouped(info, params)
    constructed = opt.defaults["lr"]
    opt.lr = 0.003
    assert opt.defaults["lr"] == constructed and [group["lr"] for group in opt.param_groups] == [0.003, 0.003]
    assert opt.lr == 0.003
    twin_params = [p.copy() for p in params]
    groups = [{"params": twin_params[:2], **info.param_groups[0]}, {"params": twin_params[2:], **info.param_groups[1]}]
    twin = info.cls([{**group, "lr": 0.003} for group in groups], **{**info.variants[0].options, "lr": 0.003})
    assert_steps_alike(opt, params, twin, twin_params, grad_seq, backend)


@pytest.mark.parametrize(("value", "error", "match"), LR_REFUSALS)
@pytest.mark.parametrize("info", GROUPED)
def test_setting_a_bad_lr_is_refused(info, value, error, match):
    params = make_problem(seed=14, dtype=np.float32, n_steps=0)[0]
    opt = grouped(info, params)
    before = opt.state_dict()
    with pytest.raises(error, match=match):
        opt.lr = value
    assert_state_dicts_equal(opt.state_dict(), before)


@pytest.mark.parametrize(("value", "error", "match"), LR_REFUSALS)
@pytest.mark.parametrize("info", GROUPED)
def test_a_bad_group_lr_is_refused_at_the_next_step(backend, info, value, error, match):
    """``param_groups[i]["lr"]`` written by hand is checked at the next step, before any parameter changes
    (the groups before it included); put right, the optimizer steps as an untouched twin."""
    params, grad_seq = make_problem(seed=15, dtype=np.float32, n_steps=4)
    opt = grouped(info, params)
    twin_params = [p.copy() for p in params]
    twin = grouped(info, twin_params)
    assert_steps_alike(opt, params, twin, twin_params, grad_seq[:2], backend)
    good = opt.param_groups[1]["lr"]
    opt.param_groups[1]["lr"] = value
    check_refused_step(opt, params, grad_seq[2], error, match, backend)
    opt.param_groups[1]["lr"] = good
    assert_steps_alike(opt, params, twin, twin_params, grad_seq[2:], backend)


def check_refused_step(opt, params, grads, error, match, backend: str) -> None:
    """``opt.step(grads)`` is refused and changes no parameter, no state, no step count."""
    before, params_before = opt.state_dict(), [p.copy() for p in params]
    with fastopt.use_backend(backend), pytest.raises(error, match=match):
        opt.step(grads)
    for param, saved in zip(params, params_before):
        assert param.tobytes() == saved.tobytes()
    assert_state_dicts_equal(opt.state_dict(), before)


STATE_CHANGING = [
    pytest.param(info, key, value, id=f"{info.name}-{key}={value!r}")
    for info in TABLE
    for key, value in {k: v for variant in info.variants for k, v in variant.options.items()}.items()
    if info.state_names(info.hyper({key: value})) != info.state_names(info.defaults)
]


@pytest.mark.parametrize(("info", "key", "value"), STATE_CHANGING)
def test_a_group_option_needing_other_state_is_refused(backend, info, key, value):
    """Turning on (or off) an option that needs other state buffers (momentum, centered, amsgrad) in a group
    after the state was made is refused at the next step with nothing changed: the kernels would otherwise
    run silently without it."""
    params, grad_seq = make_problem(seed=16, n_steps=2)
    opt = info.cls([{"params": params[:2]}, {"params": params[2:]}], **info.variants[0].options)
    opt.step(grad_seq[0])
    opt.param_groups[1][key] = value
    check_refused_step(opt, params, grad_seq[1], ValueError, rf"param_groups\[1\]: changing \['{key}'\]", backend)


@pytest.mark.parametrize("info", ENTRIES)
def test_parameters_added_to_a_group_are_refused(backend, info):
    """The state was made for the parameters the optimizer took: one appended to a group later is refused at
    the next step, before any parameter changes."""
    params, grad_seq = make_problem(seed=17, n_steps=2)
    opt = info.cls(params[:2], **info.variants[0].options)
    opt.step(grad_seq[0][:2])
    opt.param_groups[0]["params"].append(params[2])
    check_refused_step(opt, params, grad_seq[1], ValueError, "param_groups hold 3 parameters, the optimizer took 2",
                       backend)  # fmt: skip
