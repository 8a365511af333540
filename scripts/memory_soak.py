"""Memory soak: a long training loop on each backend, sampling resident memory; it must stay flat.

Usage (from the repository root)::

    python scripts/memory_soak.py                         # 100,000 steps per backend, both backends
    python scripts/memory_soak.py --steps 20000 --backends cython --mode train-step
    python scripts/memory_soak.py --predict-sizes 256     # also: predict on 1..256-row inputs

Workload: a 784-32-10 ReLU MLP (float32) on a 512-row slice of ``datasets.mini()``, batch 32 (16 steps per
epoch), Adam, cross-entropy. Each backend runs in its own fresh process. Modes:

- ``fit`` (default): one ``Sequential.fit`` call with as many epochs as the steps need, sampling in
  ``on_epoch_end``; this is what users run. Its ``History`` legitimately grows by a few floats per epoch:
  the script measures that (``sys.getsizeof`` of its lists and items) and reports the growth with and
  without it. The verdict uses the growth without it.
- ``fit-loop``: ``fit(epochs=1)`` called repeatedly with the same optimizer (nothing kept between calls).
- ``train-step``: ``model._train_step`` called directly (the inner loop of ``fit``).

Resident memory comes from ``/proc/self/statm`` (Linux), else ``resource.getrusage`` (peak). Samples are
taken every ``--sample-every`` steps (default 5,000); the verdict compares the sample at ``--baseline-step``
(default 10,000, after warm-up: first-batch allocations, BLAS buffers, pymalloc arenas) with the last one
against ``--limit-mb`` (default 1.0). Exit status 1 if any backend grows beyond the limit.

``--predict-sizes N`` adds a second check: ``predict`` on inputs of 1, 2, ..., N rows (a serving loop with
varying request sizes), reporting the resident memory and the number of per-batch-size workspaces the model
keeps.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    """Resident set size now, in MiB (peak RSS where /proc is unavailable)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def history_mb(history: object) -> float:
    """Memory held by a History's lists (the lists and the numbers in them), in MiB."""
    if history is None:
        return 0.0
    lists = [*history.history.values(), history.epochs]
    return sum(sys.getsizeof(values) + sum(sys.getsizeof(item) for item in values) for values in lists) / 2**20


