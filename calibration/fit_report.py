"""Fit results as text and JSON: the parameter table and the ``--report`` file.

Both say which parameters the data do not determine
(:mod:`rpuhw.calibration.identifiability`: bounds the traces never reached, a
cycle-to-cycle noise hidden under the read noise, ...): the table as
``not identified by the data:`` lines, the JSON under ``identifiability``."""

from __future__ import annotations

import dataclasses
import json
import math
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpuhw._io import atomic_write
from rpuhw.calibration.fit import FitResult
from rpuhw.calibration.identifiability import checks


def mid_range_steps(spec) -> tuple[float, float]:
    """Mean up and down conductance step (S) of a device spec at mid-range.

    The "mean device" of the spec (every ``*_dtod`` set to 0) at
    ``w = (w_min + w_max) / 2``; converted with the spec's conductance block,
    ``dg = dw (g_max - g_min) / (w_max - w_min)``.
    """
    p = spec.model.params
    mean = dataclasses.replace(p, **{f.name: 0.0 for f in dataclasses.fields(p)
                                     if f.name.endswith("_dtod")})
    model = type(spec.model)(mean)
    state = model.draw(1, 1, torch.Generator().manual_seed(0))
    state = {k: v.double() for k, v in state.items()}
    w = torch.full((1, 1), 0.5 * (p.w_min + p.w_max), dtype=torch.float64)
    scale = (spec.conductance.g_max - spec.conductance.g_min) / (p.w_max - p.w_min)
    up = float(model.step(w, torch.ones(1, 1, dtype=torch.bool), state)) * scale
    down = float(model.step(w, torch.zeros(1, 1, dtype=torch.bool), state)) * scale
    return up, down


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, (int, float)):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(f"{x:.3g}" for x in v) + "]"
    return str(v)


def interval(res: FitResult, key: str) -> tuple[float, float] | None:
    """95 % interval of ``key`` (a ``params`` key, ``g_min``, ``g_max``, ``read_noise``):
    ``res.intervals`` when the fit has them, else estimate +- 1.96 standard errors; None
    when neither is known."""
    iv = (getattr(res, "intervals", None) or {}).get(key)
    if iv is not None and len(iv) == 2 and all(v is not None for v in iv):
        return float(iv[0]), float(iv[1])
    se = res.uncertainties.get(key)
    value = {"g_min": res.g_min, "g_max": res.g_max, "read_noise": res.read_noise}.get(
        key, res.params.get(key))
    if se is None or not isinstance(value, (int, float)) or not math.isfinite(se):
        return None
    return float(value) - 1.96 * float(se), float(value) + 1.96 * float(se)


def interval_method(res: FitResult) -> str:
    """How :func:`interval` got its intervals, in a few words."""
    if getattr(res, "intervals", None):
        return getattr(res, "interval_method", "") or "the fit's 95 % intervals"
    return "estimate +- 1.96 standard errors"


def _rows(res: FitResult) -> list[tuple[str, str, Any]]:
    """(name shown, key, value) of every fitted quantity, bounds first."""
    rows = [("g_min [S]", "g_min", res.g_min), ("g_max [S]", "g_max", res.g_max)]
    rows += [(k, k, v) for k, v in res.params.items()]
    rows.append(("read_noise", "read_noise", res.read_noise))
    return rows


def parameter_table(res: FitResult) -> str:
    """Text table: every fitted key with its value, standard error and 95 % interval."""
    lines = [f"model {res.model} ({'ok' if res.ok else 'NOT OK: ' + res.reason})",
             f"  {res.explanation}",
             f"  {'parameter':18s} {'value':>12s} {'std. error':>12s}  95 % interval "
             f"({interval_method(res)})"]
    for name, key, value in _rows(res):
        se = res.uncertainties.get(key)
        se_txt = "" if se is None else _fmt(se)
        iv = interval(res, key) if isinstance(value, (int, float)) else None
        iv_txt = "" if iv is None else f"[{iv[0]:.4g}, {iv[1]:.4g}]"
        lines.append(f"  {name:18s} {_fmt(value):>12s} {se_txt:>12s}  {iv_txt}")
    score = res.scores.get(res.model)
    lines.append(f"  devices {len(res.per_device['device'])}"
                 + (f", steps {score.n}" if score is not None else ""))
    if res.data is not None and res.data.traces:
        lines.append(f"  protocol: {protocol_text(res)}")
    if len(res.scores) > 1:
        crit = res.criterion
        lines.append(f"  {'candidate':14s} {crit.upper():>14s} {'runs':>6s} "
                     f"{'curve err':>9s}  ok")

        def key(s):
            v = getattr(s, crit, float("nan"))
            return v if isinstance(v, (int, float)) and math.isfinite(v) else float("inf")

        for s in sorted(res.scores.values(), key=key):
            v = getattr(s, crit, float("nan"))
            lines.append(f"  {s.model:14s} {v:14.1f} {s.runs_ratio:6.2f} "
                         f"{100 * s.curve_error:8.1f}%  {s.ok}")
    lines += [f"  note: {n}" for n in res.notes]
    lines += [textwrap.fill(f"not identified by the data: {c.parameter}: {c.cause}", 100,
                            initial_indent="  ", subsequent_indent="    ",
                            break_on_hyphens=False)
              for c in checks(res).values() if not c.identified]
    return "\n".join(lines)


