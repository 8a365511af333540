"""Callbacks with Keras's semantics: decisions on recorded metric sequences (written by hand from Keras's documented
rules, and compared with Keras itself when it is installed), then each callback inside ``fit``: early stopping and
its restored weights, learning-rate changes, CSV logs, model checkpoints, NaN termination, user callbacks, the order
of events and ``params``."""

from __future__ import annotations

import csv
import math
import os
import random

import numpy as np
import pytest

import fastopt
from fastopt import callbacks, datasets, layers, optim
from fastopt.callbacks import (
    Callback,
    CSVLogger,
    EarlyStopping,
    LearningRateScheduler,
    ModelCheckpoint,
    ReduceLROnPlateau,
    TerminateOnNaN,
)

EPOCHS, BATCH_SIZE, SEED = 20, 32, 1  # 200 training rows: 7 batches per epoch, the last of 8 rows


class FakeModel:
    """What callbacks use of a model: the stop flag and reason, the optimizer, and weights (one array holding the
    number of the epoch that made them, so that restored weights name their epoch)."""

    def __init__(self, optimizer: object = None) -> None:
        self.optimizer, self.stop_training, self.stop_reason = optimizer, False, ""
        self.weights = [np.array([-1.0])]

    def get_weights(self) -> list[np.ndarray]:
        return [weight.copy() for weight in self.weights]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.weights = [np.array(weight) for weight in weights]


