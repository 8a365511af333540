"""Wall time of a ``fastopt compare`` study on a local Dask cluster against the same runs made one after another in
this process, and the runs per minute of each; checks that both gave the same results.

    PYTHONPATH=. python scripts/measure_compare.py                       # the optimizers preset (36 runs), once
    PYTHONPATH=. python scripts/measure_compare.py --epochs 2 --rounds 3 # a subset, 3 interleaved rounds

The cluster has ``--workers`` single-threaded worker processes (each run at 1 thread); the serial runs use
``--serial-threads`` threads in one process (fastopt's kernels and BLAS). The cython backend gives the same bits
for any thread count, so both studies must give equal results (seconds apart); the script says whether they did.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from fastopt.compare import Study
from fastopt.compare.report import write_report


def _results(directory: Path) -> list[list[str]]:
    """results.csv without the columns that may differ between the two ways of running: seconds, threads, run id."""
    with open(directory / "results.csv", newline="") as stream:
        rows = list(csv.reader(stream))
    keep = [index for index, name in enumerate(rows[0]) if name not in ("seconds", "threads", "run")]
    return [[row[index] for index in keep] for row in rows]


def _timed(study: Study, directory: Path, scheduler: object, workers: int | None) -> float:
    started = time.perf_counter()
    result = study.run(directory, scheduler=scheduler, workers=workers, progress=True)
    seconds = time.perf_counter() - started
    if result.trained != result.runs:
        raise SystemExit(f"{directory} already held finished runs: give an empty --out")
    return seconds


def _round(study: Study, folder: Path, args: argparse.Namespace, cluster_first: bool) -> dict[str, float]:
    """One round: the study on the cluster and serially, in the given order, in fresh folders."""
    ways = {
        "cluster": (study, None, args.workers),
        "serial": (study.replace(threads=args.serial_threads), "serial", None),
    }
    order = ["cluster", "serial"] if cluster_first else ["serial", "cluster"]
    seconds = {way: _timed(ways[way][0], folder / way, ways[way][1], ways[way][2]) for way in order}
    if _results(folder / "cluster") != _results(folder / "serial"):
        raise SystemExit(f"the cluster and the serial runs differ: compare {folder}/cluster and {folder}/serial")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="optimizers")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--dataset")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--serial-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds (the order alternates)")
    parser.add_argument("--out", help="folder for the studies (default: a temporary folder)")
    args = parser.parse_args()
    changes = {"epochs": args.epochs, "seeds": args.seeds, "datasets": args.dataset and [args.dataset]}
    study = Study.preset(args.preset).replace(**{key: value for key, value in changes.items() if value is not None})
    folder = Path(args.out or tempfile.mkdtemp(prefix="fastopt-compare-"))
    load = os.getloadavg()[0]
    rounds = [_round(study, folder / f"round-{index}", args, index % 2 == 0) for index in range(args.rounds)]
    runs = len(study.runs())
    cluster, serial = (float(np.median([r[way] for r in rounds])) for way in ("cluster", "serial"))
    figures = {
        "runs": runs, "epochs": study.epochs, "workers": args.workers, "serial_threads": args.serial_threads,
        "rounds": [{way: round(value, 1) for way, value in r.items()} for r in rounds],
        "cluster_seconds_median": round(cluster, 1), "serial_seconds_median": round(serial, 1),
        "cluster_runs_per_minute": round(60 * runs / cluster, 2),
        "serial_runs_per_minute": round(60 * runs / serial, 2),
        "serial_over_cluster_by_round": [round(r["serial"] / r["cluster"], 2) for r in rounds],
        "same_results": True, "load_average_before": load, "load_average_after": os.getloadavg()[0],
    }  # fmt: skip
    print(json.dumps(figures, indent=2))
    write_report(folder / "round-0" / "cluster")
    print(f"studies in {folder}")


if __name__ == "__main__":
    main()
