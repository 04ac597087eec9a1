"""State-space likelihood of pulse-response measurements (extended Kalman filter, torch).

Generative model (the simulator's, :mod:`rpuhw.devices.base`), in the fit's normalised
conductance ``u = (g - G0) / S0``: each device ``i`` has a hidden state ``x_t``; a pulse of
direction ``d = +-1`` moves it by the model's mean step with multiplicative
cycle-to-cycle noise and clips it to the device's bounds,

.. math::  x_{t+1} = \\mathrm{clip}\\big(x_t + d\\,\\mu_d(x_t)\\,(1 + \\sigma_c\\,\\xi_t),\\;
           lo_i,\\; hi_i\\big),

and every read adds independent read noise, ``y = x_t + sigma_r eta`` (K reads of one
state are K such observations). ``mu_d`` is the device model's own step rule
(:meth:`FitModel.magnitude`, here rewritten with torch operations so autograd sees it;
``tests/test_fit_statespace.py`` checks the two agree), ``sigma_c`` = ``dw_min_std``.

Filter (per chain of reads, vectorised over all chains): Gaussian state ``N(m, P)``;
predict ``a = m + d mu(m)``, ``v = F^2 P + (sigma_c mu(m))^2`` with ``F = 1 + d mu'(m)``
(finite difference); the clip at the bound the pulse moves towards makes the state a
mixture of a point mass at the bound and a truncated normal, updated exactly with the mean
``ybar`` of the ``k`` reads of the step (variance ``sigma_r^2 / k``) and moment-matched
back to a normal (:func:`clipped_update`; the likelihood adds ``log p(ybar)`` of that
mixture, ``log N(ybar; a, v + sigma_r^2/k)`` far from the bound) and the
reads' spread about their mean, ``log`` of ``(2 pi sigma_r^2)^{-(k-1)/2}
exp(-ss / 2 sigma_r^2)`` (the constant ``-log k / 2`` is left out: it is the same for every
model and parameter). Read-noise rows (polarity 0: repeated reads of a fixed state) add
their spread term only, which pins ``sigma_r``.

Windows (composite likelihood): every half-cycle is cut into windows of ``L`` steps that
overlap by one step; each window starts from its first reads with a flat prior on the state
(``m = ybar_0``, ``P = sigma_r^2 / k_0``), i.e. the likelihood is ``sum_w log p(y_{w,1..L-1}
| y_{w,0})``. Every pulse (transition) is in exactly one window. This loses the first read
of each window (about ``1/L`` of the information) and lets the filter run ``L`` sequential
steps over ``(windows x devices)`` chains in parallel instead of thousands of steps.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from rpuhw._dynamo_deferred import defer
from rpuhw.calibration.fit_models import EXP_A, EXP_B, FitModel, Frame

LOG2PI = math.log(2.0 * math.pi)
DEBUG = False
ONE_STEP_START = ("soft_bounds", "pow_step")
"""Models whose start is refined by one-step least squares before the likelihood: those
whose step vanishes at the bounds. A hard bound's clip biases one-step least squares when
the read noise is comparable to the step (reads beyond the bound), so those start from the
step moments."""
ONE_STEP_ROUNDS = 4
"""Rounds (re-whitened L-BFGS) of the one-step least-squares start (cheap: no filter)."""
SIGMA_C_FLOOR = 1e-3
"""Least cycle-to-cycle noise (relative to the step) the fit considers."""
SIGMA_R_FLOOR = 1e-3
"""Least read noise the fit considers, relative to the median measured step (noise-free
reads would make the likelihood unbounded)."""
TOL_RELATIVE = 1e-6
"""... or less than this fraction of the log-likelihood (large data sets)."""
TOL_NATS = 0.05
"""The likelihood maximisation has converged when a round (re-whitened L-BFGS) gains
less than this many nats per data set: far below the held-out differences that decide a
model (tens to thousands of nats) and below a tenth of a standard error of any
parameter."""
DTYPE = torch.float64
BOUND_GRID = (-3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 30.0)
"""Candidate hard bounds of :meth:`Problem.search_bounds`: the device's extreme mean read
plus these multiples of max(step, read noise) (positive: beyond the reads)."""


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread inside: the filter's tensors are small, and intra-op
    threads on a busy machine cost far more (x50 measured on 2 shared cores) than they
    gain."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ---- steps and windows ----------------------------------------------------------------


@dataclass
class StepTable:
    """Every device's reads grouped into steps (one state: the reads after one pulse), in
    protocol order (device, half-cycle, pulse), normalised units."""

    dev: np.ndarray
    """Device index (fit order) of each step."""
    half: np.ndarray
    """Half-cycle id of each step (unique over devices; a new id also where a trace is cut)."""
    cycle: np.ndarray
    """Cycle number of each step."""
    pol: np.ndarray
    """Direction of the half-cycle (+1 up, -1 down)."""
    pulsed: np.ndarray
    """Whether one pulse came before this step (within its half-cycle); False for a
    half-cycle's first step and after a gap in the pulse numbers (the chain restarts)."""
    ybar: np.ndarray
    """Mean of the step's reads (u)."""
    k: np.ndarray
    """Number of reads of the step."""
    ss: np.ndarray
    """Sum of squares of the step's reads about their mean (u^2)."""
    noise_ss: np.ndarray
    """Per device: sum of squares of the read-noise rows about their group means (u^2)."""
    noise_dof: np.ndarray
    """Per device: degrees of freedom of ``noise_ss``."""

    @property
    def n_dev(self) -> int:
        return len(self.noise_ss)


def step_table(m, index: dict[int, int], g0: float, s0: float,
               segment: np.ndarray | None = None) -> StepTable:
    """The :class:`StepTable` of measurements ``m`` for the devices in ``index`` (device code
    -> fit index); ``segment``: segment number of each row (a new half-cycle id at a cut)."""
    n_dev = len(index)
    codes = np.full(int(m.device.max()) + 1 if len(m.device) else 1, -1, dtype=np.int64)
    for d, i in index.items():
        if d < len(codes):
            codes[d] = i
    fit_dev = codes[m.device]
    reads = getattr(m, "read", None)
    rd = np.zeros(len(m), dtype=np.int64) if reads is None else np.asarray(reads, np.int64)
    seg = np.zeros(len(m), dtype=np.int64) if segment is None else segment
    cyc = m.cycles()
    u_all = (m.conductance - g0) / s0
    # read-noise rows: spread about the mean of each (device, cycle, segment) group
    sel0 = np.flatnonzero((m.polarity == 0) & (fit_dev >= 0))
    noise_ss = np.zeros(n_dev)
    noise_dof = np.zeros(n_dev)
    if len(sel0):
        key = (fit_dev[sel0] * 1_000_003 + cyc[sel0]) * 1_000 + seg[sel0]
        _, grp = np.unique(key, return_inverse=True)
        n = np.bincount(grp).astype(float)
        mean = np.bincount(grp, u_all[sel0]) / n
        gdev = np.zeros(len(n), dtype=np.int64)
        gdev[grp] = fit_dev[sel0]
        np.add.at(noise_ss, gdev, np.bincount(grp, (u_all[sel0] - mean[grp]) ** 2))
        np.add.at(noise_dof, gdev, n - 1)
    sel = np.flatnonzero((m.polarity != 0) & (fit_dev >= 0))
    dev, c, pol, pul, r, s = (fit_dev[sel], cyc[sel], m.polarity[sel].astype(np.int64),
                              m.pulse[sel], rd[sel], seg[sel])
    half = 2 * c + (pol < 0)  # cycle, then up before down (as measurements.steps)
    order = np.lexsort((np.arange(len(sel)), r, pul, half, s, dev))
    dev, c, pol, pul, r, s, half = (x[order] for x in (dev, c, pol, pul, r, s, half))
    u = u_all[sel][order]
    same_read = np.r_[False, (dev[1:] == dev[:-1]) & (s[1:] == s[:-1]) & (half[1:] == half[:-1])
                      & (pul[1:] == pul[:-1]) & (r[1:] == r[:-1])]
    keep = ~same_read  # duplicate rows: the first in the file counts
    dev, c, pol, pul, s, half, u = (x[keep] for x in (dev, c, pol, pul, s, half, u))
    new_step = np.r_[True, (dev[1:] != dev[:-1]) | (s[1:] != s[:-1]) | (half[1:] != half[:-1])
                     | (pul[1:] != pul[:-1])]
    step = np.cumsum(new_step) - 1
    first = np.flatnonzero(new_step)
    k = np.bincount(step).astype(float)
    ybar = np.bincount(step, u) / k
    ss = np.bincount(step, (u - ybar[step]) ** 2)
    sdev, sc, spol, spul, sseg, shalf = (x[first] for x in (dev, c, pol, pul, s, half))
    same_half = np.r_[False, (sdev[1:] == sdev[:-1]) & (sseg[1:] == sseg[:-1])
                      & (shalf[1:] == shalf[:-1])]
    pulsed = same_half & (np.r_[0, np.diff(spul)] == 1)
    # a chain restarts at a new half-cycle, a segment cut or a gap in the pulse numbers
    hid = np.cumsum(~pulsed) - 1
    return StepTable(dev=sdev, half=hid, cycle=sc, pol=spol, pulsed=pulsed, ybar=ybar, k=k,
                     ss=ss, noise_ss=noise_ss, noise_dof=noise_dof)


