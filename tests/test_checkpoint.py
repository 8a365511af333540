"""Checkpoints: bit-exact resume (in process and after SIGKILL), refusal of bad files, NaN handling, CLI."""

from __future__ import annotations

import hashlib
import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt
from fastopt import _io, callbacks, checkpoint, datasets, layers, losses, optim
from fastopt._io import FileFormatError
from fastopt.checkpoint import CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION, TrainingState
from fastopt.cli import main as cli_main

BACKENDS = fastopt.available_backends()
EPOCHS, BATCH_SIZE, SEED = 3, 24, 5  # 200 samples: 9 batches per epoch, the last one of 8 rows

OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.05, momentum=0.9, nesterov=True, decay=1e-3),
    "adagrad": lambda: optim.AdaGrad(lr=0.05, initial_accumulator_value=0.1),
    "rmsprop": lambda: optim.RMSProp(lr=1e-3, momentum=0.5, centered=True),
    "adam": lambda: optim.Adam(lr=2e-3, amsgrad=True, weight_decay=1e-4, decay=1e-3),
    "adamw": lambda: optim.AdamW(lr=2e-3),
    "nadam": lambda: optim.NAdam(lr=2e-3, weight_decay=1e-4, momentum_decay=1e-2, decay=1e-3),  # + mu_product
    "adamax": lambda: optim.Adamax(lr=2e-3, weight_decay=1e-4),
    "radam": lambda: optim.RAdam(lr=2e-3, weight_decay=1e-4, decoupled_weight_decay=True),
    "lion": lambda: optim.Lion(lr=2e-4, weight_decay=1e-2, decay=1e-3),
}


@pytest.fixture(scope="module")
def data():
    X, y, X_test, y_test = datasets.mini()
    return X[:200], y[:200], X_test[:50], y_test[:50]


def make_model(backend: str = "numpy", dtype: str = "float32", hidden: int = 16) -> fastopt.Sequential:
    return fastopt.Sequential(
        [layers.Dense(784, hidden), layers.ReLU(), layers.Dense(hidden, 10)], dtype=dtype, seed=0, backend=backend
    )


def train(data, backend="numpy", make_optimizer=OPTIMIZERS["adam"], model=None, optimizer=None, **options):
    """A fresh model and optimizer (as in a new process) trained on ``data``; returns (model, optimizer, history)."""
    X, y, X_val, y_val = data
    model = model or make_model(backend)
    optimizer = optimizer or make_optimizer()
    fit_options = dict(epochs=EPOCHS, batch_size=BATCH_SIZE, seed=SEED, validation_data=(X_val, y_val))
    history = model.fit(X, y, loss=losses.CrossEntropy(), optimizer=optimizer, **dict(fit_options, **options))
    return model, optimizer, history


def without_seconds(history: fastopt.History) -> dict:
    return {key: values for key, values in history.history.items() if key != "seconds"}


def assert_same_run(expected, actual) -> None:
    (model_a, optimizer_a, history_a), (model_b, optimizer_b, history_b) = expected, actual
    assert np.array_equal(model_a.parameters, model_b.parameters)
    assert optimizer_a.step_count == optimizer_b.step_count
    assert optimizer_a.state[0].keys() == optimizer_b.state[0].keys()
    for name, buffer in optimizer_a.state[0].items():
        assert np.array_equal(buffer, optimizer_b.state[0][name]), name
    assert history_a.epochs == history_b.epochs
    assert without_seconds(history_a) == without_seconds(history_b)
    assert len(history_b.history["seconds"]) == len(history_b.epochs)


class Crash(Exception):
    """Stands for the process dying."""


def crash_after_saves(monkeypatch, count: int) -> None:
    """The process 'dies' right after its ``count``-th checkpoint write."""
    original, done = TrainingState.save, [0]

    def save(self, path, *options):
        original(self, path, *options)
        done[0] += 1
        if done[0] == count:
            raise Crash

    monkeypatch.setattr(TrainingState, "save", save)


def crash_at_step(monkeypatch, step: int) -> None:
    """The process 'dies' during its ``step``-th training step (before that step's update)."""
    original, done = fastopt.Sequential._batch_gradients, [0]

    def batch_gradients(self, *args, **options):
        done[0] += 1
        if done[0] == step:
            raise Crash
        return original(self, *args, **options)

    monkeypatch.setattr(fastopt.Sequential, "_batch_gradients", batch_gradients)


