"""The training loop behind ``Sequential.fit``: arguments, data, validation split, callbacks, checkpoints, epochs
and batches. The model keeps the model (its buffers, passes and files); this module drives it.

A run: its arguments and data are checked and prepared (``_prepare``), a checkpoint to resume is read and checked
(before anything changes), the optimizer is bound to the model, and then epochs run until the last one, or until a
callback stops the run. Each batch: gather its rows, forward, loss, backward (``Sequential._batch_gradients``), the
non-finite guard, gradient clipping, then the optimizer step. ``History.stop_reason`` says how the run ended.

Dropout masks: each epoch of a model with ``Dropout`` layers has a 64-bit key, a hash of the shuffling generator's
state at the start of the epoch (a function of ``seed`` and the epochs before) and of the epoch's number; batch b of
the epoch uses the masks of key ``_random.word(epoch_key, b)``. The generator does not advance for it, so dropout
changes no permutation, and a resumed epoch, which restores the generator's state at its start, has the same key.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from fastopt import _random
from fastopt import checkpoint as _checkpoint
from fastopt._checks import as_features, check_positive_int, check_same_length, check_scalar
from fastopt._io import FileFormatError
from fastopt.backend import Backend, StepTiming, resolve_backend
from fastopt.callbacks import Callback, CallbackList, LambdaCallback, ProgressLogger, TerminateOnNaN
from fastopt.history import COMPLETED, History, Progress
from fastopt.losses import Loss, Targets
from fastopt.optim import Adam, Optimizer

if TYPE_CHECKING:
    from fastopt.model import Sequential

NONFINITE_POLICIES = ("raise", "skip", "stop")


@dataclass
class FitOptions:
    """``fit``'s arguments, checked."""

    loss: Loss
    optimizer: Optimizer
    epochs: int
    batch_size: int
    shuffle: bool
    seed: int | None
    progress: bool
    verbose: int
    on_nonfinite: str
    callbacks: list[Callback]
    checkpoint: str | os.PathLike[str] | None
    checkpoint_every: int | str
    resume: bool
    overwrite: bool
    clip_norm: float | None
    clip_value: float | None


@dataclass
class FitData:
    """The training rows and targets (sample weights included) and the validation set, converted and checked.

    ``rows``: after a validation split, the rows of ``inputs`` that train (``targets`` holds theirs, in order);
    the inputs are not copied (a 60,000 x 784 float32 copy took 0.08-0.5 s per ``fit``, more than a tenth of a
    batch-32 epoch): batches gather their rows from ``inputs`` through ``rows``. None: every row trains."""

    inputs: np.ndarray
    targets: Targets
    validation: tuple[np.ndarray, Targets] | None = None
    rows: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """The number of training rows."""
        return len(self.inputs) if self.rows is None else len(self.rows)

    def training_inputs(self) -> np.ndarray:
        """The training rows' inputs (a copy after a split: for a checkpoint's fingerprint only)."""
        return self.inputs if self.rows is None else self.inputs[self.rows]

    def batch_sources(self) -> tuple[np.ndarray, Targets]:
        """The inputs and targets batches gather from with the same row numbers (``Run._epoch``'s order): after a
        split, the targets are laid out at their rows of ``inputs`` (the validation rows' entries are zeros, never
        gathered)."""
        if self.rows is None:
            return self.inputs, self.targets
        return self.inputs, _spread(self.targets, self.rows, len(self.inputs))


