"""The torch update path: closed forms per rank-1 update, composed over P updates.

Every pulse of an affine model (declared ``affine_step``; the coefficients come from its
step and noise rules, :meth:`DeviceModel.affine`) is a *clamped affine map* of the weight,

.. math::  f(w) = \\min(h, \\max(l, a w + b)),\\quad a \\ge 0,

and these maps are closed under composition:

.. math::  f_2 \\circ f_1 = (a_2 a_1,\\; a_2 b_1 + b_2,\\;
           \\mathrm{clip}(a_2 l_1 + b_2, l_2, h_2),\\; \\mathrm{clip}(a_2 h_1 + b_2, l_2, h_2)).

So the n pulses a device gets in one rank-1 update are one map (for a step that does not
depend on w, such as ``constant_step``'s, in closed form: a shift by
:math:`n\\Delta + \\sigma\\Delta\\sqrt{n}\\,\\xi`, then the clip), and the P updates of a
batch reduce to one map per device by a pairwise tree in :math:`\\lceil\\log_2 P\\rceil`
vectorised steps. Models whose step is not affine fall back to a loop over updates,
vectorised over devices, each pulse through the model's rules (:meth:`DeviceModel.pulse`).
Coincidence counts come from two batched matmuls on the bit tensors.
"""

from __future__ import annotations

import torch

from rpuhw.devices.base import DeviceModel, State

BIG = 1e30
"""Stands for an unbounded clip limit (finite, so 0 * BIG stays 0)."""

CHUNK_ELEMENTS = 1 << 23
"""Updates are processed in chunks of about this many (update x device) entries."""