# ------------------------------------------------------------------------------------ bit-exact resume
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("every", [1, 4, "epoch"])
def test_checkpointing_does_not_change_results(data, backend, every, tmp_path):
    plain = train(data, backend)
    checkpointed = train(data, backend, checkpoint=tmp_path / "run.ckpt", checkpoint_every=every)
    assert_same_run(plain, checkpointed)
    assert list(tmp_path.iterdir()) == [tmp_path / "run.ckpt"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_resume_after_a_crash_is_bit_exact(data, backend, name, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    expected = train(data, backend, OPTIMIZERS[name])
    with monkeypatch.context() as patch:
        crash_after_saves(patch, 4)  # 4 saves every 3 batches: epoch 2, batch 3
        with pytest.raises(Crash):
            train(data, backend, OPTIMIZERS[name], checkpoint=path, checkpoint_every=3)
    with monkeypatch.context() as patch:
        crash_at_step(patch, 5)  # the resumed run dies again, between two checkpoints
        with pytest.raises(Crash):
            train(data, backend, OPTIMIZERS[name], checkpoint=path, checkpoint_every=3, resume=True)
    assert_same_run(expected, train(data, backend, OPTIMIZERS[name], checkpoint=path, checkpoint_every=3, resume=True))


@settings(max_examples=25, deadline=None)
@given(
    crash=st.integers(1, EPOCHS * 9),
    every=st.sampled_from([1, 2, 5, 9, 10, "epoch"]),
    shuffle=st.booleans(),
    validation=st.booleans(),
)
def test_resume_from_any_step_is_bit_exact(data, tmp_path_factory, crash, every, shuffle, validation):
    path = tmp_path_factory.mktemp("run") / "run.ckpt"
    options = dict(shuffle=shuffle) if validation else dict(shuffle=shuffle, validation_data=None)
    expected = train(data, **options)
    with pytest.MonkeyPatch.context() as patch:
        crash_at_step(patch, crash)
        with pytest.raises(Crash):
            train(data, checkpoint=path, checkpoint_every=every, **options)
    assert_same_run(expected, train(data, checkpoint=path, checkpoint_every=every, resume=True, **options))


def test_resume_with_mse_and_float_targets(data, tmp_path, monkeypatch):
    X, _, _, _ = data
    y = np.random.default_rng(1).standard_normal((len(X), 10)).astype(np.float32)
    options = dict(loss=losses.MSE(), validation_data=None, checkpoint=tmp_path / "run.ckpt", checkpoint_every=2)

    def run(**extra):
        model, optimizer = make_model(), optim.RMSProp(lr=1e-3)
        history = model.fit(X, y, optimizer=optimizer, epochs=2, batch_size=32, seed=1, **dict(options, **extra))
        return model, optimizer, history

    expected = run(checkpoint=None, checkpoint_every=None)
    assert "accuracy" not in expected[2].history
    with monkeypatch.context() as patch:
        crash_at_step(patch, 6)
        with pytest.raises(Crash):
            run()
    assert_same_run(expected, run(resume=True))


def test_the_environment_is_recorded_and_a_different_one_warns(data, tmp_path):
    path = tmp_path / "run.ckpt"
    expected = train(data, checkpoint=path, checkpoint_every=5)
    header, _ = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    assert header["environment"] == checkpoint.environment("numpy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train(data, checkpoint=path, resume=True)  # same environment: silent
    header["environment"]["threads"]["blas"] = 64
    arrays = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)[1]
    for key in ("kind", "version", "checksum"):
        header.pop(key)
    _io.write_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION, header, arrays)
    with pytest.warns(RuntimeWarning, match="64"):
        assert_same_run(expected, train(data, checkpoint=path, resume=True))


def test_resume_without_a_file_starts_fresh_and_the_end_is_saved(data, tmp_path):
    path = tmp_path / "run.ckpt"
    expected = train(data)
    resumed = train(data, checkpoint=path, checkpoint_every=4, resume=True)  # 27 steps: the last is not a multiple
    assert_same_run(expected, resumed)
    state = TrainingState.load(path, _fingerprint_of(data, path))
    assert (state.progress.epoch, state.progress.batch, state.progress.steps) == (EPOCHS + 1, 0, 27)
    assert state.optimizer["step_count"] == 27
    assert np.array_equal(state.parameters, expected[0].parameters)


def _fingerprint_of(data, path) -> dict:
    """The fingerprint recorded in ``path`` (tests read the file back without knowing it in advance)."""
    header, _ = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    return header["training"]["fingerprint"]


def test_resuming_a_finished_run_returns_at_once(data, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    expected = train(data, checkpoint=path)
    written = path.read_bytes()
    monkeypatch.setattr(fastopt.Sequential, "_batch_gradients", lambda *args, **options: pytest.fail("trained again"))
    calls = []
    resumed = train(data, checkpoint=path, resume=True, on_epoch_end=lambda *args: calls.append(args))
    assert_same_run(expected, resumed)
    assert resumed[2].history == expected[2].history  # seconds too: nothing was trained
    assert calls == [] and path.read_bytes() == written


def test_a_crash_inside_the_epoch_end_callback_redoes_that_epoch(data, tmp_path):
    """An epoch is checkpointed after its callbacks ran (they may change the run: schedules, early stopping), so
    a crash inside one leaves the epoch unrecorded; the resumed run trains it again and ends bit-identical."""
    path = tmp_path / "run.ckpt"
    expected = train(data)

    def stop(epoch, logs):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        train(data, checkpoint=path, on_epoch_end=stop)
    epochs_seen = []
    resumed = train(data, checkpoint=path, resume=True, on_epoch_end=lambda epoch, logs: epochs_seen.append(epoch))
    assert epochs_seen == [2, 3]  # callbacks run only for the epochs this call trains
    assert_same_run(expected, resumed)


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs both backends")
def test_a_checkpoint_resumes_on_the_other_backend(data, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    with monkeypatch.context() as patch:
        crash_after_saves(patch, 2)
        with pytest.raises(Crash):
            train(data, "numpy", checkpoint=path, checkpoint_every=5)
    with pytest.warns(RuntimeWarning, match=r'"backend": "numpy".*"backend": "cython".*not bit for bit'):
        model, optimizer, history = train(data, "cython", checkpoint=path, checkpoint_every=5, resume=True)
    reference = train(data, "numpy")
    assert history.epochs == [1, 2, 3] and optimizer.step_count == 27
    np.testing.assert_allclose(model.parameters, reference[0].parameters, rtol=1e-4, atol=1e-5)


def test_stale_temporary_files_of_a_killed_write_are_removed_on_resume(data, tmp_path):
    path = tmp_path / "run.ckpt"
    train(data, checkpoint=path)
    stale = tmp_path / ".run.ckpt.abc123_x.tmp"  # the form mkstemp names it
    stale.write_bytes(b"half a zip")
    other = tmp_path / ".other.ckpt.abc123.tmp"
    other.write_bytes(b"not ours")
    train(data, checkpoint=path, resume=True)
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("weighted", [False, True])
def test_checkpoint_steps_keep_no_memory(data, tmp_path, weighted):
    """Between writes, a checkpointed step does one integer test: an epoch that writes nothing keeps no memory (with
    sample weights too: they are gathered into a buffer made once)."""
    import tracemalloc

    from fastopt import training

    X, y, _, _ = data
    model = make_model(BACKENDS[0])
    arguments = dict(
        loss=None, optimizer=optim.Adam(), epochs=1, batch_size=8, shuffle=True, seed=0, validation_data=None,
        validation_split=0.0, callbacks=None, sample_weight=np.linspace(0, 2, len(X)) if weighted else None,
        class_weight="balanced" if weighted else None, clip_norm=None, clip_value=None, verbose=0, progress=False,
        on_epoch_end=None, checkpoint=tmp_path / "run.ckpt", checkpoint_every=10**9, resume=False, on_nonfinite=None,
        overwrite=False,
    )  # fmt: skip
    options = training.check_fit_options(model, arguments)
    run = training.Run(model, options, training.prepare_data(model, X, y, options, arguments))
    order = np.arange(len(X))

    def epoch():
        run.position.batch = 0
        run._batches(order)

    epoch()
    epoch()
    tracemalloc.start()
    try:
        epoch()  # traced once first: caches the interpreter fills on first use (about 1-2 KB) are not growth
        before, _ = tracemalloc.get_traced_memory()
        epoch()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 1024
    assert not (tmp_path / "run.ckpt").exists()


# ------------------------------------------------------------------------------------ refused files
def trained_pair(data, backend="numpy"):
    """A model and a bound optimizer with non-trivial state, and a snapshot of both."""
    X, y, _, _ = data
    model, optimizer = make_model(backend), OPTIMIZERS["adam"]()  # the hyperparameters of the saved run
    model.fit(X[:48], y[:48], optimizer=optimizer, epochs=1, batch_size=16, seed=0)
    return model, optimizer, snapshot(model, optimizer)


def snapshot(model, optimizer):
    return (
        model.parameters.copy(),
        optimizer.step_count,
        dict(optimizer.hyperparameters),
        {name: buffer.copy() for name, buffer in optimizer.state[0].items()},
    )


def assert_unchanged(model, optimizer, before):
    parameters, step_count, hyper, state = before
    assert np.array_equal(model.parameters, parameters)
    assert optimizer.step_count == step_count and optimizer.hyperparameters == hyper
    assert all(np.array_equal(optimizer.state[0][name], buffer) for name, buffer in state.items())


@pytest.fixture
def saved(data, tmp_path):
    """A checkpoint of a run interrupted in epoch 2, and its bytes."""
    path = tmp_path / "run.ckpt"
    with pytest.MonkeyPatch.context() as patch:
        crash_after_saves(patch, 3)
        with pytest.raises(Crash):
            train(data, checkpoint=path, checkpoint_every=4)
    return path, path.read_bytes()


def resume_into(data, model, optimizer, path, **options):
    X, y, X_val, y_val = data
    fit_options = dict(epochs=EPOCHS, batch_size=BATCH_SIZE, seed=SEED, validation_data=(X_val, y_val))
    return model.fit(
        X, y, optimizer=optimizer, checkpoint=path, checkpoint_every=4, resume=True, **dict(fit_options, **options)
    )


def test_a_fresh_optimizer_stays_unbound_when_the_checkpoint_is_refused(data, saved):
    path, _ = saved
    model, optimizer = make_model(), optim.Adam(lr=0.5)
    before = model.parameters.copy()
    with pytest.raises(ValueError, match="optimizer hyperparameters"):
        resume_into(data, model, optimizer, path)
    assert optimizer.params is None and optimizer.step_count == 0 and model.optimizer is None
    assert np.array_equal(model.parameters, before)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d, m, o: (d, make_model(hidden=17), o, {}), "architecture"),
        (lambda d, m, o: (d, fastopt.Sequential([layers.Dense(784, 10)], seed=0), o, {}), "architecture"),
        (lambda d, m, o: (d, m, optim.AdamW(lr=1e-3), {}), "optimizer class"),
        (lambda d, m, o: (d, m, optim.Adam(lr=1e-3, amsgrad=True), {}), "optimizer hyperparameters"),
        (lambda d, m, o: (d, m, o, {"loss": losses.MSE()}), "loss"),
        (lambda d, m, o: (d, m, o, {"clip_norm": 1.0}), "gradient clipping"),
        (lambda d, m, o: (d, m, o, {"callbacks": [callbacks.EarlyStopping(patience=2)]}), "callbacks and schedules"),
        (lambda d, m, o: (d, m, o, {"batch_size": 25}), "batch_size"),
        (lambda d, m, o: (d, m, o, {"shuffle": False}), "shuffle"),
        (lambda d, m, o: (d, m, o, {"seed": 6}), "shuffling seed"),
        (lambda d, m, o: ((d[0][:199], d[1][:199], d[2], d[3]), m, o, {}), "number of training samples"),
        (lambda d, m, o: ((d[0], np.roll(d[1], 1), d[2], d[3]), m, o, {}), "training data"),
        (lambda d, m, o: ((d[0], d[1], d[2][:49], d[3][:49]), m, o, {}), "validation data"),
        (lambda d, m, o: (d, m, o, {"validation_data": None}), "validation data"),
    ],
)
def test_a_checkpoint_of_another_run_is_refused_naming_the_difference(data, saved, change, field):
    path, written = saved
    model, optimizer, before = trained_pair(data)
    other_data, other_model, other_optimizer, options = change(data, model, optimizer)
    other_before = snapshot(other_model, other_optimizer) if other_optimizer.params is not None else None
    with pytest.raises(ValueError, match=re.escape(field)) as error:
        resume_into(other_data, other_model, other_optimizer, path, **options)
    assert "different training run" in str(error.value) and not isinstance(error.value, FileFormatError)
    assert_unchanged(model, optimizer, before)
    if other_before is not None:
        assert_unchanged(other_model, other_optimizer, other_before)
    assert path.read_bytes() == written


