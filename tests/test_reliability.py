"""Reliability, round 2 (issue 12): fork and threads, parameters that changed under their optimizer, non-finite
gradients under a finite loss, concurrent calls on one model, all-or-nothing steps, impossible optimizer states."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import threading
import warnings

import numpy as np
import pytest

import fastopt
from fastopt import layers, losses, optim

BACKENDS = fastopt.available_backends()
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


# ------------------------------------------------------------------------------------------ 1. fork
def _adam_steps_in_a_child(size: int) -> float:
    """An Adam step large enough to run on every thread, in whatever process runs this."""
    param = np.zeros(size, np.float32)
    opt = optim.Adam([param])
    opt.step([np.ones(size, np.float32)])
    return float(param[0])


def _warm_the_thread_pool() -> None:
    """Run multi-threaded kernels in this process first: libgomp's pool then exists when the children fork."""
    fastopt.set_num_threads(2)
    _adam_steps_in_a_child(2**20)


@needs_fork
@pytest.mark.skipif("cython" not in BACKENDS, reason="the compiled backend is not built")
@pytest.mark.parametrize("pool", ["process-pool-executor", "multiprocessing-pool"])
def test_forked_children_train_after_the_parent_used_threads(pool: str) -> None:
    """A child forked after a parallel region used to hang in its first one (libgomp's pool does not survive fork);
    children now run the kernels serially, with the parent's results."""
    _warm_the_thread_pool()
    expected = _adam_steps_in_a_child(2**20)
    context = multiprocessing.get_context("fork")
    if pool == "process-pool-executor":
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as executor:
            results = list(executor.map(_adam_steps_in_a_child, [2**20] * 4, timeout=120))
    else:
        with context.Pool(2) as workers:
            results = workers.map_async(_adam_steps_in_a_child, [2**20] * 4).get(timeout=120)
    assert results == [expected] * 4


# ------------------------------------------------------------------------------------------ 2. resized parameters
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_a_parameter_resized_after_the_optimizer_took_it_is_refused(backend: str, name: str) -> None:
    """``p.resize`` in place after the optimizer made its state: a step is refused before any kernel runs (it wrote
    past the momentum buffer before), and nothing changes."""
    param = np.zeros(4)
    options = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    opt = optim.OPTIMIZERS[name]([param], **options)
    opt.backend = backend
    param.resize(100_000, refcheck=False)
    before = param.copy()
    with pytest.raises(ValueError, match=r"params\[0\] changed since the optimizer took it"):
        opt.step([np.ones(100_000)])
    assert np.array_equal(param, before) and opt.step_count == 0


