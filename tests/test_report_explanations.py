"""Issue 16, item 6: the fit says which parameters the data do not determine, and why
(calibration/identifiability.py), the demo's report explains every fitted value far
from the hidden one, and pulse counts are per direction per cycle everywhere.

Generator: tests/test_fit.py's ``generate`` (a simulated array with a known device runs
n up then n down pulses per cycle, a read after each). Margins of the verdicts:

- bounds: a hard-bounded constant_step device (step 0.02 of a range of 2, start inside
  the range) reaches both bounds within 100 pulses; after 300 pulses its traces end flat
  (end slope ~ 0 against the threshold of 10 % of the mid-range step). A soft_bounds
  device like the emulated chip's (dw_min 0.002, w_max 0.6) still moves by
  exp(-150 x 0.002 / 0.6) ~ 60 % of its mid-range step after 150 pulses per direction:
  6x the threshold, while the end-slope ratio pooled over 16 traces has a standard error
  of a few % (read noise 0.002 over 15 reads per trace).
- cycle-to-cycle noise: dw_min_std 0.3 of a step 0.02; read noise 0.02 (= the step)
  gives a sensitivity 2 x 0.02^2 / (0.3 x 0.02)^2 = 22 > 5 (not identified), read noise
  0.002 gives 0.22 < 5 (identified): both a factor 4 or more from the threshold, far
  beyond the fitted dw_min_std's sampling error (~ 10 % relative with 16 x 600 steps).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from test_fit import _write_csv, generate  # tests/ is on sys.path (pytest's rootdir)

from rpuhw.calibration.fit import fit
from rpuhw.calibration.identifiability import (
    FAR_RELATIVE,
    FAR_RELATIVE_SPREAD,
    NOISE_SENSITIVITY_MAX,
    SATURATED_STEP_RATIO,
    Comparison,
    bound_check,
    checks,
    compare_with_truth,
    noise_check,
)
from rpuhw.device_spec import spec_from_mapping

HARD = {"model": "constant_step", "dw_min": 0.02, "dw_min_dtod": 0.1, "dw_min_std": 0.3,
        "up_down": 0.0, "w_min": -1.0, "w_max": 1.0, "w_min_dtod": 0.05, "w_max_dtod": 0.05,
        "conductance": {"g_min": 3e-5, "g_max": 1e-4}}
CHIP_LIKE = {"model": "soft_bounds", "dw_min": 0.0021, "dw_min_dtod": 0.190476,
             "dw_min_std": 0.2, "up_down": 0.0952381, "up_down_dtod": 0.0216339,
             "w_min": -0.6, "w_max": 0.6,
             "w_min_dtod": 0.1, "w_max_dtod": 0.1, "io": {"read_noise": 0.002},
             "conductance": {"g_min": 2e-5, "g_max": 1e-4}}
"""Like the emulated chip's hidden device (drivers/emulators/hidden_device.yaml)."""


def _fit(mapping, model, pulses, read_noise=None, seed=1):
    if read_noise is not None:
        mapping = {**mapping, "io": {"read_noise": read_noise}}
    m, _ = generate(mapping, rows=4, cols=4, pulses=pulses, cycles=1, seed=seed)
    return fit(m, model), m


@pytest.fixture(scope="module")
def hard_fit():
    return _fit(HARD, "constant_step", 300, read_noise=0.002)[0]


@pytest.fixture(scope="module")
def chip_fit():
    """The emulated chip's situation: traces that stop before the bounds, read noise
    equal to the step, fitted with a hard-bounded model."""
    return _fit(CHIP_LIKE, "exp_step", 150)


def test_bounds_reached_when_the_traces_flatten(hard_fit):
    for upper in (False, True):
        c = bound_check(hard_fit, upper)
        assert c.identified, c.cause
        assert c.figures["end_step_ratio"] < SATURATED_STEP_RATIO
        assert c.cause.startswith("reached")


