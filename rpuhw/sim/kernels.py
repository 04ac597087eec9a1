"""Compiled (numba) kernels of the simulator's exact pulsed update.

The update kernel walks each device through its updates in order and applies
every coincidence pulse with the model's own one-pulse rule (``nb_pulse``, compiled
from the model's one step rule, :mod:`rpuhw.devices.rule`), so it *is* the sequential
pulse process, only compiled and parallel over rows. Its source and the serial pulse
kernel's are :mod:`rpuhw.sim.model_kernels`, compiled once per rule and cached on disk
(:func:`update_kernel_for`, :func:`pulse_kernel_for`); this module holds what they share.
Randomness comes from one splitmix64 stream per row (seeded per call), so
results do not depend on the number of threads. Gaussian numbers use the
ziggurat method (Doornik 2005, 128 layers), which is exact.

Bit streams are packed first: for every update p and line, a 64-bit mask of
the slots whose bit is non-zero and one of the slots whose bit is +1. Then a
device's coincidences are ``dnz & xnz``, its up pulses those where the signs
agree, and their number is a popcount.
"""

from __future__ import annotations

import math
from types import ModuleType

import numpy as np

from rpuhw._jit import njit
from rpuhw.periphery.rng import next_u64, stream_seed

_INV53 = 1.0 / 9007199254740992.0  # 2**-53


def _ziggurat_tables(c: int = 128, r: float = 3.442619855899, v: float = 9.91256303526217e-3):
    """Layer edges x[0..c] and ratios x[i+1]/x[i] of the normal ziggurat."""
    x = np.zeros(c + 1)
    f = math.exp(-0.5 * r * r)
    x[0] = v / f
    x[1] = r
    for i in range(2, c):
        x[i] = math.sqrt(-2.0 * math.log(v / x[i - 1] + f))
        f = math.exp(-0.5 * x[i] * x[i])
    x[c] = 0.0
    ratio = x[1:] / x[:-1]
    return x, ratio


_ZX, _ZR = _ziggurat_tables()
_ZIG_R = 3.442619855899


@njit(inline="always")
def uniform_open(s):
    """Uniform in (0, 1]."""
    s, r = next_u64(s)
    return s, ((r >> np.uint64(11)) + np.uint64(1)) * _INV53


@njit(inline="always")
def normal(s):
    """Standard normal (ziggurat); returns (new state, value).

    The common case (a point inside a rectangle, ~98.8 %) is inlined into the
    caller; wedges and the tail continue in :func:`_normal_slow`.
    """
    s, r = next_u64(s)
    i = np.int64(r & np.uint64(127))
    u = 2.0 * ((r >> np.uint64(11)) * _INV53) - 1.0
    if abs(u) < _ZR[i]:
        return s, u * _ZX[i]
    return _normal_slow(s, i, u)


@njit
def _normal_slow(s, i, u):
    """Finish a ziggurat draw whose point (i, u) fell outside its rectangle."""
    while True:
        if i == 0:
            # tail beyond R (Marsaglia 1964)
            while True:
                s, u1 = uniform_open(s)
                s, u2 = uniform_open(s)
                x = math.log(u1) / _ZIG_R
                y = math.log(u2)
                if -2.0 * y >= x * x:
                    break
            return s, (x - _ZIG_R) if u < 0.0 else (_ZIG_R - x)
        x = u * _ZX[i]
        f0 = math.exp(-0.5 * (_ZX[i] * _ZX[i] - x * x))
        f1 = math.exp(-0.5 * (_ZX[i + 1] * _ZX[i + 1] - x * x))
        s, u2 = uniform_open(s)
        if f1 + u2 * (f0 - f1) < 1.0:
            return s, x
        # rejected: a fresh point
        s, r = next_u64(s)
        i = np.int64(r & np.uint64(127))
        u = 2.0 * ((r >> np.uint64(11)) * _INV53) - 1.0
        if abs(u) < _ZR[i]:
            return s, u * _ZX[i]


@njit
def normals(n, seed):
    """``n`` standard normals from one stream (for testing the generator)."""
    out = np.empty(n)
    s = stream_seed(seed, 0)
    for k in range(n):
        s, out[k] = normal(s)
    return out


@njit(inline="always")
def popcount(x):
    """Number of set bits of a uint64."""
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * np.uint64(0x0101010101010101)) >> np.uint64(56))


def update_kernel_for(pulse):
    """The compiled update kernel with the one-pulse rule ``pulse`` (a model's
    ``nb_pulse``) inlined; cached on disk per rule (:mod:`rpuhw.sim.model_kernels`).

    Returns ``kernel(xnz, xpos, dnz, dpos, W, prm, c, seed, noisy)`` that applies
    the P packed rank-1 updates in order, pulse by pulse, to W [rows, cols] in place:
    device (i, j) gets a pulse in slot t of update p when both bits are non-zero,
    up when their signs agree, each with one fresh normal when ``noisy``. With the
    optional ``V, wn, wn_pinned`` (write noise of std ``wn``), W holds the hidden weights
    and each pulsed device's visible weight in V is drawn anew.
    """
    return _kernels_for(pulse).update_kernel


def pulse_kernel_for(pulse):
    """Compiled ``kernel(counts, W, prm, c, seed, noisy[, V, wn, wn_pinned])``:
    ``counts[i, j]`` signed pulses (write noise as in :func:`update_kernel_for`)."""
    return _kernels_for(pulse).pulse_kernel


def pulse_sparse_kernel_for(pulse):
    """Compiled ``kernel(rows, cols, counts, m, W, prm, c, seed, noisy[, V, wn,
    wn_pinned])``: the ``m`` signed counts ``counts[k]`` of devices ``(rows[k],
    cols[k])``, listed in row-major order; the same result as :func:`pulse_kernel_for`'s
    kernel given the dense counts."""
    return _kernels_for(pulse).pulse_sparse_kernel


_BOUND: dict = {}


def _kernels_for(pulse) -> ModuleType:
    """:mod:`rpuhw.sim.model_kernels` with ``pulse`` bound (one module per rule)."""
    module = _BOUND.get(pulse)
    if module is None:
        from rpuhw._kernel_cache import bound_module

        module = _BOUND[pulse] = bound_module("rpuhw.sim.model_kernels", pulse=pulse)
    return module