class KerasOptimizer:
    """What Keras's ReduceLROnPlateau reads and writes: a ``learning_rate`` (a Python float, so no rounding)."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = learning_rate


def replay(callback, monitor: str, values: list[float], model: FakeModel) -> dict:
    """Feed ``values`` as the monitored metric of successive epochs until the callback stops the run; returns the
    epochs run, the rate after each (and as logged), and the epoch whose weights the model ends with."""
    callback.set_model(model)
    callback.on_train_begin({})
    ran, rates, logged = 0, [], []
    for epoch, value in enumerate(values):
        model.weights = [np.array([float(epoch)])]
        logs = {monitor: value}
        callback.on_epoch_end(epoch, logs)
        ran += 1
        rates.append(_rate(model.optimizer))
        logged.append(logs.get("learning_rate"))
        if model.stop_training:
            break
    callback.on_train_end({})
    return {"epochs": ran, "rates": rates, "logged": logged, "weights_of_epoch": int(model.weights[0][0])}


def _rate(optimizer: object) -> float | None:
    if optimizer is None:
        return None
    if isinstance(optimizer, KerasOptimizer):
        return optimizer.learning_rate
    return optimizer.param_groups[0]["lr"]


def _sgd(lr: float = 0.1, groups: int = 1) -> optim.SGD:
    return optim.SGD([{"params": [np.zeros(2)], "lr": rate} for rate in [lr, lr / 10][:groups]])


# ------------------------------------------------------------------------------------ decisions, by hand
# (arguments, metric, values, epochs run, the epoch whose weights are restored); each traced by hand with Keras's
# rules: an improvement is value + min_delta < best ("min") or value - min_delta > best ("max"); the wait counts
# epochs since the last improvement that also beat the baseline; an improving epoch never stops; the run stops when
# wait >= patience (not at epoch 0); epochs before start_from_epoch are not watched.
EARLY_STOPPING_CASES = {
    "patience 2": ({"patience": 2}, "val_loss", [1.0, 0.8, 0.85, 0.82, 0.7], 4, 1),
    "min_delta counts against the value": ({"patience": 1, "min_delta": 0.05}, "val_loss", [1.0, 0.97, 0.9], 2, 0),
    "max with min_delta": (
        {"patience": 1, "min_delta": 0.01, "mode": "max"},
        "val_accuracy",
        [0.5, 0.6, 0.605, 0.7],
        3,
        1,
    ),
    "auto is max for accuracy": ({"patience": 0}, "val_accuracy", [0.5, 0.4, 0.6], 2, 0),
    "auto is min for a loss": ({"patience": 0}, "loss", [0.5, 0.4, 0.6, 0.1], 3, 1),
    "improving short of the baseline never stops": (
        {"patience": 2, "baseline": 0.5},
        "val_loss",
        [0.9, 0.8, 0.7, 0.65, 0.66, 0.64, 0.67],
        5,
        3,
    ),
    "beating the baseline resets the wait": (
        {"patience": 2, "baseline": 0.85},
        "val_loss",
        [0.9, 0.8, 0.82, 0.83, 0.79],
        4,
        1,
    ),
    "start_from_epoch": ({"patience": 1, "start_from_epoch": 2}, "val_loss", [0.5, 0.4, 1.0, 0.9, 0.95, 0.1], 5, 3),
    "patience 0": ({"patience": 0}, "val_loss", [1.0, 1.1, 0.5], 2, 0),
    "no stop": ({"patience": 3}, "val_loss", [1.0, 1.1, 1.2, 0.9, 1.0, 1.1], 6, 3),
}


@pytest.mark.parametrize("case", sorted(EARLY_STOPPING_CASES))
def test_early_stopping_decides_as_keras_documents(case):
    options, monitor, values, epochs, best = EARLY_STOPPING_CASES[case]
    model = FakeModel()
    callback = EarlyStopping(monitor=monitor, restore_best_weights=True, **options)
    result = replay(callback, monitor, values, model)
    assert (result["epochs"], result["weights_of_epoch"], callback.best_epoch) == (epochs, best, best)
    stopped = epochs < len(values)
    assert model.stop_training == stopped and callback.stopped_epoch == (epochs - 1 if stopped else 0)
    if stopped:
        assert model.stop_reason == (
            f"early stopping: {monitor} did not improve for {callback.wait} epochs "
            f"(best {values[best]:.6g} at epoch {best + 1})"
        )


def test_early_stopping_without_restore_keeps_the_last_weights():
    model = FakeModel()
    result = replay(EarlyStopping(patience=2), "val_loss", [1.0, 0.8, 0.85, 0.82, 0.7], model)
    assert result["epochs"] == 4 and result["weights_of_epoch"] == 3


def test_early_stopping_warns_about_a_missing_metric_and_does_nothing():
    model = FakeModel()
    callback = EarlyStopping(monitor="val_los", patience=0)
    callback.set_model(model)
    with pytest.warns(UserWarning, match=r"the metric 'val_los' is not in the logs \['val_loss'\]"):
        callback.on_epoch_end(1, {"val_loss": 1.0})
    assert not model.stop_training and callback.wait == 0


# Keras's ReduceLROnPlateau, traced by hand: factor 0.5, patience 2, cooldown 1, min_lr 1/128, min_delta 0.01. In
# cooldown the wait stays 0 (the epoch that ends the cooldown already counts); a rate at min_lr is not reduced,
# and then neither the wait nor the cooldown restarts.
PLATEAU_VALUES = [1.0, 0.995, 0.99, 0.98, 0.97, 0.96, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
PLATEAU_RATES = [0.1, 0.1, 0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 0.025, 0.025, 0.0125, 0.0125] + [1 / 128] * 4
PLATEAU_OPTIONS = {"factor": 0.5, "patience": 2, "cooldown": 1, "min_lr": 1 / 128, "min_delta": 0.01}


def test_reduce_lr_on_plateau_decides_as_keras_documents():
    model = FakeModel(_sgd(0.1))
    result = replay(ReduceLROnPlateau(**PLATEAU_OPTIONS), "val_loss", PLATEAU_VALUES, model)
    assert result["rates"] == PLATEAU_RATES
    assert result["logged"] == [0.1, *PLATEAU_RATES[:-1]]  # each epoch logs the rate it trained with


def test_reduce_lr_on_plateau_reduces_every_parameter_group():
    """With two groups (0.1 and 0.01), each is halved and floored at min_lr on its own: their ratio stays until the
    second reaches min_lr, and the first group's rate is the one logged."""
    optimizer = _sgd(0.1, groups=2)
    replay(
        ReduceLROnPlateau(factor=0.5, patience=0, min_lr=0.004), "val_loss", [1.0, 1.0, 1.0, 1.0], FakeModel(optimizer)
    )
    assert [group["lr"] for group in optimizer.param_groups] == [0.0125, 0.004]


