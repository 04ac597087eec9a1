"""The filter's step through the clip (:func:`statespace.clipped_update`), compiled.

The same function and the same derivatives as the torch version, as one compiled loop
forward, which also forms each chain's 3 x 4 Jacobian (three adjoints at the same
intermediates: the normal CDFs are evaluated once), and a backward that only contracts it
with the incoming gradients; :class:`ClipStep` joins them into autograd. The torch
version runs about 45 operations forward and 90 backward over every chain at every step
of the filter's window, each a pass over memory. Padding (a step without reads) is folded
in: the state is held and the step adds nothing.

Reverse mode, written out: with ``vc = max(v, V_FLOOR)``, ``sd = sqrt(vc)``,
``z = sign (bound - a) / sd``, ``T = vc + r2``, ``mu = a + vc (y - a) / T``,
``s2 = max(vc r2 / T, V_FLOOR)``, ``S = sqrt(s2)``, ``beta = max(sign (bound - mu) / S,
Z_MIN)``, ``lam = phi(beta) / Phi(beta)``, ``e2 = mu - sign S lam``,
``v2 = s2 max(1 - beta lam - lam^2, 1e-12)``, ``c1 = log Phi(-z) + log N(y; bound, r2)``,
``c2 = log N(y; a, T) + log Phi(beta)`` (each floored at ``LL_FLOOR``),
``ll = logaddexp(c1, c2)``, ``w1 = exp(c1 - ll)``, ``mean = w1 bound + (1 - w1) e2`` and
``var = w1 (bound - mean)^2 + (1 - w1)(v2 + (e2 - mean)^2)``, each line of
:func:`_backward` is the adjoint of one of these (``d log Phi(x) / dx = phi(x) / Phi(x)``;
a floor passes its gradient where its argument is at or above it, as torch's
``clamp_min`` does). ``tests/test_clip_kernel.py`` checks values and gradients against the
torch version (autograd) over random, near-bound, beyond-bound and extreme inputs.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from rpuhw._jit import HAVE_NUMBA, njit
from rpuhw.calibration.statespace import LL_FLOOR, LOG2PI, V_FLOOR, Z_MIN

SQRT1_2 = math.sqrt(0.5)
Q_FLOOR = 1e-12
"""Floor of the truncated part's variance factor (as in the torch version)."""


@njit
def _log_ndtr(x: float) -> float:
    """``log Phi(x)``: ``log1p(-Phi(-x))`` above -1, ``log(erfc(-x / sqrt 2) / 2)`` down to
    -30, below the asymptotic series (terms to ``x^-12``: relative error under 1e-16)."""
    if x > -1.0:
        return math.log1p(-0.5 * math.erfc(x * SQRT1_2))
    if x > -30.0:
        return math.log(0.5 * math.erfc(-x * SQRT1_2))
    x2 = 1.0 / (x * x)
    series = 1.0 + x2 * (-1.0 + x2 * (3.0 + x2 * (-15.0 + x2 * (105.0 + x2 * (
        -945.0 + x2 * 10395.0)))))
    return -0.5 * x * x - math.log(-x) - 0.5 * LOG2PI + math.log(series)


@njit
def _logaddexp(a: float, b: float) -> float:
    hi = max(a, b)
    return hi + math.log1p(math.exp(-abs(a - b)))


BETA_FAR = 20.0
"""Above this ``beta`` the truncated part is the whole normal: ``log Phi(beta)`` is
``-Phi(-beta)`` (below 3e-89) and ``lambda`` below 6e-88, both far below a double's
resolution of the values they enter, so they are taken as 0 (no normal CDF evaluated)."""
C1_FAR = 50.0
"""The point mass's explanation is dropped when a bound on its log-density,
``-z^2 / 2 - log(2 pi) / 2 + log N(y; bound, r2)`` (Mills: ``Phi(-z) <= phi(z) / z`` for
``z >= 1``), is more than this many nats below the other's: its weight is then below 2e-22,
below a double's resolution of ``log p(y)`` and of the moments. Far from the bounds (most
steps) this skips both normal CDFs, and the compiled step costs a few operations."""


