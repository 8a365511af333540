"""Kill-and-resume soak test: train in a worker process, SIGKILL it at random moments (and during
checkpoint writes), resume, and check the result is bit-identical to an uninterrupted run.

    python scripts/kill_resume.py --trials 20 [--backends cython,numpy] [--seed 0]

Each trial kills the worker 1-3 times then lets it finish; half the trials time their kills by a
random delay (checkpoint every 3 batches), half aim them at checkpoint writes (checkpoint every batch).
The worker and trial logic are in tests/checkpoint_worker.py.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoint_worker import TrialResult, kill_trial, reference

import fastopt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per backend (default 20)")
    parser.add_argument("--backends", default=",".join(fastopt.available_backends()))
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill timings (default 0)")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    failures = 0
    with tempfile.TemporaryDirectory(prefix="fastopt-kill-") as tmp:
        folder = Path(tmp)
        for backend in args.backends.split(","):
            started = time.perf_counter()
            expected = reference(folder, backend)
            results: list[TrialResult] = []
            for trial in range(args.trials):
                mode, every = ("delay", 3) if trial % 2 == 0 else ("write", 1)
                result = kill_trial(folder / f"{backend}-{trial}", backend, every, expected, rng, mode)
                results.append(result)
                if not result.bit_exact:
                    failures += 1
                    print(f"  {backend} trial {trial} ({mode}): NOT bit-exact: {result.mismatch}")
            kills = sum(r.kill_points for r in results)
            exact_kills = sum(r.kill_points for r in results if r.bit_exact)
            print(
                f"{backend}: {kills} kill points tried in {len(results)} trials "
                f"({sum(r.during_write for r in results)} of them during a checkpoint write; "
                f"{sum(r.finished_first for r in results)} more kills came after the worker had finished), "
                f"{exact_kills}/{kills} resumed bit-exactly; "
                f"{sum(r.bit_exact for r in results)}/{len(results)} trials ended bit-identical "
                f"[{time.perf_counter() - started:.0f} s]",
                flush=True,
            )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
