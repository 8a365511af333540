"""Resuming runs with callbacks: early stopping that restores its best weights, an epoch (CosineAnnealingLR) or a
batch (OneCycleLR) schedule, gradient clipping and a validation split, interrupted at any step or save (in process)
or killed with SIGKILL (worker processes), end bit-identical to an uninterrupted run: parameters, optimizer state,
callbacks' states, history (but seconds) and stop reason. A finished run resumed returns at once; a completed one
resumed with a larger ``epochs`` continues it; a checkpoint resumes only with the same callbacks."""

from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass

import numpy as np
import pytest
from test_callbacks import WeightsByEpoch
from test_checkpoint import BACKENDS, Crash, crash_after_saves, crash_at_step, make_model, without_seconds

import fastopt
from fastopt import _io, callbacks, checkpoint, datasets, optim
from fastopt._io import FileFormatError
from fastopt.callbacks import CSVLogger, EarlyStopping, LambdaCallback
from fastopt.optim import lr_scheduler

EPOCHS, BATCH_SIZE, SEED = 10, 24, 5  # 180 training rows after the split: 8 batches per epoch
# The monitored "score" of each epoch (logged by a callback before early stopping sees it), so that where the run
# stops and whose weights it restores do not depend on rounding: best at epoch 3 (0-based); patience 2 stops it
# at epoch 5, patience 20 lets it complete with the weights of epoch 3 restored.
SCORES = [5.0, 4.0, 3.0, 1.0, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0, 5.5, 6.0, 6.5]


@pytest.fixture(scope="module")
def data():
    X, y, _, _ = datasets.mini()
    return X[:200], y[:200]


def _schedule(variant: str, optimizer: optim.Optimizer, epochs: int) -> lr_scheduler.LRScheduler | None:
    """The run's schedule: an epoch one ("cosine"), a batch one ("onecycle"), or variants for the refusal tests."""
    if variant == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=6, eta_min=1e-4)
    if variant == "onecycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=2e-2, epochs=epochs, steps_per_epoch=8)
    if variant == "cosine T_max 7":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=7, eta_min=1e-4)
    return lr_scheduler.StepLR(optimizer, 6) if variant == "step" else None


@dataclass
class Outcome:
    model: fastopt.Sequential
    optimizer: optim.Optimizer
    history: fastopt.History
    early: EarlyStopping
    schedule: lr_scheduler.LRScheduler | None


def full_run(data, variant="cosine", backend="numpy", patience=2, epochs=EPOCHS, extra=(), **options) -> Outcome:
    """A fresh model, optimizer and callbacks (as a new process makes them) trained with everything on."""
    X, y = data
    model, optimizer = make_model(backend), optim.Adam(lr=1e-2)
    score = LambdaCallback(on_epoch_end=lambda epoch, logs: logs.__setitem__("score", SCORES[epoch]))
    early = EarlyStopping(monitor="score", patience=patience, restore_best_weights=True)
    schedule = _schedule(variant, optimizer, epochs)
    history = model.fit(
        X, y, optimizer=optimizer, epochs=epochs, batch_size=BATCH_SIZE, seed=SEED, validation_split=0.1,
        clip_norm=0.5, callbacks=[score, early, *([schedule] if schedule else []), *extra], **options,
    )  # fmt: skip
    return Outcome(model, optimizer, history, early, schedule)


def _same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        np.array_equal(a[key], b[key]) if isinstance(a[key], np.ndarray) else a[key] == b[key] for key in a
    )


def assert_same_full_run(expected: Outcome, actual: Outcome) -> None:
    assert np.array_equal(expected.model.parameters, actual.model.parameters)
    mine, theirs = expected.optimizer.state_dict(), actual.optimizer.state_dict()
    assert mine["step_count"] == theirs["step_count"] and mine["param_groups"] == theirs["param_groups"]
    assert all(_same_state(a, b) for a, b in zip(mine["state"], theirs["state"]))
    assert expected.history.epochs == actual.history.epochs
    assert without_seconds(expected.history) == without_seconds(actual.history)
    assert expected.history.stop_reason == actual.history.stop_reason
    assert _same_state(expected.early.state_dict(), actual.early.state_dict())
    assert _same_state(expected.schedule.state_dict(), actual.schedule.state_dict())