def test_bounds_not_reached_are_flagged_with_the_measured_end_slope(chip_fit):
    res, _ = chip_fit
    for upper, name in ((False, "g_min"), (True, "g_max")):
        c = bound_check(res, upper)
        assert not c.identified and c.parameter == name
        # the soft bound is still ~60 % of a mid-range step per pulse away (module doc)
        assert c.figures["end_step_ratio"] > 3 * SATURATED_STEP_RATIO, c.figures
        # the cause carries the numbers: the end slope and the ratio, in the text
        assert f"{100 * c.figures['end_step_ratio']:.0f} %" in c.cause
        assert f"{abs(c.figures['end_slope_S_per_pulse']):.3g} S per pulse" in c.cause
        assert "not reached" in c.cause and "extrapolation" in c.cause


def test_cycle_to_cycle_noise_under_read_noise_equal_to_the_step():
    """With read noise equal to the step, one-step differences cannot tell the two noises
    apart (a 1 % read-noise error moves dw_min_std by > 5 %: the sensitivity figure), but
    the state-space likelihood separates them by their time structure (a random walk of
    the state against independent reads): its own standard error decides, and the claim
    is checked against the truth (0.3) within 3 of those standard errors."""
    loud, _ = _fit(HARD, "constant_step", 300, read_noise=0.02)
    quiet, _ = _fit(HARD, "constant_step", 300, read_noise=0.002)
    c_loud, c_quiet = noise_check(loud), noise_check(quiet)
    assert c_loud.figures["sensitivity_to_read_noise"] > NOISE_SENSITIVITY_MAX
    # read noise / step is computed from the data: ~1 here, ~0.1 for the quiet device
    assert 0.7 < c_loud.figures["read_noise_to_step"] < 1.5, c_loud.figures
    assert c_quiet.figures["read_noise_to_step"] < 0.2
    for res, check in ((loud, c_loud), (quiet, c_quiet)):
        assert check.identified, check.cause
        assert "state-space fit gives dw_min_std" in check.cause
        se = res.uncertainties["dw_min_std"]
        assert abs(res.params["dw_min_std"] - 0.3) < 3 * se, check.cause
        assert "not identifiable" not in check.cause
    assert c_loud.figures["relative_se"] > c_quiet.figures["relative_se"]


def test_far_rule_is_relative():
    near = Comparison("x", 1.0, 1.0 + 0.99 * FAR_RELATIVE)
    far = Comparison("x", 1.0, 1.0 + 1.01 * FAR_RELATIVE)
    low = Comparison("x", 1.0, 1.0 - 1.01 * FAR_RELATIVE)
    assert not near.far and far.far and low.far
    assert not Comparison("model", "soft_bounds", "exp_step").far
    # a spread has the looser rule (the 20 %), a value the 10 % one
    assert FAR_RELATIVE_SPREAD > FAR_RELATIVE
    mid = 1.0 + 0.5 * (FAR_RELATIVE + FAR_RELATIVE_SPREAD)
    assert Comparison("g_min (S)", 1.0, mid).far
    assert not Comparison("dw_min_dtod", 1.0, mid).far
    assert not Comparison("dw_min_std", 1.0, mid).far
    assert Comparison("dw_min_std", 1.0, 1.0 + 1.01 * FAR_RELATIVE_SPREAD).far


def test_interval_coverage_is_reported():
    assert Comparison("x", 1.0, 1.1, interval=(0.95, 1.2)).covered is True
    assert Comparison("x", 1.0, 1.1, interval=(1.01, 1.2)).covered is False
    assert Comparison("x", 1.0, 1.1).covered is None
    assert Comparison("model", "a", "b", interval=(0, 1)).covered is None


def test_far_values_are_explained_by_their_check(chip_fit):
    res, _ = chip_fit
    rows = {r.parameter: r for r in compare_with_truth(res, spec_from_mapping(CHIP_LIKE))}
    far = [r for r in rows.values() if r.far]
    assert far, [(r.parameter, r.ratio) for r in rows.values()]
    for r in far:
        assert r.explanation.startswith(f"{r.ratio:.2f} x the true value"), r.explanation
        if r.check is not None:  # the data check's computed cause is part of it
            assert r.check.cause in r.explanation
    for r in rows.values():
        if not r.far:
            assert r.explanation == ""
    # 150 pulses do not reach the chip-like device's lower bound: if the fitted g_min is
    # far, the reason given is that the bound was not reached
    if rows["g_min (S)"].far:
        assert "not reached" in rows["g_min (S)"].explanation


