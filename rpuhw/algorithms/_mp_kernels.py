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


_step = _step_compiled if HAVE_NUMBA else _step_numpy
"""The implementation :func:`mp_step` calls (callers in a hot loop may call it directly,
with float ``lr``, ``eps``, ``ppg`` and bool ``transfer``)."""