def test_resuming_with_more_epochs_continues_and_fewer_is_refused(data, tmp_path):
    """``epochs`` is not part of a run's identity: a finished run resumed with a larger ``epochs`` continues to
    the same end as a run asked for that many from the start; fewer epochs than already done is refused."""
    path = tmp_path / "run.ckpt"
    train(data, checkpoint=path)
    resumed = train(data, checkpoint=path, resume=True, epochs=EPOCHS + 2)
    assert_same_run(train(data, epochs=EPOCHS + 2), resumed)
    model, optimizer, before = trained_pair(data)
    with pytest.raises(ValueError, match=f"{EPOCHS + 2} epochs done, more than this fit's epochs=2"):
        resume_into(data, model, optimizer, path, epochs=2)
    assert_unchanged(model, optimizer, before)


def test_a_float64_model_refuses_a_float32_checkpoint(data, saved):
    path, _ = saved
    model = make_model(dtype="float64")
    with pytest.raises(ValueError, match="model dtype"):
        resume_into(data, model, optim.Adam(lr=2e-3, amsgrad=True, weight_decay=1e-4, decay=1e-3), path)


def test_one_changed_value_in_the_data_is_noticed(data, saved):
    path, _ = saved
    X, y, X_val, y_val = data
    X = X.copy()
    X[123, 456] += 0.5
    with pytest.raises(ValueError, match="training data"):
        resume_into((X, y, X_val, y_val), make_model(), OPTIMIZERS["adam"](), path)