def _md(v: Any) -> str:
    """A table cell: numbers to 4 significant digits, ``|`` escaped."""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v).replace("|", "\\|")


def markdown_report(res: FitResult, validation: Any = None, truth: Any = None) -> str:
    """The fit (and its validation) as Markdown: the model and why; a table of every
    fitted key with its 95 % interval (with ``truth``, a device spec of the same model: the
    true value and whether the interval covers it); what the data do not determine; the
    held-out scores when the fit has them; and ``validation``'s checks (a
    :class:`~rpuhw.calibration.validate.ValidationResult`), one row each."""
    out = [f"### Fit: `{res.model}` ({'ok' if res.ok else 'NOT OK: ' + res.reason})", "",
           res.explanation, ""]
    true_params: dict[str, Any] = {}
    if truth is not None and getattr(truth.model, "name", None) == res.model:
        true_params = dict(dataclasses.asdict(truth.model.params))
        true_params["read_noise"] = truth.io.read_noise
        if truth.conductance is not None:
            true_params.update(g_min=truth.conductance.g_min, g_max=truth.conductance.g_max)
    head = ["parameter", "fitted", "95 % interval"]
    if true_params:
        head += ["true", "covered"]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _name, key, value in _rows(res):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        iv = interval(res, key)
        row = [f"`{key}`", _md(float(value)), _NA_MD if iv is None else
               f"[{iv[0]:.4g}, {iv[1]:.4g}]"]
        if true_params:
            t = true_params.get(key)
            row += [_NA_MD if t is None else _md(float(t)),
                    _NA_MD if t is None or iv is None else
                    ("yes" if iv[0] <= t <= iv[1] else "**no**")]
        out.append("| " + " | ".join(row) + " |")
    out += ["", f"Intervals: {interval_method(res)}.", ""]
    missing = [f"- not identified by the data: {c.parameter}: {c.cause}"
               for c in checks(res).values() if not c.identified]
    missing += [f"- {n}" for n in (getattr(res, "not_identifiable", None) or [])]
    if missing:
        out += missing + [""]
    held = getattr(res, "held_out", None) or {}
    if held:
        out += ["| model | held-out log-likelihood (nats) |", "|---|---|"]
        out += [f"| `{k}` | {v:.1f} |" for k, v in sorted(held.items(), key=lambda kv: -kv[1])]
        margin = getattr(res, "margin", float("nan"))
        if isinstance(margin, float) and math.isfinite(margin):
            se = getattr(res, "margin_se", float("nan"))
            thin = " (thin: within the noise)" if getattr(res, "thin_margin", False) else ""
            out += ["", f"Margin over the runner-up: {margin:.1f} +- {se:.1f} nats{thin}."]
        out.append("")
    if validation is not None:
        from rpuhw.calibration.validate import format_value

        out += [f"### Validation: {'PASS' if validation.passed else 'FAIL'}", "",
                f"{validation.devices} devices, {validation.replicas} simulated replicas of "
                f"the measured protocol; each check fails at p <= "
                f"{validation.alpha / max(len(validation.checks), 1):.3g} with an effect above "
                "its floor.", "",
                "| check | result | worst component | measured | simulated (mean +- sd) | p |",
                "|---|---|---|---|---|---|"]
        for c in validation.checks:
            if not c.tested:
                out.append(f"| {c.name} | not tested | - | - | - | - |")
                continue
            out.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | "
                       f"{_md(c.worst)} | {format_value(c.measured, c.unit)} | "
                       f"{format_value(c.simulated, c.unit)} +- "
                       f"{format_value(c.simulated_sd, c.unit, sign=False)} | {c.pvalue:.3g} |")
        out.append("")
    return "\n".join(out)


_NA_MD = "-"


