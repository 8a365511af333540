"""Long fuzzing runs: the strategies of ``tests/test_fuzz.py``, repeatedly, with many more examples.

Usage (from the repository root)::

    python scripts/fuzz.py --minutes 10               # all targets, round-robin, one child at a time
    python scripts/fuzz.py --minutes 30 --jobs 2 -k chaos

Every run of a target happens in its own ``pytest`` child process (with ``--hypothesis-seed`` random and
``FASTOPT_FUZZ_EXAMPLES`` set), so a segfault or an abort kills only that child: it is reported with the
signal and the recipe of the example that was running (each example writes it to a trace file before it
starts). The number of examples per child adapts so that a child takes about ``--chunk-seconds`` (at most
the run's time shared equally between the targets, so that every target gets its turn). A child
that makes no progress for ``--hang-seconds`` is killed and reported as a hang.

At the end it prints, per target, the runs, examples, minutes, failures, crashes and hangs, and the
details of anything found (the child's log holds hypothesis's falsifying example and reproduction blob).
The exit status is 1 if anything was found, else 0.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TEST_FILE = "tests/test_fuzz.py"


@dataclass
class Target:
    node: str
    runs: int = 0
    examples: int = 0
    seconds: float = 0.0
    per_child: int = 200
    findings: list[str] = field(default_factory=list)
    crashes: int = 0
    failures: int = 0
    hangs: int = 0


@dataclass
class Child:
    target: Target
    process: subprocess.Popen
    trace: Path
    log: Path
    started: float
    seed: int
    last_progress: float
    last_size: int = -1


def collect(pattern: str | None) -> list[Target]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", TEST_FILE, "--collect-only", "-q", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=child_env(None),
        capture_output=True,
        text=True,
        check=False,
    )
    nodes = [line.strip() for line in result.stdout.splitlines() if line.startswith(TEST_FILE + "::")]
    # the hypothesis tests; the regression tests are plain tests with nothing to fuzz
    nodes = [node for node in nodes if "test_regression_" not in node and "test_known_bug_" not in node]
    if pattern:
        nodes = [node for node in nodes if re.search(pattern, node)]
    if not nodes:
        sys.exit(f"no fuzz targets collected (pytest said: {result.stdout[-2000:]}{result.stderr[-2000:]})")
    return [Target(node) for node in nodes]


def child_env(examples: int | None, trace: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("FASTOPT_QUIET_FALLBACK", "1")
    env["PYTHONFAULTHANDLER"] = "1"  # a Python traceback on a fatal signal
    if examples is not None:
        env["FASTOPT_FUZZ_EXAMPLES"] = str(examples)
    if trace is not None:
        env["FASTOPT_FUZZ_TRACE"] = str(trace)
    return env


def read_trace(path: Path) -> tuple[int, str]:
    """(examples started, the recipe of the last one) from a child's trace file."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0, ""
    match = re.match(r"\S+ example (\d+)\n", text)
    return (int(match.group(1)) if match else 0), text


