"""One optimizer step over a flat float32 buffer of n elements, both backends side by side.

    pytest bench/test_bench_optimizers.py --benchmark-group-by=group --benchmark-columns=median,iqr,rounds

``extra_info["ns_per_element"]`` holds the median time per element.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastopt import optim

SIZES = [10_000, 100_000, 1_000_000, 10_000_000]


# Each case's optimizer over one parameter buffer (state from the defaults: zeros, as after a fresh start).
OPTIMIZERS = {
    "sgd_momentum": lambda param: optim.SGD([param], lr=1e-3, momentum=0.9),
    "adagrad": lambda param: optim.AdaGrad([param], lr=1e-3),
    "rmsprop": lambda param: optim.RMSProp([param], lr=1e-3),
    "rmsprop_centered_momentum": lambda param: optim.RMSProp([param], lr=1e-3, centered=True, momentum=0.9),
    "adam": lambda param: optim.Adam([param], lr=1e-3),
    "adamw_amsgrad": lambda param: optim.AdamW([param], lr=1e-3, amsgrad=True),
}


def _step(kind: str, backend, param, grad):  # type: ignore[no-untyped-def]
    """One update as ``fit`` makes it: the optimizer's trusted ``apply`` (no check of the gradients' values)."""
    optimizer = OPTIMIZERS[kind](param)
    optimizer.backend = backend
    return lambda: optimizer.apply([grad])


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", sorted(OPTIMIZERS))
def test_optimizer_step(benchmark, backend, kind, n):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    param = rng.standard_normal(n, dtype=np.float32)
    grad = rng.standard_normal(n, dtype=np.float32)
    benchmark.group = f"{kind} n={n:.0e}"
    benchmark.pedantic(_step(kind, backend, param, grad), rounds=max(5, min(500, 20_000_000 // n)),
                       warmup_rounds=1)  # fmt: skip
    if benchmark.stats is not None:  # None under --benchmark-disable (a plain run of each case)
        benchmark.extra_info["ns_per_element"] = benchmark.stats.stats.median / n * 1e9
