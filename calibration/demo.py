"""``rpuhw demo``: from an emulated test chip to a trained network, in one command.

1. starts ``rpuhw emulate`` (its own process: a 32 x 32 chip with the package's
   hidden device behind a Keithley 2600B, a TSP-linked 707B and a 33500B on
   127.0.0.1);
2. characterises devices of the chip through the real drivers
   (``bench:BENCH.yaml``, pulse response), fits a device model and validates it;
3. trains the paper's lenet on the embedded mnist5k three ways: floating point;
   every layer on the calibrated simulator (``sim:device.yaml``); conv1 (16 x 26)
   on the emulated chip through the bench, the other layers on the calibrated
   simulator;
4. writes ``DIR/report.md`` with the summary table and PNG plots, prints the
   table, and stops the emulator on every exit path.

The three runs share data, epochs, batch size, learning rate and update
granularity (``batch``: one aggregated pulse program per batch and layer, which is
what a bench can afford), so only where the layers live differs.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rpuhw import __version__, open_array
from rpuhw.errors import ConfigError

CHIP = 32
"""The emulated chip is CHIP x CHIP devices (conv1's 16 x 26 block fits)."""


@dataclass(frozen=True)
class DemoSize:
    """How much the demo measures and trains."""

    devices: int
    """Devices characterised (spread over the chip)."""
    pulses: int
    """Up (then down) pulses per cycle."""
    cycles: int
    """Pulse-response cycles."""
    train_limit: int
    """Training images (of mnist5k's 4,000)."""
    test_limit: int
    """Test images (of 1,000)."""
    epochs: int
    """Epochs of each training run."""
    batch_size: int = 10
    """Images per optimizer step."""
    lr: float = 0.1
    """Learning rate (mean loss over the batch)."""


SIZES = {
    # the hidden device needs ~600 pulses from bound to bound: fewer pulses explore only
    # part of the range, and the fit can only describe what was measured
    "quick": DemoSize(devices=8, pulses=300, cycles=1, train_limit=200, test_limit=200,
                      epochs=1),
    "default": DemoSize(devices=16, pulses=500, cycles=1, train_limit=1000, test_limit=500,
                        epochs=2),
    "full": DemoSize(devices=64, pulses=800, cycles=3, train_limit=4000, test_limit=1000,
                     epochs=3),
}


@contextmanager
def emulated_bench(out: Path, seed: int = 0, log=print):
    """``rpuhw emulate`` in a subprocess; yields the bench YAML; always stops it."""
    bench = out / "bench.yaml"
    cmd = [sys.executable, "-m", "rpuhw.cli", "emulate", "--rows", str(CHIP), "--cols",
           str(CHIP), "--seed", str(seed), "--bench-out", str(bench)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    old = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # a terminated demo still stops its emulator (finally)
        raise SystemExit(143)
    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        old = None
    try:
        line = proc.stdout.readline().strip()
        if line != f"ready {bench}":
            raise RuntimeError(f"rpuhw emulate did not start: {line!r} "
                               f"{proc.stderr.read() if proc.poll() is not None else ''}")
        log(f"emulated bench serving ({CHIP} x {CHIP} chip, hidden device), {bench}")
        yield bench
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


@contextmanager
def bench_or_emulator(path: str | None, folder: Path | None = None):
    """Yield the bench YAML ``path``, or, when it is None, the YAML of an emulated bench
    (:func:`emulated_bench`, its files in ``folder`` or a temporary folder) that is
    stopped again on every exit path. Lets a script run on real instruments or without."""
    if path:
        yield Path(path)
        return
    if folder is not None:
        with emulated_bench(Path(folder)) as bench:
            yield bench
        return
    with tempfile.TemporaryDirectory() as tmp, emulated_bench(Path(tmp)) as bench:
        yield bench


def _hidden_device():
    from rpuhw.device_spec import load_device
    from rpuhw.drivers.emulators import HIDDEN_DEVICE

    return load_device(HIDDEN_DEVICE)


def _device_row(spec) -> dict[str, float]:
    """Parameters in conductance terms, comparable between hidden and fitted devices."""
    from rpuhw.calibration.fit_report import mid_range_steps

    p, c = spec.model.params, spec.conductance
    up, down = mid_range_steps(spec)
    scale = (c.g_max - c.g_min) / (p.w_max - p.w_min)
    return {"model": spec.model.name, "g_min (S)": c.g_min, "g_max (S)": c.g_max,
            "up step at mid-range (S)": up, "down step at mid-range (S)": down,
            "dw_min_dtod": p.dw_min_dtod, "dw_min_std": p.dw_min_std,
            "read noise (S)": spec.io.read_noise * scale}


def characterize(bench: Path, size: DemoSize, out: Path, log=print) -> dict[str, Any]:
    """Pulse response of ``size.devices`` devices through the bench -> DIR/meas.csv."""
    from rpuhw.calibration.measurements import MeasurementWriter
    from rpuhw.calibration.protocols import parse_devices, protocol_meta, pulse_response

    csv = out / "meas.csv"
    for p in (csv, csv.with_suffix(".json")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with open_array(f"bench:{bench}", CHIP, CHIP) as arr:
        devices = parse_devices(str(size.devices), CHIP, CHIP)
        meta = protocol_meta(arr, devices, {
            "protocol": "pulse-response", "pulses": size.pulses, "cycles": size.cycles,
            "devices": str(size.devices), "array": f"bench:{bench}", "rows": CHIP,
            "cols": CHIP, "seed": None})
        with MeasurementWriter(csv, meta) as writer:
            pulse_response(arr, devices, size.pulses, size.cycles, writer, progress=True)
            writer.finish()
        msgs = arr.stats()["messages"]
    wall = time.perf_counter() - t0
    log(f"characterised {len(devices)} devices x {size.cycles} cycles x {2 * size.pulses} "
        f"pulses: {msgs} instrument messages, {wall:.1f} s -> {csv}")
    return {"csv": csv, "messages": msgs, "wall_s": wall}


def fit_and_validate(csv: Path, out: Path, log=print) -> dict[str, Any]:
    """Fit (model auto), write DIR/device.yaml and DIR/fit.png, validate against the CSV."""
    from rpuhw.calibration.fit import fit
    from rpuhw.calibration.measurements import load_measurements
    from rpuhw.calibration.plots import plot_fit
    from rpuhw.calibration.validate import validate
    from rpuhw.device_spec import save_device

    t0 = time.perf_counter()
    m = load_measurements(csv)
    res = fit(m, "auto")
    log(f"fit: {res.explanation}")
    if not res.ok:
        log(f"fit: not a confident fit ({res.reason}); continuing with it for the demo")
    spec = res.to_device_spec()
    device = out / "device.yaml"
    save_device(spec, device)
    plot_fit(res, out / "fit.png")
    val = validate(device, m)
    log(f"validate: {val.summary()}")
    return {"device": device, "spec": spec, "fit": res, "validation": val,
            "wall_s": time.perf_counter() - t0}


def train_three(bench: Path, device: Path, size: DemoSize, out: Path, seed: int = 0,
                log=print) -> dict[str, dict[str, Any]]:
    """Floating point, calibrated simulator, conv1 on the chip: results and weights."""
    from rpuhw.nn import analog_layers
    from rpuhw.train import load_config, train

    common = dict(epochs=size.epochs, batch_size=size.batch_size, lr=size.lr,
                  train_limit=size.train_limit, test_limit=size.test_limit, seed=seed,
                  update_granularity="batch", progress=True)
    runs = {
        "floating point": dict(backend="float"),
        "calibrated simulator": dict(backend=f"sim:{device}"),
        "conv1 on the chip": dict(backend=f"sim:{device}", layers={"conv1": f"bench:{bench}"}),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, over in runs.items():
        slug = name.replace(" ", "_")
        cfg = load_config(None, {**common, **over, "out": str(out / f"{slug}.json")})
        weights: dict[str, np.ndarray] = {}

        def grab(model, weights=weights):
            analog = analog_layers(model)
            for lname in ("conv1", "conv2", "fc1", "fc2"):
                mod = model.get_submodule(lname)
                w = analog[lname].analog_weight() if lname in analog else mod.weight
                weights[lname] = w.detach().cpu().numpy().ravel()
        log(f"== training: {name}")
        t0 = time.perf_counter()
        res = train(cfg, log=lambda msg: log("   " + msg), on_model=grab)
        res["wall_s"] = time.perf_counter() - t0
        res["weights"] = weights
        results[name] = res
    return results


def _table(runs: dict[str, dict[str, Any]]) -> str:
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


def _param_table(hidden: dict[str, Any], fitted: dict[str, Any]) -> str:
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


def run_demo(size_name: str = "default", out: str | Path = "demo", seed: int = 0,
             log=print) -> dict[str, Any]:
    """The whole demo; returns what went into the report."""
    from rpuhw.plots import plot_runs, plot_weight_histograms

    if size_name not in SIZES:
        raise ConfigError(f"unknown size {size_name!r} (known: {', '.join(SIZES)})", key="size")
    size = SIZES[size_name]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with emulated_bench(out, seed=seed, log=log) as bench:
        char = characterize(bench, size, out, log)
        fitted = fit_and_validate(char["csv"], out, log)
        runs = train_three(bench, fitted["device"], size, out, seed=seed, log=log)
    plot_runs([str(out / f"{n.replace(' ', '_')}.json") for n in runs], str(out / "curves.png"))
    plot_weight_histograms({n: r["weights"] for n, r in runs.items()},
                           str(out / "weights.png"))
    hidden, fit_row = _device_row(_hidden_device()), _device_row(fitted["spec"])
    table = _table(runs)
    val = fitted["validation"]
    wall = time.perf_counter() - t0
    report = f"""# rpuhw demo ({size_name})

rpuhw {__version__}; {time.strftime('%Y-%m-%d %H:%M')}; total wall time {wall:.0f} s.

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

{_param_table(hidden, fit_row)}

Validation (replay of the measured protocol on the fitted simulator):
**{'pass' if val.passed else 'FAIL'}**, {val.summary()}

![pulse response and fit](fit.png)

Files: `meas.csv` (+ `meas.json`), `device.yaml`, `bench.yaml`, one results JSON per run.
"""
    (out / "report.md").write_text(report)
    print(table)
    print(f"\nreport: {out / 'report.md'}")
    return {"runs": runs, "characterization": char, "fit": fitted, "report": out / "report.md",
            "wall_s": wall, "size": dataclasses.asdict(size)}


def main(argv: list[str] | None = None, prog: str = "rpuhw demo") -> int:
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                 epilog="example:\n  rpuhw demo --quick --out demo_quick",
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="about 2 minutes (smaller everything)")
    g.add_argument("--full", action="store_true", help="the long version")
    ap.add_argument("--out", default="demo", help="output folder (default ./demo)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    size = "quick" if args.quick else "full" if args.full else "default"
    try:
        res = run_demo(size, args.out, seed=args.seed)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0 if res["report"].exists() else 1
