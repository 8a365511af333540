"""``fastopt bench``: the same workload on every available implementation, in one process, interleaved.

Implementations: fastopt's numpy and cython backends, and PyTorch (default, foreach and fused Adam; and the
same PyTorch loop or step with ``fastopt.torch.Adam``) and scikit-learn's ``MLPClassifier`` when they are installed
(never required). Each round runs every implementation once, in turn, so that the machine's noise falls on all
of them alike; the report gives medians, spreads (min-max), ratios, and each median as a multiple of the
workload's physical floor (``fastopt.bench_floor``): its GEMMs at the best time this machine makes each of their
shapes in, plus its memory traffic at the bandwidth of an in-place streaming pass over buffers of its own size, on
the optimizer kernels' thread split; never above a median measured beside it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastopt import _io, callbacks, layers, losses, optim
from fastopt.backend import available_backends, resolve_backend
from fastopt.bench_floor import ADAM_BYTES_PER_ELEMENT, SEED_NETWORK, Machine, Network
from fastopt.history import History
from fastopt.model import Sequential
from fastopt.optim import lr_scheduler

UNIT_SCALES = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns/el": 1e9}


@dataclass
class Row:
    name: str
    seconds: list[float]  # one timed run per round

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


@dataclass
class Report:
    """One workload's measurements. A timed run does ``runs_per_case`` units of work (elements, calls); medians
    print per unit, in ``unit``."""

    workload: str
    description: str
    modelled_floor_seconds: float  # per timed run (see fastopt.bench_floor)
    floor_detail: str = ""
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (a, b): report a's time over b's, round by round
    unit: str = "s"
    runs_per_case: float = 1.0
    label: str = ""  # a short name of the workload's cell, for summaries

    @property
    def floor_seconds(self) -> float:
        """The floor printed: the modelled floor, or the fastest median measured when that is lower (the model then
        underestimated the machine; a floor is never above a time measured on it)."""
        return min([self.modelled_floor_seconds, *(row.median for row in self.rows)])

    def per_unit(self, seconds: float) -> float:
        """Seconds of one timed run as the report prints them: per unit of work, in ``unit``."""
        return seconds * UNIT_SCALES[self.unit] / self.runs_per_case


def _timed(function: Callable[[], object]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


# Pause before each timed run. Thread pools keep spinning after their work (OpenBLAS's workers about 0.1 s,
# libgomp's a few ms, ONNX Runtime's and PyTorch's too): without a pause each implementation would start its run
# with the previous one's threads still taking a core (fastopt's batch-1024 predict took 4.8 ms instead of 1.2
# beside PyTorch's and ONNX Runtime's pools on a 2-core AMD EPYC Zen 4 VM).
SETTLE_SECONDS = 0.25


WARM_SECONDS = 0.02


def _warm(case: Callable[[], object]) -> None:
    """Run ``case`` untimed for WARM_SECONDS (at least once)."""
    until = time.perf_counter() + WARM_SECONDS
    case()
    while time.perf_counter() < until:
        case()


def run_interleaved(
    cases: dict[str, Callable[[], object]], rounds: int, settle_seconds: float = SETTLE_SECONDS, rewarm: bool = True
) -> dict[str, list[float]]:
    """One warm-up call each, then ``rounds`` rounds in which every case runs once, in turn, each after a pause of
    ``settle_seconds`` and, with ``rewarm``, WARM_SECONDS of untimed calls: the pause lets the other cases' threads go
    to sleep, the untimed calls wake this case's threads and bring its data back to the caches, as in a loop that
    calls only this case (the short workloads; a whole epoch is long enough to pay for its own start). One untimed
    call was not enough on a 2-core AMD EPYC Zen 4 VM: the timed 1e5-element Adam step after it often took 4 ms
    instead of 24 us, for fastopt's pool and for PyTorch's."""
    for case in cases.values():
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, case in cases.items():
            time.sleep(settle_seconds)
            if rewarm:
                _warm(case)
            times[name].append(_timed(case))
    return times


def _step_floor_detail(machine: Machine, network: Network, batch: int) -> str:
    products = network.training_products(batch)
    gemm = sum(machine.gemm_seconds(product) for product in products)
    rates = [product.flops / machine.gemm_seconds(product) / 1e9 for product in products]
    bandwidth = machine.bandwidth(network.n_params)
    return (
        f"floor per step: {len(products)} GEMMs {gemm * 1e6:.1f} us (their shapes' best rates, "
        f"{min(rates):.0f}-{max(rates):.0f} GFLOP/s) + Adam over {network.n_params} parameters "
        f"{ADAM_BYTES_PER_ELEMENT * network.n_params / bandwidth * 1e6:.1f} us ({bandwidth / 1e9:.1f} GB/s in place)"
    )


def fastopt_model(network: Network, backend: str, dtype: str = "float32", dropout: float = 0.0) -> Sequential:
    """The network as a fastopt ``Sequential``: Dense layers with ReLU between them, and with ``dropout`` > 0 a
    ``Dropout(dropout)`` after each hidden ReLU."""
    stack: list[layers.Layer] = []
    for n_in, n_out in itertools.pairwise(network.sizes):
        stack += [layers.Dense(n_in, n_out), layers.ReLU(), *([layers.Dropout(dropout)] if dropout else [])]
    return Sequential(stack[: -2 if dropout else -1], dtype=dtype, seed=0, backend=backend)


def fastopt_mlp(backend: str, dtype: str = "float32", dropout: float = 0.0) -> Sequential:
    """The seed workload's 784-128-64-10 ReLU MLP (with ``dropout``, as ``fastopt_model``)."""
    return fastopt_model(SEED_NETWORK, backend, dtype, dropout)