def coincidence_counts(x_bits: torch.Tensor, d_bits: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Up and down pulse counts [P, rows, cols] of each device in each update."""
    xf = x_bits.float()
    df = d_bits.float().transpose(1, 2)
    signed = torch.bmm(df, xf)
    total = torch.bmm(df.abs(), xf.abs())
    return (total + signed) * 0.5, (total - signed) * 0.5


def update_torch(model: DeviceModel, state: State, w: torch.Tensor, x_bits: torch.Tensor,
                 d_bits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply P updates to ``w`` exactly (in distribution); returns the new weights."""
    P = x_bits.shape[0]
    rows, cols = w.shape
    chunk = max(1, CHUNK_ELEMENTS // (rows * cols))
    for start in range(0, P, chunk):
        xb, db = x_bits[start:start + chunk], d_bits[start:start + chunk]
        n_up, n_down = coincidence_counts(xb, db)
        mixed = ((n_up > 0) & (n_down > 0)).flatten(1).any(1)
        if mixed.any():
            # directions change within these updates: replace each by BL updates that
            # keep one slot each (the same pulses in the same order), then recount
            xb, db = _split_slots(xb, mixed), _split_slots(db, mixed)
            n_up, n_down = coincidence_counts(xb, db)
        w = apply_counts(model, state, w, n_up + n_down, n_up > 0, gen)
    return w


def pulsed_devices(x_bits: torch.Tensor, d_bits: torch.Tensor) -> torch.Tensor:
    """Which devices [rows, cols] get at least one pulse from the updates (bool)."""
    total = torch.einsum("pti,ptj->ij", d_bits.abs().float(), x_bits.abs().float())
    return total > 0


def write_noise(model: DeviceModel, state: State, hidden: torch.Tensor, visible: torch.Tensor,
                pulsed: torch.Tensor | None, gen: torch.Generator) -> torch.Tensor:
    """aihwkit's write noise: the new visible weights, ``hidden + wn xi`` (one fresh normal
    per device, ``wn`` = :attr:`DeviceModel.write_noise`) where ``pulsed``, the old visible
    weights elsewhere. ``pulsed=None``: every device (``applyUpdateWriteNoise``, after a set or
    a decay); otherwise a model with :attr:`DeviceModel.write_noise_skips_pinned` leaves a
    pulsed device whose bounds coincide as it was (its ``update_once`` returns early)."""
    fresh = hidden + model.write_noise * torch.randn(hidden.shape, generator=gen)
    if pulsed is None:
        return fresh
    if model.write_noise_skips_pinned:
        pulsed = pulsed & (state["w_max"] > state["w_min"])
    return torch.where(pulsed, fresh, visible)


def _split_slots(bits: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """Replace update p (where ``which[p]``) by BL copies, copy t keeping only slot t."""
    P, BL, L = bits.shape
    eye = torch.eye(BL, dtype=bits.dtype)
    parts = []
    for p in range(P):
        parts.append(bits[p] * eye[:, :, None] if which[p] else bits[p][None])
    return torch.cat(parts)


def apply_counts(model: DeviceModel, state: State, w: torch.Tensor, n: torch.Tensor,
                 up: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply updates given as pulse counts ``n`` [P, rows, cols] in direction ``up``."""
    coef = model.affine(state)
    if coef is None:
        return _loop(model, state, w, n, up, gen)
    a, b, l, h = _compose(*_affine_maps(model, state, coef, n, up, gen))
    return torch.minimum(torch.maximum(a * w + b, l), h)


def _affine_maps(model, state, coef, n, up, gen):
    """Per-update clamped affine maps (a, b, l, h), each [P, rows, cols].

    One pulse maps w to ``w + beta + alpha w + (s_beta + s_alpha w) xi`` (coefficients of
    its direction, :meth:`DeviceModel.affine`), then clips to the device's bounds.
    """
    c_up, c_down = coef
    lo, hi = state["w_min"], state["w_max"]
    noisy = model.noisy
    active = n > 0
    beta, s_beta = torch.where(up, c_up.beta, c_down.beta), torch.where(up, c_up.s_beta,
                                                                        c_down.s_beta)
    if not any(t.any() for t in (c_up.alpha, c_down.alpha, c_up.s_alpha, c_down.s_alpha)):
        # constant increment: n pulses add n beta + s_beta sqrt(n) xi exactly (a sum of n
        # Gaussians), then one clip (all steps share a sign)
        shift = n * beta
        if noisy:
            shift = shift + s_beta * n.sqrt() * torch.randn(n.shape, generator=gen)
        b = torch.where(active, shift, 0.0)
        return (torch.ones_like(b), b, torch.where(active, lo, -BIG),
                torch.where(active, hi, BIG))
    alpha, s_alpha = torch.where(up, c_up.alpha, c_down.alpha), torch.where(up, c_up.s_alpha,
                                                                            c_down.s_alpha)
    # general affine step: compose the k-th pulse of every device that has >= k pulses,
    # working only on those entries (most devices get 0 or 1 pulse per update)
    idx = active.nonzero(as_tuple=True)
    n_a, al, be, s_al, s_be = n[idx], alpha[idx], beta[idx], s_alpha[idx], s_beta[idx]
    lo_a, hi_a = lo.expand_as(n)[idx], hi.expand_as(n)[idx]
    a_a = torch.ones_like(al)
    b_a = torch.zeros_like(al)
    l_a = torch.full_like(al, -BIG)
    h_a = torch.full_like(al, BIG)
    sub = torch.arange(n_a.numel())
    for k in range(1, int(n.max()) + 1):
        sub = sub[n_a[sub] >= k]
        xi = torch.randn(sub.shape, generator=gen) if noisy else torch.zeros(sub.shape)
        # 1 + (...): one rounding per pulse that varies with xi (1 + al rounded once would
        # bias every pulse of a device alike, and with it a soft bound's fixed point)
        ak = (1.0 + (al[sub] + s_al[sub] * xi)).clamp_min(0.0)
        bk = be[sub] + s_be[sub] * xi
        lo_s, hi_s = lo_a[sub], hi_a[sub]
        a_a[sub], b_a[sub] = ak * a_a[sub], ak * b_a[sub] + bk
        l_a[sub] = torch.minimum(torch.maximum(ak * l_a[sub] + bk, lo_s), hi_s)
        h_a[sub] = torch.minimum(torch.maximum(ak * h_a[sub] + bk, lo_s), hi_s)
    a = torch.ones_like(alpha)
    b = torch.zeros_like(alpha)
    l = torch.full_like(alpha, -BIG)
    h = torch.full_like(alpha, BIG)
    a[idx], b[idx], l[idx], h[idx] = a_a, b_a, l_a, h_a
    return a, b, l, h


def _compose(a, b, l, h):
    """Reduce maps [P, ...] (applied in order of P) to one map [...] by a pairwise tree."""
    while a.shape[0] > 1:
        if a.shape[0] % 2:
            # compose the last two first so the count becomes even
            last = _pair(a[-2], b[-2], l[-2], h[-2], a[-1], b[-1], l[-1], h[-1])
            a, b, l, h = (torch.cat([t[:-2], s[None]])
                          for t, s in zip((a, b, l, h), last, strict=True))
            continue
        a, b, l, h = _pair(a[0::2], b[0::2], l[0::2], h[0::2], a[1::2], b[1::2], l[1::2],
                           h[1::2])
    return a[0], b[0], l[0], h[0]


def _pair(a1, b1, l1, h1, a2, b2, l2, h2):
    """``f2 o f1`` for clamped affine maps."""
    return (a2 * a1, a2 * b1 + b2, torch.minimum(torch.maximum(a2 * l1 + b2, l2), h2),
            torch.minimum(torch.maximum(a2 * h1 + b2, l2), h2))


def _loop(model, state, w, n, up, gen):
    """Non-affine models: updates in order, the k-th pulse of all devices at once."""
    noisy, pulse = model.noisy, model.pulser(state)
    nmax = n.amax(dim=(1, 2)).to(torch.int64).tolist()
    for p, m in enumerate(nmax):
        for k in range(m):
            act = n[p] > k
            xi = torch.randn(w.shape, generator=gen) if noisy else torch.zeros_like(w)
            w = torch.where(act, pulse(w, up[p], xi), w)
    return w
