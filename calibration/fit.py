"""Fit the registered device models to pulse-response measurements.

Method (``fit``), for every candidate model (see :mod:`rpuhw.calibration.fit_models` for
how each model's parameters map to the device model, whose own step rule gives every
mean step):

1. **Steps.** The reads are normalised, ``u = (g - G0) / S0`` (G0, S0 from the 0.5 and
   99.5 percentiles of all reads: numerical conditioning only), and cut into chains, one
   per device and half-cycle (:func:`rpuhw.calibration.statespace.step_table`).
2. **Likelihood.** The state-space model of :mod:`rpuhw.calibration.statespace`: a hidden
   state per device moved by the model's mean step with multiplicative cycle-to-cycle
   noise (``dw_min_std``) and clipped at the device's bounds, every read with read noise;
   its log-likelihood by an extended Kalman filter with an exact step through the clip,
   over windows of the chains, batched over devices. Parameters: per device the bounds
   ``lo_i, hi_i``, the step scales and the model's per-device extras; shared by all
   devices the model's shared parameters (exp_step's A and gamma, piecewise's node
   table) and the two noise levels.
3. **Maximisation.** torch autograd and L-BFGS (:class:`~rpuhw.calibration.statespace.
   Problem`), from a start regressed on the signed steps towards the pulse direction,
   with a grid search of hard bounds; converged when a round gains less than
   :data:`~rpuhw.calibration.statespace.TOL_NATS`.
4. **Weight units and population parameters** (aihwkit's meanings, the inverse of the
   draw in rpuhw/devices/base.py, ``one_sided_from_moments``): the mean bounds map to
   ``w = -1, +1``; with the half-sum ``s_i`` and half-difference ``a_i`` of each device's
   up and down steps, ``dw_min = mean(s) + |mean(a)|``, ``up_down = 2 mean(a) /
   dw_min``, ``dw_min_dtod = sd(s) / dw_min``, ``up_down_dtod = sd(a) / dw_min``;
   pow_step's exponents likewise. Means and spreads are random-effects estimates
   (:func:`_random_effects`, Paule-Mandel: each device weighted by its own standard error
   from the likelihood's observed information, the spread corrected for it); a hard
   bound a device never reached is censored (Tobit, :func:`_censored_normal`).
5. **Model choice** (``model="auto"``, criterion ``held_out``): every model is fitted on
   the odd cycles and scored on the even ones (one cycle: every other window), all on the
   same reads. First the simplest model (fewest per-device parameters) among those the
   data cannot tell from the best held-out sum (within ``margin_z`` paired standard
   errors over devices, and not beaten on most devices: :func:`beaten_on_most_devices`);
   then the devices vote: the model that scores higher than each other model on most
   devices (:func:`majority_winner`; one device that a model misses by hundreds of nats
   does not decide a vote) replaces it, unless that would trade it for a more flexible
   model that does not beat it significantly (sign test at ``margin_z``). A thin margin
   is reported as such; the chosen model is then fitted to all the data.
   ``bic`` / ``aic`` rank the likelihoods of all the data instead.
6. **Intervals**: a parametric bootstrap (``bootstrap`` replicas simulated from the fit
   with the measured protocol, refitted in one batched fit; :func:`_intervals`).
7. **Is it explained?** The chosen fit is flagged (``ok = False``) when the maximisation
   did not converge, when the residuals keep their sign along a trace (Wald-Wolfowitz
   runs), when the mean step curve misses the same curve of replicas simulated from the
   fit by more than ``curve_error_max`` of its RMS, or when its ``g_min`` lies below 0 S
   (an extrapolation beyond the reads).

docs/calibration.md, section 3, states the method with its measured accuracy.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rpuhw.calibration import statespace as ss
from rpuhw.calibration.fit_models import FIT_MODELS, FitModel, Frame, Side
from rpuhw.calibration.measurements import Measurements, conductance_unit, steps
from rpuhw.calibration.segments import Discontinuity, find_discontinuities, segment_index
from rpuhw.calibration.statespace import Estimate
from rpuhw.devices.base import one_sided_from_moments
from rpuhw.errors import ConfigError

COV_FROM_LIKELIHOOD = True
"""Per-device standard errors from the likelihood's observed information (the one-step
sandwich ignores the negative correlation of consecutive steps through their shared read
and overstates them several-fold, which shrinks the spreads' correction)."""
BASE = ("lo", "hi", "s_up", "s_dn")
"""Per-device parameters every model has, in this order."""


@dataclass
class FitConfig:
    """Options of :func:`fit`."""

    criterion: str = "held_out"
    """Model choice for ``auto``: ``held_out`` (default: the held-out log-likelihood),
    or ``bic`` / ``aic`` of the state-space likelihood of all the data."""
    piecewise_nodes: int = 9
    """Nodes of the piecewise table (odd, >= 3)."""
    runs_min: float = 0.8
    """Flag the fit when residual sign runs fall below this fraction of the expected."""
    curve_error_max: float = 0.15
    """Flag the fit when the binned mean step curve misses by more than this (relative RMS)."""
    curve_bins: int = 10
    """Bins between each device's bounds for the mean step curve."""
    min_steps: int = 8
    """Devices with fewer up or down steps are left out (and named in the notes)."""
    max_iter: int = 50
    """L-BFGS iterations per round of the likelihood maximisation (up to 8 rounds, each
    re-whitened by the Hessian's device blocks)."""
    window: int = 16
    """Steps per filter window (composite likelihood, :mod:`calibration.statespace`)."""
    margin_z: float = 2.0
    """Held-out margins below this many standard errors are thin and reported as such:
    a model beaten on too few devices by the chosen one (one-sided sign test at this z),
    or, without a majority winner, a sum within this many paired standard errors of the
    best (the simplest of those is chosen)."""
    bootstrap: int = 0
    """Parametric bootstrap replicas for the 95 % intervals (0: none; the intervals then
    come from the standard errors of the fit; ``rpuhw fit`` uses 20)."""
    seed: int = 0
    """Seed of the bootstrap's simulations."""
    segments: bool = False
    """Cut every device's trace at the resume boundaries and discontinuities
    (:func:`rpuhw.calibration.segments.find_discontinuities`) and fit the pieces as
    separate traces: no step spans a cut (``rpuhw fit --segments``)."""


@dataclass
class ModelScore:
    """How one candidate model fitted (all models on the same reads)."""

    model: str
    converged: bool
    ok: bool
    reason: str
    n: int
    """Reads in the likelihood (the same for every model)."""
    k: int
    """Parameters (per-device, shared, and the two noise parameters)."""
    rss: float
    """Sum of squared one-step residuals (normalised conductance units)."""
    log_likelihood: float
    """State-space log-likelihood of all the data at the fit (nats)."""
    aic: float
    bic: float
    runs_ratio: float
    curve_error: float
    nfev: int
    seconds: float
    held_out: float = float("nan")
    """-2 x the held-out log-likelihood (lower is better; NaN when not scored)."""
    held_out_ll: float = float("nan")
    """Held-out log-likelihood (nats) of the model fitted on the other fold."""
    held_out_se: float = float("nan")
    """Standard error (over devices) of this model's held-out log-likelihood difference
    to the best model's."""

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in self.__dict__.items()}


@dataclass
class StepData:
    """Steps of every device in normalised units (built by :func:`prepare`)."""

    devices: np.ndarray
    """Device ids, in fit order."""
    rows: np.ndarray
    """Array row of each device (-1 unknown)."""
    cols: np.ndarray
    """Array column of each device (-1 unknown)."""
    g0: float
    """Conductance (S) at u = 0."""
    s0: float
    """Conductance (S) per unit of u."""
    up: Side
    down: Side
    trace_up: np.ndarray
    """Trace (half-cycle) index of each up step; steps are in pulse order within a trace."""
    trace_down: np.ndarray
    lo0: np.ndarray
    """Robust low (0.5 %) read of each device (u)."""
    hi0: np.ndarray
    """Robust high (99.5 %) read of each device (u)."""
    read_var: float | None
    """Pooled read-noise variance (u^2) from polarity-0 rows, None without them."""
    read_dof: int
    dropped: list[int]
    """Device ids left out (too few steps)."""
    stuck: list[int]
    """Device ids left out because their conductance hardly changes (< 0.1 % of the median
    device's range): a stuck device has no step rule to fit."""
    traces: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = field(repr=False,
                                                                            default_factory=dict)
    """(device index, cycle, polarity) -> (pulse numbers, reads in u) for plots."""

    @property
    def n_dev(self) -> int:
        return len(self.devices)