@dataclass
class Windows:
    """Chains of ``L`` steps (torch tensors, [C, L]; padding has k = 0 and no pulse)."""

    index: np.ndarray
    """Step index of each entry ([C, L], -1 padding)."""
    dev: torch.Tensor
    """Device index of each chain [C]."""
    up: torch.Tensor
    """Direction of each chain (bool [C])."""
    pulse: torch.Tensor
    """1.0 where a pulse precedes the entry ([C, L])."""
    y: torch.Tensor
    """Mean read ([C, L], u)."""
    k: torch.Tensor
    """Reads ([C, L]; 0 padding)."""
    ss: torch.Tensor
    """Spread of the reads counted in this chain ([C, L])."""
    fold: np.ndarray
    """Held-out fold of each chain (0 or 1)."""
    folds_by: str
    """``cycles`` (even cycles held out) or ``windows`` (every other window held out)."""

    def __len__(self) -> int:
        return int(self.dev.shape[0])

    def take(self, mask: np.ndarray) -> Windows:
        """The chains where ``mask``."""
        t = torch.as_tensor(np.flatnonzero(mask))
        return Windows(index=self.index[mask], dev=self.dev[t], up=self.up[t],
                       pulse=self.pulse[t], y=self.y[t], k=self.k[t], ss=self.ss[t],
                       fold=self.fold[mask], folds_by=self.folds_by)

    def with_values(self, st: StepTable) -> Windows:
        """The same chains with the reads of ``st`` (same steps, e.g. simulated)."""
        y, k, ss = _gather(st, self.index)
        return Windows(index=self.index, dev=self.dev, up=self.up, pulse=self.pulse,
                       y=y, k=k, ss=ss, fold=self.fold, folds_by=self.folds_by)


