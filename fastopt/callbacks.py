"""Callbacks for ``Sequential.fit(..., callbacks=[...])``, with Keras's protocol and names.

A callback's methods are called at the begin and end of the fit, of each epoch and of each batch:
``on_train_begin(logs)``, ``on_epoch_begin(epoch, logs)``, ``on_train_batch_begin(batch, logs)``,
``on_train_batch_end(batch, logs)`` (``logs["loss"]``: the batch's mean loss), ``on_epoch_end(epoch, logs)`` (the
epoch's metrics, which a callback may add to: they go into the ``History`` after every callback ran), and
``on_train_end(logs)``. As in Keras, ``epoch`` and ``batch`` are 0-based indices; ``self.model`` is the model and
``self.params`` holds ``epochs``, ``steps`` (batches per epoch), ``batch_size`` and ``verbose``.

A callback stops training with ``self.stop(reason)`` (or Keras's ``self.model.stop_training = True``): the fit
ends after the current batch or epoch and returns its ``History``, whose ``stop_reason`` says why.

Checkpoints (``fit(checkpoint=...)``) hold each callback's ``state_dict()`` (JSON values and NumPy arrays) and
give it back through ``load_state_dict`` on resume, so that a resumed run decides as the uninterrupted one would;
``config()`` is what must be equal for a checkpoint to be resumed with these callbacks.
"""

from __future__ import annotations

import csv
import io
import math
import os
import string
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastopt._checks import check_metric_name, check_metric_value, check_nonnegative_int, check_scalar

if TYPE_CHECKING:
    from fastopt.model import Sequential


class Callback:
    """Base class: every method does nothing."""

    def __init__(self) -> None:
        self.model: Sequential | None = None
        self.params: dict[str, Any] = {}

    def set_model(self, model: Sequential) -> None:
        self.model = model

    def set_params(self, params: dict[str, Any]) -> None:
        self.params = params

    def stop(self, reason: str) -> None:
        """End the fit after the current batch or epoch; ``reason`` becomes ``History.stop_reason``."""
        assert self.model is not None, "the callback is not attached to a model"
        self.model.stop_training = True
        self.model.stop_reason = reason

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_train_end(self, logs: dict[str, Any] | None = None) -> None: ...
    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_train_batch_begin(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...
    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What the callback has learnt during the run (JSON values and NumPy arrays), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take back ``state_dict()`` output."""

    def check_state_dict(self, state: dict[str, Any]) -> None:
        """Raise ``ValueError`` or ``TypeError`` naming the field unless ``load_state_dict`` takes ``state``;
        changes nothing (a resumed checkpoint's callback states are checked before anything is restored)."""

    def check_run(self, optimizer: Any) -> None:
        """Raise ``ValueError`` unless the callback can serve a fit with ``optimizer`` and the ``params`` it was
        given; called before the fit binds the optimizer or restores a checkpoint, so a refusal changes nothing."""

    def config(self) -> dict[str, Any]:
        """The settings that make a resumed run the same run (compared on resume)."""
        return {}


class CallbackList:
    """The callbacks of one fit, called in order. After each call it notices a callback that stopped training."""

    def __init__(self, callbacks: Sequence[Callback], model: Sequential, params: dict[str, Any]) -> None:
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            callback.set_model(model)
            callback.set_params(params)
        self.model = model

    def _each(self, method: str, *args: Any) -> None:
        for callback in self.callbacks:
            stopped = self.model.stop_training
            getattr(callback, method)(*args)
            if self.model.stop_training and not stopped and not self.model.stop_reason:
                self.model.stop_reason = f"stopped by {type(callback).__name__}"

    def on_train_begin(self, logs: dict[str, Any]) -> None:
        self._each("on_train_begin", logs)

    def on_train_end(self, logs: dict[str, Any]) -> None:
        self._each("on_train_end", logs)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any]) -> None:
        self._each("on_epoch_begin", epoch, logs)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any]) -> None:
        self._each("on_epoch_end", epoch, logs)

    def on_train_batch_begin(self, batch: int, logs: dict[str, Any]) -> None:
        self._each("on_train_batch_begin", batch, logs)

    def on_train_batch_end(self, batch: int, logs: dict[str, Any]) -> None:
        self._each("on_train_batch_end", batch, logs)

    def stateful(self) -> list[Callback]:
        """The callbacks that learn during a run (they override ``state_dict``): checkpoints hold their states, and
        a checkpoint resumes only with the same ones (in order, with the same ``config()``)."""
        return [callback for callback in self.callbacks if type(callback).state_dict is not Callback.state_dict]

    def state_dicts(self) -> list[dict[str, Any]]:
        return [callback.state_dict() for callback in self.stateful()]

    def load_state_dicts(self, states: list[dict[str, Any]]) -> None:
        for callback, state in zip(self.stateful(), states):
            callback.load_state_dict(state)

    def check_run(self, optimizer: Any) -> None:
        for callback in self.callbacks:
            callback.check_run(optimizer)

    def check_state_dicts(self, states: list[dict[str, Any]]) -> None:
        """``check_state_dict`` of each stateful callback; the error names the callback's place among them."""
        for index, (callback, state) in enumerate(zip(self.stateful(), states)):
            try:
                callback.check_state_dict(state)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"the state of callbacks[{index}] ({type(callback).__name__}): {exc}") from exc

    def configs(self) -> list[dict[str, Any]]:
        return [{"class": type(callback).__name__, **callback.config()} for callback in self.stateful()]


