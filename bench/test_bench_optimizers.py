"""One optimizer step over a flat float32 buffer of n elements, both backends side by side.

    pytest bench/test_bench_optimizers.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds

``extra_info["ns_per_element"]`` holds the median time per element.
"""

from __future__ import annotations

import numpy as np
import pytest

SIZES = [10_000, 100_000, 1_000_000, 10_000_000]


def _step(kind: str, backend, param, grad, a, b, c):  # type: ignore[no-untyped-def]
    if kind == "sgd_momentum":
        return lambda: backend._sgd_step(param, grad, a, 1e-3, 0.9, 0.0, False, 0.0, False)
    if kind == "adagrad":
        return lambda: backend._adagrad_step(param, grad, a, 1e-3, 1e-10, 0.0)
    if kind == "rmsprop":
        return lambda: backend._rmsprop_step(param, grad, a, None, None, 1e-3, 0.99, 1e-8, 0.0, 0.0)
    if kind == "rmsprop_centered_momentum":
        return lambda: backend._rmsprop_step(param, grad, a, b, c, 1e-3, 0.99, 1e-8, 0.9, 0.0)
    if kind == "adam":
        return lambda: backend._adam_step(param, grad, a, b, None, 1e-3, 0.9, 0.999, 1e-8, 0.0, False, 0.1, 0.001)
    if kind == "adamw_amsgrad":
        return lambda: backend._adam_step(param, grad, a, b, c, 1e-3, 0.9, 0.999, 1e-8, 1e-2, True, 0.1, 0.001)
    raise ValueError(kind)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize(
    "kind", ["sgd_momentum", "adagrad", "rmsprop", "rmsprop_centered_momentum", "adam", "adamw_amsgrad"]
)
def test_optimizer_step(benchmark, backend, kind, n):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    param = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32)
    a, b, c = (np.full(n, 0.01, dtype=np.float32) for _ in range(3))
    benchmark.group = f"{kind} n={n:.0e}"
    benchmark.pedantic(_step(kind, backend, param, grad, a, b, c), rounds=max(5, min(500, 20_000_000 // n)),
                       warmup_rounds=1)  # fmt: skip
    if benchmark.stats is not None:  # None under --benchmark-disable (a plain run of each case)
        benchmark.extra_info["ns_per_element"] = benchmark.stats.stats.median / n * 1e9
