"""Running a study: each run not finished yet becomes one Dask task (``fastopt.compare.task.train_run``), on a
``LocalCluster`` of single-threaded worker processes by default or on an existing cluster by address; as runs finish,
``results.csv`` and ``study.json`` are rewritten atomically in the study folder.

Nothing is lost: a finished run has a record in ``runs/`` and is never run again (a rerun of a finished study starts no
cluster and trains nothing); an unfinished run resumes from its checkpoint, whether the study is run again or Dask
reschedules the task of a worker that died (the scheduler retries a task whose worker died, up to
``distributed.scheduler.allowed-failures`` times).

Threads: a task sets fastopt's kernels and BLAS to the run's ``threads`` (1) before training, and the workers of the
``LocalCluster`` are started by Dask's nanny with ``OMP_NUM_THREADS=1``, ``OPENBLAS_NUM_THREADS=1`` and
``MKL_NUM_THREADS=1`` (``distributed.nanny.pre-spawn-environ``): one worker process per core, one thread each. (The
nanny starts each worker as a fresh process, never a fork, so fastopt's kernels keep OpenMP there.)
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from fastopt._config import show_config
from fastopt._io import write_text_atomic
from fastopt._version import __version__
from fastopt.backend import available_backends, resolve_backend
from fastopt.compare.spec import RunSpec, Study
from fastopt.compare.task import RUNS_FOLDER, read_record, train_run
from fastopt.history import COMPLETED

RESULTS_FILE, STUDY_FILE, REPORT_FILE = "results.csv", "study.json", "report.html"
STUDY_FORMAT = 1  # study.json's "fastopt_study": marks a folder fastopt compare wrote
CONNECT_TIMEOUT = 30  # seconds to reach a scheduler, and again to see its first worker
METRIC_ORDER = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "skipped_batches", "seconds")
RUN_COLUMNS = ("run", "dataset", "architecture", "optimizer")
SETTING_COLUMNS = ("schedule", "seed", "backend", "dtype", "batch_size", "threads", "stop_reason", "epoch")


@dataclass
class StudyResult:
    """What ``Study.run`` did: the folder, the number of runs, how many were finished before this call, how many it
    trained (or resumed), and how many ended early (a non-finite loss)."""

    directory: Path
    runs: int
    finished_before: int
    trained: int
    stopped_early: int


def config_text() -> str:
    """``fastopt.show_config()``'s text."""
    with contextlib.redirect_stdout(io.StringIO()) as text:
        show_config()
    return text.getvalue()


def prepare_folder(out: str | os.PathLike[str]) -> Path:
    """The study folder (created if needed) with its ``runs`` folder. A folder holding a ``results.csv`` or
    ``report.html`` that no ``study.json`` of fastopt's vouches for is refused: those files are not replaced."""
    directory = Path(out).expanduser().resolve()
    if directory.exists() and not directory.is_dir():
        raise ValueError(f"{out} is not a folder")
    study_file = directory / STUDY_FILE
    if study_file.exists():
        read_study_file(directory)  # refuses a study.json fastopt did not write
    else:
        foreign = [name for name in (RESULTS_FILE, REPORT_FILE) if (directory / name).exists()]
        if foreign:
            raise ValueError(f"{directory} holds {foreign[0]} but no study.json of fastopt compare: refusing to "
                             "replace it (choose another folder)")  # fmt: skip
    (directory / RUNS_FOLDER).mkdir(parents=True, exist_ok=True)
    return directory


def read_study_file(directory: Path) -> dict[str, Any]:
    """A study folder's ``study.json``; a folder without one, or with another file by that name, is refused."""
    path = directory / STUDY_FILE
    try:
        study = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{directory} is not a study folder of fastopt compare: it has no study.json") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not a study.json of fastopt compare: {exc}") from None
    if not isinstance(study, dict) or study.get("fastopt_study") != STUDY_FORMAT:
        raise ValueError(f"{path} is not a study.json of fastopt compare (format {STUDY_FORMAT})")
    return study


# ------------------------------------------------------------------------------------------ results
def hyperparameter_columns(runs: Sequence[RunSpec]) -> list[str]:
    """Every hyperparameter of the study's optimizers: ``lr`` first, then by name."""
    names = {name for run in runs for name, _ in run.hyperparameters}
    return sorted(names, key=lambda name: (name != "lr", name))


def metric_columns(records: Sequence[dict[str, Any]]) -> list[str]:
    found = {key for record in records for key in record["history"]}
    return [key for key in METRIC_ORDER if key in found] + sorted(found - set(METRIC_ORDER))