def check_refused(data, path, match: str) -> None:
    """Resuming from ``path`` raises FileFormatError matching ``match`` and changes nothing."""
    model, optimizer, before = trained_pair(data)
    with pytest.raises(FileFormatError, match=match):
        resume_into(data, model, OPTIMIZERS["adam"](), path)
    with pytest.raises(FileFormatError, match=match):
        resume_into(data, model, optimizer, path)  # a trained model and its optimizer
    assert_unchanged(model, optimizer, before)


def test_a_truncated_checkpoint_is_refused(data, saved):
    path, written = saved
    for length in sorted({0, 1, 30, len(written) // 3, len(written) // 2, len(written) - 100, len(written) - 1}):
        path.write_bytes(written[:length])
        check_refused(data, path, "not a fastopt file|truncated|corrupt|not a readable")


def test_a_flipped_byte_is_refused_or_harmless(data, saved):
    """A flipped bit is refused, or (in a zip field nothing reads, such as a timestamp) changes nothing."""
    path, written = saved
    fingerprint = _fingerprint_of(data, path)
    reference = TrainingState.load(path, fingerprint)
    positions = random.Random(0).sample(range(len(written)), 250)
    header_at = written.find(b'"training"')
    positions += list(range(max(0, header_at - 40), header_at + 200, 7))  # inside the JSON header
    positions += list(range(0, 64)) + list(range(len(written) - 120, len(written)))  # zip headers, directory
    refused = 0
    for position in positions:
        corrupt = bytearray(written)
        corrupt[position] ^= 1 << (position % 8)
        path.write_bytes(bytes(corrupt))
        try:
            state = TrainingState.load(path, fingerprint)
        except FileFormatError:
            refused += 1
            continue
        except ValueError as error:  # a flip inside the fingerprint's text that still parses as JSON
            assert "different training run" in str(error)
            refused += 1
            continue
        assert np.array_equal(state.parameters, reference.parameters)
        assert state.progress == reference.progress and state.rng_state == reference.rng_state
        assert state.history == reference.history and state.optimizer["step_count"] == reference.optimizer["step_count"]
    assert refused > 0.8 * len(positions)
    corrupt = bytearray(written)
    corrupt[len(written) // 2] ^= 0xFF  # inside the parameters' or optimizer buffers' bytes
    path.write_bytes(bytes(corrupt))
    check_refused(data, path, "checksum|corrupt")


def test_wrong_version_and_wrong_kind_are_refused(data, saved, tmp_path):
    path, _ = saved
    header, arrays = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    for key in ("kind", "version", "checksum"):
        header.pop(key)
    _io.write_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION + 1, header, arrays)
    check_refused(data, path, f"format version {CHECKPOINT_FILE_VERSION + 1}")
    model_file = tmp_path / "model.npz"
    make_model().save(model_file)
    check_refused(data, model_file, "not a fastopt fastopt-checkpoint file")


def test_a_pickled_npz_is_refused(data, saved):
    path, _ = saved
    header, _ = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    with path.open("wb") as stream:  # a valid-looking header, and an array that unpickles an object
        np.savez(stream, header=np.array(json.dumps(header)), parameters=np.array([{"evil": 1}], dtype=object))
    check_refused(data, path, "pickle")


def rewrite_state(path, edit) -> None:
    """Re-save the checkpoint at ``path`` with ``edit(header_training, arrays)`` applied and valid checksums,
    as a buggy or malicious writer would."""
    header, arrays = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    training = header["training"]
    edit(training, arrays)
    header["training_sha256"] = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()
    for key in ("kind", "version", "checksum"):
        header.pop(key)
    _io.write_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION, header, arrays)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t, a: t["progress"].update(epoch=9), "epoch 9 outside"),
        (lambda t, a: t["progress"].update(batch=10), "beyond the 9 batches"),
        (lambda t, a: t["progress"].update(steps=3), "inconsistent step count"),
        (lambda t, a: t["progress"].update(loss_sum="1.5"), "loss_sum must be a number"),
        (lambda t, a: t["progress"].pop("correct"), "bad progress record"),
        (lambda t, a: t["rng_state"].update(bit_generator="MT19937"), "shuffling-generator state"),
        (lambda t, a: t["rng_state"].pop("state"), "shuffling-generator state"),
        (lambda t, a: t["history"]["metrics"]["loss"].append(1.0), "history 'loss'"),
        (lambda t, a: t["history"].update(epochs=[2]), "history must list epochs"),
        (lambda t, a: t["optimizer"].update(step_count=-1), "step_count must be a non-negative integer"),
        (lambda t, a: t["optimizer"]["hyperparameters"].update(lr=0.5), "disagrees with the fingerprint"),
        (lambda t, a: a.update(parameters=a["parameters"][:-1]), "parameters must be float32"),
        (lambda t, a: a.update(parameters=a["parameters"].astype(np.float64)), "parameters must be float32"),
        (lambda t, a: a.pop("optimizer.0.exp_avg"), "missing arrays ['optimizer.0.exp_avg']"),
        (lambda t, a: a["optimizer.0.exp_avg_sq"].__setitem__(3, np.nan), "contains NaN or Inf"),
        (lambda t, a: a.update(extra=np.zeros(3)), "unexpected arrays"),
    ],
)
def test_inconsistent_contents_with_valid_checksums_are_refused(data, saved, edit, match):
    path, _ = saved
    rewrite_state(path, edit)
    check_refused(data, path, re.escape(match))