@njit
def _step(a, v, b, s, y, R):
    """Every intermediate of the step at one chain (module docstring), and whether the
    point mass (``clip``) and the truncation (``trunc``) were evaluated."""
    vc = max(v, V_FLOOR)
    sd = math.sqrt(vc)
    z = s * (b - a) / sd
    dyb = y - b
    l1 = -0.5 * (dyb * dyb / R + math.log(R) + LOG2PI)
    T = vc + R
    dya = y - a
    ln2 = -0.5 * (dya * dya / T + math.log(T) + LOG2PI)
    g = vc / T
    mu = a + g * dya
    s2raw = vc * R / T
    s2 = max(s2raw, V_FLOOR)
    S = math.sqrt(s2)
    braw = s * (b - mu) / S
    beta = max(braw, Z_MIN)
    trunc = beta <= BETA_FAR
    lc, lam = 0.0, 0.0
    if trunc:
        lc = _log_ndtr(beta)
        lam = math.exp(-0.5 * beta * beta - 0.5 * LOG2PI - lc)
    e2 = mu - s * S * lam
    qraw = 1.0 - beta * lam - lam * lam
    q = max(qraw, Q_FLOOR)
    v2 = s2 * q
    c2raw = ln2 + lc
    c2 = max(c2raw, LL_FLOOR)
    xz = -z
    xzc = max(xz, Z_MIN)
    clip = not (xzc <= -1.0 and c2raw > LL_FLOOR
                and -0.5 * xzc * xzc - 0.5 * LOG2PI + l1 < c2 - C1_FAR)
    lpc, c1raw, c1, ll, w1, w2e = 0.0, LL_FLOOR, LL_FLOOR, c2, 0.0, 1.0
    if clip:
        lpc = _log_ndtr(xzc)
        c1raw = lpc + l1
        c1 = max(c1raw, LL_FLOOR)
        ll = _logaddexp(c1, c2)
        w1 = math.exp(c1 - ll)
        w2e = math.exp(c2 - ll)
    w2 = 1.0 - w1
    mean = w1 * b + w2 * e2
    return (vc, sd, z, xz, xzc, lpc, dyb, T, dya, g, s2raw, s2, S, braw, beta, lc, lam, e2,
            qraw, q, v2, c1raw, c2raw, ll, w1, w2e, w2, mean, clip)


@njit
def _adjoint(g_ll, g_mean, g_var, s, b, R, st, v):
    """The gradient of ``g_ll ll + g_mean mean + g_var var`` with respect to
    ``(a, v, bound, r2)`` at one chain, from the intermediates ``st`` of :func:`_step`
    (each line the adjoint of one line of the forward)."""
    (vc, sd, z, xz, xzc, lpc, dyb, T, dya, g, s2raw, s2, S, braw, beta, lc, lam, e2,
     qraw, q, v2, c1raw, c2raw, ll, w1, w2e, w2, mean, clip) = st
    T2 = T * T
    dB, de = b - mean, e2 - mean
    varraw = w1 * dB * dB + w2 * (v2 + de * de)
    gvr = g_var if varraw >= V_FLOOR else 0.0
    gmean = g_mean + gvr * (-2.0 * w1 * dB - 2.0 * w2 * de)
    gw1 = gvr * (dB * dB - v2 - de * de) + gmean * (b - e2)
    gB = gvr * 2.0 * w1 * dB + gmean * w1
    ge2 = gvr * 2.0 * w2 * de + gmean * w2
    gv2 = gvr * w2
    gll = g_ll - gw1 * w1              # w1 = exp(c1 - ll)
    gc1 = gw1 * w1 + gll * w1          # ll = logaddexp(c1, c2)
    gc2 = gll * w2e
    if c1raw < LL_FLOOR or not clip:
        gc1 = 0.0
    if c2raw < LL_FLOOR:
        gc2 = 0.0
    gs2 = gv2 * q                      # v2 = s2 q
    gq = gv2 * s2 if qraw >= Q_FLOOR else 0.0
    gbeta = -gq * lam                  # q = 1 - beta lam - lam^2
    glam = gq * (-beta - 2.0 * lam)
    gmu = ge2                          # e2 = mu - sign S lam
    gS = -ge2 * s * lam
    glam += -ge2 * s * S
    gbeta += -glam * lam * beta        # lam = exp(-beta^2/2 - log 2pi / 2 - lc)
    glc = gc2 - glam * lam
    gbeta += glc * lam                 # lc = log Phi(beta)
    if braw < Z_MIN:
        gbeta = 0.0
    gB += gbeta * s / S                # beta = sign (bound - mu) / S
    gmu += -gbeta * s / S
    gS += -gbeta * braw / S
    gs2 += gS / (2.0 * S)
    if s2raw < V_FLOOR:
        gs2 = 0.0
    gvc = gs2 * R * R / T2             # s2 = vc r2 / T
    gR = gs2 * vc * vc / T2
    gA = gmu * (1.0 - g)               # mu = a + vc (y - a) / T
    gvc += gmu * dya * R / T2
    gR += -gmu * dya * vc / T2
    gA += gc2 * dya / T                # ln2
    gT = gc2 * 0.5 * (dya * dya / T2 - 1.0 / T)
    gvc += gT
    gR += gT
    if gc1 != 0.0:
        gB += gc1 * dyb / R            # l1
        gR += gc1 * 0.5 * (dyb * dyb / (R * R) - 1.0 / R)
        gxz = gc1 * math.exp(-0.5 * xzc * xzc - 0.5 * LOG2PI - lpc)  # lpc = log Phi(-z)
        if xz < Z_MIN:
            gxz = 0.0
        gB += -gxz * s / sd            # z = sign (bound - a) / sd
        gA += gxz * s / sd
        gsd = gxz * z / sd
        gvc += gsd / (2.0 * sd)
    return gA, (gvc if v >= V_FLOOR else 0.0), gB, gR