# The "full" epoch (issue 13): what a Keras or PyTorch user adds to the plain epoch. Each call of the benchmark is
# one epoch; the schedule and early stopping carry their state from call to call, as from epoch to epoch.
FULL_DROPOUT = 0.2  # after each hidden layer
FULL_CLIP_NORM = 1.0  # the gradients' global L2 norm
FULL_T_MAX = 10  # epochs of the cosine schedule
FULL_VALIDATION_SPLIT = 0.1  # held out; the validation loss is computed after every epoch
FULL_PATIENCE = 3  # early stopping on the validation loss, restoring the best weights
FULL_DESCRIPTION = (
    f"full: Dropout({FULL_DROPOUT}) after each hidden layer, clip_norm {FULL_CLIP_NORM}, cosine schedule "
    f"(T_max {FULL_T_MAX}), early stopping (patience {FULL_PATIENCE}, best weights kept) on a "
    f"{FULL_VALIDATION_SPLIT:.0%} validation split"
)


class FullEpoch:
    """fastopt's "full" epoch: each call is ``fit(epochs=1)`` with every option of the full variant on, the model,
    optimizer, schedule and early stopping kept from call to call."""

    def __init__(self, backend: str, X: np.ndarray, y: np.ndarray, batch_size: int) -> None:
        self.model, self.optimizer = fastopt_mlp(backend, dropout=FULL_DROPOUT), optim.Adam(lr=1e-3)
        self.callbacks = [
            callbacks.EarlyStopping(monitor="val_loss", patience=FULL_PATIENCE, restore_best_weights=True),
            lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=FULL_T_MAX),
        ]
        self.X, self.y, self.batch_size = X, y, batch_size

    def __call__(self) -> History:
        return self.model.fit(
            self.X, self.y, loss=losses.CrossEntropy(), optimizer=self.optimizer, epochs=1,
            batch_size=self.batch_size, seed=0, validation_split=FULL_VALIDATION_SPLIT, callbacks=self.callbacks,
            clip_norm=FULL_CLIP_NORM,
        )  # fmt: skip