# ------------------------------------------------------------------------------------ NaN and Inf
def poisoned(data, row: int = 57):
    """``data`` whose training row ``row`` overflows the first layer to Inf, so the loss of the batch
    holding it is NaN, on whichever step and after whatever restart."""
    X, y, X_val, y_val = data
    X = X.copy()
    X[row] = 3e38
    return X, y, X_val, y_val


def test_a_nan_loss_raises_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch):
    path = tmp_path / "run.ckpt"
    writes = []
    original = TrainingState.save

    def save(self, target, *options):
        original(self, target, *options)
        writes.append(Path(target).read_bytes())

    monkeypatch.setattr(TrainingState, "save", save)
    row = np.random.default_rng(SEED).permutation(200)[100]  # in the 5th batch of the first epoch
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"optimizer step 5\)") as error:
        train(poisoned(data, row), checkpoint=path, checkpoint_every=2)
    assert "epoch 1, batch 5" in str(error.value)
    assert len(writes) == 2 and path.read_bytes() == writes[-1]  # nothing written after the last good checkpoint
    state = TrainingState.load(path, _fingerprint_of(data, path))
    assert state.optimizer["step_count"] == state.progress.steps == 4
    assert np.isfinite(state.parameters).all()
    resumed_model, resumed_optimizer = make_model(), OPTIMIZERS["adam"]()
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match=r"optimizer step 5\)"):
        train(poisoned(data, row), model=resumed_model, optimizer=resumed_optimizer, checkpoint=path, resume=True)
    assert np.array_equal(resumed_model.parameters, state.parameters) and path.read_bytes() == writes[-1]


