"""Largest magnitude per row of float32 data (noise and update management's ``max |v|``).

Non-negative float32 values order like their uint32 bit patterns, so an integer max
over ``bits & 0x7FFFFFFF`` (which vectorises, unlike a float max that must respect nan)
gives the float max, and a result of at least :data:`INF_BITS` says the row holds nan
or inf: one pass both scales and validates.
"""

from __future__ import annotations

import numpy as np
import torch

from rpuhw._jit import HAVE_NUMBA, njit

INF_BITS = np.uint32(0x7F800000)
"""Bit pattern of +inf: |x| as uint32 bits is at least this exactly when x is nan or inf."""


@njit(inline="always")
def row_absmax_bits(bits, k):
    """max |a[k, j]| of float32 ``a`` as the uint32 bit pattern (``bits = a.view(uint32)``);
    a result >= :data:`INF_BITS` means the row holds nan or inf."""
    top = np.uint32(0)
    for j in range(bits.shape[1]):
        top = max(top, bits[k, j] & np.uint32(0x7FFFFFFF))
    return top


@njit(inline="always")
def bits_to_f32(b):
    """The float32 whose bit pattern is the uint32 ``b``."""
    return np.array([b], dtype=np.uint32).view(np.float32)[0]


@njit
def _row_absmax_kernel(a):
    n, m = a.shape
    out = np.zeros(n, dtype=np.float32)
    for i in range(n):
        top = np.float32(0.0)
        for j in range(m):
            v = abs(a[i, j])
            if v > top:
                top = v
        out[i] = top
    return out


def row_absmax(a: torch.Tensor) -> torch.Tensor:
    """``max_j |a[i, j]|`` per row of a float32 CPU tensor ``[n, m]`` (0 for empty rows)."""
    if a.shape[1] == 0:
        return torch.zeros(a.shape[0])
    if HAVE_NUMBA and a.dtype == torch.float32:
        return torch.from_numpy(_row_absmax_kernel(np.ascontiguousarray(a.numpy())))
    return a.abs().amax(dim=1)


def as_f32_array(a: torch.Tensor) -> np.ndarray:
    """A C-contiguous float32 numpy view (or copy) of a CPU tensor."""
    if a.dtype is not torch.float32 or a.requires_grad:
        a = a.detach().to("cpu", torch.float32)
    out = a.numpy()
    return out if out.flags.c_contiguous else np.ascontiguousarray(out)