def fastopt_loss(network: Network) -> losses.Loss:
    return losses.CrossEntropy() if network.loss == "cross_entropy" else losses.MSE()


def epoch_data(n_samples: int) -> tuple[np.ndarray, np.ndarray, str]:
    try:
        from fastopt.datasets import load_fashion_mnist

        X, y, _, _ = load_fashion_mnist()
        return X[:n_samples], y[:n_samples], "Fashion-MNIST"
    except (FileNotFoundError, ValueError):
        rng = np.random.default_rng(0)
        X = rng.random((n_samples, 784), dtype=np.float32)
        return X, rng.integers(0, 10, n_samples), "random data (Fashion-MNIST not installed)"


def random_data(network: Network, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Random float32 inputs, and class labels (cross-entropy) or float32 targets (MSE) of the network's width."""
    rng = np.random.default_rng(0)
    X = rng.random((n_samples, network.sizes[0]), dtype=np.float32)
    if network.loss == "cross_entropy":
        return X, rng.integers(0, network.sizes[-1], n_samples)
    return X, rng.standard_normal((n_samples, network.sizes[-1])).astype(np.float32)


def torch_network(network: Network) -> Any:
    """The network as a ``torch.nn.Sequential`` of Linear layers with ReLU between them."""
    import torch

    modules: list[Any] = []
    for n_in, n_out in itertools.pairwise(network.sizes):
        modules += [torch.nn.Linear(n_in, n_out), torch.nn.ReLU()]
    return torch.nn.Sequential(*modules[:-1])


def _torch_training_cases(
    network: Network, X: np.ndarray, y: np.ndarray, batch_size: int, variants: tuple[str, ...]
) -> dict[str, Callable[[], object]]:
    """One epoch over (X, y) in PyTorch, shuffled, with each Adam variant (see ``_torch_adam``)."""
    import torch

    torch.manual_seed(0)
    inputs = torch.from_numpy(X)
    labels = torch.from_numpy(y.astype(np.int64) if network.loss == "cross_entropy" else y)
    criterion = torch.nn.CrossEntropyLoss() if network.loss == "cross_entropy" else torch.nn.MSELoss()
    cases: dict[str, Callable[[], object]] = {}
    for variant in variants:
        net = torch_network(network)
        optimizer = _torch_adam(variant, net.parameters())

        def epoch(net: Any = net, optimizer: Any = optimizer) -> None:
            order = torch.randperm(len(inputs))
            for start in range(0, len(inputs), batch_size):
                rows = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                criterion(net(inputs[rows]), labels[rows]).backward()
                optimizer.step()

        cases[_torch_adam_label(variant)] = epoch
    return cases


FASTOPT_TORCH = "fastopt.torch"  # the PyTorch loop with fastopt.torch.Adam: fastopt's kernel on PyTorch's tensors


def _torch_adam_label(variant: str) -> str:
    import torch

    if variant == FASTOPT_TORCH:
        return f"pytorch {torch.__version__} + {FASTOPT_TORCH} Adam"
    return f"pytorch {torch.__version__} ({variant} Adam)"


def _torch_adam(variant: str, params: Any) -> Any:
    """PyTorch's Adam in one of its implementations ("default": the for-loop one, "foreach", "fused"), or
    fastopt.torch.Adam (``FASTOPT_TORCH``)."""
    import torch

    if variant == FASTOPT_TORCH:
        import fastopt.torch

        return fastopt.torch.Adam(params, lr=1e-3)
    options = {"foreach": False} if variant == "default" else {variant: True}
    return torch.optim.Adam(params, lr=1e-3, **options)


def _torch_full_epoch_case(X: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, Callable[[], object]]:
    """PyTorch doing the full epoch: nn.Dropout, clip_grad_norm_, CosineAnnealingLR and fused Adam, the validation
    loss after the epoch (eval mode, no_grad) and early stopping keeping a copy of the best weights. The split is
    made once, as a PyTorch loop makes it before its epochs."""
    import copy

    import torch

    torch.manual_seed(0)
    held = np.random.default_rng(0).permutation(len(X))[: round(FULL_VALIDATION_SPLIT * len(X))]
    kept = np.setdiff1d(np.arange(len(X)), held)
    inputs, labels = torch.from_numpy(X[kept]), torch.from_numpy(y[kept].astype(np.int64))
    val_inputs, val_labels = torch.from_numpy(X[held]), torch.from_numpy(y[held].astype(np.int64))
    net = torch.nn.Sequential(
        torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Dropout(FULL_DROPOUT),
        torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Dropout(FULL_DROPOUT),
        torch.nn.Linear(64, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3, fused=True)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=FULL_T_MAX)
    criterion = torch.nn.CrossEntropyLoss()
    early: dict[str, Any] = {"best": math.inf, "wait": 0, "weights": None}

    def epoch() -> None:
        net.train()
        order = torch.randperm(len(inputs))
        for start in range(0, len(inputs), batch_size):
            rows = order[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            criterion(net(inputs[rows]), labels[rows]).backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), FULL_CLIP_NORM)
            optimizer.step()
        schedule.step()
        net.eval()
        with torch.no_grad():
            val_loss = criterion(net(val_inputs), val_labels).item()
        if val_loss < early["best"]:
            early.update(best=val_loss, wait=0, weights=copy.deepcopy(net.state_dict()))
        else:
            early["wait"] += 1

    return {f"pytorch {torch.__version__} full (fused Adam)": epoch}