def test_skip_leaves_the_batch_unapplied_and_counts_it(data):
    bad = poisoned(data)
    with np.errstate(all="ignore"):
        model, optimizer, history = train(bad, on_nonfinite="skip")
    assert history.history["skipped_batches"] == [1, 1, 1]
    assert optimizer.step_count == EPOCHS * 9 - 3
    assert np.isfinite(model.parameters).all() and all(np.isfinite(history.history["loss"]))
    # the loss and accuracy are means over the 200 - 24 rows (or 200 - 8) of the batches not skipped
    assert all(0.0 <= accuracy <= 1.0 for accuracy in history.history["accuracy"])
    with np.errstate(all="ignore"), pytest.raises(FloatingPointError, match="epoch 1, batch"):
        train(bad)
    assert "skipped_batches" not in train(data, on_nonfinite="skip")[2].history


def test_skipped_batches_appear_from_the_first_epoch_that_skips(data, monkeypatch):
    original, calls = losses.CrossEntropy.compute, [0]

    def compute(self, backend, output, target, grad, weights=None):
        value = original(self, backend, output, target, grad, weights)
        if grad is not None:
            calls[0] += 1
            if calls[0] == 12:  # epoch 2, batch 3
                return float("nan")
        return value

    monkeypatch.setattr(losses.CrossEntropy, "compute", compute)
    _, optimizer, history = train(data, on_nonfinite="skip")
    assert history.history["skipped_batches"] == [0, 1, 0]
    assert list(history.history)[-1] == "skipped_batches" and optimizer.step_count == 26