# ------------------------------------------------------------------------------------------ 3. non-finite gradients
def _overflowing_run(backend: str, dtype: str) -> tuple[fastopt.Sequential, tuple[np.ndarray, np.ndarray]]:
    """One huge row in one batch: the loss, summed in double, stays finite while a weight gradient overflows.
    float32: inputs of 1e38. float64 (whose loss overflows as soon as the output does): inputs of 1e210 through
    weights that make the output 8e102 (its square fits) but the second layer's gradient, hidden x dz, 8e310."""
    X = np.full((64, 4), 0.5, dtype)
    y = np.eye(3)[np.arange(64) % 3]
    model = fastopt.Sequential([layers.Dense(4, 8), layers.ReLU(), layers.Dense(8, 3)], dtype=dtype, seed=0,
                               backend=backend)  # fmt: skip
    if dtype == "float32":
        X[37] = 1e38
    else:
        X[37] = 1e210
        model.set_weights([np.full((4, 8), 0.25), np.zeros(8), np.full((8, 3), 1e-108), np.zeros(3)])
    return model, (X, y)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_finite_gradients_under_a_finite_loss_never_reach_the_parameters(
    backend: str, dtype: str, tmp_path
) -> None:
    model, (X, y) = _overflowing_run(backend, dtype)
    before = model.parameters.copy()
    path = tmp_path / "run.ckpt"
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="gradient became NaN or Inf") as error:
        model.fit(X, y, loss=losses.MSE(), batch_size=64, shuffle=False, checkpoint=path, checkpoint_every=1)
    assert "parameters are those before this step" in str(error.value)
    assert np.array_equal(model.parameters, before) and np.isfinite(model.parameters).all()
    assert not path.exists()  # the first step failed: no checkpoint was written, none holds NaN
    model.parameters[...] = before
    with np.errstate(all="ignore"):
        history = model.fit(X, y, loss=losses.MSE(), batch_size=16, shuffle=False, epochs=2, on_nonfinite="skip")
    assert history.history["skipped_batches"] == [1, 1]  # the batch holding row 37, in each epoch
    assert np.isfinite(model.parameters).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_step_keeps_the_last_good_checkpoint_finite(backend: str, tmp_path) -> None:
    """With several batches the guard stops at the bad one: the checkpoint written before holds finite values."""
    model, (X, y) = _overflowing_run(backend, "float32")
    path = tmp_path / "run.ckpt"
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"batch 3 \(optimizer step 3\)"):
        model.fit(X, y, loss=losses.MSE(), batch_size=16, shuffle=False, checkpoint=path, checkpoint_every=1)
    from fastopt import _io
    from fastopt.checkpoint import CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION

    _, arrays = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    assert all(np.isfinite(array).all() for array in arrays.values())
    assert np.isfinite(model.parameters).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_step_refuses_non_finite_gradients_unless_allowed(backend: str) -> None:
    a, b = np.zeros(3), np.zeros(3)
    opt = optim.Adam([a, b], lr=0.1)
    opt.backend = backend
    with pytest.raises(FloatingPointError, match=r"grads\[1\] holds NaN or Inf"):
        opt.step([np.ones(3), np.array([1.0, np.nan, 1.0])])
    assert not a.any() and not b.any() and opt.step_count == 0
    with np.errstate(all="ignore"):
        opt.step([np.ones(3), np.array([1.0, np.inf, 1.0])], allow_nonfinite=True)
    assert opt.step_count == 1 and np.isnan(b[1])


# ------------------------------------------------------------------------------------------ 4. threads
@pytest.mark.parametrize("backend", BACKENDS)
def test_predict_during_a_fit_in_another_thread_is_never_wrong(backend: str) -> None:
    """They used to share the model's batch buffers (473 of 1,853 predictions wrong). With lr = 0 the parameters
    stay put, so every prediction made while the model trains must equal the one made before."""
    rng = np.random.default_rng(0)
    X, y = rng.random((2048, 20)).astype(np.float32), rng.integers(0, 3, 2048)
    model = fastopt.Sequential([layers.Dense(20, 32), layers.ReLU(), layers.Dense(32, 3)], seed=0, backend=backend)
    queries = [X[start : start + 64] for start in range(0, 640, 64)]
    expected = [model.predict(query) for query in queries]
    training = threading.Thread(target=model.fit, args=(X, y), kwargs={"optimizer": optim.SGD(lr=0.0), "epochs": 3})
    training.start()
    wrong = 0
    while training.is_alive():
        for query, answer in zip(queries, expected):
            wrong += not np.array_equal(model.predict(query), answer)
    training.join()
    assert wrong == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_two_models_in_two_threads_match_serial_runs(backend: str) -> None:
    rng = np.random.default_rng(1)
    X, y = rng.random((512, 16)).astype(np.float32), rng.integers(0, 4, 512)

    def train(seed: int) -> np.ndarray:
        model = fastopt.Sequential([layers.Dense(16, 24), layers.Tanh(), layers.Dense(24, 4)], seed=seed,
                                   backend=backend)  # fmt: skip
        model.fit(X, y, epochs=2, seed=seed)
        return model.parameters

    serial = [train(seed) for seed in (0, 1)]
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        threaded = list(executor.map(train, (0, 1)))
    assert all(np.array_equal(a, b) for a, b in zip(serial, threaded))


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fit_started_from_inside_a_fit_is_refused(backend: str) -> None:
    """A callback calling ``fit`` on the model being fitted is refused (it reset the stop flag and history of the
    fit in progress, which then ran all its epochs with the inner fit's history); a copy trains there."""
    rng = np.random.default_rng(0)
    X, y = rng.random((40, 4), dtype=np.float32), rng.integers(0, 2, 40)
    model = fastopt.Sequential([layers.Dense(4, 3), layers.ReLU(), layers.Dense(3, 2)], seed=0, backend=backend)
    errors, copies = [], []

    def on_epoch_end(epoch: int, logs: dict) -> None:
        try:
            model.fit(X, y, epochs=1)
        except RuntimeError as exc:
            errors.append(str(exc))
        copied = model.copy()
        copies.append(copied.fit(X, y, epochs=1))

    history = model.fit(X, y, epochs=2, callbacks=[fastopt.callbacks.LambdaCallback(on_epoch_end=on_epoch_end)])
    assert len(errors) == 2 and all("from inside its own fit" in error for error in errors)
    assert model.history is history and len(history.epochs) == 2 and len(copies) == 2
    model.fit(X, y, epochs=1)  # the turn is given back


