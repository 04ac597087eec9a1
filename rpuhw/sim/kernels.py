"""Compiled (numba) kernels of the simulator's exact pulsed update.

The update kernel walks each device through its updates in order and applies
every coincidence pulse with the model's own one-pulse rule (``nb_pulse``, compiled
from the model's one step rule, :mod:`rpuhw.devices.rule`), so it *is* the sequential
pulse process, only compiled and parallel over rows.
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

import numpy as np

from rpuhw._jit import njit, prange
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


_KERNELS: dict = {}


def update_kernel_for(pulse):
    """The compiled update kernel with the one-pulse rule ``pulse`` inlined (cached).

    Returns ``kernel(xnz, xpos, dnz, dpos, W, prm, c, seed, noisy)`` that applies
    the P packed rank-1 updates in order, pulse by pulse, to W [rows, cols] in place:
    device (i, j) gets a pulse in slot t of update p when both bits are non-zero,
    up when their signs agree, each with one fresh normal when ``noisy``.
    """
    key = ("update", pulse)
    if key not in _KERNELS:
        _KERNELS[key] = _make_update_kernel(pulse)
    return _KERNELS[key]


def pulse_kernel_for(pulse):
    """Compiled ``kernel(counts, W, prm, c, seed, noisy)``: ``counts[i, j]`` signed pulses."""
    key = ("pulse", pulse)
    if key not in _KERNELS:
        _KERNELS[key] = _make_pulse_kernel(pulse)
    return _KERNELS[key]


def _make_update_kernel(pulse):
    # A closure, so that numba inlines ``pulse`` (passing it as an argument costs ~50 %).
    @njit(parallel=True, cache=False)
    def kernel(xnz, xpos, dnz, dpos, W, prm, c, seed, noisy):
        P, cols = xnz.shape
        rows = dnz.shape[1]
        one = np.uint64(1)
        for i in prange(rows):
            s = stream_seed(seed, i)
            hit = np.empty(cols + 1, np.int64)
            for p in range(P):
                dm = dnz[p, i]
                if dm == 0:
                    continue
                dp = dpos[p, i]
                # 1) branch-free list of the columns with a coincidence in this update
                m = 0
                for j in range(cols):
                    hit[m] = j
                    m += (dm & xnz[p, j]) != 0
                # 2) their pulses, in slot order
                for e in range(m):
                    j = hit[e]
                    co = dm & xnz[p, j]
                    upm = co & ~(dp ^ xpos[p, j])
                    w = np.float64(W[i, j])
                    xi = 0.0
                    if upm == co or upm == 0:  # one direction (the usual case)
                        up = upm != 0
                        for _ in range(popcount(co)):
                            if noisy:
                                s, xi = normal(s)
                            w = pulse(w, up, xi, prm, i, j, c)
                    else:  # the sign changes between slots: follow slot order
                        mm = co
                        while mm != 0:
                            low = mm & (~mm + one)
                            if noisy:
                                s, xi = normal(s)
                            w = pulse(w, (upm & low) != 0, xi, prm, i, j, c)
                            mm ^= low
                    W[i, j] = w

    return kernel


def _make_pulse_kernel(pulse):
    # Serial: serial addressing is usually a few devices, where waking numba's thread pool
    # costs more (ms on a busy machine) than the pulses; per-row streams make the result
    # the same either way.
    @njit(cache=False)
    def kernel(counts, W, prm, c, seed, noisy):
        rows, cols = counts.shape
        for i in range(rows):
            s = stream_seed(seed, i)
            for j in range(cols):
                n = counts[i, j]
                if n == 0:
                    continue
                up = n > 0
                w = np.float64(W[i, j])
                xi = 0.0
                for _ in range(abs(n)):
                    if noisy:
                        s, xi = normal(s)
                    w = pulse(w, up, xi, prm, i, j, c)
                W[i, j] = w

    return kernel