def _rows(run: RunSpec, record: dict[str, Any], hyper: list[str], metrics: list[str]) -> Iterator[list[Any]]:
    """One row per recorded epoch of a run; floats as ``repr`` (read back exactly)."""
    values = dict(run.hyperparameters)
    fixed = [run.run_id, run.dataset, record["architecture"], run.label]
    fixed += [json.dumps(list(values[name])) if isinstance(values.get(name), tuple) else values.get(name, "")
              for name in hyper]  # fmt: skip
    fixed += [json.dumps(dict(run.schedule)) if run.schedule else "", run.seed, run.backend, run.dtype,
              run.batch_size, run.threads, record["stop_reason"]]  # fmt: skip
    for index, epoch in enumerate(record["epochs"]):
        yield [*fixed, epoch, *(repr(record["history"].get(key, [""] * (index + 1))[index]) for key in metrics)]


def results_csv(runs: Sequence[RunSpec], records: dict[str, dict[str, Any]]) -> str:
    """``results.csv``: one row per run and epoch, the finished runs in the study's order."""
    finished = [(run, records[run.run_id]) for run in runs if run.run_id in records]
    hyper, metrics = hyperparameter_columns(runs), metric_columns([record for _, record in finished])
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow([*RUN_COLUMNS, *hyper, *SETTING_COLUMNS, *metrics])
    for run, record in finished:
        writer.writerows(_rows(run, record, hyper, metrics))
    return text.getvalue()


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


class ResultsWriter:
    """Keeps the records of the finished runs and rewrites ``results.csv`` then ``study.json`` atomically as runs
    finish: at most every ``min_interval`` seconds, or every 20 times as long as the last rewrite took (a study of
    10,000 runs would otherwise spend its time rewriting them), and once more at the end (``write``)."""

    def __init__(self, directory: Path, study: Study, records: dict[str, dict[str, Any]], about: dict[str, Any],
                 min_interval: float = 2.0) -> None:  # fmt: skip
        self.directory, self.study, self.records, self.about = directory, study, records, about
        self.runs = study.runs()
        self.min_interval, self.written, self.took = min_interval, -math.inf, 0.0

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["run_id"]] = record
        if time.monotonic() - self.written >= max(self.min_interval, 20 * self.took):
            self.write()

    def write(self) -> None:
        """Replace results.csv and study.json where their content changed (a rerun that trains nothing leaves
        both as they were, unless it runs elsewhere: study.json names the scheduler)."""
        started = time.monotonic()
        results = results_csv(self.runs, self.records)
        if _read_text(self.directory / RESULTS_FILE) != results:
            write_text_atomic(self.directory / RESULTS_FILE, results)
        study = self.study_json()
        previous = _read_text(self.directory / STUDY_FILE)
        if previous is None or dict(json.loads(previous), updated=study["updated"]) != study:
            write_text_atomic(self.directory / STUDY_FILE, json.dumps(study, indent=2) + "\n")
        self.written = time.monotonic()
        self.took = self.written - started

    def study_json(self) -> dict[str, Any]:
        finished = [self.records[run.run_id] for run in self.runs if run.run_id in self.records]
        return {
            "fastopt_study": STUDY_FORMAT, "name": self.study.name, "fastopt": __version__, **self.about,
            "spec": self.study.to_dict(), "runs": len(self.runs), "finished": len(finished),
            "stopped_early": sum(record["stop_reason"] != COMPLETED for record in finished),
            "columns": {"hyperparameters": hyperparameter_columns(self.runs), "metrics": metric_columns(finished)},
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip


# ------------------------------------------------------------------------------------------ executors
def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise ImportError("running a study on Dask needs dask.distributed: pip install 'fastopt[distributed]' "
                          "(or run it in this process with scheduler='serial')") from None  # fmt: skip
    return distributed


@contextlib.contextmanager
def _connected(distributed: Any, scheduler: str) -> Iterator[Any]:
    """A client of the scheduler at an address or described by a scheduler file, once it has a worker."""
    by_file = Path(scheduler).is_file()
    try:
        client = (distributed.Client(scheduler_file=scheduler, timeout=CONNECT_TIMEOUT) if by_file
                  else distributed.Client(scheduler, timeout=CONNECT_TIMEOUT))  # fmt: skip
    except (OSError, ValueError) as exc:
        raise OSError(f"cannot reach the Dask scheduler {scheduler}: {exc}") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=CONNECT_TIMEOUT)
        except TimeoutError:
            raise OSError(f"the Dask scheduler {scheduler} has no worker (waited {CONNECT_TIMEOUT} s)") from None
        yield client


def default_workers() -> int:
    """One worker per physical core this process may use (a second hardware thread of a core adds little to
    GEMM-bound training and slows its sibling)."""
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        import psutil  # a dependency of dask.distributed

        physical = psutil.cpu_count(logical=False) or available
    except ImportError:
        physical = available
    return max(1, min(available, physical))


