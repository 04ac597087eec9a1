"""Recovery tests of the model fits (calibration/fit.py) on simulated measurements.

Generator: a SimulatedArray with a known DeviceSpec runs the pulse-response protocol
(per cycle n up pulses then n down pulses, all devices in lockstep, a read after each),
reads converted to siemens with the spec's conductance block.

Tolerances (issue 5): mid-range conductance step, g_min, g_max, up/down asymmetry within
10 %; spreads and cycle-to-cycle noise within 25 %. Sampling arithmetic for the 8 x 8
array used (D = 64 devices; the state-space fit's cost grows with the reads, so the
array of issue 5's 16 x 16 is now the benchmark's), true dw_min_dtod 0.3, up_down
0.2 +- 0.05, w bound spreads 0.2, g in [30, 100] uS:
- mean step: SE = 0.3 / sqrt(64) = 3.8 % -> 10 % is 2.7 SE;
- up_down: against the drawn devices' own (aihwkit's one-sided up_down of their mean
  half-sum and half-difference of steps; with 64 devices the drawn value differs from the
  YAML's 0.2 by its sampling error, 15 % for seed 1), evaluated at the fit's reference
  state (the midpoint of the fitted mean bounds, see ``_drawn_up_down``): the fit's own
  error is ~0.006 / 8 = 1.5 % of it -> 10 % is 6 SE;
- g_min: SE = 0.2 * 35 uS / 8 = 0.9 uS = 2.9 % of 30 uS (g_max: 0.9 %) -> 3.4 SE;
- a spread from D devices: relative SE 1 / sqrt(2 (D - 1)) = 8.9 % -> 25 % is 2.8 SE
  (each device's own estimation error is corrected for in the fit);
- dw_min_std from ~8e4 steps: relative SE ~ 1 / sqrt(2 N) < 0.3 %.
The seeds are fixed, so each check either holds for these draws or not; the margins
above say how far inside the sampling error the tolerances are.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from rpuhw.calibration.fit import FitConfig, fit
from rpuhw.calibration.fit_report import parameter_table
from rpuhw.calibration.measurements import Measurements
from rpuhw.device_spec import load_device, spec_from_mapping
from rpuhw.sim.array import SimulatedArray

BASE = dict(dw_min=0.02, dw_min_dtod=0.3, dw_min_std=0.3, up_down=0.2, up_down_dtod=0.05,
            w_min=-1.0, w_max=1.0, w_min_dtod=0.2, w_max_dtod=0.2,
            conductance={"g_min": 3e-5, "g_max": 1e-4})
EXTRA = {
    "linear_step": dict(gamma_up=0.5, gamma_down=0.3, gamma_up_dtod=0.05,
                        gamma_down_dtod=0.05),
    # aihwkit's one-sided up_down draws the smaller (down) step as dw_min (g - up_down - r):
    # its relative spread is dw_min_dtod / (1 - up_down); at dw_min_dtod 0.3 about 2 % of
    # the devices get a down step under a quarter of the mean, which pow_step's power-law
    # approach does not take near the lower bound in 600 pulses (unidentified bounds); at
    # 0.2, 0.1 % (the old symmetric draw, dw_min g (1 - r), had 0.6 % at 0.3)
    "pow_step": dict(pow_gamma=1.5, pow_gamma_dtod=0.1, dw_min_dtod=0.2),
    "exp_step": {},  # aihwkit's defaults: A_up 0.00081, A_down 0.368, gamma ~12.5
    "piecewise": dict(piecewise_up=[1.2, 1.0, 0.5], piecewise_down=[0.5, 1.0, 1.2]),
}
MODELS = ["constant_step", "linear_step", "soft_bounds", "exp_step", "pow_step", "piecewise"]
# pulses, cycles: enough pulses that (nearly) every device reaches its bounds; pow_step's
# approach to the bound is a power law (slow), so it gets longer half-cycles
PROTOCOL = {"pow_step": (600, 1)}


def generate(mapping: dict, rows: int = 16, cols: int = 16, pulses: int = 300,
             cycles: int = 2, seed: int = 1, noise_repeats: int = 0
             ) -> tuple[Measurements, SimulatedArray]:
    """Pulse-response measurements of every device of a simulated array (see module doc)."""
    spec = spec_from_mapping(mapping)
    arr = SimulatedArray(rows, cols, device=spec, seed=seed)
    c, p = spec.conductance, spec.model.params

    def to_g(w: torch.Tensor) -> np.ndarray:
        w = w.numpy().ravel().astype(np.float64)
        return c.g_min + (w - p.w_min) * (c.g_max - c.g_min) / (p.w_max - p.w_min)

    n = rows * cols
    dev = np.arange(n)
    out: dict[str, list] = {k: [] for k in ("device", "row", "col", "cycle", "pulse",
                                            "polarity", "conductance")}

    def record(cycle: int, pol: int, k: int) -> None:
        for key, val in (("device", dev), ("row", dev // cols), ("col", dev % cols),
                         ("cycle", np.full(n, cycle)), ("pulse", np.full(n, k)),
                         ("polarity", np.full(n, pol)), ("conductance", to_g(arr.read()))):
            out[key].append(val)

    ones = torch.ones(rows, cols, dtype=torch.int32)
    for cycle in range(cycles):
        for pol in (1, -1):
            record(cycle, pol, 0)
            for k in range(1, pulses + 1):
                arr.pulse(pol * ones)
                record(cycle, pol, k)
    for level in range(3 if noise_repeats else 0):  # read-noise rows at three levels
        arr.pulse(-40 * ones if level == 0 else 40 * ones)
        for k in range(noise_repeats):
            record(level, 0, k)
    cols_ = {k: np.concatenate(v) for k, v in out.items()}
    cols_["polarity"] = cols_["polarity"].astype(np.int8)
    return Measurements(**cols_), arr


def _drawn_up_down(arr: SimulatedArray, g_ref: float | None = None) -> float:
    """aihwkit's one-sided up_down of the devices the array drew (their steps' half-sum
    and half-difference means, :func:`one_sided_from_moments`), at ``w = 0`` or, given
    ``g_ref`` (S), at that conductance.

    A fit's up_down is the asymmetry at its own ``w = 0``: the midpoint of the fitted mean
    bounds, which differs from the spec's by the sampling error of the drawn devices'
    bounds. Where the step depends on the state (soft_bounds, pow_step) the asymmetry
    changes fast with the state (soft_bounds, mean bounds +-40 uS about the centre and
    up_down 0.1: 0.045 per uS of shift), so the devices' own asymmetry at the fit's
    reference state is what a fit can be held to; the shift itself is device sampling."""
    from rpuhw.devices.base import one_sided_from_moments

    if g_ref is None:
        up = arr.state["dw_up"].numpy().ravel().astype(float)
        down = arr.state["dw_down"].numpy().ravel().astype(float)
    else:
        c, p = arr.spec.conductance, arr.spec.model.params
        w_ref = p.w_min + (g_ref - c.g_min) * (p.w_max - p.w_min) / (c.g_max - c.g_min)
        state = {k: v.double() for k, v in arr.state.items()}
        w = torch.full(state["dw_up"].shape, w_ref, dtype=torch.float64)
        model = arr.spec.model
        up = model.step(w, torch.ones(w.shape, dtype=torch.bool), state).numpy().ravel()
        down = model.step(w, torch.zeros(w.shape, dtype=torch.bool), state).numpy().ravel()
    s, a = 0.5 * (up + down), 0.5 * (up - down)
    return one_sided_from_moments(s.mean(), s.std(ddof=1), a.mean(), a.std(ddof=1)).up_down


def _rel(fitted: float, true: float) -> float:
    return abs(fitted / true - 1.0)


def test_read_noise_rows_and_noise_subtraction():
    # read noise 0.004 (weight units) against a step noise of 0.3 * 0.02 = 0.006: the
    # step residual variance is 0.006^2 + 2 * 0.004^2 -- without subtracting the read
    # noise dw_min_std would come out 0.3 * sqrt(1 + 2 * 0.44) = 0.41 (+37 %)
    mapping = {"model": "soft_bounds", **BASE, "io": {"read_noise": 0.004}}
    m, _ = generate(mapping, rows=8, cols=8, pulses=300, cycles=2, noise_repeats=50)
    res = fit(m, "soft_bounds")
    # 64 devices x 3 levels x 49 dof: relative SE of sigma ~ 1 / sqrt(2 * 9400) < 1 %; the
    # fitted range maps w to [-1, 1] on the mean bounds, as the true spec does
    assert _rel(res.read_noise, 0.004) < 0.10, parameter_table(res)
    assert _rel(res.params["dw_min_std"], 0.3) < 0.25, parameter_table(res)


def test_read_noise_from_residuals_without_read_rows():
    mapping = {"model": "constant_step", **BASE, "io": {"read_noise": 0.004}}
    m, _ = generate(mapping, rows=8, cols=8, pulses=300, cycles=2)
    res = fit(m, "constant_step")
    assert _rel(res.read_noise, 0.004) < 0.25, parameter_table(res)
    assert _rel(res.params["dw_min_std"], 0.3) < 0.25, parameter_table(res)


def _sinusoid(rows=8, cols=8, pulses=200, cycles=2, seed=0) -> Measurements:
    """Conductance that oscillates with the pulse number: no step rule g -> dg explains it."""
    rng = np.random.default_rng(seed)
    n = rows * cols
    out = {k: [] for k in ("device", "cycle", "pulse", "polarity", "conductance")}
    for cycle in range(cycles):
        for pol in (1, -1):
            k = np.arange(pulses + 1)
            for d in range(n):
                g = 5e-5 + 2e-5 * np.sin(2 * np.pi * k / 60 + d) + 2e-7 * rng.standard_normal(
                    len(k))
                out["device"].append(np.full(len(k), d))
                out["cycle"].append(np.full(len(k), cycle))
                out["pulse"].append(k)
                out["polarity"].append(np.full(len(k), pol))
                out["conductance"].append(g)
    c = {k: np.concatenate(v) for k, v in out.items()}
    c["polarity"] = c["polarity"].astype(np.int8)
    return Measurements(**c)


def test_unexplained_data_is_flagged():
    res = fit(_sinusoid(rows=4, cols=4), "auto")  # 16 devices: the flags need no more
    assert not res.ok
    assert "residuals are structured" in res.reason or "mean step curve" in res.reason
    assert all(not s.ok for s in res.scores.values())


def test_steps_against_the_pulse_direction_are_flagged():
    m, _ = generate({"model": "soft_bounds", **BASE}, rows=8, cols=8, pulses=200, cycles=2)
    m.polarity = -m.polarity  # every pulse moves the conductance the other way
    res = fit(m, "soft_bounds")
    assert not res.ok, parameter_table(res)


# ---- command line -----------------------------------------------------------------------


def _write_csv(m: Measurements, path) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["device", "row", "col", "cycle", "pulse", "polarity", "conductance"])
        rows = m.row if m.row is not None else np.full(len(m), -1)
        cols = m.col if m.col is not None else np.full(len(m), -1)
        for r in zip(m.device, rows, cols, m.cycles(), m.pulse, m.polarity, m.conductance,
                     strict=True):
            w.writerow([int(x) for x in r[:6]] + [repr(float(r[6]))])


@pytest.fixture(scope="module")
def soft_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("fit") / "meas.csv"
    m, _ = generate({"model": "soft_bounds", **BASE}, rows=6, cols=6, pulses=200, cycles=2)
    _write_csv(m, path)
    return path


def test_cli_writes_yaml_that_open_array_loads(soft_csv, tmp_path, capsys):
    from rpuhw.backends import open_array
    from rpuhw.cli import main

    out, plot, rep = tmp_path / "device.yaml", tmp_path / "fit.png", tmp_path / "fit.json"
    rc = main(["fit", str(soft_csv), "--model", "soft_bounds", "-o", str(out), "--plot", str(plot),
               "--report", str(rep), "--bootstrap", "3"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "dw_min" in text and "std. error" in text
    spec = load_device(out)
    assert spec.model.name == "soft_bounds" and spec.conductance is not None
    arr = open_array(f"sim:{out}", 4, 4, seed=0)
    assert arr.read().shape == (4, 4)
    report = json.loads(rep.read_text())
    assert report["model"] == "soft_bounds" and "soft_bounds" in report["scores"]
    assert len(report["per_device"]["dw_up"]) == 36
    assert set(report["intervals"]) == set(report["params"]) | {"g_min", "g_max", "read_noise"}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_refuses_unexplained_data_unless_forced(tmp_path, capsys):
    from rpuhw.cli import main

    path = tmp_path / "sine.csv"
    _write_csv(_sinusoid(rows=4, cols=4), path)
    out = tmp_path / "device.yaml"
    assert main(["fit", str(path), "--model", "soft_bounds", "-o", str(out),
                 "--bootstrap", "0"]) == 1
    assert "not written" in capsys.readouterr().err
    assert not out.exists()
    assert main(["fit", str(path), "--model", "soft_bounds", "-o", str(out), "--force",
                 "--bootstrap", "0"]) == 0
    assert "warning" in capsys.readouterr().err
    assert out.exists()


def test_cli_bad_input(tmp_path, capsys):
    from rpuhw.cli import main

    bad = tmp_path / "bad.csv"
    bad.write_text("device,pulse,polarity,conductance\n0,0,1,1e-5\n0,1,1,abc\n")
    out = tmp_path / "device.yaml"
    assert main(["fit", str(bad), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rpuhw fit: error:") and "conductance" in err[0]
    assert not out.exists()
    assert main(["fit", str(bad), "--model", "nonsense", "-o", str(out)]) == 2
    assert main(["fit", str(tmp_path / "missing.csv"), "-o", str(out)]) == 2
    assert not out.exists()


def test_bad_model_name_and_too_little_data():
    from rpuhw.errors import ConfigError

    m, _ = generate({"model": "constant_step", **BASE}, rows=2, cols=2, pulses=3, cycles=1)
    with pytest.raises(ConfigError, match="unknown model"):
        fit(m, "nonsense")
    with pytest.raises(ConfigError, match="or more up and down steps"):
        fit(m, "constant_step")
    assert math.isfinite(fit(generate({"model": "constant_step", **BASE}, rows=2, cols=2,
                                      pulses=40, cycles=1)[0], "constant_step").g_min)


def test_a_bound_extrapolated_below_zero_siemens_is_not_ok():
    """A nearly linear device pulsed 60 times from mid-range, fitted as soft_bounds: the
    bounds can only be extrapolated, and the lower one lands below 0 S (seed 1: -52 uS for
    a true 10 uS). No device has that, so the fit is not ok and says why and what to
    measure; before, it was ok and wrote a device YAML without its conductance block."""
    m, _ = generate({"model": "linear_step", "dw_min": 0.004, "dw_min_dtod": 0.1,
                     "dw_min_std": 0.3, "up_down": 0.0, "gamma_up": 0.0, "gamma_down": 0.0,
                     "w_min": -1.0, "w_max": 1.0, "w_min_dtod": 0.05, "w_max_dtod": 0.05,
                     "io": {"read_noise": 0.004},
                     "conductance": {"g_min": 1e-5, "g_max": 1e-4}},
                    rows=3, cols=3, pulses=60, cycles=1, seed=1)
    res = fit(m, "soft_bounds", FitConfig(bootstrap=0))
    assert res.g_min < 0
    assert not res.ok
    assert "below 0 S" in res.reason and "--pulses auto" in res.reason