def _torch_dense_cases(X: np.ndarray, y: np.ndarray) -> dict[str, Callable[[], object]]:
    import torch

    torch.manual_seed(0)
    inputs, labels = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    net = torch_network(SEED_NETWORK)
    criterion = torch.nn.CrossEntropyLoss()

    def passes() -> None:
        for _ in range(100):
            net.zero_grad(set_to_none=False)
            criterion(net(inputs), labels).backward()

    return {f"pytorch {torch.__version__}": passes}


def _torch_optim_cases(n: int) -> dict[str, Callable[[], object]]:
    import torch

    cases: dict[str, Callable[[], object]] = {}
    for variant in ("default", "foreach", "fused", FASTOPT_TORCH):
        param = torch.nn.Parameter(torch.zeros(n))
        param.grad = torch.full((n,), 1e-3)
        cases[_torch_adam_label(variant)] = _torch_adam(variant, [param]).step
    return cases


def _sklearn_epoch_case(X: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, Callable[[], object]]:
    import warnings

    import sklearn
    from sklearn.neural_network import MLPClassifier

    model = MLPClassifier(
        hidden_layer_sizes=SEED_NETWORK.sizes[1:-1], solver="adam", learning_rate_init=1e-3, batch_size=batch_size
    )
    classes = np.arange(10)

    def epoch() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.partial_fit(X, y, classes=classes)

    return {f"scikit-learn {sklearn.__version__} MLPClassifier (adam)": epoch}


def _peer_cases(builders: list[Callable[[], dict[str, Callable[[], object]]]], notes: list[str]) -> dict[str, Callable]:
    cases: dict[str, Callable[[], object]] = {}
    for build in builders:
        try:
            cases.update(build())
        except ImportError as exc:
            notes.append(f"peer skipped: {exc}")
    return cases


def fastopt_training_cases(
    network: Network, X: np.ndarray, y: np.ndarray, batch_size: int
) -> dict[str, Callable[[], object]]:
    """One epoch over (X, y) with Adam on each fastopt backend."""
    cases: dict[str, Callable[[], object]] = {}
    for backend in available_backends():
        model, optimizer, loss = fastopt_model(network, backend), optim.Adam(lr=1e-3), fastopt_loss(network)
        cases[f"fastopt {backend}"] = lambda m=model, o=optimizer, lo=loss: m.fit(
            X, y, loss=lo, optimizer=o, epochs=1, batch_size=batch_size, seed=0
        )
    return cases


