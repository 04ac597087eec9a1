"""Compiled (numba) transfer step of the chopped algorithms (``cttv2``, ``agad``).

One pass over the columns read does what the torch expressions of
:mod:`rpuhw.algorithms.cttv2` and :mod:`rpuhw.algorithms.agad` do, operation for
operation in float64 (no fastmath, so no fused multiply-add), hence the same H, counts
and references; per column ``j`` (its read ``v`` [out], ``cs = c_j |lr_t| / bg``)::

    agad: if switched[j]: mu_p[:, j] = mu[:, j]
    reads[j] += 1
    if not agad or reads[j] > n_s:               (agad builds its reference first)
        h = H[:, j] + (v - mu_p[:, j] if agad else v) * cs
        n = clamp(trunc(h), -1, 1)               (threshold 1: H counts pulses)
        where n != 0: h = momentum h (forget_buffer) or h - (1 - momentum) n
        H[:, j] = h; counts[:, j] = n
    agad: mu[:, j] = (1 - a) mu[:, j] + a v

The choppers' flips stay in Python (their generator is torch's). Without numba the
algorithms run their torch expressions instead.
"""

from __future__ import annotations

import math

import numpy as np

from rpuhw._jit import HAVE_NUMBA, njit

__all__ = ["HAVE_NUMBA", "chopped_transfer"]


@njit
def _chopped_compiled(v, cols, chop, s, H, momentum, forget, counts, agad, mu, mu_p,
                      switched, reads, n_s, tail):  # pragma: no cover - compiled
    out = H.shape[0]
    hits = 0
    for q in range(cols.shape[0]):
        j = cols[q]
        if agad and switched[j]:
            for i in range(out):
                mu_p[i, j] = mu[i, j]
        reads[j] += 1
        if (not agad) or reads[j] > n_s:
            cs = np.float64(chop[j]) * s
            for i in range(out):
                x = v[i, q] - mu_p[i, j] if agad else v[i, q]
                h = H[i, j] + x * cs
                n = math.trunc(h)
                n = 1.0 if n > 1.0 else (-1.0 if n < -1.0 else n)
                if n != 0.0:
                    h = momentum * h if forget else h - (1.0 - momentum) * n
                    counts[i, j] = np.int32(n)
                    hits += 1
                H[i, j] = h
        if agad:
            for i in range(out):
                mu[i, j] = (1.0 - tail) * mu[i, j] + tail * v[i, q]
    return hits


def chopped_transfer(v: np.ndarray, cols: np.ndarray, chop: np.ndarray, s: float,
                     H: np.ndarray, momentum: float, forget: bool, counts: np.ndarray,
                     agad: bool, mu: np.ndarray, mu_p: np.ndarray, switched: np.ndarray,
                     reads: np.ndarray, n_s: int, tail: float) -> int:
    """The transfer step of the module docstring, in place on ``H``, ``counts`` (int32
    [out, in], zeros on entry), ``reads`` and (``agad``) ``mu``, ``mu_p``; ``v`` float64
    [out, k] the reads of columns ``cols`` (int64 [k]). Returns the number of pulses."""
    return int(_chopped_compiled(v, cols, chop, float(s), H, float(momentum), bool(forget),
                                 counts, bool(agad), mu, mu_p, switched, reads, int(n_s),
                                 float(tail)))
