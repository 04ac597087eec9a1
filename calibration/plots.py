"""Figure of a fit (matplotlib, Agg canvas, PNG): measured traces with the fitted mean
response, step vs conductance (up and down), device-to-device maps, and the fitted
parameters in physical units (µS, nS) -- beside the true ones when they are known
(``truth=``, e.g. the emulated chip's hidden device)."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rpuhw.calibration.fit import FitResult
from rpuhw.plots import new_figure, save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from rpuhw.calibration.validate import ValidationResult
    from rpuhw.device_spec import DeviceSpec

_NA = "-"


def _maps_grid(res: FitResult) -> tuple[np.ndarray, np.ndarray, str]:
    """Row/col of each device; devices without a position go on a near-square grid."""
    rows, cols = res.per_device["row"], res.per_device["col"]
    if np.all(rows >= 0) and np.all(cols >= 0):
        return rows, cols, "array row / array column"
    n = len(rows)
    width = int(np.ceil(np.sqrt(n)))
    idx = np.arange(n)
    return idx // width, idx % width, "device index // width / device index % width"


def _scale(spec: DeviceSpec) -> float:
    """Siemens per weight unit of ``spec``'s conductance map."""
    c, p = spec.conductance, spec.model.params
    assert c is not None
    return (c.g_max - c.g_min) / (p.w_max - p.w_min)


def spec_mean_step(spec: DeviceSpec, g: np.ndarray, up: bool) -> np.ndarray:
    """Signed mean step (S) of the spec's mean device (every ``*_dtod`` 0) at conductance
    ``g`` (S); needs the spec's conductance block."""
    import torch

    p = spec.model.params
    mean = dataclasses.replace(p, **{f.name: 0.0 for f in dataclasses.fields(p)
                                     if f.name.endswith("_dtod")})
    model = type(spec.model)(mean)
    g = np.asarray(g, dtype=np.float64)
    state = model.draw(1, len(g), torch.Generator().manual_seed(0))
    state = {k: v.double() for k, v in state.items()}
    w = torch.as_tensor(np.asarray(spec.g_to_w(g)), dtype=torch.float64).reshape(1, -1)
    mask = torch.full((1, len(g)), bool(up))
    step = model.step(w, mask, state).numpy().ravel() * _scale(spec)
    return step if up else -step


def _physical(spec: DeviceSpec) -> dict[str, float]:
    """Model-independent parameters of a device spec with a conductance block, in the
    units of :data:`_ROWS`."""
    from rpuhw.calibration.fit_report import mid_range_steps

    p, c, s = spec.model.params, spec.conductance, _scale(spec)
    assert c is not None
    up, down = mid_range_steps(spec)
    return {"g_min": c.g_min * 1e6, "g_max": c.g_max * 1e6,
            "g_min spread": p.w_min_dtod * abs(p.w_min) * s * 1e6,
            "g_max spread": p.w_max_dtod * abs(p.w_max) * s * 1e6,
            "up step": up * 1e9, "down step": down * 1e9,
            "dw_min_dtod": p.dw_min_dtod, "dw_min_std": p.dw_min_std,
            "read noise": spec.io.read_noise * s * 1e9}


_ROWS = {"g_min": ("g_min (mean lower bound)", "µS"),
         "g_max": ("g_max (mean upper bound)", "µS"),
         "g_min spread": ("g_min spread, device to device", "µS"),
         "g_max spread": ("g_max spread, device to device", "µS"),
         "up step": ("up step at mid-range", "nS"),
         "down step": ("down step at mid-range", "nS"),
         "dw_min_dtod": ("dw_min_dtod (step spread, device to device)", "relative"),
         "dw_min_std": ("dw_min_std (step spread, pulse to pulse)", "relative"),
         "read noise": ("read noise (std of one read)", "nS")}
"""Key -> (name in the figure, unit)."""