def bench_epoch(batch_size: int, rounds: int, n_samples: int, machine: Machine, variant: str = "plain") -> Report:
    """One training epoch on every implementation; ``variant`` "full" times each fastopt backend's plain and full
    epochs and PyTorch's (fused Adam) plain and full epochs side by side instead."""
    X, y, source = epoch_data(n_samples)
    report = Report(
        workload="epoch",
        description=f"one epoch, 784-128-64-10 MLP, Adam, float32, batch {batch_size}, {len(X)} samples of {source}"
        + (f"; {FULL_DESCRIPTION}" if variant == "full" else ""),
        modelled_floor_seconds=machine.epoch_seconds(SEED_NETWORK, len(X), batch_size),
        floor_detail=_step_floor_detail(machine, SEED_NETWORK, batch_size),
    )
    cases = fastopt_training_cases(SEED_NETWORK, X, y, batch_size)
    if variant == "full":
        for backend in available_backends():
            cases[f"fastopt {backend} full"] = FullEpoch(backend, X, y, batch_size)
            report.pairs.append((f"fastopt {backend} full", f"fastopt {backend}"))
        cases.update(_peer_cases([lambda: _torch_full_variant_cases(X, y, batch_size)], report.notes))
        torch_full = [name for name in cases if name.startswith("pytorch") and " full " in name]
        report.pairs += [(name, f"fastopt {backend} full") for name in torch_full for backend in available_backends()]
        report.pairs += [(name, name.replace(" full ", " ")) for name in torch_full]
    else:
        variants = ("default", "foreach", "fused", FASTOPT_TORCH)
        peers = [
            lambda: _torch_training_cases(SEED_NETWORK, X, y, batch_size, variants),
            lambda: _sklearn_epoch_case(X, y, batch_size),
        ]
        cases.update(_peer_cases(peers, report.notes))
    report.rows = [Row(name, times) for name, times in run_interleaved(cases, rounds, rewarm=False).items()]
    return report


def _torch_full_variant_cases(X: np.ndarray, y: np.ndarray, batch_size: int) -> dict[str, Callable[[], object]]:
    """PyTorch's plain epoch with its fused Adam (its fastest), and its full epoch."""
    plain = _torch_training_cases(SEED_NETWORK, X, y, batch_size, ("fused",))
    return {**plain, **_torch_full_epoch_case(X, y, batch_size)}


def bench_optim(n: int, rounds: int, machine: Machine) -> Report:
    bandwidth = machine.bandwidth(n)
    report = Report(
        workload="optim",
        description=f"one Adam step over n = {n:.0e} float32 elements",
        modelled_floor_seconds=ADAM_BYTES_PER_ELEMENT * n / bandwidth,
        floor_detail=f"floor: 28 bytes per element at {bandwidth / 1e9:.1f} GB/s (in place, {n} elements)",
        unit="ns/el",
        runs_per_case=n,
    )
    cases: dict[str, Callable[[], object]] = {}
    grad = np.full(n, 1e-3, dtype=np.float32)
    for backend in available_backends():
        optimizer = optim.Adam(lr=1e-3)
        optimizer.bind([np.zeros(n, dtype=np.float32)], resolve_backend(backend))
        cases[f"fastopt {backend}"] = lambda o=optimizer: o.apply([grad])
    cases.update(_peer_cases([lambda: _torch_optim_cases(n)], report.notes))
    report.rows = [Row(name, times) for name, times in run_interleaved(cases, rounds).items()]
    return report