def protocol_text(res: FitResult) -> str:
    """``1 cycle(s) x 500 pulses per direction (up, then down) per device`` from the
    fitted traces (the largest pulse number of a half-cycle; ``up to`` when they differ)."""
    traces = res.data.traces if res.data is not None else {}
    counts = sorted({int(pulses[-1]) for pulses, _ in traces.values()})
    cycles = len({c for (_i, c, _p) in traces})
    n = f"{counts[-1]}" if len(counts) == 1 else f"up to {counts[-1]}"
    return f"{cycles} cycle(s) x {n} pulses per direction (up, then down) per device"


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.ndarray):
        return [_jsonable(x) for x in v.tolist()]
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def report(res: FitResult) -> dict[str, Any]:
    """The ``--report`` JSON content: chosen model and why, scores, per-device fits."""
    return _jsonable({
        "model": res.model, "ok": res.ok, "reason": res.reason,
        "explanation": res.explanation, "criterion": res.criterion,
        "identifiability": {k: c.to_dict() for k, c in checks(res).items()},
        "g_min": res.g_min, "g_max": res.g_max, "read_noise": res.read_noise,
        "params": res.params, "uncertainties": res.uncertainties,
        "intervals": {key: list(iv) for _n, key, v in _rows(res)
                      if isinstance(v, (int, float)) and not isinstance(v, bool)
                      and (iv := interval(res, key))},
        "interval_method": interval_method(res),
        "not_identifiable": list(getattr(res, "not_identifiable", None) or []),
        "held_out": dict(getattr(res, "held_out", None) or {}),
        "margin": getattr(res, "margin", None), "margin_se": getattr(res, "margin_se", None),
        "thin_margin": bool(getattr(res, "thin_margin", False)),
        "scores": {k: s.to_dict() for k, s in res.scores.items()},
        "notes": res.notes,
        "per_device": res.per_device,
        **discontinuity_report(res),
    })


def _conductance(value: float, unit: str) -> str:
    """A conductance (S) in µS, or a value in weight units, with 3 significant digits."""
    if unit == "S":
        return f"{value * 1e6:+.3g} µS"
    return f"{value:+.3g} (weight units)"


def discontinuity_lines(res: FitResult, command: str, prog: str = "rpuhw fit") -> list[str]:
    """Lines about the significant discontinuities (resume boundaries) of the fitted data.

    One line per boundary: where (data row, CSV line, the resume time), how many devices
    jump and by how much (median, in units of the read noise, largest); then one line:
    when the traces were fitted as one (no ``--segments``), that the jump is the likely
    cause of a bad fit (or spans the fitted steps of a good one) and ``command``, the
    command that fits the segments separately. Empty without significant discontinuities.
    """
    sig = [d for d in res.discontinuities if d.significant]
    if not sig:
        return []
    lines = []
    for d in sig[:3]:
        where = f"data row {d.row} (CSV line {d.row + 2}"
        where += f", the first row of the run resumed at {d.at})" if d.at else ")"
        rn = d.read_noise
        size = _conductance(d.median_jump, d.unit)
        if rn:
            size += f" = {d.median_jump / rn:+.0f} x the read noise {_conductance(rn, d.unit)[1:]}"
        dev, big = d.largest
        lines.append(f"{prog}: the traces are discontinuous at {where}: "
                     f"{int(d.jumped.sum())} of {len(d.devices)} devices jump, median {size}; "
                     f"largest {_conductance(big, d.unit)} (device {d.name(dev)})")
    if len(sig) > 3:
        lines.append(f"{prog}: ... and {len(sig) - 3} more discontinuities (see --report)")
    if res.segments > 1:
        return lines
    if not any(d.pulsed.any() for d in sig):
        lines.append(f"{prog}: the jump falls between two half-cycles, which the fit does "
                     "not link: it does not bias the fit")
    elif not res.ok:
        lines.append(f"{prog}: this is the likely cause of the bad fit; fit the segments on "
                     f"either side separately: {command}")
    else:
        lines.append(f"{prog}: the fit passed its checks, but one step per device spans the "
                     f"jump; to fit the segments separately: {command}")
    return lines


def discontinuity_report(res: FitResult) -> dict[str, Any]:
    """The ``--report`` keys about resume boundaries: ``discontinuities`` (every boundary,
    significant or not, see :meth:`~rpuhw.calibration.segments.Discontinuity.to_dict`) and
    ``segments`` (how many pieces each trace was fitted in)."""
    return {"discontinuities": [d.to_dict() for d in res.discontinuities],
            "segments": res.segments}


def write_report(res: FitResult, path: str | Path) -> None:
    """Write :func:`report` as JSON atomically (temporary file + rename)."""
    path = Path(path)
    text = json.dumps(report(res), indent=1)
    atomic_write(path, text)
