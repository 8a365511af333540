"""The matrix and predict workloads of ``fastopt bench`` (see ``fastopt.benchmark`` for the rest).

- ``matrix``: training steps (Adam, float32) of three networks at two batch sizes, each cell fastopt's cython and
  numpy backends against PyTorch's fused Adam, interleaved, with the cell's floor.
- ``predict``: ``Sequential.predict`` of the seed MLP at batch 1, 32 and 1024 against PyTorch under
  ``inference_mode`` and ONNX Runtime running the graph ``Sequential.to_onnx`` wrote.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fastopt.backend import available_backends
from fastopt.bench_floor import SEED_NETWORK, Machine, Network
from fastopt.benchmark import (
    PEER_THREADS,
    Report,
    Row,
    _peer_cases,
    _step_floor_detail,
    _torch_training_cases,
    fastopt_model,
    fastopt_training_cases,
    random_data,
    run_interleaved,
    torch_network,
)

MATRIX_NETWORKS = (
    SEED_NETWORK,
    Network("32-256-256-1 MSE", (32, 256, 256, 1), loss="mse"),
    Network("784-1024-1024-10 softmax", (784, 1024, 1024, 10)),
)
MATRIX_SECONDS = 0.15  # the length of a cell's timed run (fastopt cython), which sets its number of steps
# A fit's first 20-odd steps choose its thread count, half of them on one thread (``StepThreads``): a run of 20 steps
# was mostly that probe (the wide network at batch 32: 7.2 ms a step, against 3.9-4.3 ms in a longer fit).
MIN_MATRIX_STEPS = 100


def _matrix_steps(machine: Machine, network: Network, batch: int) -> int:
    """Steps per timed run: about ``MATRIX_SECONDS`` at 3x the cell's floor, at least ``MIN_MATRIX_STEPS``."""
    return max(MIN_MATRIX_STEPS, int(MATRIX_SECONDS / (3 * machine.training_step_seconds(network, batch))))


def bench_matrix(rounds: int, machine: Machine, batch_sizes: list[int]) -> Iterator[Report]:
    """One report per cell: an epoch of ``steps x batch`` random rows, shuffled, on each implementation."""
    for network in MATRIX_NETWORKS:
        for batch in batch_sizes:
            steps = _matrix_steps(machine, network, batch)
            X, y = random_data(network, steps * batch)
            report = Report(
                workload="matrix",
                description=f"training step, {network.name}, Adam, float32, batch {batch} ({steps} steps per run)",
                modelled_floor_seconds=steps * machine.training_step_seconds(network, batch),
                floor_detail=_step_floor_detail(machine, network, batch),
                unit="us",
                runs_per_case=steps,
                label=f"{network.name}, batch {batch}",
            )
            cases = fastopt_training_cases(network, X, y, batch)
            cases.update(
                _peer_cases([lambda n=network, X=X, y=y, b=batch: _torch_training_cases(n, X, y, b, ("fused",))],
                            report.notes)
            )  # fmt: skip
            report.rows = [Row(name, times) for name, times in run_interleaved(cases, rounds).items()]
            yield report


def _median_ratio(numerators: Row | None, denominators: Row | None) -> str:
    if numerators is None or denominators is None:
        return "-"
    ratios = [a / b for a, b in zip(numerators.seconds, denominators.seconds)]
    return f"{statistics.median(ratios):.2f}x"


def matrix_summary(reports: list[Report]) -> str:
    """The matrix in one table: per cell, each implementation's median per step, fastopt cython's round-by-round
    ratios to PyTorch fused and to the numpy backend, and its multiple of the cell's floor."""
    lines = [
        f"{'cell':<42} {'cython':>10} {'pytorch':>10} {'numpy':>10} {'vs torch':>9} {'vs numpy':>9} {'x floor':>8}"
    ]
    for report in reports:
        rows = {row.name: row for row in report.rows}
        cython, numpy = rows.get("fastopt cython"), rows.get("fastopt numpy")
        torch = next((row for row in report.rows if row.name.startswith("pytorch")), None)
        cells = [f"{report.per_unit(row.median):.1f}us" if row else "-" for row in (cython, torch, numpy)]
        floor = f"{cython.median / report.floor_seconds:.2f}x" if cython else "-"
        lines.append(
            f"{report.label:<42} {cells[0]:>10} {cells[1]:>10} {cells[2]:>10} {_median_ratio(torch, cython):>9} "
            f"{_median_ratio(numpy, cython):>9} {floor:>8}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ predict
PREDICT_SECONDS = 0.02  # the length of a timed run, which sets its number of calls


def _torch_predict_case(X: np.ndarray, weights: list[np.ndarray], calls: int) -> dict[str, Callable[[], object]]:
    import torch

    net = torch_network(SEED_NETWORK)
    with torch.no_grad():
        for linear, W, b in zip(net[::2], weights[::2], weights[1::2]):
            linear.weight.copy_(torch.from_numpy(W.T))
            linear.bias.copy_(torch.from_numpy(b))

    def serve() -> None:
        for _ in range(calls):
            with torch.inference_mode():
                net(torch.from_numpy(X)).numpy()

    return {f"pytorch {torch.__version__} (inference_mode)": serve}


def _onnx_predict_case(X: np.ndarray, model: Any, calls: int) -> dict[str, Callable[[], object]]:
    import onnxruntime

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.onnx")
        model.to_onnx(path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = PEER_THREADS.get("onnxruntime", 0)  # 0: ONNX Runtime's default
        session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def serve() -> None:
        for _ in range(calls):
            session.run(None, {name: X})

    return {f"onnxruntime {onnxruntime.__version__}": serve}


def bench_predict(rounds: int, machine: Machine, batch_sizes: list[int]) -> Iterator[Report]:
    """One report per batch size: ``predict`` on a float32 C-contiguous batch, repeated, per call."""
    for batch in batch_sizes:
        yield _predict_report(batch, rounds, machine)


def _predict_report(batch: int, rounds: int, machine: Machine) -> Report:
    floor = machine.forward_seconds(SEED_NETWORK, batch)
    calls = max(5, int(PREDICT_SECONDS / (5 * floor)))
    X, _ = random_data(SEED_NETWORK, batch)
    report = Report(
        workload="predict",
        description=f"predict, 784-128-64-10 MLP, float32, batch {batch} ({calls} calls per run)",
        modelled_floor_seconds=calls * floor,
        floor_detail=f"floor per call: {len(SEED_NETWORK.sizes) - 1} GEMMs at their shapes' best rates",
        unit="us",
        runs_per_case=calls,
        label=f"predict, batch {batch}",
    )
    cases: dict[str, Callable[[], object]] = {}
    models = {backend: fastopt_model(SEED_NETWORK, backend) for backend in available_backends()}
    for backend, model in models.items():
        cases[f"fastopt {backend}"] = lambda m=model: [m.predict(X) for _ in range(calls)]
    reference = next(iter(models.values()))
    peers = [
        lambda: _torch_predict_case(X, reference.get_weights(), calls),
        lambda: _onnx_predict_case(X, reference, calls),
    ]
    cases.update(_peer_cases(peers, report.notes))
    report.rows = [Row(name, times) for name, times in run_interleaved(cases, rounds).items()]
    return report