def bench_dense(batch_size: int, rounds: int, machine: Machine) -> Report:
    gemms = sum(machine.gemm_seconds(product) for product in SEED_NETWORK.training_products(batch_size))
    report = Report(
        workload="dense",
        description=f"forward + backward of the 784-128-64-10 MLP (no optimizer), float32, batch {batch_size}, x100",
        modelled_floor_seconds=100 * gemms,
        floor_detail=f"floor: 100 x {gemms * 1e6:.1f} us of GEMMs at their shapes' best rates",
    )
    X, y = random_data(SEED_NETWORK, batch_size)
    cases: dict[str, Callable[[], object]] = {}
    for backend_name in available_backends():
        model, loss = fastopt_mlp(backend_name), losses.CrossEntropy()

        def passes(m: Sequential = model, lo: losses.Loss = loss) -> None:
            for _ in range(100):
                m.compute_gradients(X, y, lo)

        cases[f"fastopt {backend_name}"] = passes
    cases.update(_peer_cases([lambda: _torch_dense_cases(X, y)], report.notes))
    report.rows = [Row(name, times) for name, times in run_interleaved(cases, rounds).items()]
    return report


def format_report(report: Report) -> str:
    """The report as a table: each implementation's median per unit, spread, ratios and multiple of the floor."""
    baseline_row = next((row for row in report.rows if row.name == "fastopt numpy"), None)
    peers = [row for row in report.rows if "fastopt" not in row.name]  # not PyTorch with fastopt.torch either
    fastest_peer_row = min(peers, key=lambda row: row.median, default=None)
    unit, floor = report.unit, report.floor_seconds
    lines = [
        report.description,
        f"{report.floor_detail}; floor {report.per_unit(floor):.4g} {unit}",
        f"{'implementation':<46} {'median':>11} {'min-max':>21} {'vs numpy':>9} {'vs best peer':>12} {'x floor':>8}",
    ]
    for row in report.rows:
        versus_numpy = f"{baseline_row.median / row.median:.2f}x" if baseline_row else "-"
        versus_peer = f"{fastest_peer_row.median / row.median:.2f}x" if fastest_peer_row else "-"
        spread = f"{report.per_unit(min(row.seconds)):.4g}-{report.per_unit(max(row.seconds)):.4g}"
        lines.append(
            f"{row.name:<46} {report.per_unit(row.median):>8.4g} {unit:<2} {spread:>21} {versus_numpy:>9} "
            f"{versus_peer:>12} {row.median / floor:>7.2f}x"
        )
    if floor < report.modelled_floor_seconds:
        lines.append(
            f"note: the modelled floor ({report.per_unit(report.modelled_floor_seconds):.4g} {unit}) was above a "
            "median measured beside it, so the floor printed is that median: the machine ran faster than its probes"
        )
    lines += _paired_lines(report.rows, [baseline_row, fastest_peer_row])
    lines += _time_ratio_lines(report)
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _paired_lines(rows: list[Row], others: list[Row | None]) -> list[str]:
    """Each fastopt backend but the numpy one against each of ``others``, and the PyTorch loop with
    fastopt.torch's Adam against the same loop with PyTorch's fused Adam, round by round: the ratio of two runs
    made one after the other in the same round. This machine's speed drifts over minutes (a shared host), which
    moves a median of the separate times more than a ratio taken within a round."""
    fused = next((row for row in rows if row.name.endswith("(fused Adam)")), None)
    pairs = [(row, other) for row in rows if row.name.startswith("fastopt") and row.name != "fastopt numpy"
             for other in others]  # fmt: skip
    pairs += [(row, fused) for row in rows if row.name.endswith(f"+ {FASTOPT_TORCH} Adam")]
    lines = []
    for row, other in pairs:
        if other is not None and len(other.seconds) == len(row.seconds):
            ratios = [theirs / ours for theirs, ours in zip(other.seconds, row.seconds)]
            lines.append(
                f"round by round, {row.name} vs {other.name}: median {statistics.median(ratios):.2f}x "
                f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)"
            )
    return lines


def _time_ratio_lines(report: Report) -> list[str]:
    """For each pair (a, b) of ``report.pairs``: a's time over b's, round by round (see ``_paired_lines``)."""
    rows = {row.name: row for row in report.rows}
    lines = []
    for name, other in report.pairs:
        if name in rows and other in rows:
            ratios = [a / b for a, b in zip(rows[name].seconds, rows[other].seconds)]
            lines.append(
                f"round by round, {name} takes {statistics.median(ratios):.2f}x the time of {other} "
                f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)"
            )
    return lines


