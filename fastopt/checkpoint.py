"""Crash-safe training checkpoints: ``model.fit(X, y, checkpoint="run.ckpt", resume=True)``.

A checkpoint is one ``.npz`` archive written atomically by ``_io.write_archive`` (temporary file in
the same folder, fsync, rename), of kind ``"fastopt-checkpoint"`` with a format version, a SHA-256
checksum of every array and a second SHA-256 over the training-state header. It holds:

- ``parameters``: the model's flat parameter buffer;
- the optimizer: every state buffer (arrays ``optimizer.<i>.<name>``), its class name, step count,
  hyperparameters and parameter groups (the layout of ``Optimizer.state_dict``);
- each callback's state (``Callback.state_dict``: JSON values, and arrays ``callbacks.<i>.<key>``), schedules
  and early stopping included, so that a resumed run decides as the uninterrupted one would;
- the shuffling generator's ``bit_generator.state`` as of the START of the epoch in progress, so the
  resumed run draws that epoch's permutation again and continues from the same row order;
- the position: the epoch in progress (``epochs + 1`` once the run is finished), the index of its next
  batch, and the number of batches processed since the run began (the cadence of ``checkpoint_every``);
- the partial sums of the epoch in progress: summed loss (a float, stored exactly), correct predictions,
  samples counted, batches skipped, and seconds spent so far;
- the history of the completed epochs, and why the run stopped if it did;
- the run's fingerprint (``run_fingerprint``): what must be equal for a resumed run to be the same run.
  It is compared field by field on resume, and a mismatch is refused naming the fields.

Loading checks everything (kind, version, checksums, fingerprint, every field's type and range, array
shapes and dtypes, finiteness of the optimizer state) before anything in the model or optimizer changes.
Only the ``seconds`` entries of a resumed run's history differ from an uninterrupted run's: they count the
time spent in the processes that trained that epoch, not the time between them.

Bit-identical resumption also needs the same backend, thread counts and NumPy build (float32 BLAS
products differ in their last bits between 1 and 2 threads); each checkpoint records them
(``environment``) and resuming elsewhere warns, then continues. A process killed while writing leaves
its temporary file (``.<name>.<random>.tmp``) next to the checkpoint; resuming deletes those.
Callbacks of epochs finished before the interruption are not called again. The number of epochs is not part of
the fingerprint: resuming with a larger ``epochs`` continues a finished run.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from fastopt import _io
from fastopt._checks import resolve_dtype
from fastopt._io import FileFormatError
from fastopt._version import __version__
from fastopt.history import History, Progress
from fastopt.losses import Targets
from fastopt.optim import Optimizer

if TYPE_CHECKING:
    from fastopt.callbacks import CallbackList
    from fastopt.model import Sequential
    from fastopt.training import FitOptions

CHECKPOINT_FILE_KIND = "fastopt-checkpoint"
CHECKPOINT_FILE_VERSION = 2  # 2: parameter groups, callbacks' states, the stop reason; epochs left the fingerprint

_FINGERPRINT_FIELDS = {
    "architecture": "architecture (model layers)",
    "dtype": "model dtype",
    "n_parameters": "number of parameters",
    "optimizer": "optimizer class",
    "hyperparameters": "optimizer hyperparameters",
    "parameter_groups": "optimizer parameter groups (their sizes)",
    "loss": "loss",
    "batch_size": "batch_size",
    "shuffle": "shuffle",
    "seed": "shuffling seed",
    "n_samples": "number of training samples",
    "data": "training data (SHA-256 of X and y)",
    "validation": "validation data (SHA-256 of X_val and y_val)",
    "callbacks": "callbacks and schedules",
    "clipping": "gradient clipping",
}


def _json_normalized(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), for comparisons with a file's header."""
    return json.loads(json.dumps(value))


