"""Validate a device YAML against measurements: posterior-predictive checks.

**The replay** (:func:`replay`): a :class:`~rpuhw.sim.array.SimulatedArray` of the device
YAML holds ``R`` replicas (default 79) of each of the ``D`` measured devices, one batched
array of ``R x D`` devices, seeded. Each replica starts from its device's first measured
read (mapped to weight by the YAML's ``conductance:`` block, clipped to the replica's drawn
bounds) and receives the measured protocol: the same half-cycles, in order, each device
as many pulses in each half-cycle as it got on the bench (``--pulses auto`` stops devices
at different points), ``K`` reads after every pulse and at the start of each half-cycle
(``K`` = reads per pulse of the measurement). Replica ``r`` of all ``D`` devices is one
simulated data set of the measurement's size and shape; the ``R`` of them are draws of
what the model says the measurement could have been.

**The statistics** (none of them is what the fit minimises; the ``K`` reads of a pulse are
averaged first, on both sides):

a. ``step_vs_state``: mean step ``g_after - g_before`` per conductance bin (``bins`` equal
   bins over the measured 0.5-99.5 percentile range, by ``g_before``) and polarity; the
   bins with at least ``min_samples`` measured steps.
b. ``saturation_levels``: each device's end level of each half-cycle (mean of its last
   ``plateau`` reads), averaged over the cycles, per polarity: the distribution across
   devices. Discrepancy: the two-sample Kolmogorov-Smirnov distance between a data set's
   levels and the pooled levels of the replicas (the larger of up and down).
c. ``residual_autocorrelation``: lag-1 autocorrelation of the step residuals
   ``e = step - mean step of the same device, polarity and bin``,
   ``r1 = sum e_k e_(k+1) / sum e_k^2`` over successive pulses of a half-cycle, per
   polarity. Read noise makes it negative (-0.5 for read noise alone), cycle-to-cycle
   step noise pulls it to 0, a drift or an unmodelled state dependence makes it positive.
d. ``up_down_asymmetry``: per cycle, ``A = sum_d (dg_up + dg_down) / sum_d (dg_up -
   dg_down)`` over devices, with ``dg`` the travel of a half-cycle (end level minus first
   read): 0 when up and down travel equally far.

**The rule** (a posterior-predictive p-value per check): each check has components
(bins, quantiles, polarities, cycles) ``T_j``. For the measurement, ``z_j = (T_j - mu_j) /
sd_j`` with the replicas' mean and standard deviation; its discrepancy is ``max_j |z_j|``
(for check b the KS distance). Each replica's discrepancy is computed the same way against
the other ``R - 1`` replicas (leave one out), so under the null hypothesis (the measurement
is a draw from the model) the measured discrepancy is one more exchangeable draw among the
``R + 1`` and ``p = (1 + #{r: disc_r >= disc_meas}) / (R + 1)`` is a valid p-value: the
check rejects a correct model with probability at most ``alpha_check``. The check
**fails** when ``p <= alpha_check`` **and** one of the significant components (``|z_j|``
above the replicas' critical discrepancy) differs by at least the check's effect floor:
10 % of the typical step (a), 5 % of the conductance range in a quantile of the levels
(b), 0.05 in ``r1`` (c), 0.05 in ``A`` (d). The floor keeps large data sets from failing on
differences too small to matter. ``alpha_check = alpha / 4`` (Bonferroni; ``alpha`` = 0.05
by default, so a correct model fails some check with probability at most 5 %, each check at
most 1.25 %); ``R`` must satisfy ``(R + 1) alpha_check >= 1`` (79 replicas by default).
The fitted spec was fitted to these data, which makes the measurement look more typical
than a fresh draw: the test is conservative, its false-rejection rate at most the stated.

Limitations: device-to-device parameters are random draws, so with few devices the
comparison is of populations, not of the devices themselves; an adaptive protocol's pulse
counts are replayed as measured (not re-decided on the simulated reads).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpuhw.device_spec import DeviceSpec, load_device
from rpuhw.errors import ConfigError

from .measurements import Measurements, conductance_unit, load_measurements

CHECKS = ("step_vs_state", "saturation_levels", "residual_autocorrelation",
          "up_down_asymmetry")
"""The checks, in the order they are run and reported."""


@dataclass
class ValidateConfig:
    """Settings of :func:`validate` (module docstring for the rule)."""

    replicas: int = 79
    """Simulated data sets ``R``; ``(R + 1) alpha / 4 >= 1`` is required."""
    alpha: float = 0.05
    """Family-wise false-rejection rate over the four checks (each gets ``alpha / 4``)."""
    bins: int = 5
    """Conductance bins of the step-vs-state check (equal width over the measured range)."""
    min_samples: int = 20
    """Fewest measured steps in a bin for it to be a component of the check."""
    plateau: int = 10
    """Last reads of a half-cycle averaged into its end level (at most a quarter of it)."""
    step_effect: float = 0.10
    """Effect floor of step_vs_state: fraction of the mean |simulated step| over bins."""
    level_effect: float = 0.05
    """Effect floor of saturation_levels: fraction of the measured conductance range."""
    acf_effect: float = 0.05
    """Effect floor of residual_autocorrelation (absolute, in r1)."""
    asym_effect: float = 0.05
    """Effect floor of up_down_asymmetry (absolute, in A)."""
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    """Quantiles of the end levels reported (and used for the effect) by check b."""

    @staticmethod
    def required_replicas(alpha: float) -> int:
        """Fewest replicas ``R`` with ``(R + 1) alpha / 4 >= 1`` (a p-value can reach
        the per-check level)."""
        return math.ceil(len(CHECKS) / alpha - 1e-9) - 1


@dataclass
class Check:
    """One posterior-predictive check (module docstring)."""

    name: str
    """One of :data:`CHECKS`."""
    description: str
    """What the statistic is, in words."""
    unit: str
    """Display unit of the component values: ``uS`` or ``nS`` (values stored in S),
    ``weight`` (weight units) or ``1`` (dimensionless)."""
    tested: bool
    """False when the data have no component for this check (then it passes)."""
    passed: bool
    """Not (p <= alpha_check and a significant component's effect >= effect_floor)."""
    pvalue: float
    """Posterior-predictive p-value of the discrepancy (1 when not tested)."""
    alpha: float
    """Per-check rejection level ``alpha / 4``."""
    discrepancy: float
    """Measured discrepancy (max |z|, or the KS distance for saturation_levels)."""
    critical: float
    """The replicas' critical discrepancy: a larger measured one gives ``p <= alpha``."""
    worst: str
    """Label of the component with the largest |z|."""
    measured: float
    """Measured value of that component."""
    simulated: float
    """Replicas' mean of that component."""
    simulated_sd: float
    """Replicas' standard deviation of that component."""
    z: float
    """``(measured - simulated) / simulated_sd`` of that component."""
    effect: float
    """Largest effect among the significant components (0 when none), in the floor's units."""
    effect_floor: float
    """Smallest effect that fails (see :class:`ValidateConfig`)."""
    effect_unit: str
    """What ``effect`` is relative to."""
    labels: list[str] = field(default_factory=list)
    """Component labels."""
    x: list[float] = field(default_factory=list)
    """Component positions for plots (bin centre, quantile, cycle)."""
    group: list[str] = field(default_factory=list)
    """Component group for plots (``up``, ``down``, or ``all``)."""
    measured_values: list[float] = field(default_factory=list)
    simulated_mean: list[float] = field(default_factory=list)
    simulated_sd_values: list[float] = field(default_factory=list)
    simulated_lo: list[float] = field(default_factory=list)
    """2.5 percentile of the replicas per component."""
    simulated_hi: list[float] = field(default_factory=list)
    """97.5 percentile of the replicas per component."""
    replica_discrepancies: list[float] = field(default_factory=list)
    """Each replica's leave-one-out discrepancy (the p-value's reference)."""

    def line(self) -> str:
        """``PASS step_vs_state: ...`` (one line)."""
        if not self.tested:
            return f"PASS {self.name}: not tested ({self.description})"
        verdict = "PASS" if self.passed else "FAIL"
        u = self.unit
        sd = format_value(self.simulated_sd, u, sign=False)
        return (f"{verdict} {self.name} ({self.description}): worst {self.worst}: measured "
                f"{format_value(self.measured, u)}, "
                f"simulated {format_value(self.simulated, u)} +- {sd}"
                f" (z {self.z:+.1f}); discrepancy {self.discrepancy:.3g}, p = {self.pvalue:.3g}"
                f" (fails at p <= {self.alpha:.3g} with effect >= {self.effect_floor:g} "
                f"{self.effect_unit}; effect {self.effect:.3g})")


_SCALE = {"uS": 1e6, "nS": 1e9}
"""Display units of values stored in siemens."""


def format_value(value: float, unit: str, sign: bool = True) -> str:
    """A value with its unit: ``uS``/``nS`` (value in S), ``weight`` or ``1``."""
    f = "+.3g" if sign else ".3g"
    if unit in _SCALE:
        return f"{value * _SCALE[unit]:{f}} {unit}"
    if unit == "1":
        return f"{value:{f}}"
    return f"{value:{f}} ({unit} units)"


@dataclass
class ValidationResult:
    """Outcome of :func:`validate`."""

    passed: bool
    """Every check passed."""
    checks: list[Check]
    """The four checks (:data:`CHECKS`)."""
    alpha: float
    """Family-wise false-rejection rate."""
    devices: int
    """Measured devices."""
    replicas: int
    """Simulated data sets (each of all ``devices``)."""
    half_cycles: int
    """Half-cycles replayed."""
    pulses: int
    """Pulses replayed per replica data set (summed over devices)."""
    reads_per_pulse: int
    """Reads after each pulse (averaged before the statistics)."""
    seed: int
    """Seed of the simulated array."""
    g_lo: float
    """0.5 percentile of the measured conductance."""
    g_hi: float
    """99.5 percentile of the measured conductance."""
    unit: str
    """Conductance unit of the measurement (``S`` or ``weight``)."""
    trace_error: float
    """Information only: mean |mean measured - mean simulated| read by read, relative to
    ``g_hi - g_lo``."""
    reasons: list[str] = field(default_factory=list)
    """One line per failing check (empty when it passed)."""

    @property
    def failed(self) -> list[str]:
        """Names of the failing checks."""
        return [c.name for c in self.checks if not c.passed]

    def check(self, name: str) -> Check:
        """The check called ``name``."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failed"] = self.failed
        return d

    def summary(self) -> str:
        """The verdict, one line per check, the reasons."""
        n_ok = sum(c.passed for c in self.checks)
        lines = [f"{'PASS' if self.passed else 'FAIL'}: {n_ok} of {len(self.checks)} "
                 f"posterior-predictive checks pass ({self.devices} devices, "
                 f"{self.half_cycles} half-cycles, {self.reads_per_pulse} read(s) per pulse; "
                 f"{self.replicas} simulated replicas, seed {self.seed}; family-wise "
                 f"alpha {self.alpha:g})"]
        lines += ["  " + c.line() for c in self.checks]
        u = "uS" if self.unit == "S" else "weight"
        lines.append(f"  (information) mean trace error {self.trace_error:.4f} of the "
                     f"conductance range [{format_value(self.g_lo, u, False)}, "
                     f"{format_value(self.g_hi, u, False)}]")
        lines += [f"  reason: {r}" for r in self.reasons]
        return "\n".join(lines)


# ---- traces ------------------------------------------------------------------------------


@dataclass
class Traces:
    """The pulse rows as dense per-half-cycle arrays (mean of the reads of each pulse)."""

    halves: np.ndarray
    """Half-cycle ids ``2 cycle + (polarity < 0)``, ascending (time order)."""
    g: list[np.ndarray]
    """Per half-cycle ``[pulses + 1, N]`` conductance, NaN where not read."""
    last: np.ndarray
    """``[H, N]`` last read pulse of each device per half-cycle (-1: none)."""
    reads: int
    """Reads per pulse (the median over pulses)."""
    ids: np.ndarray
    """Device ids (``Measurements.device``) of the ``N`` columns."""

    @property
    def polarity(self) -> np.ndarray:
        return np.where(self.halves % 2 == 1, -1, 1)

    @property
    def cycle(self) -> np.ndarray:
        return self.halves // 2


def measured_traces(m: Measurements) -> Traces:
    """Dense traces of the pulse rows of ``m``; the reads of a pulse (``read`` column, or
    repeated rows) are averaged; a half-cycle without a ``pulse = 0`` read starts from the
    last read of the device's previous half-cycle, when that is the one before."""
    sel = m.polarity != 0
    dev, cyc = m.device[sel], m.cycles()[sel]
    pol, pul = m.polarity[sel].astype(np.int64), m.pulse[sel].astype(np.int64)
    g = m.conductance[sel].astype(np.float64)
    ids, d_idx = np.unique(dev, return_inverse=True)
    half = 2 * cyc + (pol < 0)
    halves, h_idx = np.unique(half, return_inverse=True)
    n_dev, n_h = len(ids), len(halves)
    out, last = [], np.full((n_h, n_dev), -1, dtype=np.int64)
    reads = []
    for j in range(n_h):
        s = h_idx == j
        p, d = pul[s], d_idx[s]
        total = np.zeros((int(p.max()) + 1, n_dev))
        count = np.zeros_like(total)
        np.add.at(total, (p, d), g[s])
        np.add.at(count, (p, d), 1.0)
        with np.errstate(invalid="ignore"):
            arr = total / count
        reads.append(count[count > 0])
        valid = count > 0
        any_v = valid.any(axis=0)
        last[j] = np.where(any_v, valid.shape[0] - 1 - np.argmax(valid[::-1], axis=0), -1)
        if j > 0 and halves[j - 1] == halves[j] - 1:
            stitch = np.isnan(arr[0]) & (last[j - 1] >= 0) & any_v
            cols = np.flatnonzero(stitch)
            arr[0, cols] = out[j - 1][last[j - 1, cols], cols]
        out.append(arr)
    k = int(np.median(np.concatenate(reads))) if reads else 1
    return Traces(halves, out, last, max(k, 1), ids)


# ---- the replay ------------------------------------------------------------------------


def _maps(spec: DeviceSpec, m: Measurements):
    """(g -> w, w -> g) for the measurement's conductance unit."""
    if spec.conductance is not None:
        return spec.g_to_w, spec.w_to_g
    if conductance_unit(m.meta) == "weight":
        return (lambda g: g), (lambda w: w)
    raise ConfigError("has no conductance: block (g_min, g_max), needed to compare with "
                      f"measurements in siemens ({m.source})", source=spec.source,
                      key="conductance")


def replay(spec: DeviceSpec, m: Measurements, seed: int = 0, replicas: int = 79,
           traces: Traces | None = None) -> list[np.ndarray]:
    """Simulate the measured protocol on ``replicas`` copies of the measured devices.

    Returns per half-cycle of ``traces`` (default ``measured_traces(m)``) an array
    ``[pulses + 1, replicas, D]`` of simulated conductance (mean of the ``K`` reads of each
    pulse), NaN where the measurement has no read. One batched simulated array of
    ``replicas x D`` devices; deterministic for a given ``seed``.
    """
    from rpuhw.sim.array import SimulatedArray

    tr = traces or measured_traces(m)
    g_to_w, w_to_g = _maps(spec, m)
    n_dev, reps = len(tr.ids), int(replicas)
    n = n_dev * reps
    # first read of each device in time order
    g0 = np.full(n_dev, np.nan)
    for arr in tr.g:
        v = np.where(np.isnan(arr), np.inf, 0.0)
        first = np.argmin(v, axis=0)
        val = arr[first, np.arange(n_dev)]
        g0 = np.where(np.isnan(g0), val, g0)
    # numba's kernels are faster for large batches; the torch engine has no launch cost
    sim = SimulatedArray(1, n, device=spec, seed=seed, engine="auto" if n >= 1024 else "torch")
    sim.set_weights(torch.tensor(np.tile(g_to_w(g0), reps), dtype=torch.float32)[None])

    def read() -> np.ndarray:
        w = sim.read()[0].double()
        for _ in range(tr.reads - 1):
            w += sim.read()[0].double()
        return (w / tr.reads).numpy()

    out = []
    for j, h in enumerate(tr.halves.tolist()):
        arr = tr.g[j]
        n_p = arr.shape[0] - 1
        sign = -1 if h % 2 else 1
        res = np.empty((n_p + 1, n), dtype=np.float32)
        res[0] = read()
        # pulses each device gets in this half-cycle: from its first read to its last (a
        # segment that starts within a half-cycle, --segments, has no reads before its
        # start: the device was there when the measurement resumed, not that many pulses
        # before it)
        stop = np.tile(tr.last[j], reps)
        start = np.tile(np.argmax(~np.isnan(arr), axis=0), reps)
        for k in range(1, n_p + 1):
            counts = torch.from_numpy(np.where((stop >= k) & (start < k), sign, 0)
                                      .astype(np.int32))[None]
            sim.pulse(counts)
            res[k] = read()
        g = w_to_g(res.astype(np.float64)).reshape(n_p + 1, reps, n_dev)
        g[np.broadcast_to(np.isnan(arr)[:, None, :], g.shape)] = np.nan  # as measured
        out.append(g)
    return out


# ---- the statistics --------------------------------------------------------------------


def _levels(arr: np.ndarray, plateau: int) -> tuple[np.ndarray, np.ndarray]:
    """(first read, mean of the last ``L`` reads) along axis 0 of ``arr [n, ...]`` per
    column, ``L = max(1, min(plateau, reads // 4))``; NaN where a column has no read."""
    valid = ~np.isnan(arr)
    n_valid = valid.sum(axis=0)
    first = np.take_along_axis(arr, np.argmax(valid, axis=0)[None], axis=0)[0]
    from_end = np.cumsum(valid[::-1], axis=0)[::-1]  # rank of each read from the end
    take = valid & (from_end <= np.maximum(1, np.minimum(plateau, n_valid // 4)))
    with np.errstate(invalid="ignore", divide="ignore"):
        end = np.where(take, arr, 0.0).sum(axis=0) / take.sum(axis=0)
    return np.where(n_valid > 0, first, np.nan), np.where(n_valid > 0, end, np.nan)


def _steps_of(arr: np.ndarray, edges: np.ndarray, pi: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, bin key in ``[0, 2B)``, valid) of one half-cycle ``arr [n + 1, S, D]``."""
    bins = len(edges) - 1
    before = arr[:-1]
    step = arr[1:] - before
    ok = ~np.isnan(step)
    b = np.clip(np.searchsorted(edges, np.nan_to_num(before), side="right") - 1, 0,
                bins - 1) + pi * bins
    return step, b, ok


def _statistics(g: list[np.ndarray], tr: Traces, edges: np.ndarray, cfg: ValidateConfig
                ) -> dict[str, np.ndarray]:
    """The four statistics of ``S`` data sets: ``g`` per half ``[pulses + 1, S, D]``.

    Returns ``counts [S, 2B]`` and ``steps [S, 2B]`` (mean step per polarity (up first)
    and bin), ``levels [S, 2, D]`` (end level per polarity and device, mean over cycles),
    ``acf [S, 2]``, ``asym [S, C]`` (the ``cycles`` of ``tr`` with both halves)."""
    nb = 2 * (len(edges) - 1)
    s_n, n_dev = g[0].shape[1], g[0].shape[2]
    cell = (np.arange(s_n)[:, None] * n_dev + np.arange(n_dev)[None, :]) * nb  # [S, D]
    size = s_n * n_dev * nb
    cell_sum, cell_cnt = np.zeros(size), np.zeros(size)
    for j, arr in enumerate(g):
        step, b, ok = _steps_of(arr, edges, 0 if tr.polarity[j] > 0 else 1)
        key = (cell[None] + b)[ok]
        cell_sum += np.bincount(key, step[ok], minlength=size)
        cell_cnt += np.bincount(key, minlength=size)
    cell_sum, cell_cnt = cell_sum.reshape(s_n, n_dev, nb), cell_cnt.reshape(s_n, n_dev, nb)
    step_cnt = cell_cnt.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        steps = cell_sum.sum(axis=1) / step_cnt
        cell_mean = (cell_sum / cell_cnt).ravel()
    # c: lag-1 autocorrelation of the residuals from each device's (polarity, bin) mean
    num, den = np.zeros((s_n, 2)), np.zeros((s_n, 2))
    for j, arr in enumerate(g):
        pi = 0 if tr.polarity[j] > 0 else 1
        step, b, ok = _steps_of(arr, edges, pi)
        if not len(step):
            continue
        e = np.where(ok, step - cell_mean[cell[None] + b], 0.0)
        num[:, pi] += (e[:-1] * e[1:]).sum(axis=(0, 2))
        den[:, pi] += (e ** 2).sum(axis=(0, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        acf = np.where(den > 0, num / den, np.nan)
    # b, d: end levels and travel per half-cycle
    lev_sum, lev_cnt = np.zeros((s_n, 2, n_dev)), np.zeros((s_n, 2, n_dev))
    travel: dict[int, dict[int, np.ndarray]] = {}
    for j, arr in enumerate(g):
        pi = 0 if tr.polarity[j] > 0 else 1
        first, end = _levels(arr, cfg.plateau)
        ok = ~np.isnan(end)
        lev_sum[:, pi] += np.where(ok, end, 0.0)
        lev_cnt[:, pi] += ok
        travel.setdefault(int(tr.cycle[j]), {})[pi] = end - first
    with np.errstate(invalid="ignore", divide="ignore"):
        levels = lev_sum / lev_cnt
    cycles = sorted(c for c, t in travel.items() if len(t) == 2)
    asym = np.full((s_n, len(cycles)), np.nan)
    for i, c in enumerate(cycles):
        up, down = travel[c][0], travel[c][1]
        ok = ~np.isnan(up) & ~np.isnan(down)
        tot = np.where(ok, up - down, 0.0).sum(axis=1)
        net = np.where(ok, up + down, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            asym[:, i] = np.where(tot > 0, net / tot, np.nan)
    return {"steps": steps, "counts": step_cnt, "levels": levels, "acf": acf,
            "asym": asym, "cycles": np.asarray(cycles, dtype=np.int64)}


# ---- the rule ----------------------------------------------------------------------------


@contextmanager
def _quiet() -> Iterator[None]:
    """NaN-aware reductions of a slice with no finite value give NaN (a statistic that no
    read or replica defines; the checks skip it), here without numpy's RuntimeWarning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _nanmean(a: np.ndarray, axis: Any) -> np.ndarray:
    """``np.nanmean``, quietly (:func:`_quiet`)."""
    with _quiet():
        return np.nanmean(a, axis=axis)


def _nanstd(a: np.ndarray, axis: Any) -> np.ndarray:
    """``np.nanstd(ddof=1)``, quietly (NaN where fewer than two values)."""
    with _quiet():
        return np.nanstd(a, axis=axis, ddof=1)


def _loo_z(meas: np.ndarray, reps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z of the measurement against all replicas ``[k]``, and each replica's z against the
    other replicas ``[R, k]``; plus the replicas' mean and sd ``[k]`` (NaN-aware)."""
    mu = _nanmean(reps, 0)
    sd = _nanstd(reps, 0)
    z_m = (meas - mu) / sd
    r = reps.shape[0]
    z_r = np.empty_like(reps)
    for i in range(r):
        rest = np.delete(reps, i, axis=0)
        z_r[i] = (reps[i] - _nanmean(rest, 0)) / _nanstd(rest, 0)
    return z_m, z_r, np.stack([mu, sd])


def _pvalue(d_meas: float, d_reps: np.ndarray, alpha: float) -> tuple[float, float]:
    """(p, critical): ``p = (1 + #{d_r >= d_meas}) / (R + 1)``; ``critical`` the smallest
    replica discrepancy a measured one must exceed for ``p <= alpha``."""
    d = np.sort(np.where(np.isnan(d_reps), -np.inf, d_reps))[::-1]
    p = (1 + int((d >= d_meas).sum())) / (len(d) + 1)
    m0 = int(math.floor(alpha * (len(d) + 1))) - 1  # replicas allowed at or above
    critical = float(d[m0]) if 0 <= m0 < len(d) else float("inf")
    return p, critical


def _component_check(name: str, description: str, unit: str, labels: list[str],
                     x: list[float], group: list[str], meas: np.ndarray, reps: np.ndarray,
                     alpha: float, floor: float, effect_scale: float, effect_unit: str
                     ) -> Check:
    """The max-|z| check of components ``meas [k]`` against ``reps [R, k]``."""
    z_m, z_r, (mu, sd) = _loo_z(meas, reps)
    use = np.isfinite(z_m) & (sd > 0)
    if not use.any():
        return _untested(name, description, unit, alpha, floor, effect_unit)
    d_m = float(np.max(np.abs(z_m[use])))
    with np.errstate(invalid="ignore"), _quiet():
        d_r = np.nanmax(np.where(use[None], np.abs(z_r), np.nan), axis=1)
    p, crit = _pvalue(d_m, d_r, alpha)
    sig = use & (np.abs(z_m) > crit)
    effects = np.abs(meas - mu) / effect_scale
    effect = float(effects[sig].max()) if sig.any() else 0.0
    w = int(np.argmax(np.where(use, np.abs(z_m), -1.0)))
    with _quiet():
        lo, hi = np.nanpercentile(reps, [2.5, 97.5], axis=0)
    return Check(name, description, unit, True,
                 passed=not (p <= alpha and effect >= floor), pvalue=p, alpha=alpha,
                 discrepancy=d_m, critical=crit, worst=labels[w], measured=float(meas[w]),
                 simulated=float(mu[w]), simulated_sd=float(sd[w]), z=float(z_m[w]),
                 effect=effect, effect_floor=floor, effect_unit=effect_unit,
                 labels=labels, x=[float(v) for v in x], group=group,
                 measured_values=_fl(meas), simulated_mean=_fl(mu),
                 simulated_sd_values=_fl(sd), simulated_lo=_fl(lo), simulated_hi=_fl(hi),
                 replica_discrepancies=_fl(d_r))


def _fl(a: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _untested(name: str, description: str, unit: str, alpha: float, floor: float,
              effect_unit: str) -> Check:
    nan = float("nan")
    return Check(name, description, unit, False, True, 1.0, alpha, nan, nan, "-", nan, nan,
                 nan, nan, 0.0, floor, effect_unit)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample KS distance of the finite values of ``a`` and ``b`` (NaN if one is empty)."""
    a, b = np.sort(a[np.isfinite(a)]), np.sort(b[np.isfinite(b)])
    if not len(a) or not len(b):
        return float("nan")
    x = np.concatenate([a, b])
    return float(np.max(np.abs(np.searchsorted(a, x, side="right") / len(a)
                               - np.searchsorted(b, x, side="right") / len(b))))


def _levels_check(meas: np.ndarray, reps: np.ndarray, cfg: ValidateConfig, alpha: float,
                  span: float, unit: str) -> Check:
    """Check b: ``meas [2, D]``, ``reps [R, 2, D]`` end levels per polarity and device."""
    name, desc = "saturation_levels", ("devices' end levels, KS tests against the "
                                       "replicas")
    r = reps.shape[0]
    pooled = [reps[:, pi].ravel() for pi in range(2)]
    d_m = np.array([_ks(meas[pi], pooled[pi]) for pi in range(2)])
    if not np.isfinite(d_m).any():
        return _untested(name, desc, unit, alpha, cfg.level_effect, "of the range")
    d_r = np.empty(r)
    for i in range(r):
        rest = np.delete(reps, i, axis=0)
        d_r[i] = np.nanmax([_ks(reps[i, pi], rest[:, pi].ravel()) for pi in range(2)])
    dm = float(np.nanmax(d_m))
    p, crit = _pvalue(dm, d_r, alpha)
    qs = cfg.quantiles
    labels = [f"{'up' if pi == 0 else 'down'} end level, q{round(100 * q)}"
              for pi in range(2) for q in qs]
    with np.errstate(invalid="ignore"):
        qm = np.array([np.nanquantile(meas[pi], q) if np.isfinite(meas[pi]).any() else np.nan
                       for pi in range(2) for q in qs])
        qr = np.array([[np.nanquantile(reps[i, pi], q) if np.isfinite(reps[i, pi]).any()
                        else np.nan for pi in range(2) for q in qs] for i in range(r)])
    mu, sd = _nanmean(qr, 0), _nanstd(qr, 0)
    z = (qm - mu) / sd
    eff = np.abs(qm - mu) / span
    # significant polarities: their KS distance above the critical one
    sig = np.repeat(d_m > crit, len(qs))
    effect = float(np.nanmax(eff[sig])) if sig.any() else 0.0
    w = int(np.nanargmax(np.where(np.isfinite(z), np.abs(z), -1.0)))
    with _quiet():
        lo, hi = np.nanpercentile(qr, [2.5, 97.5], axis=0)
    return Check(name, desc, unit, True, passed=not (p <= alpha and effect >= cfg.level_effect),
                 pvalue=p, alpha=alpha, discrepancy=dm, critical=crit, worst=labels[w],
                 measured=float(qm[w]), simulated=float(mu[w]), simulated_sd=float(sd[w]),
                 z=float(z[w]), effect=effect, effect_floor=cfg.level_effect,
                 effect_unit="of the range", labels=labels,
                 x=[q for _ in range(2) for q in qs],
                 group=[g for g in ("up", "down") for _ in qs], measured_values=_fl(qm),
                 simulated_mean=_fl(mu), simulated_sd_values=_fl(sd), simulated_lo=_fl(lo),
                 simulated_hi=_fl(hi), replica_discrepancies=_fl(d_r))


# ---- validate ------------------------------------------------------------------------------


def _spec_of(device: Any) -> DeviceSpec:
    if isinstance(device, DeviceSpec):
        return device
    if hasattr(device, "to_device_spec"):  # a FitResult
        return device.to_device_spec()
    return load_device(device)


def validate(device_yaml: str | Path | DeviceSpec, measurements: str | Path | Measurements,
             seed: int = 0, replicas: int | None = None, alpha: float | None = None,
             config: ValidateConfig | None = None) -> ValidationResult:
    """Posterior-predictive checks of ``device_yaml`` (a YAML path, a DeviceSpec or a
    FitResult) against ``measurements`` (module docstring for the statistics and the rule).
    ``replicas`` and ``alpha`` override ``config``'s."""
    cfg = config or ValidateConfig()
    if replicas is not None or alpha is not None:
        cfg = ValidateConfig(**{**asdict(cfg), **({"replicas": replicas} if replicas else {}),
                                **({"alpha": alpha} if alpha is not None else {})})
    if not 0 < cfg.alpha < 1:
        raise ConfigError(f"alpha: expected a number in (0, 1), got {cfg.alpha}", key="alpha")
    a_check = cfg.alpha / len(CHECKS)
    need = ValidateConfig.required_replicas(cfg.alpha)
    if cfg.replicas < need:
        raise ConfigError(f"replicas: at least {need} are needed for alpha {cfg.alpha:g} over "
                          f"{len(CHECKS)} checks ((R + 1) x alpha / {len(CHECKS)} >= 1), got "
                          f"{cfg.replicas}", key="replicas")
    spec = _spec_of(device_yaml)
    m = measurements if isinstance(measurements, Measurements) else \
        load_measurements(measurements)
    sel = m.polarity != 0
    if not sel.any():
        raise ConfigError("no pulse rows (polarity +1/-1) to validate against: a read-noise "
                          "measurement cannot validate a pulse response", source=m.source)
    g_meas = m.conductance[sel]
    g_lo, g_hi = (float(v) for v in np.percentile(g_meas, [0.5, 99.5]))
    if not g_hi > g_lo:
        raise ConfigError("the measured conductance does not change (no range to compare "
                          "against)", source=m.source)
    unit = "weight" if conductance_unit(m.meta) == "weight" else "S"
    u_step, u_level = ("weight", "weight") if unit == "weight" else ("nS", "uS")
    tr = measured_traces(m)
    sim = replay(spec, m, seed=seed, replicas=cfg.replicas, traces=tr)
    edges = np.linspace(g_lo, g_hi, cfg.bins + 1)
    st_m = _statistics([a[:, None, :] for a in tr.g], tr, edges, cfg)
    st_r = _statistics(sim, tr, edges, cfg)
    span = g_hi - g_lo
    checks = []

    # a: step vs state
    bins = cfg.bins
    keep = np.flatnonzero((st_m["counts"][0] >= cfg.min_samples)
                          & (np.median(st_r["counts"], axis=0) >= cfg.min_samples))
    centres = 0.5 * (edges[:-1] + edges[1:])
    labels = [f"{'up' if k < bins else 'down'} bin {k % bins} "
              f"[{format_value(edges[k % bins], u_level, False)}, "
              f"{format_value(edges[k % bins + 1], u_level, False)}]"
              for k in keep]
    typical = float(np.nanmean(np.abs(np.nanmean(st_r["steps"][:, keep], axis=0)))) \
        if len(keep) else 1.0
    desc = "mean step per conductance bin"
    if len(keep):
        checks.append(_component_check(
            "step_vs_state", desc, u_step, labels, [float(centres[k % bins]) for k in keep],
            ["up" if k < bins else "down" for k in keep], st_m["steps"][0, keep],
            st_r["steps"][:, keep], a_check, cfg.step_effect, typical or 1.0,
            "of the mean step"))
    else:
        checks.append(_untested("step_vs_state", desc + f" (no bin has {cfg.min_samples} "
                                "steps)", u_step, a_check, cfg.step_effect, "of the mean step"))
    # b: saturation levels
    checks.append(_levels_check(st_m["levels"][0], st_r["levels"], cfg, a_check, span,
                                u_level))
    # c: residual autocorrelation
    desc = "lag-1 autocorrelation of step residuals"
    checks.append(_component_check(
        "residual_autocorrelation", desc, "1", ["up r1", "down r1"], [1.0, -1.0],
        ["up", "down"], st_m["acf"][0], st_r["acf"], a_check, cfg.acf_effect, 1.0,
        "(absolute)"))
    # d: asymmetry per cycle
    desc = "up/down travel asymmetry per cycle"
    cyc = st_m["cycles"]
    if len(cyc):
        checks.append(_component_check(
            "up_down_asymmetry", desc, "1", [f"cycle {c} A" for c in cyc],
            [float(c) for c in cyc], ["all"] * len(cyc), st_m["asym"][0], st_r["asym"],
            a_check, cfg.asym_effect, 1.0, "(absolute)"))
    else:
        checks.append(_untested("up_down_asymmetry", desc + " (no cycle with both halves)",
                                "1", a_check, cfg.asym_effect, "(absolute)"))

    # information: mean trace error read by read
    num = den = 0.0
    for a_m, a_s in zip(tr.g, sim, strict=True):
        mm = _nanmean(a_m, 1)
        ms = _nanmean(a_s, (1, 2))
        ok = np.isfinite(mm) & np.isfinite(ms)
        num += float(np.abs(mm - ms)[ok].sum())
        den += float(ok.sum())
    trace_error = num / max(den, 1.0) / span

    reasons = [f"{c.name}: {c.worst} measured {format_value(c.measured, c.unit)} against "
               f"simulated {format_value(c.simulated, c.unit)} +- "
               f"{format_value(c.simulated_sd, c.unit, False)} "
               f"(p = {c.pvalue:.3g} <= {c.alpha:.3g}, effect {c.effect:.3g} >= "
               f"{c.effect_floor:g} {c.effect_unit})" for c in checks if not c.passed]
    pulses = int(sum(int(np.clip(tr.last[j], 0, None).sum()) for j in range(len(tr.halves))))
    return ValidationResult(
        passed=not reasons, checks=checks, alpha=cfg.alpha, devices=len(tr.ids),
        replicas=cfg.replicas, half_cycles=len(tr.halves), pulses=pulses,
        reads_per_pulse=tr.reads, seed=seed, g_lo=g_lo, g_hi=g_hi, unit=unit,
        trace_error=trace_error, reasons=reasons)
