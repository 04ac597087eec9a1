"""Stochastic pulse-train encoding: probabilities and signs -> bits.

The periphery turns every input value ``x_j`` (and error value ``d_i``) of an
update into a train of ``BL`` slots; each slot carries the line's sign with
probability ``p`` and is empty otherwise, independently of every other slot
and line. Two encoders give the same distribution:

* :func:`encode_packed` (numba): writes the packed masks of
  :class:`~rpuhw.periphery.bits.PackedBits` directly (bit t = slot t), with no int8
  tensor in between.
* :func:`encode_torch`: ``torch.rand(...) < p``, giving int8 bits; used when
  numba is missing or ``BL > 64``.

Both take *signed probabilities* ``a = sign * p`` (``|a| <= 1``): the bits of a
line are ``sign(a)`` times one Bernoulli(``|a|``) draw per slot.

Random numbers of the compiled encoder
--------------------------------------
Line ``k`` of a call is ``k = p * (cols + rows) + j`` for input line ``j`` of
update ``p`` and ``k = p * (cols + rows) + cols + i`` for error line ``i``.
Its slots come from its own splitmix64 stream: the ``ceil(BL / 2)`` words at
positions ``k * ceil(BL / 2) + 1, ...`` of the splitmix64 sequence that starts
at ``stream_seed(seed, 0)``. splitmix64's state after ``n`` steps is
``s0 + n * golden``, so every line jumps straight to its segment; the segments
are disjoint, and the result depends only on ``seed`` and the data, never on
the number of threads. Each 64-bit word serves two slots: slot ``2w`` takes its
high 32 bits ``u``, slot ``2w + 1`` its low 32 bits, and a slot is on when
``u < floor(p * 2**32)`` -- probability ``p`` to within ``2**-32``; ``p = 1``
gives a threshold of ``2**32`` (always on), ``p = 0`` never. The comparison is
branch-free (the borrow of ``u - threshold``), and lines are processed in
blocks of updates so that the compiler can interleave many independent
streams; blocks run in parallel for large calls and on one thread for small
ones (fewer than ``SERIAL_SLOTS`` slots), with bit-identical results.
"""

from __future__ import annotations

import numpy as np
import torch

from rpuhw._jit import HAVE_NUMBA, njit, prange
from rpuhw.periphery.absmax import as_f32_array, row_absmax
from rpuhw.periphery.bits import MAX_BL, PackedBits
from rpuhw.periphery.rng import GOLDEN, mix, stream_seed

__all__ = ["HAVE_NUMBA", "MAX_BL", "as_f32_array", "encode_kernel", "encode_kernel_serial",
           "encode_packed", "encode_packed_np", "encode_torch", "row_absmax"]

_TWO32 = 4294967296.0
_LOW32 = np.uint64(0xFFFFFFFF)
_BLOCK = 32
"""Updates per block of the compiled encoder (one block per parallel task)."""
_ALWAYS = np.uint64(4294967296)
"""Threshold of p = 1: every 32-bit uniform is below it."""
SERIAL_SLOTS = 1_000_000
"""Calls with fewer slots (P * lines * BL) than this run on one thread."""


@njit(inline="always")
def _threshold(a):
    """``floor(|a| * 2**32)`` with ``|a|`` clipped to 1, as uint64."""
    # via int64: x86 has no direct float -> uint64 conversion (values are <= 2**32)
    return np.uint64(np.int64(min(abs(np.float64(a)), 1.0) * _TWO32))


@njit
def _draw(thr, start, m, nw):
    """The hot loop: ``m[q]`` gets slot bits from line q's stream (state ``start[q]``)."""
    n = thr.shape[0]
    for w in range(nw):
        step = np.uint64(w + 1) * GOLDEN
        shift = np.uint64(2 * w)
        for q in range(n):  # independent streams: the compiler interleaves them
            r = mix(start[q] + step)
            t = thr[q]
            hi = ((r >> np.uint64(32)) - t) >> np.uint64(63)  # 1 when u < t
            lo = ((r & _LOW32) - t) >> np.uint64(63)
            m[q] |= (hi | (lo << np.uint64(1))) << shift


@njit(inline="always")
def _block_scratch(n):
    """Work arrays of one block: thresholds, stream states, line numbers, masks, draws."""
    return (np.empty(n, dtype=np.uint64), np.empty(n, dtype=np.uint64),
            np.empty(n, dtype=np.int64), np.empty(n, dtype=np.uint64),
            np.empty(n, dtype=np.uint64))


@njit(inline="always")
def _queue(a, p, base, update, L, off, s0, nw, scratch, nd):
    """Lines ``off + k`` of one update (signed probabilities ``a[p, k]``): ``m`` gets
    the mask of p = 0 (none) or p = 1 (all), and lines with 0 < p < 1 join the draw
    queue after its first ``nd`` entries. Branch-free (which lines draw depends on
    the data: a branch would be mispredicted); returns the new queue length."""
    thr, start, line, m, drawn = scratch
    for k in range(a.shape[1]):
        t = _threshold(a[p, k])
        idx = base + off + k
        m[idx] = np.uint64(0) - np.uint64(t >= _ALWAYS)  # (drawn lines: overwritten)
        thr[nd] = t
        start[nd] = s0 + np.uint64((update * L + off + k) * nw) * GOLDEN  # before word 1
        line[nd] = idx
        drawn[nd] = 0
        nd += (t != 0) & (t < _ALWAYS)
    return nd


