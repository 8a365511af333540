"""Training steps of the workload matrix (``fastopt bench --workload matrix``), both backends in one group per cell.

    pytest bench/test_bench_matrix.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds

Each timed call is one epoch of 20 steps on random data; ``extra_info["us_per_step"]`` holds the median per step.
PyTorch's side and the floors are in ``fastopt bench --workload matrix``.
"""

from __future__ import annotations

import pytest

from fastopt import optim
from fastopt.bench_workloads import MATRIX_NETWORKS
from fastopt.benchmark import fastopt_loss, fastopt_model, random_data

STEPS = 20


@pytest.mark.parametrize("batch_size", [32, 256], ids=lambda b: f"batch{b}")
@pytest.mark.parametrize("network", MATRIX_NETWORKS, ids=lambda network: network.name.split()[0])
def test_training_steps(benchmark, backend, network, batch_size):  # type: ignore[no-untyped-def]
    X, y = random_data(network, STEPS * batch_size)
    model, optimizer, loss = fastopt_model(network, backend.name), optim.Adam(lr=1e-3), fastopt_loss(network)
    kwargs = {"loss": loss, "optimizer": optimizer, "epochs": 1, "batch_size": batch_size, "seed": 0}
    model.fit(X, y, **kwargs)  # warm-up: workspaces and optimizer state
    benchmark.group = f"training steps {network.name} Adam float32 batch={batch_size}"
    benchmark.pedantic(model.fit, args=(X, y), kwargs=kwargs, rounds=5, iterations=1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["us_per_step"] = benchmark.stats.stats.median / STEPS * 1e6
