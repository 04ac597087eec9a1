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
         "g_min spread": ("g_min spread (device to device)", "µS"),
         "g_max spread": ("g_max spread (device to device)", "µS"),
         "up step": ("up step at mid-range", "nS"),
         "down step": ("down step at mid-range", "nS"),
         "dw_min_dtod": ("dw_min_dtod (step, device to device)", "relative"),
         "dw_min_std": ("dw_min_std (step, pulse to pulse)", "relative"),
         "read noise": ("read noise (one read)", "nS")}
"""Key -> (name in the figure, unit)."""


def _physical_intervals(res: FitResult, spec: DeviceSpec) -> dict[str, tuple[float, float]]:
    """95 % intervals in the units of :data:`_ROWS`, where a fit key maps onto a row."""
    from rpuhw.calibration.fit_report import interval

    s = _scale(spec)
    out = {}
    for row, key, k in (("g_min", "g_min", 1e6), ("g_max", "g_max", 1e6),
                        ("dw_min_dtod", "dw_min_dtod", 1.0),
                        ("dw_min_std", "dw_min_std", 1.0),
                        ("read noise", "read_noise", s * 1e9)):
        iv = interval(res, key)
        if iv is not None:
            out[row] = (iv[0] * k, iv[1] * k)
    return out


def _conditions(res: FitResult, meta: dict[str, Any] | None) -> str:
    """``8 devices, 1 cycle x 300 up + 300 down pulses, read at 0.2 V`` from the sidecar."""
    n = res.data.n_dev if res.data is not None else len(res.per_device["device"])
    text = f"{n} devices"
    settings = (meta or {}).get("settings", {}) if isinstance(meta, dict) else {}
    pulses = settings.get("pulses_per_direction", settings.get("pulses"))
    cycles = settings.get("cycles")
    if pulses == "auto" and cycles:
        budget = settings.get("max_pulses")
        text += (f", {cycles} cycle{'s' if cycles != 1 else ''} pulsed to saturation"
                 + (f" (at most {budget} pulses per half-cycle)" if budget else ""))
    elif pulses and cycles:
        text += (f", {cycles} cycle{'s' if cycles != 1 else ''} x {pulses} up + {pulses} "
                 f"down pulses")
    reads = settings.get("reads_per_step")
    if isinstance(reads, int) and reads > 1:
        text += f", {reads} reads per pulse"
    if settings.get("read_voltage") is not None:
        text += f", read at {float(settings['read_voltage']):g} V"
    return text


def _fmt(v: float | None) -> str:
    """3 significant digits, without an exponent from 1e-3 to 1e5 (1440, not 1.44e+03)."""
    if v is None:
        return _NA
    if v == 0 or 1e-3 <= abs(v) < 1e5:
        return f"{float(f'{v:.3g}'):g}"
    return f"{v:.3g}"


def _fmt_iv(iv: tuple[float, float] | None) -> str:
    return _NA if iv is None else f"[{_fmt(iv[0])}, {_fmt(iv[1])}]"