def start(target: Target, workdir: Path, examples: int) -> Child:
    seed = random.randrange(2**31)
    stem = f"{re.sub(r'[^A-Za-z0-9]+', '_', target.node.split('::')[1])}-{target.runs}"
    trace, log = workdir / f"{stem}.trace", workdir / f"{stem}.log"
    command = [sys.executable, "-m", "pytest", target.node, "-q", "-x", "-p", "no:cacheprovider",
               f"--hypothesis-seed={seed}", "-W", "ignore"]  # fmt: skip
    with open(log, "w") as handle:
        process = subprocess.Popen(
            command, cwd=ROOT, env=child_env(examples, trace), stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    now = time.monotonic()
    return Child(target, process, trace, log, now, seed, now)


def stop(child: Child) -> None:
    """End a child we started (and its process group, which only it belongs to)."""
    try:
        os.killpg(child.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    child.process.wait()


def finish(child: Child, status: str, workdir: Path) -> None:
    target = child.target
    elapsed = time.monotonic() - child.started
    examples, recipe = read_trace(child.trace)
    target.runs += 1
    target.examples += examples
    target.seconds += elapsed
    code = child.process.returncode
    if status == "hang":
        target.hangs += 1
        target.findings.append(f"HANG (no progress) seed={child.seed} log={child.log}\n  last example:\n{recipe}")
    elif status == "deadline":
        pass  # stopped because the time was up: not a finding
    elif code is not None and code < 0:
        target.crashes += 1
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        target.findings.append(f"CRASH ({name}) seed={child.seed} log={child.log}\n  last example:\n{recipe}")
    elif code not in (0, 5):
        target.failures += 1
        log = child.log.read_text(errors="replace")
        found = "\n".join(line for line in log.splitlines() if re.search(r"Falsifying|Error|reproduce_failure", line))
        target.findings.append(f"FAILURE (pytest exit {code}) seed={child.seed} log={child.log}\n{found[-3000:]}")
    if status == "done" and elapsed > 0 and examples:
        # aim the next child of this target at the chunk length
        rate = examples / max(elapsed - 2.0, 0.5)  # ~2 s of pytest start-up per child
        target.per_child = max(20, min(100_000, int(rate * ARGS.chunk_seconds)))


def report(targets: list[Target], minutes: float, workdir: Path) -> int:
    print()
    print(f"fastopt fuzz: {minutes:.1f} minutes, logs in {workdir}")
    print(f"{'target':58} {'runs':>5} {'examples':>9} {'minutes':>8} {'fail':>5} {'crash':>6} {'hang':>5}")
    totals = [0, 0, 0.0, 0, 0, 0]
    for target in targets:
        name = target.node.split("::", 1)[1]
        print(
            f"{name:58} {target.runs:5d} {target.examples:9d} {target.seconds / 60:8.2f} "
            f"{target.failures:5d} {target.crashes:6d} {target.hangs:5d}"
        )
        for index, value in enumerate(
            (target.runs, target.examples, target.seconds / 60, target.failures, target.crashes, target.hangs)
        ):
            totals[index] += value
    print(f"{'TOTAL':58} {totals[0]:5d} {totals[1]:9d} {totals[2]:8.2f} {totals[3]:5d} {totals[4]:6d} {totals[5]:5d}")
    findings = [(target.node, finding) for target in targets for finding in target.findings]
    for node, finding in findings:
        print(f"\n--- {node}\n{finding}")
    if not findings:
        print("\nnothing found")
    return 1 if findings else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="total wall-clock time (default 5)")
    parser.add_argument("--jobs", type=int, default=1, help="children run at the same time (default 1)")
    parser.add_argument("-k", dest="pattern", help="only targets whose pytest id matches this regular expression")
    parser.add_argument("--chunk-seconds", type=float, default=60.0, help="aimed length of one child (default 60)")
    parser.add_argument("--hang-seconds", type=float, default=300.0, help="no new example for this long: a hang")
    parser.add_argument("--workdir", type=Path, help="where logs and traces go (default: a new temporary folder)")
    global ARGS
    ARGS = parser.parse_args()
    workdir = ARGS.workdir or Path(tempfile.mkdtemp(prefix="fastopt-fuzz-"))
    workdir.mkdir(parents=True, exist_ok=True)
    targets = collect(ARGS.pattern)
    # every target gets its share of the time: a round over all targets fits in the run when possible
    ARGS.chunk_seconds = min(ARGS.chunk_seconds, max(10.0, ARGS.minutes * 60 * ARGS.jobs / len(targets)))
    print(f"fuzzing {len(targets)} targets for {ARGS.minutes} minutes with {ARGS.jobs} job(s); logs in {workdir}")
    started = time.monotonic()
    deadline = started + ARGS.minutes * 60
    queue = list(targets)
    running: list[Child] = []
    try:
        while True:
            now = time.monotonic()
            for child in list(running):
                code = child.process.poll()
                if code is not None:
                    running.remove(child)
                    finish(child, "done", workdir)
                    continue
                size = read_trace(child.trace)[0]
                if size != child.last_size:
                    child.last_size, child.last_progress = size, now
                if now >= deadline:
                    stop(child)
                    running.remove(child)
                    finish(child, "deadline", workdir)
                elif now - child.last_progress > ARGS.hang_seconds:
                    stop(child)
                    running.remove(child)
                    finish(child, "hang", workdir)
            if now >= deadline and not running:
                break
            while now < deadline and len(running) < ARGS.jobs:
                target = queue.pop(0)
                queue.append(target)
                remaining = deadline - now
                examples = target.per_child
                if target.examples and target.seconds:
                    rate = target.examples / target.seconds
                    examples = max(10, min(examples, int(rate * remaining)))
                running.append(start(target, workdir, examples))
            time.sleep(0.2)
    except KeyboardInterrupt:
        for child in running:
            stop(child)
            finish(child, "deadline", workdir)
    return report(targets, (time.monotonic() - started) / 60, workdir)


ARGS = argparse.Namespace()

if __name__ == "__main__":
    sys.exit(main())