# ------------------------------------------------------------------------------------------------ helpers
def _check_mode(mode: str, monitor: str) -> str:
    """Keras's ``mode``: "min", "max", or "auto" (max for accuracy-like metrics, min otherwise)."""
    check_metric_name(monitor)
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if any(word in monitor for word in ("acc", "auc")) else "min"
    return mode


def _is_better(value: float, reference: float | None, mode: str, min_delta: float) -> bool:
    """Whether ``value`` improves on ``reference`` by more than ``min_delta`` (Keras's rule: ``value + min_delta <
    reference`` in mode "min", ``value - min_delta > reference`` in mode "max"; anything beats no reference)."""
    if reference is None:
        return True
    return value + min_delta < reference if mode == "min" else value - min_delta > reference


def _monitored(logs: dict[str, Any] | None, monitor: str, who: str) -> float | None:
    value = (logs or {}).get(monitor)
    if value is None:
        warnings.warn(f"{who}: the metric {monitor!r} is not in the logs {sorted(logs or {})}", stacklevel=3)
        return None
    return float(value)


def _lr_groups(optimizer: Any) -> list[dict[str, Any]]:
    """The dicts holding an optimizer's learning rates: its parameter groups (its defaults before it has any)."""
    return optimizer.param_groups or [optimizer.defaults]


def current_lr(optimizer: Any) -> float:
    """The learning rate of an optimizer's first parameter group (its default when it has no parameters yet)."""
    return float(_lr_groups(optimizer)[0]["lr"])


# ------------------------------------------------------------------------------------------------ callbacks
class LambdaCallback(Callback):
    """A callback made of functions: ``LambdaCallback(on_epoch_end=lambda epoch, logs: ...)`` (Keras's)."""

    def __init__(self, **functions: Callable[..., None]) -> None:
        super().__init__()
        known = {name for name in dir(Callback) if name.startswith("on_")}
        unknown = set(functions) - known
        if unknown:
            raise ValueError(f"LambdaCallback: unknown events {sorted(unknown)}; known: {sorted(known)}")
        for name, function in functions.items():
            if not callable(function):
                raise TypeError(f"LambdaCallback: {name} must be a function, got {function!r}")
            setattr(self, name, function)