def _residuals(res: FitResult) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(residual, predicted mean step, residuals per trace) in S: every measured step of
    the fitted traces minus the fitted mean step of its device at the read before it."""
    data = res.data
    assert data is not None
    resid, pred, per_trace = [], [], []
    for (i, _c, pol), (k, u) in data.traces.items():
        if len(k) < 2:
            continue
        g = data.g0 + np.asarray(u, dtype=np.float64) * data.s0
        ok = np.diff(k) == 1
        mean = res.mean_step(int(i), g[:-1], pol > 0)
        r = np.where(ok, np.diff(g) - mean, np.nan)
        resid.append(r[ok])
        pred.append(mean[ok])
        per_trace.append(r)
    if not resid:
        return np.zeros(0), np.zeros(0), []
    return np.concatenate(resid), np.concatenate(pred), per_trace


def _acf(per_trace: list[np.ndarray], lags: int) -> tuple[np.ndarray, int]:
    """Pooled autocorrelation of residuals within traces at lags 1..``lags`` (NaN gaps
    break pairs), and the number of residuals."""
    num, n = np.zeros(lags), 0
    den = 0.0
    for r in per_trace:
        e = np.nan_to_num(r)
        den += float((e ** 2).sum())
        n += int(np.isfinite(r).sum())
        for lag in range(1, min(lags, len(e) - 1) + 1):
            num[lag - 1] += float((e[:-lag] * e[lag:]).sum())
    return (num / den if den > 0 else np.full(lags, np.nan)), n


def _reads_per_pulse(res: FitResult, meta: dict[str, Any] | None) -> int:
    """K, the reads averaged into each trace point: the fit's data when it says, else the
    sidecar's ``reads_per_step``, else 1."""
    settings = (meta or {}).get("settings", {}) if isinstance(meta, dict) else {}
    for k in (getattr(res.data, "reads", None), getattr(res, "reads_per_step", None),
              settings.get("reads_per_step")):
        if isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1:
            return int(k)
    return 1


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
    width = 17.0
    # the text under the panels: the model choice, notes, what the data do not determine
    chars = int((width - 0.4) * 72 / (9 * 0.6))  # characters per line at 9 pt
    notes = [f"Model choice: {res.explanation}"]
    notes += [f"note: {n}" for n in res.notes]
    notes += [str(n) for n in (getattr(res, "not_identifiable", None) or [])]
    text = "\n".join(textwrap.fill(n, chars, break_on_hyphens=False) for n in notes)
    n_lines = text.count("\n") + 1
    n_rows = len(res.params) + 4
    table_h = 0.25 * (max(n_rows, len(_ROWS) + 1) + 2)
    heights = [4.4, 3.6, table_h, 0.17 * n_lines + 0.3]
    fig = new_figure(width, sum(heights) + 0.8)
    fig.suptitle(f"Fit of the pulse response ({_conditions(res, meta)}): model {res.model} "
                 f"({'ok' if res.ok else 'NOT OK: ' + res.reason})", fontsize=12)
    top, middle, bottom, foot = fig.subfigures(4, 1, height_ratios=heights)
    s0, g0 = data.s0, data.g0

    # 1: traces (first cycle, up then down) of a few devices with the fitted mean response
    ax = top.add_subplot(1, 3, 1)
    picks = np.linspace(0, data.n_dev - 1, min(n_traces, data.n_dev)).astype(int)
    cycles = sorted({c for (_i, c, _p) in data.traces})
    for n, i in enumerate(picks):
        offset = 0
        r, c = int(data.rows[i]), int(data.cols[i])
        where = f" (row {r}, col {c})" if r >= 0 and c >= 0 else ""
        label: str | None = f"device {data.devices[i]}{where}"
        for pol in (1, -1):
            key = (int(i), cycles[0], pol)
            if key not in data.traces:
                continue
            k, u = data.traces[key]
            g = g0 + u * s0
            ax.plot(offset + k, g * 1e6, ".", ms=2, color=f"C{n}", label=label)
            model = res.rollout(int(i), float(g[0]), len(k) - 1, pol > 0)
            ax.plot(offset + k, model * 1e6, "-", color="k", lw=1,
                    label="fitted mean trajectory" if n == 0 and pol == 1 else None)
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
                color="C1", label=f"device {data.devices[mid]} (median step)")
        g_dev = np.linspace(g0 + side.u[sel].min() * s0, g0 + side.u[sel].max() * s0, 100) \
            if sel.any() else None
        if g_dev is not None:
            ax.plot(g_dev * 1e6, res.mean_step(mid, g_dev, up) * 1e9, "-", color="C1", lw=1,
                    label="its fitted mean step")
        if physical:
            g = np.linspace(spec.conductance.g_min, spec.conductance.g_max, 200)
            ax.plot(g * 1e6, spec_mean_step(spec, g, up) * 1e9, "k-", lw=1.5,
                    label=f"fitted mean device ({res.model})")
        if truth is not None:
            g = np.linspace(truth.conductance.g_min, truth.conductance.g_max, 200)
            ax.plot(g * 1e6, spec_mean_step(truth, g, up) * 1e9, "--", color="C3", lw=1.5,
                    label=f"true mean step ({truth.model.name})")
        ax.axhline(0.0, color="0.3", lw=0.5)
        ax.set(title=f"{name} steps vs conductance", xlabel="conductance before the pulse (µS)",
               ylabel="conductance step of one pulse (nS)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8,
                  markerscale=3, frameon=False)

    # 4, 5: residual diagnostics; 6: dw_min per device
    resid, pred, per_trace = _residuals(res)
    s_w = _scale(spec) if physical else 1.0 / (data.s0 or 1.0)
    # a trace point is the mean of the K reads of a pulse: read noise sigma_r / sqrt(K)
    reads = _reads_per_pulse(res, meta)
    sigma_r = float(res.read_noise) * (s_w if physical else 1.0) / np.sqrt(reads)
    sigma_c = float(res.params.get("dw_min_std", 0.0) or 0.0)
    ax = middle.add_subplot(1, 3, 1)
    k9 = 1e9 if physical else 1.0
    unit = "nS" if physical else "weight units"
    if len(resid):
        lim = np.nanpercentile(np.abs(resid), 99.5) * 1.2 * k9
        n_bins = 60
        ax.hist(resid * k9, bins=n_bins, range=(-lim, lim), color="0.6",
                label="measured step - fitted mean step")
        x = np.linspace(-lim, lim, 300)
        sub = np.random.default_rng(1).choice(pred, min(2000, len(pred)), replace=False)
        sd = np.sqrt((sigma_c * sub * k9) ** 2 + 2 * (sigma_r * k9) ** 2)[:, None]
        pdf = (np.exp(-0.5 * (x[None] / sd) ** 2) / (sd * np.sqrt(2 * np.pi))).mean(axis=0)
        ax.plot(x, pdf * len(resid) * 2 * lim / n_bins, "k-", lw=1.5,
                label=f"model: step noise + read noise ({reads} read"
                      f"{'s' if reads > 1 else ''} per pulse)")
    ax.set(title="Step residuals", xlabel=f"residual of one step ({unit})",
           ylabel="steps per bin (count)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1, fontsize=8,
              frameon=False)
    ax = middle.add_subplot(1, 3, 2)
    lags = 15
    acf, n_res = _acf(per_trace, lags)
    lag = np.arange(1, lags + 1)
    ax.bar(lag, acf, color="0.6", label="measured")
    if n_res:
        band = 1.96 / np.sqrt(n_res)
        ax.axhspan(-band, band, color="C2", alpha=0.15, lw=0,
                   label="95 % band of independent residuals")
    var_c = float(np.mean((sigma_c * pred) ** 2)) if len(pred) else 0.0
    r1 = -sigma_r ** 2 / (var_c + 2 * sigma_r ** 2) if sigma_r > 0 or var_c > 0 else 0.0
    ax.plot(lag, np.r_[r1, np.zeros(lags - 1)], "o", color="k", ms=4,
            label="model (read noise: -1/2 at lag 1)")
    ax.axhline(0.0, color="0.3", lw=0.5)
    ax.set(title="Autocorrelation of step residuals", xlabel="lag (pulses)",
           ylabel="autocorrelation (dimensionless)", ylim=(-0.6, 0.6))
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8,
              frameon=False)
    _dw_map(middle.add_subplot(1, 3, 3), middle, res, spec, physical)

    # 7-9: parameters (fitted vs true), tables with 95 % intervals
    n_cols = 3 if truth is not None and physical else 2
    widths = [0.75, 1.55, 1.0][-n_cols:]
    axes = bottom.subplots(1, n_cols, width_ratios=widths)
    shares = [w / sum(widths) * width * 0.92 for w in widths]
    from rpuhw.calibration.fit_report import interval as _interval
    from rpuhw.calibration.fit_report import interval_method

    method = interval_method(res)
    if physical:
        fitted = _physical(spec)
        ivs = _physical_intervals(res, spec)
        true = _physical(truth) if truth is not None else {}
        if truth is not None:
            _ratio_panel(axes[0], fitted, true, ivs)
        cols = ["parameter", "unit", "fitted", "95 % interval"]
        cells = [[_ROWS[k][0], _ROWS[k][1], _fmt(v), _fmt_iv(ivs.get(k))]
                 for k, v in fitted.items()]
        if true:
            cols += ["true", "fitted / true", "true in interval"]
            for row, k in zip(cells, fitted, strict=True):
                iv = ivs.get(k)
                inside = _NA if iv is None else ("yes" if iv[0] <= true[k] <= iv[1] else "NO")
                row += [_fmt(true[k]), _fmt(fitted[k] / true[k]) if true[k] else _NA, inside]
        _table(axes[-2], cells, cols,
               "Fitted vs true (hidden device)" if true else "Fitted device, physical units",
               shares[-2], table_h - 0.6)
    else:
        axes[-2].axis("off")
        axes[-2].set_title("no conductance block: parameters in weight units only")
    cells = [["g_min", _fmt(res.g_min * 1e6) + " µS", _fmt_iv(
        None if (iv := _interval(res, "g_min")) is None else (iv[0] * 1e6, iv[1] * 1e6))],
             ["g_max", _fmt(res.g_max * 1e6) + " µS", _fmt_iv(
                 None if (iv := _interval(res, "g_max")) is None
                 else (iv[0] * 1e6, iv[1] * 1e6))]] if physical else []
    for k, v in res.params.items():
        if isinstance(v, float):
            extra = f" ({_fmt(v * s_w * 1e9)} nS)" if k == "dw_min" and physical else ""
            cells.append([k, f"{v:.4g}{extra}", _fmt_iv(_interval(res, k))])
    cells.append(["read_noise", f"{res.read_noise:.4g}", _fmt_iv(_interval(res, "read_noise"))])
    _table(axes[-1], cells, ["key", "value", "95 % interval"],
           f"device.yaml keys of {res.model} (weight units, w in [-1, 1])\n"
           f"95 % intervals: {method}", shares[-1], table_h - 0.6)

    ax = foot.add_subplot(1, 1, 1)
    ax.axis("off")
    ax.text(0.0, 1.0, text, fontsize=9, va="top", ha="left", transform=ax.transAxes,
            gid="notes")
    _shrink_tables(fig)
    return fig


