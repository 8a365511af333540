"""One training epoch of the 784-128-64-10 MLP with Adam, float32, both backends in one group per batch size.

pytest bench/test_bench_epoch.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
Uses full Fashion-MNIST (60,000 samples) when installed, else random data of the same shape.
"""

from __future__ import annotations

import pytest

from fastopt import losses, optim
from fastopt.benchmark import epoch_data, fastopt_mlp


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    X, y, _ = epoch_data(60000)
    return X, y


@pytest.mark.parametrize("batch_size", [32, 128, 512], ids=lambda b: f"batch{b}")
def test_training_epoch(benchmark, backend, data, batch_size):  # type: ignore[no-untyped-def]
    X, y = data
    model, optimizer, loss = fastopt_mlp(backend.name), optim.Adam(lr=1e-3), losses.CrossEntropy()
    model.fit(X[:batch_size], y[:batch_size], loss=loss, optimizer=optimizer, batch_size=batch_size)  # warm-up
    benchmark.group = f"training epoch 784-128-64-10 Adam float32 batch={batch_size}"
    benchmark.pedantic(
        model.fit,
        args=(X, y),
        kwargs={"loss": loss, "optimizer": optimizer, "epochs": 1, "batch_size": batch_size, "seed": 0},
        rounds=3,
        iterations=1,
    )
