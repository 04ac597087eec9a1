"""`rpuhw validate`: replaying the measured protocol on a device YAML."""

from __future__ import annotations

import json

import pytest

from rpuhw.backends import open_array
from rpuhw.calibration.measurements import MeasurementWriter, load_measurements
from rpuhw.calibration.protocols import parse_devices, pulse_response, read_noise
from rpuhw.calibration.validate import validate
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
    # Criteria and margins: the step tests reject a correct model with probability
    # <= alpha = 0.001 (Bonferroni over the bins); the mean trace of 8 devices (10 %
    # device-to-device spreads, 30 % pulse noise, 200 pulses per cycle) deviates from
    # the population mean by ~1 % of the range, far below the 0.1 limit.
    assert r.passed, r.summary()
    assert r.trace_error < 0.03 and r.devices == 8 and r.replicas == 32
    assert r.half_cycles == 4 and r.pulses == 400 and len(r.step_tests) == 10
    assert not r.reasons and "PASS" in r.summary()


@pytest.mark.parametrize("data,device", [("soft2x.csv", "soft.yaml"),
                                         ("soft.csv", "soft2x.yaml"),
                                         ("const.csv", "soft.yaml")])
def test_fails_on_data_from_another_device(files, data, device):
    r = validate(files[device], files[data], seed=0)
    assert not r.passed, r.summary()
    assert any(t.rejected for t in r.step_tests), r.summary()
    assert "FAIL" in r.summary() and r.reasons


def test_twice_the_step_fails_both_criteria(files):
    r = validate(files["soft.yaml"], files["soft2x.csv"], seed=0)
    assert r.trace_error > 0.1
    mid = [t for t in r.step_tests if t.bin in (1, 2, 3)]
    # twice the step: away from the bounds (where soft-bounds steps shrink to zero) the
    # measured mean step is about twice the simulated one, and every such bin rejects
    assert len(mid) == 6 and all(t.rejected for t in mid)
    assert all(abs(t.mean_measured) > 1.5 * abs(t.mean_simulated) for t in mid)


def test_weight_unit_measurements_without_conductance_block(tmp_path):
    # all 16 devices: with constant_step's 30 % device-to-device spread of the step, the
    # mean trace of n devices misses the population's by ~0.3 / sqrt(n) of the distance
    # moved (7.5 % for 16; the limit is 10 % of the range)
    path = _measure(tmp_path, "w", "constant_step", seed=2, pulses=60, devices="all")
    assert load_measurements(path).meta["settings"]["conductance_unit"] == "weight"
    y = tmp_path / "c.yaml"
    y.write_text("model: constant_step\n")  # the defaults sim:constant_step uses
    r = validate(y, path, seed=0)
    assert r.passed, r.summary()
    y2 = tmp_path / "c2.yaml"
    y2.write_text("model: constant_step\ndw_min: 0.003\n")
    assert not validate(y2, path, seed=0).passed


def test_cli_pass_fail_and_report(files, capsys):
    report = files["tmp"] / "v.json"
    assert main(["validate", "--device", str(files["soft.yaml"]), "--measurements",
                 str(files["soft.csv"]), "--report", str(report)]) == 0
    assert capsys.readouterr().out.startswith("PASS")
    data = json.loads(report.read_text())
    assert data["passed"] is True and data["trace_error"] < 0.1 and data["step_tests"]
    assert main(["validate", "--device", str(files["soft.yaml"]), "--measurements",
                 str(files["soft2x.csv"]), "--report", str(report)]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAIL") and "mean trace error" in out and "reason:" in out
    assert json.loads(report.read_text())["passed"] is False


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
