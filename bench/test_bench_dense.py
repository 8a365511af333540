"""Dense layer forward and backward (784 -> 128, ReLU, float32) at batch 32, 128, 512, both backends.

pytest bench/test_bench_dense.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds
"""

from __future__ import annotations

import numpy as np
import pytest

BATCHES = [32, 128, 512]
N_IN, N_OUT = 784, 128


@pytest.fixture(params=BATCHES, ids=lambda b: f"batch{b}")
def layer(request):  # type: ignore[no-untyped-def]
    batch = request.param
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, N_IN), dtype=np.float32)
    weight = rng.standard_normal((N_IN, N_OUT), dtype=np.float32) * np.float32(0.05)
    bias = rng.standard_normal(N_OUT, dtype=np.float32)
    out = np.empty((batch, N_OUT), dtype=np.float32)
    grad_out = rng.standard_normal((batch, N_OUT), dtype=np.float32)
    grads = np.empty_like(weight), np.empty_like(bias), np.empty_like(x)
    return batch, x, weight, bias, out, grad_out, grads


def test_dense_forward(benchmark, backend, layer):  # type: ignore[no-untyped-def]
    batch, x, weight, bias, out, _, _ = layer
    benchmark.group = f"dense forward 784-128 relu batch={batch}"
    benchmark(backend._dense_forward, x, weight, bias, out, "relu", 0.0)


def test_dense_backward(benchmark, backend, layer):  # type: ignore[no-untyped-def]
    batch, x, weight, bias, out, grad_out, (grad_weight, grad_bias, grad_x) = layer
    backend._dense_forward(x, weight, bias, out, "relu", 0.0)
    benchmark.group = f"dense backward 784-128 relu batch={batch}"
    # grad_out is overwritten with grad_out * relu'(out) each call; after the first call it is a fixed point.
    benchmark(backend._dense_backward, x, weight, out, grad_out, grad_weight, grad_bias, grad_x, "relu", 0.0)


def test_dense_backward_first_layer(benchmark, backend, layer):  # type: ignore[no-untyped-def]
    batch, x, weight, bias, out, grad_out, (grad_weight, grad_bias, _) = layer
    backend._dense_forward(x, weight, bias, out, "relu", 0.0)
    benchmark.group = f"dense backward (no grad_x) 784-128 relu batch={batch}"
    benchmark(backend._dense_backward, x, weight, out, grad_out, grad_weight, grad_bias, None, "relu", 0.0)