@dataclass
class FitResult:
    """Result of :func:`fit` for the chosen model."""

    model: str
    ok: bool
    reason: str
    explanation: str
    params: dict[str, Any]
    """Device-YAML keys of the model (weight units, w in [-1, 1])."""
    uncertainties: dict[str, float]
    """Standard error of each fitted key in ``params`` (and of g_min, g_max, read_noise)."""
    g_min: float
    """Mean lower bound (S) -> w = -1."""
    g_max: float
    """Mean upper bound (S) -> w = +1."""
    read_noise: float
    """Read noise (weight units)."""
    per_device: dict[str, np.ndarray]
    """Per device (ordered as ``per_device['device']``): ids, row, col, g_min, g_max (S),
    dw_up, dw_down, up_down, w_min, w_max, model extras (weight units)."""
    scores: dict[str, ModelScore]
    """Every candidate model's score."""
    criterion: str
    notes: list[str] = field(default_factory=list)
    discontinuities: list[Discontinuity] = field(default_factory=list)
    """Resume boundaries and jumps found in the measurement (significant or not)."""
    segments: int = 1
    """Segments each trace was cut into (> 1 with ``FitConfig.segments`` and boundaries)."""
    data: StepData | None = field(default=None, repr=False)
    fitmodel: FitModel | None = field(default=None, repr=False)
    p: np.ndarray | None = field(default=None, repr=False)
    """Per-device parameters [D, k] (normalised units)."""
    glob: np.ndarray | None = field(default=None, repr=False)
    frame: Frame | None = field(default=None, repr=False)
    intervals: dict[str, list[float]] = field(default_factory=dict)
    """95 % interval [lo, hi] of every key of ``params`` and of g_min, g_max, read_noise
    (parametric bootstrap; without it, estimate +- 1.96 standard errors)."""
    interval_method: str = ""
    """How the intervals were computed."""
    held_out: dict[str, float] = field(default_factory=dict)
    """Held-out log-likelihood (nats) of every candidate model (``auto``)."""
    margin: float = float("nan")
    """Held-out log-likelihood of the best model minus the runner-up's (nats)."""
    margin_se: float = float("nan")
    """Standard error of ``margin`` over devices."""
    thin_margin: bool = False
    """Whether the best models are within ``FitConfig.margin_z`` standard errors."""
    not_identifiable: list[str] = field(default_factory=list)
    """"not identifiable from these data: ..." messages, each with its remedy."""
    validation: Any = field(default=None, repr=False)
    """The posterior-predictive validation of this fit (``rpuhw fit`` runs it), or None."""

    # ---- the model's mean response, for plots and checks -------------------------------
    def mean_step(self, index: int, g: np.ndarray, up: bool) -> np.ndarray:
        """Fitted mean signed step (S) of device ``index`` (fit order) at conductance g (S)."""
        assert self.data is not None and self.fitmodel is not None and self.p is not None
        d = self.data
        u = (np.asarray(g, dtype=np.float64) - d.g0) / d.s0
        p = np.broadcast_to(self.p[index], (len(u), self.p.shape[1]))
        return self.fitmodel.step(up, u, p, self.glob, self.frame) * d.s0

    def rollout(self, index: int, g_start: float, pulses: int, up: bool) -> np.ndarray:
        """Mean trace (S) of ``pulses`` pulses from ``g_start``: [pulses + 1] reads."""
        out = np.empty(pulses + 1)
        out[0] = g_start
        for k in range(pulses):
            out[k + 1] = out[k] + self.mean_step(index, out[k:k + 1], up)[0]
        return out

    def to_device_spec(self):
        """The fitted device: model in weight units (w in [-1, 1]) + conductance block."""
        from rpuhw.device_spec import spec_from_mapping

        mapping: dict[str, Any] = {"model": self.model, **self.params,
                                   "io": {"read_noise": float(self.read_noise)}}
        if self.g_min >= 0 and self.g_max > self.g_min:
            mapping["conductance"] = {"g_min": float(self.g_min), "g_max": float(self.g_max)}
        return spec_from_mapping(mapping, source=f"fit of {self.model}")


# ---- data preparation -----------------------------------------------------------------


def _traces(m: Measurements, segment: np.ndarray | None
            ) -> dict[tuple[int, int, int, int], Any]:
    """``steps(m)`` keyed (device, cycle, polarity, segment); with ``segment`` (the
    segment number of each row) the steps of each segment are taken on their own rows,
    so no step spans two segments and each segment's first read starts a trace."""
    if segment is None:
        return {(*k, 0): tr for k, tr in steps(m).items()}
    out = {}
    for s in np.unique(segment):
        for k, tr in steps(m.take(segment == s)).items():
            out[(*k, int(s))] = tr
    return out


def prepare(m: Measurements, min_steps: int = 8, segment: np.ndarray | None = None
            ) -> StepData:
    """Steps of ``m`` in normalised units; raises ConfigError when nothing can be fitted.

    ``segment``: segment number of each row of ``m`` (see :attr:`FitConfig.segments`);
    None: one segment.
    """
    traces = _traces(m, segment)
    if not traces:
        raise ConfigError("no pulse steps (rows with polarity +1/-1 and consecutive pulse "
                          "numbers) to fit", source=m.source)
    ids = np.unique(np.fromiter((k[0] for k in traces), dtype=np.int64))
    counts = {int(d): [0, 0] for d in ids}
    for (d, _c, pol, _s), tr in traces.items():
        counts[d][0 if pol > 0 else 1] += len(tr.pulse)
    keep = np.array([min(counts[int(d)]) >= min_steps for d in ids])
    span = {}
    for (d, _c, _pol, _s), tr in traces.items():
        if len(tr.pulse):
            lo, hi = span.get(d, (np.inf, -np.inf))
            span[d] = (min(lo, tr.before.min(), tr.after.min()),
                       max(hi, tr.before.max(), tr.after.max()))
    ranges = np.array([span.get(int(d), (0.0, 0.0))[1] - span.get(int(d), (0.0, 0.0))[0]
                       for d in ids])
    stuck = keep & (ranges <= 1e-3 * np.median(ranges[keep])) if keep.any() else keep
    dropped = [int(d) for d in ids[~keep]]
    stuck_ids = [int(d) for d in ids[stuck]]
    ids = ids[keep & ~stuck]
    if not len(ids):
        raise ConfigError(f"no device has {min_steps} or more up and down steps",
                          source=m.source)
    index = {int(d): i for i, d in enumerate(ids)}
    pulse_sel = m.polarity != 0
    g_all = m.conductance[pulse_sel]
    g0 = float(np.percentile(g_all, 0.5))
    s0 = float(np.percentile(g_all, 99.5)) - g0
    if not np.isfinite(s0) or s0 <= 0:
        raise ConfigError("the conductance does not change (all reads equal): nothing to fit",
                          source=m.source)
    parts: dict[int, list] = {1: [], -1: []}
    plot_traces = {}
    n_trace = 0
    for (d, c, pol, _s), tr in sorted(traces.items()):
        if d not in index or not len(tr.pulse):
            continue
        i = index[d]
        ub = (tr.before - g0) / s0
        ua = (tr.after - g0) / s0
        parts[pol].append((np.full(len(ub), i), ub, ua - ub, np.full(len(ub), n_trace)))
        n_trace += 1
        piece = (np.r_[tr.pulse[0] - 1, tr.pulse], np.r_[ub[0], ua])
        if (i, c, pol) in plot_traces:  # a half-cycle cut into segments: one plotted trace
            piece = tuple(np.r_[a, b] for a, b in zip(plot_traces[(i, c, pol)], piece,
                                                     strict=True))
        plot_traces[(i, c, pol)] = piece
    sides = {}
    tr_ids = {}
    for pol in (1, -1):
        if not parts[pol]:
            raise ConfigError("needs both up and down steps", source=m.source)
        dev, u, du, tid = (np.concatenate(x) for x in zip(*parts[pol], strict=True))
        sides[pol] = Side(u=u, dev=dev.astype(np.int64), du=du)
        tr_ids[pol] = tid
    # robust per-device extremes of the reads
    lo0 = np.empty(len(ids))
    hi0 = np.empty(len(ids))
    all_dev = np.concatenate([sides[1].dev, sides[-1].dev])
    all_u = np.concatenate([sides[1].u, sides[-1].u, sides[1].u + sides[1].du,
                            sides[-1].u + sides[-1].du])
    all_dev = np.concatenate([all_dev, all_dev])
    order = np.argsort(all_dev, kind="stable")
    bounds = np.searchsorted(all_dev[order], np.arange(len(ids) + 1))
    for i in range(len(ids)):
        vals = all_u[order[bounds[i]:bounds[i + 1]]]
        lo0[i], hi0[i] = np.percentile(vals, [0.5, 99.5])
    rows = np.full(len(ids), -1, dtype=np.int64)
    cols = np.full(len(ids), -1, dtype=np.int64)
    if m.row is not None and m.col is not None:
        first = {}
        for d, r, c in zip(m.device.tolist(), m.row.tolist(), m.col.tolist(), strict=True):
            first.setdefault(d, (r, c))
        for d, i in index.items():
            rows[i], cols[i] = first.get(d, (-1, -1))
    read_var, read_dof = _read_noise_rows(m, g0, s0, segment)
    return StepData(devices=ids, rows=rows, cols=cols, g0=g0, s0=s0, up=sides[1],
                    down=sides[-1], trace_up=tr_ids[1], trace_down=tr_ids[-1], lo0=lo0,
                    hi0=hi0, read_var=read_var, read_dof=read_dof, dropped=dropped, stuck=stuck_ids,
                    traces=plot_traces)


def _read_noise_rows(m: Measurements, g0: float, s0: float,
                     segment: np.ndarray | None = None) -> tuple[float | None, int]:
    """Pooled variance (u^2) of repeated reads per (device, level, segment) and its dof."""
    sel = m.polarity == 0
    if sel.sum() < 3:
        return None, 0
    u = (m.conductance[sel] - g0) / s0
    key = m.device[sel] * 1_000_003 + m.cycles()[sel]
    if segment is not None:
        key = key * 1_000 + segment[sel]
    _, grp = np.unique(key, return_inverse=True)
    n = np.bincount(grp).astype(float)
    mean = np.bincount(grp, u) / n
    ss = np.bincount(grp, (u - mean[grp]) ** 2)
    dof = int((n - 1).sum())
    if dof < 2:
        return None, 0
    return float(ss.sum() / dof), dof


