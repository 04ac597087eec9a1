"""The demo's report: the table of the three training runs (printed, and in
``report.md``), the hidden vs fitted device parameters, and ``report.md`` itself."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rpuhw import __version__
from rpuhw.demo.sizes import DemoSize


def device_row(spec) -> dict[str, Any]:
    """A device YAML's parameters in conductance terms, comparable between the hidden
    and the fitted device."""
    from rpuhw.calibration.fit_report import mid_range_steps

    p, c = spec.model.params, spec.conductance
    up, down = mid_range_steps(spec)
    scale = (c.g_max - c.g_min) / (p.w_max - p.w_min)
    return {"model": spec.model.name, "g_min (S)": c.g_min, "g_max (S)": c.g_max,
            "up step at mid-range (S)": up, "down step at mid-range (S)": down,
            "dw_min_dtod": p.dw_min_dtod, "dw_min_std": p.dw_min_std,
            "read noise (S)": spec.io.read_noise * scale}


def run_table(runs: dict[str, dict[str, Any]]) -> str:
    """One markdown row per training run: where its layers live, test errors, speed."""
    rows = ["| run | where the layers live | test error per epoch (%) | final (%) | images/s "
            "| wall (s) | instrument messages |", "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        by_spec: dict[str, list[str]] = {}
        for layer, spec in r["backends"].items():
            kind, _, arg = spec.partition(":")
            by_spec.setdefault(f"{kind}:{Path(arg).name}" if arg else kind, []).append(layer)
        where = "; ".join(f"{', '.join(layers)}: {spec}" for spec, layers in by_spec.items())
        errs = " / ".join(f"{100 * e:.1f}" for e in r["test_error"])
        msgs = sum(r.get("instrument_messages", {}).values()) or "-"
        rows.append(f"| {name} | {where} | {errs} | **{100 * r['test_error'][-1]:.1f}** | "
                    f"{r['images_per_s']:.0f} | {r['wall_s']:.0f} | {msgs} |")
    return "\n".join(rows)


def device_table(hidden: dict[str, Any], fitted: dict[str, Any]) -> str:
    """The hidden and the fitted device's :func:`device_row` side by side."""
    rows = ["| parameter | hidden (emulated chip) | fitted | fitted / hidden |",
            "|---|---|---|---|"]
    for key, hv in hidden.items():
        fv = fitted.get(key)
        if isinstance(hv, str):
            rows.append(f"| {key} | {hv} | {fv} | |")
            continue
        ratio = f"{fv / hv:.2f}" if hv and fv is not None else "-"
        rows.append(f"| {key} | {hv:.3g} | {fv:.3g} | {ratio} |")
    return "\n".join(rows)


def write_report(out: Path, size_name: str, size: DemoSize, table: str,
                 characterization: dict[str, Any], fitted: dict[str, Any], hidden_spec,
                 wall_s: float) -> Path:
    """Write ``out/report.md`` (the plots it names are written by the pipeline)."""
    val = fitted["validation"]
    char = characterization
    device = device_table(device_row(hidden_spec), device_row(fitted["spec"]))
    text = f"""# rpuhw demo ({size_name})

rpuhw {__version__}; {time.strftime('%Y-%m-%d %H:%M')}; total wall time {wall_s:.0f} s.

## Training: lenet on mnist5k

{size.train_limit} training / {size.test_limit} test images, {size.epochs} epoch(s), batch
size {size.batch_size}, lr {size.lr}, update granularity batch; the same for all three runs.

{table}

![test error vs epoch](curves.png)

![weight histograms](weights.png)

## Calibration: the emulated chip's hidden device vs the fitted model

Characterised {size.devices} devices x {size.cycles} cycle(s) x {2 * size.pulses} pulses
through the bench ({char['messages']} instrument messages, {char['wall_s']:.0f} s); fitted
model chosen by `auto`: {fitted['fit'].explanation}

{device}

Validation (replay of the measured protocol on the fitted simulator):
**{'pass' if val.passed else 'FAIL'}**, {val.summary()}

![pulse response and fit](fit.png)

Files: `meas.csv` (+ `meas.json`), `device.yaml`, `bench.yaml`, one results JSON per run.
"""
    path = out / "report.md"
    path.write_text(text)
    return path
