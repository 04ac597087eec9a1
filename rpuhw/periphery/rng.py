"""Counter-based random streams of the compiled kernels (splitmix64, numba).

Every compiled call (pulse encoding, pulsed update, noisy MVM) takes one 64-bit call
seed and derives an independent stream per line from it with :func:`stream_seed`, so
results depend on the seed and the data only, never on the number of threads.
splitmix64's state after ``n`` steps is ``s0 + n * GOLDEN``: a line can jump straight
to any position of its stream (the pulse encoder does).
"""

from __future__ import annotations

import numpy as np

from rpuhw._jit import njit

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
"""splitmix64's increment (the golden ratio in 64 bits)."""
M1 = np.uint64(0xBF58476D1CE4E5B9)
M2 = np.uint64(0x94D049BB133111EB)
"""Multipliers of splitmix64's output function."""


@njit(inline="always")
def mix(z):
    """The splitmix64 output function of state ``z``."""
    z = (z ^ (z >> np.uint64(30))) * M1
    z = (z ^ (z >> np.uint64(27))) * M2
    return z ^ (z >> np.uint64(31))


@njit(inline="always")
def next_u64(s):
    """splitmix64: advance state ``s``; return (new state, 64 random bits)."""
    s = s + GOLDEN
    return s, mix(s)


@njit(inline="always")
def stream_seed(seed, k):
    """Independent stream state for line ``k`` of a call seeded with ``seed``."""
    s = np.uint64(seed) ^ (np.uint64(k) * GOLDEN)
    s, a = next_u64(s)
    s, b = next_u64(s ^ a)
    return b
