"""One training epoch of the 784-128-64-10 MLP with Adam, float32, both backends in one group per batch size, plain
and full (dropout, clip_norm, a cosine schedule, early stopping on a validation split).

pytest bench/test_bench_epoch.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
Uses full Fashion-MNIST (60,000 samples) when installed, else random data of the same shape.
"""

from __future__ import annotations

import pytest

from fastopt import losses, optim
from fastopt.benchmark import FullEpoch, epoch_data, fastopt_mlp


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


@pytest.mark.parametrize("batch_size", [32, 512], ids=lambda b: f"batch{b}")
def test_training_epoch_full(benchmark, backend, data, batch_size):  # type: ignore[no-untyped-def]
    """The full variant (``fastopt.benchmark.FULL_DESCRIPTION``) in the plain epoch's group: the report shows its
    cost beside the plain epoch's."""
    X, y = data
    FullEpoch(backend.name, X[: 4 * batch_size], y[: 4 * batch_size], batch_size)()  # warm-up
    benchmark.group = f"training epoch 784-128-64-10 Adam float32 batch={batch_size}"
    benchmark.pedantic(FullEpoch(backend.name, X, y, batch_size), rounds=3, iterations=1)