def test_learning_rate_scheduler_gets_0_based_epochs_and_each_groups_rate():
    optimizer, calls = _sgd(0.1, groups=2), []

    def schedule(epoch: int, lr: float) -> float:
        calls.append((epoch, lr))
        return lr * 0.5 if epoch >= 1 else lr

    callback = LearningRateScheduler(schedule)
    callback.set_model(FakeModel(optimizer))
    for epoch in range(3):
        callback.on_epoch_begin(epoch, {})
    assert calls == [(0, 0.1), (0, 0.01), (1, 0.1), (1, 0.01), (2, 0.05), (2, 0.005)]
    assert [group["lr"] for group in optimizer.param_groups] == [0.025, 0.0025]
    logs: dict = {}
    callback.on_epoch_end(2, logs)
    assert logs == {"learning_rate": 0.025}


def test_learning_rate_scheduler_refuses_a_bad_rate_and_changes_nothing():
    optimizer = _sgd(0.1, groups=2)
    callback = LearningRateScheduler(lambda epoch, lr: -lr if lr < 0.05 else lr)
    callback.set_model(FakeModel(optimizer))
    with pytest.raises(ValueError, match=r"the learning rate schedule\(epoch, lr\) gave must be >= 0"):
        callback.on_epoch_begin(0, {})
    assert [group["lr"] for group in optimizer.param_groups] == [0.1, 0.01]
    with pytest.raises(TypeError, match="schedule must be a function"):
        LearningRateScheduler(0.1)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------ decisions, against Keras
@pytest.fixture(scope="module")
def keras_callbacks():
    """Keras 3's callbacks module, on the PyTorch backend (Keras 3 needs one; tests may have PyTorch's CPU build)."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    if int(keras.__version__.split(".")[0]) < 3:
        pytest.skip(f"Keras {keras.__version__}: the comparison is with Keras 3's rules")
    return keras.callbacks


def _random_walk(rng: random.Random, length: int) -> list[float]:
    value, values = 1.0, []
    for _ in range(length):
        value += rng.choice([-0.05, -0.02, -0.005, 0.0, 0.004, 0.03])
        values.append(round(value, 3))
    return values


def test_early_stopping_decides_as_keras_on_the_hand_written_cases(keras_callbacks):
    for case, (options, monitor, values, _, _) in EARLY_STOPPING_CASES.items():
        options = dict(options, mode=options.get("mode", "max" if "acc" in monitor else "min"))  # Keras 3 needs it
        runs = [
            replay(kind(monitor=monitor, restore_best_weights=True, **options), monitor, values, FakeModel())
            for kind in (EarlyStopping, keras_callbacks.EarlyStopping)
        ]
        assert runs[0] == runs[1], case


def test_early_stopping_decides_as_keras_on_random_sequences(keras_callbacks):
    rng = random.Random(13)
    for trial in range(300):
        values = _random_walk(rng, 30)
        options = {
            "patience": rng.randint(0, 4), "min_delta": rng.choice([0.0, 0.004, 0.02]),
            "mode": rng.choice(["min", "max"]), "baseline": rng.choice([None, 0.9, 1.05]),
            "start_from_epoch": rng.randint(0, 3),
            "restore_best_weights": rng.random() < 0.5,
        }  # fmt: skip
        runs = [
            replay(kind(monitor="val_loss", **options), "val_loss", values, FakeModel())
            for kind in (EarlyStopping, keras_callbacks.EarlyStopping)
        ]
        assert runs[0] == runs[1], (trial, options, values)


def test_reduce_lr_on_plateau_decides_as_keras(keras_callbacks):
    rng = random.Random(17)
    cases = [(PLATEAU_OPTIONS, PLATEAU_VALUES)]
    for _ in range(300):
        options = {
            "factor": rng.choice([0.1, 0.5, 0.8]), "patience": rng.randint(0, 4), "cooldown": rng.randint(0, 3),
            "min_lr": rng.choice([0.0, 1 / 64, 1 / 1024]), "min_delta": rng.choice([0.0, 1e-4, 0.01]),
            "mode": rng.choice(["min", "max"]),
        }  # fmt: skip
        cases.append((options, _random_walk(rng, 30)))
    for options, values in cases:
        mine = replay(ReduceLROnPlateau(**options), "val_loss", values, FakeModel(_sgd(0.1)))
        theirs = replay(
            keras_callbacks.ReduceLROnPlateau(**options), "val_loss", values, FakeModel(KerasOptimizer(0.1))
        )
        assert mine == theirs, (options, values)


# ------------------------------------------------------------------------------------ inside fit
@pytest.fixture(scope="module")
def data():
    X, y, X_test, y_test = datasets.mini()
    return X[:200], y[:200], X_test[:100], y_test[:100]


def make_model() -> fastopt.Sequential:
    return fastopt.Sequential([layers.Dense(784, 16), layers.ReLU(), layers.Dense(16, 10)], seed=0)


def fit(data, model=None, optimizer=None, **options):
    X, y, X_val, y_val = data
    model = model or make_model()
    arguments = dict(epochs=EPOCHS, batch_size=BATCH_SIZE, seed=SEED, validation_data=(X_val, y_val))
    history = model.fit(X, y, optimizer=optimizer or optim.Adam(lr=0.01), **dict(arguments, **options))
    return model, history


class WeightsByEpoch(Callback):
    """Records the model's weights at the end of each epoch (0-based)."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[list[np.ndarray]] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        assert epoch == len(self.weights)
        self.weights.append(self.model.get_weights())