def data_digest(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' shapes, dtypes and bytes. Hashing the whole data costs about 0.12 s for
    60,000 x 784 float32 on this project's 2-core reference machine (OpenSSL's SHA-256 runs near 1.6 GB/s),
    once per ``fit``, so all the bytes are hashed rather than a sample."""
    sha = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        sha.update(f"{array.dtype.str}|{array.shape}|".encode())
        sha.update(memoryview(array).cast("B"))
    return sha.hexdigest()


def run_fingerprint(
    model: Sequential,
    options: FitOptions,
    inputs: np.ndarray,
    targets: Targets,
    validation: tuple[np.ndarray, Targets] | None,
    callbacks: list[dict[str, Any]],
) -> dict[str, Any]:
    """What identifies a training run: a checkpoint resumes only a run whose fingerprint is equal.

    Not part of it, so they may change between an interrupted run and its resumption: ``epochs`` (a finished run
    continues to a larger number), the backend and the thread counts (see ``environment``; results then agree to
    rounding, not bit for bit), ``checkpoint_every``, ``on_nonfinite``, ``progress`` and ``verbose``.
    """
    optimizer = options.optimizer
    groups = optimizer.param_groups or [{"params": [model.parameters]}]
    return _json_normalized(
        {
            "architecture": model.config()["layers"],
            "dtype": model.dtype.name,
            "n_parameters": int(model.parameters.size),
            "optimizer": type(optimizer).__name__,
            "hyperparameters": optimizer.hyperparameters,
            "parameter_groups": [[int(param.size) for param in group["params"]] for group in groups],
            "loss": {"class": type(options.loss).__name__, **options.loss.config()},
            "batch_size": options.batch_size,
            "shuffle": options.shuffle,
            "seed": None if options.seed is None else int(options.seed),
            "n_samples": len(inputs),
            "data": data_digest(inputs, *targets.arrays()),
            "validation": None if validation is None else data_digest(validation[0], *validation[1].arrays()),
            "callbacks": callbacks,
            "clipping": {"clip_norm": options.clip_norm, "clip_value": options.clip_value},
        }
    )


def _split_arrays(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """A callback's state as (JSON values, arrays)."""
    arrays = {key: value for key, value in state.items() if isinstance(value, np.ndarray)}
    return {key: value for key, value in state.items() if key not in arrays}, arrays