def test_the_runs_stop_early_and_restore_the_best_weights(data):
    """What the other tests rely on: patience 2 stops at epoch 6 (1-based) with epoch 4's weights restored, which
    differ from the last epoch's, and the schedule changes the rate."""
    record = WeightsByEpoch()
    outcome = full_run(data, extra=[record])
    assert outcome.history.epochs == [1, 2, 3, 4, 5, 6]
    assert outcome.history.stop_reason == "early stopping: score did not improve for 2 epochs (best 1 at epoch 4)"
    assert all(np.array_equal(a, b) for a, b in zip(outcome.model.get_weights(), record.weights[3]))
    assert not all(np.array_equal(a, b) for a, b in zip(record.weights[3], record.weights[5]))
    assert outcome.history.history["learning_rate"][1] < outcome.history.history["learning_rate"][0]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["cosine", "onecycle"])
def test_checkpointing_does_not_change_a_full_run(data, tmp_path, variant, backend):
    expected = full_run(data, variant, backend)
    for every in (1, "epoch"):
        path = tmp_path / f"{every}.ckpt"
        assert_same_full_run(expected, full_run(data, variant, backend, checkpoint=path, checkpoint_every=every))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("variant", ["cosine", "onecycle"])
def test_a_crash_at_any_step_then_resume_is_bit_exact(data, tmp_path, variant, backend):
    """Crashes at steps spread over the run (the first, an epoch's first batch, inside an epoch, the last step of
    the epoch that stops the run), with checkpoints every 3 batches; the resumed run is crashed again once."""
    expected = full_run(data, variant, backend)
    total = expected.optimizer.step_count
    assert total == 6 * 8
    for crash in (1, 9, 20, total):
        path = tmp_path / f"{crash}.ckpt"
        for resume, step in ((False, crash), (True, 2)):
            with pytest.MonkeyPatch.context() as patch:
                crash_at_step(patch, step)
                with pytest.raises(Crash):
                    full_run(data, variant, backend, checkpoint=path, checkpoint_every=3, resume=resume)
        resumed = full_run(data, variant, backend, checkpoint=path, checkpoint_every=3, resume=True)
        assert_same_full_run(expected, resumed)


@pytest.mark.parametrize("variant", ["cosine", "onecycle"])
def test_a_crash_after_any_epoch_save_then_resume_is_bit_exact(data, tmp_path, variant):
    """Epoch checkpoints: the 6th save is the stopping epoch's, written before the run's last save; a process that
    dies between the two must not train a seventh epoch when resumed (the stop is in the epoch's checkpoint)."""
    expected = full_run(data, variant)
    for saves in range(1, 8):
        path = tmp_path / f"{saves}.ckpt"
        with pytest.MonkeyPatch.context() as patch:
            crash_after_saves(patch, saves)
            with pytest.raises(Crash):
                full_run(data, variant, checkpoint=path)
        assert_same_full_run(expected, full_run(data, variant, checkpoint=path, resume=True))


def test_resuming_a_finished_run_returns_at_once_with_its_end(data, tmp_path, monkeypatch):
    """Stopped early, or completed: nothing trains again, the file is not rewritten, and the model is what the
    run ended with (the best weights restored)."""
    for patience in (2, 20):
        path = tmp_path / f"{patience}.ckpt"
        expected = full_run(data, patience=patience, checkpoint=path)
        written = path.read_bytes()
        with monkeypatch.context() as patch:
            patch.setattr(fastopt.Sequential, "_batch_gradients", lambda *args, **options: pytest.fail("trained again"))
            resumed = full_run(data, patience=patience, checkpoint=path, resume=True)
        assert_same_full_run(expected, resumed)
        assert resumed.history.history == expected.history.history and path.read_bytes() == written


def test_a_completed_run_resumed_with_more_epochs_continues_it(data, tmp_path):
    """A 10-epoch run that completed (its best weights, of epoch 4, restored at its end) resumed with epochs=13
    ends as a 13-epoch run: it continues from the weights of its 10th epoch, not from the restored ones. The
    cosine schedule does not depend on the number of epochs (OneCycleLR does: it cannot be lengthened)."""
    path = tmp_path / "run.ckpt"
    first = full_run(data, patience=20, checkpoint=path)
    assert first.history.stop_reason == "completed" and first.early.best_epoch == 3
    longer = full_run(data, patience=20, epochs=13)
    assert_same_full_run(longer, full_run(data, patience=20, epochs=13, checkpoint=path, resume=True))
    assert longer.history.epochs == list(range(1, 14))