def _standard_errors(res: FitResult, spec: DeviceSpec) -> dict[str, float]:
    """Standard errors of the fit in the units of :data:`_ROWS` (where the fit has them)."""
    u, s, p = res.uncertainties, _scale(spec), spec.model.params
    out = {"g_min": u.get("g_min"), "g_max": u.get("g_max"),
           "dw_min_dtod": u.get("dw_min_dtod"), "dw_min_std": u.get("dw_min_std"),
           "read noise": None if u.get("read_noise") is None else u["read_noise"] * s * 1e9}
    for key, k in (("g_min", "g_min"), ("g_max", "g_max")):
        out[key] = None if out[key] is None else out[key] * 1e6
        se = u.get(f"w_{k[2:]}_dtod")
        out[f"{key} spread"] = None if se is None else se * abs(getattr(p, f"w_{k[2:]}")) * s * 1e6
    return {k: float(v) for k, v in out.items() if v is not None}


def _conditions(res: FitResult, meta: dict[str, Any] | None) -> str:
    """``8 devices, 1 cycle x 300 up + 300 down pulses, read at 0.2 V`` from the sidecar."""
    n = res.data.n_dev if res.data is not None else len(res.per_device["device"])
    text = f"{n} devices"
    settings = (meta or {}).get("settings", {}) if isinstance(meta, dict) else {}
    pulses = settings.get("pulses_per_direction", settings.get("pulses"))
    cycles = settings.get("cycles")
    if pulses and cycles:
        text += (f", {cycles} cycle{'s' if cycles != 1 else ''} x {pulses} up + {pulses} "
                 f"down pulses")
    if settings.get("read_voltage") is not None:
        text += f", read at {float(settings['read_voltage']):g} V"
    return text


def _fmt(v: float | None) -> str:
    return _NA if v is None else f"{v:.3g}"


