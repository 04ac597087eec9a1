"""The demo's steps: characterise the emulated chip through the bench, fit and validate a
device model, train three ways; :func:`run_demo` chains them and writes the report."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from rpuhw import open_array
from rpuhw.demo.report import run_table, write_report
from rpuhw.demo.sizes import SIZES, DemoSize
from rpuhw.drivers.emulators.launch import CHIP, emulated_bench
from rpuhw.errors import ConfigError

Log = Callable[[str], None]


def characterize(bench: Path, size: DemoSize, out: Path, log: Log = print) -> dict[str, Any]:
    """Pulse response of ``size.devices`` devices through the bench -> DIR/meas.csv."""
    from rpuhw.calibration import protocols as pr
    from rpuhw.calibration.measurements import MeasurementWriter

    csv = out / "meas.csv"
    for p in (csv, csv.with_suffix(".json")):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    auto = size.max_pulses > 0
    with open_array(f"bench:{bench}", CHIP, CHIP) as arr:
        devices = pr.parse_devices(str(size.devices), CHIP, CHIP)
        meta = pr.protocol_meta(arr, devices, {
            "protocol": "pulse-response",
            "pulses_per_direction": "auto" if auto else size.pulses,
            "cycles": size.cycles,
            "devices": str(size.devices), "array": f"bench:{bench}", "rows": CHIP,
            "cols": CHIP, "seed": None})
        with MeasurementWriter(csv, meta) as writer:
            if auto:
                pr.pulse_response_auto(arr, devices, writer, size.max_pulses, size.cycles,
                                       noise_reads=pr.DEFAULT_NOISE_READS, progress=True)
            else:
                pr.pulse_response(arr, devices, size.pulses, size.cycles, writer,
                                  progress=True)
            writer.finish()
            stops = writer.meta.get("stops") or []
        msgs = arr.stats()["messages"]
    wall = time.perf_counter() - t0
    how = (f"until saturation (at most {size.max_pulses} pulses per direction; "
           f"{bounds_reached(stops)})" if auto else f"{size.pulses} pulses per direction")
    log(f"characterised {len(devices)} devices x {size.cycles} cycle(s), {how}: {msgs} "
        f"instrument messages, {wall:.1f} s -> {csv}")
    return {"csv": csv, "messages": msgs, "wall_s": wall}


def bounds_reached(stops: list[dict[str, Any]]) -> str:
    """How many half-cycles reached each bound, from the sidecar's ``stops`` (one entry
    per device and half-cycle: ``polarity``, ``saturated``)."""
    n = {p: sum(1 for e in stops if e["polarity"] == p) for p in (1, -1)}
    hit = {p: sum(1 for e in stops if e["polarity"] == p and e["saturated"]) for p in (1, -1)}
    return (f"upper bound reached in {hit[1]} of {n[1]}, lower bound in {hit[-1]} of "
            f"{n[-1]} half-cycles")


FIT_BOOTSTRAP = 20
"""Parametric-bootstrap replicas of the demo's fit (its 95 % intervals; as ``rpuhw
fit``'s default)."""


def fit_and_validate(csv: Path, out: Path, log: Log = print) -> dict[str, Any]:
    """Fit (model auto, bootstrap intervals), write DIR/device.yaml and DIR/fit.png,
    validate against the CSV."""
    from rpuhw.calibration.fit import FitConfig, fit
    from rpuhw.calibration.measurements import load_measurements
    from rpuhw.calibration.plots import plot_fit
    from rpuhw.calibration.validate import validate
    from rpuhw.device_spec import save_device

    t0 = time.perf_counter()
    m = load_measurements(csv)
    res = fit(m, "auto", FitConfig(bootstrap=FIT_BOOTSTRAP))
    log(f"fit: {res.explanation}")
    if not res.ok:
        log(f"fit: not a confident fit ({res.reason}); continuing with it for the demo")
    spec = res.to_device_spec()
    device = out / "device.yaml"
    save_device(spec, device)
    plot_fit(res, out / "fit.png", truth=hidden_device(), meta=m.meta)
    val = validate(device, m)
    log(f"validate: {val.summary()}")
    return {"device": device, "spec": spec, "fit": res, "validation": val,
            "wall_s": time.perf_counter() - t0}


ALGORITHM = "mp"
"""The training algorithm of the analog runs: the best for this chip in the study of
docs/algorithms.md (lenet, 3 epochs: mixed precision 4.1 % test error on the hidden
device, against 18.7 % for plain pulsed SGD and 3.6 % in floating point). It needs one
array per layer, so conv1 stays one 16 x 26 block of the chip."""


def train_three(bench: Path, device: Path, size: DemoSize, out: Path, seed: int = 0,
                log: Log = print) -> dict[str, dict[str, Any]]:
    """Floating point, calibrated simulator, conv1 on the chip (the analog runs with
    :data:`ALGORITHM`): results and weights."""
    from rpuhw.nn import analog_layers
    from rpuhw.train import load_config, train

    common = dict(epochs=size.epochs, batch_size=size.batch_size, lr=size.lr,
                  train_limit=size.train_limit, test_limit=size.test_limit, seed=seed,
                  update_granularity="batch", progress=True)
    runs = {
        "floating point": dict(backend="float"),
        "calibrated simulator": dict(backend=f"sim:{device}", algorithm=ALGORITHM),
        "conv1 on the chip": dict(backend=f"sim:{device}", layers={"conv1": f"bench:{bench}"},
                                  algorithm=ALGORITHM),
    }
    results: dict[str, dict[str, Any]] = {}
    for name, over in runs.items():
        cfg = load_config(None, {**common, **over, "out": str(out / _results_file(name))})
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


def _results_file(run: str) -> str:
    """The results JSON of a training run (``floating point`` -> ``floating_point.json``)."""
    return f"{run.replace(' ', '_')}.json"


def hidden_device():
    """The device YAML hidden inside the emulated chip (what the fit should find)."""
    from rpuhw.device_spec import load_device
    from rpuhw.drivers.emulators import HIDDEN_DEVICE

    return load_device(HIDDEN_DEVICE)


def run_demo(size_name: str = "default", out: str | Path = "demo_out", seed: int = 0,
             log: Log = print) -> dict[str, Any]:
    """The whole demo; prints the run table and returns what went into the report."""
    from rpuhw.plots import plot_runs, plot_weight_histograms, weight_bounds

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
    plot_runs([str(out / _results_file(n)) for n in runs], str(out / "curves.png"),
              labels=list(runs))
    plot_weight_histograms({n: r["weights"] for n, r in runs.items()},
                           str(out / "weights.png"),
                           bounds={n: weight_bounds(r["backends"]) for n, r in runs.items()})
    table = run_table(runs)
    wall = time.perf_counter() - t0
    report = write_report(out, size_name, size, table, char, fitted, hidden_device(), wall)
    print(table)
    print(f"\nreport: {report}")
    return {"runs": runs, "characterization": char, "fit": fitted, "report": report,
            "wall_s": wall, "size": dataclasses.asdict(size)}
