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
    and the fitted device (:func:`rpuhw.calibration.identifiability.device_row`)."""
    from rpuhw.calibration.identifiability import device_row as row

    return row(spec)


def run_table(runs: dict[str, dict[str, Any]]) -> str:
    """One markdown row per training run: where its layers live, test errors, speed."""
    rows = ["| run | where the layers live | algorithm | test error per epoch (%) | final (%) "
            "| images/s | wall (s) | instrument messages |", "|---|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        by_spec: dict[str, list[str]] = {}
        for layer, spec in r["backends"].items():
            kind, _, arg = spec.partition(":")
            by_spec.setdefault(f"{kind}:{Path(arg).name}" if arg else kind, []).append(layer)
        where = "; ".join(f"{', '.join(layers)}: {spec}" for spec, layers in by_spec.items())
        errs = " / ".join(f"{100 * e:.1f}" for e in r["test_error"])
        msgs = sum(r.get("instrument_messages", {}).values()) or "-"
        algs = sorted(set(r.get("algorithms", {}).values())) or ["-"]
        rows.append(f"| {name} | {where} | {', '.join(algs)} | {errs} | "
                    f"**{100 * r['test_error'][-1]:.1f}** | "
                    f"{r['images_per_s']:.0f} | {r['wall_s']:.0f} | {msgs} |")
    return "\n".join(rows)


def device_table(rows: list) -> str:
    """The hidden and the fitted device side by side, from
    :func:`~rpuhw.calibration.identifiability.compare_with_truth` rows, then why each
    far value is far and which values the data do not determine."""
    from rpuhw.calibration.identifiability import FAR_RELATIVE, FAR_RELATIVE_SPREAD

    lines = ["| parameter | hidden (emulated chip) | fitted | fitted / hidden | "
             "std. error of the fit | 95 % interval | hidden inside | far from hidden | "
             "identified by the data |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if isinstance(r.true, str):
            lines.append(f"| {r.parameter} | {r.true} | {r.fitted} | | | | | | |")
            continue
        ratio = f"{r.ratio:.2f}" if r.ratio is not None else "-"
        se = f"{r.se:.2g}" if r.se else "-"
        ivl = "-" if r.interval is None else f"[{r.interval[0]:.3g}, {r.interval[1]:.3g}]"
        inside = {None: "-", True: "yes", False: "**no**"}[r.covered]
        ident = "-" if r.check is None else ("yes" if r.check.identified else "**no**")
        lines.append(f"| {r.parameter} | {r.true:.3g} | {r.fitted:.3g} | {ratio} | {se} | "
                     f"{ivl} | {inside} | {'**far**' if r.far else 'no'} | {ident} |")
    far = [r for r in rows if r.far]
    lines += ["", f"Far means |fitted / hidden - 1| > {FAR_RELATIVE:.0%} for a value, > "
              f"{FAR_RELATIVE_SPREAD:.0%} for a spread (`_dtod`, `_std`): relative rules; "
              "the standard errors and 95 % intervals (parametric bootstrap) are the "
              "fit's own, and the fitted device states `dw_min` and the bound spreads in "
              "units of its half range (its mean bounds are -1, +1), so the hidden ones "
              "are converted to the same. Identified: the checks of "
              "`rpuhw.calibration.identifiability` on the measured data alone, as "
              "`rpuhw fit` prints them."]
    if far:
        lines += ["", "Why the far values are far:", ""]
        lines += [f"- **{r.parameter}**: {r.explanation}" for r in far]
    else:
        lines += ["", "No fitted value is far from the hidden one."]
    missed = [r for r in rows if r.covered is False and not r.far]
    if missed:
        lines += ["", "Close, but the hidden value is outside the fit's 95 % interval:", ""]
        lines += [f"- **{r.parameter}**: {r.explanation}" for r in missed]
    with_interval = [r for r in rows if r.covered is not None]
    if with_interval and not any(r.covered is False for r in with_interval):
        lines += ["", f"Every hidden value with an interval ({len(with_interval)}) is "
                  "inside the fit's 95 % interval."]
    unsure = [r for r in rows if not r.far and r.check is not None and not r.check.identified]
    if unsure:
        lines += ["", "Close to the hidden value, but not determined by the data:", ""]
        lines += [f"- {r.parameter}: {r.check.cause}" for r in unsure]
    return "\n".join(lines)


def protocol_line(size: DemoSize) -> str:
    """What the demo measured, in words (the report's calibration section)."""
    if size.max_pulses > 0:
        from rpuhw.calibration.protocols import DEFAULT_NOISE_READS

        return (f"{size.devices} devices x {size.cycles} cycle(s), each half-cycle pulsed "
                f"until every device saturates (at most {size.max_pulses} pulses per "
                f"direction; a read after each), after {DEFAULT_NOISE_READS} reads of every "
                "device at its start (the read noise)")
    return (f"{size.devices} devices x {size.cycles} cycle(s) x {size.pulses} pulses per "
            f"direction (per cycle {size.pulses} up, then {size.pulses} down; a read after "
            "each)")


def write_report(out: Path, size_name: str, size: DemoSize, table: str,
                 characterization: dict[str, Any], fitted: dict[str, Any], hidden_spec,
                 wall_s: float) -> Path:
    """Write ``out/report.md`` (the plots it names are written by the pipeline)."""
    from rpuhw.calibration.identifiability import compare_with_truth

    val = fitted["validation"]
    char = characterization
    device = device_table(compare_with_truth(fitted["fit"], hidden_spec))
    protocol = protocol_line(size)
    text = f"""# rpuhw demo ({size_name})

rpuhw {__version__}; {time.strftime('%Y-%m-%d %H:%M')}; total wall time {wall_s:.0f} s.

## Training: lenet on mnist5k

{size.train_limit} training / {size.test_limit} test images, {size.epochs} epoch(s), batch
size {size.batch_size}, lr {size.lr}, update granularity batch; the same for all three runs.

{table}

![test error vs epoch](curves.png)

![weight histograms](weights.png)

## Calibration: the emulated chip's hidden device vs the fitted model

Characterised {protocol} through
the bench ({char['messages']} instrument messages, {char['wall_s']:.0f} s); fitted
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