@dataclass
class TrainingState:
    """Everything ``fit`` needs to continue a run bit-identically (see the module docstring).

    When saving, ``parameters`` and the buffers of ``optimizer`` (an ``Optimizer.state_dict(copy=False)``) may be
    the live arrays: nothing is copied before the write. A loaded state owns fresh arrays.
    """

    fingerprint: dict[str, Any]
    epochs: int
    progress: Progress
    rng_state: dict[str, Any]
    history: History
    parameters: np.ndarray
    optimizer: dict[str, Any]
    callbacks: list[dict[str, Any]] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)  # see ``environment``; informational

    # ------------------------------------------------------------------ writing
    def _optimizer_record(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        optimizer = self.optimizer
        buffers = [{name: [buffer.dtype.name, list(buffer.shape)] for name, buffer in state.items()}
                   for state in optimizer["state"]]  # fmt: skip
        record = {key: optimizer[key] for key in ("step_count", "hyperparameters", "param_groups")}
        record.update({"class": optimizer["optimizer"], "buffers": buffers})
        arrays = {f"optimizer.{index}.{name}": buffer
                  for index, state in enumerate(optimizer["state"]) for name, buffer in state.items()}  # fmt: skip
        return record, arrays

    def _callbacks_record(self) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
        records, arrays = [], {}
        for index, state in enumerate(self.callbacks):
            values, own = _split_arrays(state)
            records.append({"values": values, "arrays": {key: [a.dtype.name, list(a.shape)] for key, a in own.items()}})
            arrays.update({f"callbacks.{index}.{key}": array for key, array in own.items()})
        return records, arrays

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write this state to ``path`` atomically (the previous file stays whole if the process dies). An
        existing file is replaced only if it is a fastopt checkpoint, or with ``overwrite=True``."""
        optimizer, optimizer_arrays = self._optimizer_record()
        callbacks, callback_arrays = self._callbacks_record()
        training = {
            "fingerprint": self.fingerprint,
            "epochs": self.epochs,
            "progress": asdict(self.progress),
            "rng_state": self.rng_state,
            "history": {
                "epochs": self.history.epochs,
                "metrics": self.history.history,
                "stop_reason": self.history.stop_reason,
            },
            "optimizer": optimizer,
            "callbacks": callbacks,
        }
        arrays = {"parameters": self.parameters, **optimizer_arrays, **callback_arrays}
        text = json.dumps(training, sort_keys=True)
        header = {
            "training": training,
            "training_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "fastopt_version": __version__,
            "environment": self.environment,
        }
        _io.write_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION, header, arrays, overwrite)

    # ------------------------------------------------------------------ reading
    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_fingerprint: dict[str, Any]) -> TrainingState:
        """Read and check a checkpoint. Raises ``FileNotFoundError`` if there is none, ``FileFormatError``
        if it is truncated, corrupt, foreign, pickled or of another format version, and ``ValueError``
        naming the differing fields if it belongs to another run (``expected_fingerprint``)."""
        try:
            header, arrays = _io.read_archive(path, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION, _file_layout)
        except (FileNotFoundError, FileFormatError):
            raise
        except Exception as exc:
            # A flipped bit in a zip or .npy header can make zipfile or numpy raise other types
            # (NotImplementedError, RuntimeError, SyntaxError, tokenize.TokenError): all mean "corrupt".
            raise FileFormatError(
                f"{path} is not a readable fastopt file (corrupt): {type(exc).__name__}: {exc}"
            ) from exc
        training = header.get("training")
        if not isinstance(training, dict):
            raise FileFormatError(f"{path} holds no training state")
        if hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest() != header.get("training_sha256"):
            raise FileFormatError(f"{path} fails the checksum of its training state: the file is corrupt")
        _check_fingerprint(path, training.get("fingerprint"), expected_fingerprint)
        environment = header.get("environment")
        return _StateReader(path, training, arrays, expected_fingerprint).read(
            environment if isinstance(environment, dict) else {}
        )

    # ------------------------------------------------------------------ restoring
    def check_fits(self, parameters: np.ndarray, optimizer: Optimizer) -> None:
        """Raise ``ValueError`` unless ``restore`` would succeed; changes nothing."""
        if parameters.shape != self.parameters.shape or parameters.dtype != self.parameters.dtype:
            raise ValueError(
                f"the checkpoint's parameters ({self.parameters.dtype} {self.parameters.shape}) do not fit "
                f"the model's ({parameters.dtype} {parameters.shape})"
            )
        try:  # the fingerprint matched: a state the optimizer refuses means a corrupt or forged file
            optimizer.check_state_dict(self.optimizer, params=None if optimizer.param_groups else [parameters])
        except (ValueError, TypeError) as exc:
            raise FileFormatError(f"invalid checkpoint, its optimizer state: {exc}") from exc

    def restore(self, parameters: np.ndarray, optimizer: Optimizer, rng: np.random.Generator) -> None:
        """Copy the saved parameters, optimizer state and shuffling-generator state into the live objects.
        ``optimizer`` must already be bound to ``parameters``. Everything is checked before anything changes."""
        self.check_fits(parameters, optimizer)
        optimizer.load_state_dict(self.optimizer)  # checks whole, then replaces; the last step that can fail
        parameters[...] = self.parameters
        rng.bit_generator.state = self.rng_state


class _StateReader:
    """Checks every field of a checkpoint's training record (whose checksum and fingerprint were checked) and
    builds the ``TrainingState``; a bad field is a ``FileFormatError`` naming it."""

    def __init__(self, path: str | os.PathLike[str], training: dict[str, Any], arrays: dict[str, np.ndarray],
                 fingerprint: dict[str, Any]) -> None:  # fmt: skip
        self.path, self.training, self.arrays, self.fingerprint = path, training, arrays, fingerprint

    def fail(self, what: str) -> NoReturn:
        raise FileFormatError(f"{self.path}: invalid checkpoint, {what}")

    def require(self, condition: bool, what: str) -> None:
        if not condition:
            self.fail(what)

    def read(self, environment: dict[str, Any]) -> TrainingState:
        epochs = self.training.get("epochs")
        self.require(_is_int(epochs) and epochs >= 1, "epochs must be a positive integer")
        progress = self._progress(epochs)
        rng_state = self.training.get("rng_state")
        try:
            np.random.PCG64().state = rng_state
        except (TypeError, ValueError, KeyError) as exc:
            self.fail(f"bad shuffling-generator state ({exc})")
        parameters = self.arrays["parameters"]
        self.require(
            parameters.dtype == np.dtype(self.fingerprint["dtype"])
            and parameters.shape == (self.fingerprint["n_parameters"],),
            f"parameters must be {self.fingerprint['dtype']} of shape ({self.fingerprint['n_parameters']},)",
        )
        # no run saves a non-finite parameter (a step that would make one is refused)
        self.require(bool(np.isfinite(parameters).all()), "its parameters hold NaN or Inf")
        return TrainingState(
            fingerprint=self.training["fingerprint"], epochs=epochs, progress=progress, rng_state=rng_state,
            history=self._history(progress), parameters=parameters, optimizer=self._optimizer(),
            callbacks=self._callbacks(), environment=environment,
        )  # fmt: skip

    def _progress(self, epochs: int) -> Progress:
        n_samples = self.fingerprint["n_samples"]
        n_batches = -(-n_samples // self.fingerprint["batch_size"])
        raw = self.training.get("progress")
        self.require(isinstance(raw, dict) and set(raw) == set(Progress.__dataclass_fields__), "bad progress record")
        for name in ("epoch", "batch", "steps", "correct", "samples", "skipped"):
            self.require(_is_int(raw[name]) and raw[name] >= 0, f"progress {name} must be a non-negative integer")
        for name in ("loss_sum", "weight_sum", "seconds"):
            self.require(_is_number(raw[name]), f"{name} must be a number")
        progress = Progress(**raw)
        progress.loss_sum, progress.weight_sum = float(progress.loss_sum), float(progress.weight_sum)
        progress.seconds = float(progress.seconds)
        self.require(1 <= progress.epoch <= epochs + 1, f"epoch {progress.epoch} outside 1..{epochs + 1}")
        self.require(progress.batch <= n_batches, f"batch {progress.batch} beyond the {n_batches} batches of an epoch")
        self.require(progress.epoch <= epochs or progress.batch == 0, "a finished run cannot be inside an epoch")
        self.require(progress.steps == (progress.epoch - 1) * n_batches + progress.batch, "inconsistent step count")
        self.require(progress.skipped <= progress.batch and progress.samples <= n_samples, "inconsistent epoch sums")
        return progress

    def _history(self, progress: Progress) -> History:
        history = self.training.get("history")
        self.require(isinstance(history, dict) and set(history) == {"epochs", "metrics", "stop_reason"},
                     "bad history record")  # fmt: skip
        done = list(range(1, progress.epoch))
        self.require(history["epochs"] == done, f"history must list epochs {done}")
        metrics = history["metrics"]
        self.require(isinstance(metrics, dict), "bad history metrics")
        for key, values in metrics.items():
            self.require(
                isinstance(values, list) and len(values) == len(done) and all(_is_number(v) for v in values),
                f"history {key!r} must hold {len(done)} numbers",
            )
        self.require(isinstance(history["stop_reason"], str), "bad stop reason")
        return History(history=metrics, epochs=history["epochs"], stop_reason=history["stop_reason"])

    def _optimizer(self) -> dict[str, Any]:
        """The optimizer record as an ``Optimizer.state_dict`` (its values are checked by the optimizer itself)."""
        record = self.training.get("optimizer")
        fields = {"class", "step_count", "hyperparameters", "param_groups", "buffers"}
        self.require(isinstance(record, dict) and set(record) == fields, "bad optimizer record")
        self.require(
            record["class"] == self.fingerprint["optimizer"]
            and record["hyperparameters"] == self.fingerprint["hyperparameters"],
            "the optimizer record disagrees with the fingerprint",
        )
        state = [
            {name: self.arrays[f"optimizer.{index}.{name}"] for name in buffers}
            for index, buffers in enumerate(record["buffers"])
        ]
        saved = {key: record[key] for key in ("step_count", "hyperparameters", "param_groups")}
        return {"optimizer": record["class"], **saved, "state": state}

    def _callbacks(self) -> list[dict[str, Any]]:
        records = self.training.get("callbacks")
        self.require(isinstance(records, list) and len(records) == len(self.fingerprint["callbacks"]),
                     "the callbacks' states do not match the run's callbacks")  # fmt: skip
        states = []
        for index, record in enumerate(records):
            self.require(isinstance(record, dict) and isinstance(record.get("values"), dict),
                         f"bad state of callbacks[{index}]")  # fmt: skip
            own = {key: self.arrays[f"callbacks.{index}.{key}"] for key in record["arrays"]}
            states.append({**record["values"], **own})
        return states


def _declared(entries: object, what: str, limit: int) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """``{name: [dtype, shape]}`` declarations of a header, each a float array of at most ``limit`` elements."""
    if not isinstance(entries, dict):
        raise ValueError(f"its header has a bad list of {what}")
    declared = {}
    for name, entry in entries.items():
        if not (isinstance(name, str) and isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)
                and all(_is_int(n) and n >= 0 for n in entry[1])):  # fmt: skip
            raise ValueError(f"its header declares a bad array {name!r} among the {what}")
        dtype, shape = resolve_dtype(entry[0]), tuple(entry[1])
        if int(np.prod(shape, dtype=np.float64)) > limit:
            raise ValueError(f"its header declares {what} array {name!r} larger than the model")
        declared[name] = (dtype, shape)
    return declared


def _file_layout(header: dict[str, Any]) -> _io.Layout:
    """The arrays a checkpoint's header declares: the parameters, sized by its fingerprint, each optimizer buffer
    and each callback array as declared, none larger than the parameters (``read_archive`` reads nothing else and
    nothing larger)."""
    training = header.get("training")
    fingerprint = training.get("fingerprint") if isinstance(training, dict) else None
    optimizer = training.get("optimizer") if isinstance(training, dict) else None
    callbacks = training.get("callbacks") if isinstance(training, dict) else None
    if not isinstance(fingerprint, dict) or not isinstance(optimizer, dict) or not isinstance(callbacks, list):
        raise ValueError("its header holds no training state")
    size, buffers = fingerprint.get("n_parameters"), optimizer.get("buffers")
    if not _is_int(size) or size < 0:
        raise ValueError(f"its header declares {size!r} parameters")
    if not isinstance(buffers, list):
        raise ValueError("its header has a bad optimizer buffer list")
    layout = {"parameters": (resolve_dtype(fingerprint.get("dtype")), (size,))}
    for index, entries in enumerate(buffers):
        layout.update({f"optimizer.{index}.{name}": d for name, d in _declared(entries, "optimizer", size).items()})
    for index, record in enumerate(callbacks):
        entries = record.get("arrays") if isinstance(record, dict) else None
        layout.update({f"callbacks.{index}.{name}": d for name, d in _declared(entries, "callback", size).items()})
    return layout


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shorten(value: Any, limit: int = 160) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_fingerprint(path: str | os.PathLike[str], found: object, expected: dict[str, Any]) -> None:
    if not isinstance(found, dict):
        raise FileFormatError(f"{path} holds no run fingerprint")
    differences = []
    extra_keys = sorted((set(found) | set(expected)) - set(_FINGERPRINT_FIELDS))
    for key in [*_FINGERPRINT_FIELDS, *extra_keys]:
        mine, theirs = expected.get(key), found.get(key)
        if mine != theirs:
            label = _FINGERPRINT_FIELDS.get(key, key)
            differences.append(f"{label}: checkpoint has {_shorten(theirs)}, this fit has {_shorten(mine)}")
    if differences:
        raise ValueError(f"checkpoint {path} belongs to a different training run; " + "; ".join(differences))


def remove_stale_temporaries(path: str | os.PathLike[str]) -> int:
    """Delete the temporary files a process killed while writing ``path`` left next to it (exactly
    those ``write_archive`` names, see ``_io.temporaries_of``); returns how many were removed."""
    removed = 0
    for stale in _io.temporaries_of(path):
        try:
            stale.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed


class Checkpointer:
    """Saves a running ``fit`` to one file: every ``every`` batches (or at each epoch's end for
    ``"epoch"``) and once more when the run ends. It reads the live objects when it saves, so the steps
    in between do no checkpoint work beyond one integer test and allocate nothing for it."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        every: int | str,
        fingerprint: dict[str, Any],
        parameters: np.ndarray,
        optimizer: Optimizer,
        rng: np.random.Generator,
        progress: Progress,
        history: History,
        callbacks: CallbackList,
        environment: dict[str, Any],
        epochs: int,
        overwrite: bool = False,
    ) -> None:
        self.path = path
        self.overwrite = overwrite  # whether the first save may replace a file that is not a checkpoint
        self.every_steps = every if isinstance(every, int) else 0
        self.fingerprint, self.parameters, self.optimizer = fingerprint, parameters, optimizer
        self.rng, self.progress, self.history, self.callbacks = rng, progress, history, callbacks
        self.environment, self.epochs = environment, epochs
        self.rng_state: dict[str, Any] = rng.bit_generator.state
        self.clock_start = time.perf_counter()

    def start_epoch(self) -> None:
        """Called before the epoch draws its permutation: remember the generator's state then."""
        self.rng_state = self.rng.bit_generator.state
        self.clock_start = time.perf_counter() - self.progress.seconds

    def batch_done(self) -> None:
        if self.every_steps and self.progress.steps % self.every_steps == 0:
            self.save()

    def epoch_done(self) -> None:
        """Called once the epoch is in the history and ``progress`` points at the next epoch."""
        self.rng_state = self.rng.bit_generator.state
        if not self.every_steps:
            self.save()

    def save(self) -> None:
        progress = self.progress
        if progress.batch:  # inside an epoch: the time it has taken so far
            progress.seconds = time.perf_counter() - self.clock_start
        TrainingState(
            fingerprint=self.fingerprint,
            epochs=self.epochs,
            progress=progress,
            rng_state=self.rng_state,
            history=self.history,
            parameters=self.parameters,
            optimizer=self.optimizer.state_dict(copy=False),
            callbacks=self.callbacks.state_dicts(),
            environment=self.environment,
        ).save(self.path, self.overwrite)
        self.overwrite = True  # the file is this run's checkpoint now