@njit(inline="always")
def _encode_block(ax, ad, bl, s0, b, x_nz, x_pos, d_nz, d_pos, scratch):
    """Encode updates ``b * _BLOCK ...`` (one block) into the four mask arrays, using the
    work arrays ``scratch`` (:func:`_block_scratch` of at least ``_BLOCK * lines``)."""
    thr, start, line, m, drawn = scratch
    cols = ax.shape[1]
    rows = ad.shape[1]
    L = cols + rows
    nw = (bl + 1) // 2
    full = ~np.uint64(0) if bl >= 64 else (np.uint64(1) << np.uint64(bl)) - np.uint64(1)
    r0 = b * _BLOCK
    r1 = min(ax.shape[0], r0 + _BLOCK)
    # only lines with 0 < p < 1 draw: p = 0 gives no bit, p = 1 every bit (what their
    # draws would give), and a line's stream does not depend on the others
    nd = 0
    for q in range(r1 - r0):
        nd = _queue(ax, r0 + q, q * L, r0 + q, L, 0, s0, nw, scratch, nd)
        nd = _queue(ad, r0 + q, q * L, r0 + q, L, cols, s0, nw, scratch, nd)
    _draw(thr[:nd], start[:nd], drawn[:nd], nw)
    for e in range(nd):
        m[line[e]] = drawn[e]
    for q in range(r1 - r0):
        p = r0 + q
        for j in range(cols):
            mask = m[q * L + j] & full
            x_nz[p, j] = mask
            x_pos[p, j] = mask & (np.uint64(0) - np.uint64(ax[p, j] > 0))  # branch-free
        for i in range(rows):
            mask = m[q * L + cols + i] & full
            d_nz[p, i] = mask
            d_pos[p, i] = mask & (np.uint64(0) - np.uint64(ad[p, i] > 0))


@njit(parallel=True)
def encode_kernel(ax, ad, bl, seed, x_nz, x_pos, d_nz, d_pos):
    """Packed masks from signed probabilities ``ax[P, cols]``, ``ad[P, rows]`` (float32).

    Writes uint64 ``x_nz, x_pos [P, cols]`` and ``d_nz, d_pos [P, rows]``: the slots
    whose bit is non-zero, and those whose bit is +1 (lines with ``a > 0``). The
    outputs are allocated by the caller (numpy backs large arrays with huge pages,
    which makes first-touch page faults ~3x cheaper than numba's allocator).
    Parallel over blocks of updates; bit-identical to :func:`encode_kernel_serial`.
    """
    s0 = stream_seed(seed, 0)
    n = _BLOCK * (ax.shape[1] + ad.shape[1])
    for b in prange((ax.shape[0] + _BLOCK - 1) // _BLOCK):
        _encode_block(ax, ad, bl, s0, b, x_nz, x_pos, d_nz, d_pos, _block_scratch(n))


@njit
def encode_kernel_serial(ax, ad, bl, seed, x_nz, x_pos, d_nz, d_pos):
    """:func:`encode_kernel` on one thread (small calls: no parallel start-up cost)."""
    s0 = stream_seed(seed, 0)
    scratch = _block_scratch(_BLOCK * (ax.shape[1] + ad.shape[1]))
    for b in range((ax.shape[0] + _BLOCK - 1) // _BLOCK):
        _encode_block(ax, ad, bl, s0, b, x_nz, x_pos, d_nz, d_pos, scratch)


def encode_packed(ax: torch.Tensor, ad: torch.Tensor, bl: int, seed: int):
    """Encode with the compiled kernel; returns :class:`~rpuhw.periphery.bits.PackedBits`.

    Args:
        ax: signed probabilities of the input (column) lines, ``[P, cols]``.
        ad: signed probabilities of the error (row) lines, ``[P, rows]``.
        bl: slots per update, ``1 <= bl <= 64``.
        seed: call seed, ``0 <= seed < 2**64``; equal seeds give equal bits.
    """
    if not HAVE_NUMBA:
        raise RuntimeError("encode_packed needs numba (use encode_torch)")
    if not 1 <= bl <= MAX_BL:
        raise ValueError(f"bl: packed encoding takes 1..{MAX_BL} slots, got {bl}")
    return encode_packed_np(as_f32_array(ax), as_f32_array(ad), int(bl), seed)


def encode_kernel_for(slots: int):
    """The encoder for a call of ``slots`` slots: serial below :data:`SERIAL_SLOTS`."""
    return encode_kernel_serial if slots < SERIAL_SLOTS else encode_kernel


def encode_packed_np(ax: np.ndarray, ad: np.ndarray, bl: int, seed: int):
    """:func:`encode_packed` of C-contiguous float32 numpy arrays (no checks)."""
    kernel = encode_kernel_for(ax.shape[0] * (ax.shape[1] + ad.shape[1]) * bl)
    P, cols, rows = ax.shape[0], ax.shape[1], ad.shape[1]
    x_nz, x_pos = np.empty((P, cols), np.uint64), np.empty((P, cols), np.uint64)
    d_nz, d_pos = np.empty((P, rows), np.uint64), np.empty((P, rows), np.uint64)
    kernel(ax, ad, bl, np.uint64(seed), x_nz, x_pos, d_nz, d_pos)
    return PackedBits(x_nz, x_pos, d_nz, d_pos, bl)


def encode_torch(ax: torch.Tensor, ad: torch.Tensor, bl: int,
                 gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode with torch: int8 bits ``(x_bits[P, bl, cols], d_bits[P, bl, rows])``.

    Slot t of line j is ``sign(a_j)`` when ``torch.rand() < |a_j|``, else 0.
    """

    def bits(a: torch.Tensor) -> torch.Tensor:
        a = a.detach().to("cpu", torch.float32)
        u = torch.rand((a.shape[0], bl, a.shape[1]), generator=gen)
        on = u < a.abs()[:, None, :]
        return on.to(torch.int8) * torch.sign(a).to(torch.int8)[:, None, :]

    return bits(ax), bits(ad)
