"""Which fitted parameters a measurement determines, and the cause where it does not.

Every check works on the measured steps and the fit alone (no knowledge of the true
device), so ``rpuhw fit`` reports it for any measurement; the demo, which knows the
emulated chip's hidden device, also marks the parameters that are *far* from it
(:func:`compare_with_truth`) and gives each its check's cause.

Checks (:func:`checks`):

bounds (``g_min``, ``g_max``)
    A hard bound is measured only where the traces run into it; a soft bound is
    approached ever more slowly. Either way the traces towards a bound flatten out as
    they reach it. Per half-cycle, the slope of the last ``max(10, n/10)`` reads
    (least squares, S per pulse, towards the bound) is compared with the mean
    measured step in the middle fifth of the device's measured range: the pooled ratio
    ``rho = mean end slope / mean mid-range step``. The bound counts as **reached**
    when ``rho < SATURATED_STEP_RATIO`` (0.1: the step fell to a tenth of its
    mid-range size); otherwise the fitted bound is the model's extrapolation beyond
    the last reads (by ``gap``, given in read-noise sigmas and mid-range steps), and
    another model would put it elsewhere.
cycle-to-cycle noise (``dw_min_std``)
    A measured step is the difference of two reads, so its variance about the mean
    step ``mu`` is ``2 sigma_read^2 + (dw_min_std mu)^2`` and the fit gets
    ``dw_min_std^2 = (mean r^2 - 2 sigma_read^2) / mean mu^2``. Its sensitivity to the
    read noise is ``d ln dw_min_std / d ln sigma_read = -A`` with
    ``A = 2 sigma_read^2 / (dw_min_std^2 mean mu^2)``: a 1 % error of the read noise
    moves dw_min_std by A %. **Identified** when ``A <= NOISE_SENSITIVITY_MAX`` (5).
    Read noise comparable to the step (``sigma_read / rms(mu) ~ 1``) makes A ~ 50 for
    dw_min_std = 0.2: then a read-noise error of 1 % (within the estimate's own
    standard error, or a slight misfit of the mean step) halves or doubles it.
device-to-device spread (``dw_min_dtod``)
    A spread estimated from n devices has a relative standard error
    ``1 / sqrt(2 (n - 1))``, and it is only seen where it exceeds each device's own
    estimation error. **Identified** when that relative error is at most
    ``SPREAD_REL_SE_MAX`` (0.5) and the rms per-device standard error of the step is
    below the spread.
read noise
    **Identified** when its relative standard error is below ``READ_NOISE_REL_SE_MAX``
    (0.2); the source is named (repeated reads, or the covariance of consecutive step
    residuals, which a misfit of the mean step biases).

Far from the truth (:func:`compare_with_truth`): ``|fitted / true - 1| > FAR_RELATIVE``
(0.1) for a value, ``> FAR_RELATIVE_SPREAD`` (0.2) for a spread (``_dtod``, ``_std``):
relative rules (the table reports the fit's standard error and 95 % interval beside
it, whether the true value is inside that interval, and each explanation says how
many standard errors off the value is).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SATURATED_STEP_RATIO = 0.1
"""A bound is reached when the traces' end slope is below this fraction of the mid-range
step."""
NOISE_SENSITIVITY_MAX = 5.0
"""dw_min_std is identified when a 1 % read-noise error moves it by at most this many %."""
SPREAD_REL_SE_MAX = 0.5
"""A device-to-device spread is identified when its relative standard error is below this."""
READ_NOISE_REL_SE_MAX = 0.2
"""The read noise is identified when its relative standard error is below this."""
FAR_RELATIVE = 0.1
"""A fitted value is far from the true one when ``|fitted / true - 1|`` exceeds this."""
FAR_RELATIVE_SPREAD = 0.2
"""The same for a spread (a ``_dtod`` or ``_std`` parameter), whose estimate from a
handful of devices has a larger sampling error (``1 / sqrt(2 (n - 1))``: 18 % for 16)."""
END_READS_MIN = 10
"""At least this many reads at the end of a half-cycle for its end slope."""
C2C_REL_SE_MAX = 0.25
"""dw_min_std is identified when the fit's relative standard error is at most this (its
95 % interval within about +- 50 %)."""
NOT_IDENTIFIABLE = "not identifiable from these data:"
"""How every message of :func:`not_identifiable` starts."""
REMEDY_BOUNDS = ("measure with --pulses auto, which pulses each half-cycle until the "
                 "device saturates")
REMEDY_READS = ("measure with --reads-per-step 8, which averages the read noise of every "
                "state, and run the read-noise protocol")


@dataclass
class Check:
    """Whether the data determine one fitted parameter, and why (not)."""

    parameter: str
    identified: bool
    cause: str
    """One sentence with the numbers behind the verdict."""
    figures: dict[str, float] = field(default_factory=dict)
    """The numbers (SI units: S, S per pulse; ratios dimensionless)."""

    def to_dict(self) -> dict[str, Any]:
        return {"identified": self.identified, "cause": self.cause,
                "figures": {k: (None if not math.isfinite(v) else v)
                            for k, v in self.figures.items()}}


def _scale(res) -> float:
    """Siemens per weight unit of the fitted device (its mean bounds are w = -1, +1)."""
    return 0.5 * (res.g_max - res.g_min)


def read_noise_s(res) -> float:
    """The fitted read noise in siemens."""
    return float(res.read_noise) * _scale(res)


def _mid_steps(res, up: bool) -> np.ndarray:
    """Mean measured step (u units, towards the bound of ``up``) per device in the middle
    fifth of its measured range (the mean of the signed steps: a mean of |step| would
    grow with the read noise)."""
    d = res.data
    side = d.up if up else d.down
    span = d.hi0 - d.lo0
    mid = 0.5 * (d.hi0 + d.lo0)
    sel = np.abs(side.u - mid[side.dev]) <= 0.1 * span[side.dev]
    du = side.du if up else -side.du
    n = np.bincount(side.dev[sel], None, d.n_dev)
    tot = np.bincount(side.dev[sel], du[sel], d.n_dev)
    fallback = np.bincount(side.dev, du, d.n_dev) / np.maximum(
        np.bincount(side.dev, None, d.n_dev), 1)
    return np.where(n > 0, tot / np.maximum(n, 1), fallback)


def bound_check(res, upper: bool) -> Check:
    """Did the traces towards ``g_max`` (``upper``) or ``g_min`` reach it? (module doc)."""
    d = res.data
    name = "g_max" if upper else "g_min"
    pol = 1 if upper else -1
    value = res.g_max if upper else res.g_min
    mids = _mid_steps(res, upper)
    sign = 1.0 if upper else -1.0
    ends, mid_of, gaps, qs = [], [], [], []
    for (i, _c, p), (pulses, u) in d.traces.items():
        if p != pol or len(u) < 2 * END_READS_MIN:
            continue
        q = max(END_READS_MIN, len(u) // 10)
        x = pulses[-q:].astype(float)
        slope = np.polyfit(x - x.mean(), u[-q:], 1)[0]
        ends.append(sign * slope)
        mid_of.append(mids[i])
        bound = res.p[i, 1] if upper else res.p[i, 0]
        gaps.append(sign * (bound - float(np.mean(u[-q:]))))
        qs.append(q)
    sigma = read_noise_s(res)
    if len(ends) < 1 or not np.mean(mid_of) > 0:
        return Check(name, False, f"no half-cycle towards {name} with {2 * END_READS_MIN} or "
                     "more reads: the bound is not measured")
    s0 = d.s0
    ends_a, mid = np.array(ends), float(np.mean(mid_of))
    rho = float(ends_a.mean() / mid)
    rho_se = float(ends_a.std(ddof=1) / math.sqrt(len(ends_a)) / mid) if len(ends_a) > 1 \
        else float("nan")
    gap = float(np.median(gaps)) * s0
    end_s, mid_s = float(ends_a.mean()) * s0, mid * s0
    q = int(np.median(qs))
    direction = "up" if upper else "down"
    figures = {"end_step_ratio": rho, "end_step_ratio_se": rho_se,
               "end_slope_S_per_pulse": end_s, "mid_range_step_S": mid_s,
               "gap_to_bound_S": gap, "gap_read_noise_sigmas": gap / sigma if sigma > 0
               else float("inf"), "gap_mid_range_steps": gap / mid_s, "end_reads": q,
               "half_cycles": len(ends)}
    beyond, inside = ("above", "below") if upper else ("below", "above")
    where = f"{abs(gap):.3g} S ("
    if sigma > 0:
        where += f"{abs(gap) / sigma:.1f} read-noise sigma, "
    where += (f"{abs(gap) / mid_s:.1f} mid-range steps) {beyond if gap >= 0 else inside} "
              "the last reads")
    moved = (f"in the last {q} pulses of each {direction} half-cycle the conductance still "
             f"{'rose' if upper else 'fell'} {abs(end_s):.3g} S per pulse, {100 * rho:.0f} % "
             + (f"(+- {100 * rho_se:.0f} %) " if math.isfinite(rho_se) else "")
             + f"of the step at mid-range ({mid_s:.3g} S)")
    if rho < SATURATED_STEP_RATIO:
        return Check(name, True, f"reached: {moved}, < {100 * SATURATED_STEP_RATIO:.0f} %; "
                     f"the fitted {name} lies {where}", figures)
    return Check(name, False,
                 f"not reached: {moved}; so {name} = {value:.3g} S is the {res.model} model's "
                 f"extrapolation, {where}, not a measured value: {NOT_IDENTIFIABLE} the "
                 f"bound was never reached ({REMEDY_BOUNDS})", figures)


def noise_check(res) -> Check:
    """Is the cycle-to-cycle noise dw_min_std separable from the read noise? (module doc)."""
    d = res.data
    c2c = float(res.params.get("dw_min_std", 0.0))
    mu2, n = 0.0, 0
    for side, up in ((d.up, True), (d.down, False)):
        pred = res.fitmodel.step(up, side.u, res.p[side.dev], res.glob, res.frame)
        lo, hi = res.p[side.dev, 0], res.p[side.dev, 1]
        gap = (hi - side.u) if up else (side.u - lo)
        free = (gap >= 3 * np.abs(pred)) & (np.abs(pred) > 0)
        mu2 += float(np.sum(pred[free] ** 2))
        n += int(free.sum())
    rms = math.sqrt(mu2 / max(n, 1)) * d.s0
    sigma = read_noise_s(res)
    var_c2c = (c2c * rms) ** 2
    sens = 2 * sigma ** 2 / var_c2c if var_c2c > 0 else (float("inf") if sigma > 0 else 0.0)
    frac = var_c2c / (2 * sigma ** 2 + var_c2c) if var_c2c + sigma > 0 else 1.0
    rel_se = (res.uncertainties.get("read_noise", float("nan")) / res.read_noise
              if res.read_noise > 0 else float("nan"))
    from_read = sens * rel_se * c2c if math.isfinite(sens) else float("inf")
    source = ("repeated reads" if d.read_var is not None
              else "the covariance of consecutive step residuals")
    figures = {"read_noise_S": sigma, "rms_step_S": rms,
               "read_noise_to_step": sigma / rms if rms > 0 else float("inf"),
               "cycle_to_cycle_fraction_of_step_variance": frac,
               "sensitivity_to_read_noise": sens, "se_from_read_noise": from_read}
    ratio = f"{sigma / rms:.2f}" if rms > 0 else "inf"
    sens_txt = f"{sens:.0f}" if math.isfinite(sens) else "an unbounded"
    text = (f"read noise {sigma:.3g} S is {ratio} x the rms step ({rms:.3g} S): a measured "
            "step is the difference of two reads, so its variance is 2 sigma_read^2 + "
            f"(dw_min_std x step)^2, of which the cycle-to-cycle part is {100 * frac:.0f} %; "
            f"a 1 % error of the read noise (from {source}) moves dw_min_std by {sens_txt} %")
    if math.isfinite(from_read) and math.isfinite(rel_se):
        text += (f", so the read noise's own standard error ({100 * rel_se:.1f} %) alone "
                 f"gives dw_min_std +- {from_read:.2g}")
    se = float(res.uncertainties.get("dw_min_std", float("nan")))
    figures["relative_se"] = se / c2c if c2c > 0 and math.isfinite(se) else float("nan")
    if math.isfinite(se) and se > 0 and c2c > 0:
        # the state-space fit separates the two by their time structure (a random walk of
        # the state against independent reads), so its own standard error decides
        text += (f"; the state-space fit gives dw_min_std = {c2c:.3g} +- {se:.2g} "
                 f"({100 * se / c2c:.0f} %)")
        if se / c2c <= C2C_REL_SE_MAX:
            return Check("dw_min_std", True, text, figures)
        return Check("dw_min_std", False, text + f" (> {100 * C2C_REL_SE_MAX:.0f} %): "
                     f"{NOT_IDENTIFIABLE} the read noise hides the cycle-to-cycle noise ("
                     f"{REMEDY_READS})", figures)
    if sens <= NOISE_SENSITIVITY_MAX:
        return Check("dw_min_std", True, text, figures)
    return Check("dw_min_std", False,
                 text + f" (> {NOISE_SENSITIVITY_MAX:.0f} %): {NOT_IDENTIFIABLE} the read "
                 f"noise hides the cycle-to-cycle noise ({REMEDY_READS})", figures)


def spread_check(res) -> Check:
    """Is the device-to-device spread of the step (dw_min_dtod) resolved? (module doc)."""
    n = int(len(res.per_device["device"]))
    dtod = float(res.params.get("dw_min_dtod", 0.0))
    dw = float(res.params.get("dw_min", 0.0))
    se = np.asarray(res.per_device.get("dw_se", np.zeros(n)), dtype=float)
    own = float(np.sqrt(np.mean(se ** 2))) / dw if dw > 0 and n else float("inf")
    rel = 1.0 / math.sqrt(2.0 * (n - 1)) if n > 1 else float("inf")
    figures = {"devices": n, "relative_se_of_spread": rel, "device_own_relative_se": own,
               "spread": dtod}
    text = (f"{n} devices give a spread with a relative standard error of "
            f"{100 * rel:.0f} %; each device's own step is known to +- {100 * own:.1f} % "
            f"against a spread of {100 * dtod:.1f} %")
    ok = rel <= SPREAD_REL_SE_MAX and own < dtod
    return Check("dw_min_dtod", ok, text if ok else text + f": {NOT_IDENTIFIABLE} the spread "
                 "is not resolved (more devices, or more pulses per device, would resolve it)",
                 figures)


def read_noise_check(res) -> Check:
    """Is the read noise determined? (module doc)."""
    d = res.data
    se = float(res.uncertainties.get("read_noise", float("nan")))
    rel = se / res.read_noise if res.read_noise > 0 else float("inf")
    source = (f"repeated reads ({d.read_dof} degrees of freedom) and the traces"
              if d.read_var is not None
              else "the state-space likelihood of the traces (no read-noise rows)")
    figures = {"read_noise_S": read_noise_s(res), "relative_se": rel}
    text = f"from {source}; relative standard error {100 * rel:.1f} %"
    ok = rel < READ_NOISE_REL_SE_MAX
    return Check("read_noise", ok, text if ok else text + f": {NOT_IDENTIFIABLE} "
                 f"read noise not determined ({REMEDY_READS})", figures)


def checks(res) -> dict[str, Check]:
    """Every check of the module docstring for a :class:`~rpuhw.calibration.fit.FitResult`
    (empty when the result carries no step data)."""
    if res.data is None or res.fitmodel is None or res.p is None:
        return {}
    out = [bound_check(res, upper=False), bound_check(res, upper=True), noise_check(res),
           spread_check(res), read_noise_check(res)]
    return {c.parameter: c for c in out}


def not_identifiable(res) -> list[str]:
    """``"not identifiable from these data: ..."`` for every check that fails, each with
    its cause and remedy (``FitResult.not_identifiable``)."""
    out = []
    for c in checks(res).values():
        if not c.identified:
            cause = c.cause
            at = cause.find(NOT_IDENTIFIABLE)
            head = f"{NOT_IDENTIFIABLE} {c.parameter}: "
            out.append(head + (cause[:at].rstrip(" :;") + "; " + cause[at + len(
                NOT_IDENTIFIABLE):].strip() if at >= 0 else cause))
    return out


# ---- against a known truth (the demo's emulated chip) -----------------------------------


def device_row(spec) -> dict[str, Any]:
    """A device YAML's parameters in conductance terms (S), comparable between a true and
    a fitted device: model, bounds, mean steps at mid-range, spreads, read noise."""
    from rpuhw.calibration.fit_report import mid_range_steps

    p, c = spec.model.params, spec.conductance
    up, down = mid_range_steps(spec)
    half = 0.5 * (p.w_max - p.w_min)
    scale = (c.g_max - c.g_min) / (p.w_max - p.w_min)
    return {"model": spec.model.name, "g_min (S)": c.g_min, "g_max (S)": c.g_max,
            "up step at mid-range (S)": up, "down step at mid-range (S)": down,
            "dw_min (of the half range)": p.dw_min / half, "up_down": p.up_down,
            "dw_min_dtod": p.dw_min_dtod, "dw_min_std": p.dw_min_std,
            "up_down_dtod": p.up_down_dtod,
            "w_min_dtod (of the half range)": p.w_min_dtod * abs(p.w_min) / half,
            "w_max_dtod (of the half range)": p.w_max_dtod * abs(p.w_max) / half,
            "read noise (S)": spec.io.read_noise * scale}


@dataclass
class Comparison:
    """One row of fitted vs true."""

    parameter: str
    true: Any
    fitted: Any
    se: float | None = None
    """The fit's standard error of ``fitted`` (same unit), where it has one."""
    check: Check | None = None
    """The data check of this parameter, where there is one."""
    explanation: str = ""
    """Why it is far (empty when it is not)."""
    interval: tuple[float, float] | None = None
    """The fit's 95 % interval of ``fitted`` (same unit), where it has one."""

    @property
    def ratio(self) -> float | None:
        if isinstance(self.true, str) or not self.true or self.fitted is None:
            return None
        return float(self.fitted) / float(self.true)

    @property
    def spread(self) -> bool:
        """A spread parameter (``_dtod``, ``_std``), with the looser rule."""
        return "_dtod" in self.parameter or "_std" in self.parameter

    @property
    def tolerance(self) -> float:
        """The largest ``|fitted / true - 1|`` that is not far."""
        return FAR_RELATIVE_SPREAD if self.spread else FAR_RELATIVE

    @property
    def far(self) -> bool:
        r = self.ratio
        return r is not None and abs(r - 1.0) > self.tolerance

    @property
    def covered(self) -> bool | None:
        """Whether the true value lies in the 95 % interval (None: no interval)."""
        if self.interval is None or isinstance(self.true, str):
            return None
        lo, hi = self.interval
        return bool(lo <= float(self.true) <= hi)