def test_early_stopping_in_fit_restores_the_best_epochs_weights(data):
    """Adam at lr 0.01 on 200 rows: val_loss falls, then wanders; patience 2 stops the run two epochs after its
    best, and the model ends with the weights it had at the end of that best epoch."""
    record = WeightsByEpoch()
    early = EarlyStopping(monitor="val_loss", patience=2, restore_best_weights=True)
    model, history = fit(data, callbacks=[record, early])
    losses = history.history["val_loss"]
    best = int(np.argmin(losses))
    assert 0 < best < len(losses) - 1 < EPOCHS - 1 and len(losses) == best + 3
    assert history.epochs == list(range(1, best + 4)) and len(record.weights) == best + 3
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), record.weights[best]))
    assert history.stop_reason == f"early stopping: val_loss did not improve for 2 epochs (best {losses[best]:.6g} " \
        f"at epoch {best + 1})"  # fmt: skip
    assert early.stopped_epoch == best + 2 and early.best_epoch == best


def test_early_stopping_start_from_epoch_and_accuracy_in_fit(data):
    """mode "auto" watches val_accuracy upwards; from epoch 3 (0-based) on, with patience 1, the first epoch not
    above the best accuracy since epoch 3 stops the run."""
    early = EarlyStopping(monitor="val_accuracy", patience=1, start_from_epoch=3)
    _, history = fit(data, callbacks=[early])
    accuracies = history.history["val_accuracy"]
    stop = next(i for i in range(4, EPOCHS) if accuracies[i] <= max(accuracies[3:i]))
    assert early.mode == "max" and len(accuracies) == stop + 1 and history.stop_reason.startswith("early stopping")


def test_reduce_lr_on_plateau_in_fit_logs_each_epochs_rate(data):
    """The run's val_loss replayed through the same rules gives the rates fit trained with (the logged
    ``learning_rate``), and the optimizer ends with the last one reduced."""
    optimizer = optim.Adam(lr=0.01)
    plateau = ReduceLROnPlateau(factor=0.5, patience=1, min_lr=0.002, min_delta=0.01)
    rates_seen = []
    spy = callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: rates_seen.append(optimizer.lr))
    _, history = fit(data, optimizer=optimizer, callbacks=[plateau, spy])
    replayed = replay(ReduceLROnPlateau(factor=0.5, patience=1, min_lr=0.002, min_delta=0.01), "val_loss",
                      history.history["val_loss"], FakeModel(_sgd(0.01)))  # fmt: skip
    assert history.history["learning_rate"] == replayed["logged"]
    assert rates_seen[:: math.ceil(200 / BATCH_SIZE)] == replayed["logged"]
    assert optimizer.param_groups[0]["lr"] == replayed["rates"][-1] == 0.002