@contextlib.contextmanager
def dask_client(scheduler: object, workers: int | None) -> Iterator[Any]:
    """A ``distributed.Client``: the one given, one of a new ``LocalCluster`` (``workers`` processes of one thread,
    default one per core, on 127.0.0.1, no dashboard), or one connected to a scheduler's address or file."""
    distributed = _distributed()
    if isinstance(scheduler, distributed.Client):
        yield scheduler
    elif scheduler is None:
        count = workers or default_workers()
        with distributed.LocalCluster(n_workers=count, threads_per_worker=1, processes=True, host="127.0.0.1",
                                      dashboard_address=None, silence_logs=logging.ERROR) as cluster:  # fmt: skip
            with distributed.Client(cluster) as client:
                yield client
    else:
        with _connected(distributed, str(scheduler)) as client:
            yield client


def worker_configs(client: Any) -> list[dict[str, Any]]:
    """``fastopt.show_config()`` of every worker: each distinct text once, with the workers that printed it."""
    groups: dict[str, list[str]] = {}
    for address, text in client.run(config_text).items():
        groups.setdefault(text, []).append(address)
    return [{"workers": sorted(addresses), "config": text} for text, addresses in groups.items()]


def _dask_records(runs: list[RunSpec], writer: ResultsWriter, scheduler: object, workers: int | None) -> Iterator[dict]:
    """Submit one task per run (keyed by its run id) and yield the records as the tasks finish; the tasks left are
    cancelled if the caller stops early. The workers' configurations go into ``study.json``."""
    distributed = _distributed()
    directory = writer.directory
    with dask_client(scheduler, workers) as client:
        writer.about["worker_config"] = worker_configs(client)
        futures = client.map(train_run, runs, directory=str(directory), version=__version__,
                             key=[f"fastopt-run-{run.run_id}" for run in runs])  # fmt: skip
        try:
            for future in distributed.as_completed(futures):
                yield future.result()
        finally:
            client.cancel(futures)


@contextlib.contextmanager
def _threads_restored() -> Iterator[None]:
    """Put back this process's thread settings (fastopt's kernels, BLAS) after runs made in it."""
    from threadpoolctl import threadpool_limits

    compiled = resolve_backend("cython") if "cython" in available_backends() else None
    kernels = compiled.build_info()["openmp_threads"] if compiled is not None else None
    try:
        with threadpool_limits(limits=None):  # restores every pool's limit on exit
            yield
    finally:
        if compiled is not None:
            compiled.set_num_threads(kernels)


def _serial_records(runs: list[RunSpec], directory: Path) -> Iterator[dict]:
    with _threads_restored():
        for run in runs:
            yield train_run(run, str(directory), __version__)


def describe_scheduler(scheduler: object, workers: int | None) -> str:
    if scheduler is None:
        return f"a local Dask cluster of {workers or default_workers()} single-threaded worker processes"
    if scheduler == "serial":
        return "this process, one run after another"
    address = getattr(getattr(scheduler, "scheduler", None), "address", None)
    return f"the Dask scheduler {address or scheduler}"


def _check_scheduler(scheduler: object, workers: int | None) -> None:
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if workers is not None and scheduler is not None:
        raise ValueError("workers applies to the local cluster (no scheduler given) only")
    if scheduler is not None and not isinstance(scheduler, str) and not hasattr(scheduler, "submit"):
        raise TypeError(
            f"scheduler must be None, 'serial', an address, a scheduler file or a Client, got {scheduler!r}"
        )


def run_study(study: Study, out: str | os.PathLike[str], scheduler: object = None, workers: int | None = None,
              progress: bool = True, command: str | None = None) -> StudyResult:  # fmt: skip
    """Run the study's unfinished runs (``Study.run``); ``command`` (the command line) goes into ``study.json``."""
    _check_scheduler(scheduler, workers)
    directory = prepare_folder(out)
    runs = study.runs()
    records = {run.run_id: record for run in runs if (record := read_record(directory, run)) is not None}
    pending = [run for run in runs if run.run_id not in records]
    about = {"scheduler": describe_scheduler(scheduler, workers), "config": config_text()}
    writer = ResultsWriter(directory, study, dict(records), dict(about, command=command) if command else about)
    writer.write()
    if pending:
        source = (_serial_records(pending, directory) if scheduler == "serial"
                  else _dask_records(pending, writer, scheduler, workers))  # fmt: skip
        try:
            with tqdm(total=len(runs), initial=len(records), desc=study.name, unit="run", disable=not progress) as bar:
                for record in source:
                    writer.add(record)
                    bar.update()
        finally:  # what finished is in results.csv even when a run fails or the study is interrupted
            writer.write()
    stopped = sum(record["stop_reason"] != COMPLETED for record in writer.records.values())
    return StudyResult(directory, len(runs), len(records), len(pending), stopped)