# ------------------------------------------------------------------------------------------ 5. all or nothing
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_a_refused_step_changes_nothing(backend: str, name: str) -> None:
    """The second parameter read-only: refused before the first is updated (it used to be half applied)."""
    a, b = np.zeros(3), np.zeros(3)
    opt = optim.OPTIMIZERS[name]([a, b], lr=0.1)
    opt.backend = backend
    b.flags.writeable = False
    state = opt.state_dict()
    with pytest.raises(ValueError, match=r"params\[1\] is read-only"):
        opt.step([np.ones(3), np.ones(3)])
    assert not a.any() and opt.step_count == 0
    assert all(np.array_equal(x, y) for s, t in zip(state["state"], opt.state) for x, y in zip(s.values(), t.values()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_a_read_only_state_buffer_is_refused_before_any_update(backend: str, name: str) -> None:
    """A state buffer of the second parameter, alone in the second group, made read-only: the step is refused
    naming the buffer and the parameter's index counted across the groups, before the first parameter changes."""
    a, b = np.zeros(3), np.zeros(3)
    options = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    opt = optim.OPTIMIZERS[name]([{"params": [a]}, {"params": [b]}], lr=0.1, **options)
    opt.backend = backend
    buffer_name, buffer = next(iter(opt.state[1].items()))
    buffer.flags.writeable = False
    state = opt.state_dict()
    with pytest.raises(ValueError, match=rf"the optimizer state '{buffer_name}' of params\[1\] is read-only"):
        opt.step([np.ones(3), np.ones(3)])
    assert not a.any() and opt.step_count == 0
    assert all(np.array_equal(x, y) for s, t in zip(state["state"], opt.state) for x, y in zip(s.values(), t.values()))


def _swapped_buffers(param: np.ndarray, buffer: np.ndarray) -> list[tuple[str, object, type, str]]:
    """(description, what is put in the state dict instead of ``buffer``, error, message pattern): each would let a
    compiled kernel write past a buffer, or take an array it cannot, if it reached one."""
    read_only = buffer.copy()
    read_only.flags.writeable = False
    return [
        ("one element short", buffer[:-1].copy(), ValueError, r"shape \(3,\) like its parameter, got float64 \(2,\)"),
        ("longer", np.zeros(300), ValueError, r"got float64 \(300,\)"),
        ("another dtype", buffer.astype(np.float32), ValueError, "a C-contiguous float64 array"),
        ("strided", np.zeros(6)[::2], ValueError, "not C-contiguous"),
        ("a list", buffer.tolist(), TypeError, "must be a numpy array, got list"),
        ("None", None, ValueError, "is missing"),
        ("read-only", read_only, ValueError, "is read-only"),
        ("the parameter itself", param, ValueError, "shares memory with a parameter"),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(optim.OPTIMIZERS))
def test_a_state_buffer_swapped_by_hand_is_checked_before_any_update(backend: str, name: str) -> None:
    """A state buffer of the second parameter replaced in its state dict (as a user resetting moments does): a
    replacement the kernel could not take is refused naming the buffer, before the first parameter changes (a
    buffer one element short made the compiled kernels write past it); a valid one is the buffer the next steps
    update, bit for bit as the one it replaced would have been."""
    options = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    a, b = np.zeros(3), np.linspace(-1, 1, 3)
    opt = optim.OPTIMIZERS[name]([a, b], lr=0.1, **options)
    twin_a, twin_b = a.copy(), b.copy()
    twin = optim.OPTIMIZERS[name]([twin_a, twin_b], lr=0.1, **options)
    first = [np.full(3, 0.5), np.cos(b)]
    for optimizer in (opt, twin):
        optimizer.backend = backend
        optimizer.step([grad.copy() for grad in first])
    buffer_name, buffer = next((key, value) for key, value in opt.state[1].items() if value.shape == b.shape)
    for description, replacement, error, match in _swapped_buffers(b, buffer):
        before = [a.copy(), b.copy()]
        if replacement is None:
            del opt.state[1][buffer_name]
        else:
            opt.state[1][buffer_name] = replacement
        with pytest.raises(error, match=rf"the optimizer state '{buffer_name}' of params\[1\] .*{match}"):
            opt.step([np.ones(3), np.ones(3)])
        assert a.tobytes() == before[0].tobytes() and b.tobytes() == before[1].tobytes(), description
        assert opt.step_count == 1, description
    fresh = opt.state[1][buffer_name] = twin.state[1][buffer_name].copy()
    for step in range(3):
        grads = [np.full(3, 0.25 * step), np.sin(b + step)]
        opt.step(grads)
        twin.step([grad.copy() for grad in grads])
    assert (a.tobytes(), b.tobytes()) == (twin_a.tobytes(), twin_b.tobytes())
    assert fresh.tobytes() == twin.state[1][buffer_name].tobytes()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_state_buffer_the_options_do_not_use_is_ignored(backend: str) -> None:
    """Adam without amsgrad given a ``max_exp_avg_sq`` by hand steps as before, as PyTorch's ignores one (the
    compiled kernel used to take it as amsgrad turned on)."""
    param, twin_param = np.linspace(-1, 1, 5), np.linspace(-1, 1, 5)
    opt, twin = optim.Adam([param], lr=0.1), optim.Adam([twin_param], lr=0.1)
    opt.backend = twin.backend = backend
    opt.state[0]["max_exp_avg_sq"] = stray = np.full(5, 1e6)
    for step in range(3):
        opt.step([np.cos(param + step)])
        twin.step([np.cos(twin_param + step)])
    assert param.tobytes() == twin_param.tobytes()
    assert (stray == 1e6).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("replacement", [None, 0.5, np.array([0.5]), np.array(0.5, dtype=np.float32)])
def test_a_scalar_state_swapped_by_hand_is_checked_before_any_update(backend: str, replacement: object) -> None:
    """NAdam's per-parameter ``mu_product`` of the second parameter removed or replaced by what a step cannot
    write in place: refused naming it before the first parameter changes (the step used to fail after it)."""
    a, b = np.zeros(3), np.linspace(-1, 1, 3)
    opt = optim.NAdam([a, b], lr=0.1)
    opt.backend = backend
    opt.step([np.ones(3), np.ones(3)])
    if replacement is None:
        del opt.state[1]["mu_product"]
    else:
        opt.state[1]["mu_product"] = replacement
    before = a.copy(), b.copy()
    with pytest.raises(ValueError, match=r"the optimizer state 'mu_product' of params\[1\] must be a writeable 0-d"):
        opt.step([np.ones(3), np.ones(3)])
    assert (a.tobytes(), b.tobytes()) == (before[0].tobytes(), before[1].tobytes()) and opt.step_count == 1


def _two_adam_params(backend: str) -> tuple[optim.Optimizer, np.ndarray, np.ndarray]:
    a, b = np.linspace(-1, 1, 4), np.linspace(1, 2, 4)
    opt = optim.Adam([a, b], lr=0.1)
    opt.backend = backend
    opt.step([np.ones(4), np.ones(4)])
    return opt, a, b


def _assert_refused(opt: optim.Optimizer, params: list[np.ndarray], grads: list[np.ndarray], error, match) -> None:
    """The step is refused with ``error`` matching ``match`` and changes no parameter, state buffer or step count."""
    before = [param.copy() for param in params]
    state = [{name: np.array(value, copy=True) for name, value in buffers.items()} for buffers in opt.state]
    count = opt.step_count
    with pytest.raises(error, match=match):
        opt.apply(grads)
    assert all(param.tobytes() == saved.tobytes() for param, saved in zip(params, before))
    for saved, buffers in zip(state, opt.state):
        assert all(np.array_equal(value, np.asarray(buffers[name])) for name, value in saved.items() if name in buffers)
    assert opt.step_count is count


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count", [-1, 2.5, float("nan"), True, np.int64(3)])
def test_a_step_count_set_by_hand_to_no_count_is_refused(backend: str, count: object) -> None:
    """``step_count`` is public (PyTorch's per-parameter steps are too): set to what no run counts, the step is
    refused before any update (-1 gave NaN parameters without an error)."""
    opt, a, b = _two_adam_params(backend)
    opt.step_count = count
    _assert_refused(opt, [a, b], [np.ones(4), np.ones(4)], ValueError, "step_count must be a non-negative integer")


def test_a_step_whose_first_update_fails_does_not_count() -> None:
    """A compiled kernel refusing the first parameter's gradient (of another dtype, past ``apply``'s trusted entry:
    the NumPy reference would promote it) leaves the step count as it was."""
    if "cython" not in BACKENDS:
        pytest.skip("the cython backend is not built")
    opt, a, b = _two_adam_params("cython")
    _assert_refused(opt, [a, b], [np.ones(4, np.float32), np.ones(4)], ValueError, "dtype mismatch")


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_parameters_scalars_are_made_before_the_first_update(backend: str) -> None:
    """A step's scalars that cannot be made for the second parameter (a subclass's ``_step_scalars`` failing)
    refuse the step before the first parameter changes."""

    class Failing(optim.Adam):
        def _step_scalars(self, group, lr, scalars, state):  # type: ignore[no-untyped-def]
            if state is self.state[1]:
                raise ArithmeticError("no scalars for the second parameter")
            return super()._step_scalars(group, lr, scalars, state)

    a, b = np.linspace(-1, 1, 4), np.linspace(1, 2, 4)
    opt = Failing([a, b], lr=0.1)
    opt.backend = backend
    _assert_refused(opt, [a, b], [np.ones(4), np.ones(4)], ArithmeticError, "second parameter")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "alias",
    ["another parameter", "own state", "another's state", "reversed", "shared state"],
)
def test_memory_shared_after_the_optimizer_took_its_arrays_is_refused(backend: str, alias: str) -> None:
    """Parameters put into ``param_groups`` or state buffers into ``opt.state`` by hand that share memory with
    another parameter or buffer are refused before any update (a parameter was updated twice, or with another's
    moments)."""
    opt, a, b = _two_adam_params(backend)
    params = opt.param_groups[0]["params"]
    if alias == "another parameter":
        params[1] = a
    elif alias == "own state":
        params[0] = opt.state[0]["exp_avg"]
    elif alias == "another's state":
        params[0] = opt.state[1]["exp_avg_sq"]
    elif alias == "reversed":
        params.reverse()
    else:
        opt.state[1]["exp_avg"] = opt.state[0]["exp_avg"]
    _assert_refused(opt, [a, b], [np.ones(4), np.ones(4)], ValueError, "shares memory")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("change", ["dtype", "shape", "strides"])
def test_a_state_buffer_changed_in_place_is_refused(backend: str, change: str) -> None:
    """A state buffer reinterpreted in place (its dtype, shape or strides assigned) is checked again and refused
    before any update (the kernel failed after the first parameter's update, or stepped a copy)."""
    opt, a, b = _two_adam_params(backend)
    buffer = opt.state[1]["exp_avg"]
    if change == "dtype":
        buffer.dtype = np.int64
    elif change == "shape":
        buffer.shape = (2, 2)
    else:
        with warnings.catch_warnings():  # (setting strides is deprecated from NumPy 2.4, not gone)
            warnings.simplefilter("ignore", DeprecationWarning)
            buffer.strides = (0,)
    _assert_refused(opt, [a, b], [np.ones(4), np.ones(4)], ValueError, r"the optimizer state 'exp_avg' of params\[1\]")


@pytest.mark.parametrize("backend", BACKENDS)
def test_nadam_keeps_stepping_once_its_momentum_product_underflows(backend: str) -> None:
    """With beta1 below 0.5 the momentum product underflows to 0 in a few hundred steps, as PyTorch's does: a
    state a run reaches, which steps and loads (it used to be refused as outside (0, 1]); a value no run reaches
    set by hand is refused at the next step."""
    param = np.ones(3)
    opt = optim.NAdam([param], lr=1e-3, betas=(0.3, 0.999))
    opt.backend = backend
    for _ in range(1200):
        opt.step([np.full(3, 1e-3)])
    assert float(opt.state[0]["mu_product"]) == 0 and np.isfinite(param).all()
    twin = optim.NAdam([param.copy()], lr=1e-3, betas=(0.3, 0.999))
    twin.load_state_dict(opt.state_dict())
    opt.state[0]["mu_product"][...] = 1.5
    _assert_refused(opt, [param], [np.ones(3)], ValueError, r"'mu_product' lies outside \[0, 1\]")


def test_an_optimizer_pickled_before_its_checked_arrays_were_kept_steps_as_before() -> None:
    """An optimizer unpickled without the arrays its steps last checked (pickles of earlier versions) checks them at
    its next step and steps bit for bit as one never pickled."""
    param, twin_param = np.linspace(-1, 1, 4), np.linspace(-1, 1, 4)
    opt, twin = optim.Adam([param], lr=0.1), optim.Adam([twin_param], lr=0.1)
    for optimizer, values in ((opt, param), (twin, twin_param)):
        optimizer.step([np.cos(values)])
    state = {key: value for key, value in opt.__dict__.items() if key not in ("_taken", "_kernel_buffers")}
    old = optim.Adam.__new__(optim.Adam)
    old.__setstate__(state)
    old.step([np.sin(param)])
    twin.step([np.sin(twin_param)])
    assert param.tobytes() == twin_param.tobytes()


# ------------------------------------------------------------------------------------------ 6. impossible states
def _trained(name: str, **options: object) -> optim.Optimizer:
    param = np.linspace(-1, 1, 6)
    opt = optim.OPTIMIZERS[name]([param], **options)
    for step in range(3):
        opt.step([np.cos(param * (step + 1))])
    return opt


IMPOSSIBLE = [
    ("adam", {}, lambda s: s["state"][0]["exp_avg_sq"].__setitem__(2, -1e-3), "'exp_avg_sq' holds negative values"),
    ("adam", {"amsgrad": True}, lambda s: s["state"][0]["max_exp_avg_sq"].__setitem__(0, -1.0), "'max_exp_avg_sq'"),
    ("adagrad", {}, lambda s: s["state"][0]["sum_squares"].__setitem__(1, -2.0), "'sum_squares' holds negative"),
    ("adamax", {}, lambda s: s["state"][0]["exp_inf"].__setitem__(1, -2.0), "'exp_inf' holds negative"),
    ("rmsprop", {"centered": True}, lambda s: s["state"][0]["grad_avg"].__setitem__(0, 10.0), "negative variance"),
    ("nadam", {}, lambda s: s["state"][0]["mu_product"].__setitem__((), 1.5), "'mu_product' lies outside"),
    ("adam", {}, lambda s: s["state"][0]["exp_avg"].__setitem__(0, np.nan), "'exp_avg'.*NaN or Inf"),
    ("adam", {}, lambda s: s.__setitem__("step_count", 10**400), "step_count must be below 2\\*\\*53"),
]


@pytest.mark.parametrize(
    ("name", "options", "edit", "match"), IMPOSSIBLE, ids=[f"{c[0]}-{c[3][:24]}" for c in IMPOSSIBLE]
)
def test_states_no_run_can_produce_are_refused(name: str, options: dict, edit, match: str) -> None:
    opt = _trained(name, **options)
    before = opt.state_dict()
    bad = opt.state_dict()
    edit(bad)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["step_count"] == before["step_count"]
    pairs = zip(before["state"], after["state"])
    assert all(np.array_equal(x, y) for s, t in pairs for x, y in zip(s.values(), t.values()))


def test_a_state_of_a_real_run_loads_back() -> None:
    """The counterpart: every state a run of every optimizer makes is accepted (centred RMSProp's rounding too)."""
    for name in sorted(optim.OPTIMIZERS):
        for options in ({}, {"centered": True, "momentum": 0.5} if name == "rmsprop" else {}):
            opt = _trained(name, **options)
            opt.load_state_dict(opt.state_dict())


def test_big_endian_state_buffers_are_accepted() -> None:
    opt = _trained("adam")
    state = opt.state_dict()
    state["state"][0] = {key: value.astype(">f8") for key, value in state["state"][0].items()}
    opt.load_state_dict(state)
    assert all(buffer.dtype.isnative for buffer in opt.state[0].values())


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam", "adamw", "nadam", "adamax", "radam"])
def test_eps_zero_is_refused_where_it_would_divide_zero_by_zero(name: str) -> None:
    with pytest.raises(ValueError, match="eps must be > 0"):
        optim.OPTIMIZERS[name]([np.zeros(3)], eps=0.0)
