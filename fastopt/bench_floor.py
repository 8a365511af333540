"""The physical floors of ``fastopt bench``: what the machine needs at least for a workload's GEMMs and memory traffic.

A workload's floor is the sum of two lower bounds measured on this machine, each with an access pattern at least
as favourable as the kernels' own:

- **GEMMs**, per product shape: the best time of that exact product (its sizes and transposes, float32, warm
  caches), over ``numpy.matmul`` on BLAS's own threads and BLAS called from compiled code in a loop with no Python
  between the calls (``fastopt._kernels._nn.gemm_probe``), on one and on every processor, cut into blocks as the
  dense kernels cut theirs. Small products (a batch-32 step's 128x64 layer) then count at the rate they really
  reach, not at the rate of a large product.
- **Memory**, per working-set size: an optimizer step's traffic (Adam's 4 reads and 3 writes per element) over
  buffers of the workload's own size, in place, by a compiled streaming loop with no arithmetic beyond one
  addition per written element (``fastopt._kernels._optim.stream_probe``), cut into per-thread chunks exactly as
  the optimizer kernels cut theirs, on each thread count from one to the processors; the best time counts. A
  parameter buffer that fits the caches is therefore timed from the caches, as the optimizer reads it.

The reported floor is still only a model (the passes between the GEMMs are not counted; the machine's speed
drifts), so ``Report.floor_seconds`` is the smaller of the modelled floor and every median measured beside it:
no implementation can be printed below the floor, and the report says when a median lowered it.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

ADAM_BYTES_PER_ELEMENT = 7 * 4  # float32 Adam reads p, g, m, v and writes p, m, v
PROBE_SECONDS = 2e-3  # each timed probe repeats its work to last about this long
PROBE_REPEATS = 5  # timed probes per measurement; the fastest counts
# The smallest work the kernels ever split over threads (fastopt/_kernels/_threads.pyx: an optimizer update inside
# fit from 2**15 elements, a dense layer's products from 2**18 flops). Below them the kernels run serially, so the
# probes do too: a parallel region there would only add its cost (and, on a busy machine, its waits).
SMALLEST_SPLIT_UPDATE = 2**15
SMALLEST_SPLIT_GEMM_FLOPS = 2**18


class Product(NamedTuple):
    """A GEMM ``c (m, n) = op(a) @ op(b)`` with op(a) (m, k) and op(b) (k, n); a flag transposes a stored operand."""

    m: int
    k: int
    n: int
    trans_a: bool = False
    trans_b: bool = False

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n


@dataclass(frozen=True)
class Network:
    """A multilayer perceptron of the benchmarks: its layer widths and its loss ("cross_entropy" or "mse")."""

    name: str
    sizes: tuple[int, ...]
    loss: str = "cross_entropy"

    @property
    def n_params(self) -> int:
        return sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(self.sizes))

    def forward_products(self, batch: int) -> list[Product]:
        """x (batch, in) @ W (in, out) of each layer."""
        return [Product(batch, n_in, n_out) for n_in, n_out in itertools.pairwise(self.sizes)]

    def training_products(self, batch: int) -> list[Product]:
        """A training step's products: each layer's forward, its weight gradient x.T @ d and (but for the first
        layer) its input gradient d @ W.T."""
        backward = []
        for index, (n_in, n_out) in enumerate(itertools.pairwise(self.sizes)):
            backward.append(Product(n_in, batch, n_out, trans_a=True))
            if index:
                backward.append(Product(batch, n_out, n_in, trans_b=True))
        return self.forward_products(batch) + backward

    def training_flops(self, batch: int) -> int:
        return sum(product.flops for product in self.training_products(batch))


SEED_NETWORK = Network("784-128-64-10 softmax", (784, 128, 64, 10))


def _fastest(work: Callable[[], object], units: float) -> float:
    """The fastest of ``PROBE_REPEATS`` timings of ``work()`` (which does ``units`` units of work), per unit."""
    best = float("inf")
    for _ in range(PROBE_REPEATS):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best / units


def _repeats_for(seconds_each: float) -> int:
    return max(1, min(100_000, int(PROBE_SECONDS / max(seconds_each, 1e-9))))


def _compiled_probes() -> tuple[Callable[..., None], Callable[..., None] | None] | None:
    """The compiled probes ``(stream_probe, gemm_probe or None)``, or None without the compiled backend."""
    try:
        from fastopt import cython_backend
    except ImportError:
        return None
    return cython_backend.stream_probe, cython_backend.gemm_probe()


# The product whose rate says what state the machine is in (``machine_state``): large enough that two threads gain
# from it (a float32 1024 x 1024 product ran at 102 GFLOP/s on one core of a 2-core AMD EPYC Zen 4 VM, 169 on both),
# small enough to time in milliseconds.
STATE_PRODUCT = Product(256, 256, 256)


def machine_state() -> tuple[float, float] | None:
    """The machine's speed now: the float32 GFLOP/s of ``STATE_PRODUCT`` on one thread, and how many times faster it
    runs on every processor, by the compiled GEMM probe; None without it. A virtual machine whose host slows its
    second core for a while (seconds to minutes) shows a speed-up near 1 meanwhile: the figures measured then are the
    machine's as much as the code's."""
    probes = _compiled_probes()
    gemm_probe = probes[1] if probes else None
    if gemm_probe is None:
        return None
    operands = _operands(STATE_PRODUCT)
    one = _probe_seconds(gemm_probe, STATE_PRODUCT, operands, 1)
    every = _probe_seconds(gemm_probe, STATE_PRODUCT, operands, os.cpu_count() or 1)
    return STATE_PRODUCT.flops / one / 1e9, one / every


def _operands(product: Product) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float32 operands of ``product`` as stored (a transposed operand stored transposed), and its output."""
    rng = np.random.default_rng(0)
    m, k, n, trans_a, trans_b = product
    a = rng.random((k, m) if trans_a else (m, k), dtype=np.float32)
    b = rng.random((n, k) if trans_b else (k, n), dtype=np.float32)
    return a, b, np.empty((m, n), dtype=np.float32)


