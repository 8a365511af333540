"""One run of a study, the unit of work a Dask worker (or this process) executes: an ordinary ``Sequential.fit``
checkpointed to ``<study>/runs/<run id>.ckpt`` with ``resume=True``, so that a run started again, after its worker was
killed or in a rerun of the study, continues from its last checkpoint and ends bit-identical to an uninterrupted run.
When the fit ends, the run's record (its spec, history, final parameters' SHA-256, where and how it ran) is written
atomically to ``<study>/runs/<run id>.json``; a run with a record is finished.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np

from fastopt import datasets
from fastopt._config import set_num_threads
from fastopt._io import write_text_atomic
from fastopt._version import __version__
from fastopt.backend import available_backends, resolve_backend
from fastopt.checkpoint import environment
from fastopt.compare.spec import ACTIVATIONS, LOSSES, RunSpec
from fastopt.layers import Dense, Layer
from fastopt.model import Sequential

RUNS_FOLDER = "runs"


def checkpoint_path(directory: Path, run: RunSpec) -> Path:
    return directory / RUNS_FOLDER / f"{run.run_id}.ckpt"


def record_path(directory: Path, run: RunSpec) -> Path:
    return directory / RUNS_FOLDER / f"{run.run_id}.json"


def read_record(directory: Path, run: RunSpec) -> dict[str, Any] | None:
    """The record of a finished run, or None if the run has none yet."""
    path = record_path(directory, run)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError(f"{path} is not a run record ({exc}); delete it to run that run again") from None
    if not isinstance(record, dict) or record.get("run_id") != run.run_id:
        raise ValueError(f"{path} is not the record of run {run.run_id}; delete it to run that run again")
    return record


@functools.lru_cache(maxsize=2)
def _dataset(name: str) -> datasets.Dataset:
    """Loaded once per worker process (a worker runs many runs of the same data)."""
    return datasets.load(name)


def _mlp(run: RunSpec, sizes: tuple[int, ...]) -> Sequential:
    """``Dense`` layers of ``sizes`` with the run's activation between them (none after the last)."""
    stack: list[Layer] = []
    for n_in, n_out in itertools.pairwise(sizes):
        stack += [Dense(n_in, n_out), ACTIVATIONS[run.activation]()]
    return Sequential(stack[:-1], dtype=run.dtype, seed=run.seed, backend=run.backend)


def _check_worker(directory: Path, version: str) -> None:
    """A worker must run the client's fastopt and see the study folder (a shared filesystem, the same path)."""
    host = socket.gethostname()
    if version != __version__:
        raise ValueError(f"the worker on {host} runs fastopt {__version__}, the study fastopt {version}: every worker "
                         "needs the same fastopt version")  # fmt: skip
    if not (directory / RUNS_FOLDER).is_dir():
        raise FileNotFoundError(f"the study folder {directory} is not on {host}: every worker needs it at the same "
                                "path (a shared filesystem)")  # fmt: skip


def thread_counts(backend: str) -> dict[str, int]:
    """The threads a run uses: each BLAS and OpenMP pool's (threadpoolctl) and fastopt's kernels' own."""
    counts = dict(environment(backend)["threads"])
    if "cython" in available_backends():
        counts["fastopt"] = int(resolve_backend("cython").build_info()["openmp_threads"])
    return counts


def train_run(run: RunSpec, directory: str, version: str) -> dict[str, Any]:
    """Train one run (or resume it from its checkpoint, or read back its finished checkpoint) and write its record.

    fastopt's kernels and BLAS are set to ``run.threads`` threads first (1 in a study: one single-threaded worker
    process per core, no oversubscription). A run whose loss or gradients become NaN or Inf stops there
    (``on_nonfinite="stop"``): its record says so (``stop_reason``) and the study goes on."""
    folder = Path(directory)
    _check_worker(folder, version)
    set_num_threads(run.threads)
    started = time.perf_counter()
    X, y, X_test, y_test = _dataset(run.dataset)
    sizes = (X.shape[1], *run.hidden, int(max(y.max(), y_test.max())) + 1)
    model = _mlp(run, sizes)
    optimizer = run.make_optimizer()
    checkpoint = checkpoint_path(folder, run)
    resumed = checkpoint.exists()
    with np.errstate(all="ignore"):  # a diverging run is recorded by its stop_reason
        history = model.fit(
            X, y, loss=LOSSES[run.loss](), optimizer=optimizer, epochs=run.epochs, batch_size=run.batch_size,
            shuffle=True, seed=run.seed, validation_data=(X_test, y_test) if run.validation == "test" else None,
            validation_split=run.validation if isinstance(run.validation, float) else 0.0,
            callbacks=run.make_callbacks(optimizer), checkpoint=checkpoint, checkpoint_every=run.checkpoint_every,
            resume=True, on_nonfinite="stop",
        )  # fmt: skip
    record = {
        "run_id": run.run_id, "run": run.to_dict(),
        "architecture": "-".join(map(str, sizes)) + f" {run.activation}",
        "epochs": history.epochs, "history": history.history, "stop_reason": history.stop_reason,
        "parameters_sha256": hashlib.sha256(model.parameters.tobytes()).hexdigest(),
        "resumed": resumed, "host": socket.gethostname(), "pid": os.getpid(), "threads": thread_counts(run.backend),
        "task_seconds": time.perf_counter() - started, "fastopt": __version__,
    }  # fmt: skip
    write_text_atomic(record_path(folder, run), json.dumps(record))
    return record