def test_learning_rate_scheduler_in_fit(data):
    optimizer, calls, rates_seen = optim.SGD(lr=0.1, momentum=0.9), [], []

    def schedule(epoch: int, lr: float) -> float:
        calls.append((epoch, lr))
        return 0.1 / (1 + epoch)

    spy = callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: rates_seen.append(optimizer.lr))
    _, history = fit(data, optimizer=optimizer, epochs=4, callbacks=[LearningRateScheduler(schedule), spy])
    expected = [0.1 / (1 + epoch) for epoch in range(4)]
    assert calls == [(0, 0.1), *((epoch, expected[epoch - 1]) for epoch in range(1, 4))]
    assert history.history["learning_rate"] == expected
    assert sorted(set(rates_seen), reverse=True) == expected and len(rates_seen) == 4 * 7


def _read_csv(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    return rows[0], rows[1:]


def test_csv_logger_writes_keras_columns(data, tmp_path):
    path = tmp_path / "log.csv"
    _, history = fit(data, epochs=3, callbacks=[CSVLogger(path)])
    header, rows = _read_csv(path)
    assert header == ["epoch", *sorted(history.history)]
    assert [row[0] for row in rows] == ["0", "1", "2"]
    for index, row in enumerate(rows):
        assert [float(value) for value in row[1:]] == [history.history[key][index] for key in header[1:]]


def test_csv_logger_append_keeps_the_rows_before_the_fit(data, tmp_path):
    path = tmp_path / "log.csv"
    fit(data, epochs=2, callbacks=[CSVLogger(path)])
    first = path.read_text()
    fit(data, epochs=3, callbacks=[CSVLogger(path, separator=";", append=True)])
    text = path.read_text()
    assert text.startswith(first) and text.count("epoch") == 1  # one header
    assert [line.split(";")[0] for line in text[len(first) :].splitlines()] == ["0", "1", "2"]
    fit(data, epochs=1, callbacks=[CSVLogger(path)])
    assert len(path.read_text().splitlines()) == 2  # append=False starts the file again


def test_csv_logger_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match=r"CSVLogger: the folder of .* does not exist"):
        CSVLogger(tmp_path / "no" / "log.csv")


def test_model_checkpoint_formats_names_and_saves_loadable_models(data, tmp_path):
    record = WeightsByEpoch()
    pattern = str(tmp_path / "model-{epoch:02d}-{val_loss:.4f}.npz")
    _, history = fit(data, epochs=4, callbacks=[record, ModelCheckpoint(pattern)])
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [f"model-{epoch + 1:02d}-{loss:.4f}.npz" for epoch, loss in enumerate(history.history["val_loss"])]
    for epoch, name in enumerate(names):
        loaded = fastopt.load(tmp_path / name)
        assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), record.weights[epoch]))


def test_model_checkpoint_save_best_only(data, tmp_path, monkeypatch):
    """Saved at the epochs whose val_accuracy beats every earlier one (an equal one does not), so that the file
    holds the weights of the first epoch reaching the best accuracy."""
    record, saved_at, path = WeightsByEpoch(), [], tmp_path / "best.npz"
    original = fastopt.Sequential.save
    monkeypatch.setattr(fastopt.Sequential, "save", lambda model, *args: (saved_at.append(len(record.weights) - 1),
                                                                          original(model, *args)))  # fmt: skip
    checkpoint = ModelCheckpoint(path, monitor="val_accuracy", save_best_only=True)
    _, history = fit(data, epochs=8, callbacks=[record, checkpoint])
    accuracies = history.history["val_accuracy"]
    improved = [i for i in range(len(accuracies)) if accuracies[i] > max(accuracies[:i], default=-1.0)]
    assert saved_at == improved and len(improved) < len(accuracies)
    best = int(np.argmax(accuracies))
    assert checkpoint.best == accuracies[best] and improved[-1] == best
    loaded = fastopt.load(path)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.get_weights(), record.weights[best]))


def test_model_checkpoint_refuses_a_field_the_logs_lack(data, tmp_path):
    with pytest.raises(ValueError, match=r"cannot format '.*\{val_auc\}.*' with epoch and the logs \[.*'val_loss'"):
        fit(data, epochs=1, callbacks=[ModelCheckpoint(str(tmp_path / "m-{val_auc}.npz"))])


def poisoned(data, row: int):
    """``data`` whose training row ``row`` overflows the first layer, so the loss of its batch is NaN."""
    X, y, X_val, y_val = data
    X = X.copy()
    X[row] = 3e38
    return X, y, X_val, y_val