class EarlyStopping(Callback):
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` epochs (Keras's rule:
    counting from epoch ``start_from_epoch`` on; with ``baseline``, until it is beaten). ``restore_best_weights``:
    at the end, the model gets the weights of its best epoch back (of the last epoch watched if none improved)."""

    # fmt: off
    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0, verbose: int = 0,
                 mode: str = "auto", baseline: float | None = None, restore_best_weights: bool = False,
                 start_from_epoch: int = 0) -> None:
        # fmt: on
        super().__init__()
        self.monitor, self.verbose = monitor, verbose
        self.mode = _check_mode(mode, monitor)
        self.min_delta = abs(check_scalar(min_delta, "min_delta", low=None))
        self.patience = check_nonnegative_int(patience, "patience")
        self.baseline = None if baseline is None else check_scalar(baseline, "baseline", low=None)
        self.restore_best_weights = bool(restore_best_weights)
        self.start_from_epoch = check_nonnegative_int(start_from_epoch, "start_from_epoch")
        self._reset()

    def _reset(self) -> None:
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._reset()

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        current = _monitored(logs, self.monitor, "EarlyStopping")
        if current is None or epoch < self.start_from_epoch:
            return
        assert self.model is not None
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if _is_better(current, self.best, self.mode, self.min_delta):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or _is_better(current, self.baseline, self.mode, self.min_delta):
                self.wait = 0
            return  # an improvement never stops the run, even one short of the baseline (Keras's rule)
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.stop(
                f"early stopping: {self.monitor} did not improve for {self.wait} epochs "
                f"(best {self.best:.6g} at epoch {self.best_epoch + 1})"
            )
            if self.verbose:
                print(f"Epoch {epoch + 1}: early stopping")

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self.restore_best_weights and self.best_weights is not None:
            assert self.model is not None
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.")
            self.model.set_weights(self.best_weights)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"wait": self.wait, "stopped_epoch": self.stopped_epoch, "best": self.best,
                                 "best_epoch": self.best_epoch}  # fmt: skip
        if self.best_weights is not None:
            state.update({f"best_weights.{index}": array for index, array in enumerate(self.best_weights)})
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait, self.stopped_epoch, self.best, self.best_epoch, self.best_weights = self._parsed(state)

    def check_state_dict(self, state: dict[str, Any]) -> None:
        self._parsed(state)

    def _parsed(self, state: dict[str, Any]) -> tuple[int, int, float | None, int, list[np.ndarray] | None]:
        """``state``'s fields checked: the counts whole numbers >= 0, ``best`` a number or None, the best weights
        none or one array of each of the model's weights' shape, finite."""
        prefix = "best_weights."
        weights = sorted((int(key[len(prefix) :]), value) for key, value in state.items() if key.startswith(prefix))
        best_weights = [np.array(array) for _, array in weights] or None
        if best_weights is not None and self.model is not None:
            self.model._checked_weights(best_weights, "best_weights")
        counts = [check_nonnegative_int(state[name], name) for name in ("wait", "stopped_epoch", "best_epoch")]
        return counts[0], counts[1], _optional_number(state, "best"), counts[2], best_weights

    def config(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "min_delta": self.min_delta, "patience": self.patience, "mode": self.mode,
                "baseline": self.baseline, "restore_best_weights": self.restore_best_weights,
                "start_from_epoch": self.start_from_epoch}  # fmt: skip


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved by more than ``min_delta`` for
    ``patience`` epochs, then wait ``cooldown`` epochs; never below ``min_lr`` (Keras's callback). With parameter
    groups, each group's rate is multiplied (and kept at least ``min_lr``). The learning rate of each epoch (of the
    first group) is logged as ``learning_rate``."""

    # fmt: off
    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10, verbose: int = 0,
                 mode: str = "auto", min_delta: float = 1e-4, cooldown: int = 0, min_lr: float = 0.0) -> None:
        # fmt: on
        super().__init__()
        self.factor = check_scalar(factor, "factor", high=1.0, high_open=True)
        self.monitor, self.verbose = monitor, verbose
        self.mode = _check_mode(mode, monitor)
        self.patience = check_nonnegative_int(patience, "patience")
        self.min_delta = check_scalar(min_delta, "min_delta")
        self.cooldown = check_nonnegative_int(cooldown, "cooldown")
        self.min_lr = check_scalar(min_lr, "min_lr")
        self.on_train_begin()

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self.wait, self.cooldown_counter = 0, 0
        self.best: float | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.model is not None and self.model.optimizer is not None
        optimizer = self.model.optimizer
        if logs is not None:
            logs["learning_rate"] = current_lr(optimizer)
        current = _monitored(logs, self.monitor, "ReduceLROnPlateau")
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if _is_better(current, self.best, self.mode, self.min_delta):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience and self._reduce(optimizer):
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {current_lr(optimizer)}.")
                self.cooldown_counter, self.wait = self.cooldown, 0

    def _reduce(self, optimizer: Any) -> bool:
        """Reduce the rate of every group above ``min_lr``; whether any was."""
        groups = [group for group in _lr_groups(optimizer) if float(group["lr"]) > self.min_lr]
        for group in groups:
            group["lr"] = max(float(group["lr"]) * self.factor, self.min_lr)
        return bool(groups)

    def state_dict(self) -> dict[str, Any]:
        return {"wait": self.wait, "cooldown_counter": self.cooldown_counter, "best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.wait, self.cooldown_counter, self.best = self._parsed(state)

    def check_state_dict(self, state: dict[str, Any]) -> None:
        self._parsed(state)

    def _parsed(self, state: dict[str, Any]) -> tuple[int, int, float | None]:
        wait, cooldown = (check_nonnegative_int(state[name], name) for name in ("wait", "cooldown_counter"))
        return wait, cooldown, _optional_number(state, "best")

    def config(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "factor": self.factor, "patience": self.patience, "mode": self.mode,
                "min_delta": self.min_delta, "cooldown": self.cooldown, "min_lr": self.min_lr}  # fmt: skip


class LearningRateScheduler(Callback):
    """At the start of each epoch, set the learning rate to ``schedule(epoch, lr)`` (Keras's callback: ``epoch`` is
    0-based, ``lr`` the current rate); with parameter groups, each group's to ``schedule(epoch, its lr)``. Logged
    (the first group's) as ``learning_rate``."""

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"schedule must be a function (epoch, lr) -> lr, got {schedule!r}")
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.model is not None and self.model.optimizer is not None
        groups = _lr_groups(self.model.optimizer)
        rates = [check_scalar(self.schedule(epoch, float(group["lr"])), "the learning rate schedule(epoch, lr) gave")
                 for group in groups]  # fmt: skip
        for group, lr in zip(groups, rates):  # all checked first: a refused rate changes nothing
            group["lr"] = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {rates[0]}.")

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.model is not None and self.model.optimizer is not None
        if logs is not None:
            logs["learning_rate"] = current_lr(self.model.optimizer)


class TerminateOnNaN(Callback):
    """Stop training when a batch's loss is NaN or Inf; that batch's update is not applied (``fit`` with this
    callback treats a non-finite loss or gradient as a stop, not as an error)."""

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            self.stop(f"TerminateOnNaN: the loss became {loss} at batch {batch + 1}")


class CSVLogger(Callback):
    """Write each epoch's metrics to a CSV file (Keras's columns: ``epoch`` (0-based), then the metrics in sorted
    order). The file is rewritten whole, atomically, after each epoch from the history, so that it always matches
    what the run (or its resumption from a checkpoint) recorded; ``append=True`` keeps the rows that were in the
    file before the fit (a resumed run keeps those its first process found: they are in the checkpoint)."""

    def __init__(self, filename: str | os.PathLike[str], separator: str = ",", append: bool = False) -> None:
        super().__init__()
        self.filename, self.separator, self.append = Path(filename), separator, bool(append)
        if not isinstance(separator, str) or len(separator) != 1 or separator in '\r\n"':
            raise ValueError(f"CSVLogger: separator must be one character, not a quote or line end, got {separator!r}")
        if not self.filename.resolve().parent.is_dir():
            raise ValueError(f"CSVLogger: the folder of {self.filename} does not exist")
        if self.filename.is_dir():
            raise ValueError(f"CSVLogger: {self.filename} is a folder")
        self._kept = ""

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        """Read the rows to keep (``append``), and refuse, before the first step, a file that is not a CSV log
        (this logger would replace it after the first epoch) or a folder it cannot write in."""
        existing = self.filename.read_text(errors="replace") if self.filename.is_file() else ""
        if existing and not existing.startswith("epoch"):
            raise ValueError(f"CSVLogger: {self.filename} exists and is not a CSV log of epochs; it is not replaced")
        if not os.access(self.filename.resolve().parent, os.W_OK):
            raise PermissionError(f"CSVLogger: cannot write in the folder of {self.filename}")
        self._kept = existing if self.append else ""

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.model is not None
        rows = {**{key: values[:] for key, values in self.model.history.history.items()}}
        keys = sorted(set(rows) | set(logs or {}))
        stream = io.StringIO()
        writer = csv.writer(stream, delimiter=self.separator, lineterminator="\n")
        if not self._kept:
            writer.writerow(["epoch", *keys])
        for index, number in enumerate(self.model.history.epochs):
            writer.writerow([number - 1, *(rows[key][index] if key in rows else "" for key in keys)])
        writer.writerow([epoch, *((logs or {}).get(key, "") for key in keys)])
        temporary = self.filename.with_name(f".{self.filename.name}.tmp")
        temporary.write_text(self._kept + stream.getvalue())
        os.replace(temporary, self.filename)

    def state_dict(self) -> dict[str, Any]:
        return {"kept": self._kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state_dict(state)
        self._kept = state["kept"]

    def check_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state["kept"], str):
            raise TypeError(f"kept must be the text of the rows written, got {type(state['kept']).__name__}")

    def config(self) -> dict[str, Any]:
        return {"filename": str(self.filename), "separator": self.separator, "append": self.append}


class ModelCheckpoint(Callback):
    """Save the model (fastopt's file format, written atomically) after each epoch to ``filepath``, which may hold
    ``{epoch}`` (1-based) and metric fields (``"model-{epoch:02d}-{val_loss:.3f}.npz"``). ``save_best_only``: only
    when ``monitor`` improved (``mode`` as in EarlyStopping); ``initial_value_threshold``: the value to beat
    first."""

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        mode: str = "auto",
        initial_value_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.filepath, self.monitor, self.verbose = str(filepath), monitor, verbose
        self.save_best_only, self.mode = bool(save_best_only), _check_mode(mode, monitor)
        self.best = _optional_number({"initial_value_threshold": initial_value_threshold}, "initial_value_threshold")
        _check_path_template(self.filepath)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        assert self.model is not None
        current = None
        if self.save_best_only:
            current = _monitored(logs, self.monitor, "ModelCheckpoint")
            if current is None or not _is_better(current, self.best, self.mode, 0.0):
                return
        try:
            path = self.filepath.format(epoch=epoch + 1, **(logs or {}))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"ModelCheckpoint cannot format {self.filepath!r} with epoch and the logs {sorted(logs or {})}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        self.model.save(path)
        if current is not None:  # the best is the value of a model saved
            self.best = current
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = _optional_number(state, "best")

    def check_state_dict(self, state: dict[str, Any]) -> None:
        _optional_number(state, "best")

    def config(self) -> dict[str, Any]:
        return {"filepath": self.filepath, "monitor": self.monitor, "save_best_only": self.save_best_only,
                "mode": self.mode}  # fmt: skip


class ProgressLogger(Callback):
    """``verbose=1``: one line per epoch, as Keras prints them:
    ``Epoch 3/10 - 0.42s - loss: 0.4821 - accuracy: 0.8312 - val_loss: 0.5010 - val_accuracy: 0.8200``."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__()
        self.stream = stream

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        logs = logs or {}
        parts = [f"Epoch {epoch + 1}/{self.params.get('epochs', '?')}"]
        if "seconds" in logs:
            parts.append(f"{logs['seconds']:.2f}s")
        parts += [f"{key}: {_format_metric(value)}" for key, value in logs.items() if key != "seconds"]
        print(" - ".join(parts), file=self.stream or sys.stdout, flush=True)


def _format_metric(value: float) -> str:
    """As Keras prints a metric: 4 decimals, or 4 significant digits in exponent form below 1e-3 (a small
    learning rate); counts as integers."""
    if isinstance(value, (int, np.integer)):
        return str(value)
    return f"{value:.4f}" if abs(value) > 1e-3 or value == 0 or not math.isfinite(value) else f"{value:.4e}"


def _optional_number(state: dict[str, Any], name: str) -> float | None:
    """A saved metric value: a real number (infinite for none yet) or None, not NaN."""
    return check_metric_value(state[name], name, optional=True)


def _check_path_template(template: str) -> None:
    """A ModelCheckpoint path: its fields (``{epoch}``, ``{val_loss:.3f}``, ...) plain names, as the epoch's number
    and logs fill them (an attribute or index of one failed at the end of the first epoch)."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
    except ValueError as exc:
        raise ValueError(f"ModelCheckpoint: {template!r} is not a path template: {exc}") from exc
    for field in fields:
        if not field.isidentifier():
            raise ValueError(
                f"ModelCheckpoint: the field {{{field}}} of {template!r} must name the epoch or a metric of the logs"
            )