# ---- one model ------------------------------------------------------------------------


@dataclass
class _Fitted:
    model: FitModel
    p: np.ndarray
    glob: np.ndarray
    frame: Frame
    resid_up: np.ndarray
    resid_down: np.ndarray
    pred_up: np.ndarray
    pred_down: np.ndarray
    converged: bool
    status_msg: str
    nfev: int
    seconds: float
    estimate: Estimate | None = None


def _base_init(data: StepData, soft: bool) -> np.ndarray:
    """Starting lo, hi, s_up, s_dn per device [D, 4]."""
    n_dev = data.n_dev
    base = np.empty((n_dev, 4))
    base[:, 0], base[:, 1] = data.lo0, data.hi0
    for k, side in enumerate((data.up, data.down)):
        lo, hi = data.lo0[side.dev], data.hi0[side.dev]
        inner = (side.u > lo + 0.25 * (hi - lo)) & (side.u < hi - 0.25 * (hi - lo))
        towards = 1.0 if k == 0 else -1.0  # the step towards the direction, signed
        signed = _median_by(side.dev[inner], towards * side.du[inner], n_dev,
                            towards * side.du, side.dev)
        # a device that does not move towards the direction on the whole (data the
        # models cannot explain): the magnitude's median, so that it starts somewhere
        size = _median_by(side.dev[inner], np.abs(side.du[inner]), n_dev,
                          np.abs(side.du), side.dev)
        base[:, 2 + k] = np.where(signed > 0, signed, size)
    if soft:
        from rpuhw.calibration.fit_models import _regress

        slope_u, icpt_u = _regress(*_inner(data.up, data, 1.0), n_dev)
        slope_d, icpt_d = _regress(*_inner(data.down, data, -1.0), n_dev)
        good = (slope_u < 0) & (slope_d > 0)
        hi = np.where(good, -icpt_u / np.where(good, slope_u, -1.0), data.hi0)
        lo = np.where(good, -icpt_d / np.where(good, slope_d, 1.0), data.lo0)
        span0 = data.hi0 - data.lo0
        good &= (hi > data.hi0 - 0.1 * span0) & (lo < data.lo0 + 0.1 * span0) & \
            (hi - lo < 5 * span0)
        base[:, 0] = np.where(good, lo, data.lo0)
        base[:, 1] = np.where(good, hi, data.hi0)
        span = base[:, 1] - base[:, 0]
        base[:, 2] = np.where(good, -slope_u * span, 2 * base[:, 2])
        base[:, 3] = np.where(good, slope_d * span, 2 * base[:, 3])
    base[:, 2:] = np.maximum(base[:, 2:], 1e-9)
    return base


def _inner(side: Side, data: StepData, towards: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The steps of the inner 80 % of every device's range: device, state and the step
    towards the side's direction (``towards`` +1 up, -1 down), signed. Not ``|du|``: with
    read noise near the step the measured step is often of the wrong sign, and the mean of
    its magnitude is then biased up most where the step is smallest, which flattens the
    step's dependence on the state (measured: soft bounds' regression then put 6 of 64
    devices' starting bounds 1-3 ranges beyond their reads, and their fits never came
    back)."""
    lo, hi = data.lo0[side.dev], data.hi0[side.dev]
    sel = (side.u > lo + 0.1 * (hi - lo)) & (side.u < hi - 0.1 * (hi - lo))
    return side.dev[sel], side.u[sel], towards * side.du[sel]


def _median_by(dev: np.ndarray, x: np.ndarray, n_dev: int, x_all: np.ndarray,
               dev_all: np.ndarray) -> np.ndarray:
    """Median of x per device (falls back to the mean of x_all for empty devices)."""
    out = np.bincount(dev_all, x_all, n_dev) / np.maximum(np.bincount(dev_all, None, n_dev), 1)
    order = np.argsort(dev, kind="stable")
    edges = np.searchsorted(dev[order], np.arange(n_dev + 1))
    xs = x[order]
    for i in range(n_dev):
        if edges[i + 1] > edges[i]:
            out[i] = np.median(xs[edges[i]:edges[i + 1]])
    return out


def _fitted(fm: FitModel, data: StepData, frame: Frame, p: np.ndarray, glob: np.ndarray,
            est: Estimate | None, seconds: float) -> _Fitted:
    """A :class:`_Fitted` with the one-step residuals of ``data`` (for the checks)."""
    up, dn = data.up, data.down
    pred_up = fm.step(True, up.u, p[up.dev], glob, frame)
    pred_dn = fm.step(False, dn.u, p[dn.dev], glob, frame)
    finite = bool(np.all(np.isfinite(p)) and np.all(np.isfinite(glob)))
    return _Fitted(model=fm, p=p, glob=glob, frame=frame, resid_up=up.du - pred_up,
                   resid_down=dn.du - pred_dn, pred_up=pred_up, pred_down=pred_dn,
                   converged=bool(finite and (est is None or est.converged)),
                   status_msg="" if est is None else est.message,
                   nfev=0 if est is None else est.evaluations, seconds=seconds,
                   estimate=est)


def _start(fm: FitModel, data: StepData) -> tuple[Frame, np.ndarray, np.ndarray]:
    """The frame of a fit and its starting values: per-device moments of the steps
    (:func:`_base_init`) and the model's own starting values (:meth:`FitModel.init`)."""
    frame = Frame(u_ref=0.5 * float(np.mean(data.lo0) + np.mean(data.hi0)),
                  h_ref=0.5 * float(np.mean(data.hi0) - np.mean(data.lo0)))
    base = _base_init(data, soft=fm.name in ("soft_bounds", "pow_step"))
    _unreached_bounds_outside(data, base)
    inner = tuple(Side(u=u, dev=d, du=du) for d, u, du in
                  (_inner(data.up, data, 1.0), _inner(data.down, data, -1.0)))
    extra, glob = fm.init(inner, base, frame)
    lo_e, hi_e = fm.extra_bounds()
    extra = np.clip(extra, lo_e, hi_e)
    lo_g, hi_g = fm.glob_bounds()
    glob = np.clip(np.asarray(glob, dtype=float), lo_g, hi_g)
    return frame, np.concatenate([base, extra], axis=1), glob


def _unreached_bounds_outside(data: StepData, base: np.ndarray, tail: int = 20) -> None:
    """Move the starting bound of a device beyond its reads where its traces were still
    moving at their end (the mean of the last ``tail`` steps of each half-cycle towards
    the bound is above a third of the device's mean step towards it): a hard bound started inside
    the reads is a barrier the optimiser cannot cross (the clip), and the likelihood
    leaves a bound that no read reached where it starts."""
    for k, (side, trace) in enumerate(((data.down, data.trace_down), (data.up, data.trace_up))):
        # each device's mean step towards the bound (signed: read noise averages out)
        towards = side.du if k == 1 else -side.du
        n = np.maximum(np.bincount(side.dev, None, data.n_dev), 1)
        med = np.maximum(np.bincount(side.dev, towards, data.n_dev) / n, 0.0)
        moving = np.zeros(data.n_dev, dtype=bool)
        ends = np.flatnonzero(np.r_[trace[1:] != trace[:-1], True])
        for e in ends:
            i = side.dev[e]
            lo = max(e - tail + 1, 0)
            sel = slice(lo, e + 1)
            if np.all(trace[sel] == trace[e]):
                moving[i] |= float(np.mean(towards[sel])) > med[i] / 3.0
        u_all = np.concatenate([side.u, side.u + side.du])
        d_all = np.concatenate([side.dev, side.dev])
        if k == 0:
            edge = np.full(data.n_dev, np.inf)
            np.minimum.at(edge, d_all, u_all)
            base[:, 0] = np.where(moving, np.minimum(base[:, 0], edge - 5 * med), base[:, 0])
        else:
            edge = np.full(data.n_dev, -np.inf)
            np.maximum.at(edge, d_all, u_all)
            base[:, 1] = np.where(moving, np.maximum(base[:, 1], edge + 5 * med), base[:, 1])


def _estimate(name: str, data: StepData, st: ss.StepTable, w: ss.Windows, cfg: FitConfig,
              start: Estimate | None = None, tol: float = ss.TOL_NATS
              ) -> tuple[FitModel, Frame, Estimate, float]:
    """Maximum likelihood of model ``name`` on the chains ``w`` (state-space filter;
    converged when a round of L-BFGS gains less than ``tol`` nats)."""
    t0 = time.perf_counter()
    fm = FIT_MODELS.get(name)(cfg.piecewise_nodes)
    frame, p0, glob0 = _start(fm, data)
    if start is None:
        est = ss.estimate(fm, frame, st, w, p0, glob0, max_iter=cfg.max_iter, tol=tol)
    else:
        est = ss.estimate(fm, frame, st, w, start.p, start.glob,
                          noise0=(start.sigma_c, start.sigma_r), max_iter=cfg.max_iter,
                          tol=tol)
    return fm, frame, est, time.perf_counter() - t0


# ---- residual analysis ------------------------------------------------------------------


