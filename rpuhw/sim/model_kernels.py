"""The simulator's per-model kernels: the pulsed update and serial pulses, as one source.

Each kernel inlines a device model's one-pulse rule, the global :data:`pulse` (numba
inlines it: passing the rule as an argument costs ~50 %). This module is their source, not
their home: :func:`rpuhw.sim.kernels.update_kernel_for` executes this file once per rule as
a module of its own (:func:`rpuhw._kernel_cache.bound_module`) with :data:`pulse` bound to
the model's ``nb_pulse``, so that numba caches each model's compiled kernels on disk, keyed
by this file, the rule's sources and everything else they reach. Imported as is, the module
has no rule and its kernels do not compile.

Randomness, the packed masks and the order of pulses: see :mod:`rpuhw.sim.kernels`.
"""

from __future__ import annotations

import numpy as np

from rpuhw._jit import njit, prange
from rpuhw.devices.rule import W_MAX, W_MIN
from rpuhw.periphery.rng import stream_seed
from rpuhw.sim.kernels import normal, popcount

pulse = None
"""The model's one-pulse rule ``(w, up, xi, prm, i, j, c) -> w_new`` (numba, inlined);
bound per model (see the module doc)."""


@njit(inline="always")
def _one_way(W, i, j, n, up, prm, c, s, noisy):
    """``n`` pulses of one direction on device (i, j); returns the stream state. ``up`` is
    a compile-time constant at each call site, so numba specialises the inlined rule."""
    w = np.float64(W[i, j])
    xi = 0.0
    for _ in range(n):
        if noisy:
            s, xi = normal(s)
        w = pulse(w, up, xi, prm, i, j, c)
    W[i, j] = w
    return s


@njit(inline="always")
def _write_noise(W, V, i, j, prm, s, wn, wn_pinned):
    """aihwkit's write noise after the pulses of device (i, j): visible ``V = W + wn xi``
    (one fresh normal; ``wn_pinned``: not for a device whose bounds coincide)."""
    if wn_pinned and prm[i, j, W_MAX] <= prm[i, j, W_MIN]:
        return s
    s, xi = normal(s)
    V[i, j] = np.float64(W[i, j]) + wn * xi
    return s


@njit(parallel=True)
def update_kernel(xnz, xpos, dnz, dpos, W, prm, c, seed, noisy, V=None, wn=0.0,
                  wn_pinned=False):
    """Apply the P packed rank-1 updates in order, pulse by pulse, to W [rows, cols] in
    place: device (i, j) gets a pulse in slot t of update p when both bits are non-zero,
    up when their signs agree, each with one fresh normal when ``noisy``.

    Write noise (``V`` given, ``wn`` > 0): W holds the hidden weights and every device
    pulsed in this call gets its visible weight ``V = W + wn xi`` anew after its last
    pulse, the one of aihwkit's per-pulse redraws that survives (``_write_noise``).
    Without ``V`` numba prunes that part: the kernel is the plain one.

    Per row and update, the columns with a coincidence are sorted without branches into
    three lists: every pulse up, every pulse down, and both directions (in slot order).
    The first two run with the direction a constant, which removes the mispredicted
    branch on the direction from the inner loop (conv2: 24 % of the kernel's time, one
    thread; docs/performance.md). Devices are independent, so the order in which one
    update's devices are visited changes only which normal of the row's stream each pulse
    draws, not the process."""
    P, cols = xnz.shape
    rows = dnz.shape[1]
    one = np.uint64(1)
    for i in prange(rows):
        s = stream_seed(seed, i)
        hit = np.empty(cols + 1, np.int64)
        ups = np.empty(cols + 1, np.int64)
        downs = np.empty(cols + 1, np.int64)
        mixed = np.empty(cols + 1, np.int64)
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
            # 2) branch-free split by direction
            a = 0
            b = 0
            o = 0
            for e in range(m):
                j = hit[e]
                co = dm & xnz[p, j]
                upm = co & ~(dp ^ xpos[p, j])
                all_up = upm == co
                all_down = upm == 0
                ups[a] = j
                a += all_up
                downs[b] = j
                b += all_down
                mixed[o] = j
                o += not (all_up or all_down)
            # 3) the pulses
            for e in range(a):
                j = ups[e]
                s = _one_way(W, i, j, popcount(dm & xnz[p, j]), True, prm, c, s, noisy)
            for e in range(b):
                j = downs[e]
                s = _one_way(W, i, j, popcount(dm & xnz[p, j]), False, prm, c, s, noisy)
            for e in range(o):  # the sign changes between slots: follow slot order
                j = mixed[e]
                co = dm & xnz[p, j]
                upm = co & ~(dp ^ xpos[p, j])
                w = np.float64(W[i, j])
                xi = 0.0
                mm = co
                while mm != 0:
                    low = mm & (~mm + one)
                    if noisy:
                        s, xi = normal(s)
                    w = pulse(w, (upm & low) != 0, xi, prm, i, j, c)
                    mm ^= low
                W[i, j] = w
        if V is not None:
            if wn > 0.0:  # once per row: the devices pulsed in this call
                touched = np.zeros(cols, np.bool_)
                for p in range(P):
                    dm = dnz[p, i]
                    if dm != 0:
                        for j in range(cols):
                            touched[j] |= (dm & xnz[p, j]) != 0
                for j in range(cols):
                    if touched[j]:
                        s = _write_noise(W, V, i, j, prm, s, wn, wn_pinned)


# Serial: serial addressing is usually a few devices, where waking numba's thread pool
# costs more (ms on a busy machine) than the pulses; per-row streams make the result
# the same either way.
@njit
def pulse_kernel(counts, W, prm, c, seed, noisy, V=None, wn=0.0, wn_pinned=False):
    """Apply ``counts[i, j]`` signed pulses to device (i, j) of W in place (write noise
    into ``V`` as in :func:`update_kernel`)."""
    rows, cols = counts.shape
    for i in range(rows):
        s = stream_seed(seed, i)
        for j in range(cols):
            n = counts[i, j]
            if n == 0:
                continue
            s = _one_way(W, i, j, abs(n), n > 0, prm, c, s, noisy)
            if V is not None:
                if wn > 0.0:
                    s = _write_noise(W, V, i, j, prm, s, wn, wn_pinned)


@njit
def pulse_sparse_kernel(rows, cols, counts, m, W, prm, c, seed, noisy, V=None, wn=0.0,
                        wn_pinned=False):
    """:func:`pulse_kernel` for the ``m`` non-zero counts listed in row-major order
    (``counts[k]`` signed pulses on device ``(rows[k], cols[k])``): the same pulses with
    the same draws (row i's stream starts at ``stream_seed(seed, i)``; a row without a
    pulse draws nothing), without a pass over the zero counts."""
    last = -1
    s = np.uint64(0)
    for k in range(m):
        i = rows[k]
        j = cols[k]
        n = counts[k]
        if i != last:
            s = stream_seed(seed, i)
            last = i
        s = _one_way(W, i, j, abs(n), n > 0, prm, c, s, noisy)
        if V is not None:
            if wn > 0.0:
                s = _write_noise(W, V, i, j, prm, s, wn, wn_pinned)
