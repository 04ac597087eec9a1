"""Compiled (numba) step of ``mp``: accumulate into chi, and the transfer's pulse counts.

One pass over ``chi [out, in]`` (float64, updated in place) does what the torch
expressions of :mod:`rpuhw.algorithms.mp` did, operation for operation in float64 (no
fastmath, so no fused multiply-add), hence bit for bit the same chi and counts::

    chi -= lr * g                  # g = d^T x of the step, float32 or float64
    n = trunc(chi / eps)           # only when transferring
    chi -= n * eps
    counts = int32(n * pulses_per_granule)

and returns the counts with the number of non-zero ones (0: nothing to pulse). Without
numba (``RPUHW_NO_NUMBA``) the same maths runs as numpy array expressions.
"""

from __future__ import annotations

import math

import numpy as np

from rpuhw._jit import HAVE_NUMBA, njit


@njit
def _step_compiled(chi, g, lr, eps, ppg, transfer):  # pragma: no cover - compiled
    rows, cols = chi.shape
    # below this |chi|, chi / eps rounds to |q| < 1 (exact quotient < 1 - 1e-9): trunc 0
    near = eps * (1.0 - 1e-9)
    counts = np.zeros((rows, cols), np.int32)
    nonzero = 0
    for i in range(rows):
        for j in range(cols):
            c = chi[i, j] - lr * np.float64(g[i, j])
            if transfer and abs(c) >= near:
                n = math.trunc(c / eps)
                if n != 0.0:
                    c = c - n * eps
                    counts[i, j] = np.int32(n * ppg)
                    nonzero += 1
            chi[i, j] = c
    return counts, nonzero


_BLOCK = 32
"""Columns per block of :func:`_sparse_compiled`'s search for transfers."""


@njit(inline="always")
def _transfer_block(chi, i, j0, j1, near, eps, ppg, rows, cols, counts, m):
    """The transfers of chi[i, j0:j1] (as in _step_compiled), appended at m; returns m."""
    for j in range(j0, j1):
        c = chi[i, j]
        if abs(c) >= near:
            n = math.trunc(c / eps)
            if n != 0.0:
                chi[i, j] = c - n * eps
                rows[m] = i
                cols[m] = j
                counts[m] = np.int32(n * ppg)
                m += 1
    return m


@njit
def _sparse_compiled(chi, g, d, x, outer, lr, eps, ppg, transfer, rows, cols,
                     counts):  # pragma: no cover - compiled
    # per row: pass 1 (branch-free, it vectorises) chi -= lr g and counts the |chi| that
    # reach the threshold; with any, pass 2 finds the blocks of _BLOCK columns holding
    # them (branch-free counts again) and transfers those blocks in order, with the
    # operations of _step_compiled: the same chi and counts
    n_rows, n_cols = chi.shape
    near = eps * (1.0 - 1e-9)  # as in _step_compiled
    full = n_cols - n_cols % _BLOCK
    m = 0
    for i in range(n_rows):
        h = 0
        if outer:  # the float32 product, as the matmul of one pair rounds it
            di = d[i]
            for j in range(n_cols):
                c = chi[i, j] - lr * np.float64(np.float32(di * x[j]))
                chi[i, j] = c
                h += np.int64(abs(c) >= near)
        else:
            for j in range(n_cols):
                c = chi[i, j] - lr * np.float64(g[i, j])
                chi[i, j] = c
                h += np.int64(abs(c) >= near)
        if not transfer or h == 0:
            continue
        for j0 in range(0, full, _BLOCK):
            hb = 0
            for j in range(j0, j0 + _BLOCK):
                hb += np.int64(abs(chi[i, j]) >= near)
            if hb:
                m = _transfer_block(chi, i, j0, j0 + _BLOCK, near, eps, ppg, rows, cols,
                                    counts, m)
        m = _transfer_block(chi, i, full, n_cols, near, eps, ppg, rows, cols, counts, m)
    return m


def _step_numpy(chi: np.ndarray, g: np.ndarray, lr: float, eps: float, ppg: float,
                transfer: bool) -> tuple[np.ndarray, int]:
    chi -= lr * g.astype(np.float64)
    if not transfer:
        return np.zeros(chi.shape, np.int32), 0
    n = np.trunc(chi / eps)
    chi -= n * eps
    return (n * ppg).astype(np.int32), int(np.count_nonzero(n))


def mp_step(chi: np.ndarray, g: np.ndarray, lr: float, eps: float, ppg: int,
            transfer: bool) -> tuple[np.ndarray, int]:
    """``chi -= lr g`` in place (chi float64 [out, in], g [out, in]); with ``transfer``
    also ``n = trunc(chi / eps)``, ``chi -= n eps``. Returns the signed pulse counts
    ``n * ppg`` (int32 [out, in], zeros without transfer) and how many are non-zero."""
    return _step(chi, g, float(lr), float(eps), float(ppg), bool(transfer))


def _sparse_numpy(chi: np.ndarray, g: np.ndarray, d: np.ndarray, x: np.ndarray,
                  outer: bool, lr: float, eps: float, ppg: float, transfer: bool,
                  rows: np.ndarray, cols: np.ndarray, counts: np.ndarray) -> int:
    if outer:
        g = np.multiply.outer(d, x)  # float32 products, as the matmul of one pair
    dense, nonzero = _step_numpy(chi, g, lr, eps, ppg, transfer)
    if nonzero:
        r, c = np.nonzero(dense)
        rows[:nonzero], cols[:nonzero], counts[:nonzero] = r, c, dense[r, c]
    return nonzero


def mp_step_sparse(chi: np.ndarray, g: np.ndarray | None, lr: float, eps: float, ppg: int,
                   transfer: bool, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray,
                   d: np.ndarray | None = None, x: np.ndarray | None = None) -> int:
    """:func:`mp_step` with the counts as a list: the non-zero ``n * ppg`` go to
    ``counts[:m]`` with their indices in ``rows[:m]``, ``cols[:m]`` (int32 buffers of
    chi's size), in row-major order; returns m. ``g`` None: g is the one pair's outer
    product ``d x^T`` (float32 ``d [out]``, ``x [in]``, rounded to float32 per entry,
    exactly what ``d[:, None] @ x[None]`` gives), formed on the fly."""
    outer = g is None
    empty = np.empty(0, np.float32)
    g = np.empty((0, 0), np.float32) if outer else g
    return _sparse(chi, g, empty if d is None else d, empty if x is None else x, outer,
                   float(lr), float(eps), float(ppg), bool(transfer), rows, cols, counts)


_step = _step_compiled if HAVE_NUMBA else _step_numpy
"""The implementation :func:`mp_step` calls (callers in a hot loop may call it directly,
with float ``lr``, ``eps``, ``ppg`` and bool ``transfer``)."""
_sparse = _sparse_compiled if HAVE_NUMBA else _sparse_numpy
"""The implementation :func:`mp_step_sparse` calls (arguments as there, with empty
float32 arrays for the unused ``g`` or ``d``, ``x``, and ``outer``)."""
