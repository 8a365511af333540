"""Crash-safe training checkpoints: ``model.fit(X, y, checkpoint="run.ckpt", resume=True)``.

A checkpoint is one ``.npz`` archive written atomically by ``_io.write_archive`` (temporary file in
the same folder, fsync, rename), of kind ``"fastopt-checkpoint"`` with a format version, a SHA-256
checksum of every array and a second SHA-256 over the training-state header. It holds:

- ``parameters``: the model's flat parameter buffer;
- the optimizer: every state buffer (arrays ``optimizer.<i>.<name>``), its class name, step count and
  hyperparameters (the layout of ``Optimizer.state_dict``);
- the shuffling generator's ``bit_generator.state`` as of the START of the epoch in progress, so the
  resumed run draws that epoch's permutation again and continues from the same row order;
- the position: the epoch in progress (``epochs + 1`` once the run is finished), the index of its next
  batch, and the number of batches processed since the run began (the cadence of ``checkpoint_every``);
- the partial sums of the epoch in progress: summed loss (a float, stored exactly), correct predictions,
  samples counted, batches skipped, and seconds spent so far;
- the history of the completed epochs;
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
``on_epoch_end`` callbacks of epochs finished before the interruption are not called again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fastopt import _io
from fastopt._checks import resolve_dtype
from fastopt._io import FileFormatError
from fastopt._version import __version__
from fastopt.optim import OPTIMIZERS, Optimizer

if TYPE_CHECKING:
    from fastopt.losses import Loss
    from fastopt.model import History, Sequential

CHECKPOINT_FILE_KIND = "fastopt-checkpoint"
CHECKPOINT_FILE_VERSION = 1

_FINGERPRINT_FIELDS = {
    "architecture": "architecture (model layers)",
    "dtype": "model dtype",
    "n_parameters": "number of parameters",
    "optimizer": "optimizer class",
    "hyperparameters": "optimizer hyperparameters",
    "loss": "loss class",
    "epochs": "epochs",
    "batch_size": "batch_size",
    "shuffle": "shuffle",
    "seed": "shuffling seed",
    "n_samples": "number of training samples",
    "data": "training data (SHA-256 of X and y)",
    "validation": "validation data (SHA-256 of X_val and y_val)",
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
    loss: Loss,
    optimizer: Optimizer,
    epochs: int,
    batch_size: int,
    shuffle: bool,
    seed: int | None,
    inputs: np.ndarray,
    targets: np.ndarray,
    validation: tuple[np.ndarray, np.ndarray] | None,
) -> dict[str, Any]:
    """What identifies a training run: a checkpoint resumes only a run whose fingerprint is equal.

    Not part of it, so they may change between an interrupted run and its resumption: the backend and
    the thread counts (see ``environment``; results then agree to rounding, not bit for bit), ``checkpoint_every``,
    ``on_nonfinite``, ``progress`` and ``on_epoch_end``.
    """
    return _json_normalized(
        {
            "architecture": model.config()["layers"],
            "dtype": model.dtype.name,
            "n_parameters": int(model.parameters.size),
            "optimizer": type(optimizer).__name__,
            "hyperparameters": optimizer.hyperparameters,
            "loss": type(loss).__name__,
            "epochs": epochs,
            "batch_size": batch_size,
            "shuffle": bool(shuffle),
            "seed": None if seed is None else int(seed),
            "n_samples": len(inputs),
            "data": data_digest(inputs, targets),
            "validation": None if validation is None else data_digest(*validation),
        }
    )


@dataclass
class Progress:
    """Where a run is: the epoch in progress (1-based), its next batch, batches processed since the run
    began, and the epoch's partial sums (loss summed over samples, correct predictions, samples counted,
    skipped batches, seconds)."""

    epoch: int = 1
    batch: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    correct: int = 0
    samples: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.loss_sum, self.correct, self.samples, self.skipped, self.seconds = 0.0, 0, 0, 0, 0.0


@dataclass
class TrainingState:
    """Everything ``fit`` needs to continue a run bit-identically (see the module docstring).

    When saving, ``parameters`` and the buffers in ``optimizer`` may be the live arrays: nothing is
    copied before the write. A loaded state owns fresh arrays.
    """

    fingerprint: dict[str, Any]
    progress: Progress
    rng_state: dict[str, Any]
    history: dict[str, list[Any]]
    epochs_done: list[int]
    parameters: np.ndarray
    optimizer: dict[str, Any]  # Optimizer.state_dict() layout: optimizer, step_count, hyperparameters, state
    environment: dict[str, Any] = field(default_factory=dict)  # see ``environment``; informational

    # ------------------------------------------------------------------ writing
    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write this state to ``path`` atomically (the previous file stays whole if the process dies). An
        existing file is replaced only if it is a fastopt checkpoint, or with ``overwrite=True``."""
        training = {
            "fingerprint": self.fingerprint,
            "progress": asdict(self.progress),
            "rng_state": self.rng_state,
            "history": {"epochs": self.epochs_done, "metrics": self.history},
            "optimizer": {
                "class": self.optimizer["optimizer"],
                "step_count": int(self.optimizer["step_count"]),
                "hyperparameters": self.optimizer["hyperparameters"],
                "buffers": [list(buffers) for buffers in self.optimizer["state"]],
            },
        }
        arrays = {"parameters": self.parameters}
        for index, buffers in enumerate(self.optimizer["state"]):
            arrays.update({f"optimizer.{index}.{name}": buffer for name, buffer in buffers.items()})
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
        environment = environment if isinstance(environment, dict) else {}
        return cls._from_checked_file(path, training, arrays, expected_fingerprint, environment)

    @classmethod
    def _from_checked_file(
        cls,
        path: str | os.PathLike[str],
        training: dict[str, Any],
        arrays: dict[str, np.ndarray],
        fingerprint: dict[str, Any],
        environment: dict[str, Any],
    ) -> TrainingState:
        def require(condition: bool, what: str) -> None:
            if not condition:
                raise FileFormatError(f"{path}: invalid checkpoint, {what}")

        epochs, n_samples = fingerprint["epochs"], fingerprint["n_samples"]
        n_batches = -(-n_samples // fingerprint["batch_size"])
        raw = training.get("progress")
        require(isinstance(raw, dict) and set(raw) == set(Progress.__dataclass_fields__), "bad progress record")
        for name in ("epoch", "batch", "steps", "correct", "samples", "skipped"):
            require(_is_int(raw[name]) and raw[name] >= 0, f"progress {name} must be a non-negative integer")
        for name in ("loss_sum", "seconds"):
            require(isinstance(raw[name], (int, float)) and not isinstance(raw[name], bool), f"{name} must be a number")
        progress = Progress(**raw)
        progress.loss_sum, progress.seconds = float(progress.loss_sum), float(progress.seconds)
        require(1 <= progress.epoch <= epochs + 1, f"epoch {progress.epoch} outside 1..{epochs + 1}")
        require(progress.batch <= n_batches, f"batch {progress.batch} beyond the {n_batches} batches of an epoch")
        require(progress.epoch <= epochs or progress.batch == 0, "a finished run cannot be inside an epoch")
        require(progress.steps == (progress.epoch - 1) * n_batches + progress.batch, "inconsistent step count")
        require(progress.skipped <= progress.batch and progress.samples <= n_samples, "inconsistent epoch sums")

        rng_state = training.get("rng_state")
        try:
            np.random.PCG64().state = rng_state
        except (TypeError, ValueError, KeyError) as exc:
            raise FileFormatError(f"{path}: invalid checkpoint, bad shuffling-generator state ({exc})") from exc

        history = training.get("history")
        require(isinstance(history, dict) and set(history) == {"epochs", "metrics"}, "bad history record")
        done = list(range(1, progress.epoch))
        require(history["epochs"] == done, f"history must list epochs {done}")
        metrics = history["metrics"]
        require(isinstance(metrics, dict), "bad history metrics")
        for key, values in metrics.items():
            require(
                isinstance(values, list) and len(values) == len(done) and all(_is_number(v) for v in values),
                f"history {key!r} must hold {len(done)} numbers",
            )

        parameters = arrays.get("parameters")
        require(
            parameters is not None
            and parameters.dtype == np.dtype(fingerprint["dtype"])
            and parameters.shape == (fingerprint["n_parameters"],),
            f"parameters must be {fingerprint['dtype']} of shape ({fingerprint['n_parameters']},)",
        )
        opt = training.get("optimizer")
        require(
            isinstance(opt, dict) and set(opt) == {"class", "step_count", "hyperparameters", "buffers"}, "bad optimizer"
        )
        require(
            opt["class"] == fingerprint["optimizer"] and opt["hyperparameters"] == fingerprint["hyperparameters"],
            "the optimizer record disagrees with the fingerprint",
        )
        require(_is_int(opt["step_count"]) and opt["step_count"] >= 0, "bad optimizer step count")
        buffers = opt["buffers"]
        require(isinstance(buffers, list) and len(buffers) == 1 and isinstance(buffers[0], list), "bad buffer list")
        state: dict[str, np.ndarray] = {}
        for name in buffers[0]:
            buffer = arrays.get(f"optimizer.0.{name}") if isinstance(name, str) else None
            dtype, shape = _buffer_layout(opt["class"], name, parameters.dtype, parameters.size)
            require(
                buffer is not None and buffer.dtype == dtype and buffer.shape == shape,
                f"optimizer buffer {name!r} must be {dtype} of shape {shape}",
            )
            require(bool(np.isfinite(buffer).all()), f"optimizer buffer {name!r} holds NaN or Inf")
            state[name] = buffer
        expected_arrays = {"parameters", *(f"optimizer.0.{name}" for name in state)}
        require(set(arrays) == expected_arrays, f"unexpected arrays {sorted(set(arrays) - expected_arrays)}")
        return cls(
            fingerprint=training["fingerprint"],
            progress=progress,
            rng_state=rng_state,
            history=metrics,
            epochs_done=history["epochs"],
            parameters=parameters,
            optimizer={
                "optimizer": opt["class"],
                "step_count": opt["step_count"],
                "hyperparameters": opt["hyperparameters"],
                "state": [state],
            },
            environment=environment,
        )

    # ------------------------------------------------------------------ restoring
    def check_fits(self, parameters: np.ndarray, optimizer: Optimizer) -> None:
        """Raise ``ValueError`` unless ``restore`` would succeed; changes nothing."""
        if parameters.shape != self.parameters.shape or parameters.dtype != self.parameters.dtype:
            raise ValueError(
                f"the checkpoint's parameters ({self.parameters.dtype} {self.parameters.shape}) do not fit "
                f"the model's ({parameters.dtype} {parameters.shape})"
            )
        optimizer.check_state_dict(self.optimizer, params=[parameters])

    def restore(self, parameters: np.ndarray, optimizer: Optimizer, rng: np.random.Generator) -> None:
        """Copy the saved parameters, optimizer state and shuffling-generator state into the live objects.
        ``optimizer`` must already be bound to ``parameters``. Everything is checked before anything changes."""
        self.check_fits(parameters, optimizer)
        if not optimizer.is_bound_to([parameters]):
            raise ValueError("restore needs an optimizer bound to the model's parameters")
        optimizer.load_state_dict(self.optimizer)  # checks whole, then replaces; the last step that can fail
        parameters[...] = self.parameters
        rng.bit_generator.state = self.rng_state


def _file_layout(header: dict[str, Any]) -> _io.Layout:
    """The arrays a checkpoint's header declares: the parameters, sized by its fingerprint, and one
    optimizer buffer of the same size per name its optimizer record lists (``read_archive`` reads nothing
    else and nothing larger)."""
    training = header.get("training")
    fingerprint = training.get("fingerprint") if isinstance(training, dict) else None
    optimizer = training.get("optimizer") if isinstance(training, dict) else None
    if not isinstance(fingerprint, dict) or not isinstance(optimizer, dict):
        raise ValueError("its header holds no training state")
    size, buffers = fingerprint.get("n_parameters"), optimizer.get("buffers")
    if not _is_int(size) or size < 0:
        raise ValueError(f"its header declares {size!r} parameters")
    if not isinstance(buffers, list) or len(buffers) != 1 or not all(isinstance(name, str) for name in buffers[0]):
        raise ValueError("its header has a bad optimizer buffer list")
    dtype = resolve_dtype(fingerprint.get("dtype"))
    layout = {f"optimizer.0.{name}": _buffer_layout(optimizer.get("class"), name, dtype, size) for name in buffers[0]}
    return {"parameters": (dtype, (size,)), **layout}


_OPTIMIZER_CLASSES = {cls.__name__: cls for cls in OPTIMIZERS.values()}


def _buffer_layout(optimizer_class: object, name: str, dtype: np.dtype, size: int) -> tuple[np.dtype, tuple[int, ...]]:
    """The dtype and shape of the optimizer state buffer ``name`` of a model of ``size`` parameters: the
    parameters' for a per-element buffer, float64 of shape () for a per-parameter scalar of the optimizer's
    class (``Optimizer.scalar_state``: NAdam's ``mu_product``)."""
    cls = _OPTIMIZER_CLASSES.get(optimizer_class) if isinstance(optimizer_class, str) else None
    if cls is not None and name in cls.scalar_state:
        return np.dtype(np.float64), ()
    return dtype, (size,)


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
        environment: dict[str, Any],
        overwrite: bool = False,
    ) -> None:
        self.path = path
        self.overwrite = overwrite  # whether the first save may replace a file that is not a checkpoint
        self.every_steps = every if isinstance(every, int) else 0
        self.fingerprint = fingerprint
        self.parameters = parameters
        self.optimizer = optimizer
        self.rng = rng
        self.progress = progress
        self.history = history
        self.environment = environment
        self.rng_state: dict[str, Any] = rng.bit_generator.state
        self.clock_start = time.perf_counter()
        self.unsaved = False

    def start_epoch(self) -> None:
        """Called before the epoch draws its permutation: remember the generator's state then."""
        self.rng_state = self.rng.bit_generator.state
        self.clock_start = time.perf_counter() - self.progress.seconds

    def batch_done(self) -> None:
        self.unsaved = True
        if self.every_steps and self.progress.steps % self.every_steps == 0:
            self.save()

    def epoch_done(self) -> None:
        """Called once the epoch is in the history and ``progress`` points at the next epoch."""
        self.rng_state = self.rng.bit_generator.state
        self.unsaved = True
        if not self.every_steps:
            self.save()

    def finish(self) -> None:
        if self.unsaved:
            self.save()

    def save(self) -> None:
        progress = self.progress
        if progress.batch:  # inside an epoch: the time it has taken so far
            progress.seconds = time.perf_counter() - self.clock_start
        optimizer = self.optimizer
        TrainingState(
            fingerprint=self.fingerprint,
            progress=progress,
            rng_state=self.rng_state,
            history=self.history.history,
            epochs_done=self.history.epochs,
            parameters=self.parameters,
            optimizer={
                "optimizer": type(optimizer).__name__,
                "step_count": optimizer.step_count,
                "hyperparameters": optimizer.hyperparameters,
                "state": optimizer.state,
            },
            environment=self.environment,
        ).save(self.path, self.overwrite)
        self.unsaved = False
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
) -> TrainingState | None:
    """The state saved at ``path`` if it belongs to this run and fits ``parameters`` and ``optimizer``;
    None if there is no file. Leaves the model and optimizer untouched; raises on any problem, and warns
    (``RuntimeWarning``) if the environment differs, since the result is then not bit-identical."""
    remove_stale_temporaries(path)
    try:
        state = TrainingState.load(path, fingerprint)
    except FileNotFoundError:
        return None
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