def _shrink_tables(fig: Figure) -> None:
    """Lay the figure out once, then shrink each table's font until every cell's text fits
    its cell, and each table title until it fits its axes (nothing overflows)."""
    from matplotlib.table import Table

    fig.canvas.draw()
    layout = fig.get_layout_engine()
    fig.set_layout_engine("none")  # freeze the positions: the fonts change, not the layout
    renderer = fig.canvas.get_renderer()
    for table in fig.findobj(Table):
        cells = table.get_celld().values()
        factor = 1.0
        for cell in cells:
            text_w = cell.get_text().get_window_extent(renderer).width
            room = cell.get_window_extent(renderer).width - 2 * cell.PAD * \
                cell.get_window_extent(renderer).width
            if text_w > 0 and room > 0:
                factor = min(factor, room / text_w)
        if factor < 1.0:
            size = cell.get_text().get_fontsize() * factor * 0.97
            table.set_fontsize(size)
        title = table.axes.title
        box = table.axes.get_window_extent(renderer)
        w = title.get_window_extent(renderer).width
        if w > box.width:
            title.set_fontsize(title.get_fontsize() * box.width / w * 0.97)
    fig_w = fig.bbox.width
    for t in fig.findobj(lambda a: getattr(a, "get_gid", lambda: None)() == "notes"):
        box = t.get_window_extent(renderer)
        room = fig_w - box.x0 - 2
        if box.width > room > 0:
            t.set_fontsize(t.get_fontsize() * room / box.width * 0.97)
    del layout


