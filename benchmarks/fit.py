"""Fit-time benchmark: ``python -m benchmarks.fit`` prints JSON.

Issue 19: 64 devices (8 x 8 simulated array) x 2,000 pulses each (2 cycles of 500 up and
500 down), read noise one step, generated on the simulator; the state-space fit of the
true model with the parametric bootstrap (``--bootstrap`` replicas, default 20), and
``auto`` (all six models, chosen by the held-out likelihood, without bootstrap). Target
(issue 19): the fit with bootstrap under 60 s on 2 cores. ``--models`` picks the
generating models (default soft_bounds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from rpuhw.calibration.fit import FitConfig, fit
from rpuhw.calibration.measurements import Measurements
from rpuhw.device_spec import spec_from_mapping
from rpuhw.sim.array import SimulatedArray

BASE = dict(dw_min=0.01, dw_min_dtod=0.3, dw_min_std=0.3, up_down=0.1, up_down_dtod=0.05,
            w_min=-1.0, w_max=1.0, w_min_dtod=0.2, w_max_dtod=0.2,
            conductance={"g_min": 3e-5, "g_max": 1e-4}, io={"read_noise": 0.01})
EXTRA = {"linear_step": dict(gamma_up=0.5, gamma_down=0.3),
         "pow_step": dict(pow_gamma=1.5),
         "piecewise": dict(piecewise_up=[1.2, 1.0, 0.5], piecewise_down=[0.5, 1.0, 1.2])}
MODELS = ("constant_step", "linear_step", "soft_bounds", "exp_step", "pow_step", "piecewise")


def generate(model: str, rows: int, cols: int, pulses: int, cycles: int,
             seed: int = 0) -> Measurements:
    """Pulse-response rows of every device of a simulated array (in siemens)."""
    spec = spec_from_mapping({"model": model, **BASE, **EXTRA.get(model, {})})
    arr = SimulatedArray(rows, cols, device=spec, seed=seed)
    c, p = spec.conductance, spec.model.params
    n = rows * cols
    reads, meta = [], []
    ones = torch.ones(rows, cols, dtype=torch.int32)
    for cycle in range(cycles):
        for pol in (1, -1):
            for k in range(pulses + 1):
                if k:
                    arr.pulse(pol * ones)
                reads.append(arr.read().numpy().ravel().astype(np.float64))
                meta.append((cycle, pol, k))
    w = np.concatenate(reads)
    g = c.g_min + (w - p.w_min) * (c.g_max - c.g_min) / (p.w_max - p.w_min)
    meta_a = np.repeat(np.array(meta), n, axis=0)
    dev = np.tile(np.arange(n), len(meta))
    return Measurements(device=dev, pulse=meta_a[:, 2], polarity=meta_a[:, 1].astype(np.int8),
                        conductance=g, cycle=meta_a[:, 0], row=dev // cols, col=dev % cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fit", description=__doc__)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--pulses", type=int, default=500, help="per half-cycle")
    ap.add_argument("--cycles", type=int, default=2)
    ap.add_argument("--bootstrap", type=int, default=20)
    ap.add_argument("--models", default="soft_bounds")
    ap.add_argument("--no-auto", action="store_true", help="skip the auto fit")
    args = ap.parse_args(argv)
    out: dict = {"devices": args.rows * args.cols, "cycles": args.cycles,
                 "pulses_per_device": 2 * args.pulses * args.cycles,
                 "bootstrap": args.bootstrap, "cpu_count": os.cpu_count(),
                 "python": platform.python_version(), "fit_bootstrap_s": {},
                 "auto_s": {}, "auto_choice": {}, "ok": {}}
    for model in args.models.split(","):
        m = generate(model, args.rows, args.cols, args.pulses, args.cycles)
        t0 = time.perf_counter()
        res = fit(m, model, FitConfig(bootstrap=args.bootstrap))
        out["fit_bootstrap_s"][model] = round(time.perf_counter() - t0, 2)
        out["ok"][model] = res.ok
        if not args.no_auto:
            t0 = time.perf_counter()
            res = fit(m, "auto")
            out["auto_s"][model] = round(time.perf_counter() - t0, 2)
            out["auto_choice"][model] = res.model
    out["fit_bootstrap_max_s"] = max(out["fit_bootstrap_s"].values())
    out["target_s"] = 60.0
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