def measured_step_at(res, g: float, up: bool, half_width: float = 0.05
                     ) -> tuple[float, float, int]:
    """Mean measured step (S, signed), its standard error and the count of steps whose
    pre-pulse conductance lies within ``half_width`` of the measured range around ``g``."""
    d = res.data
    side = d.up if up else d.down
    u = (g - d.g0) / d.s0
    sel = np.abs(side.u - u) <= half_width
    n = int(sel.sum())
    if n < 2:
        return float("nan"), float("nan"), n
    x = side.du[sel] * d.s0
    return float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)), n


def compare_with_truth(res, true_spec) -> list[Comparison]:
    """Fitted (``res``) vs the true device YAML ``true_spec``, row by row as
    :func:`device_row`, each far row (``|fitted / true - 1| > FAR_RELATIVE``) with the
    cause computed by the checks."""
    true = device_row(true_spec)
    fitted = device_row(res.to_device_spec())
    found = checks(res)
    unc, ivl = res.uncertainties, res.intervals
    scale = _scale(res)
    # row -> the fit's key; the fitted device has its mean bounds at -1, +1 (its half
    # range is 1 weight unit), so only the read noise changes unit (weight units -> S)
    fit_key = {"g_min (S)": "g_min", "g_max (S)": "g_max",
               "dw_min (of the half range)": "dw_min", "up_down": "up_down",
               "dw_min_dtod": "dw_min_dtod", "dw_min_std": "dw_min_std",
               "up_down_dtod": "up_down_dtod",
               "w_min_dtod (of the half range)": "w_min_dtod",
               "w_max_dtod (of the half range)": "w_max_dtod", "read noise (S)": "read_noise"}
    rows = []
    for key, tv in true.items():
        name = fit_key.get(key, "")
        k = scale if name == "read_noise" else 1.0
        se = unc.get(name)
        se = None if se is None else float(se) * k
        lo_hi = ivl.get(name)
        interval = None
        if lo_hi is not None and np.ndim(lo_hi[0]) == 0:
            interval = (float(lo_hi[0]) * k, float(lo_hi[1]) * k)
        row = Comparison(key, tv, fitted.get(key), se, found.get(name), interval=interval)
        if row.far or row.covered is False:
            row.explanation = _explain(res, row, true, fitted)
        rows.append(row)
    return rows


