"""Compiled analog MVMs of the simulator, with the periphery's management fused in.

One call does, for a batch of N vectors ``v`` (the forward ``y = W v`` or, with
``transposed``, the backward ``z = W^T v``):

1. noise management (NM), optional: ``s = max_j |v_j|``; a zero vector gives a zero
   output and no array cycle; otherwise the array sees ``v / s``;
2. the array's input stage: clip to ``±inp_bound``, DAC rounding to the grid of step
   ``inp_res * 2 * inp_bound`` (when ``inp_res`` is set);
3. the MVM (one torch matmul for the whole batch, so that torch's thread setting
   holds; small products, see :func:`small_product`, in :func:`product_kernel`), then
   per output
   ``y + out_noise * xi`` (xi standard normal), clip to ``±out_bound``, ADC rounding
   (step ``out_res * 2 * out_bound``) and clip again;
4. bound management (BM), optional: while any output of a vector reaches
   ``bm_bound * (1 - 1e-6)``, that vector's input is halved and it alone runs
   through the array again (fresh noise), at most ``max_halvings`` times;
5. the output times ``s * 2**k``.

This is exactly what :class:`~rpuhw.periphery.Periphery` does through
``array.forward`` (its generic path), in two compiled calls around one matmul instead
of a dozen tensor operations per cycle. A repeat's clean product is
``W (v / 2**k) = (W v) / 2**k`` exactly in floating point (halving is exact) when the
DAC neither clips nor rounds the halved input; otherwise the vector's product is
recomputed.

Noise: one splitmix64 stream per call (seeded by the array's generator), ziggurat
normals (:mod:`rpuhw.sim.kernels`), drawn vector by vector, output by output.
"""

from __future__ import annotations

import numpy as np
import torch

from rpuhw._jit import njit
from rpuhw.periphery.absmax import INF_BITS, bits_to_f32, row_absmax_bits
from rpuhw.periphery.io import SAT_RTOL, IOConfig, quantize
from rpuhw.periphery.rng import stream_seed
from rpuhw.sim.kernels import normal

NONFINITE = -1
"""Status returned when an input holds nan or inf (nothing is computed)."""


@njit(inline="always")
def _dac(x, inp_bound, inp_step):
    x = min(max(x, -inp_bound), inp_bound)
    if inp_step > 0.0:
        x = np.float32(np.rint(x / inp_step) * inp_step)
    return x


@njit(inline="always")
def _adc(y, out_bound, out_step):
    y = min(max(y, -out_bound), out_bound)
    if out_step > 0.0:
        y = np.float32(np.rint(y / out_step) * out_step)
        y = min(max(y, -out_bound), out_bound)
    return y


@njit
def prepare_kernel(v, nm, inp_bound, inp_res, xn, scale, live, exact):
    """Step 1-2 for every vector of ``v [N, n_in]``: the array's inputs into ``xn``.

    Fills ``scale`` (NM divisor, 1 without NM), ``live`` (False: an all-zero vector
    under NM, no cycle, zero input row) and ``exact`` (the DAC neither rounds nor clips
    this vector at any halving). Returns the number of live vectors, or
    :data:`NONFINITE` when ``v`` holds nan or inf.
    """
    n, n_in = v.shape
    inp_bound = np.float32(inp_bound)
    inp_step = np.float32(inp_res * 2.0 * inp_bound) if inp_res > 0.0 else np.float32(0.0)
    bits = v.view(np.uint32)
    n_live = 0
    for k in range(n):
        top_bits = row_absmax_bits(bits, k)
        if top_bits >= INF_BITS:  # nan or inf
            return NONFINITE
        top = bits_to_f32(top_bits)
        scale[k] = 1.0
        live[k] = True
        if nm:
            if top == 0.0:
                live[k] = False
                for j in range(n_in):
                    xn[k, j] = 0.0
                continue
            scale[k] = top
            exact[k] = inp_step == 0.0 and inp_bound >= 1.0
        else:
            exact[k] = inp_step == 0.0 and top <= inp_bound
        n_live += 1
        s = scale[k]
        if inp_step == 0.0:  # branch-free loops (they vectorise)
            if nm:
                for j in range(n_in):
                    xn[k, j] = min(max(v[k, j] / s, -inp_bound), inp_bound)
            else:
                for j in range(n_in):
                    xn[k, j] = min(max(v[k, j], -inp_bound), inp_bound)
        else:
            for j in range(n_in):
                x = v[k, j] / s if nm else v[k, j]
                xn[k, j] = _dac(x, inp_bound, inp_step)
    return n_live


SMALL_PRODUCT = 70_000
"""Transposed products of at most this many multiply-adds (``N * n_in * n_out``) are
computed here instead of by torch's matmul: for such sizes the call into the BLAS,
whose code is cold after the rest of a training step, costs more than the arithmetic
(whole rows of ``w`` at a time, which vectorises)."""

SMALL_DOT = 4_096
"""Forward products (dot products: one dependent sum per output, no vectorising
without reordering) of at most this many multiply-adds are computed here."""


def small_product(n: int, n_in: int, n_out: int, transposed: bool) -> bool:
    """Whether :func:`product_kernel` computes this product (see :data:`SMALL_PRODUCT`)."""
    return n * n_in * n_out <= (SMALL_PRODUCT if transposed else SMALL_DOT)