def _probe_seconds(
    gemm_probe: Callable[..., None], product: Product, operands: tuple[np.ndarray, ...], threads: int
) -> float:
    """The fastest time of one ``product`` by the compiled GEMM probe on ``threads`` threads."""
    repeats = _repeats_for(product.flops / 100e9)
    return _fastest(lambda: gemm_probe(*operands, product.trans_a, product.trans_b, threads, repeats), repeats)


class Machine:
    """The machine's rates, each measured on first use and kept: memory bandwidth per working-set size and the
    time of each GEMM shape (see the module's docstring)."""

    def __init__(self) -> None:
        self.processors = os.cpu_count() or 1
        self._bandwidth: dict[int, float] = {}
        self._gemm: dict[Product, float] = {}
        self._probes = _compiled_probes()

    def bandwidth(self, n_elements: int) -> float:
        """Bytes per second of an in-place optimizer-like pass over 4 float32 buffers of ``n_elements``."""
        if n_elements not in self._bandwidth:
            self._bandwidth[n_elements] = self._measure_bandwidth(n_elements)
        return self._bandwidth[n_elements]

    def _measure_bandwidth(self, n: int) -> float:
        buffers = [np.zeros(n, dtype=np.float32) for _ in range(4)]
        if self._probes is None:  # NumPy's in-place add: 2 reads and 1 write per element
            param, grad = buffers[0], buffers[1]
            repeats = _repeats_for(n * 1e-9)
            seconds = _fastest(lambda: [np.add(param, grad, out=param) for _ in range(repeats)], repeats)
            return 12 * n / seconds
        stream = self._probes[0]
        repeats = _repeats_for(n * 0.5e-9)
        best = min(
            _fastest(lambda t=threads: [stream(*buffers, t) for _ in range(repeats)], repeats)
            for threads in self._thread_counts(n >= SMALLEST_SPLIT_UPDATE)
        )
        return ADAM_BYTES_PER_ELEMENT * n / best

    def _thread_counts(self, kernels_split: bool) -> range:
        return range(1, self.processors + 1 if kernels_split else 2)

    def gemm_seconds(self, product: Product) -> float:
        """The best time of one float32 ``product`` on this machine (see the module's docstring)."""
        if product not in self._gemm:
            self._gemm[product] = self._measure_gemm(product)
        return self._gemm[product]

    def _measure_gemm(self, product: Product) -> float:
        operands = a, b, c = _operands(product)
        a_op, b_op = (a.T if product.trans_a else a), (b.T if product.trans_b else b)
        repeats = _repeats_for(product.flops / 100e9)
        best = _fastest(lambda: [np.matmul(a_op, b_op, out=c) for _ in range(repeats)], repeats)
        gemm_probe = self._probes[1] if self._probes else None
        if gemm_probe is not None:
            for threads in self._thread_counts(product.flops >= SMALLEST_SPLIT_GEMM_FLOPS):
                best = min(best, _probe_seconds(gemm_probe, product, operands, threads))
        return best

    def training_step_seconds(self, network: Network, batch: int) -> float:
        """A training step's floor: its GEMMs at their shapes' best times plus one Adam pass over the parameters."""
        gemms = sum(self.gemm_seconds(product) for product in network.training_products(batch))
        return gemms + ADAM_BYTES_PER_ELEMENT * network.n_params / self.bandwidth(network.n_params)

    def epoch_seconds(self, network: Network, n_samples: int, batch: int) -> float:
        """An epoch's floor: its full batches' steps, and the last, shorter one."""
        full, rest = divmod(n_samples, batch)
        last = self.training_step_seconds(network, rest) if rest else 0.0
        return full * self.training_step_seconds(network, batch) + last

    def forward_seconds(self, network: Network, batch: int) -> float:
        """A forward pass's floor: its GEMMs at their shapes' best times."""
        return sum(self.gemm_seconds(product) for product in network.forward_products(batch))

    def summary(self) -> dict[str, object]:
        """What was measured, for the report and its JSON: GB/s per working set, GFLOP/s per product shape."""
        return {
            "bandwidth_gb_per_s": {str(n): rate / 1e9 for n, rate in self._bandwidth.items()},
            "gemm_gflop_per_s": {
                f"{p.m}x{p.k}x{p.n}{' tA' if p.trans_a else ''}{' tB' if p.trans_b else ''}": p.flops / s / 1e9
                for p, s in self._gemm.items()
            },
        }