def test_skipping_runs_resume_bit_exactly(data, tmp_path, monkeypatch):
    bad = poisoned(data)
    path = tmp_path / "run.ckpt"
    with np.errstate(all="ignore"):
        expected = train(bad, on_nonfinite="skip")
        with monkeypatch.context() as patch:
            crash_after_saves(patch, 5)
            with pytest.raises(Crash):
                train(bad, on_nonfinite="skip", checkpoint=path, checkpoint_every=3)
        assert_same_run(expected, train(bad, on_nonfinite="skip", checkpoint=path, checkpoint_every=3, resume=True))


# ------------------------------------------------------------------------------------ argument checks
@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"checkpoint_every": 3}, ValueError, "need checkpoint=PATH"),
        ({"resume": True}, ValueError, "need checkpoint=PATH"),
        ({"checkpoint": "run.ckpt", "checkpoint_every": 0}, ValueError, "positive number of batches"),
        ({"checkpoint": "run.ckpt", "checkpoint_every": -2}, ValueError, "positive number of batches"),
        ({"checkpoint": "run.ckpt", "checkpoint_every": "3"}, TypeError, "positive number of batches"),
        ({"checkpoint": "run.ckpt", "checkpoint_every": 2.5}, TypeError, "positive number of batches"),
        ({"checkpoint": "run.ckpt", "checkpoint_every": True}, TypeError, "positive number of batches"),
        ({"checkpoint": "run.ckpt", "resume": "yes"}, TypeError, "resume must be True or False"),
        ({"checkpoint": 3}, TypeError, "checkpoint must be a file path"),
        ({"checkpoint": "no/such/folder/run.ckpt"}, ValueError, "does not exist"),
        ({"checkpoint": "."}, ValueError, "is not a file"),
        ({"on_nonfinite": "ignore"}, ValueError, "on_nonfinite must be"),
    ],
)
def test_bad_checkpoint_arguments_are_refused_before_training(data, tmp_path, monkeypatch, options, error, match):
    monkeypatch.chdir(tmp_path)
    model, optimizer = make_model(), optim.Adam()
    before = model.parameters.copy()
    with pytest.raises(error, match=match):
        train(data, model=model, optimizer=optimizer, **options)
    assert np.array_equal(model.parameters, before) and optimizer.params is None
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ command line
CLI_RUN = ["train", "--hidden", "8", "--epochs", "2", "--batch-size", "250", "--no-progress", "--seed", "3"]


