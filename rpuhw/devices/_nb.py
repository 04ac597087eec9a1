"""numba helpers shared by the models' one-pulse rules."""

from __future__ import annotations

from rpuhw._jit import njit


@njit(inline="always")
def move(w, up, step, prm, i, j):
    """``w + step`` (up) or ``w - step`` (down), clipped to device (i, j)'s bounds.

    ``prm[2]`` and ``prm[3]`` are the per-device ``w_min`` and ``w_max``.
    """
    w = w + step if up else w - step
    if w < prm[2, i, j]:
        w = prm[2, i, j]
    if w > prm[3, i, j]:
        w = prm[3, i, j]
    return w
