"""``fastopt bench --workload sklearn``: scikit-learn's ``MLPClassifier``/``MLPRegressor`` against fastopt's drop-in
estimators (``fastopt.sklearn``), with identical parameters, in one process, interleaved, over several seeds.

For each case and seed: the data are split (a quarter held out for testing, by the seed) and standardized, then
both estimators are fitted with ``random_state=seed``, one after the other (which goes first alternates with the
seed, so that neither always runs on a machine its peer has just warmed or left busy). Each runs twice: with its
threads as they are, and with one thread (BLAS's and fastopt's kernels'): on a 2-core machine that other processes
keep busy, two threads wait on each other (scikit-learn's OpenBLAS threads took digits from 0.56 s to 19 s, and
fastopt's threads doubled its times too). The report gives, for each:
the mean test score (accuracy, subset accuracy for multilabel targets, R^2 for regression) and its standard
deviation over the seeds, whether the two means are within two standard deviations (of either), the median fit
time with the range of the fits' times, and the median of the seed-by-seed time ratios (scikit-learn's time over
fastopt's); then the machine's state measured before the case and after it (``fastopt.bench_floor.machine_state``),
which tells a VM whose host slows a core.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastopt.bench_floor import STATE_PRODUCT, machine_state

ADAM_FASHION = {"hidden_layer_sizes": (128, 64), "batch_size": 32, "solver": "adam", "max_iter": 10}


@dataclass(frozen=True)
class Case:
    """One line of the report: a dataset, the estimator kind and its parameters (beyond ``random_state``)."""

    name: str
    dataset: str
    regression: bool
    parameters: dict[str, Any]


CASES = (
    Case("digits, adam", "digits", False, {}),
    Case("digits, sgd", "digits", False, {"solver": "sgd", "learning_rate_init": 0.01}),
    Case("digits, lbfgs", "digits", False, {"solver": "lbfgs"}),
    Case("breast_cancer, adam", "breast_cancer", False, {}),
    Case("multilabel 20k, adam", "multilabel", False, {"max_iter": 20}),
    Case("friedman1 10k, adam", "friedman1", True, {"max_iter": 50}),
    Case("fashion-mnist mini, adam b32", "fashion", False, ADAM_FASHION),
)


@dataclass
class Measurement:
    scores: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)  # wall time of each fit
    cpu_seconds: list[float] = field(default_factory=list)  # the process's CPU time (all its threads) of each fit
    # for fastopt's fits: the threads each fit's probe chose (StepThreads), None for a fit that chose none
    threads: list[int | None] = field(default_factory=list)


def load_dataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The dataset's rows and targets: scikit-learn's ``load_digits`` and ``load_breast_cancer``, a 20,000-sample
    ``make_multilabel_classification`` task (20 features, 5 labels), ``make_friedman1`` with 10,000 samples, or
    the Fashion-MNIST subset shipped in fastopt (its 6,000 images, split again by the seed)."""
    from sklearn import datasets

    if name == "digits":
        return datasets.load_digits(return_X_y=True)
    if name == "breast_cancer":
        return datasets.load_breast_cancer(return_X_y=True)
    if name == "multilabel":
        return datasets.make_multilabel_classification(20000, 20, n_classes=5, random_state=0)
    if name == "friedman1":
        return datasets.make_friedman1(10000, random_state=0)
    from fastopt.datasets import mini

    X, y, X_test, y_test = mini()
    return np.concatenate([X, X_test]), np.concatenate([y, y_test])


@contextmanager
def _threads(one: bool) -> Iterator[None]:
    """With ``one``: one thread for BLAS and for fastopt's kernels during the block (then as many as CPUs again)."""
    if not one:
        yield
        return
    from threadpoolctl import threadpool_limits

    from fastopt.backend import available_backends, resolve_backend

    with threadpool_limits(1, "blas"):
        for name in available_backends():
            resolve_backend(name).set_num_threads(1)
        try:
            yield
        finally:
            for name in available_backends():
                resolve_backend(name).set_num_threads(os.cpu_count() or 1)


def _training_threads() -> dict[str, Any] | None:
    """The compiled backend's last thread choice of a fit (``build_info()["training_threads"]``), None without it."""
    from fastopt.backend import available_backends, resolve_backend

    return resolve_backend("cython").build_info()["training_threads"] if "cython" in available_backends() else None


def _fit_and_score(
    estimator: Any, data: tuple[np.ndarray, ...], one_thread: bool
) -> tuple[float, float, float, int | None]:
    """The fit's wall time and CPU time, the test score, and the threads the fit's probe chose (None: no choice was
    made, as in a scikit-learn fit, a fit on one thread, or one too short for the probe)."""
    X_train, X_test, y_train, y_test = data
    before = _training_threads()
    with warnings.catch_warnings(), _threads(one_thread):
        warnings.simplefilter("ignore")  # ConvergenceWarning: the cases cap max_iter on purpose
        started, cpu_started = time.perf_counter(), time.process_time()
        estimator.fit(X_train, y_train)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    after = _training_threads()
    chosen = None if after is None or after == before else int(after["threads"])
    return seconds, cpu_seconds, float(estimator.score(X_test, y_test)), chosen


def _split(X: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=seed)
    scaler = StandardScaler().fit(X_train)
    return scaler.transform(X_train), scaler.transform(X_test), y_train, y_test