def _spread(targets: Targets, rows: np.ndarray, n_samples: int) -> Targets:
    """``targets`` of ``rows`` placed at those rows of arrays of ``n_samples`` (zeros elsewhere)."""

    def spread(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        full = np.zeros((n_samples, *array.shape[1:]), dtype=array.dtype)
        full[rows] = array
        return full

    labels = spread(targets.labels)
    values = labels if targets.values is targets.labels else spread(targets.values)  # CrossEntropy's are one array
    return replace(targets, values=values, labels=labels, weights=spread(targets.weights))


@dataclass
class _Batch:
    """What one batch left in the epoch's sums."""

    loss: float
    correct: int = 0
    weight: float = 0.0
    finite: bool = True
    problem: str = ""


# ------------------------------------------------------------------------------------------ arguments
def _check_callbacks(callbacks: Sequence[Callback] | None, on_epoch_end: Callable | None) -> list[Callback]:
    if callbacks is None:
        callbacks = []
    if not isinstance(callbacks, (list, tuple)):
        raise TypeError(f"callbacks must be a list of fastopt.callbacks.Callback, got {type(callbacks).__name__}")
    for index, callback in enumerate(callbacks):
        if not isinstance(callback, Callback):
            raise TypeError(f"callbacks[{index}] is not a fastopt.callbacks.Callback: {callback!r}")
    checked = list(callbacks)
    if on_epoch_end is not None:  # fastopt's older argument: the epoch number (1-based) and its logs
        if not callable(on_epoch_end):
            raise TypeError(f"on_epoch_end must be a function (epoch, logs), got {on_epoch_end!r}")
        checked.append(LambdaCallback(on_epoch_end=lambda epoch, logs: on_epoch_end(epoch + 1, logs)))
    return checked


def _check_nonfinite(on_nonfinite: str | None, callbacks: list[Callback]) -> str:
    if on_nonfinite is None:
        return "stop" if any(isinstance(callback, TerminateOnNaN) for callback in callbacks) else "raise"
    if on_nonfinite not in NONFINITE_POLICIES:
        raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
    return on_nonfinite


def _check_clipping(clip_norm: object, clip_value: object) -> tuple[float | None, float | None]:
    norm = None if clip_norm is None else check_scalar(clip_norm, "clip_norm", low_open=True)
    value = None if clip_value is None else check_scalar(clip_value, "clip_value", low_open=True)
    return norm, value


def check_fit_options(model: Sequential, arguments: dict[str, Any]) -> FitOptions:
    """Check ``fit``'s keyword arguments (every one but the data) before anything changes."""
    loss = model._choose_loss(arguments["loss"])
    loss.check_last_layer(model.layers[-1], stacklevel=4)  # the user's fit call: Sequential.fit, training.fit, here
    optimizer = arguments["optimizer"] if arguments["optimizer"] is not None else model.optimizer or Adam()
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be a fastopt optimizer such as optim.Adam(), got {optimizer!r}")
    callbacks = _check_callbacks(arguments["callbacks"], arguments["on_epoch_end"])
    verbose = arguments["verbose"]
    if isinstance(verbose, bool) or verbose not in (0, 1, 2):
        raise ValueError(f"verbose must be 0, 1 or 2, got {verbose!r}")
    checkpoint = arguments["checkpoint"]
    every = _checkpoint.check_options(checkpoint, arguments["checkpoint_every"], arguments["resume"],
                                      arguments["overwrite"])  # fmt: skip
    clip_norm, clip_value = _check_clipping(arguments["clip_norm"], arguments["clip_value"])
    return FitOptions(
        loss=loss, optimizer=optimizer, epochs=check_positive_int(arguments["epochs"], "epochs"),
        batch_size=check_positive_int(arguments["batch_size"], "batch_size"), shuffle=bool(arguments["shuffle"]),
        seed=arguments["seed"], progress=bool(arguments["progress"]), verbose=verbose,
        on_nonfinite=_check_nonfinite(arguments["on_nonfinite"], callbacks), callbacks=callbacks,
        checkpoint=checkpoint, checkpoint_every=every, resume=bool(arguments["resume"]),
        overwrite=bool(arguments["overwrite"]), clip_norm=clip_norm, clip_value=clip_value,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------ data
def _validation_rows(labels: np.ndarray | None, n_samples: int, fraction: float, seed: int | None) -> np.ndarray:
    """Row indices held out for validation: a seeded fraction of each class for class labels (stratified),
    else of all rows. Each class (or the whole set) gives ``round(fraction * count)`` rows, at least one when the
    fraction is above zero and the class has two rows or more."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n_samples)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    held = []
    for rows in groups:
        count = min(len(rows) - 1, max(1, round(fraction * len(rows)))) if len(rows) > 1 else 0
        held.append(rng.permutation(rows)[:count])
    return np.sort(np.concatenate(held)).astype(np.int64)


def _split(data: FitData, fraction: float, seed: int | None) -> FitData:
    targets = data.targets
    held = _validation_rows(targets.labels, len(data.inputs), fraction, seed)
    if held.size == 0 or held.size == len(data.inputs):
        raise ValueError(f"validation_split={fraction} leaves no rows for training or for validation")
    training = np.ones(len(data.inputs), dtype=bool)
    training[held] = False
    kept = np.flatnonzero(training)  # in order, as np.setdiff1d would give them, without its sorts
    return FitData(data.inputs, targets.subset(kept), (data.inputs[held], targets.subset(held)), rows=kept)


def prepare_data(model: Sequential, X: object, y: object, options: FitOptions, arguments: dict[str, Any]) -> FitData:
    """Convert and check the training data, sample and class weights and the validation data (or split). The
    split takes each row's sample weight with it; class weights then apply to the training rows (Keras's
    semantics: the validation loss is not class-weighted), "balanced" counting the classes of those rows."""
    backend = resolve_backend(model._backend_name)
    inputs = as_features(X, model.in_features, model.dtype, backend)
    targets = options.loss.targets(y, model.out_features, model.dtype)
    check_same_length(inputs, targets.values)
    targets = targets.with_sample_weight(arguments["sample_weight"], model.dtype)
    data = FitData(inputs, targets, model._prepare_validation(arguments["validation_data"], options.loss, backend))
    fraction = arguments["validation_split"]
    fraction = check_scalar(fraction, "validation_split", high=1.0, high_open=True)
    if fraction:
        if data.validation is not None:
            raise ValueError("give validation_data or validation_split, not both")
        data = _split(data, fraction, options.seed)
        data.validation[1].check_weight_total("the validation rows")  # type: ignore[index]
    data.targets = data.targets.with_class_weight(arguments["class_weight"], model.dtype)
    data.targets.check_weight_total("the training rows")
    return data


# ------------------------------------------------------------------------------------------ the run
class Run:
    """One call of ``fit``: everything checked and prepared, then ``train()``."""

    def __init__(self, model: Sequential, options: FitOptions, data: FitData) -> None:
        self.model, self.options, self.data = model, options, data
        self.backend: Backend = resolve_backend(model._backend_name)
        self.n_batches = math.ceil(data.n_rows / options.batch_size)
        self.inputs, self.targets = data.batch_sources()
        self.history, self.position = History(), Progress()
        self.rng = np.random.default_rng(options.seed)
        self.dropout_key: int | None = None  # the epoch's key of the dropout masks (None: the model has no dropout)
        self.step_timing = StepTiming()  # the backend's, while train() runs
        callbacks = list(options.callbacks) + ([ProgressLogger()] if options.verbose else [])
        params = {"epochs": options.epochs, "steps": self.n_batches, "batch_size": options.batch_size,
                  "verbose": options.verbose, "samples": data.n_rows}  # fmt: skip
        self.callbacks = CallbackList(callbacks, model, params)
        self.callbacks.check_run(options.optimizer)  # (a schedule of another optimizer, a cycle too short)
        self.saver: _checkpoint.Checkpointer | None = None
        saved = self._checkpoint_to_resume()  # read and checked before anything changes
        optimizer = options.optimizer
        self.gradients = self._bind(optimizer)
        model.loss, model.optimizer = options.loss, optimizer
        if saved is not None:
            saved.restore(model.parameters, optimizer, self.rng)  # rng: as at the start of the saved epoch
            self.position, self.history = saved.progress, saved.history
        self.saved = saved
        if options.checkpoint is not None:
            self.saver = _checkpoint.Checkpointer(options.checkpoint, options.checkpoint_every, self.fingerprint,
                                                  model.parameters, optimizer, self.rng, self.position, self.history,
                                                  self.callbacks, self.environment, options.epochs,
                                                  overwrite=options.overwrite)  # fmt: skip

    def _bind(self, optimizer: Optimizer) -> list[np.ndarray]:
        """Bind the optimizer to the model (unless it is bound to its parameters, whole or as the two groups of
        weights and biases); returns the gradient buffers matching its parameters."""
        model = self.model
        grouped = [model.weight_parameters, model.bias_parameters]
        if optimizer.is_bound_to(grouped):
            gradients = [model.weight_gradients, model.bias_gradients]
        else:
            if not optimizer.is_bound_to([model.parameters]):
                optimizer.bind([model.parameters], self.backend)
            gradients = [model.gradients]
        optimizer.backend = self.backend
        return gradients

    def _checkpoint_to_resume(self) -> _checkpoint.TrainingState | None:
        options, data = self.options, self.data
        if options.checkpoint is None:
            return None
        self.fingerprint = _checkpoint.run_fingerprint(
            self.model, options, data.training_inputs(), data.targets,
            None if data.validation is None else (data.validation[0], data.validation[1]), self.callbacks.configs(),
        )  # fmt: skip
        self.environment = _checkpoint.environment(self.backend.name)
        if not options.resume:
            return None
        saved = _checkpoint.load_for_resume(options.checkpoint, self.fingerprint, self.model.parameters,
                                            options.optimizer, self.environment, options.epochs)  # fmt: skip
        if saved is not None:
            try:  # the fingerprint matched: a state the callbacks refuse means a corrupt or forged file
                self.callbacks.check_state_dicts(saved.callbacks)
            except ValueError as exc:
                raise FileFormatError(f"{options.checkpoint}: invalid checkpoint, {exc}") from exc
        return saved

    def _finished(self) -> bool:
        """Every epoch asked for is done, or the run was stopped (a run that completed fewer epochs than this
        fit asks for continues)."""
        stopped = self.history.stop_reason not in ("", COMPLETED)
        return stopped or self.position.epoch > self.options.epochs

    def train(self) -> History:
        """Run the epochs left, save the end of the run, then end the callbacks (``on_train_end``: early stopping
        restores its best weights there). The checkpoint holds the run as training left it, so that a finished run
        resumed with a larger ``epochs`` continues from its last epoch; a finished run resumed returns at once,
        after its callbacks' ``on_train_end`` made the model what the run ended with."""
        model = self.model
        model.stop_training, model.stop_reason, model.history = False, "", self.history
        with self.backend.training() as self.step_timing:
            self.callbacks.on_train_begin({})
            if self.saved is not None:
                self.callbacks.load_state_dicts(self.saved.callbacks)
            if not self._finished():
                self.history.stop_reason = ""
                while not self._finished() and not model.stop_training:
                    self._epoch()
                self.history.stop_reason = model.stop_reason or COMPLETED
                if self.saver is not None:
                    self.saver.save()
            self.history.stop_reason = self.history.stop_reason or COMPLETED  # a kill came before the last save
            self.callbacks.on_train_end({})
        return self.history

    # ------------------------------------------------------------------ epochs
    def _epoch(self) -> None:
        position, options, model = self.position, self.options, self.model
        epoch = position.epoch
        started = time.perf_counter() - position.seconds
        if self.saver is not None:
            self.saver.start_epoch()
        if model._has_dropout:
            self.dropout_key = dropout_epoch_key(self.rng, epoch)
        order = np.arange(self.data.n_rows, dtype=np.int64)  # the row indices the gather kernels take
        if options.shuffle:  # a resumed epoch draws the same permutation again from the saved generator state
            self.rng.shuffle(order)
        if self.data.rows is not None:  # the training rows of a split, in that order
            order = self.data.rows[order]
        self.callbacks.on_epoch_begin(epoch - 1, {})
        self._batches(order)
        if model.stop_training and position.batch < self.n_batches:
            return  # stopped inside the epoch: it is not recorded
        logs = self._epoch_logs()
        logs["seconds"] = time.perf_counter() - started
        if position.skipped and "skipped_batches" not in self.history.history:
            self.history.history["skipped_batches"] = [0] * len(self.history.epochs)
        if "skipped_batches" in self.history.history:
            logs["skipped_batches"] = position.skipped
        self.callbacks.on_epoch_end(epoch - 1, logs)
        self.history.append(epoch, logs)
        if model.stop_training:  # in the epoch's checkpoint too: a resumed run must not train on
            self.history.stop_reason = model.stop_reason
        position.start_next_epoch()
        if self.saver is not None:
            self.saver.epoch_done()

    def _epoch_logs(self) -> dict[str, float]:
        """Mean loss (and accuracy) over the samples of the epoch's batches not skipped, and validation."""
        position, data = self.position, self.data
        logs = {"loss": position.loss_sum / position.weight_sum if position.weight_sum else math.nan}
        if data.targets.reports_accuracy:
            predictions = position.samples * data.targets.predictions_per_row
            logs["accuracy"] = position.correct / predictions if predictions else math.nan
        if data.validation is not None:
            batch_size = max(self.options.batch_size, 1024)
            evaluation = self.model._evaluate_prepared(*data.validation, self.options.loss, batch_size)
            logs.update({f"val_{key}": value for key, value in evaluation.items()})
        return logs

    def _batches(self, order: np.ndarray) -> None:
        position, options = self.position, self.options
        size = options.batch_size
        # The run's callbacks are fixed when it starts (verbose's logger included): without any, no batch hook is
        # dispatched and no logs dict made (0.3 us a step on a 2-core AMD EPYC Zen 4 VM)
        callbacks = self.callbacks if self.callbacks.callbacks else None
        with tqdm(total=self.n_batches, initial=position.batch, desc=f"epoch {position.epoch}/{options.epochs}",
                  disable=not options.progress, leave=False, unit="batch") as bar:  # fmt: skip
            for index in range(position.batch, self.n_batches):
                if callbacks is not None:
                    callbacks.on_train_batch_begin(index, {})
                rows = order[index * size : (index + 1) * size]
                self.step_timing.begin_step()
                batch = self._step(rows, index)
                self.step_timing.end_step()
                self._count(batch, index, len(rows))
                if callbacks is not None:
                    callbacks.on_train_batch_end(index, {"loss": batch.loss})
                if self.saver is not None:
                    self.saver.batch_done()
                bar.update()
                if options.progress and index % 50 == 0:
                    bar.set_postfix(loss=f"{position.loss_sum / max(position.weight_sum, 1e-300):.4f}", refresh=False)
                if self.model.stop_training:
                    break

    def _count(self, batch: _Batch, index: int, n_rows: int) -> None:
        """Add a batch of ``n_rows`` rows to the epoch's sums, or handle its non-finite loss or gradient as
        ``on_nonfinite`` says."""
        position = self.position
        if batch.finite:
            position.loss_sum += batch.loss * batch.weight
            position.weight_sum += batch.weight
            position.correct += batch.correct
            position.samples += n_rows
        elif self.options.on_nonfinite == "skip":
            position.skipped += 1
        elif self.options.on_nonfinite == "stop":
            self.model.stop_training = True
            self.model.stop_reason = f"{batch.problem} at epoch {position.epoch}, batch {index + 1}: stopped"
        else:
            raise FloatingPointError(
                f"{batch.problem} at epoch {position.epoch}, batch {index + 1} (optimizer step "
                f"{self.options.optimizer.step_count + 1}); parameters are those before this step"
            )
        position.batch = index + 1
        position.steps += 1

    # ------------------------------------------------------------------ one step
    def _step(self, rows: np.ndarray, index: int) -> _Batch:
        """Batch ``index`` of the epoch: gradients, the non-finite guard, clipping, the optimizer step (skipped when not
        finite)."""
        model, options = self.model, self.options
        step_key = None if self.dropout_key is None else _random.word(self.dropout_key, index)
        loss, correct, weight, finite = model._batch_gradients(
            self.backend, options.loss, self.inputs, self.targets, rows, step_key, compiled=True
        )
        if not math.isfinite(loss):
            return _Batch(loss, finite=False, problem=f"the loss became {loss}")
        if not finite:  # checked by the backward kernels while the gradients were in cache: no second pass
            return _Batch(loss, finite=False, problem="a gradient became NaN or Inf under a finite loss")
        clip_gradients(self.backend, self.gradients, options.clip_norm, options.clip_value)
        options.optimizer.apply(self.gradients)
        return _Batch(loss, correct, weight)


def dropout_epoch_key(rng: np.random.Generator, epoch: int) -> int:
    """The key of an epoch's dropout masks: the generator's state (hashed; the generator does not advance) and the
    epoch's number (the state alone repeats when nothing is shuffled)."""
    digest = hashlib.blake2b(repr(rng.bit_generator.state).encode(), digest_size=8).digest()
    return _random.word(int.from_bytes(digest, "little"), epoch)


def clip_gradients(
    backend: Backend, grads: list[np.ndarray], clip_norm: float | None, clip_value: float | None
) -> float:
    """Clip trusted gradient buffers in place, as PyTorch's ``clip_grad_value_`` then ``clip_grad_norm_``: each
    value into [-clip_value, clip_value], then all scaled by ``clip_norm / (norm + 1e-6)`` when that is below 1,
    ``norm`` their global L2 norm (summed in float64, one pass). Returns the norm before scaling (NaN when not
    computed)."""
    if clip_value is not None:
        for grad in grads:
            np.clip(grad, -clip_value, clip_value, out=grad)
    if clip_norm is None:
        return math.nan
    norm = math.sqrt(sum(backend._sum_of_squares(grad) for grad in grads))
    coefficient = clip_norm / (norm + 1e-6)
    if coefficient < 1.0:
        for grad in grads:
            grad *= coefficient
    return norm


def fit(model: Sequential, X: object, y: object, arguments: dict[str, Any]) -> History:
    """``Sequential.fit``: check, prepare, run."""
    with model._threads.fit_turn():
        options = check_fit_options(model, arguments)
        data = prepare_data(model, X, y, options, arguments)
        try:
            return Run(model, options, data).train()
        finally:
            model._forget_compiled_steps()  # they hold the data
