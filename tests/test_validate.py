"""`rpuhw validate`: posterior-predictive checks of a device YAML against measurements."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rpuhw.backends import open_array
from rpuhw.calibration.measurements import MeasurementWriter, load_measurements
from rpuhw.calibration.protocols import parse_devices, pulse_response, read_noise
from rpuhw.calibration.validate import CHECKS, validate
from rpuhw.cli import main
from rpuhw.device_spec import load_device
from rpuhw.errors import ConfigError
from rpuhw.sim.array import SimulatedArray

pytestmark = pytest.mark.timeout(300)

YAML = """\
model: {model}
dw_min: {dw_min}
dw_min_std: 0.3
dw_min_dtod: 0.1
up_down: 0.0
w_min: -1.0
w_max: 1.0
w_min_dtod: 0.1
w_max_dtod: 0.1
read_noise: 0.002
conductance:
  g_min: 1.0e-6
  g_max: 1.0e-5
"""


def _measure(tmp, name, device, seed, pulses=100, cycles=2, devices="8"):
    """Measure a 4 x 4 simulated array of ``device`` (a YAML path or a model name)."""
    path = tmp / f"{name}.csv"
    spec = load_device(device) if str(device).endswith(".yaml") else device
    # the torch engine: per-pulse calls are cheaper than numba launches (fast tests)
    arr = SimulatedArray(4, 4, device=spec, seed=seed, engine="torch")
    with MeasurementWriter(path, {}) as w:
        pulse_response(arr, parse_devices(devices, 4, 4), pulses, cycles, w, progress=False)
        w.finish()
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("validate")
    out = {}
    for name, model, dw in (("soft", "soft_bounds", 0.01), ("soft2x", "soft_bounds", 0.02),
                            ("const", "constant_step", 0.01)):
        y = tmp / f"{name}.yaml"
        y.write_text(YAML.format(model=model, dw_min=dw))
        out[f"{name}.yaml"] = y
        out[f"{name}.csv"] = _measure(tmp, name, y, seed=11)
    out["tmp"] = tmp
    return out


def test_passes_on_data_from_the_same_device(files):
    r = validate(files["soft.yaml"], files["soft.csv"], seed=0)
    # each check rejects a correct model with probability <= alpha / 4 = 0.0125
    # (posterior-predictive p-value against 79 replicas; test_validate_ppc checks the rate)
    assert r.passed, r.summary()
    assert r.devices == 8 and r.replicas == 79 and r.reads_per_pulse == 1
    assert r.half_cycles == 4 and r.pulses == 8 * 400
    assert [c.name for c in r.checks] == list(CHECKS) and all(c.tested for c in r.checks)
    assert len(r.check("step_vs_state").labels) == 10  # 5 bins x 2 polarities
    assert not r.reasons and r.summary().startswith("PASS") and not r.failed
    # the information-only trace error: 8 devices' mean against the population's, ~1 %
    assert r.trace_error < 0.03


@pytest.mark.parametrize("data,device", [("soft2x.csv", "soft.yaml"),
                                         ("soft.csv", "soft2x.yaml"),
                                         ("const.csv", "soft.yaml")])
def test_fails_on_data_from_another_device(files, data, device):
    r = validate(files[device], files[data], seed=0)
    assert not r.passed, r.summary()
    assert "step_vs_state" in r.failed, r.summary()
    assert r.summary().startswith("FAIL") and r.reasons[0].startswith("step_vs_state")


def test_twice_the_step_fails_step_vs_state(files):
    r = validate(files["soft.yaml"], files["soft2x.csv"], seed=0)
    c = r.check("step_vs_state")
    assert not c.passed and c.pvalue == 1 / 80 and c.effect > 0.5, c.line()
    meas, sim = np.array(c.measured_values), np.array(c.simulated_mean)
    mid = np.array([" bin 1 " in lab or " bin 2 " in lab or " bin 3 " in lab
                    for lab in c.labels])
    # twice the step: away from the bounds (where soft-bounds steps shrink to zero) the
    # measured mean step is about twice the simulated one
    assert mid.sum() == 6 and np.all(np.abs(meas[mid]) > 1.5 * np.abs(sim[mid]))
    assert r.trace_error > 0.1


def test_weight_unit_measurements_without_conductance_block(tmp_path):
    path = _measure(tmp_path, "w", "constant_step", seed=2, pulses=60, devices="all")
    assert load_measurements(path).meta["settings"]["conductance_unit"] == "weight"
    y = tmp_path / "c.yaml"
    y.write_text("model: constant_step\n")  # the defaults sim:constant_step uses
    r = validate(y, path, seed=0)
    assert r.passed, r.summary()
    assert r.unit == "weight" and r.check("step_vs_state").unit == "weight"
    y2 = tmp_path / "c2.yaml"
    y2.write_text("model: constant_step\ndw_min: 0.003\n")
    bad = validate(y2, path, seed=0)
    assert not bad.passed and "step_vs_state" in bad.failed, bad.summary()


def test_cli_pass_fail_report_and_plot(files, capsys):
    report, plot = files["tmp"] / "v.json", files["tmp"] / "v.png"
    assert main(["validate", str(files["soft.yaml"]), str(files["soft.csv"]), "--report",
                 str(report), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("PASS") and len(out) == 6  # verdict, 4 checks, trace error
    assert [ln.split()[1] for ln in out[1:5]] == list(CHECKS)
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["failed"] == [] and len(data["checks"]) == 4
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["validate", "--device", str(files["soft.yaml"]), "--measurements",
                 str(files["soft2x.csv"]), "--report", str(report)]) == 1
    cap = capsys.readouterr()
    assert cap.out.startswith("FAIL") and "FAIL step_vs_state" in cap.out
    assert "reason: step_vs_state" in cap.out and "FAIL: step_vs_state" in cap.err
    assert json.loads(report.read_text())["failed"][0] == "step_vs_state"


def test_cli_bad_input(files, tmp_path, capsys):
    report = tmp_path / "v.json"
    no_block = tmp_path / "nb.yaml"
    no_block.write_text("model: soft_bounds\n")
    noise = tmp_path / "noise.csv"
    with MeasurementWriter(noise, {}) as w:
        read_noise(open_array("ideal", 1, 1), [(0, 0)], 3, 2, w, pulses=1, progress=False)
        w.finish()
    cases = [
        (["--device", str(tmp_path / "missing.yaml"), "--measurements",
          str(files["soft.csv"])], "file not found"),
        (["--device", str(files["soft.yaml"]), "--measurements", str(tmp_path / "x.csv")],
         "file not found"),
        (["--device", str(no_block), "--measurements", str(files["soft.csv"])],
         "conductance"),
        (["--device", str(files["soft.yaml"]), "--measurements", str(noise)],
         "no pulse rows"),
        (["--device", str(files["soft.yaml"])], "--measurements"),
        (["--device", str(files["soft.yaml"]), "--measurements", str(files["soft.csv"]),
          "--alpha", "2"], "--alpha"),
        ([str(files["soft.yaml"]), str(files["soft.csv"]), "--replicas", "20"],
         "--replicas"),
        ([str(files["soft.yaml"]), str(files["soft.csv"]), "--plot", str(tmp_path)],
         "--plot"),
        ([str(files["soft.yaml"]), "--device", str(files["soft.yaml"]),
          "--measurements", str(files["soft.csv"])], "given twice"),
    ]
    for argv, words in cases:
        assert main(["validate", *argv, "--report", str(report)]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("rpuhw validate: error:") and "\n" not in err, err
        assert words in err, err
        assert not report.exists()


def test_api_errors_are_config_errors(files, tmp_path):
    bad = tmp_path / "flat.csv"
    bad.write_text("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,1,1,1e-6\n"
                   "0,0,-1,1e-6\n0,1,-1,1e-6\n")
    with pytest.raises(ConfigError, match="does not change"):
        validate(files["soft.yaml"], bad)