@njit
def _forward(a, v, bound, sign, y, r2, obs, m_prev, var_prev, ll_out, mean_out, var_out,
             jac):
    """Outputs and, where ``jac`` has rows, their Jacobian ``[n, 3 (ll, mean, var), 4 (a,
    v, bound, r2)]`` (three adjoints at the same intermediates: cheaper than evaluating
    the normal CDFs again in the backward pass)."""
    want_jac = jac.shape[0] > 0
    for i in range(a.shape[0]):
        if not obs[i]:
            ll_out[i], mean_out[i], var_out[i] = 0.0, m_prev[i], var_prev[i]
            if want_jac:
                jac[i, :, :] = 0.0
            continue
        b, s, R = bound[i], sign[i], r2[i]
        st = _step(a[i], v[i], b, s, y[i], R)
        e2, v2, ll, w1, w2, mean = st[17], st[20], st[23], st[24], st[26], st[27]
        dB, de = b - mean, e2 - mean
        ll_out[i] = ll
        mean_out[i] = mean
        var_out[i] = max(w1 * dB * dB + w2 * (v2 + de * de), V_FLOOR)
        if want_jac:
            for k in range(3):
                ga, gv, gb, gr = _adjoint(1.0 if k == 0 else 0.0, 1.0 if k == 1 else 0.0,
                                          1.0 if k == 2 else 0.0, s, b, R, st, v[i])
                jac[i, k, 0] = ga
                jac[i, k, 1] = gv
                jac[i, k, 2] = gb
                jac[i, k, 3] = gr


@njit
def _backward(obs, jac, g_ll, g_mean, g_var, ga, gv, gb, gr2, gm_prev, gvar_prev):
    for i in range(obs.shape[0]):
        if not obs[i]:
            ga[i] = gv[i] = gb[i] = gr2[i] = 0.0
            gm_prev[i], gvar_prev[i] = g_mean[i], g_var[i]
            continue
        gm_prev[i] = gvar_prev[i] = 0.0
        x, m, w = g_ll[i], g_mean[i], g_var[i]
        ga[i] = x * jac[i, 0, 0] + m * jac[i, 1, 0] + w * jac[i, 2, 0]
        gv[i] = x * jac[i, 0, 1] + m * jac[i, 1, 1] + w * jac[i, 2, 1]
        gb[i] = x * jac[i, 0, 2] + m * jac[i, 1, 2] + w * jac[i, 2, 2]
        gr2[i] = x * jac[i, 0, 3] + m * jac[i, 1, 3] + w * jac[i, 2, 3]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class ClipStep(torch.autograd.Function):
    """``(log p(y), mean, var)`` of :func:`statespace.clipped_update` where ``obs``, and
    ``(0, m_prev, var_prev)`` (the state held) where not; float64 tensors of one shape."""

    @staticmethod
    def forward(ctx, a, v, bound, r2, m_prev, var_prev, sign, y, obs):
        n = a.shape[0]
        need = any(x.requires_grad for x in (a, v, bound, r2, m_prev, var_prev))
        jac = np.empty((n if need else 0, 3, 4))
        out = [np.empty(n) for _ in range(3)]
        _forward(*(_np(x) for x in (a, v, bound, sign, y, r2, obs, m_prev, var_prev)),
                 *out, jac)
        ctx.jac, ctx.obs = jac, _np(obs)
        return tuple(torch.from_numpy(o) for o in out)

    @staticmethod
    def backward(ctx, g_ll, g_mean, g_var):
        n = ctx.obs.shape[0]
        grads = [np.zeros(n) if g is None else _np(g) for g in (g_ll, g_mean, g_var)]
        out = [np.empty(n) for _ in range(6)]
        _backward(ctx.obs, ctx.jac, *grads, *out)
        ga, gv, gb, gr2, gm, gvp = (torch.from_numpy(o) for o in out)
        return ga, gv, gb, gr2, gm, gvp, None, None, None


def clip_step(a: torch.Tensor, v: torch.Tensor, bound: torch.Tensor, sign: torch.Tensor,
              y: torch.Tensor, r2: torch.Tensor, obs: torch.Tensor, m_prev: torch.Tensor,
              var_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One filter step of every chain: the compiled :class:`ClipStep` (``None`` when numba
    is missing; the caller then runs the torch version)."""
    n = a.shape[0]
    bound, r2, sign = (x.expand(n) for x in (bound, r2, sign))
    return ClipStep.apply(a, v, bound, r2, m_prev, var_prev, sign, y, obs)


AVAILABLE = HAVE_NUMBA
"""Whether :func:`clip_step` is compiled (numba present)."""
