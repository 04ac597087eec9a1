"""Validate a device YAML against measurements by replaying the measured protocol.

The replay: a :class:`~rpuhw.sim.array.SimulatedArray` of the device YAML with
``R`` replicas of each measured device (``R = ceil(256 / D)`` for ``D`` devices, so the
simulated statistics have little sampling error of their own), each replica starting
from its device's first measured conductance (mapped to weight by the YAML's
``conductance:`` block and clipped to the replica's drawn bounds), receives the same
half-cycles (cycle, polarity, number of pulses) as the measurement, with a read after
every pulse. Simulated weights are mapped back to siemens.

Two statistics decide, both on the pulse rows (polarity +-1):

1. **Mean trace error**: for each read ``(cycle, polarity, pulse)`` the mean measured
   conductance over devices against the mean simulated conductance of the replicas of
   the same devices,

   .. math:: e = \\frac{1}{T}\\sum_t \\frac{|\\bar g^{meas}_t - \\bar g^{sim}_t|}
                 {g_{hi} - g_{lo}}

   with ``[g_lo, g_hi]`` the 0.5 and 99.5 percentiles of the measured conductance.
   Passes when ``e < trace_threshold`` (0.1).
2. **Step sizes at matched conductance**: the steps ``g_after - g_before`` of both
   (:func:`~rpuhw.calibration.measurements.steps`) are binned by ``g_before`` into
   ``bins`` equal bins over ``[g_lo, g_hi]`` (steps outside go to the edge bins); per bin
   and polarity with at least ``min_samples`` steps on each side, a two-sample
   Kolmogorov-Smirnov test compares the distributions. A bin **rejects** when its
   p-value is below ``alpha / n_tests`` (Bonferroni: the family-wise false-rejection
   rate stays below ``alpha`` = 0.001 for a correct model) **and** the KS distance ``D``
   (the largest gap between the two step-size CDFs) is at least ``min_effect`` (0.1).
   Steps of one device are not independent samples of the population (each device has
   its own drawn step size), so the p-value uses Kish's effective sample sizes
   ``n_eff = n / (1 + (m - 1) ICC)`` (``m`` steps per device in the bin) with the
   intraclass correlation ``ICC`` of the simulated steps by device, the value the null
   hypothesis (the data come from this model) predicts; the p-value is the asymptotic
   Kolmogorov distribution at ``D sqrt(n_a n_b / (n_a + n_b))`` of those sizes. With
   few devices and large device-to-device spreads the test is then (rightly) weak.
   The effect-size floor keeps large data sets (where any tiny mismatch becomes
   "significant") from failing on differences too small to matter; the p-value keeps
   small data sets from failing on sampling noise. Passes when no bin rejects.

Limitations: device-to-device parameters are random draws, so with few measured devices
the comparison is of populations, not of the devices themselves; steps clipped at the
bounds depend on each device's drawn bounds.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpuhw.device_spec import DeviceSpec, load_device
from rpuhw.errors import ConfigError

from .measurements import Measurements, conductance_unit, load_measurements, steps


@dataclass
class StepTest:
    """The two-sample test of one conductance bin and polarity."""

    polarity: int
    """+1 up steps, -1 down steps."""
    bin: int
    """Bin index (0 = lowest conductance)."""
    g_lo: float
    """Lower edge of the bin (S)."""
    g_hi: float
    """Upper edge of the bin (S)."""
    n_measured: int
    """Measured steps in the bin."""
    n_simulated: int
    """Simulated steps in the bin."""
    mean_measured: float
    """Mean measured step (S)."""
    mean_simulated: float
    """Mean simulated step (S)."""
    statistic: float
    """KS distance D (largest gap between the two empirical CDFs)."""
    pvalue: float
    """KS p-value at the effective sample sizes (asymptotic Kolmogorov distribution)."""
    rejected: bool
    """p < alpha / n_tests and D >= min_effect."""
    icc: float
    """Intraclass correlation of the simulated steps by device (0: independent steps)."""
    n_eff_measured: float
    """Effective number of independent measured steps, ``n / (1 + (m - 1) ICC)``."""
    n_eff_simulated: float
    """Effective number of independent simulated steps."""


@dataclass
class ValidationResult:
    """Outcome of :func:`validate` (see the module docstring for the criteria)."""

    passed: bool
    """Both criteria hold."""
    trace_error: float
    """Mean |mean measured - mean simulated| trace error, relative to the range."""
    trace_error_max: float
    """Largest relative trace error of a single read."""
    trace_threshold: float
    """Pass limit of ``trace_error``."""
    g_lo: float
    """0.5 percentile of the measured conductance (S)."""
    g_hi: float
    """99.5 percentile of the measured conductance (S)."""
    alpha: float
    """Family-wise significance level of the step tests."""
    alpha_per_test: float
    """``alpha / n_tests`` (Bonferroni)."""
    min_effect: float
    """Smallest KS distance that counts as a meaningful difference."""
    devices: int
    """Measured devices."""
    replicas: int
    """Simulated replicas per measured device."""
    half_cycles: int
    """Half-cycles replayed."""
    pulses: int
    """Pulses replayed in total."""
    seed: int
    """Seed of the simulated array."""
    step_tests: list[StepTest] = field(default_factory=list)
    """One entry per tested bin and polarity."""
    reasons: list[str] = field(default_factory=list)
    """Why it failed (empty when it passed)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """A few lines with the verdict and the figures."""
        lines = [f"{'PASS' if self.passed else 'FAIL'}: {self.devices} devices, "
                 f"{self.half_cycles} half-cycles, {self.pulses} pulses replayed on "
                 f"{self.replicas} simulated replicas each (seed {self.seed})",
                 f"  mean trace error {self.trace_error:.4f} of the conductance range "
                 f"[{self.g_lo:.4g}, {self.g_hi:.4g}] (limit {self.trace_threshold}; "
                 f"largest {self.trace_error_max:.4f})"]
        n_rej = sum(t.rejected for t in self.step_tests)
        lines.append(f"  step sizes: {len(self.step_tests)} KS tests at matched conductance, "
                     f"{n_rej} reject (p < {self.alpha_per_test:.2g} and D >= "
                     f"{self.min_effect})")
        if self.step_tests:
            worst = max(self.step_tests, key=lambda t: (t.rejected, t.statistic))
            lines.append(f"  largest D: {'up' if worst.polarity > 0 else 'down'} steps at "
                         f"[{worst.g_lo:.4g}, {worst.g_hi:.4g}]: D = {worst.statistic:.3f}, "
                         f"p = {worst.pvalue:.3g}, mean step {worst.mean_measured:.4g} "
                         f"measured vs {worst.mean_simulated:.4g} simulated")
        lines += [f"  reason: {r}" for r in self.reasons]
        return "\n".join(lines)