def _only_in_checkpoint(data, tmp_path) -> object:
    path = tmp_path / "run.ckpt"
    with pytest.MonkeyPatch.context() as patch:
        crash_after_saves(patch, 2)
        with pytest.raises(Crash):
            full_run(data, checkpoint=path)
    return path


CHANGES = {
    "patience": {"patience": 3},
    "schedule settings": {"variant": "cosine T_max 7"},
    "schedule class": {"variant": "step"},
    "no schedule": {"variant": "none"},
    "another callback": {"extra": [callbacks.ReduceLROnPlateau(monitor="score")]},
    "a csv logger": {"extra": [CSVLogger("log.csv")]},
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_checkpoint_resumes_only_with_the_same_callbacks(data, tmp_path, change):
    path = _only_in_checkpoint(data, tmp_path)
    written = path.read_bytes()
    with pytest.raises(ValueError, match="different training run; callbacks and schedules: checkpoint has"):
        full_run(data, checkpoint=path, resume=True, **CHANGES[change])
    assert path.read_bytes() == written


def _forged(path, change) -> None:
    """Rewrite the checkpoint at ``path`` with ``change(training, arrays)`` applied and its checksums made again, as
    a crafted file would be."""
    header, arrays = _io.read_archive(path, checkpoint.CHECKPOINT_FILE_KIND, checkpoint.CHECKPOINT_FILE_VERSION)
    training = header["training"]
    change(training, arrays)
    header["training_sha256"] = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()
    for key in ("kind", "version", "checksum"):
        header.pop(key)
    _io.write_archive(path, checkpoint.CHECKPOINT_FILE_KIND, checkpoint.CHECKPOINT_FILE_VERSION, header, arrays,
                      overwrite=True)  # fmt: skip


def _early_state(training) -> dict:
    return training["callbacks"][0]["values"]


def _set_nan_parameter(arrays) -> None:
    arrays["parameters"] = arrays["parameters"].copy()
    arrays["parameters"][3] = np.nan


FORGERIES = {
    "a count that is no number": (lambda t, a: _early_state(t).update(wait="x"), r"callbacks\[0\].*wait must be an"),
    "a negative count": (lambda t, a: _early_state(t).update(best_epoch=-2), "best_epoch must be >= 0"),
    "a NaN best value": (lambda t, a: _early_state(t).update(best=float("nan")), "best must be a number or None"),
    "best weights of another shape": (
        lambda t, a: (
            a.__setitem__("callbacks.0.best_weights.0", np.zeros((2, 2), np.float32))
            or t["callbacks"][0]["arrays"].__setitem__("best_weights.0", ["float32", [2, 2]])
        ),
        r"best_weights\[0\] \(layers\[0\]\.weight\) must have shape",
    ),
    "a NaN parameter": (lambda t, a: _set_nan_parameter(a), "its parameters hold NaN or Inf"),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_a_forged_checkpoint_is_refused_before_anything_changes(data, tmp_path, forgery):
    """A checkpoint whose checksums were made again over a state no run saves is refused naming the field, before
    the model, the optimizer or the callbacks change (a bad callback state failed after the parameters and the
    optimizer were restored; a NaN parameter was restored and failed at the next step)."""
    X, y = data
    path = tmp_path / "run.ckpt"
    options = {"epochs": 2, "batch_size": BATCH_SIZE, "seed": SEED}
    first = optim.Adam()
    run_callbacks = [EarlyStopping(monitor="loss", restore_best_weights=True), lr_scheduler.StepLR(first, 1)]
    make_model().fit(X, y, optimizer=first, checkpoint=path, callbacks=run_callbacks, **options)
    change, match = FORGERIES[forgery]
    _forged(path, change)
    model, optimizer = make_model(), optim.Adam()  # the checkpoint's run's optimizer, mid-way through a run of its own
    model.fit(X, y, optimizer=optimizer, **options)
    early, schedule = EarlyStopping(monitor="loss", restore_best_weights=True), lr_scheduler.StepLR(optimizer, 1)
    parameters, state, schedule_state = model.parameters.copy(), optimizer.state_dict(), schedule.state_dict()
    with pytest.raises(FileFormatError, match=match):
        model.fit(X, y, optimizer=optimizer, checkpoint=path, resume=True, callbacks=[early, schedule],
                  **{**options, "epochs": 3})  # fmt: skip
    assert model.parameters.tobytes() == parameters.tobytes() and optimizer.step_count == state["step_count"]
    for saved, live in zip(state["state"], optimizer.state):
        assert all(np.array_equal(value, live[name]) for name, value in saved.items())
    assert early.wait == 0 and early.best_weights is None and schedule.state_dict() == schedule_state


def _csv_without_seconds(path) -> list[list[str]]:
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1 :] for row in rows]