@njit
def product_kernel(x, w, transposed, y):
    """Clean products into ``y [N, n_out]``: ``x @ w.T`` (``w [n_out, n_in]``), or with
    ``transposed`` ``x @ w`` (``w [n_in, n_out]``), in float32 like the matmul (the
    order of the sums differs from the BLAS's: results agree to float32 rounding)."""
    n = x.shape[0]
    n_out = y.shape[1]
    if transposed:  # y[k] = sum_i x[k, i] w[i]: whole rows of w (it vectorises)
        for k in range(n):
            for j in range(n_out):
                y[k, j] = 0.0
            for i in range(x.shape[1]):
                a = x[k, i]
                for j in range(n_out):
                    y[k, j] += a * w[i, j]
    else:
        for k in range(n):
            for i in range(n_out):
                acc = np.float32(0.0)
                for j in range(x.shape[1]):
                    acc += x[k, j] * w[i, j]
                y[k, i] = acc


@njit
def finish_kernel(y, v, w, transposed, live, exact, scale, bm, bm_bound, max_halvings,
                  out_noise, inp_bound, inp_res, out_bound, out_res, seed, out, counters):
    """Steps 3-5 given the clean products ``y [N, n_out]`` of the inputs of
    :func:`prepare_kernel`; writes ``out`` and ``counters`` (int64[4]: array calls,
    vectors sent, BM halvings, unresolved vectors, as the periphery counts them).

    ``w`` is the array's ``[rows, cols]`` weights (``transposed``: the products were
    ``xn @ w``, else ``xn @ w.T``); ``y`` is overwritten where a vector is recomputed.
    """
    n, n_out = y.shape
    inp_bound = np.float32(inp_bound)
    out_bound = np.float32(out_bound)
    inp_step = np.float32(inp_res * 2.0 * inp_bound) if inp_res > 0.0 else np.float32(0.0)
    out_step = np.float32(out_res * 2.0 * out_bound) if out_res > 0.0 else np.float32(0.0)
    limit = bm_bound * (1.0 - SAT_RTOL)
    state = stream_seed(seed, 0)
    row = np.empty(n_out, dtype=np.float32)
    noise = np.zeros(n_out, dtype=np.float32)
    n_live = halvings = unresolved = deepest = 0
    for k in range(n):
        if not live[k]:
            for i in range(n_out):
                out[k, i] = 0.0
            continue
        n_live += 1
        level = 0
        factor = np.float32(1.0)
        while True:
            if level > 0 and not exact[k]:
                _recompute(v, w, transposed, k, scale[k] * factor, inp_bound, inp_step, y)
                clean_factor = np.float32(1.0)
            else:
                clean_factor = np.float32(1.0) / factor
            if out_noise > 0.0:  # the draws first, in their own tight loop
                for i in range(n_out):
                    state, g = normal(state)
                    noise[i] = np.float32(out_noise * g)
            # then branch-free arithmetic (it vectorises): the outputs, and how many
            # reach the BM limit (a count, not a max: a float max does not vectorise)
            n_sat = 0
            for i in range(n_out):
                yi = np.float32(y[k, i] * clean_factor + noise[i])
                yi = min(max(yi, -out_bound), out_bound)
                row[i] = yi
                n_sat += np.int64(abs(yi) >= limit)
            if out_step > 0.0:
                n_sat = 0
                for i in range(n_out):
                    row[i] = _adc(row[i], out_bound, out_step)
                    n_sat += np.int64(abs(row[i]) >= limit)
            saturated = n_sat > 0
            if not (bm and saturated):
                break
            if level >= max_halvings:
                unresolved += 1
                break
            level += 1
            halvings += 1
            factor = np.float32(factor * 2.0)
        deepest = max(deepest, level)
        g = scale[k] * factor
        for i in range(n_out):
            out[k, i] = row[i] * g
    counters[0] = 1 + deepest if n_live else 0
    counters[1] = n_live + halvings
    counters[2] = halvings
    counters[3] = unresolved


@njit
def _recompute(v, w, transposed, k, divisor, inp_bound, inp_step, y):
    """Clean product of vector k with input ``v[k] / divisor`` after the DAC, into y[k]."""
    n_in = v.shape[1]
    x = np.empty(n_in, dtype=np.float32)
    for j in range(n_in):
        x[j] = _dac(np.float32(v[k, j] / divisor), inp_bound, inp_step)
    if transposed:
        for i in range(y.shape[1]):
            acc = np.float32(0.0)
            for j in range(n_in):
                acc += w[j, i] * x[j]
            y[k, i] = acc
    else:
        for i in range(y.shape[1]):
            acc = np.float32(0.0)
            for j in range(n_in):
                acc += w[i, j] * x[j]
            y[k, i] = acc


def analog_mvm(x: torch.Tensor, w: torch.Tensor, io: IOConfig,
               gen: torch.Generator) -> torch.Tensor:
    """``y = clip(ADC(W DAC(x) + out_noise * xi), ±out_bound)`` for a batch x [N, in].

    ``w`` is [out, in]; pass the transposed weight for the backward pass.
    """
    x = quantize(x.clamp(-io.inp_bound, io.inp_bound), io.inp_res, io.inp_bound)
    y = x @ w.T
    if io.out_noise > 0:
        y = y + io.out_noise * torch.randn(y.shape, generator=gen)
    y = y.clamp(-io.out_bound, io.out_bound)
    return quantize(y, io.out_res, io.out_bound).clamp(-io.out_bound, io.out_bound)
