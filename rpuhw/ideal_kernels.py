"""Compiled kernels of the ``ideal`` backend (:mod:`rpuhw.ideal`): its native hooks.

Both kernels compute exactly what the generic paths compute through the contract, only
without the Python and tensor overhead between the steps:

* :func:`coincidence_update_kernel` (the contract's ``update`` of packed pulse trains):
  device ``(i, j)`` of an ideal array changes by exactly
  ``dw * (up coincidences - down coincidences)`` summed over every slot of every update
  of the call, with no bounds and no noise. A coincidence in slot ``t`` of update ``p``
  is a slot where both lines carry a bit (``x_nz[p, j] & d_nz[p, i]``, bit ``t``); it is
  *up* when the two bits have the same sign (``x_pos`` and ``d_pos`` agree), *down*
  otherwise, so the net count is ``popcount(co) - 2 popcount(co & (x_pos ^ d_pos))``.
  The weight is then ``w + float32(dw) * float32(count)`` in float32, the arithmetic of
  the tensor path ``w += dw * (d_bits^T @ x_bits)`` (where the float32 matmul of
  {-1, 0, 1} entries is an exact integer).
* :func:`mvm_prepare_kernel` and :func:`mvm_finish_kernel` (the periphery's managed
  MVM, :meth:`~rpuhw.periphery.Periphery.forward`/``backward``): noise management's
  ``s = max_j |v_j|``, the array's inputs ``v / s`` of the vectors that are not all
  zero (float32 division), and after the product (a torch matmul, the array's own
  ``forward``/``backward``) the outputs ``y s`` and bound management's saturation test
  ``|y_i| >= float32(bound (1 - SAT_RTOL))``, as the periphery's generic path does them.

No randomness here: the pulse trains come from :mod:`rpuhw.periphery.encode`.
"""

from __future__ import annotations

import numpy as np

from rpuhw._jit import njit
from rpuhw.periphery.absmax import INF_BITS, bits_to_f32, row_absmax_bits
from rpuhw.sim.kernels import popcount  # (the simulator's; numba inlines it)

NONFINITE = -1
"""Returned by :func:`mvm_prepare_kernel` when the input holds nan or inf."""


@njit
def coincidence_update_kernel(x_nz, x_pos, d_nz, d_pos, w, dw, counts):
    """``w[i, j] += float32(dw) * (up - down coincidences of device (i, j))`` over all
    P updates of the packed masks (uint64 ``x_* [P, cols]``, ``d_* [P, rows]``).

    ``w`` is float32 ``[rows, cols]`` (updated in place), ``counts`` an int64
    ``[rows, cols]`` work array (overwritten with the net counts). Every weight gets its
    one addition, zero counts included (as the tensor path adds ``dw * 0``).
    """
    n_updates = x_nz.shape[0]
    rows, cols = w.shape
    for i in range(rows):
        for j in range(cols):
            counts[i, j] = 0
        for p in range(n_updates):
            dn = d_nz[p, i]
            if dn == 0:  # no pulse on this row line: nothing coincides
                continue
            dp = d_pos[p, i]
            for j in range(cols):
                co = dn & x_nz[p, j]
                counts[i, j] += popcount(co) - 2 * popcount(co & (dp ^ x_pos[p, j]))
    step = np.float32(dw)
    for i in range(rows):
        for j in range(cols):
            w[i, j] = w[i, j] + step * np.float32(counts[i, j])


@njit
def mvm_prepare_kernel(v, nm, xn, scale, idx):
    """The inputs the array sees, in the generic path's order.

    For every vector ``k`` of float32 ``v [N, n_in]``: with noise management (``nm``)
    vectors with ``s = max_j |v[k, j]| > 0`` are *live*; their ``v[k] / s`` go to the
    next row ``r`` of ``xn``, with ``scale[r] = s`` and ``idx[r] = k`` (all-zero vectors
    get no array cycle). Without ``nm`` every vector is live with scale 1 and ``xn`` is
    not written (the array sees ``v`` itself). Returns the number of live vectors, or
    :data:`NONFINITE` (nothing meaningful written) when ``v`` holds nan or inf.
    """
    n = v.shape[0]
    bits = v.view(np.uint32)
    live = 0
    for k in range(n):
        top_bits = row_absmax_bits(bits, k)
        if top_bits >= INF_BITS:
            return NONFINITE
        if not nm:
            scale[live] = 1.0
            idx[live] = k
            live += 1
            continue
        top = bits_to_f32(top_bits)
        if top == 0.0:
            continue
        scale[live] = top
        idx[live] = k
        for j in range(v.shape[1]):
            xn[live, j] = v[k, j] / top
        live += 1
    return live


@njit
def mvm_finish_kernel(y, scale, idx, limit, bm, out, sat):
    """``out[idx[r]] = y[r] * scale[r]`` for the ``len(y)`` live vectors (float32; the
    other rows of ``out`` are left as they are) and, with bound management (``bm``),
    the saturated ones: ``sat[r]`` is True when some ``|y[r, i]| >= limit`` (``limit``
    float32). Returns the number of saturated vectors (0 without ``bm``)."""
    n_sat = 0
    for r in range(y.shape[0]):
        s = scale[r]
        k = idx[r]
        hit = False
        for i in range(y.shape[1]):
            yi = y[r, i]
            out[k, i] = yi * s
            hit |= abs(yi) >= limit
        sat[r] = bm and hit
        n_sat += sat[r]
    return n_sat
