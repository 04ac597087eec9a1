"""Compiled update-management arithmetic of the periphery (numba).

:func:`signed_probabilities_kernel` computes, in one pass over an update call, what
:meth:`~rpuhw.periphery.Periphery._signed_probabilities_torch` computes with tensor
operations, with the same floating-point steps (so the same probabilities, bit for
bit): per update vector p the gains in float64,

    C = sqrt(lr / (BL dw_min)),  C_x = C sqrt(d_max / x_max),  C_d = C sqrt(x_max / d_max)

(UM; without UM ``C_x = C_d = C``; zero when x or d is all zero), then the signed
probabilities ``clip(x C_x, -1, 1)`` and ``clip(-d C_d, -1, 1)`` in float32 (float64
when a gain exceeds :data:`F32_SAFE`), their mean magnitudes and largest values.
"""

from __future__ import annotations

import math

import numpy as np

from rpuhw._jit import njit
from rpuhw.periphery.absmax import INF_BITS, bits_to_f32, row_absmax_bits

F32_SAFE = 1e30
"""Gains up to this are applied in float32 (C |v| may overflow to inf, which clips to
p = 1 correctly); larger ones would turn into inf and 0 * inf = nan, so float64 is used."""

OK, X_NONFINITE, D_NONFINITE = 0, 1, 2
"""Status codes of :func:`signed_probabilities_kernel`."""


@njit(inline="always")
def _absmax(a, bits, p):
    """max |a[p, :]| as float64, or -1.0 when the row holds nan or inf (``bits`` is
    ``a.view(uint32)``: an integer max, which vectorises)."""
    top = row_absmax_bits(bits, p)
    if top >= INF_BITS:
        return -1.0
    return np.float64(bits_to_f32(top))


@njit(inline="always")
def _scale_rows(a, g, sign, gmax, out):
    """out[p] = clip(sign * g[p] * a[p], -1, 1); returns sum |out| (four partial sums,
    so that the additions do not wait on each other)."""
    wide = not gmax < F32_SAFE
    s0 = s1 = s2 = s3 = 0.0
    m = a.shape[1]
    for p in range(a.shape[0]):
        gp = sign * g[p]
        if wide:
            for j in range(m):
                out[p, j] = np.float32(min(max(np.float64(a[p, j]) * gp, -1.0), 1.0))
        else:
            g32 = np.float32(gp)
            for j in range(m):
                out[p, j] = min(max(a[p, j] * g32, np.float32(-1.0)), np.float32(1.0))
        j = 0
        while j + 4 <= m:
            s0 += abs(out[p, j])
            s1 += abs(out[p, j + 1])
            s2 += abs(out[p, j + 2])
            s3 += abs(out[p, j + 3])
            j += 4
        while j < m:
            s0 += abs(out[p, j])
            j += 1
    return (s0 + s1) + (s2 + s3)


@njit
def signed_probabilities_kernel(x, d, gain, um, sx, sd, stats):
    """Signed probabilities of P updates: x [P, cols], d [P, rows] -> sx, sd (float32).

    ``gain`` is C, ``um`` switches update management. ``stats`` (float64[4]) receives
    sum |sx|, sum |sd|, max p_x, max p_d. Returns :data:`OK`, or :data:`X_NONFINITE` /
    :data:`D_NONFINITE` when x or d holds nan or inf (then nothing else is valid).
    """
    n = x.shape[0]
    xb, db = x.view(np.uint32), d.view(np.uint32)
    cx = np.empty(n)
    cd = np.empty(n)
    top_x = top_d = gx_max = gd_max = 0.0
    for p in range(n):
        x_max = _absmax(x, xb, p)
        if x_max < 0.0:
            return X_NONFINITE
        d_max = _absmax(d, db, p)
        if d_max < 0.0:
            return D_NONFINITE
        if x_max > 0.0 and d_max > 0.0:
            if um:
                ratio = math.sqrt(d_max / x_max)
                cx[p], cd[p] = gain * ratio, gain / ratio
            else:
                cx[p], cd[p] = gain, gain
        else:
            cx[p], cd[p] = 0.0, 0.0
        top_x = max(top_x, min(cx[p] * x_max, 1.0))
        top_d = max(top_d, min(cd[p] * d_max, 1.0))
        gx_max = max(gx_max, cx[p])
        gd_max = max(gd_max, cd[p])
    stats[0] = _scale_rows(x, cx, 1.0, gx_max, sx)
    stats[1] = _scale_rows(d, cd, -1.0, gd_max, sd)
    stats[2] = top_x
    stats[3] = top_d
    return OK