def fit_figure(res: FitResult, n_traces: int = 4, truth: DeviceSpec | None = None,
               meta: dict[str, Any] | None = None) -> Figure:
    """The figure :func:`plot_fit` writes (see there)."""
    if res.data is None:
        raise ValueError("plot_fit: the FitResult carries no step data (res.data is None); "
                         "plot the result of calibration.fit.fit()")
    if truth is not None and truth.conductance is None:
        raise ValueError(f"plot_fit: truth ({truth.source}) has no conductance block "
                         "(g_min, g_max): it cannot be compared in siemens")
    data = res.data
    spec = res.to_device_spec()
    physical = spec.conductance is not None
    fig = new_figure(16.0, 15.5)
    title = (f"Fit of the pulse response ({_conditions(res, meta)}): model {res.model} "
             f"({'ok' if res.ok else 'NOT OK: ' + res.reason})")
    fig.suptitle(title + "\n" + textwrap.fill(res.explanation, 150), fontsize=12)
    top, middle, bottom = fig.subfigures(3, 1, height_ratios=[1.25, 1.0, 1.05])
    s0, g0 = data.s0, data.g0

    # 1: traces (first cycle, up then down) of a few devices with the fitted mean response
    ax = top.add_subplot(1, 3, 1)
    picks = np.linspace(0, data.n_dev - 1, min(n_traces, data.n_dev)).astype(int)
    cycles = sorted({c for (_i, c, _p) in data.traces})
    for n, i in enumerate(picks):
        offset = 0
        r, c = int(data.rows[i]), int(data.cols[i])
        where = f" (row {r}, col {c})" if r >= 0 and c >= 0 else ""
        label: str | None = f"device {int(data.devices[i])}{where}"
        for pol in (1, -1):
            key = (int(i), cycles[0], pol)
            if key not in data.traces:
                continue
            k, u = data.traces[key]
            g = g0 + u * s0
            ax.plot(offset + k, g * 1e6, ".", ms=2, color=f"C{n}", label=label)
            model = res.rollout(int(i), float(g[0]), len(k) - 1, pol > 0)
            ax.plot(offset + k, model * 1e6, "-", color="k", lw=1,
                    label="fitted mean response" if n == 0 and pol == 1 else None)
            offset += int(k[-1]) + 1
            label = None
    ax.set(title=f"Measured traces, cycle {cycles[0]}: up, then down",
           xlabel="pulse number (pulses)", ylabel="conductance (µS)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8,
              markerscale=4, frameon=False)

    # 2, 3: step vs conductance, up and down; fitted (and true) mean device
    mid = int(np.argsort(res.per_device["dw"])[data.n_dev // 2])
    for j, (side, up, name) in enumerate(((data.up, True, "Up"), (data.down, False, "Down"))):
        ax = top.add_subplot(1, 3, 2 + j)
        take = np.random.default_rng(0).permutation(len(side.u))[:20000]
        ax.plot((g0 + side.u[take] * s0) * 1e6, side.du[take] * s0 * 1e9, ".", ms=1,
                alpha=0.3, color="0.55", label="all devices", rasterized=True)
        sel = side.dev == mid
        ax.plot((g0 + side.u[sel] * s0) * 1e6, side.du[sel] * s0 * 1e9, ".", ms=2,
                color="C1", label=f"device {int(data.devices[mid])} (median step)")
        if physical:
            g = np.linspace(spec.conductance.g_min, spec.conductance.g_max, 200)
            ax.plot(g * 1e6, spec_mean_step(spec, g, up) * 1e9, "k-", lw=1.5,
                    label=f"fitted mean step ({res.model})")
        if truth is not None:
            g = np.linspace(truth.conductance.g_min, truth.conductance.g_max, 200)
            ax.plot(g * 1e6, spec_mean_step(truth, g, up) * 1e9, "--", color="C3", lw=1.5,
                    label=f"true mean step ({truth.model.name})")
        ax.axhline(0.0, color="0.3", lw=0.5)
        ax.set(title=f"{name} steps vs conductance", xlabel="conductance before the pulse (µS)",
               ylabel="conductance step of one pulse (nS)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8,
                  markerscale=3, frameon=False)

    # 4-7: device-to-device maps
    rr, cc, label = _maps_grid(res)
    ylabel, xlabel = label.split(" / ")
    shape = (int(rr.max()) + 1, int(cc.max()) + 1)
    s_fit = _scale(spec) if physical else None
    maps = [("dw", "dw_min: step per pulse", "nS" if physical else "weight units",
             s_fit * 1e9 if physical else 1.0),
            ("g_min", "g_min: lower bound", "µS", 1e6),
            ("g_max", "g_max: upper bound", "µS", 1e6),
            ("up_down", "up_down: asymmetry", "relative (dimensionless)", 1.0)]
    middle.suptitle("Device-to-device maps (grey: not measured)", fontsize=11)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.92")
    for j, (key, name, unit, scale) in enumerate(maps):
        ax = middle.add_subplot(1, 4, 1 + j)
        grid = np.full(shape, np.nan)
        grid[rr, cc] = res.per_device[key] * scale
        im = ax.imshow(grid, cmap=cmap, interpolation="nearest")
        two_units = key == "dw" and physical
        cb = middle.colorbar(im, ax=ax, shrink=0.85, pad=0.16 if two_units else 0.05)
        cb.set_label(unit)
        if two_units:  # the same scale in weight units on the colorbar's left side
            sec = cb.ax.secondary_yaxis("left", functions=(lambda v, k=scale: v / k,
                                                           lambda v, k=scale: v * k))
            sec.set_ylabel("weight units")
        ax.set(title=name, xlabel=xlabel, ylabel=ylabel)

    # 8-9: parameters (fitted vs true), table(s)
    n_cols = 3 if truth is not None and physical else 2
    widths = [1.0, 1.45, 1.0][-n_cols:]
    axes = bottom.subplots(1, n_cols, width_ratios=widths)
    if physical:
        fitted = _physical(spec)
        se = _standard_errors(res, spec)
        true = _physical(truth) if truth is not None else {}
        if truth is not None:
            _ratio_panel(axes[0], fitted, true, se)
        cols = ["parameter", "unit", "fitted", "std. error"]
        cells = [[_ROWS[k][0], _ROWS[k][1], _fmt(v), _fmt(se.get(k))]
                 for k, v in fitted.items()]
        if true:
            cols += ["true", "fitted / true"]
            for row, k in zip(cells, fitted, strict=True):
                row += [_fmt(true[k]), _fmt(fitted[k] / true[k]) if true[k] else _NA]
        _table(axes[-2], cells, cols,
               "Fitted vs true (hidden device)" if true else "Fitted device, physical units")
    else:
        axes[-2].axis("off")
        axes[-2].set_title("no conductance block: parameters in weight units only")
    cells = []
    for k, v in res.params.items():
        if isinstance(v, float):
            extra = f" ({v * s_fit * 1e9:.3g} nS)" if k == "dw_min" and physical else ""
            cells.append([k, f"{v:.4g}{extra}", _fmt(res.uncertainties.get(k))])
    _table(axes[-1], cells, ["key", "value", "std. error"],
           f"device.yaml keys of {res.model}\n(weight units, w in [-1, 1])")
    if res.notes:
        bottom.supxlabel("\n".join(textwrap.fill("note: " + n, 190) for n in res.notes),
                         fontsize=9, ha="left", x=0.01)
    return fig


def _ratio_panel(ax, fitted: dict[str, float], true: dict[str, float],
                 se: dict[str, float]) -> None:
    """Fitted / true of each parameter on a log axis, 1 sigma error bars."""
    from matplotlib.ticker import NullFormatter

    keys = [k for k in fitted if true.get(k)]
    y = np.arange(len(keys))[::-1]
    ratio = np.array([fitted[k] / true[k] for k in keys])
    err = np.array([se.get(k, 0.0) / abs(true[k]) for k in keys])
    ax.axvline(1.0, color="0.3", lw=1)
    ax.axvspan(0.8, 1.25, color="C2", alpha=0.12, lw=0, label="within 20 %")
    ax.errorbar(np.abs(ratio), y, xerr=err, fmt="o", color="C3", capsize=3,
                label="fitted / true (1 std. error)")
    ax.set_xscale("log")
    lo, hi = min(np.abs(ratio).min(), 0.5), max(np.abs(ratio).max(), 2.0)
    ax.set_xlim(lo / 1.3, hi * 1.3)
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
             if lo / 1.3 <= t <= hi * 1.3]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, [f"{_ROWS[k][0].split(' (')[0]} ({_ROWS[k][1]})" for k in keys],
                  fontsize=9)
    ax.set_ylim(-0.7, len(keys) - 0.3)
    ax.set_xlabel("fitted / true (log scale, dimensionless)")
    ax.set_title("Fitted / true parameters")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8,
              frameon=False)


