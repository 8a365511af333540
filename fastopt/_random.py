"""Counter-based random numbers for dropout masks: SplitMix64 (Steele, Lea and Flood, 2014) read at any position.

Word ``i`` (from 0) of the stream of a 64-bit ``key`` is ``mix64(key + (i + 1) * GAMMA mod 2**64)``: a function of
the key and the position only, so a mask can be made in any order, split over any number of threads, on any
backend, and made again when a checkpointed run resumes, always with the same bits. The compiled kernels
(``fastopt/_kernels/_nn.pyx``) compute the same words; ``fastopt.numpy_backend`` uses ``stream_words`` below.

Keys are derived the same way: the key of a dropout layer's mask at one training step is
``word(word(epoch_key, batch), layer)`` (see ``Sequential._forward`` and ``fastopt.training``). Two streams of random
64-bit keys overlap within a mask's length with a probability of about that length / 2**63.
"""

from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15  # the stream's increment: 2**64 / the golden ratio, odd
MIX1, MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # the finalizer's multipliers
MASK64 = (1 << 64) - 1


def word(key: int, index: int) -> int:
    """Word ``index`` of the SplitMix64 stream of ``key``, as a Python int in [0, 2**64)."""
    z = (key + (index + 1) * GAMMA) & MASK64
    z = ((z ^ (z >> 30)) * MIX1) & MASK64
    z = ((z ^ (z >> 27)) * MIX2) & MASK64
    return z ^ (z >> 31)


def stream_words(key: int, count: int) -> np.ndarray:
    """Words 0 to ``count - 1`` of the stream of ``key`` (uint64; NumPy's unsigned arithmetic wraps modulo 2**64)."""
    z = np.uint64(key) + (np.arange(count, dtype=np.uint64) + np.uint64(1)) * np.uint64(GAMMA)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(MIX1)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(MIX2)
    return z ^ (z >> np.uint64(31))


def uniform_halves(key: int, count: int) -> np.ndarray:
    """``count`` 32-bit numbers (uint64 holding values below 2**32): element i is half i % 2 of word i // 2 (the low
    32 bits first). Two numbers per word halve the mixing work of a mask."""
    words = stream_words(key, (count + 1) // 2)
    halves = np.stack([words & np.uint64(0xFFFFFFFF), words >> np.uint64(32)], axis=1)
    return halves.reshape(-1)[:count]
