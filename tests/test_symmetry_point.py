"""Symmetry points (issue 18, item 3): rpuhw.symmetry.centre_on_symmetry_point, ``rpuhw
characterize --protocol symmetry-point`` and ``rpuhw symmetry-point``.

1. On ``sim`` with soft-bounds devices the symmetry point found for each device matches
   the analytical one, ``w* = (a_up - a_dn) / (a_up / b_max - a_dn / b_min)`` from the
   device's own steps ``a`` and bounds ``b`` (reference/algorithms.md section 6), within
   the settle tolerance (noise-free) or the standard error of the sampling (noisy).
2. The protocol through the CLI against the shipped bench emulator (real pyvisa-py
   sockets on 127.0.0.1), then ``rpuhw symmetry-point`` on its CSV.
3. Resume: an interrupted search continues to a file with every step exactly once; a
   re-opened simulator (the devices elsewhere) is refused with the jump.
4. Bad input: one line, exit 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rpuhw.calibration.measurements import MeasurementWriter, load_measurements, sidecar_path
from rpuhw.calibration.protocols import symmetry_point, symmetry_points_of
from rpuhw.cli import main
from rpuhw.device_spec import spec_from_mapping
from rpuhw.errors import ConfigError
from rpuhw.sim.array import SimulatedArray
from rpuhw.symmetry import (
    centre_on_symmetry_point,
    load_symmetry_points,
    relax_to_symmetry_points,
)

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = yaml.safe_load((ROOT / "drivers/emulators/hidden_device.yaml").read_text())


def _spec(**changes):
    data = {**HIDDEN, **changes}
    data["io"] = {**HIDDEN["io"], **changes.get("io", {})}
    return spec_from_mapping(data)


def _analytic(state) -> np.ndarray:
    """w* per device from the drawn steps and bounds (float64 [rows, cols])."""
    up, dn, lo, hi = (state[k].double().numpy() for k in ("dw_up", "dw_down", "w_min", "w_max"))
    return (up - dn) / (up / hi - dn / lo)


def _sampling_error(state, truth: np.ndarray, window: int) -> np.ndarray:
    """Standard error of the mean of ``window`` cycle means of a soft-bounds device at its
    symmetry point (n = 1), from its true parameters.

    Near w* a device is an AR(1) process: per cycle it relaxes by r = a_up / b_max -
    a_dn / b_min and gets pulse noise of variance q = (s a_up')^2 + (s a_dn')^2 (a' the
    steps at w*, s = dw_min_std); a cycle mean also has read noise of variance v =
    read_noise^2 / 2. The mean of K cycle means has the standard error
    sqrt((q / r^2 + v) / K) (the long-run variance; the finite-K correction only lowers
    it).
    """
    up, dn, lo, hi = (state[k].double().numpy() for k in ("dw_up", "dw_down", "w_min", "w_max"))
    a_up, a_dn = up * (1 - truth / hi), dn * (1 - truth / lo)
    r = up / hi - dn / lo
    q = (HIDDEN["dw_min_std"] * a_up) ** 2 + (HIDDEN["dw_min_std"] * a_dn) ** 2
    return np.sqrt((q / r**2 + HIDDEN["io"]["read_noise"] ** 2 / 2) / window)


def _error_line(err: str, prog: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), err
    assert "Traceback" not in err, err
    return lines[0]


# ---- 1. analytical symmetry points on sim ---------------------------------------------------


def test_noise_free_soft_bounds_settle_on_the_analytic_point():
    # no cycle-to-cycle noise, no read noise: the only errors are the lag of a device still
    # approaching w* when the criterion holds (the last window is off by at most
    # tol e^-Kr / (1 - e^-Kr) ~ 0.2 tol, K r ~ 1.7-2.3 here) and the alternation's own
    # offset, O(dw_min^2 / w_max) = 1e-5: so every device within tol = 0.5 dw_min.
    arr = SimulatedArray(4, 4, _spec(dw_min_std=0.0, io={"read_noise": 0.0}), seed=0)
    truth = _analytic(arr.state)
    res = centre_on_symmetry_point(arr)
    tol = res.settings.tol
    assert tol == pytest.approx(0.5 * HIDDEN["dw_min"])
    assert res.settled.all()
    sp = res.matrix().double().numpy()
    assert np.abs(sp - truth).max() < tol, (sp - truth)
    # the devices are left at their symmetry points: within one step of the alternation
    reached = res.matrix("reached").double().numpy()
    assert np.abs(reached - truth).max() < 1.5 * HIDDEN["dw_min"]
    # the cost is counted: one pulse per device per step, reads likewise
    assert res.pulses == int(res.device_pulses.sum()) and res.reads == res.pulses + 16
    assert res.pulse_calls == int(res.device_pulses.max())
    assert res.instrument == {}  # a simulator sends no instrument messages
    # the symmetry points differ from device to device by far more than the tolerance
    assert np.ptp(truth) > 20 * tol


def test_noisy_soft_bounds_match_within_the_sampling_error():
    # The hidden device itself (20 % cycle-to-cycle noise, read noise 0.002). The errors
    # divided by the sampling error of the last window (_sampling_error) are ~N(0, 1):
    # their rms over 36 devices is below 1.37 with probability 0.999 (chi-square, 36
    # degrees of freedom); the lag bias (< 0.2 tol = 2e-4) is < 0.1 of that error
    # (3.6e-3). Allowed: 1.6.
    arr = SimulatedArray(6, 6, _spec(), seed=1)
    truth = _analytic(arr.state)
    res = centre_on_symmetry_point(arr)
    se_true = _sampling_error(arr.state, truth, res.settings.window)
    err = res.matrix().double().numpy() - truth
    z = err / se_true
    assert np.sqrt(np.mean(z**2)) < 1.6, z
    # the reported standard errors are of that size (estimated from one window each:
    # within a factor 3 in the median)
    ratio = float(np.median(res.matrix("stderr").double().numpy() / se_true))
    assert 1 / 3 < ratio < 3, ratio
    # and the devices' own symmetry points are resolved: the spread between devices is
    # several times the error
    assert np.std(truth) > 3 * np.sqrt(np.mean(err**2))


def test_relax_whole_array_matches_within_the_sampling_error():
    # relax_to_symmetry_points (the algorithms' fast whole-array form): 3 K cycles from 0,
    # the mean of the last K. The same bound as above: the rms of err / sampling error
    # over 36 devices is below 1.37 with probability 0.999 (allowed 1.6). The lag: after
    # 2 K cycles from 0 a device is off by |w*| e^(-2 K r), and the window's mean by
    # |w*| e^(-2 K r) (1 - e^(-K r)) / (K r): with |w*| ~ 0.03, K r >= 1.7, about 5e-4,
    # 0.15 of the sampling error (3.6e-3).
    arr = SimulatedArray(6, 6, _spec(), seed=1)
    arr.set_weights(torch.zeros(6, 6))
    truth = _analytic(arr.state)
    res = relax_to_symmetry_points(arr)
    assert res.cycles == 3 * res.window and res.reads == 2 * res.window
    assert res.pulses == 2 * res.cycles * 36
    se_true = _sampling_error(arr.state, truth, res.window)
    err = res.symmetry_point.double().numpy() - truth
    assert np.sqrt(np.mean((err / se_true) ** 2)) < 1.6, err / se_true
    assert np.std(truth) > 3 * np.sqrt(np.mean(err**2))
    # too few cycles to relax: the mean of the reads is still near the start (0), far off
    short = SimulatedArray(6, 6, _spec(dw_min_std=0.0, io={"read_noise": 0.0}), seed=1)
    short.set_weights(torch.zeros(6, 6))
    quick = relax_to_symmetry_points(short, window=2, cycles=2)
    assert np.abs(quick.symmetry_point.double().numpy() - truth).max() > 0.01


# ---- 2. the protocol through the CLI on the emulated bench ----------------------------------


@pytest.mark.timeout(240)
def test_characterize_symmetry_point_on_the_emulated_bench(tmp_path, capsys):
    from rpuhw.drivers.emulators import Emulator

    bench, out, sp_file = tmp_path / "bench.yaml", tmp_path / "sp.csv", tmp_path / "sp.json"
    args = ["characterize", "--array", f"bench:{bench}", "--rows", "8", "--cols", "8",
            "--devices", "2", "--protocol", "symmetry-point", "--no-progress", "-o", str(out)]
    with Emulator(rows=8, cols=8, seed=2) as emu:
        emu.write_bench(bench)
        truth = _analytic(emu.chip.array.state)
        se_true = _sampling_error(emu.chip.array.state, truth, 286)
        assert main(args) == 0
        assert not emu.chip.any_output_on()
    text = capsys.readouterr().out
    assert "devices, symmetry-point)" in text and "instrument messages" in text, text
    m = load_measurements(out)
    side = json.loads(sidecar_path(out).read_text())
    assert side["complete"] and side["settings"]["protocol"] == "symmetry-point"
    assert side["settings"]["pulses_per_half"] == 1
    # the defaults from the bench's weights map: (0.6 + 0.6) / 0.0021 / 2 = 286 cycles
    assert side["settings"]["window_cycles"] == 286
    assert side["settings"]["max_pulses_per_device"] == 20 * 286
    keys = list(zip(m.ids().tolist(), m.cycles().tolist(), m.polarity.tolist(),
                    m.pulse.tolist(), strict=True))
    assert len(keys) == len(set(keys))  # every step of every device once
    for d in set(m.ids().tolist()):
        mine = [k[1:] for k in keys if k[0] == d]
        assert mine[0] == (0, 1, 0)  # the initial read, then up, down alternating
        assert all(p == (1 if n % 2 else -1) for n, (_, p, _) in enumerate(mine) if n)
        assert 2 * 2 * 286 <= len(mine) - 1 <= 20 * 286  # two windows at least, max at most

    assert main(["symmetry-point", str(out), "-o", str(sp_file)]) == 0  # all settled
    data = json.loads(sp_file.read_text())
    devs = data["devices"]
    assert len(devs) == 2 and data["conductance_unit"] == "S"
    lo, hi = side["settings"]["conductance_map"]["w_min"], \
        side["settings"]["conductance_map"]["w_max"]
    for e in devs:
        assert e["settled"] and 0 < e["stderr"] < 0.05 * (hi - lo)
        # the bench's pulses are the chip's (every pulse at the nominal amplitude is
        # effective): the symmetry point of the device behind it, within 4.5 sampling
        # errors (two-sided 7e-6 per device) plus the lag bias (0.2 tol = 2e-4)
        i, j = e["row"], e["col"]
        assert abs(e["symmetry_point"] - truth[i, j]) < 4.5 * se_true[i, j] + 2e-4, \
            (e, truth[i, j], se_true[i, j])
    grid = load_symmetry_points(sp_file)
    assert grid.shape == (8, 8) and int(np.isfinite(grid.numpy()).sum()) == 2


# ---- 3. resume ----------------------------------------------------------------------------


class _StopAfter(MeasurementWriter):
    """A writer whose ``limit``-th write is a Ctrl-C (after its rows are on disk)."""

    limit = 10**9

    def write(self, rows):
        n = super().write(rows)
        _StopAfter.limit -= 1
        if _StopAfter.limit <= 0:
            raise KeyboardInterrupt
        return n


def test_an_interrupted_search_resumes_to_every_step_once(tmp_path):
    spec = _spec()
    arr = SimulatedArray(3, 3, spec, seed=4)  # keeps its state: a physical array
    devices = [(0, 0), (1, 2), (2, 1)]
    path = tmp_path / "sp.csv"
    _StopAfter.limit = 150
    w = _StopAfter(path, {})
    with pytest.raises(KeyboardInterrupt):
        symmetry_point(arr, devices, w, progress=False)
    w.close()
    kept = load_measurements(path, partial=True)
    assert len(kept) == 150 * 3  # no device settles within 2 x 286 cycles

    fresh = SimulatedArray(3, 3, spec, seed=5)  # another chip, its devices elsewhere
    fresh.set_weights(torch.full((3, 3), 0.3))
    before = (path.read_bytes(), sidecar_path(path).read_bytes())
    w = MeasurementWriter(path, {}, resume=True)
    with pytest.raises(ConfigError, match="jump of"):
        symmetry_point(fresh, devices, w, progress=False)
    w.close()
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before

    _StopAfter.limit = 10**9
    w = MeasurementWriter(path, {}, resume=True)
    res = symmetry_point(arr, devices, w, progress=False)
    w.finish()
    m = load_measurements(path)
    assert m.meta["complete"] and m.meta["resumed"][0]["jumps"] == {}
    keys = list(zip(m.ids().tolist(), m.cycles().tolist(), m.polarity.tolist(),
                    m.pulse.tolist(), strict=True))
    assert len(keys) == len(set(keys))
    assert res.settled.all()
    # the resumed search carried the reads of before: its pulses count both parts, and
    # the analysis of the file gives the same symmetry points as the search
    assert int(res.device_pulses.sum()) == len(m) - 3
    data = symmetry_points_of(m)
    got = {(e["row"], e["col"]): e["symmetry_point"] for e in data["devices"]}
    for n, dev in enumerate(devices):
        # the file holds conductances: the round trip through the map costs ~1e-16 relative
        assert got[dev] == pytest.approx(res.symmetry_point[n], abs=1e-9)


# ---- 4. bad input -------------------------------------------------------------------------


def test_unknown_protocol_lists_the_allowed_ones(tmp_path, capsys):
    out = tmp_path / "x.csv"
    assert main(["characterize", "--array", "sim", "--rows", "2", "--cols", "2",
                 "--protocol", "symmetric", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    _error_line(err, "rpuhw characterize")
    assert "invalid choice: 'symmetric'" in err and "'symmetry-point'" in err
    assert "'pulse-response'" in err and "'read-noise'" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("extra, key", [
    (["--protocol", "pulse-response", "--window", "10"], "--window"),
    (["--protocol", "symmetry-point", "--window", "0"], "--window"),
    (["--protocol", "symmetry-point", "--settle-tol", "-1"], "--settle-tol"),
    (["--protocol", "symmetry-point", "--pulses", "3", "--max-pulses", "5"], "--max-pulses"),
])
def test_bad_symmetry_point_options_are_one_line_exit_2(tmp_path, capsys, extra, key):
    out = tmp_path / "x.csv"
    assert main(["characterize", "--array", "sim", "--rows", "2", "--cols", "2", *extra,
                 "-o", str(out)]) == 2
    line = _error_line(capsys.readouterr().err, "rpuhw characterize")
    assert f"'{key}'" in line, line
    assert not out.exists() and not sidecar_path(out).exists()


def test_symmetry_point_command_refuses_another_protocol(tmp_path, capsys):
    out = tmp_path / "pr.csv"
    assert main(["characterize", "--array", "sim", "--rows", "2", "--cols", "2", "--pulses",
                 "5", "--no-progress", "-o", str(out)]) == 0
    target = tmp_path / "sp.yaml"
    assert main(["symmetry-point", str(out), "-o", str(target)]) == 2
    line = _error_line(capsys.readouterr().err, "rpuhw symmetry-point")
    assert "pulse-response measurement" in line and not target.exists()