def child(args: argparse.Namespace) -> dict:
    """Run the soak for one backend in this process; returns the samples."""
    import numpy as np

    import fastopt
    from fastopt import datasets, losses, optim
    from fastopt._checks import as_features
    from fastopt.backend import resolve_backend
    from fastopt.layers import Dense, ReLU

    X, y, _, _ = datasets.mini()
    X, y = X[: args.rows], y[: args.rows]
    steps_per_epoch = -(-args.rows // args.batch)
    model = fastopt.Sequential([Dense(784, 32), ReLU(), Dense(32, 10)], dtype="float32", seed=0, backend=args.child)
    optimizer = optim.Adam(lr=1e-3)
    samples: list[tuple[int, float, float]] = []  # (step, rss MiB, history MiB)
    state = {"steps": 0, "next": args.sample_every, "history": None}
    started = time.perf_counter()

    def maybe_sample(history: object = None) -> None:
        while state["steps"] >= state["next"]:
            samples.append((state["next"], rss_mb(), history_mb(history)))
            state["next"] += args.sample_every

    samples.append((0, rss_mb(), 0.0))
    if args.mode == "fit":
        epochs = -(-args.steps // steps_per_epoch)

        # fit creates its History internally and returns it only at the end: keep a reference on its first
        # append so that its growth can be measured at each sample
        from fastopt import model as model_module

        original_append = model_module.History.append

        def on_epoch_end(epoch: int, logs: dict) -> None:
            state["steps"] = epoch * steps_per_epoch
            maybe_sample(state["history"])

        def append(self, epoch, logs):  # type: ignore[no-untyped-def]
            state["history"] = self
            original_append(self, epoch, logs)

        model_module.History.append = append
        try:
            model.fit(
                X, y, optimizer=optimizer, epochs=epochs, batch_size=args.batch, seed=1, on_epoch_end=on_epoch_end
            )
        finally:
            model_module.History.append = original_append
    elif args.mode == "fit-loop":
        while state["steps"] < args.steps:
            model.fit(X, y, optimizer=optimizer, epochs=1, batch_size=args.batch, seed=state["steps"])
            state["steps"] += steps_per_epoch
            maybe_sample()
    else:
        backend = resolve_backend(args.child)
        loss = losses.CrossEntropy()
        inputs = as_features(X, model.in_features, model.dtype, backend)
        targets = loss.targets(y, model.out_features, model.dtype)
        optimizer.bind([model.parameters], backend)
        rng = np.random.default_rng(1)
        order = np.arange(len(inputs))
        with backend.training():
            while state["steps"] < args.steps:
                rng.shuffle(order)
                for start in range(0, len(order), args.batch):
                    model._train_step(backend, loss, optimizer, inputs, targets, order[start : start + args.batch])
                state["steps"] += steps_per_epoch
                maybe_sample()
    seconds = time.perf_counter() - started
    result = {
        "backend": args.child,
        "mode": args.mode,
        "steps": state["steps"],
        "seconds": seconds,
        "samples": samples,
        "finite": bool(np.isfinite(model.parameters).all()),
    }
    if args.predict_sizes:
        before, workspaces_before = rss_mb(), len(model._workspaces)
        data = np.random.default_rng(0).random((args.predict_sizes, 784), dtype=np.float32)
        for rows in range(1, args.predict_sizes + 1):
            model.predict(data[:rows])
        result["predict"] = {
            "sizes": args.predict_sizes,
            "rss_before": before,
            "rss_after": rss_mb(),
            "workspaces_before": workspaces_before,
            "workspaces_after": len(model._workspaces),
        }
    return result


def report(result: dict, args: argparse.Namespace) -> bool:
    samples = result["samples"]
    name = f"{result['backend']} ({result['mode']})"
    rate = result["steps"] / result["seconds"] if result["seconds"] else 0.0
    print(f"\n== {name}: {result['steps']} steps in {result['seconds']:.1f} s ({1e6 / rate:.0f} us/step)")
    print(f"{'step':>8} {'RSS MiB':>9} {'History MiB':>12} {'RSS - History':>14}")
    for step, rss, hist in samples:
        print(f"{step:8d} {rss:9.2f} {hist:12.3f} {rss - hist:14.2f}")
    baseline = next((s for s in samples if s[0] >= args.baseline_step), samples[0])
    last = samples[-1]
    raw = last[1] - baseline[1]
    adjusted = raw - (last[2] - baseline[2])
    flat = adjusted < args.limit_mb and result["finite"]
    print(
        f"growth from step {baseline[0]} to {last[0]}: {raw * 1024:.0f} KiB raw, {adjusted * 1024:.0f} KiB without the "
        f"History's own growth -> {'FLAT' if flat else 'GROWS'} (limit {args.limit_mb} MiB); parameters finite: "
        f"{result['finite']}"
    )
    if "predict" in result:
        p = result["predict"]
        grown = p["rss_after"] - p["rss_before"]
        predict_flat = grown < args.limit_mb
        print(
            f"predict on 1..{p['sizes']} rows: RSS {p['rss_before']:.1f} -> {p['rss_after']:.1f} MiB "
            f"(+{grown:.1f}), cached workspaces {p['workspaces_before']} -> {p['workspaces_after']} "
            f"-> {'FLAT' if predict_flat else 'GROWS'}"
        )
        flat = flat and predict_flat
    return flat


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--sample-every", type=int, default=5_000)
    parser.add_argument("--baseline-step", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mode", choices=["fit", "fit-loop", "train-step"], default="fit")
    parser.add_argument("--backends", default=None, help="comma-separated (default: all available)")
    parser.add_argument("--limit-mb", type=float, default=1.0)
    parser.add_argument("--predict-sizes", type=int, default=0)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    if args.backends:
        backends = args.backends.split(",")
    else:
        env = dict(os.environ, PYTHONPATH=str(ROOT), FASTOPT_QUIET_FALLBACK="1")
        listing = subprocess.run(
            [sys.executable, "-c", "import fastopt; print(','.join(fastopt.available_backends()))"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        backends = listing.stdout.strip().split(",")
    print(
        f"memory soak: {args.steps} steps ({args.mode}) per backend on {', '.join(backends)}, "
        f"784-32-10 MLP float32, {args.rows} rows, batch {args.batch}, Adam"
    )
    ok = True
    for backend in backends:
        env = dict(os.environ, FASTOPT_QUIET_FALLBACK="1")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        forwarded, skip = [], False
        for arg in sys.argv[1:]:  # everything but --backends (and its value) goes to the child
            if skip:
                skip = False
            elif arg == "--backends":
                skip = True
            elif not arg.startswith("--backends="):
                forwarded.append(arg)
        command = [sys.executable, __file__, "--child", backend, *forwarded]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"\n== {backend}: the child failed (exit {done.returncode})\n{done.stderr[-3000:]}")
            ok = False
            continue
        ok = report(json.loads(done.stdout.strip().splitlines()[-1]), args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
