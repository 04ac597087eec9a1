"""numba helpers shared by the models' one-pulse rules."""

from __future__ import annotations

from rpuhw._jit import njit


@njit(inline="always")
def move(w, up, step, prm, i, j):
    """``w + step`` (up) or ``w - step`` (down), clipped to device (i, j)'s bounds.

    ``prm[i, j, 2]`` and ``prm[i, j, 3]`` are the per-device ``w_min`` and ``w_max``.
    """
    w = w + step if up else w - step
    if w < prm[i, j, 2]:
        w = prm[i, j, 2]
    if w > prm[i, j, 3]:
        w = prm[i, j, 3]
    return w