@pytest.mark.parametrize("how", ["TerminateOnNaN", "on_nonfinite"])
def test_a_nan_loss_stops_before_its_update(data, how):
    """Row 100 of the first epoch's shuffled order: its batch (the 4th) has a NaN loss; the run stops there
    with the parameters of the batch before it, the epoch unrecorded, and the reason in the history."""
    row = int(np.random.default_rng(SEED).permutation(200)[100])
    before_bad_batch = []
    spy = callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: before_bad_batch.append(
        model.get_weights()))  # fmt: skip
    model = make_model()
    options = {"callbacks": [spy, TerminateOnNaN()]} if how == "TerminateOnNaN" else {
        "callbacks": [spy], "on_nonfinite": "stop"}  # fmt: skip
    with np.errstate(all="ignore"):
        _, history = fit(poisoned(data, row), model=model, **options)
    assert len(before_bad_batch) == 4 and history.epochs == [] and model.optimizer.step_count == 3
    assert all(np.array_equal(a, b) for a, b in zip(model.get_weights(), before_bad_batch[-1]))
    expected = "TerminateOnNaN: the loss became nan at batch 4" if how == "TerminateOnNaN" else \
        "the loss became nan at epoch 1, batch 4: stopped"  # fmt: skip
    assert history.stop_reason == expected


