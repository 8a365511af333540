"""Full Fashion-MNIST: the reference MLP must reach at least 88 % test accuracy in 10 epochs."""

from __future__ import annotations

import time

import pytest

import fastopt
from fastopt import datasets, layers, losses, optim


@pytest.fixture(scope="module")
def fashion_mnist():
    try:
        return datasets.load_fashion_mnist()
    except FileNotFoundError as exc:
        pytest.skip(f"Fashion-MNIST is not installed: {exc}")


@pytest.mark.slow
@pytest.mark.parametrize("backend", fastopt.available_backends())
def test_fashion_mnist_mlp_reaches_88_percent(fashion_mnist, backend):
    X_train, y_train, X_test, y_test = fashion_mnist
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    model = fastopt.Sequential(
        [layers.Dense(784, 128), layers.ReLU(), layers.Dense(128, 64), layers.ReLU(), layers.Dense(64, 10)],
        dtype="float32",
        seed=0,
        backend=backend,
    )
    started = time.perf_counter()
    history = model.fit(
        X_train,
        y_train,
        loss=losses.CrossEntropy(),
        optimizer=optim.Adam(lr=1e-3),
        epochs=10,
        batch_size=32,
        shuffle=True,
        seed=0,
        validation_data=(X_test, y_test),
    )
    seconds = time.perf_counter() - started
    result = model.evaluate(X_test, y_test, loss=losses.CrossEntropy())
    accuracy = result["accuracy"]
    print(
        f"\nFashion-MNIST 784-128-64-10, Adam 1e-3, batch 32, 10 epochs, backend {model.backend}: "
        f"test accuracy {accuracy:.4f}, test loss {result['loss']:.4f}, training {seconds:.1f} s"
    )
    assert len(history.history["loss"]) == 10
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] == pytest.approx(accuracy)
    assert accuracy >= 0.88