def test_cli_checkpoint_and_resume(tmp_path, capsys):
    checkpoint_path, plain, resumed = tmp_path / "run.ckpt", tmp_path / "plain.npz", tmp_path / "resumed.npz"
    assert cli_main([*CLI_RUN, "--save", str(plain)]) == 0
    assert cli_main([*CLI_RUN, "--checkpoint", str(checkpoint_path), "--checkpoint-every", "7"]) == 0
    assert checkpoint_path.exists()
    capsys.readouterr()
    assert cli_main([*CLI_RUN, "--checkpoint", str(checkpoint_path), "--resume", "--save", str(resumed)]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert np.array_equal(fastopt.load(plain).parameters, fastopt.load(resumed).parameters)
    assert cli_main([*CLI_RUN, "--checkpoint", str(checkpoint_path), "--checkpoint-every", "epoch"]) == 0
    capsys.readouterr()
    assert cli_main([*CLI_RUN, "--seed", "4", "--checkpoint", str(checkpoint_path), "--resume"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "shuffling seed: checkpoint has 3, this fit has 4" in error
    longer = tmp_path / "longer.npz"
    assert cli_main([*CLI_RUN, "--epochs", "3", "--checkpoint", str(checkpoint_path), "--resume", "--save",
                     str(longer)]) == 0  # fmt: skip
    assert cli_main([*CLI_RUN, "--epochs", "3", "--save", str(plain), "--overwrite"]) == 0
    assert np.array_equal(fastopt.load(plain).parameters, fastopt.load(longer).parameters)


@pytest.mark.parametrize(
    ("arguments", "match"),
    [
        (["--checkpoint-every", "0", "--checkpoint", "x.ckpt"], "--checkpoint-every"),
        (["--checkpoint-every", "soon", "--checkpoint", "x.ckpt"], "--checkpoint-every"),
        (["--checkpoint-every", "3"], "--checkpoint-every needs --checkpoint"),
        (["--resume"], "--resume needs --checkpoint"),
        (["--checkpoint", "no/such/folder/x.ckpt"], "does not exist"),
    ],
)
def test_cli_bad_checkpoint_options_exit_2_with_one_line(tmp_path, monkeypatch, capsys, arguments, match):
    monkeypatch.chdir(tmp_path)
    try:
        status = cli_main([*CLI_RUN, *arguments])
    except SystemExit as exit_:
        status = exit_.code
    error = capsys.readouterr().err
    assert status == 2 and error.count("\n") == 1 and match in error, error
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ SIGKILL
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_at_random_moments_then_resume_is_bit_exact(backend, tmp_path):
    """Worker processes are killed with SIGKILL after seeded random delays (checkpoint every 3 batches) and
    while they write a checkpoint (checkpoint every batch), 1-3 times per trial; each trial then runs to the
    end and must equal an uninterrupted run (parameters, every optimizer buffer, step count, history).
    ``scripts/kill_resume.py`` runs the same trials in larger numbers."""
    from checkpoint_worker import kill_trial, reference

    rng = random.Random(f"kill-{backend}")
    expected = reference(tmp_path, backend)
    results = []
    for trial, (mode, every) in enumerate([("delay", 3), ("write", 1), ("delay", 3), ("write", 1)]):
        result = kill_trial(tmp_path / str(trial), backend, every, expected, rng, mode)
        assert result.bit_exact, f"trial {trial} ({mode}): {result.mismatch}"
        results.append(result)
    assert sum(result.kill_points for result in results) >= 2
    assert sum(result.during_write for result in results) >= 1