@pytest.mark.parametrize("append", [False, True])
def test_the_csv_log_of_a_resumed_run_is_the_uninterrupted_runs(data, tmp_path, append):
    """Rewritten from the history at each epoch, the log of a run crashed twice equals an uninterrupted run's
    (seconds excepted); with append=True the rows that were in the file before the fit stay, once."""
    logs = {name: tmp_path / f"{name}.csv" for name in ("expected", "resumed")}
    before = ""
    if append:  # the log of an earlier fit, with the same columns
        full_run(data, epochs=2, extra=[CSVLogger(logs["expected"])])
        before = logs["expected"].read_text()
        logs["resumed"].write_text(before)
    full_run(data, extra=[CSVLogger(logs["expected"], append=append)])
    path = tmp_path / "run.ckpt"
    for crash in (13, 30):
        with pytest.MonkeyPatch.context() as patch:
            crash_at_step(patch, crash)
            with pytest.raises(Crash):
                full_run(data, extra=[CSVLogger(logs["resumed"], append=append)], checkpoint=path, resume=True)
    full_run(data, extra=[CSVLogger(logs["resumed"], append=append)], checkpoint=path, resume=True)
    assert logs["resumed"].read_text().startswith(before if append else "epoch,")
    expected, resumed = _csv_without_seconds(logs["expected"]), _csv_without_seconds(logs["resumed"])
    assert resumed == expected and len(resumed) == 1 + 2 * append + 6


# ------------------------------------------------------------------------------------ SIGKILL
@pytest.mark.parametrize("variant", ["cosine", "onecycle"])
def test_sigkill_with_callbacks_then_resume_is_bit_exact(variant, tmp_path):
    """The worker of tests/checkpoint_worker.py with early stopping on val_loss (restoring its best weights), the
    schedule, clip_norm and a validation split, killed with SIGKILL at random moments and during checkpoint writes,
    then resumed: it must end as the uninterrupted run did (which stopped early)."""
    from checkpoint_worker import kill_trial, reference

    backend = BACKENDS[-1]
    rng = random.Random(f"kill-{variant}")
    expected = reference(tmp_path, backend, variant)
    assert expected.info["stop_reason"].startswith("early stopping: val_loss")
    results = []
    for trial, (mode, every) in enumerate([("delay", 3), ("write", 1)]):
        result = kill_trial(tmp_path / str(trial), backend, every, expected, rng, mode, variant)
        assert result.bit_exact, f"trial {trial} ({mode}): {result.mismatch}"
        results.append(result)
    assert sum(result.kill_points for result in results) >= 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_with_dropout_a_schedule_clipping_and_early_stopping_is_bit_exact(backend, tmp_path):
    """Issue 13's promise: the worker with Dropout after each hidden layer, the cosine schedule, clip_norm and early
    stopping on a validation split (restoring its best weights), killed with SIGKILL at random moments and during
    checkpoint writes, then resumed, ends as the uninterrupted run did (which stopped early), on each backend: the
    masks of a resumed epoch are made again from the checkpoint's generator state."""
    from checkpoint_worker import kill_trial, reference

    rng = random.Random(f"kill-dropout-{backend}")
    expected = reference(tmp_path, backend, "dropout")
    assert expected.info["stop_reason"].startswith("early stopping: val_loss")
    cosine = reference(tmp_path, backend, "cosine")  # the same run without dropout: dropout changed the run
    assert not np.array_equal(expected.arrays["parameters"], cosine.arrays["parameters"])
    results = []
    for trial, (mode, every) in enumerate([("delay", 3), ("write", 1), ("delay", 1)]):
        result = kill_trial(tmp_path / str(trial), backend, every, expected, rng, mode, "dropout")
        assert result.bit_exact, f"trial {trial} ({mode}): {result.mismatch}"
        results.append(result)
    assert sum(result.kill_points for result in results) >= 1