def _dw_map(ax, holder, res: FitResult, spec: DeviceSpec, physical: bool) -> None:
    """dw_min per device at its array position (nS, weight units on the left)."""
    import matplotlib

    rr, cc, label = _maps_grid(res)
    ylabel, xlabel = label.split(" / ")
    grid = np.full((int(rr.max()) + 1, int(cc.max()) + 1), np.nan)
    scale = _scale(spec) * 1e9 if physical else 1.0
    grid[rr, cc] = res.per_device["dw"] * scale
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.92")
    im = ax.imshow(grid, cmap=cmap, interpolation="nearest")
    cb = holder.colorbar(im, ax=ax, shrink=0.85, pad=0.16 if physical else 0.05)
    cb.set_label("dw_min (nS)" if physical else "dw_min (weight units)")
    if physical:  # the same scale in weight units on the colorbar's left side
        sec = cb.ax.secondary_yaxis("left", functions=(lambda v, k=scale: v / k,
                                                       lambda v, k=scale: v * k))
        sec.set_ylabel("weight units")
    ax.set(title="dw_min per device (grey: not measured)", xlabel=xlabel, ylabel=ylabel)


def _ratio_panel(ax, fitted: dict[str, float], true: dict[str, float],
                 ivs: dict[str, tuple[float, float]]) -> None:
    """Fitted / true of each parameter on a log axis, with its 95 % interval / true."""
    from matplotlib.ticker import NullFormatter

    keys = [k for k in fitted if true.get(k)]
    y = np.arange(len(keys))[::-1]
    signed = np.array([fitted[k] / true[k] for k in keys])
    # the interval over the true value (a negative true value flips its ends); on the log
    # axis everything at or below 1e-3 (an estimate near 0, an interval reaching past 0)
    # is drawn at 1e-3
    ends = np.array([sorted((ivs[k][0] / true[k], ivs[k][1] / true[k])) if k in ivs
                     else (r, r) for k, r in zip(keys, signed, strict=True)]).reshape(-1, 2)
    ratio = np.clip(np.abs(signed), 1e-3, None)
    lo = np.clip(np.minimum(ends[:, 0], ratio), 1e-3, None)
    hi = np.maximum(ends[:, 1], ratio)
    ax.axvline(1.0, color="0.3", lw=1)
    ax.axvspan(0.9, 1.0 / 0.9, color="C2", alpha=0.12, lw=0, label="within 10 %")
    ax.errorbar(ratio, y, xerr=[ratio - lo, hi - ratio], fmt="o", color="C3", capsize=3,
                label="fitted / true (95 % interval)")
    ax.set_xscale("log")
    a, b = min(lo.min(), 0.5), max(hi.max(), 2.0)
    ax.set_xlim(a / 1.3, b * 1.3)
    ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
             if a / 1.3 <= t <= b * 1.3]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_yticks(y, [f"{_ROWS[k][0].split(' (')[0]} ({_ROWS[k][1]})" for k in keys],
                  fontsize=9)
    ax.set_ylim(-0.7, len(keys) - 0.3)
    ax.set_xlabel("fitted / true (log scale, dimensionless)")
    ax.set_title("Fitted / true parameters")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8,
              frameon=False)