def _table(ax, cells: list[list[str]], cols: list[str], title: str) -> None:
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    if not cells:
        return
    table = ax.table(cellText=cells, colLabels=cols, loc="upper center", cellLoc="left",
                     colLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.auto_set_column_width(list(range(len(cols))))
    table.scale(1.0, 1.45)


def plot_fit(res: FitResult, path: str | Path, n_traces: int = 4,
             truth: DeviceSpec | None = None, meta: dict[str, Any] | None = None) -> None:
    """Write one PNG of the fit ``res``: measured traces of ``n_traces`` devices with the
    fitted mean response, up and down steps vs conductance with the fitted mean step,
    device-to-device maps of dw_min (nS and weight units), g_min, g_max (µS), up_down,
    and the fitted parameters in µS / nS with their standard errors.

    ``truth``: the device that produced the data, when known (a spec with a conductance
    block; e.g. the emulator's hidden device): its mean step is drawn beside the fitted
    one and a panel shows fitted / true of every parameter. ``meta``: the measurement
    sidecar (``Measurements.meta``), for the protocol and read voltage in the title.
    """
    fig = fit_figure(res, n_traces=n_traces, truth=truth, meta=meta)
    save_figure(fig, path, dpi=90)


_AXES = {"step_vs_state": ("conductance before the pulse (bin centre)", "mean step"),
         "saturation_levels": ("quantile across devices", "end level of a half-cycle"),
         "residual_autocorrelation": ("polarity", "lag-1 autocorrelation r1"),
         "up_down_asymmetry": ("cycle", "travel asymmetry A (dimensionless)")}
"""Check name -> (x label, y label) of its validation panel."""


def validation_figure(result: ValidationResult) -> Figure:
    """The figure :func:`plot_validation` writes (see there)."""
    from rpuhw.calibration.validate import _SCALE

    fig = new_figure(13.0, 9.5)
    verdict = "PASS" if result.passed else "FAIL: " + ", ".join(result.failed)
    fig.suptitle(f"Posterior-predictive checks: {verdict}\n{result.devices} devices, "
                 f"{result.half_cycles} half-cycles; measured (red) against {result.replicas} "
                 f"simulated replicas (mean, 95 % of replicas)", fontsize=11)
    axes = fig.subplots(2, 2).ravel()
    for ax, chk in zip(axes, result.checks, strict=False):
        xl, yl = _AXES.get(chk.name, ("component", "value"))
        ax.set_title(f"{chk.name}: {'PASS' if chk.passed else 'FAIL'}"
                     + (f" (p = {chk.pvalue:.3g})" if chk.tested else " (not tested)"),
                     fontsize=10, color="k" if chk.passed else "C3")
        if not chk.tested:
            ax.axis("off")
            continue
        k = _SCALE.get(chk.unit, 1.0)
        x = np.asarray(chk.x, dtype=float)
        x_scale = 1e6 if chk.name == "step_vs_state" and chk.unit in _SCALE else 1.0
        if chk.name == "residual_autocorrelation":
            x = np.arange(len(x), dtype=float)
            ax.set_xticks(x, chk.group)
        elif chk.name in ("up_down_asymmetry", "saturation_levels"):
            ax.set_xticks(sorted(set(x.tolist())))
        groups = list(dict.fromkeys(chk.group))
        for n, grp in enumerate(groups):
            sel = np.array([g == grp for g in chk.group])
            dx = (n - (len(groups) - 1) / 2) * 0.08 * (np.ptp(x * x_scale) or 1.0) \
                if chk.name != "residual_autocorrelation" else 0.0
            xs = x[sel] * x_scale + dx
            mu = np.asarray(chk.simulated_mean)[sel] * k
            lo, hi = (np.asarray(chk.simulated_lo)[sel] * k, np.asarray(chk.simulated_hi)[sel] * k)
            ax.errorbar(xs, mu, yerr=[mu - lo, hi - mu], fmt="o", color=f"C{n}", capsize=3,
                        mfc="white", label=f"simulated, {grp}")
            ax.plot(xs, np.asarray(chk.measured_values)[sel] * k, "x", color="C3", ms=8,
                    mew=2, label="measured" if n == 0 else None)
        unit = {"1": "", "weight": " (weight units)"}.get(chk.unit, f" ({chk.unit})")
        xunit = " (µS)" if x_scale != 1.0 else (" (weight units)" if chk.name ==
                                                   "step_vs_state" else "")
        ax.set(xlabel=xl + xunit, ylabel=yl + unit)
        ax.legend(fontsize=8, frameon=False)
    return fig


def plot_validation(result: ValidationResult, path: str | Path) -> None:
    """Write one PNG of :func:`~rpuhw.calibration.validate.validate`'s checks: per check,
    the measured components (red crosses) against the replicas' mean and 95 % range
    (circles with bars), the verdict and p-value in each panel's title."""
    save_figure(validation_figure(result), path, dpi=90)