def _explain(res, row: Comparison, true: dict[str, Any], fitted: dict[str, Any]) -> str:
    """The cause of a far row, from its check (or the measured steps for the step rows)."""
    parts = [f"{row.ratio:.2f} x the true value"]
    if row.se:
        parts[0] += f" ({abs(row.fitted - row.true) / row.se:.1f} standard errors off)"
    if row.covered is False:
        parts[0] += (f", outside the 95 % interval [{row.interval[0]:.3g}, "
                     f"{row.interval[1]:.3g}]")
    if row.check is not None:
        verdict = "identified" if row.check.identified else "NOT identified"
        parts.append(f"{verdict} by the data: {row.check.cause}")
    elif row.parameter.endswith("step at mid-range (S)") and res.data is not None:
        up = row.parameter.startswith("up")
        g_mid = 0.5 * (true["g_min (S)"] + true["g_max (S)"])
        mean, se, n = measured_step_at(res, g_mid, up)
        if n < 2:
            parts.append(f"the measured traces never passed the true mid-range "
                         f"({g_mid:.3g} S), so the data cannot check this step")
        else:
            model_there = float(np.mean([abs(res.mean_step(i, np.array([g_mid]), up)[0])
                                         for i in range(res.data.n_dev)]))
            g_fit = 0.5 * (fitted["g_min (S)"] + fitted["g_max (S)"])
            text = (f"the {n} measured steps at the true mid-range ({g_mid:.3g} S) average "
                    f"{abs(mean):.3g} +- {se:.2g} S (true {row.true:.3g} S), the fitted model "
                    f"gives {model_there:.3g} S there")
            if abs(abs(mean) - row.true) > max(2 * se, FAR_RELATIVE * row.true):
                text += ": the measured devices differ from the true mean device"
            elif abs(model_there - abs(mean)) <= max(2 * se, FAR_RELATIVE * abs(mean)):
                text += (f": the model fits the data, but its mid-range is at {g_fit:.3g} S "
                         "because its bounds are off")
            else:
                text += ": the model's shape misses the measured steps there"
            parts.append(text)
    elif row.parameter == "up_down" and res.data is not None and res.data.n_dev > 1:
        n = res.data.n_dev
        lo_sd = float(res.params.get("w_min_dtod", 0.0)) * abs(float(res.params["w_min"]))
        hi_sd = float(res.params.get("w_max_dtod", 0.0)) * float(res.params["w_max"])
        centre_se = 0.5 * math.hypot(lo_sd, hi_sd) / math.sqrt(n)
        text = (f"up_down is the asymmetry at w = 0, the centre of the {n} measured devices' "
                f"mean bounds; their bound spreads put that centre within +- "
                f"{centre_se:.3f} of the half range (one standard error) of the population's")
        if res.model == "soft_bounds":
            text += (f", which alone moves a soft-bounds up_down by +- {2 * centre_se:.3f} "
                     "(the steps there change by their slope times the shift)")
        text += (": a sampling error of the reference point more than of the steps; the "
                 "up and down steps at mid-range compare the asymmetry the data determine")
        parts.append(text)
    if true.get("model") != fitted.get("model") and (row.check is None
                                                      or row.check.identified):
        parts.append(f"the fitted model ({fitted.get('model')}) is not the true one "
                     f"({true.get('model')})")
    return "; ".join(parts)