def _table(ax, cells: list[list[str]], cols: list[str], title: str, width_in: float,
           height_in: float) -> None:
    """A table filling the width of ``ax`` (about ``width_in`` x ``height_in`` inches):
    columns as wide as their longest text, the font shrunk until the widest row fits."""
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    if not cells:
        return
    chars = [max(len(str(r[c])) for r in [cols, *cells]) + 2 for c in range(len(cols))]
    # ~0.55 em per character: the font size (pt) at which the row fills width_in
    size = float(np.clip(width_in * 72 / (0.55 * sum(chars)), 5.0, 9.0))
    n = len(cells) + 1
    h = min(1.0, n * size * 2.0 / 72 / height_in)
    table = ax.table(cellText=cells, colLabels=cols, cellLoc="left", colLoc="left",
                     colWidths=[c / sum(chars) for c in chars], bbox=[0.0, 1.0 - h, 1.0, h])
    table.auto_set_font_size(False)
    table.set_fontsize(size)


def plot_fit(res: FitResult, path: str | Path, n_traces: int = 4,
             truth: DeviceSpec | None = None, meta: dict[str, Any] | None = None) -> None:
    """Write one page (PNG) of the fit ``res``. Top: measured traces of ``n_traces``
    devices with the fitted mean trajectory (rolled out from the first read); up and
    down steps vs conductance with the fitted mean device's step curve and the median
    device's own curve. Middle: residual diagnostics (the histogram of measured step -
    fitted mean step against the model's step-noise + read-noise density; their
    autocorrelation by lag against the model's and the 95 % band of independent
    residuals) and dw_min per device. Bottom: the parameters in physical units and the
    device.yaml keys, each with its 95 % interval (``res.intervals``; else estimate +-
    1.96 standard errors); under them the model choice, the notes and what the data do
    not determine, wrapped to the page.

    ``truth``: the device that produced the data, when known (a spec with a conductance
    block; e.g. the emulator's hidden device): its mean step is drawn beside the fitted
    one, the table gains ``true``, ``fitted / true`` and ``true in interval``, and a
    panel shows fitted / true of every parameter with its interval. ``meta``: the
    measurement sidecar (``Measurements.meta``), for the protocol and read voltage in
    the title.
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
        unit = {"1": "", "weight": " (weight units)"}.get(
            chk.unit, f" ({chk.unit.replace('u', 'µ')})")
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