WORKLOADS = ("epoch", "optim", "dense", "matrix", "predict")
PEER_THREADS: dict[str, int] = {}  # "onnxruntime": its sessions' intra-op threads, when limited


def limit_threads(threads: int) -> None:
    """Give fastopt (its kernels and BLAS), PyTorch and ONNX Runtime sessions made after this call ``threads``
    threads each: a comparison at one thread shows the kernels without the thread pools' scheduling, which
    dominates on a machine whose cores other processes keep busy."""
    import fastopt

    fastopt.set_num_threads(threads)
    PEER_THREADS["onnxruntime"] = threads
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(threads)


def _reports(
    workload: str, batch_size: int | None, rounds: int, n_samples: int | None, machine: Machine, variant: str
) -> Iterator[Report]:
    from fastopt import bench_workloads

    if workload == "epoch":
        yield bench_epoch(batch_size or 32, rounds, n_samples or 60000, machine, variant)
    elif workload == "optim":
        yield from (bench_optim(n, rounds, machine) for n in (10**5, 10**7))
    elif workload == "dense":
        yield from (bench_dense(size, rounds, machine) for size in ([batch_size] if batch_size else [32, 128, 512]))
    elif workload == "matrix":
        yield from bench_workloads.bench_matrix(rounds, machine, [batch_size] if batch_size else [32, 256])
    else:
        yield from bench_workloads.bench_predict(rounds, machine, [batch_size] if batch_size else [1, 32, 1024])


def run(
    workload: str,
    batch_size: int | None,
    rounds: int,
    json_path: str | None,
    n_samples: int | None = None,
    threads: int | None = None,
    variant: str = "plain",
) -> list[Report]:
    """Run a workload (one of ``WORKLOADS``), print each report as it completes, and return them (and write them
    with the machine's measured rates to ``json_path`` as JSON). ``threads`` limits every implementation (and the
    probes) to that many threads (``limit_threads``); None leaves each its default. ``n_samples`` is the epoch
    workload's (None: 60,000), ``variant`` too: "full" adds the full epoch to it (``bench_epoch``)."""
    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {WORKLOADS}, got {workload!r}")
    if json_path:
        _check_json_path(Path(json_path))
    from fastopt import bench_workloads

    if threads is not None:
        limit_threads(threads)
    machine = Machine()
    reports: list[Report] = []
    for report in _reports(workload, batch_size, rounds, n_samples, machine, variant):
        print(format_report(report), end="\n\n", flush=True)
        reports.append(report)
    if workload == "matrix":
        print(bench_workloads.matrix_summary(reports), flush=True)
    if json_path:
        records = [{**asdict(report), "floor_seconds": report.floor_seconds} for report in reports]
        _io.write_text_atomic(json_path, json.dumps({"machine": machine.summary(), "reports": records}, indent=2))
    return reports


def _check_json_path(path: Path) -> None:
    """Before any measurement: ``--json``'s folder exists, and the path is new or an earlier report of this command
    (a JSON object with "machine" and "reports"), which it replaces atomically; any other file is refused (it was
    replaced, and a bad path was reported only after the whole benchmark ran)."""
    if not path.resolve().parent.is_dir():
        raise ValueError(f"the folder of {path} does not exist")
    if not os.path.lexists(path):
        return
    if not path.is_file():
        raise _io.OverwriteRefusedError(f"{path} exists and is not a file; fastopt never replaces it")
    try:
        earlier = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        earlier = None
    if not (isinstance(earlier, dict) and {"machine", "reports"} <= set(earlier)):
        raise _io.OverwriteRefusedError(f"{path} exists and is not a report of fastopt bench; refusing to replace it")