def _maps(spec: DeviceSpec, m: Measurements):
    """(g -> w, w -> g) for the measurement's conductance unit."""
    if spec.conductance is not None:
        return spec.g_to_w, spec.w_to_g
    if conductance_unit(m.meta) == "weight":
        return (lambda g: g), (lambda w: w)
    raise ConfigError("has no conductance: block (g_min, g_max), needed to compare with "
                      f"measurements in siemens ({m.source})", source=spec.source,
                      key="conductance")


def replay(spec: DeviceSpec, m: Measurements, seed: int = 0, replicas: int | None = None
           ) -> tuple[Measurements, np.ndarray, int]:
    """Simulate the measured pulse protocol; returns (simulated rows, device ids, replicas).

    Simulated device id ``r * D + k`` is replica ``r`` of measured device ``ids[k]``.
    """
    from rpuhw.sim.array import SimulatedArray

    g_to_w, w_to_g = _maps(spec, m)
    sel = m.polarity != 0
    dev, cyc = m.device[sel], m.cycles()[sel]
    pol, pul, g = m.polarity[sel].astype(np.int64), m.pulse[sel], m.conductance[sel]
    ids, d_idx = np.unique(dev, return_inverse=True)
    n_dev = len(ids)
    reps = replicas or max(1, math.ceil(256 / n_dev))
    half = 2 * cyc + (pol < 0)
    # initial conductance: each device's first read in time order (half, pulse)
    order = np.lexsort((pul, half, d_idx))
    first = order[np.r_[True, d_idx[order][1:] != d_idx[order][:-1]]]
    g0 = np.empty(n_dev)
    g0[d_idx[first]] = g[first]
    # the torch engine: one small pulse call per read is far cheaper than a numba launch
    sim = SimulatedArray(1, n_dev * reps, device=spec, seed=seed, engine="torch")
    w0 = torch.tensor(np.tile(g_to_w(g0), reps), dtype=torch.float32)[None]
    sim.set_weights(w0)
    halves = np.unique(half)
    out: dict[str, list[np.ndarray]] = {k: [] for k in ("device", "cycle", "pulse",
                                                        "polarity", "g")}
    sim_ids = np.arange(n_dev * reps)

    def record(h: int, k: int) -> None:
        w = sim.read()[0].double().numpy()
        out["device"].append(sim_ids)
        out["cycle"].append(np.full(len(sim_ids), h // 2))
        out["pulse"].append(np.full(len(sim_ids), k))
        out["polarity"].append(np.full(len(sim_ids), -1 if h % 2 else 1))
        out["g"].append(w_to_g(w))

    total = 0
    for h in halves.tolist():
        n = int(pul[half == h].max())
        sign = -1 if h % 2 else 1
        record(h, 0)
        counts = torch.full((1, n_dev * reps), sign, dtype=torch.int32)
        for k in range(1, n + 1):
            sim.pulse(counts)
            record(h, k)
        total += n
    sim_m = Measurements(device=np.concatenate(out["device"]).astype(np.int64),
                         pulse=np.concatenate(out["pulse"]).astype(np.int64),
                         polarity=np.concatenate(out["polarity"]).astype(np.int8),
                         conductance=np.concatenate(out["g"]).astype(np.float64),
                         cycle=np.concatenate(out["cycle"]).astype(np.int64),
                         source="<replay>")
    sim_m.meta = {"pulses_total": total, "half_cycles": len(halves)}
    return sim_m, ids, reps


def _step_samples(st: dict) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """polarity -> (g_before, step, device id) over all traces."""
    out = {}
    for p in (1, -1):
        tr = [(k[0], v) for k, v in st.items() if k[2] == p]
        if tr:
            before = np.concatenate([v.before for _, v in tr])
            step = np.concatenate([v.after for _, v in tr]) - before
            dev = np.concatenate([np.full(len(v.before), d) for d, v in tr])
            out[p] = (before, step, dev)
        else:
            out[p] = (np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64))
    return out


def intraclass_correlation(x: np.ndarray, groups: np.ndarray) -> float:
    """One-way random-effects ICC of ``x`` grouped by ``groups`` (ANOVA estimator).

    ``ICC = (MSB - MSW) / (MSB + (n0 - 1) MSW)`` with ``n0 = (N - sum n_i^2 / N) / (k - 1)``,
    clipped to [0, 1]; 0 when undefined (one group, or no variance).
    """
    uniq, inv, n_i = np.unique(groups, return_inverse=True, return_counts=True)
    k, n = len(uniq), len(x)
    if k < 2 or n <= k:
        return 0.0
    means = np.bincount(inv, x) / n_i
    grand = x.mean()
    msb = float((n_i * (means - grand) ** 2).sum() / (k - 1))
    msw = float(((x - means[inv]) ** 2).sum() / (n - k))
    n0 = (n - (n_i ** 2).sum() / n) / (k - 1)
    den = msb + (n0 - 1) * msw
    if not den > 0:
        return 0.0
    return float(np.clip((msb - msw) / den, 0.0, 1.0))


def _n_eff(n: int, clusters: int, icc: float) -> float:
    """Kish effective sample size of ``n`` steps from ``clusters`` devices."""
    m = n / max(clusters, 1)
    return n / (1.0 + (m - 1.0) * icc)


def validate(device_yaml: str | Path | DeviceSpec, measurements: str | Path | Measurements,
             seed: int = 0, trace_threshold: float = 0.1, alpha: float = 1e-3,
             min_effect: float = 0.1, bins: int = 5, min_samples: int = 20,
             replicas: int | None = None) -> ValidationResult:
    """Replay the measured protocol on the device YAML and compare (module docstring)."""
    from scipy.stats import ks_2samp, kstwobign

    spec = device_yaml if isinstance(device_yaml, DeviceSpec) else load_device(device_yaml)
    m = measurements if isinstance(measurements, Measurements) else \
        load_measurements(measurements)
    sel = m.polarity != 0
    if not sel.any():
        raise ConfigError("no pulse rows (polarity +1/-1) to validate against: a read-noise "
                          "measurement cannot validate a pulse response", source=m.source)
    sim_m, ids, reps = replay(spec, m, seed=seed, replicas=replicas)
    n_dev = len(ids)
    g_meas = m.conductance[sel]
    g_lo, g_hi = (float(v) for v in np.percentile(g_meas, [0.5, 99.5]))
    if not g_hi > g_lo:
        raise ConfigError("the measured conductance does not change (no range to compare "
                          "against)", source=m.source)
    span = g_hi - g_lo

    # 1. mean traces, read by read
    dev, cyc = m.device[sel], m.cycles()[sel]
    pol, pul = m.polarity[sel].astype(np.int64), m.pulse[sel]
    d_idx = np.searchsorted(ids, dev)
    n_pulse = int(max(pul.max(), sim_m.pulse.max())) + 1
    key = ((2 * cyc + (pol < 0)) * n_pulse + pul)
    s_key = (2 * sim_m.cycles() + (sim_m.polarity < 0)) * n_pulse + sim_m.pulse
    s_dev = sim_m.device % n_dev
    # simulated mean over replicas of each (device, read)
    uk, s_inv = np.unique(s_key, return_inverse=True)
    s_sum = np.zeros((len(uk), n_dev))
    np.add.at(s_sum, (s_inv.reshape(-1), s_dev), sim_m.conductance)
    s_mean = s_sum / reps
    pos = np.searchsorted(uk, key)
    sim_at_rows = s_mean[pos, d_idx]
    rk, r_inv = np.unique(key, return_inverse=True)
    r_inv = r_inv.reshape(-1)
    cnt = np.bincount(r_inv)
    diff = (np.bincount(r_inv, g_meas) - np.bincount(r_inv, sim_at_rows)) / cnt
    rel = np.abs(diff) / span
    trace_error, trace_max = float(rel.mean()), float(rel.max())

    # 2. steps at matched conductance
    meas_s, sim_s = _step_samples(steps(m)), _step_samples(steps(sim_m))
    edges = np.linspace(g_lo, g_hi, bins + 1)
    pending = []
    for p in (1, -1):
        (bm, sm, dm), (bs, ss, ds) = meas_s[p], sim_s[p]
        im = np.clip(np.searchsorted(edges, bm, side="right") - 1, 0, bins - 1)
        is_ = np.clip(np.searchsorted(edges, bs, side="right") - 1, 0, bins - 1)
        for b in range(bins):
            a, c = sm[im == b], ss[is_ == b]
            if len(a) >= min_samples and len(c) >= min_samples:
                pending.append((p, b, a, c, dm[im == b], ds[is_ == b]))
    n_tests = max(1, len(pending))
    alpha_per = alpha / n_tests
    tests = []
    for p, b, a, c, da, dc in pending:
        d = float(ks_2samp(a, c).statistic)
        icc = intraclass_correlation(c, dc)  # under the null: the model's own ICC
        na = _n_eff(len(a), len(np.unique(da)), icc)
        nc = _n_eff(len(c), len(np.unique(dc)), icc)
        pv = float(kstwobign.sf(d * math.sqrt(na * nc / (na + nc))))
        tests.append(StepTest(p, b, float(edges[b]), float(edges[b + 1]), len(a), len(c),
                              float(a.mean()), float(c.mean()), d, pv,
                              bool(pv < alpha_per and d >= min_effect), icc, na, nc))
    reasons = []
    if not trace_error < trace_threshold:
        reasons.append(f"mean trace error {trace_error:.4f} >= {trace_threshold} of the range")
    rejected = [t for t in tests if t.rejected]
    if rejected:
        where = ", ".join(f"{'up' if t.polarity > 0 else 'down'} bin {t.bin} (D={t.statistic:.2f})"
                          for t in rejected[:4])
        reasons.append(f"step sizes differ in {len(rejected)} of {len(tests)} bins: {where}")
    if not tests:
        reasons.append(f"too few steps for any test (need {min_samples} per bin)")
    return ValidationResult(
        passed=not reasons, trace_error=trace_error, trace_error_max=trace_max,
        trace_threshold=trace_threshold, g_lo=g_lo, g_hi=g_hi, alpha=alpha,
        alpha_per_test=alpha_per, min_effect=min_effect, devices=n_dev, replicas=reps,
        half_cycles=int(sim_m.meta["half_cycles"]), pulses=int(sim_m.meta["pulses_total"]),
        seed=seed, step_tests=tests, reasons=reasons)