def measure_case(case: Case, seeds: int, settle_seconds: float = 0.25) -> dict[str, Measurement]:
    """Both estimators on every seed, alternating which goes first; a pause before each fit lets the thread
    pools of the previous one fall asleep."""
    import sklearn.neural_network as reference

    from fastopt import sklearn as fastopt_sklearn

    kind = "MLPRegressor" if case.regression else "MLPClassifier"
    theirs: Callable[[int], Any] = lambda seed: getattr(reference, kind)(random_state=seed, **case.parameters)  # noqa: E731
    ours: Callable[[int], Any] = lambda seed: getattr(fastopt_sklearn, kind)(random_state=seed, **case.parameters)  # noqa: E731
    makers = {"scikit-learn": (theirs, False), "scikit-learn 1 thread": (theirs, True), "fastopt": (ours, False),
              "fastopt 1 thread": (ours, True)}  # fmt: skip
    X, y = load_dataset(case.dataset)
    results = {name: Measurement() for name in makers}
    for seed in range(seeds):
        data = _split(X, y, seed)
        for name in list(makers)[:: 1 if seed % 2 == 0 else -1]:
            time.sleep(settle_seconds)
            make, one_thread = makers[name]
            seconds, cpu_seconds, score, threads = _fit_and_score(make(seed), data, one_thread)
            results[name].seconds.append(seconds)
            results[name].cpu_seconds.append(cpu_seconds)
            results[name].scores.append(score)
            results[name].threads.append(threads)
    return results


def _ratio_text(label: str, theirs: Measurement, ours: Measurement) -> str:
    """scikit-learn's over fastopt's time, seed by seed (median and range), in wall and in CPU time."""
    parts = []
    for kind, mine, other in (("wall", ours.seconds, theirs.seconds), ("CPU", ours.cpu_seconds, theirs.cpu_seconds)):
        ratios = [a / b for a, b in zip(other, mine)]
        parts.append(f"{kind} {statistics.median(ratios):.2f}x (seeds {min(ratios):.2f}-{max(ratios):.2f}x)")
    return f"\n  {label}: " + ", ".join(parts)


def _choices_text(threads: list[int | None]) -> str:
    """What fastopt's fits with their default threads ran on, as chosen by each fit's probe (``StepThreads``): a
    fit that chose one thread runs about 1.4x slower on a 2-core machine, which a run's ratio then shows."""
    counts = Counter(threads)
    parts = [f"{counts[n]} on {n} thread{'s' if n > 1 else ''}" for n in sorted(n for n in counts if n is not None)]
    if counts[None]:
        parts.append(f"{counts[None]} without a choice (no probe)")
    return f"\n  fastopt's fits, by their thread probe: {', '.join(parts)}"


def format_case(case: Case, results: dict[str, Measurement]) -> str:
    """The scores (each with its default threads), each setting's median fit time, wall and CPU (the process's, all
    threads: a machine that other processes keep busy disturbs it less), and the ratios: default against default,
    one thread against one thread, and each one's faster setting (by median wall time) against the other's."""
    mean = {name: statistics.fmean(m.scores) for name, m in results.items()}
    spread = {name: statistics.stdev(m.scores) if len(m.scores) > 1 else 0.0 for name, m in results.items()}
    within = abs(mean["fastopt"] - mean["scikit-learn"]) <= 2 * max(spread["fastopt"], spread["scikit-learn"])
    metric = "R2" if case.regression else "accuracy"
    line = (
        f"{case.name}: {metric} scikit-learn {mean['scikit-learn']:.4f} ± {spread['scikit-learn']:.4f}, "
        f"fastopt {mean['fastopt']:.4f} ± {spread['fastopt']:.4f} ({'within' if within else 'OUTSIDE'} 2 sd)"
    )
    for name, measurement in results.items():
        line += f"\n  {name}: {statistics.median(measurement.seconds):.3f} s "
        line += f"(CPU {statistics.median(measurement.cpu_seconds):.3f} s; "
        line += f"fits {min(measurement.seconds):.3f}-{max(measurement.seconds):.3f} s)"
    line += _choices_text(results["fastopt"].threads)
    line += _ratio_text("default threads", results["scikit-learn"], results["fastopt"])
    line += _ratio_text("one thread", results["scikit-learn 1 thread"], results["fastopt 1 thread"])
    best = {
        side: min(
            (name for name in results if name.startswith(side)), key=lambda n: statistics.median(results[n].seconds)
        )
        for side in ("scikit-learn", "fastopt")
    }
    return line + _ratio_text(f"{best['scikit-learn']} vs {best['fastopt']}", results[best["scikit-learn"]],
                              results[best["fastopt"]])  # fmt: skip


def _state_text(before: tuple[float, float] | None, after: tuple[float, float] | None = None) -> str:
    """The machine's state before a case and after it (``fastopt.bench_floor.machine_state``), as a report line: a
    case disturbed while it ran (another process, the host) shows in the second pair or in the fits' ranges."""
    if before is None:
        return ""
    (rate, speedup), (m, k, n) = before, STATE_PRODUCT[:3]
    text = (f"\n  machine before the case: a float32 {m} x {k} x {n} GEMM at {rate:.0f} GFLOP/s on one thread, "
            f"{speedup:.2f}x that on {os.cpu_count()} threads")  # fmt: skip
    if after is not None:
        text += f"; after it {after[0]:.0f} GFLOP/s, {after[1]:.2f}x"
    return text


def run(seeds: int = 5, names: list[str] | None = None) -> list[tuple[Case, dict[str, Measurement]]]:
    """Measure and print every case (or those named); returns the measurements."""
    try:
        import sklearn
    except ImportError:
        print("scikit-learn is not installed: pip install 'fastopt[sklearn]' to run this workload")
        return []
    print(
        f"scikit-learn {sklearn.__version__} (float64) vs fastopt.sklearn (float32), {seeds} seeds, interleaved; "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start",
        flush=True,
    )
    measured = []
    for case in CASES:
        if names and case.name not in names:
            continue
        before = machine_state()
        results = measure_case(case, seeds)
        print(format_case(case, results) + _state_text(before, machine_state()), flush=True)
        measured.append((case, results))
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return measured