def check_options(
    checkpoint: str | os.PathLike[str] | None,
    checkpoint_every: int | str | None,
    resume: bool,
    overwrite: bool = False,
) -> int | str:
    """Validate ``fit``'s checkpoint arguments; returns the cadence (a number of batches, or ``"epoch"``).

    A fresh run (not ``resume``) refuses a ``checkpoint`` path holding a file that is not a fastopt
    checkpoint unless ``overwrite`` (``_io.OverwriteRefusedError``); resuming reads the file, and refuses
    a foreign one as ``FileFormatError``."""
    if not isinstance(resume, (bool, np.bool_)):
        raise TypeError(f"resume must be True or False, got {resume!r}")
    if checkpoint is None:
        if checkpoint_every is not None or resume:
            raise ValueError("checkpoint_every and resume need checkpoint=PATH")
        return 0
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a file path, got {type(checkpoint).__name__}")
    path = Path(checkpoint)
    folder = path.resolve().parent
    if not folder.is_dir():
        raise ValueError(f"checkpoint {checkpoint}: the folder {folder} does not exist")
    if path.exists() and not path.is_file():
        raise ValueError(f"checkpoint {checkpoint} exists and is not a file")
    if not isinstance(overwrite, (bool, np.bool_)):
        raise TypeError(f"overwrite must be True or False, got {overwrite!r}")
    if not resume:
        _io.check_replaceable(path, CHECKPOINT_FILE_KIND, bool(overwrite))
    return _check_cadence(checkpoint_every)