def test_demo_device_table_explains_far_rows(chip_fit):
    from rpuhw.demo.report import device_table

    res, _ = chip_fit
    rows = compare_with_truth(res, spec_from_mapping(CHIP_LIKE))
    text = device_table(rows)
    assert "| 95 % interval | hidden inside | far from hidden | identified by the data |" in text
    assert f"> {FAR_RELATIVE:.0%}" in text and f"> {FAR_RELATIVE_SPREAD:.0%}" in text
    for r in rows:
        if r.far or r.covered is False:
            assert f"- **{r.parameter}**: {r.explanation}" in text
        if r.covered is False:
            assert "outside the 95 % interval" in r.explanation
    # the fit's intervals reach the rows that have a fitted counterpart
    by = {r.parameter: r for r in rows}
    for key in ("g_min (S)", "g_max (S)", "dw_min_std", "dw_min (of the half range)",
                "read noise (S)"):
        lo, hi = by[key].interval
        assert lo <= by[key].fitted <= hi, (key, by[key].interval, by[key].fitted)
    # a parameter the data do not determine is named even when it happens to be close
    for r in rows:
        if not r.far and r.check is not None and not r.check.identified:
            assert f"- {r.parameter}: {r.check.cause}" in text


def test_fit_cli_flags_unidentified_parameters(chip_fit, tmp_path, capsys):
    from rpuhw.cli import main

    _, m = chip_fit
    csv, rep = tmp_path / "meas.csv", tmp_path / "fit.json"
    _write_csv(m, csv)
    rc = main(["fit", str(csv), "--model", "exp_step", "-o", str(tmp_path / "d.yaml"),
               "--report", str(rep), "--force"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "protocol: 1 cycle(s) x 150 pulses per direction (up, then down)" in out
    assert "not identified by the data: g_min: not reached" in out
    ident = json.loads(rep.read_text())["identifiability"]
    assert ident["g_min"]["identified"] is False
    assert ident["g_min"]["figures"]["end_step_ratio"] > SATURATED_STEP_RATIO
    assert set(ident) >= {"g_min", "g_max", "dw_min_std", "dw_min_dtod", "read_noise"}


def test_checks_of_a_fit_without_step_data_are_empty(hard_fit):
    bare = SimpleNamespace(**{**hard_fit.__dict__, "data": None})
    assert checks(bare) == {}


# ---- one pulse-count convention: per direction, per cycle --------------------------------


def _characterize(tmp_path, *extra):
    from rpuhw.cli import main

    return main(["characterize", "--array", "sim", "--rows", "2", "--cols", "2",
                 "--devices", "all", "--seed", "0", "--no-progress",
                 "-o", str(tmp_path / "m.csv"), *extra])


def test_sidecar_names_pulses_per_direction(tmp_path, capsys):
    from rpuhw.calibration.measurements import load_measurements

    assert _characterize(tmp_path, "--pulses", "7", "--cycles", "2") == 0
    settings = json.loads((tmp_path / "m.json").read_text())["settings"]
    assert settings["pulses_per_direction"] == 7 and "pulses" not in settings
    m = load_measurements(tmp_path / "m.csv")
    # 7 up and 7 down pulses per cycle, a read before each half and after each pulse
    assert len(m) == 4 * 2 * 2 * (7 + 1)
    assert (m.pulse[m.polarity == 1].max(), m.pulse[m.polarity == -1].max()) == (7, 7)


def test_old_sidecar_pulses_key_still_resumes(tmp_path, capsys):
    from rpuhw.calibration.measurements import sidecar_settings

    assert _characterize(tmp_path, "--pulses", "5") == 0
    side = tmp_path / "m.json"
    meta = json.loads(side.read_text())
    meta["settings"]["pulses"] = meta["settings"].pop("pulses_per_direction")
    meta["complete"] = False
    side.write_text(json.dumps(meta))
    assert sidecar_settings(meta)["pulses_per_direction"] == 5
    capsys.readouterr()
    # the same --pulses as the old sidecar's "pulses": accepted (nothing left to measure)
    assert _characterize(tmp_path, "--pulses", "5", "--resume") == 0
    # another --pulses: refused, naming the flag
    assert _characterize(tmp_path, "--pulses", "6", "--resume") == 2
    err = capsys.readouterr().err
    assert "--pulses" in err and "6" in err and "5" in err


def test_read_noise_sidecar_names_pulses_between_levels(tmp_path):
    assert _characterize(tmp_path, "--protocol", "read-noise", "--repeats", "3",
                         "--cycles", "2", "--pulses", "4") == 0
    settings = json.loads((tmp_path / "m.json").read_text())["settings"]
    assert settings["pulses_between_levels"] == 4 and "pulses" not in settings


def test_characterize_help_names_the_convention(capsys):
    from rpuhw.cli import main

    try:
        main(["characterize", "--help"])
    except SystemExit:  # argparse's exit, where the CLI does not turn it into a status
        pass
    out = capsys.readouterr().out
    assert "pulses per direction per cycle" in " ".join(out.split())


def test_demo_report_counts_pulses_per_direction(chip_fit, tmp_path):
    from rpuhw.demo.report import write_report
    from rpuhw.demo.sizes import SIZES

    res, _ = chip_fit
    size = SIZES["quick"]
    val = SimpleNamespace(passed=True, summary=lambda: "PASS")
    path = write_report(tmp_path, "quick", size, "| run |", {"messages": 1, "wall_s": 1.0},
                        {"validation": val, "fit": res, "spec": res.to_device_spec()},
                        spec_from_mapping(CHIP_LIKE), 1.0)
    text = " ".join(path.read_text().split())
    assert (f"{size.devices} devices x {size.cycles} cycle(s) x {size.pulses} pulses per "
            "direction") in text
    assert f"x {2 * size.pulses} pulses" not in text


def test_far_step_row_is_checked_against_the_measured_steps(chip_fit):
    from rpuhw.calibration.identifiability import _explain, device_row, measured_step_at

    res, _ = chip_fit
    true = device_row(spec_from_mapping(CHIP_LIKE))
    fitted = device_row(res.to_device_spec())
    key = "down step at mid-range (S)"
    g_mid = 0.5 * (true["g_min (S)"] + true["g_max (S)"])
    mean, se, n = measured_step_at(res, g_mid, up=False)
    assert n > 50 and mean < 0  # the traces pass the true mid-range, down steps negative
    # a "true" step half the measured one: the data themselves disagree with it
    half = Comparison(key, 0.5 * abs(mean), fitted[key])
    text = _explain(res, half, {**true, key: half.true}, fitted)
    assert f"the {n} measured steps at the true mid-range ({g_mid:.3g} S)" in text
    assert f"average {abs(mean):.3g}" in text
    assert "the measured devices differ from the true mean device" in text
    # the true step itself, a fitted value twice it: the data agree with the truth
    far = Comparison(key, true[key], 2 * true[key])
    text = _explain(res, far, true, {**fitted, key: far.fitted})
    assert "the measured devices differ" not in text and "the fitted model gives" in text


def test_a_far_up_down_is_explained_by_its_reference_point(chip_fit):
    """up_down is the asymmetry at w = 0, the centre of the measured devices' bounds: the
    explanation states that centre's standard error from the bound spreads over the
    devices, sd = sqrt(lo^2 + hi^2) / 2 / sqrt(n) (half-range units)."""
    import math

    res, _ = chip_fit
    truth = dict(CHIP_LIKE, up_down=res.params["up_down"] * 2 + 0.5)  # surely far
    rows = {r.parameter: r for r in compare_with_truth(res, spec_from_mapping(truth))}
    row = rows["up_down"]
    assert row.far
    n = res.data.n_dev
    se = 0.5 * math.hypot(res.params["w_min_dtod"] * abs(res.params["w_min"]),
                          res.params["w_max_dtod"] * res.params["w_max"]) / math.sqrt(n)
    assert f"the centre of the {n} measured devices' mean bounds" in row.explanation
    assert f"+- {se:.3f} of the half range" in row.explanation