class Recorder(Callback):
    """Records every event with its arguments (and the keys of its logs)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple] = []

    def _record(self, name: str, *args) -> None:
        *numbers, logs = args
        self.events.append((name, *numbers, tuple(sorted(logs or {}))))

    def on_train_begin(self, logs=None):
        self._record("train_begin", logs)

    def on_train_end(self, logs=None):
        self._record("train_end", logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._record("epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._record("epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        self._record("batch_begin", batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        self._record("batch_end", batch, logs)


def test_events_come_in_keras_order_with_params(data):
    """Two epochs of 3 batches (70 rows): begin, then per epoch its begin, each batch's begin and end (with the
    batch's loss), its end (with the epoch's metrics); the indices are 0-based, as in Keras."""
    recorder = Recorder()
    X, y, X_val, y_val = data
    model = make_model()
    model.fit(X[:70], y[:70], epochs=2, batch_size=32, validation_data=(X_val, y_val), callbacks=[recorder], verbose=0)

    def epoch(number: int) -> list[tuple]:
        batches = [
            event for batch in range(3) for event in (("batch_begin", batch, ()), ("batch_end", batch, ("loss",)))
        ]
        metrics = ("accuracy", "loss", "seconds", "val_accuracy", "val_loss")
        return [("epoch_begin", number, ()), *batches, ("epoch_end", number, metrics)]

    assert recorder.events == [("train_begin", ()), *epoch(0), *epoch(1), ("train_end", ())]
    assert recorder.params == {"epochs": 2, "steps": 3, "batch_size": 32, "verbose": 0, "samples": 70}
    assert recorder.model is model


def test_a_callback_stops_the_run_with_its_reason(data):
    class StopAtEpoch(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                self.stop("enough: two epochs")

    class KerasStyle(Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 2:
                self.model.stop_training = True

    _, history = fit(data, callbacks=[StopAtEpoch()])
    assert history.epochs == [1, 2] and history.stop_reason == "enough: two epochs"
    _, history = fit(data, callbacks=[KerasStyle()])
    assert history.epochs == [1, 2, 3] and history.stop_reason == "stopped by KerasStyle"
    _, history = fit(data, epochs=2)
    assert history.stop_reason == "completed"


def test_a_stop_inside_an_epoch_leaves_it_unrecorded(data):
    stopper = callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batch == 2 and setattr(stopper.model, "stop_training", True)
    )
    model, history = fit(data, callbacks=[stopper])
    assert history.epochs == [] and model.optimizer.step_count == 3
    assert history.stop_reason == "stopped by LambdaCallback"


def test_lambda_callback_refuses_unknown_events():
    with pytest.raises(ValueError, match=r"unknown events \['on_batch_end'\]; known: \["):
        callbacks.LambdaCallback(on_batch_end=print)


def test_bad_callback_arguments_are_refused():
    cases = [
        (lambda: EarlyStopping(mode="up"), ValueError, "mode must be 'auto', 'min' or 'max'"),
        (lambda: EarlyStopping(patience=-1), ValueError, "patience must be >= 0"),
        (lambda: EarlyStopping(patience=1.5), TypeError, "patience must be an integer"),
        (lambda: EarlyStopping(start_from_epoch=-2), ValueError, "start_from_epoch must be >= 0"),
        (lambda: EarlyStopping(min_delta=math.nan), ValueError, "min_delta must be finite"),
        (lambda: ReduceLROnPlateau(factor=1.0), ValueError, "factor must be < 1"),
        (lambda: ReduceLROnPlateau(cooldown=-1), ValueError, "cooldown must be >= 0"),
        (lambda: ReduceLROnPlateau(min_lr=-1e-3), ValueError, "min_lr must be >= 0"),
        (lambda: ModelCheckpoint("m.npz", mode="best"), ValueError, "mode must be"),
        # each of these used to fail only once training had run, or never (a NaN threshold: nothing was saved)
        (lambda: EarlyStopping(monitor=5), TypeError, "monitor must be the name of a metric"),
        (lambda: ModelCheckpoint("m.npz", monitor=None), TypeError, "monitor must be the name of a metric"),
        (lambda: ModelCheckpoint("m.npz", initial_value_threshold=math.nan), ValueError, "must be a number or None"),
        (lambda: ModelCheckpoint("m.npz", initial_value_threshold="0.5"), ValueError, "must be a number or None"),
        (lambda: ModelCheckpoint("m-{epoch.real}.npz"), ValueError, r"the field \{epoch\.real\} .* must name"),
        (lambda: ModelCheckpoint("m-{epoch[0]}.npz"), ValueError, r"the field \{epoch\[0\]\}"),
        (lambda: ModelCheckpoint("m-{epoch.npz"), ValueError, "is not a path template"),
        (lambda: CSVLogger("log.csv", separator=""), ValueError, "separator must be one character"),
        (lambda: CSVLogger("log.csv", separator='"'), ValueError, "separator must be one character"),
        (lambda: CSVLogger(os.getcwd()), ValueError, "is a folder"),
        (lambda: callbacks.LambdaCallback(on_epoch_end=5), TypeError, "on_epoch_end must be a function"),
    ]
    for build, error, match in cases:
        with pytest.raises(error, match=match):
            build()


def test_csv_logger_refuses_to_replace_a_file_that_is_not_a_log_before_training(data, tmp_path):
    """A file that is not a CSV log of epochs (a saved model named by mistake) is refused before the first step,
    unchanged (it was replaced by the log after the first epoch); a log is replaced."""
    path = tmp_path / "model.npz"
    make_model().save(path)
    saved = path.read_bytes()
    model = make_model()
    before = model.parameters.copy()
    with pytest.raises(ValueError, match="exists and is not a CSV log of epochs"):
        fit(data, model=model, epochs=1, callbacks=[CSVLogger(path)])
    assert path.read_bytes() == saved and model.parameters.tobytes() == before.tobytes()
    log = tmp_path / "log.csv"
    fit(data, epochs=1, callbacks=[CSVLogger(log)])
    fit(data, epochs=2, callbacks=[CSVLogger(log)])
    assert len(_read_csv(log)[1]) == 2


def test_model_checkpoint_keeps_its_best_when_a_save_is_refused(data, tmp_path):
    """save_best_only: a save refused (the path a folder) leaves ``best`` at the last model saved, so the next
    epoch that beats that is saved (it took the refused epoch's value as its best)."""
    (tmp_path / "m-1.npz").mkdir()
    checkpoint = ModelCheckpoint(str(tmp_path / "m-{epoch}.npz"), monitor="loss", save_best_only=True)
    with pytest.raises(ValueError, match="exists and is not a file"):
        fit(data, epochs=1, callbacks=[checkpoint])
    assert checkpoint.best is None


def test_fit_refuses_what_is_not_a_callback(data):
    X, y, _, _ = data
    with pytest.raises(TypeError, match=r"callbacks\[1\] is not a fastopt.callbacks.Callback"):
        make_model().fit(X, y, callbacks=[TerminateOnNaN(), print])
    with pytest.raises(TypeError, match="callbacks must be a list"):
        make_model().fit(X, y, callbacks=TerminateOnNaN())
