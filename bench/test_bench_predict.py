"""``Sequential.predict`` of the 784-128-64-10 MLP at batch 1, 32 and 1024, both backends in one group per batch.

    pytest bench/test_bench_predict.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds

PyTorch (``inference_mode``), ONNX Runtime and the floors are in ``fastopt bench --workload predict``.
"""

from __future__ import annotations

import pytest

from fastopt.bench_floor import SEED_NETWORK
from fastopt.benchmark import fastopt_model, random_data


@pytest.mark.parametrize("check_input", [True, False], ids=["checked", "trusted"])
@pytest.mark.parametrize("batch_size", [1, 32, 1024], ids=lambda b: f"batch{b}")
def test_predict(benchmark, backend, batch_size, check_input):  # type: ignore[no-untyped-def]
    X, _ = random_data(SEED_NETWORK, batch_size)
    model = fastopt_model(SEED_NETWORK, backend.name)
    benchmark.group = f"predict 784-128-64-10 float32 batch={batch_size}"
    benchmark(model.predict, X, check_input=check_input)