def _check_cadence(checkpoint_every: object) -> int | str:
    if checkpoint_every is None or checkpoint_every == "epoch":
        return "epoch"
    if isinstance(checkpoint_every, (bool, np.bool_)) or not isinstance(checkpoint_every, (int, np.integer)):
        raise TypeError(f"checkpoint_every must be a positive number of batches or 'epoch', got {checkpoint_every!r}")
    if checkpoint_every <= 0:
        raise ValueError(f"checkpoint_every must be a positive number of batches or 'epoch', got {checkpoint_every}")
    return int(checkpoint_every)


def environment(backend: str) -> dict[str, Any]:
    """What bit-identical resumption also depends on, beyond the fingerprint: the backend, the thread
    count of each thread pool (float32 BLAS products differ in their last bits between 1 and 2 threads)
    and the NumPy version. Recorded in each checkpoint; a difference on resume only warns."""
    from threadpoolctl import threadpool_info

    threads: dict[str, int] = {}
    for pool in threadpool_info():
        threads[pool["user_api"]] = max(threads.get(pool["user_api"], 0), int(pool["num_threads"]))
    return {"backend": backend, "threads": threads, "numpy": np.__version__, "fastopt": __version__}


def load_for_resume(
    path: str | os.PathLike[str],
    fingerprint: dict[str, Any],
    parameters: np.ndarray,
    optimizer: Optimizer,
    current_environment: dict[str, Any],
    epochs: int,
) -> TrainingState | None:
    """The state saved at ``path`` if it belongs to this run and fits ``parameters``, ``optimizer`` and ``epochs``;
    None if there is no file. Leaves the model and optimizer untouched; raises on any problem, and warns
    (``RuntimeWarning``) if the environment differs, since the result is then not bit-identical."""
    remove_stale_temporaries(path)
    try:
        state = TrainingState.load(path, fingerprint)
    except FileNotFoundError:
        return None
    done = state.progress.epoch - 1
    if done > epochs or (done == epochs and state.progress.batch):
        raise ValueError(f"checkpoint {path} has {done} epochs done, more than this fit's epochs={epochs}")
    state.check_fits(parameters, optimizer)
    saved_environment = {key: state.environment.get(key) for key in ("backend", "threads", "numpy")}
    now = {key: current_environment.get(key) for key in saved_environment}
    if saved_environment != now:
        warnings.warn(
            f"checkpoint {path} was written with {json.dumps(saved_environment)}, this process has "
            f"{json.dumps(now)}: the resumed run will match an uninterrupted one to rounding, not bit for bit",
            RuntimeWarning,
            stacklevel=3,
        )
    return state