def _gather(st: StepTable, index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    pad = index < 0
    j = np.where(pad, 0, index)
    y = np.where(pad, 0.0, st.ybar[j])
    k = np.where(pad, 0.0, st.k[j])
    ss = np.where(pad, 0.0, st.ss[j])
    ss[:, 0] = 0.0  # the first step of a window is counted by the window that ends there
    first_window = ~pad[:, 0] & ~st.pulsed[j[:, 0]]
    ss[first_window, 0] = st.ss[j[first_window, 0]]
    return (torch.as_tensor(y, dtype=DTYPE), torch.as_tensor(k, dtype=DTYPE),
            torch.as_tensor(ss, dtype=DTYPE))


def windows(st: StepTable, length: int) -> Windows:
    """Cut every chain (a half-cycle without gaps) into windows of ``length`` steps
    overlapping by one; a chain of one step gives a window without transitions (its
    reads' spread still counts)."""
    n = len(st.dev)
    start_chain = np.flatnonzero(np.r_[True, st.half[1:] != st.half[:-1]])
    end_chain = np.r_[start_chain[1:], n]
    size = end_chain - start_chain
    nwin = np.maximum(1, -(-(size - 1) // (length - 1)))
    chain_of = np.repeat(np.arange(len(start_chain)), nwin)
    w_in = np.arange(len(chain_of)) - np.repeat(np.cumsum(nwin) - nwin, nwin)
    start = start_chain[chain_of] + w_in * (length - 1)
    idx = start[:, None] + np.arange(length)[None, :]
    idx = np.where(idx < end_chain[chain_of][:, None], idx, -1)
    dev = st.dev[start]
    pulsed = np.where(idx >= 0, st.pulsed[np.maximum(idx, 0)], False)
    pulsed[:, 0] = False
    cycles = np.unique(st.cycle)
    if len(cycles) >= 2:
        # the even cycles are held out (fold 1) and the odd ones fitted (fold 0): the first
        # cycle's up half starts wherever the device was, mid-range, while every later
        # cycle starts at the bound the previous one ended on, so the odd cycles show the
        # fit the whole range in both directions (trained on the first cycle instead, a
        # model is scored on a range it never saw going up: at read noise one step the
        # choice was right for 4 of the tests' 6 models, now 5)
        rank = np.searchsorted(cycles, st.cycle[start])
        fold, by = 1 - rank % 2, "cycles"
    else:
        fold, by = w_in % 2, "windows"
    y, k, ss = _gather(st, idx)
    return Windows(index=idx, dev=torch.as_tensor(dev), up=torch.as_tensor(st.pol[start] > 0),
                   pulse=torch.as_tensor(pulsed, dtype=DTYPE), y=y, k=k, ss=ss,
                   fold=np.asarray(fold, dtype=np.int64), folds_by=by)


@dataclass
class Pairs:
    """Consecutive steps with one pulse between them (one-step differences, u units)."""

    dev: torch.Tensor
    up: torch.Tensor
    u: torch.Tensor
    """Mean read before the pulse."""
    du: torch.Tensor
    """Mean read after minus before."""
    before: np.ndarray
    """Step index of the earlier step."""


def pairs(st: StepTable) -> Pairs:
    """Every pulse's (before, after) pair of :class:`StepTable` steps."""
    j = np.flatnonzero(st.pulsed)
    return Pairs(dev=torch.as_tensor(st.dev[j]), up=torch.as_tensor(st.pol[j] > 0),
                 u=torch.as_tensor(st.ybar[j - 1], dtype=DTYPE),
                 du=torch.as_tensor(st.ybar[j] - st.ybar[j - 1], dtype=DTYPE), before=j - 1)


# ---- the models' step rules in torch ----------------------------------------------------


def _t(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=DTYPE)


class TorchRule:
    """The mean step magnitude ``mu_d(u)`` (u units) of a fit model in torch, per chain.

    ``prepare`` picks each chain's direction-dependent parameters once; ``magnitude``
    evaluates the rule at states ``u`` [C]. Parameter layout as :class:`FitModel`
    (``p = [lo, hi, s_up, s_dn, extras...]``, ``glob``), frame fixed."""

    def __init__(self, fm: FitModel, frame: Frame):
        self.fm, self.frame, self.name = fm, frame, fm.name

    def prepare(self, p: torch.Tensor, glob: torch.Tensor, up: torch.Tensor) -> dict:
        """Per-chain parameters: ``p`` [C, k], ``glob`` [C, k_glob], ``up`` bool [C]."""
        lo, hi = p[:, 0], p[:, 1]
        ctx = {"lo": lo, "hi": hi, "span": (hi - lo).clamp_min(1e-12),
               "s": torch.where(up, p[:, 2], p[:, 3]), "up": up}
        name = self.name
        if name == "linear_step":
            ctx["a"] = torch.where(up, p[:, 4], p[:, 5])
        elif name == "pow_step":
            ctx["gamma"] = torch.where(up, p[:, 4], p[:, 5])
        elif name == "exp_step":
            ctx["A"] = torch.where(up, torch.exp(glob[:, 0]), torch.exp(glob[:, 1]))
            ctx["g"] = torch.where(up, glob[:, 2], -glob[:, 3])
        elif name == "piecewise":
            n = self.fm.nodes
            c = n // 2
            one = torch.ones(len(up), 1, dtype=DTYPE)
            half = n - 1
            tab_up = torch.cat([glob[:, :c], one, glob[:, c:half]], dim=1)
            tab_dn = torch.cat([glob[:, half:half + c], one, glob[:, half + c:]], dim=1)
            ctx["table"] = torch.where(up[:, None], tab_up, tab_dn)
        return ctx

    def magnitude(self, u: torch.Tensor, ctx: dict) -> torch.Tensor:
        name, s = self.name, ctx["s"]
        if name == "constant_step":
            return s.expand_as(u)
        if name == "soft_bounds":
            q = torch.where(ctx["up"], ctx["hi"] - u, u - ctx["lo"]) / ctx["span"]
            return s * q
        if name == "linear_step":
            return s * (1.0 + ctx["a"] * (u - self.frame.u_ref) / self.frame.h_ref)
        if name == "pow_step":
            q = torch.where(ctx["up"], ctx["hi"] - u, u - ctx["lo"]) / ctx["span"]
            return s * q.clamp(1e-300, 1.0) ** ctx["gamma"]
        if name == "exp_step":
            z = 2.0 * EXP_A * (u - self.frame.u_ref) / ctx["span"] + EXP_B
            return s * (1.0 - ctx["A"] * torch.exp((ctx["g"] * z).clamp(max=80.0))).clamp_min(0)
        if name == "piecewise":
            n = self.fm.nodes
            frac = ((u - ctx["lo"]) / ctx["span"]).clamp(0.0, 1.0)
            pos = frac * (n - 1)
            # a NaN state (a point the solver will refuse) must not become an index
            j = pos.detach().nan_to_num(0.0).floor().clamp(0, n - 2).long()
            q = pos - j
            tab = ctx["table"]
            v0 = tab.gather(1, j[:, None])[:, 0]
            v1 = tab.gather(1, (j + 1)[:, None])[:, 0]
            return s * ((1.0 - q) * v0 + q * v1)
        raise ValueError(f"no torch step rule for {name!r}")


# ---- the filter --------------------------------------------------------------------------


Z_MIN = -1e5
"""Least argument of the normal log-CDF the filter evaluates: torch's ``log_ndtr``
gradient, ``exp(-x^2/2 - log_ndtr(x))``, is right to 1e-6 at -1e5 but loses all
precision below about -1e8 and is NaN below -1e154. Below it the log-CDF is held at
``log Phi(-1e5) = -5e9`` nats: an explanation of a read that improbable never decides
anything (the other one, or :data:`LL_FLOOR`, does)."""
V_FLOOR = 1e-30
"""Least state variance (u^2) the filter divides by (u ~ 1, steps >= 1e-6)."""
LL_FLOOR = -1e200
"""Least log-density of one step: a finite floor keeps ``logaddexp`` of two impossible
explanations (``-inf``, ``-inf``) from NaN; the optimiser sees a very bad point."""


def log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """``log Phi(x)`` with a finite, accurate gradient for ``x >= Z_MIN`` (held below)."""
    return torch.special.log_ndtr(x.clamp_min(Z_MIN))


def clipped_update(a: torch.Tensor, v: torch.Tensor, bound: torch.Tensor, sign: torch.Tensor,
                   y: torch.Tensor, r2: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the filter through the clip, exactly: the state ``X ~ N(a, v)`` is
    clipped at ``bound`` (``sign`` +1: ``min(X, bound)``, -1: ``max``), a mixture of a point
    mass at the bound (weight ``Phi(-z)``, ``z = sign (bound - a) / sqrt(v)``) and the
    normal truncated there; ``y`` is the mean of the step's reads (variance ``r2``).

    Returns ``log p(y)`` and the posterior's mean and variance (moment-matched):
    ``p(y) = Phi(-z) N(y; bound, r2) + N(y; a, v + r2) Phi(beta)`` with the unclipped
    posterior ``N(mu, s^2)``, ``mu = a + v (y - a) / (v + r2)``, ``s^2 = v r2 / (v + r2)``
    and ``beta = sign (bound - mu) / s``; the truncated part's moments are
    ``mu - sign s lambda`` and ``s^2 (1 - beta lambda - lambda^2)``,
    ``lambda = phi(beta) / Phi(beta)``. Moment matching the clipped prior and then
    updating (the former filter) treats the point mass as a narrow normal: with reads
    much finer than a step every read at the bound then looks improbable, and the fit
    bends the steps and bounds to avoid it.

    Finite in value and gradient for any finite input (the optimiser's line search tries
    bounds 1e8 steps away and variances of 1e-300): the normal log-CDF's arguments held
    at :data:`Z_MIN` and above, ``v`` floored at :data:`V_FLOOR`, both explanations'
    log-densities at :data:`LL_FLOOR`. (Where ``beta < -30`` the truncated part's variance
    factor ``1 - beta lambda - lambda^2`` cancels and is floored at 1e-12; its weight is
    then below ``exp(-450)`` of the point mass's unless both are improbable.)"""
    v = v.clamp_min(V_FLOOR)
    sd = torch.sqrt(v)
    z = sign * (bound - a) / sd
    log_p_clip = log_ndtr(-z)
    log_l1 = -0.5 * ((y - bound) ** 2 / r2 + torch.log(r2) + LOG2PI)
    tot = v + r2
    log_n2 = -0.5 * ((y - a) ** 2 / tot + torch.log(tot) + LOG2PI)
    mu = a + v / tot * (y - a)
    s2 = (v * r2 / tot).clamp_min(V_FLOOR)
    s = torch.sqrt(s2)
    beta = (sign * (bound - mu) / s).clamp_min(Z_MIN)
    log_cdf = torch.special.log_ndtr(beta)
    lam = torch.exp(-0.5 * beta * beta - 0.5 * LOG2PI - log_cdf)
    e2 = mu - sign * s * lam
    v2 = s2 * (1.0 - beta * lam - lam * lam).clamp_min(1e-12)
    c1 = (log_p_clip + log_l1).clamp_min(LL_FLOOR)
    c2 = (log_n2 + log_cdf).clamp_min(LL_FLOOR)
    ll = torch.logaddexp(c1, c2)
    w1 = torch.exp(c1 - ll)
    w2 = 1.0 - w1
    mean = w1 * bound + w2 * e2
    var = w1 * (bound - mean) ** 2 + w2 * (v2 + (e2 - mean) ** 2)
    return ll, mean, var.clamp_min(V_FLOOR)


COMPILED_CLIP = True
"""Run the filter's clip step compiled (:mod:`calibration.clip_kernel`, the same function
and derivatives in one pass instead of about 135 torch operations; one likelihood and
gradient of 64 devices x 2,000 steps: 44 ms against 58 ms) where numba is present;
False: the torch version."""


def clip_kernel():
    """:mod:`calibration.clip_kernel` (imported on first use: it imports this module)."""
    from rpuhw.calibration import clip_kernel as mod

    return mod


def log_likelihood(rule: TorchRule, w: Windows, p: torch.Tensor, glob: torch.Tensor,
                   sigma_c: torch.Tensor, sigma_r: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of every chain of ``w`` [C] (module docstring) for per-device
    parameters ``p`` [D, k] (rows indexed by ``w.dev``), shared parameters ``glob``
    [C, k_glob] and noise parameters ``sigma_c``, ``sigma_r`` [C], per chain."""
    return log_likelihood_models([(rule, p[w.dev], glob, sigma_c, sigma_r)], w)[0]


def log_likelihood_models(parts: list[tuple], w: Windows) -> torch.Tensor:
    """:func:`log_likelihood` of several models on the same chains in one pass of the
    filter ([M, C]); ``parts``: per model ``(rule, p per chain, glob per chain, sigma_c,
    sigma_r)``. The models' rules run on their own slices; every other operation of the
    sequential loop runs once for all of them."""
    n_models, n_chains = len(parts), len(w)
    ctxs = [rule.prepare(pc, gc, w.up) for rule, pc, gc, _, _ in parts]
    up = w.up.repeat(n_models)
    sign = torch.where(up, 1.0, -1.0).to(DTYPE)
    sigma_c = torch.cat([torch.as_tensor(sc).expand(n_chains) for *_, sc, _ in parts])
    r2 = torch.cat([torch.as_tensor(sr).expand(n_chains) for *_, sr in parts]) ** 2
    bound = torch.cat([torch.where(w.up, c["hi"], c["lo"]) for c in ctxs])
    h = torch.cat([1e-4 * c["span"] for c in ctxs])
    y, k, pulse = (x.repeat(n_models, 1) for x in (w.y, w.k, w.pulse))
    cuts = [(i * n_chains, (i + 1) * n_chains) for i in range(n_models)]

    def magnitude(u: torch.Tensor) -> torch.Tensor:
        if n_models == 1:
            return parts[0][0].magnitude(u, ctxs[0])
        return torch.cat([part[0].magnitude(u[a:b], c)
                          for part, c, (a, b) in zip(parts, ctxs, cuts, strict=True)])

    m = y[:, 0]
    var = r2 / k[:, 0].clamp_min(1.0)
    ll = torch.zeros_like(m)
    ck = clip_kernel() if COMPILED_CLIP else None
    compiled = ck is not None and ck.AVAILABLE
    for t in range(1, y.shape[1]):
        pl = pulse[:, t]
        mu = magnitude(m)
        slope = (magnitude(m + h) - mu) / h
        f = 1.0 + pl * sign * slope
        a = m + pl * sign * mu
        v = f * f * var + pl * (sigma_c * mu) ** 2
        kt = k[:, t]
        obs = kt > 0
        # padding (k = 0) only ends a window: a padded chain's state is never read again,
        # so it is held where it was (no prediction through the clip is needed)
        if compiled:
            step_ll, m, var = ck.clip_step(a, v, bound, sign, y[:, t], r2 / kt.clamp_min(1.0),
                                           obs, m, var)
            ll = ll + step_ll
            continue
        step_ll, m_obs, var_obs = clipped_update(a, v, bound, sign, y[:, t],
                                                 r2 / kt.clamp_min(1.0))
        ll = ll + torch.where(obs, step_ll, 0.0)
        m = torch.where(obs, m_obs, m)
        var = torch.where(obs, var_obs, var)
    dof = (k - 1.0).clamp_min(0.0).sum(1)
    ss = w.ss.sum(1).repeat(n_models)
    ll = ll - 0.5 * (dof * (torch.log(r2) + LOG2PI) + ss / r2)
    return ll.reshape(n_models, n_chains)


# ---- maximum likelihood -----------------------------------------------------------------


def _to_free(x: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Unconstrained value of ``x`` within ``[lo, hi]`` (logit where both are finite)."""
    fin = np.isfinite(lo) & np.isfinite(hi)
    width = np.where(fin, hi - lo, 1.0)
    q = np.clip((x - np.where(fin, lo, 0.0)) / width, 1e-6, 1 - 1e-6)
    return np.where(fin, np.log(q) - np.log1p(-q), x)


def _from_free(t: torch.Tensor, lo: np.ndarray, hi: np.ndarray) -> torch.Tensor:
    fin = torch.as_tensor(np.isfinite(lo) & np.isfinite(hi))
    lo_t = torch.as_tensor(np.where(np.isfinite(lo), lo, 0.0), dtype=DTYPE)
    width = torch.as_tensor(np.where(np.isfinite(lo) & np.isfinite(hi), hi - lo, 1.0),
                            dtype=DTYPE)
    return torch.where(fin, lo_t + width * torch.sigmoid(t), t)


@dataclass
class Estimate:
    """Maximum-likelihood estimate of one model on a set of devices (groups: independent
    data sets, e.g. bootstrap replicas, each with its own shared parameters)."""

    p: np.ndarray
    """Per-device parameters [D, k] (FitModel layout, u units)."""
    glob: np.ndarray
    """Shared parameters per group [G, k_glob]."""
    sigma_c: np.ndarray
    """dw_min_std per group [G]."""
    sigma_r: np.ndarray
    """Read noise (u) per group [G]."""
    log_likelihood: float
    """At the estimate, all chains and read-noise rows."""
    converged: bool
    message: str
    evaluations: int


class _Solver:
    """Preconditioned L-BFGS over flat parameter lists of 3 tensors per model (per-device
    parameters [D, k], shared ones [G, k_glob], noise [G, 2]); subclasses give
    ``total(th)`` (the log-likelihood), ``n_obs`` and ``n_groups``."""

    n_obs: float
    n_groups: int

    def total(self, th: list[torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def _grad(self, th: list[torch.Tensor]) -> list[torch.Tensor]:
        x = [t.detach().clone().requires_grad_(True) for t in th]
        loss = -self.total(x) / self.n_obs
        grads = torch.autograd.grad(loss, x, allow_unused=True)
        return [torch.zeros_like(t) if gr is None else gr
                for t, gr in zip(x, grads, strict=True)]

    def _device_groups(self) -> list[torch.Tensor]:
        """Per model: the group (data set) of every device [D]."""
        raise NotImplementedError

    def _preconditioner(self, th: list[torch.Tensor]) -> list[tuple[torch.Tensor, ...]]:
        """Whitening of the Hessian of ``-log L`` at ``th``, per model ``(B, K, R)``.

        Devices are independent given their group's shared parameters (``glob`` and the
        noise, ``y``), so the Hessian is an arrow: device blocks ``H_i`` [k, k], the
        device-shared coupling ``C_i`` [k, s] and the shared block ``H_y`` [s, s] per
        group. Perturbing one device column in every device at once gives all the blocks
        ``H_i`` (one gradient per column), perturbing one shared column gives every
        ``C_i`` and ``H_y`` (finite differences of the autograd gradient). With
        ``B_i = H_i^{-1/2}``, ``K_i = H_i^{-1} C_i`` and the Schur complement
        ``S = H_y - sum_i C_i^T H_i^{-1} C_i``, ``R = S^{-1/2}``, the change of
        variables ``dy = R z_y``, ``dx_i = B_i z_{x,i} - K_i dy`` turns the quadratic
        model into ``|z|^2 / 2``: one unit step in ``z`` is the Newton step (absolute
        eigenvalues, floored at 1e-6 of the largest, keep it a descent direction)."""
        th = [t.detach() for t in th]
        n_models = len(th) // 3
        groups = self._device_groups()
        base = self._grad(th)
        h = 1e-4
        ks = [th[3 * i].shape[1] for i in range(n_models)]
        ys = [th[3 * i + 1].shape[1] + th[3 * i + 2].shape[1] for i in range(n_models)]
        cols: list[list[torch.Tensor]] = [[] for _ in range(n_models)]
        for j in range(max(ks)):
            moved = list(th)
            for i in range(n_models):
                if j < ks[i]:
                    d2 = th[3 * i].clone()
                    d2[:, j] += h
                    moved[3 * i] = d2
            g2 = self._grad(moved)
            for i in range(n_models):
                if j < ks[i]:
                    cols[i].append((g2[3 * i] - base[3 * i]) / h)
        cross: list[list[torch.Tensor]] = [[] for _ in range(n_models)]
        shared: list[list[torch.Tensor]] = [[] for _ in range(n_models)]
        for j in range(max(ys)):
            moved = list(th)
            for i in range(n_models):
                if j < ys[i]:
                    ng = th[3 * i + 1].shape[1]
                    w, jj = (1, j) if j < ng else (2, j - ng)
                    n2 = th[3 * i + w].clone()
                    n2[:, jj] += h
                    moved[3 * i + w] = n2
            g2 = self._grad(moved)
            for i in range(n_models):
                if j < ys[i]:
                    cross[i].append((g2[3 * i] - base[3 * i]) / h)
                    shared[i].append(torch.cat([g2[3 * i + 1] - base[3 * i + 1],
                                                g2[3 * i + 2] - base[3 * i + 2]], dim=1) / h)

        def inv_sqrt(hess: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            hess = torch.nan_to_num(0.5 * (hess + hess.transpose(1, 2)), 0.0, 0.0, 0.0)
            if hess.shape[1] == 0:
                return hess.clone(), hess.clone()
            try:
                lam, vec = torch.linalg.eigh(hess)
            except RuntimeError:  # an ill-conditioned block: scale by the diagonal only
                lam = torch.diagonal(hess, dim1=1, dim2=2).clone()
                vec = torch.eye(hess.shape[1], dtype=DTYPE).expand_as(hess).clone()
            top = lam.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
            lam = lam.abs().clamp_min(1e-6 * top)
            b = vec / torch.sqrt(lam)[:, None, :]
            return b, b @ b.transpose(1, 2)

        out = []
        for i in range(n_models):
            b, hinv = inv_sqrt(torch.stack(cols[i], dim=2))
            n_groups = th[3 * i + 1].shape[0]
            c = torch.nan_to_num(torch.stack(cross[i], dim=2), 0.0, 0.0, 0.0)  # [D, k, s]
            hy = torch.stack(shared[i], dim=2)  # [G, s, s]
            k_mat = hinv @ c
            reduce = torch.einsum("dki,dkj->dij", c, k_mat)
            schur = hy - torch.zeros_like(hy).index_add_(0, groups[i], reduce)
            r, _ = inv_sqrt(schur)
            assert r.shape[0] == n_groups
            out.append((b, k_mat, r))
        return out

    def solve_free(self, th: list[torch.Tensor], max_iter: int = 50, rounds: int = 4,
                   tol: float = TOL_NATS) -> tuple[list[torch.Tensor], bool, str, int]:
        """Maximise the likelihood from the free parameters ``th``: torch's L-BFGS (strong
        Wolfe line search) on parameters whitened by :meth:`_preconditioner`, re-whitened
        at the start of each of ``rounds``; converged when a round gains less than
        :data:`TOL_NATS` (``tol``) per data set. Returns (th, converged, message, evaluations)."""
        th = [t.detach() for t in th]
        count, n_iter, last = 0, 0, math.inf
        t_start = time.perf_counter()
        defer()
        converged = False
        groups = self._device_groups()
        for _ in range(rounds):
            scale = self._preconditioner(th)
            z = [torch.zeros_like(t, requires_grad=True) for t in th]

            def params(z=z, th=th, scale=scale):
                out = []
                for i, (b, k_mat, r) in enumerate(scale):
                    dev, glob, noise = th[3 * i:3 * i + 3]
                    dy = torch.einsum("gij,gj->gi", r, torch.cat([z[3 * i + 1], z[3 * i + 2]],
                                                                  dim=1))
                    dx = (torch.einsum("dij,dj->di", b, z[3 * i])
                          - torch.einsum("dij,dj->di", k_mat, dy[groups[i]]))
                    ng = glob.shape[1]
                    out += [dev + dx, glob + dy[:, :ng], noise + dy[:, ng:]]
                return out

            opt = torch.optim.LBFGS(z, lr=1.0, max_iter=max_iter, history_size=20,
                                    tolerance_grad=1e-7, tolerance_change=1e-10,
                                    line_search_fn="strong_wolfe")

            def closure(opt=opt, params=params, z=z):
                nonlocal count
                opt.zero_grad()
                loss = -self.total(params()) / self.n_obs
                if torch.isfinite(loss):
                    loss.backward()
                if not torch.isfinite(loss) or not all(
                        t.grad is None or bool(torch.isfinite(t.grad).all()) for t in z):
                    # a point the likelihood cannot evaluate: a very bad one with no
                    # gradient, so the line search steps back instead of carrying NaN on
                    for t in z:
                        t.grad = torch.zeros_like(t)
                    loss = torch.tensor(1e10, dtype=DTYPE)
                count += 1
                return loss

            opt.step(closure)
            its = int(opt.state[opt._params[0]].get("n_iter", 0))
            n_iter += its
            old = th
            th = [t.detach() for t in params()]
            if not all(bool(torch.isfinite(t).all()) for t in th):
                th = old  # refuse a non-finite step: keep the last finite point
                last = math.nan
                break
            if DEBUG:
                for a, b_ in zip(old, th, strict=True):
                    d = (b_ - a).abs()
                    print("  moved", [round(float(x), 5) for x in d.amax(0)])
            with torch.no_grad():
                now = float(-self.total(th) / self.n_obs)
            if DEBUG:
                print(f"round: {its} iterations, {count} evaluations, loss {now:.9f}, "
                      f"{time.perf_counter() - t_start:.2f} s")
            if (last - now) * self.n_obs < max(tol * self.n_groups,
                                               TOL_RELATIVE * abs(now) * self.n_obs):
                converged = True
                break
            last = now
        converged = converged and math.isfinite(last)
        msg = (f"L-BFGS: {n_iter} iterations, {count} evaluations"
               + ("" if converged else " (not converged)"))
        return th, converged, msg, count


class Problem(_Solver):
    """The negative log-likelihood of one model as a function of unconstrained parameters:
    per device ``lo, log(hi - lo), log s_up, log s_dn`` and the model's extras (logit
    within their bounds); per group the shared parameters (logit within their bounds),
    ``log sigma_c`` and ``log sigma_r``."""

    def __init__(self, fm: FitModel, frame: Frame, w: Windows, group: np.ndarray,
                 noise_ss: np.ndarray, noise_dof: np.ndarray):
        self.fm, self.frame, self.w = fm, frame, w
        self.rule = TorchRule(fm, frame)
        self.group = torch.as_tensor(group)
        self.n_groups = int(group.max()) + 1 if len(group) else 1
        self.chain_group = self.group[w.dev]
        lo_e, hi_e = fm.extra_bounds()
        self.lo_e, self.hi_e = np.asarray(lo_e, float), np.asarray(hi_e, float)
        lo_g, hi_g = fm.glob_bounds()
        self.lo_g, self.hi_g = np.asarray(lo_g, float), np.asarray(hi_g, float)
        self.noise_ss = torch.as_tensor(np.bincount(group, noise_ss, self.n_groups))
        self.noise_dof = torch.as_tensor(np.bincount(group, noise_dof, self.n_groups))
        self.n_obs = max(float(w.k.sum()) + float(noise_dof.sum()), 1.0)
        self.pairs: Pairs | None = None
        steps = np.abs(np.diff(w.y.numpy(), axis=1))[w.pulse.numpy()[:, 1:] > 0]
        moving = steps[steps > 0]
        self.sr_floor = SIGMA_R_FLOOR * (float(np.median(moving)) if len(moving) else 1e-3)
        """Least read noise (u): noise-free data would make the likelihood unbounded."""

    def _device_groups(self) -> list[torch.Tensor]:
        return [self.group]

    def use_one_step(self, pairs: Pairs | None) -> None:
        """Switch the objective to the one-step least squares of ``pairs`` (None: back to
        the likelihood)."""
        self.pairs = pairs
        if pairs is not None:
            self.n_obs = max(float(len(pairs.u)), 1.0)
        else:
            self.n_obs = max(float(self.w.k.sum()) + float(self.noise_dof.sum()), 1.0)

    def one_step_residuals(self, th: list[torch.Tensor], pairs: Pairs) -> tuple[torch.Tensor,
                                                                              torch.Tensor]:
        """Measured minus mean step (u) of every pair, and the mean step magnitude."""
        p, glob, _, _ = self.values(th)
        pc = p[pairs.dev]
        ctx = self.rule.prepare(pc, glob[self.group[pairs.dev]], pairs.up)
        mu = self.rule.magnitude(pairs.u, ctx)
        gap = torch.where(pairs.up, ctx["hi"] - pairs.u, pairs.u - ctx["lo"])
        step = torch.where(pairs.up, 1.0, -1.0).to(DTYPE) * torch.minimum(mu, gap)
        return pairs.du - step, mu

    def _one_step(self, th: list[torch.Tensor]) -> torch.Tensor:
        r, _ = self.one_step_residuals(th, self.pairs)
        return (r * r).sum() / (2e-4 ** 2)

    def free(self, p: np.ndarray, glob: np.ndarray, sc: np.ndarray, sr: np.ndarray
             ) -> list[torch.Tensor]:
        span = np.maximum(p[:, 1] - p[:, 0], 1e-9)
        dev = np.column_stack([p[:, 0], np.log(span), np.log(np.maximum(p[:, 2:4], 1e-12)),
                               _to_free(p[:, 4:], self.lo_e, self.hi_e)])
        g = _to_free(np.atleast_2d(glob), self.lo_g, self.hi_g)
        sc_free = np.log(np.maximum(np.asarray(sc, float) - SIGMA_C_FLOOR, 1e-6))
        sr_free = np.log(np.maximum(np.asarray(sr, float) - self.sr_floor, 1e-3 * self.sr_floor))
        noise = np.column_stack([sc_free, sr_free])
        return [torch.tensor(x, dtype=DTYPE, requires_grad=True) for x in (dev, g, noise)]

    def values(self, th: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        dev, g, noise = th
        lo = dev[:, 0]
        hi = lo + torch.exp(dev[:, 1])
        s = torch.exp(dev[:, 2:4])
        ext = _from_free(dev[:, 4:], self.lo_e, self.hi_e)
        p = torch.cat([lo[:, None], hi[:, None], s, ext], dim=1)
        glob = _from_free(g, self.lo_g, self.hi_g)
        return (p, glob, SIGMA_C_FLOOR + torch.exp(noise[:, 0]),
                self.sr_floor + torch.exp(noise[:, 1]))

    def chain_ll(self, th: list[torch.Tensor], w: Windows | None = None) -> torch.Tensor:
        """Log-likelihood per chain of ``w`` (default: the problem's chains)."""
        w = self.w if w is None else w
        p, glob, sc, sr = self.values(th)
        cg = self.group[w.dev]
        return log_likelihood(self.rule, w, p, glob[cg], sc[cg], sr[cg])

    def noise_ll(self, th: list[torch.Tensor]) -> torch.Tensor:
        """Log-likelihood of the read-noise rows' spread (summed over groups)."""
        r2 = self.values(th)[3] ** 2
        return (-0.5 * (self.noise_dof * (torch.log(r2) + LOG2PI) + self.noise_ss / r2)).sum()

    def total(self, th: list[torch.Tensor]) -> torch.Tensor:
        if self.pairs is not None:
            return -self._one_step(th)
        return self.chain_ll(th).sum() + self.noise_ll(th)

    def solve_noise(self, th: list[torch.Tensor], max_iter: int = 30
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Maximise the likelihood over the noise parameters only (``sigma_c``,
        ``sigma_r`` per group; the mean step parameters held at ``th``): L-BFGS on their
        logs. Returns (sigma_c, sigma_r) per group."""
        dev, g = th[0].detach(), th[1].detach()
        z = th[2].detach().clone().requires_grad_(True)
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=max_iter, history_size=10,
                                tolerance_grad=1e-9, tolerance_change=1e-12,
                                line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = -self.total([dev, g, z]) / self.n_obs
            if torch.isfinite(loss):
                loss.backward()
            if not torch.isfinite(loss) or not bool(torch.isfinite(z.grad).all()):
                z.grad = torch.zeros_like(z)  # as in solve_free: a bad point, no gradient
                loss = torch.tensor(1e10, dtype=DTYPE)
            return loss

        start = z.detach().clone()
        opt.step(closure)
        if not bool(torch.isfinite(z).all()):
            z = start
        with torch.no_grad():
            _, _, sc, sr = self.values([dev, g, z.detach()])
        return sc.numpy().copy(), sr.numpy().copy()

    def device_ll(self, th: list[torch.Tensor]) -> torch.Tensor:
        """Log-likelihood of each device's chains [D]."""
        n_dev = int(th[0].shape[0])
        with torch.no_grad():
            ll = torch.nan_to_num(self.chain_ll(th), nan=-1e300, neginf=-1e300)
        return torch.zeros(n_dev, dtype=DTYPE).index_add_(0, self.w.dev, ll)

    def _edges(self, st: StepTable, n_dev: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Every device's least and greatest mean read (u)."""
        dev = torch.as_tensor(st.dev)
        y = torch.as_tensor(st.ybar, dtype=DTYPE)
        lo_edge = torch.full((n_dev,), math.inf, dtype=DTYPE).scatter_reduce(0, dev, y, "amin")
        hi_edge = torch.full((n_dev,), -math.inf, dtype=DTYPE).scatter_reduce(0, dev, y, "amax")
        return lo_edge, hi_edge

    def _with_bound(self, th: list[torch.Tensor], side: int, cand: torch.Tensor
                    ) -> list[torch.Tensor]:
        """``th`` with every device's lower (``side`` 0) or upper bound at ``cand`` (u)."""
        with torch.no_grad():
            p = self.values(th)[0]
        lo, hi = p[:, 0], p[:, 1]
        new_lo, new_hi = (cand, hi) if side == 0 else (lo, cand)
        ok = new_hi > new_lo
        trial = th[0].detach().clone()
        trial[:, 0] = torch.where(ok, new_lo, lo)
        trial[:, 1] = torch.where(ok, torch.log((new_hi - new_lo).clamp_min(1e-12)),
                                  th[0][:, 1].detach())
        return [trial, th[1], th[2]]

    def bound_support(self, th: list[torch.Tensor], st: StepTable,
                      far: float = BOUND_GRID[-1]) -> np.ndarray:
        """Per device and bound ([D, 2]: lower, upper), the log-likelihood ratio of the
        fitted bound against the same bound moved ``far`` x max(step towards it, read
        noise) beyond the device's extreme mean read (where no read can see it), every
        other parameter held: how strongly the data say the device reached that bound."""
        n_dev = int(th[0].shape[0])
        lo_edge, hi_edge = self._edges(st, n_dev)
        with torch.no_grad():
            p, _, _, sr = self.values(th)
        base = self.device_ll(th)
        out = np.zeros((n_dev, 2))
        for side in (0, 1):
            unit = torch.maximum(p[:, 3 if side == 0 else 2], sr[self.group])
            cand = lo_edge - far * unit if side == 0 else hi_edge + far * unit
            out[:, side] = (base - self.device_ll(self._with_bound(th, side, cand))).numpy()
        return out

    def search_bounds(self, th: list[torch.Tensor], st: StepTable,
                      offsets: tuple[float, ...] = BOUND_GRID) -> np.ndarray:
        """Grid search of every device's hard bounds (in place on ``th``; returns which
        bounds moved, [D, 2]).

        The likelihood of a hard bound is flat beyond the reads (an unreached bound) and
        its clip makes it multimodal near them, so gradient steps keep a bound on the
        side of the reads where it started. Devices are independent given the shared
        parameters, so one evaluation of the filter per candidate gives every device's
        likelihood: each bound is tried at the device's extreme mean read plus
        ``offsets`` times ``max(its step towards it, read noise)`` (positive: beyond the
        reads) and at its current value, and each device keeps its best, the lower bound
        first, then the upper."""
        n_dev = int(th[0].shape[0])
        dev = torch.as_tensor(st.dev)
        y = torch.as_tensor(st.ybar, dtype=DTYPE)
        lo_edge = torch.full((n_dev,), math.inf, dtype=DTYPE).scatter_reduce(
            0, dev, y, "amin")
        hi_edge = torch.full((n_dev,), -math.inf, dtype=DTYPE).scatter_reduce(
            0, dev, y, "amax")
        moved = np.zeros((n_dev, 2), dtype=bool)
        for side in (0, 1):
            with torch.no_grad():
                p, _, _, sr = self.values(th)
            lo, hi = p[:, 0].clone(), p[:, 1].clone()
            unit = torch.maximum(p[:, 3 if side == 0 else 2], sr[self.group])
            best = self.device_ll(th)
            current = (lo if side == 0 else hi).clone()
            choice = current.clone()
            for c in offsets:
                cand = lo_edge - c * unit if side == 0 else hi_edge + c * unit
                new_lo, new_hi = (cand, hi) if side == 0 else (lo, cand)
                ok = new_hi > new_lo
                trial = th[0].clone()
                trial[:, 0] = torch.where(ok, new_lo, lo)
                trial[:, 1] = torch.where(ok, torch.log((new_hi - new_lo).clamp_min(1e-12)),
                                          th[0][:, 1])
                ll = self.device_ll([trial, th[1], th[2]])
                better = ok & (ll > best + 1e-6)
                best = torch.where(better, ll, best)
                choice = torch.where(better, cand, choice)
            new_lo, new_hi = (choice, hi) if side == 0 else (lo, choice)
            dev_free = th[0].detach().clone()
            dev_free[:, 0] = new_lo
            dev_free[:, 1] = torch.log((new_hi - new_lo).clamp_min(1e-12))
            th[0] = dev_free
            moved[:, side] = (choice != current).numpy()
        return moved

    def device_cov(self, est: Estimate) -> np.ndarray:
        """Covariance [D, k, k] of every device's parameters (FitModel layout, u units)
        from the observed information of its own block (the inverse Hessian of
        ``-log L`` in the free parameters, shared and noise parameters held at the
        estimate; finite differences of the autograd gradient), mapped to ``p`` by the
        Jacobian of :meth:`values` (the delta method)."""
        th = [t.detach() for t in self.free(est.p, est.glob, est.sigma_c, est.sigma_r)]
        base = self._grad(th)[0]
        h = 1e-4
        k = th[0].shape[1]
        cols, jac = [], []
        with torch.no_grad():
            p0 = self.values(th)[0]
        for j in range(k):
            d2 = th[0].clone()
            d2[:, j] += h
            cols.append((self._grad([d2, th[1], th[2]])[0] - base) / h)
            with torch.no_grad():
                jac.append((self.values([d2, th[1], th[2]])[0] - p0) / h)
        hess = torch.stack(cols, dim=2) * self.n_obs
        hess = 0.5 * (hess + hess.transpose(1, 2))
        cov_free = np.linalg.pinv(hess.numpy(), rcond=1e-10, hermitian=True)
        jm = torch.stack(jac, dim=2).numpy()  # [D, k (p), k (free)]
        return jm @ cov_free @ jm.transpose(0, 2, 1)

    def noise_se(self, est: Estimate) -> tuple[np.ndarray, np.ndarray]:
        """Standard errors of ``sigma_c`` and ``sigma_r`` per group from the observed
        information of the two (the Hessian of ``-log L`` in ``log sigma``, by finite
        differences of the gradient; the device parameters held at the estimate)."""
        th = [t.detach() for t in self.free(est.p, est.glob, est.sigma_c, est.sigma_r)]
        base = self._grad(th)[2]
        h = 1e-4
        cols = []
        for j in range(2):
            t2 = th[2].clone()
            t2[:, j] += h
            cols.append((self._grad([th[0], th[1], t2])[2] - base) / h)
        hess = torch.stack(cols, dim=2) * self.n_obs
        hess = 0.5 * (hess + hess.transpose(1, 2)).numpy()
        cov = np.linalg.pinv(hess)
        var = np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None)
        return est.sigma_c * np.sqrt(var[:, 0]), est.sigma_r * np.sqrt(var[:, 1])

    def solve(self, p0: np.ndarray, glob0: np.ndarray, sc0: np.ndarray, sr0: np.ndarray,
              max_iter: int = 50, rounds: int = 6, tol: float = TOL_NATS) -> Estimate:
        """Maximum likelihood from ``p0, glob0, sc0, sr0`` (:meth:`_Solver.solve_free`)."""
        th, converged, msg, count = self.solve_free(self.free(p0, glob0, sc0, sr0),
                                                    max_iter, rounds, tol)
        return self.estimate_at(th, converged, msg, count)

    def estimate_at(self, th: list[torch.Tensor], converged: bool = True, msg: str = "",
                    count: int = 0) -> Estimate:
        """The :class:`Estimate` at free parameters ``th``."""
        with torch.no_grad():
            ll = float(self.total(th))
            p, glob, sc, sr = (x.numpy().copy() for x in self.values(th))
        return Estimate(p=p, glob=glob, sigma_c=sc, sigma_r=sr, log_likelihood=ll,
                        converged=converged and math.isfinite(ll), message=msg,
                        evaluations=count)


class Joint(_Solver):
    """Several models' :class:`Problem` on the same chains, maximised together: one pass
    of the filter evaluates every model (:func:`log_likelihood_models`), so the
    sequential loop's operations are shared; the models' parameters stay independent."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        self.n_obs = problems[0].n_obs
        self.n_groups = sum(p.n_groups for p in problems)

    def _device_groups(self) -> list[torch.Tensor]:
        return [prob.group for prob in self.problems]

    def chain_ll(self, th: list[torch.Tensor], w: Windows | None = None) -> torch.Tensor:
        """Log-likelihood per model and chain of ``w`` [M, C]."""
        w = self.problems[0].w if w is None else w
        parts = []
        for i, prob in enumerate(self.problems):
            p, glob, sc, sr = prob.values(th[3 * i:3 * i + 3])
            cg = prob.group[w.dev]
            parts.append((prob.rule, p[w.dev], glob[cg], sc[cg], sr[cg]))
        return log_likelihood_models(parts, w)

    def total(self, th: list[torch.Tensor]) -> torch.Tensor:
        if self.problems[0].pairs is not None:
            return sum(prob.total(th[3 * i:3 * i + 3])
                       for i, prob in enumerate(self.problems))
        out = self.chain_ll(th).sum()
        for i, prob in enumerate(self.problems):
            out = out + prob.noise_ll(th[3 * i:3 * i + 3])
        return out

    def use_one_step(self, pairs: Pairs | None) -> None:
        for prob in self.problems:
            prob.use_one_step(pairs)
        self.n_obs = self.problems[0].n_obs

    def solve(self, starts: list[tuple], max_iter: int = 50, rounds: int = 4
              ) -> list[Estimate]:
        """Maximum likelihood of every model from its ``(p0, glob0, sc0, sr0)``."""
        th = [t for prob, st in zip(self.problems, starts, strict=True) for t in prob.free(*st)]
        th, converged, msg, count = self.solve_free(th, max_iter, rounds)
        return [prob.estimate_at(th[3 * i:3 * i + 3], converged, msg, count)
                for i, prob in enumerate(self.problems)]


def noise_moments(prob: Problem, th: list[torch.Tensor], pr: Pairs, st: StepTable
                  ) -> tuple[float, float]:
    """Starting ``(sigma_c, sigma_r)`` from one-step residuals ``r``: a step is the
    difference of two reads, so consecutive residuals have covariance ``-sigma_r^2``
    (read-noise rows, where there are any, give it directly) and
    ``E r^2 = 2 sigma_r^2 + sigma_c^2 E mu^2``."""
    with torch.no_grad():
        r, mu = prob.one_step_residuals(th, pr)
    r, mu = r.numpy(), mu.numpy()
    k = st.k[pr.before]
    if st.noise_dof.sum() >= 2:
        r2 = float(st.noise_ss.sum() / st.noise_dof.sum())
    else:
        nxt = np.r_[pr.before[1:] == pr.before[:-1] + 1, False]
        prod = (r[:-1] * r[1:])[nxt[:-1]] * k[:-1][nxt[:-1]]
        r2 = max(-float(prod.mean()), 0.0) if len(prod) else 0.0
    # a start, not an estimate: the misfit of the starting mean step inflates the
    # residuals and hides their negative lag covariance, so the read noise starts at no
    # less than a third of the median step (the likelihood moves it either way)
    scale = float(np.median(np.abs(pr.du.numpy()))) if len(mu) else 1e-3
    r2 = max(r2, (scale / 3.0) ** 2)
    free = np.abs(mu) > 0
    c2 = (float(np.mean(r[free] ** 2) - 2 * r2 * np.mean(1.0 / k[free]))
          / max(float(np.mean(mu[free] ** 2)), 1e-300)) if free.any() else 0.09
    if DEBUG:
        print("noise start", c2, r2, scale)
    return math.sqrt(min(max(c2, 0.01), 1.0)), math.sqrt(r2)


def estimate(fm: FitModel, frame: Frame, st: StepTable, w: Windows, p0: np.ndarray,
             glob0: np.ndarray, group: np.ndarray | None = None,
             noise0: tuple[np.ndarray, np.ndarray] | None = None, max_iter: int = 50,
             rounds: int = 6, search_bounds: bool = True, tol: float = TOL_NATS) -> Estimate:
    """Maximum-likelihood fit of ``fm`` to the chains ``w`` of ``st`` (converged when a
    round gains less than ``tol`` nats, :meth:`_Solver.solve_free`): from ``p0, glob0``
    (one-step least squares first, then moment estimates of the noise, unless ``noise0``
    is given), then the filter's likelihood. For models with hard bounds (not
    :data:`ONE_STEP_START`) and ``search_bounds``, every device's bounds are then searched
    on a grid (:meth:`Problem.search_bounds`) and, where one moved, the likelihood is
    maximised again from there."""
    group = np.zeros(st.n_dev, dtype=np.int64) if group is None else group
    prob = Problem(fm, frame, w, group, st.noise_ss, st.noise_dof)
    n_groups = prob.n_groups
    glob0 = np.broadcast_to(np.atleast_2d(glob0), (n_groups, len(fm.glob))).copy()
    if noise0 is None:
        pr = pairs(st)
        if fm.name in ONE_STEP_START:
            prob.use_one_step(pr)
            first = prob.solve(p0, glob0, np.full(n_groups, 0.3), np.full(n_groups, 1e-3),
                               max_iter=max_iter, rounds=ONE_STEP_ROUNDS)
            prob.use_one_step(None)
            p0, glob0 = first.p, first.glob
        th = prob.free(p0, glob0, np.full(n_groups, 0.3), np.full(n_groups, 1e-3))
        sc, sr = noise_moments(prob, th, pr, st)
        # the moments are a start, inflated by the misfit of the starting mean step: the
        # noise alone first (two parameters per group, the mean step held), so that the
        # joint maximisation does not start from a flattened likelihood
        th = prob.free(p0, glob0, np.full(n_groups, sc), np.full(n_groups, sr))
        sc_n, sr_n = prob.solve_noise(th)
        noise0 = (sc_n, sr_n)
    if fm.name in ONE_STEP_START or not search_bounds:
        return prob.solve(p0, glob0, noise0[0], noise0[1], max_iter=max_iter, rounds=rounds,
                          tol=tol)
    # hard bounds: a short maximisation, the bound search, the full maximisation, and
    # once more where the search moves a bound at the optimum
    est = prob.solve(p0, glob0, noise0[0], noise0[1], max_iter=max_iter, rounds=1)
    count = est.evaluations
    for _ in range(2):
        th = prob.free(est.p, est.glob, est.sigma_c, est.sigma_r)
        moved = prob.search_bounds(th, st)
        if DEBUG:
            print(f"bound search moved {int(moved.sum())} bound(s)")
        if not moved.any() and est.converged and count > est.evaluations:
            break
        p1, g1, sc1, sr1 = (x.detach().numpy().copy() for x in prob.values(th))
        est = prob.solve(p1, g1, sc1, sr1, max_iter=max_iter, rounds=rounds, tol=tol)
        count += est.evaluations
    est.evaluations = count
    return est

