"""Kill-and-resume trials: a worker process trains with checkpoints, a parent kills it with SIGKILL
and resumes it, and the end result must be bit-identical to an uninterrupted run's.

As a script (the worker)::

    python tests/checkpoint_worker.py OUT --backend cython [--variant V] [--checkpoint PATH --every 3 | --reference]

trains a small MLP on a subset of ``datasets.mini()`` (resuming from PATH when it exists), prints
``ready`` once imports and data are done (the parent times its kills from there) and writes the final
parameters, optimizer state and history to OUT. ``--variant`` "cosine" or "onecycle" trains longer with
callbacks: early stopping (restoring its best weights, on a validation split), that schedule, and clip_norm;
"dropout" is "cosine" with a ``Dropout`` after each hidden layer.
``--reference`` instead trains once without and once
with checkpoints every 3 batches (to a file next to OUT), and writes the result, whether the two runs
agree, and the checkpointed run's duration.

The parent's side is ``reference`` and ``kill_trial``, used by ``tests/test_checkpoint.py`` and
``scripts/kill_resume.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
N_SAMPLES, BATCH_SIZE, EPOCHS, SEED = 472, 16, 3, 11  # 30 batches per epoch (the last of 8 rows), 90 steps
VARIANTS = ("plain", "cosine", "onecycle", "dropout")
DROPOUT = 0.2  # the "dropout" variant: after each hidden layer
CALLBACK_EPOCHS = 12  # the callback variants: early stopping ends them before (checked by the tests)


def _variant_options(variant: str, optimizer: object) -> dict:
    """``fit``'s options for a variant: none for "plain"; else early stopping (best weights restored), the
    schedule, clip_norm, and a validation split instead of the validation data."""
    from fastopt import callbacks
    from fastopt.optim import lr_scheduler

    if variant == "plain":
        return {"epochs": EPOCHS}
    if variant in ("cosine", "dropout"):
        schedule = lr_scheduler.CosineAnnealingLR(optimizer, T_max=6, eta_min=1e-4)
    else:  # 427 training rows after the split: 27 batches per epoch
        schedule = lr_scheduler.OneCycleLR(optimizer, max_lr=2e-2, epochs=CALLBACK_EPOCHS, steps_per_epoch=27)
    early = callbacks.EarlyStopping(patience=1, min_delta=0.02, restore_best_weights=True)
    return {"epochs": CALLBACK_EPOCHS, "callbacks": [early, schedule], "clip_norm": 0.5, "validation_split": 0.1,
            "validation_data": None}  # fmt: skip


# ---------------------------------------------------------------------------------------------- worker
def _train(
    backend: str, checkpoint: str | None, every: int, variant: str = "plain"
) -> tuple[dict[str, np.ndarray], dict, float]:
    import fastopt
    from fastopt import datasets, layers, losses, optim

    X, y, X_test, y_test = datasets.mini()

    def dropout() -> list:  # a layer of its own at each position
        return [layers.Dropout(DROPOUT)] if variant == "dropout" else []

    model = fastopt.Sequential(
        [layers.Dense(784, 32), layers.ReLU(), *dropout(), layers.Dense(32, 16), layers.Tanh(), *dropout(),
         layers.Dense(16, 10)],
        dtype="float32",
        seed=SEED,
        backend=backend,
    )  # fmt: skip
    optimizer = optim.Adam(lr=2e-3, amsgrad=True, weight_decay=1e-4, decay=1e-3)
    options = {"validation_data": (X_test[:200], y_test[:200]), **_variant_options(variant, optimizer)}
    if checkpoint:
        options.update(checkpoint=checkpoint, checkpoint_every=every, resume=True)
    started = time.perf_counter()
    history = model.fit(
        X[:N_SAMPLES], y[:N_SAMPLES], loss=losses.CrossEntropy(), optimizer=optimizer, batch_size=BATCH_SIZE,
        seed=SEED, **options,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    arrays = {"parameters": model.parameters, **{f"state.{k}": v for k, v in optimizer.state[0].items()}}
    arrays["step_count"] = np.array(optimizer.step_count)
    logs = {key: values for key, values in history.history.items() if key != "seconds"}
    return arrays, {"history": logs, "epochs": history.epochs, "stop_reason": history.stop_reason}, seconds


def _write_result(path: Path, arrays: dict[str, np.ndarray], info: dict) -> None:
    temporary = path.with_suffix(".partial.npz")
    np.savez(temporary, info=np.array(json.dumps(info)), **arrays)
    os.replace(temporary, path)


def worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--backend", required=True)
    parser.add_argument("--checkpoint")
    parser.add_argument("--every", type=int, default=3)  # batches between checkpoints
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--variant", choices=VARIANTS, default="plain")
    args = parser.parse_args(argv)
    import fastopt  # noqa: F401  (imported before "ready": kills are timed from the start of training)
    from fastopt import datasets

    datasets.mini()
    print("ready", flush=True)
    if not args.reference:
        arrays, info, _ = _train(args.backend, args.checkpoint, args.every, args.variant)
        _write_result(args.out, arrays, info)
        return 0
    plain, plain_info, _ = _train(args.backend, None, args.every, args.variant)
    checkpoint = args.out.with_suffix(".ckpt")
    checkpoint.unlink(missing_ok=True)
    arrays, info, seconds = _train(args.backend, str(checkpoint), 3, args.variant)
    same = all(np.array_equal(plain[name], arrays[name]) for name in plain) and plain_info == info
    _write_result(args.out, arrays, dict(info, seconds=seconds, same_without_checkpoints=same))
    return 0


# ---------------------------------------------------------------------------------------------- parent
def _worker(out: Path, backend: str, *options: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTOPT_QUIET_FALLBACK="1")
    command = [sys.executable, str(Path(__file__).resolve()), str(out), "--backend", backend, *options]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_ready(process: subprocess.Popen) -> None:
    line = process.stdout.readline()  # type: ignore[union-attr]
    if line.strip() != "ready":
        process.wait(60)
        raise RuntimeError(f"worker failed before training: {line!r} {process.stderr.read()}")  # type: ignore[union-attr]


def _finish(process: subprocess.Popen) -> None:
    _, stderr = process.communicate(timeout=300)
    if process.returncode != 0:
        raise RuntimeError(f"worker exited with {process.returncode}: {stderr}")


def load_result(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files if name != "info"}
        return arrays, json.loads(str(archive["info"]))


@dataclass
class Reference:
    arrays: dict[str, np.ndarray]
    info: dict
    seconds: float  # duration of the uninterrupted checkpointed run's fit


def reference(folder: Path, backend: str, variant: str = "plain") -> Reference:
    """An uninterrupted run (with checkpoints every 3 batches; the worker checks it equals a run without),
    whatever the cadence of the checkpoints of the runs compared with it."""
    out = folder / f"reference-{backend}-{variant}.npz"
    process = _worker(out, backend, "--reference", "--variant", variant)
    _wait_ready(process)
    _finish(process)
    arrays, info = load_result(out)
    same, seconds = info.pop("same_without_checkpoints"), info.pop("seconds")
    if not same:
        raise AssertionError("checkpointing changed the results of an uninterrupted run")
    return Reference(arrays, info, seconds)


@dataclass
class TrialResult:
    kill_points: int = 0  # SIGKILLs that landed while the worker was running
    during_write: int = 0  # ... of which left a half-written temporary checkpoint behind
    finished_first: int = 0  # workers that had already finished when their kill came
    bit_exact: bool = False
    mismatch: str = ""


def _temporaries(checkpoint: Path) -> list[Path]:
    return sorted(checkpoint.parent.glob(f".{checkpoint.name}.*.tmp"))


def _kill_during_a_write(process: subprocess.Popen, checkpoint: Path, rng: random.Random) -> None:
    """Poll the folder for the temporary file of a checkpoint write; kill during the n-th write seen."""
    target, seen = rng.randint(1, 40), set()
    while process.poll() is None:
        for temporary in _temporaries(checkpoint):
            seen.add(temporary.name)
        if len(seen) >= target:
            deadline = time.perf_counter() + rng.uniform(0, 0.002)
            while time.perf_counter() < deadline:
                pass
            return


def kill_trial(
    folder: Path, backend: str, every: int, ref: Reference, rng: random.Random, mode: str, variant: str = "plain"
) -> TrialResult:
    """Start, SIGKILL and restart the worker 1-3 times, then let it finish and compare with ``ref``.
    ``mode`` "delay": each kill comes after a random delay from the start of training; "write": it comes
    while a checkpoint is being written (found by polling for the temporary file)."""
    from fastopt import _io
    from fastopt.checkpoint import CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION

    folder.mkdir(parents=True, exist_ok=True)
    checkpoint, out = folder / "run.ckpt", folder / "result.npz"
    result = TrialResult()
    options = ("--checkpoint", str(checkpoint), "--every", str(every), "--variant", variant)
    for _ in range(rng.randint(1, 3)):
        process = _worker(out, backend, *options)
        _wait_ready(process)
        if mode == "delay":
            time.sleep(rng.uniform(0, ref.seconds * 1.1))
        else:
            _kill_during_a_write(process, checkpoint, rng)
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.communicate(timeout=60)
        if process.returncode == -signal.SIGKILL:
            result.kill_points += 1
            result.during_write += bool(_temporaries(checkpoint))
        elif process.returncode == 0:
            result.finished_first += 1
        else:
            raise RuntimeError(f"worker exited with {process.returncode}")
        if checkpoint.exists():  # whatever the moment of the kill, the file on disk is whole
            _io.read_archive(checkpoint, CHECKPOINT_FILE_KIND, CHECKPOINT_FILE_VERSION)
    out.unlink(missing_ok=True)
    process = _worker(out, backend, *options)
    _finish(process)
    if _temporaries(checkpoint):
        result.mismatch = "the resumed run left temporary files behind"
        return result
    arrays, info = load_result(out)
    differing = [name for name in ref.arrays if not np.array_equal(arrays.get(name), ref.arrays[name])]
    if info != ref.info:
        differing.append("history")
    result.bit_exact = not differing
    result.mismatch = ", ".join(differing)
    return result


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