def _runs_ratio(resid: np.ndarray, traces: np.ndarray, scale: float) -> float:
    """Observed / expected number of sign runs of the residuals within traces."""
    sel = np.abs(resid) > 1e-9 * scale
    r, t = resid[sel], traces[sel]
    if len(r) < 20:
        return float("nan")
    s = r > 0
    new_trace = np.r_[True, t[1:] != t[:-1]]
    runs = np.sum(new_trace | np.r_[True, s[1:] != s[:-1]])
    _, tid = np.unique(t, return_inverse=True)
    n = np.bincount(tid).astype(float)
    n_pos = np.bincount(tid, s.astype(float))
    expected = np.sum(1.0 + 2.0 * n_pos * (n - n_pos) / n)
    return float(runs / expected)


CURVE_REPLICAS = 4
"""Simulated replicas of the measurement that the binned mean step curve is compared with
(:func:`_curve_error`)."""


def _binned_steps(side: Side, p: np.ndarray, bins: int, values: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``values`` (default: the measured steps) per bin of the position between
    each device's fitted bounds ([bins]), and the steps per bin."""
    lo, hi = p[side.dev, 0], p[side.dev, 1]
    frac = np.clip((side.u - lo) / np.maximum(hi - lo, 1e-12), 0, 1 - 1e-12)
    b = (frac * bins).astype(int)
    n = np.bincount(b, minlength=bins).astype(float)
    x = side.du if values is None else values
    return np.bincount(b, x, bins) / np.maximum(n, 1), n


def _curve_error(f: _Fitted, data: StepData, bins: int, st: ss.StepTable | None = None,
                 seed: int = 0) -> float:
    """Relative RMS miss of the binned mean step curve (bins between device bounds).

    The measured curve bins each step by its measured starting state; with read noise
    comparable to the step that is not the device's mean step at the bin's state
    (regression to the mean: a read above the state is followed by a smaller step, most
    where the states pile up at a bound). So the reference is the same curve of
    :data:`CURVE_REPLICAS` replicas of the measurement simulated from the fit (the same
    devices, protocol and noise: :func:`~rpuhw.calibration.bootstrap.simulate`), which
    carries the same bias; without the table ``st`` or an estimate, the fit's own
    one-step prediction at the measured states."""
    num = den = 0.0
    sims = []
    if st is not None and f.estimate is not None:
        from rpuhw.calibration.bootstrap import simulate

        sim, _, _ = simulate(f.model, f.frame, st, f.p, f.glob,
                             float(f.estimate.sigma_c[0]), float(f.estimate.sigma_r[0]),
                             CURVE_REPLICAS, seed=seed, resample=False)
        sims = [_replica_data(sim, r * data.n_dev, data.n_dev, data)
                for r in range(CURVE_REPLICAS)]
    for k, (side, resid) in enumerate(((data.up, f.resid_up), (data.down, f.resid_down))):
        obs, n = _binned_steps(side, f.p, bins)
        if sims:
            ref = np.zeros(bins)
            weight = np.zeros(bins)
            for d in sims:
                r_side = d.up if k == 0 else d.down
                m_r, n_r = _binned_steps(r_side, f.p, bins)
                ref += m_r * n_r
                weight += n_r
            miss = np.where(weight > 0, obs - ref / np.maximum(weight, 1), 0.0)
        else:
            miss = _binned_steps(side, f.p, bins, resid)[0]
        num += np.sum(n * miss ** 2)
        den += np.sum(n * obs ** 2)
    return float(math.sqrt(num / den)) if den > 0 else float("inf")


def _free(f: _Fitted, data: StepData) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the up and down steps not near a bound (gap >= 3 |mean step| > 0).

    Steps near a hard bound are clipped (their noise is truncated, and a device resting
    at its bound gives runs of equal tiny residuals), so the noise estimate and the runs
    test use only these.
    """
    out = []
    for side, pred, up in ((data.up, f.pred_up, True), (data.down, f.pred_down, False)):
        lo, hi = f.p[side.dev, 0], f.p[side.dev, 1]
        gap = (hi - side.u) if up else (side.u - lo)
        out.append((gap >= 3 * np.abs(pred)) & (np.abs(pred) > 0))
    return out[0], out[1]


def _score(f: _Fitted, data: StepData, cfg: FitConfig, n: int, k: int, ll: float,
           st: ss.StepTable | None = None) -> ModelScore:
    """Checks of one fit: convergence, bounds in order, structure of the one-step
    residuals (sign runs) and the binned mean step curve; ``n`` reads, ``k`` parameters,
    ``ll`` the log-likelihood of all the data."""
    r = np.concatenate([f.resid_up, f.resid_down])
    scale = float(np.mean(np.abs(np.concatenate([data.up.du, data.down.du])))) or 1.0
    tr = np.concatenate([data.trace_up, data.trace_down])
    free = np.concatenate(_free(f, data))
    runs = _runs_ratio(r[free], tr[free], scale)
    exact = math.sqrt(float(np.mean(r * r))) < 1e-6 * scale
    curve = _curve_error(f, data, cfg.curve_bins, st, cfg.seed)
    reasons = []
    if not f.converged:
        reasons.append(f"the likelihood maximisation did not converge ({f.status_msg})")
    if not np.all(f.p[:, 1] > f.p[:, 0]):
        reasons.append(f"{int(np.sum(f.p[:, 1] <= f.p[:, 0]))} device(s) with g_max <= g_min")
    if not exact and math.isfinite(runs) and runs < cfg.runs_min:
        reasons.append(f"residuals are structured: {runs:.2f} of the sign runs expected for "
                       f"independent noise (< {cfg.runs_min})")
    if not exact and curve > cfg.curve_error_max:
        reasons.append(f"mean step curve misses the data by {100 * curve:.0f} % RMS "
                       f"(> {100 * cfg.curve_error_max:.0f} %)")
    return ModelScore(model=f.model.name, converged=f.converged, ok=not reasons,
                      reason="; ".join(reasons), n=n, k=k, rss=float(np.sum(r * r)),
                      log_likelihood=ll, aic=2 * k - 2 * ll,
                      bic=k * math.log(max(n, 1)) - 2 * ll, runs_ratio=runs,
                      curve_error=curve, nfev=f.nfev, seconds=f.seconds)


# ---- uncertainties ----------------------------------------------------------------------


def _device_jacobian(f: _Fitted, data: StepData) -> np.ndarray:
    """d residual / d (own device's parameters), [N, k_dev] by central differences."""
    up, dn = data.up, data.down
    k_dev = f.p.shape[1]

    def pred(p: np.ndarray) -> np.ndarray:
        return np.concatenate([f.model.step(True, up.u, p[up.dev], f.glob, f.frame),
                               f.model.step(False, dn.u, p[dn.dev], f.glob, f.frame)])

    cols = []
    for j in range(k_dev):
        h = 1e-6 * np.maximum(np.abs(f.p[:, j]), np.abs(f.p[:, 1] - f.p[:, 0]))
        pp, pm = f.p.copy(), f.p.copy()
        pp[:, j] += h
        pm[:, j] -= h
        dev = np.concatenate([up.dev, dn.dev])
        cols.append((pred(pm) - pred(pp)) / (2 * h[dev]))  # d resid = -d pred
    return np.stack(cols, axis=1)


def _device_cov(f: _Fitted, data: StepData) -> np.ndarray:
    """Per-device sandwich covariance [D, k, k] of the own parameters (globals fixed)."""
    jac = _device_jacobian(f, data)
    r = np.concatenate([f.resid_up, f.resid_down])
    dev = np.concatenate([data.up.dev, data.down.dev])
    n_dev, k = data.n_dev, jac.shape[1]
    a = np.empty((n_dev, k, k))
    b = np.empty((n_dev, k, k))
    for i in range(k):
        for j in range(i, k):
            prod = jac[:, i] * jac[:, j]
            a[:, i, j] = a[:, j, i] = np.bincount(dev, prod, n_dev)
            b[:, i, j] = b[:, j, i] = np.bincount(dev, prod * r * r, n_dev)
    ainv = np.linalg.pinv(a, rcond=1e-10, hermitian=True)
    return ainv @ b @ ainv


def _glob_se(f: _Fitted, data: StepData) -> np.ndarray:
    """Standard errors of the shared parameters (own devices' parameters held fixed)."""
    if not len(f.glob):
        return np.zeros(0)
    up, dn = data.up, data.down

    def pred(g: np.ndarray) -> np.ndarray:
        return np.concatenate([f.model.step(True, up.u, f.p[up.dev], g, f.frame),
                               f.model.step(False, dn.u, f.p[dn.dev], g, f.frame)])

    cols = []
    for j in range(len(f.glob)):
        h = 1e-6 * max(abs(f.glob[j]), 1e-3)
        gp, gm = f.glob.copy(), f.glob.copy()
        gp[j] += h
        gm[j] -= h
        cols.append((pred(gp) - pred(gm)) / (2 * h))
    jac = np.stack(cols, axis=1)
    r = np.concatenate([f.resid_up, f.resid_down])
    a = jac.T @ jac
    b = (jac * (r * r)[:, None]).T @ jac
    ainv = np.linalg.pinv(a, rcond=1e-10, hermitian=True)
    return np.sqrt(np.clip(np.diag(ainv @ b @ ainv), 0, None))


# ---- weight units and population -------------------------------------------------------


def _per_device(f: _Fitted, u_mid: float, du: float, p: np.ndarray | None = None
                ) -> dict[str, np.ndarray]:
    """Per-device parameters in weight units (w = 2 (u - u_mid) / du)."""
    p = f.p if p is None else p
    out = f.model.weights(p, f.glob, f.frame, u_mid, du)
    up, dn = out["dw_up"], out["dw_down"]
    tot = up + dn
    out["dw"] = 0.5 * tot  # half-sum and half-difference: the inverse of the draw
    out["dw_diff"] = 0.5 * (up - dn)
    big = np.maximum(up, dn)  # a device's own aihwkit up_down (its larger step is its dw_min)
    out["up_down"] = np.where(big > 0, (up - dn) / np.where(big > 0, big, 1.0), 0.0)
    out["w_min"] = 2.0 * (p[:, 0] - u_mid) / du
    out["w_max"] = 2.0 * (p[:, 1] - u_mid) / du
    return out


def _device_se(f: _Fitted, cov: np.ndarray, u_mid: float, du: float
               ) -> dict[str, np.ndarray]:
    """Delta-method standard errors of every per-device quantity of :func:`_per_device`."""
    base = _per_device(f, u_mid, du)
    k = f.p.shape[1]
    grads = {name: np.empty((f.p.shape[0], k)) for name in base}
    for j in range(k):
        h = 1e-6 * np.maximum(np.abs(f.p[:, j]), np.abs(f.p[:, 1] - f.p[:, 0]))
        pp, pm = f.p.copy(), f.p.copy()
        pp[:, j] += h
        pm[:, j] -= h
        hi, lo = _per_device(f, u_mid, du, pp), _per_device(f, u_mid, du, pm)
        for name in base:
            grads[name][:, j] = (hi[name] - lo[name]) / (2 * h)
    return {name: np.sqrt(np.clip(np.einsum("di,dij,dj->d", g, cov, g), 0, None))
            for name, g in grads.items()}


def _sd(var: np.ndarray) -> np.ndarray:
    """Standard errors from variances; NaN where a variance is not positive (a covariance
    that is not positive definite at a poorly converged device: :func:`_random_effects`
    then gives that device no weight, without numpy's invalid-value warning)."""
    var = np.asarray(var, dtype=float)
    return np.sqrt(np.where(var > 0, var, np.nan))


def _random_effects(x: np.ndarray, se: np.ndarray) -> tuple[float, float]:
    """Population mean and spread of per-device estimates ``x`` with standard errors ``se``.

    Random-effects model ``x_i = mu + tau xi_i + se_i eps_i`` (Paule-Mandel): tau^2 solves
    ``sum_i w_i (x_i - mu)^2 = n - 1`` with ``w_i = 1 / (tau^2 + se_i^2)`` and
    ``mu = sum w_i x_i / sum w_i``. Devices whose own estimate is poor (large se_i) weigh
    less, and the spread is corrected for the estimation error (with equal se_i it is
    ``var(x) - se^2``).
    """
    n = len(x)
    if n < 2:
        return float(x.mean()) if n else 0.0, 0.0
    se2 = np.where(np.isfinite(se), se, 1e30) ** 2

    def q(t2: float) -> tuple[float, float]:
        w = 1.0 / (t2 + se2 + 1e-300)
        # a standard error ~ 0 makes w ~ 1e300 and w x overflow; mu does not depend on
        # the weights' scale
        wm = w / np.max(w) if float(np.max(w)) >= 1e290 else w
        mu = float(np.sum(wm * x) / np.sum(wm))
        with np.errstate(over="ignore"):  # inf: spread far beyond the tiny standard errors
            return float(np.sum(w * (x - mu) ** 2)) - (n - 1), mu

    hi = float(np.var(x)) * 4 + 1e-300
    if q(0.0)[0] <= 0:
        return q(0.0)[1], 0.0
    lo = 0.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if q(mid)[0] > 0:
            lo = mid
        else:
            hi = mid
    return q(hi)[1], math.sqrt(hi)


def _spread(x: np.ndarray, se: np.ndarray) -> float:
    """Spread across devices corrected for the devices' own estimation error."""
    return _random_effects(x, se)[1]


SHAPE_BOUNDS = ("soft_bounds", "pow_step")
"""Models whose step goes to zero at the bounds, so the bounds follow from the step shape
even when a device never gets there; the others have hard bounds, seen only when reached."""


REACHED_NATS = 3.0
"""A hard bound counts as reached (measured) when the device's log-likelihood at the
fitted bound exceeds that with the bound moved out of the reads' sight
(:meth:`~rpuhw.calibration.statespace.Problem.bound_support`) by more than this. Where
the device never reached it, the likelihood is flat beyond the last reads and the fitted
bound sits there only by the noise of the last few reads: the ratio is then the maximum
of a few nats' noise (twice it is chi-square-like with one or two degrees of freedom, 6
nats is beyond its 99th percentile: 2 x 3.0 = 6.0 > 5.99 = chi2_2(0.95), 6.63 =
chi2_1(0.99)); a reached bound clips tens of steps and gains tens to thousands."""


def _reached(f: _Fitted, data: StepData, support: np.ndarray | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per device: was the lower / upper hard bound reached (the clip active >= 2 times,
    and, given ``support`` [D, 2] (:meth:`~rpuhw.calibration.statespace.Problem.
    bound_support`), the likelihood prefers the fitted bound to one out of sight by more
    than :data:`REACHED_NATS`)?"""
    out = []
    for k, (side, up) in enumerate(((data.down, False), (data.up, True))):
        p = f.p[side.dev]
        mag = f.model.magnitude(up, side.u, p, f.glob, f.frame)
        gap = (p[:, 1] - side.u) if up else (side.u - p[:, 0])
        clipped = mag > gap + 1e-9 * np.abs(mag)
        hit = np.bincount(side.dev, clipped, data.n_dev) >= 2
        if support is not None:
            hit &= support[:, k] > REACHED_NATS
        out.append(hit)
    return out[0], out[1]


def _censored_normal(x: np.ndarray, reached: np.ndarray, lower: bool) -> tuple[float, float]:
    """Mean and std of a normal population of bounds, some only known to lie beyond x.

    A device that never reached its lower (upper) bound only tells that the bound is
    below (above) its extreme read: maximum likelihood with those as censored values
    (Tobit), ``ln L = sum_seen ln phi((x - mu)/sigma)/sigma + sum_censored ln Phi(...)``.
    """
    from scipy.optimize import minimize
    from scipy.stats import norm

    seen, cens = x[reached], x[~reached]
    if len(cens) == 0 or len(seen) < 2:
        return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0
    sign = 1.0 if lower else -1.0  # lower: true < c -> Phi((c - mu)/s)

    def nll(th: np.ndarray) -> float:
        mu, s = th[0], math.exp(th[1])
        return -(np.sum(norm.logpdf(seen, mu, s)) +
                 np.sum(norm.logcdf(sign * (cens - mu) / s)))

    s0 = max(float(x.std(ddof=1)), 1e-6 * (abs(float(x.mean())) + 1e-12), 1e-12)
    res = minimize(nll, np.array([float(x.mean()), math.log(s0)]), method="Nelder-Mead",
                   options={"xatol": 1e-10, "fatol": 1e-10, "maxiter": 2000})
    return float(res.x[0]), float(math.exp(res.x[1]) * math.sqrt(len(x) / max(len(x) - 1, 1)))


def _population(f: _Fitted, data: StepData, cfg: FitConfig, read_var: float,
                read_se: float, c2c: float, c2c_se: float,
                cov: np.ndarray | None = None,
                support: np.ndarray | None = None) -> dict[str, Any]:
    """Population parameters from the per-device fits (module doc, step 4); ``cov``: the
    per-device covariance of ``f.p`` (default: the one-step sandwich,
    :func:`_device_cov`; ``_fit`` passes the likelihood's,
    :meth:`~rpuhw.calibration.statespace.Problem.device_cov`)."""
    lo, hi = f.p[:, 0], f.p[:, 1]
    if cov is None:
        cov = _device_cov(f, data)
    notes = []
    if f.model.name in SHAPE_BOUNDS:
        reached_lo = reached_hi = np.ones(data.n_dev, dtype=bool)
        u_min = _random_effects(lo, _sd(cov[:, 0, 0]))[0]
        u_max = _random_effects(hi, _sd(cov[:, 1, 1]))[0]
        sd_lo = sd_hi = None
    else:
        reached_lo, reached_hi = _reached(f, data, support)
        # a bound no read reached is only known to lie beyond the device's extreme
        # read: that read is its censoring point (the likelihood leaves such a bound
        # wherever it started, possibly far out)
        lo_c = np.where(reached_lo, lo, data.lo0)
        hi_c = np.where(reached_hi, hi, data.hi0)
        u_min, sd_lo = _censored_normal(lo_c, reached_lo, lower=True)
        u_max, sd_hi = _censored_normal(hi_c, reached_hi, lower=False)
        for name, r in (("lower", reached_lo), ("upper", reached_hi)):
            if (~r).any():
                notes.append(f"{int((~r).sum())} of {data.n_dev} devices never reached their "
                             f"{name} bound: estimated as censored values (Tobit)")
            if r.sum() < 2:
                notes.append(f"fewer than 2 devices reached their {name} bound: its mean and "
                             "spread are only the extent of the measured range")
    u_mid, du = 0.5 * (u_min + u_max), u_max - u_min
    dev = _per_device(f, u_mid, du)
    se = _device_se(f, cov, u_mid, du)
    n = data.n_dev
    sq = math.sqrt(n)
    steps = one_sided_from_moments(*_random_effects(dev["dw"], se["dw"]),
                                   *_random_effects(dev["dw_diff"], se["dw_diff"]))
    dw_min = steps.scale
    params: dict[str, Any] = {
        "dw_min": dw_min,
        "dw_min_dtod": steps.scale_dtod,
        "dw_min_std": c2c,
        "up_down": steps.up_down,
        "up_down_dtod": steps.up_down_dtod,
        "w_min": -1.0,
        "w_max": 1.0,
        "w_min_dtod": (_spread(dev["w_min"], se["w_min"]) if sd_lo is None
                       else 2.0 * sd_lo / du),
        "w_max_dtod": (_spread(dev["w_max"], se["w_max"]) if sd_hi is None
                       else 2.0 * sd_hi / du),
    }
    larger = dev["dw"] + np.sign(steps.up_down) * dev["dw_diff"]  # the larger direction
    unc: dict[str, float] = {
        "dw_min": float(larger.std(ddof=1) / sq) if n > 1 else 0.0,
        "up_down": (float((2.0 * dev["dw_diff"] / dw_min).std(ddof=1) / sq)
                    if n > 1 and dw_min > 0 else 0.0),
        "dw_min_std": c2c_se,
    }
    for key in ("dw_min_dtod", "up_down_dtod", "w_min_dtod", "w_max_dtod"):
        unc[key] = params[key] / math.sqrt(2.0 * max(n - 1, 1))
    name = f.model.name
    if name == "linear_step":
        for d, sign in (("up", -1.0), ("down", 1.0)):
            gam = sign * dev[f"gamma_{d}"]  # slopes times the mean bound magnitude (1)
            params[f"gamma_{d}"] = _random_effects(gam, se[f"gamma_{d}"])[0]
            params[f"gamma_{d}_dtod"] = _spread(gam, se[f"gamma_{d}"])
            unc[f"gamma_{d}"] = float(gam.std(ddof=1) / sq) if n > 1 else 0.0
            unc[f"gamma_{d}_dtod"] = params[f"gamma_{d}_dtod"] / math.sqrt(2.0 * max(n - 1, 1))
    elif name == "pow_step":
        gu, gd = dev["pow_gamma_up"], dev["pow_gamma_down"]
        se_m = 0.5 * np.hypot(se["pow_gamma_up"], se["pow_gamma_down"])
        half_sum, half_diff = 0.5 * (gu + gd), 0.5 * (gu - gd)
        ex = one_sided_from_moments(*_random_effects(half_sum, se_m),
                                    *_random_effects(half_diff, se_m))
        pg = ex.scale if ex.scale > 0 else 1.0
        params.update(pow_gamma=ex.scale, pow_gamma_dtod=ex.scale_dtod,
                      pow_up_down=ex.up_down, pow_up_down_dtod=ex.up_down_dtod)
        larger_g = half_sum + np.sign(ex.up_down) * half_diff
        unc.update(pow_gamma=float(larger_g.std(ddof=1) / sq) if n > 1 else 0.0,
                   pow_up_down=float((2.0 * half_diff / pg).std(ddof=1) / sq) if n > 1 else 0.0)
    elif name in ("exp_step", "piecewise"):
        params.update(f.model.spec_extras(f.glob))
        gse = _glob_se(f, data)
        if name == "exp_step":
            unc.update(A_up=float(np.exp(f.glob[0]) * gse[0]),
                       A_down=float(np.exp(f.glob[1]) * gse[1]),
                       gamma_up=float(gse[2]), gamma_down=float(gse[3]))
        else:
            half = len(gse) // 2
            unc["piecewise_up"] = float(np.max(gse[:half]))
            unc["piecewise_down"] = float(np.max(gse[half:]))
    # a valid device YAML (|up_down| < 1) even for data no model explains
    params["up_down"] = float(np.clip(params["up_down"], -0.99, 0.99))
    s0 = data.s0
    g_min, g_max = data.g0 + u_min * s0, data.g0 + u_max * s0
    unc["g_min"] = 0.5 * du * params["w_min_dtod"] / sq * s0
    unc["g_max"] = 0.5 * du * params["w_max_dtod"] / sq * s0
    read_noise = 2.0 * math.sqrt(max(read_var, 0.0)) / du
    unc["read_noise"] = (read_se / (2 * math.sqrt(read_var)) * 2.0 / du
                         if read_var > 0 else 2.0 * math.sqrt(read_se) / du)
    per = {"device": data.devices, "row": data.rows, "col": data.cols,
           "g_min": data.g0 + lo * s0, "g_max": data.g0 + hi * s0,
           "dw_up": dev["dw_up"], "dw_down": dev["dw_down"], "dw": dev["dw"],
           "up_down": dev["up_down"], "w_min": dev["w_min"], "w_max": dev["w_max"]}
    for key in ("gamma_up", "gamma_down", "pow_gamma_up", "pow_gamma_down"):
        if key in dev:
            per[key] = dev[key]
    per["dw_se"] = se["dw"]
    per["reached_min"], per["reached_max"] = reached_lo, reached_hi
    return {"params": params, "unc": unc, "g_min": g_min, "g_max": g_max,
            "read_noise": read_noise, "per_device": per, "notes": notes}


# ---- entry point ------------------------------------------------------------------------


def _k(fm: FitModel, n_dev: int) -> int:
    """Free parameters of a model on ``n_dev`` devices (with the two noise parameters)."""
    return (len(BASE) + len(fm.extra_dev)) * n_dev + len(fm.glob) + 2


@dataclass
class _Choice:
    """The held-out comparison of the candidate models."""

    chosen: str
    best: str
    """The model with the highest held-out log-likelihood."""
    held_out: dict[str, float]
    per_device: dict[str, np.ndarray]
    margin: float
    margin_se: float
    thin: bool
    runner: str | None
    text: str
    fits: dict[str, tuple[FitModel, Frame, Estimate, float]]
    train_chains: int
    test_chains: int


TOL_CHOICE_NATS = 1.0
"""Convergence tolerance (nats per round, :meth:`~rpuhw.calibration.statespace._Solver.
solve_free`) of the training fits that only choose the model: the rounds' gains fall
geometrically (by 3-10x a round, measured), so the shortfall from the training optimum
is below the last round's gain, and the held-out score moves by about as much: under
1 nat against held-out margins' standard errors of tens of nats (41-560 measured on 12
devices). The chosen model's fit to all the data (warm-started from its training fit)
converges to :data:`~rpuhw.calibration.statespace.TOL_NATS`, which its parameters
need (a shortfall of d nats can move a parameter by sqrt(2 d) standard errors)."""


def beaten_on_most_devices(best: np.ndarray, other: np.ndarray, z: float) -> bool:
    """Whether the best model's per-device held-out scores ``best`` beat ``other``'s on
    more devices than a tie allows: a one-sided sign test, ``P(Binomial(n, 1/2) >=
    wins) < P(N(0, 1) > z)``. The paired standard error alone calls a model that fails
    badly on one device "tied" (that device's difference makes the spread huge)."""
    from scipy.stats import binom, norm

    n = len(best)
    if n < 2:
        return False
    wins = int(np.sum(best > other))
    return float(binom.sf(wins - 1, n, 0.5)) < float(norm.sf(z))


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of ``sum(a - b)`` over devices (per-device held-out scores): the
    spread of the differences times ``sqrt(devices)``; inf with one device."""
    n = len(a)
    return float(np.std(a - b, ddof=1) * math.sqrt(n)) if n > 1 else math.inf


def majority_winner(per_dev: dict[str, np.ndarray]) -> str | None:
    """The model whose held-out log-likelihood is higher than each other model's on more
    than half of the devices (a pairwise-majority, Condorcet, winner: every device's
    held-out cycles vote), or None when no model wins every pairing. Unlike the sum over
    devices, a vote is not swung by one device whose held-out reads a model misses by
    hundreds of nats (a hard bound resting on one training read)."""
    names = list(per_dev)
    for a in names:
        n = len(per_dev[a])
        if n and all(2 * int(np.sum(per_dev[a] > per_dev[b])) > n for b in names if b != a):
            return a
    return None


def pick_model(per_dev: dict[str, np.ndarray], k: dict[str, int], z: float
               ) -> tuple[str, list[str], str | None]:
    """The model choice from each model's per-device held-out log-likelihoods ``per_dev``
    and per-device parameter counts ``k``: ``(chosen, tied, majority winner)``, ``tied``
    starting with the chosen model (module doc, item 5).

    First the simplest model among those whose held-out sum the data cannot tell from
    the best (within ``z`` paired standard errors, not beaten on most devices); the
    devices' vote (:func:`majority_winner`) replaces it, unless that would trade it for a
    more flexible model that does not beat it on significantly many devices."""
    held = {n: float(v.sum()) for n, v in per_dev.items()}
    order = sorted(per_dev, key=lambda n: -held[n])
    best = order[0]
    close = [n for n in order if n == best or (
        held[best] - held[n] <= z * paired_se(per_dev[best], per_dev[n])
        and not beaten_on_most_devices(per_dev[best], per_dev[n], z))]
    simplest = min(close, key=lambda n: (k[n], order.index(n)))
    winner = majority_winner(per_dev)
    if winner is not None and winner != simplest and (
            k[winner] <= k[simplest]
            or beaten_on_most_devices(per_dev[winner], per_dev[simplest], z)):
        tied = [n for n in order if n != winner
                and not beaten_on_most_devices(per_dev[winner], per_dev[n], z)]
        return winner, [winner, *tied], winner
    return simplest, [simplest] + [n for n in close if n != simplest], winner


def _choose(names: list[str], data: StepData, st: ss.StepTable, w: ss.Windows,
            cfg: FitConfig) -> _Choice:
    """Fit every model on one fold of the chains and score the other (module doc)."""
    train, test = w.take(w.fold == 0), w.take(w.fold == 1)
    if len(test) == 0 or len(train) == 0:
        raise ConfigError("too few steps to hold any out for the model choice (needs two "
                          "cycles, or half-cycles of more than one window of "
                          f"{cfg.window} steps)")
    fits, held, per_dev = {}, {}, {}
    fms, frames, ests, secs = (list(x) for x in zip(
        *(_estimate(name, data, st, train, cfg, tol=TOL_CHOICE_NATS) for name in names),
        strict=True))
    group = np.zeros(st.n_dev, dtype=np.int64)
    joint = ss.Joint([ss.Problem(fm, fr, test, group, st.noise_ss, st.noise_dof)
                      for fm, fr in zip(fms, frames, strict=True)])
    with ss.torch.no_grad():
        th = [t for prob, e in zip(joint.problems, ests, strict=True)
              for t in prob.free(e.p, e.glob, e.sigma_c, e.sigma_r)]
        lls = joint.chain_ll(th).numpy()
    for i, name in enumerate(names):
        fm, frame, est = fms[i], frames[i], ests[i]
        fits[name] = (fm, frame, est, secs[i])
        ll = np.where(np.isfinite(lls[i]), lls[i], -1e300)
        per_dev[name] = np.bincount(test.dev.numpy(), ll, st.n_dev)
        held[name] = float(per_dev[name].sum())
    order = sorted(names, key=lambda n: -held[n])
    best = order[0]
    n_dev = st.n_dev
    chosen, close, winner = pick_model(per_dev, {n: _k(fits[n][0], 1) for n in names},
                                       cfg.margin_z)
    others = [n for n in order if n != chosen]
    runner = others[0] if others else None
    margin = held[chosen] - held[runner] if runner else math.inf
    margin_se = paired_se(per_dev[chosen], per_dev[runner]) if runner else math.inf
    thin = len(close) > 1
    by = ("even cycles held out, fitted on the odd ones" if w.folds_by == "cycles" else
          f"every other window of {cfg.window} steps held out (one cycle)")
    text = (f"{chosen}: held-out log-likelihood {held[chosen]:.1f} ({by}; {len(test)} of "
            f"{len(w)} windows)")
    if runner is not None:
        text += (f", {margin:+.1f} over {runner} (standard error {margin_se:.1f} over "
                 f"{n_dev} devices)")
    voted = winner is not None and chosen == winner
    if voted and n_dev > 1:
        fewest = min((n for n in names if n != chosen),
                     key=lambda n: int(np.sum(per_dev[chosen] > per_dev[n])))
        text += (f"; it scores higher than each other model on most devices (fewest: "
                 f"{int(np.sum(per_dev[chosen] > per_dev[fewest]))} of {n_dev} against "
                 f"{fewest})")
    elif winner is not None and winner != chosen:
        text += (f"; {winner} scores higher than each other model on most devices, but on "
                 f"only {int(np.sum(per_dev[winner] > per_dev[chosen]))} of {n_dev} against "
                 f"the simpler {chosen}: too few to prefer it (sign test at {cfg.margin_z:g} "
                 "standard errors)")
    if thin:
        tied = [n for n in close if n != chosen]
        why = (f"beaten on too few devices to tell (sign test at {cfg.margin_z:g} standard "
               f"errors); {chosen} wins each pairing on most devices"
               if voted else
               f"within {cfg.margin_z:g} standard errors of the best ({best}); {chosen} is "
               "the simplest of them")
        text += (f"; THIN MARGIN: {', '.join(tied)} {why}. More cycles, --pulses auto "
                 "(both bounds reached) or --reads-per-step 8 (less read noise per state) "
                 "would decide it")
    return _Choice(chosen=chosen, best=best, held_out=held, per_device=per_dev,
                   margin=margin, margin_se=margin_se, thin=thin, runner=runner, text=text,
                   fits=fits, train_chains=len(train), test_chains=len(test))


def fit(m: Measurements, model: str = "auto", config: FitConfig | None = None) -> FitResult:
    """Fit ``model`` (a registered name, or ``auto``: every model, chosen by the held-out
    likelihood) to ``m`` by maximum likelihood of the state-space model.

    Raises ConfigError for unusable data or an unknown model name; a fit that is not
    trustworthy comes back with ``ok = False`` and the ``reason``.
    """
    with ss.one_thread():
        return _fit(m, model, config or FitConfig())


def _fit(m: Measurements, model: str, cfg: FitConfig) -> FitResult:
    if cfg.criterion not in ("held_out", "bic", "aic"):
        raise ConfigError(f"expected 'held_out', 'bic' or 'aic', got {cfg.criterion!r}",
                          key="criterion")
    if model != "auto" and model not in FIT_MODELS:
        raise ConfigError(f"unknown model {model!r} (known: auto, "
                          f"{', '.join(sorted(FIT_MODELS))})", key="--model")
    if cfg.window < 2:
        raise ConfigError(f"must be >= 2, got {cfg.window}", key="window")
    discontinuities = find_discontinuities(m)
    cuts = sorted({d.row for d in discontinuities}) if cfg.segments else []
    segment = segment_index(len(m), cuts) if cuts else None
    data = prepare(m, cfg.min_steps, segment)
    index = {int(d): i for i, d in enumerate(data.devices)}
    st = ss.step_table(m, index, data.g0, data.s0, segment)
    w = ss.windows(st, cfg.window)
    names = sorted(FIT_MODELS) if model == "auto" else [model]
    scores: dict[str, ModelScore] = {}
    n_reads = int(float(w.k.sum()) + float(st.noise_dof.sum()) + len(st.noise_dof) * 0)
    choice = None
    if model == "auto" and cfg.criterion == "held_out":
        choice = _choose(names, data, st, w, cfg)
        chosen = choice.chosen
        fits = {}
        for name in names:  # every model's likelihood of all the data at its training fit
            fm, frame, est_tr, sec = choice.fits[name]
            if name == chosen:  # the chosen model fitted to all the data
                fits[name] = _estimate(name, data, st, w, cfg, start=est_tr)
                continue
            prob = ss.Problem(fm, frame, w, np.zeros(st.n_dev, dtype=np.int64),
                              st.noise_ss, st.noise_dof)
            with ss.torch.no_grad():
                ll = float(prob.total(prob.free(est_tr.p, est_tr.glob, est_tr.sigma_c,
                                                est_tr.sigma_r)))
            fits[name] = (fm, frame, dataclasses.replace(est_tr, log_likelihood=ll), sec)
    else:
        fits = {name: _estimate(name, data, st, w, cfg) for name in names}
    for name, (fm, frame, est, sec) in fits.items():
        f = _fitted(fm, data, frame, est.p, est.glob[0], est, sec)
        sc = _score(f, data, cfg, n_reads, _k(fm, data.n_dev), est.log_likelihood, st)
        if choice is not None:
            sc.held_out_ll = choice.held_out[name]
            sc.held_out = -2.0 * choice.held_out[name]
            d = choice.per_device[choice.best] - choice.per_device[name]
            sc.held_out_se = (float(np.std(d, ddof=1) * math.sqrt(data.n_dev))
                              if data.n_dev > 1 else math.nan)
        scores[name] = sc
    if choice is None:
        key = cfg.criterion if cfg.criterion != "held_out" else "bic"
        chosen = min(names, key=lambda n: getattr(scores[n], key)
                     if scores[n].converged else math.inf)
        if model == "auto":
            ranked = sorted(names, key=lambda n: getattr(scores[n], key))
            runner = ranked[1] if len(ranked) > 1 else None
            explanation = (f"{chosen}: {key.upper()} {getattr(scores[chosen], key):.1f}"
                           + (f", lower than {runner} by "
                              f"{getattr(scores[runner], key) - getattr(scores[chosen], key):.1f}"
                              if runner else "")
                           + f" (state-space likelihood of the same {n_reads} reads)")
        else:
            explanation = (f"{chosen}: requested; state-space log-likelihood "
                           f"{scores[chosen].log_likelihood:.1f} over {n_reads} reads")
    else:
        explanation = choice.text
    fm, frame, est, sec = fits[chosen]
    f = _fitted(fm, data, frame, est.p, est.glob[0], est, sec)
    sc = scores[chosen]
    read_var = float(est.sigma_r[0]) ** 2
    c2c = float(est.sigma_c[0])
    prob = ss.Problem(fm, frame, w, np.zeros(st.n_dev, dtype=np.int64), st.noise_ss,
                      st.noise_dof)
    c2c_se, sr_se = (float(x[0]) for x in prob.noise_se(est))
    cov = prob.device_cov(est) if COV_FROM_LIKELIHOOD else None
    support = None
    if fm.name not in SHAPE_BOUNDS:
        support = prob.bound_support(prob.free(est.p, est.glob, est.sigma_c, est.sigma_r), st)
        if ss.DEBUG:
            print("bound support (nats, lower / upper):", np.round(support, 1).tolist())
    pop = _population(f, data, cfg, read_var, 2.0 * float(est.sigma_r[0]) * sr_se, c2c,
                      c2c_se, cov, support)
    intervals, unc, method, boot_notes = _intervals(f, pop, data, st, cfg)
    pop["unc"].update(unc)
    notes = list(pop["notes"]) + boot_notes
    if data.dropped:
        notes.append(f"left out {len(data.dropped)} device(s) with < {cfg.min_steps} up or "
                     f"down steps: {data.dropped[:10]}")
    if data.stuck:
        notes.append(f"left out {len(data.stuck)} stuck device(s) (conductance range < 0.1 % "
                     f"of the median device's): {data.stuck[:10]}")
    if data.read_var is None:
        notes.append("read noise estimated by the state-space likelihood (no read-noise "
                     "rows)")
    unphysical = ""
    if pop["g_min"] < 0 and conductance_unit(m.meta) == "S":
        unphysical = (f"the fitted lower bound g_min = {pop['g_min']:.3g} S is below 0 S, "
                      "which no device has: it is the model's extrapolation far beyond the "
                      "reads (measure with --pulses auto, which pulses each half-cycle "
                      "until the device saturates)")
    elif pop["g_min"] < 0:
        notes.append("fitted g_min < 0 (conductance in weight units?): no conductance block")
    if cuts:
        notes.append(f"fitted {len(cuts) + 1} segments separately (--segments): every "
                     f"device's trace cut before data row(s) {', '.join(map(str, cuts))}; "
                     "no step spans a cut")
    elif cfg.segments:
        notes.append("--segments: no resume boundary or discontinuity found; fitted as one "
                     "segment")
    reason, ok = sc.reason, sc.ok and not unphysical
    if unphysical:
        reason = "; ".join(r for r in (reason, unphysical) if r)
    if not ok and model == "auto":
        others = [n for n in names if n != chosen and scores[n].ok]
        if others:
            reason += f" (another model fits without these problems: {others[0]})"
    res = FitResult(model=chosen, ok=ok, reason=reason, explanation=explanation,
                    params=pop["params"], uncertainties=pop["unc"], g_min=pop["g_min"],
                    g_max=pop["g_max"], read_noise=pop["read_noise"],
                    per_device=pop["per_device"], scores=scores,
                    criterion=cfg.criterion if model == "auto" else "bic",
                    notes=notes, discontinuities=discontinuities, segments=len(cuts) + 1,
                    data=data, fitmodel=f.model, p=f.p, glob=f.glob, frame=f.frame,
                    intervals=intervals, interval_method=method,
                    held_out=dict(choice.held_out) if choice else {},
                    margin=choice.margin if choice else math.nan,
                    margin_se=choice.margin_se if choice else math.nan,
                    thin_margin=bool(choice.thin) if choice else False)
    from rpuhw.calibration.identifiability import not_identifiable

    res.not_identifiable = not_identifiable(res)
    return res


# ---- intervals ------------------------------------------------------------------------


BOOT_ITER = 20
"""L-BFGS iterations of the bootstrap refit (one whitened round). Each replica starts at
its own truth (the fit it was simulated from), so its estimate lies about one standard
error away, where the whitened likelihood is nearly quadratic: a few quasi-Newton steps
reach it (a k-step bootstrap, Davidson & MacKinnon 1999)."""
Z95 = 1.959963984540054
"""Standard normal quantile of 0.975: a 95 % two-sided interval is +- Z95 sigma."""


def _point(pop: dict[str, Any]) -> dict[str, Any]:
    return {**pop["params"], "g_min": pop["g_min"], "g_max": pop["g_max"],
            "read_noise": pop["read_noise"]}


def _replica_data(sim: ss.StepTable, lo_dev: int, n_dev: int, data: StepData) -> StepData:
    """The :class:`StepData` of devices ``lo_dev .. lo_dev + n_dev - 1`` of a simulated
    :class:`~rpuhw.calibration.statespace.StepTable` (steps between consecutive reads of
    a half-cycle with a pulse between them)."""
    j = np.flatnonzero(sim.pulsed & (sim.dev >= lo_dev) & (sim.dev < lo_dev + n_dev))
    dev = sim.dev[j] - lo_dev
    u, du = sim.ybar[j - 1], sim.ybar[j] - sim.ybar[j - 1]
    sides, tr = {}, {}
    for pol in (1, -1):
        sel = sim.pol[j] == pol
        sides[pol] = Side(u=u[sel], dev=dev[sel], du=du[sel])
        tr[pol] = sim.half[j][sel]
    in_rep = (sim.dev >= lo_dev) & (sim.dev < lo_dev + n_dev)
    ys, ds = sim.ybar[in_rep], sim.dev[in_rep] - lo_dev
    lo0 = np.array([np.percentile(ys[ds == i], 0.5) for i in range(n_dev)])
    hi0 = np.array([np.percentile(ys[ds == i], 99.5) for i in range(n_dev)])
    return StepData(devices=data.devices, rows=data.rows, cols=data.cols, g0=data.g0,
                    s0=data.s0, up=sides[1], down=sides[-1], trace_up=tr[1],
                    trace_down=tr[-1], lo0=lo0, hi0=hi0, read_var=None, read_dof=0,
                    dropped=[], stuck=[])


def _intervals(f: _Fitted, pop: dict[str, Any], data: StepData, st: ss.StepTable,
               cfg: FitConfig) -> tuple[dict[str, Any], dict[str, float], str, list[str]]:
    """95 % intervals of every reported value: parametric bootstrap (module doc) with
    ``cfg.bootstrap`` replicas, refitted in one batched fit; the interval is the estimate
    +- 1.96 bootstrap standard deviations. Returns (intervals, standard errors, method,
    notes)."""
    point = _point(pop)
    unc = pop["unc"]
    if cfg.bootstrap <= 0 or f.estimate is None:
        out = {}
        for key, v in point.items():
            se = unc.get(key)
            if isinstance(v, (int, float)) and se is not None and math.isfinite(se):
                out[key] = [float(v) - Z95 * se, float(v) + Z95 * se]
        return out, {}, "estimate +- 1.96 standard errors (no bootstrap)", []
    from rpuhw.calibration.bootstrap import simulate

    est = f.estimate
    n_dev, reps = data.n_dev, int(cfg.bootstrap)
    sc, sr = float(est.sigma_c[0]), float(est.sigma_r[0])
    sim, rep, src = simulate(f.model, f.frame, st, f.p, f.glob, sc, sr, reps, seed=cfg.seed)
    wb = ss.windows(sim, cfg.window)
    boot = ss.estimate(f.model, f.frame, sim, wb, f.p[src], np.tile(f.glob, (reps, 1)),
                       group=rep, noise0=(np.full(reps, sc), np.full(reps, sr)),
                       max_iter=BOOT_ITER, rounds=1, search_bounds=False)
    values: dict[str, list] = {k: [] for k in point}
    failed = 0
    for r in range(reps):
        d_r = _replica_data(sim, r * n_dev, n_dev, data)
        p_r = boot.p[r * n_dev:(r + 1) * n_dev]
        f_r = _fitted(f.model, d_r, f.frame, p_r, boot.glob[r], None, 0.0)
        try:
            pop_r = _population(f_r, d_r, cfg, float(boot.sigma_r[r]) ** 2, 0.0,
                                float(boot.sigma_c[r]), 0.0)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError):
            failed += 1
            continue
        for key, v in _point(pop_r).items():
            values[key].append(v)
    out: dict[str, Any] = {}
    se_out: dict[str, float] = {}
    degenerate = []
    for key, v in point.items():
        arr = np.asarray(values[key], dtype=float)
        if arr.ndim == 0 or len(arr) < 2:
            continue
        sd = np.nanstd(arr, axis=0, ddof=1)
        if np.ndim(v) == 0:
            if isinstance(v, bool):
                continue
            if not float(sd) > 0 and float(v) != 0 and unc.get(key):
                # every replica at one value (a spread estimated at its boundary, 0, in
                # each): the bootstrap says nothing about the estimate's error, so the
                # interval comes from the analytic standard error instead
                sd = float(unc[key])
                degenerate.append(key)
            out[key] = [float(v) - Z95 * float(sd), float(v) + Z95 * float(sd)]
            se_out[key] = float(sd)
        else:
            vv = np.asarray(v, dtype=float)
            out[key] = [list(vv - Z95 * sd), list(vv + Z95 * sd)]
    notes = [f"95 % intervals from a parametric bootstrap: {reps} replicas simulated from "
             "the fit with the measured protocol (devices resampled) and refitted"
             + (f"; {failed} replica(s) failed and were left out" if failed else "")
             + f" ({boot.message})"]
    if degenerate:
        notes.append(f"{', '.join(degenerate)}: every replica gave the same value (a spread "
                     "estimated at 0), so the interval is the estimate +- 1.96 analytic "
                     "standard errors")
    method = f"parametric bootstrap, {reps} replicas: estimate +- 1.96 bootstrap SD"
    return out, se_out, method, notes
