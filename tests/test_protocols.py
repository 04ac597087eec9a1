"""Characterisation protocols and `rpuhw characterize`: rows, resume, refusals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rpuhw import backends
from rpuhw.array import Capabilities, CrossPointArray
from rpuhw.backends import open_array
from rpuhw.calibration.measurements import MeasurementWriter, load_measurements, sidecar_path
from rpuhw.calibration.protocols import (
    check_array,
    parse_devices,
    pulse_response,
    pulse_response_plan,
    read_noise,
    run_plan,
    survey,
)
from rpuhw.cli import main
from rpuhw.errors import ConfigError
from rpuhw.ideal import IdealArray

pytestmark = pytest.mark.timeout(120)

DEV_YAML = """\
model: soft_bounds
dw_min: 0.01
dw_min_std: 0.3
dw_min_dtod: 0.1
w_min: -1.0
w_max: 1.0
w_min_dtod: 0.1
w_max_dtod: 0.1
read_noise: {read_noise}
conductance:
  g_min: 1.0e-6
  g_max: 1.0e-5
"""


def _keys(m):
    return list(zip(m.ids().tolist(), m.cycles().tolist(), m.polarity.tolist(),
                    m.pulse.tolist(), strict=True))


def _expected_keys(devices, cols, pulses, cycles):
    return {(i * cols + j, c, p, k) for i, j in devices for c in range(cycles)
            for p in (1, -1) for k in range(pulses + 1)}


def _no_dupes_no_gaps(m, devices, cols, pulses, cycles):
    keys = _keys(m)
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, f"duplicate rows {dupes[:5]}"
    assert set(keys) == _expected_keys(devices, cols, pulses, cycles)


# ---- parse_devices ---------------------------------------------------------------------

def test_parse_devices_all_list_and_count():
    assert parse_devices("all", 2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert parse_devices(" 1:2, 0:0 ", 2, 3) == [(1, 2), (0, 0)]
    for n in (1, 4, 7, 16, 63, 64):
        got = parse_devices(str(n), 8, 8)
        assert len(got) == n == len(set(got)) and got == parse_devices(str(n), 8, 8)
        assert all(0 <= i < 8 and 0 <= j < 8 for i, j in got)
    # up to min(rows, cols) devices: no two share a row or a column (no half-select
    # disturb among them), spread as a lattice, not along a diagonal
    assert parse_devices("4", 8, 8) == [(1, 1), (3, 7), (5, 5), (7, 3)]
    for n, size in ((8, 16), (16, 32), (7, 8)):
        got = parse_devices(str(n), size, size)
        assert len({i for i, _ in got}) == len({j for _, j in got}) == n
    sixteen = parse_devices("16", 32, 32)
    assert sum(i == j for i, j in sixteen) <= 4  # not the diagonal (16 on it)
    # more than that: a grid, away from the edges
    assert parse_devices("16", 8, 8)[:3] == [(1, 1), (1, 3), (1, 5)]
    assert parse_devices("3", 1, 9) == [(0, 1), (0, 4), (0, 7)]


@pytest.mark.parametrize("spec,words", [("0", "expected 1 to 6 devices"),
                                        ("7", "expected 1 to 6 devices"),
                                        ("a:b", "expected 'all', a count N"),
                                        ("1", None), ("2:0", "outside the 2 x 3 array"),
                                        ("0:3", "outside"), ("1:1,1:1", "listed twice"),
                                        ("1:1,", "expected 'all'"), ("-1:0", "outside")])
def test_parse_devices_errors_name_the_argument(spec, words):
    if words is None:
        assert parse_devices(spec, 2, 3) == [(1, 1)]  # the "1" device case is valid
        return
    with pytest.raises(ConfigError) as err:
        parse_devices(spec, 2, 3)
    assert "--devices" in str(err.value) and words in str(err.value)


# ---- arrays ------------------------------------------------------------------------------

class NoOps(CrossPointArray):
    """Neither pulses nor reads (every hook missing)."""

    capabilities = Capabilities()


class PulseOnly(CrossPointArray):
    capabilities = Capabilities(pulse=True)

    def _pulse(self, counts):
        pass


def test_refuses_arrays_that_cannot_pulse_or_read(tmp_path):
    with pytest.raises(ConfigError) as err:
        check_array(NoOps(2, 2))
    msg = str(err.value)
    assert "cannot pulse devices" in msg and "cannot read devices" in msg and "--array" in msg
    with pytest.raises(ConfigError, match="cannot read devices") as err:
        check_array(PulseOnly(2, 2))
    assert "cannot pulse" not in str(err.value)
    with MeasurementWriter(tmp_path / "m.csv", {}) as w:
        with pytest.raises(ConfigError, match="cannot be characterised"):
            pulse_response(NoOps(2, 2), [(0, 0)], 2, 1, w, progress=False)
        assert w.rows_written == 0


def test_ideal_steps_are_exactly_dw(tmp_path):
    arr = open_array("ideal", 2, 3)
    devices = [(0, 0), (1, 2), (0, 1)]
    path = tmp_path / "ideal.csv"
    with MeasurementWriter(path, {}) as w:
        n = pulse_response(arr, devices, pulses=5, cycles=2, writer=w, progress=False)
        w.finish()
    assert n == 3 * 2 * 2 * 6
    m = load_measurements(path)
    assert m.meta["settings"]["conductance_unit"] == "weight"
    assert m.meta["settings"]["protocol"] == "pulse-response" and m.meta["complete"]
    _no_dupes_no_gaps(m, devices, 3, 5, 2)
    assert m.row.tolist() == [d // 3 for d in m.ids()] and m.col.tolist() == \
        [d % 3 for d in m.ids()]
    assert (np.diff(m.time_s) >= 0).all()
    from rpuhw.calibration.measurements import steps

    st = steps(m)
    assert len(st) == 3 * 2 * 2
    for (_, _, pol), tr in st.items():
        assert tr.pulse.tolist() == [1, 2, 3, 4, 5]
        # float32 weights: steps equal dw up to float32 rounding (|w| <= 0.005, ulp < 1e-9)
        np.testing.assert_allclose(tr.after - tr.before, pol * 0.001, rtol=0, atol=1e-8)


def test_sim_pulse_response_in_weight_units():
    arr = open_array("sim", 3, 3, seed=0)
    devices = parse_devices("4", 3, 3)

    class Mem:  # an in-memory writer: the protocol needs write(), meta, existing
        meta: dict = {}
        existing = None

        def __init__(self):
            self.rows = []

        def write(self, rows):
            self.rows += rows
            return len(rows)

        def update_meta(self, **items):
            self.meta = {**self.meta, **items}

    w = Mem()
    pulse_response(arr, devices, pulses=30, cycles=1, writer=w, progress=False)
    rows = np.array(w.rows, dtype=float)
    assert len(rows) == 4 * 2 * 31
    assert w.meta["settings"]["conductance_unit"] == "weight"
    up = rows[rows[:, 5] > 0]
    down = rows[rows[:, 5] < 0]
    # constant_step defaults: 30 pulses of ~0.001 move each device up, then back down
    assert up[up[:, 4] == 30, 6].mean() > up[up[:, 4] == 0, 6].mean() + 0.01
    assert down[down[:, 4] == 30, 6].mean() < down[down[:, 4] == 0, 6].mean() - 0.01


def test_sim_yaml_conductance_in_siemens(tmp_path):
    dev = tmp_path / "dev.yaml"
    dev.write_text(DEV_YAML.format(read_noise=0.0))
    arr = open_array(f"sim:{dev}", 2, 2, seed=1)
    path = tmp_path / "m.csv"
    with MeasurementWriter(path, {}) as w:
        pulse_response(arr, [(0, 1), (1, 0)], pulses=10, cycles=1, writer=w, progress=False)
        w.finish()
    m = load_measurements(path)
    assert m.meta["settings"]["conductance_unit"] == "S"
    assert m.meta["settings"]["conductance_map"] == {"g_min": 1e-6, "g_max": 1e-5,
                                                     "w_min": -1.0, "w_max": 1.0}
    last = {int(d): g for d, g in zip(m.ids(), m.conductance, strict=True)}
    for (i, j), d in (((0, 1), 1), ((1, 0), 2)):  # no read noise: last row = final state
        assert last[d] == pytest.approx(float(arr.spec.w_to_g(arr.weights[i, j].double())),
                                        rel=1e-6)
    assert 1e-6 < m.conductance.min() and m.conductance.max() < 1e-5


def test_reads_only_the_chosen_devices_with_read_devices(tmp_path):
    class Picky(IdealArray):
        calls: list = []

        def read(self):
            raise AssertionError("read() must not be used when read_devices exists")

        def read_devices(self, indices):
            self.calls.append(list(indices))
            return torch.stack([self.weights[i, j] for i, j in indices])

    arr = Picky(3, 3)
    with MeasurementWriter(tmp_path / "m.csv", {}) as w:
        pulse_response(arr, [(2, 1), (0, 2)], pulses=3, cycles=1, writer=w, progress=False)
        w.finish()
    assert arr.calls and all(c == [(2, 1), (0, 2)] for c in arr.calls)
    m = load_measurements(tmp_path / "m.csv")
    assert m.conductance[(m.polarity == 1) & (m.pulse == 3)] == pytest.approx([0.003] * 2)


def test_read_noise_levels_and_rows(tmp_path):
    arr = IdealArray(2, 2)
    path = tmp_path / "n.csv"
    with MeasurementWriter(path, {}) as w:
        read_noise(arr, [(0, 0), (1, 1)], repeats=4, states=3, writer=w, pulses=10,
                   progress=False)
        w.finish()
    m = load_measurements(path)
    assert (m.polarity == 0).all() and len(m) == 2 * 3 * 4
    assert sorted(set(m.cycles().tolist())) == [0, 1, 2]
    assert sorted(set(m.pulse.tolist())) == [0, 1, 2, 3]
    for s, level in enumerate((-0.01, 0.0, 0.01)):  # centred on the start, 10 pulses apart
        np.testing.assert_allclose(m.conductance[m.cycles() == s], level, atol=1e-8)


def test_read_noise_on_sim_measures_the_read_noise(tmp_path):
    dev = tmp_path / "dev.yaml"
    dev.write_text(DEV_YAML.format(read_noise=0.01))
    arr = open_array(f"sim:{dev}", 2, 2, seed=3)
    path = tmp_path / "n.csv"
    with MeasurementWriter(path, {}) as w:
        read_noise(arr, [(0, 0), (1, 1)], repeats=50, states=3, writer=w, pulses=20,
                   progress=False)
        w.finish()
    m = load_measurements(path)
    w_read = arr.spec.g_to_w(m.conductance)
    groups = m.ids() * 10 + m.cycles()
    resid = np.concatenate([w_read[groups == g] - w_read[groups == g].mean()
                            for g in np.unique(groups)])
    sigma = np.sqrt((resid ** 2).sum() / (len(resid) - len(np.unique(groups))))
    # 294 degrees of freedom: the std estimate has relative SE 1/sqrt(2*294) = 4.1 %; 4 SE
    assert sigma == pytest.approx(0.01, rel=0.17)


def test_survey_measures_every_device(tmp_path):
    arr = IdealArray(2, 2)
    with MeasurementWriter(tmp_path / "s.csv", {}) as w:
        survey(arr, pulses=2, cycles=1, writer=w, progress=False)
        w.finish()
    m = load_measurements(tmp_path / "s.csv")
    _no_dupes_no_gaps(m, parse_devices("all", 2, 2), 2, 2, 1)


class _Stop(Exception):
    pass


def test_resume_completes_a_partial_step_without_pulsing_again(tmp_path):
    devices = [(0, 0), (1, 2), (0, 2)]
    ref_path = tmp_path / "ref.csv"
    with MeasurementWriter(ref_path, {}) as w:
        pulse_response(IdealArray(2, 3), devices, pulses=4, cycles=2, writer=w,
                       progress=False)
        w.finish()
    ref = load_measurements(ref_path)

    arr = IdealArray(2, 3)  # a physical array: keeps its state over the interruption
    path = tmp_path / "m.csv"
    w = MeasurementWriter(path, {})

    def stop_at(k):
        if k == 7:
            raise _Stop

    with pytest.raises(_Stop):
        run_plan(arr, devices, pulse_response_plan(4, 2), w, progress=False, on_step=stop_at)
    w.close()
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # killed between the reads of step 7's devices
    w = MeasurementWriter(path, {}, resume=True)
    assert len(w.existing) == 8 * 3 - 1
    pulse_response(arr, devices, pulses=4, cycles=2, writer=w, progress=False)
    w.finish()
    m = load_measurements(path)
    _no_dupes_no_gaps(m, devices, 3, 4, 2)
    # identical readings: a second pulse on the partial step would shift them by dw
    order, ref_order = np.lexsort(np.array(_keys(m)).T), np.lexsort(np.array(_keys(ref)).T)
    np.testing.assert_array_equal(m.conductance[order], ref.conductance[ref_order])
    assert (np.diff(m.time_s) >= 0).all()  # time continues from the interrupted run


# ---- rpuhw characterize ----------------------------------------------------------------

class SlowIdeal(IdealArray):
    """An ideal array whose reads take 2 ms (like an instrument) and that counts closes."""

    closed = 0

    def _read(self):
        time.sleep(0.002)
        return super()._read()

    def close(self):
        SlowIdeal.closed += 1


@pytest.fixture
def slow_backend(monkeypatch):
    SlowIdeal.closed = 0
    backends.register_backend("slow", lambda a, r, c, s: SlowIdeal(r, c), "slow")
    backends.register_backend("noops", lambda a, r, c, s: NoOps(r, c), "noops")
    yield
    backends.BACKENDS.remove("slow")
    backends.BACKENDS.remove("noops")


ARGS = ["--rows", "2", "--cols", "3", "--devices", "0:0,1:2", "--pulses", "4", "--cycles",
        "2", "--no-progress"]


def test_cli_measures_and_refuses_to_overwrite(tmp_path, slow_backend, capsys):
    out = tmp_path / "m.csv"
    assert main(["characterize", "--array", "slow", *ARGS, "-o", str(out)]) == 0
    assert SlowIdeal.closed == 1
    m = load_measurements(out)
    _no_dupes_no_gaps(m, [(0, 0), (1, 2)], 3, 4, 2)
    side = json.loads(sidecar_path(out).read_text())
    assert side["complete"] and side["settings"]["array"] == "slow"
    assert side["settings"]["devices"] == [[0, 0], [1, 2]] and side["instrument"]
    before = out.read_text()
    assert main(["characterize", "--array", "slow", *ARGS, "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rpuhw characterize: error:") and "--resume" in err
    assert "\n" not in err and out.read_text() == before
    assert main(["characterize", "--array", "slow", *ARGS, "-o", str(out), "--resume"]) == 0
    assert "already complete" in capsys.readouterr().out and out.read_text() == before


@pytest.mark.parametrize("extra,words", [
    (["--array", "slow", "--rows", "2", "--cols", "2", "--devices", "5"], "--devices"),
    (["--array", "nosuch", "--rows", "2", "--cols", "2"], "unknown array spec"),
    (["--array", "noops", "--rows", "2", "--cols", "2"], "cannot be characterised"),
    (["--array", "slow", "--rows", "0", "--cols", "2"], "--rows"),
    (["--array", "slow", "--rows", "2", "--cols", "2", "--pulses", "x"], "--pulses"),
    (["--array", "slow", "--cols", "2"], "--rows"),
    (["--array", "slow", "--rows", "2", "--cols", "2", "--resume"], "nothing to resume"),
])
def test_cli_bad_input_writes_nothing(tmp_path, slow_backend, capsys, extra, words):
    out = tmp_path / "m.csv"
    assert main(["characterize", *extra, "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rpuhw characterize: error:") and "\n" not in err
    assert words in err
    assert not out.exists() and not sidecar_path(out).exists()
    assert list(tmp_path.iterdir()) == []


def test_cli_closes_the_array_when_refused(tmp_path, slow_backend, monkeypatch):
    class Refused(NoOps):
        closes = 0

        def close(self):
            Refused.closes += 1

    backends.register_backend("refused", lambda a, r, c, s: Refused(r, c))
    try:
        assert main(["characterize", "--array", "refused", "--rows", "1", "--cols", "1", "-o",
                     str(tmp_path / "m.csv")]) == 2
    finally:
        backends.BACKENDS.remove("refused")
    assert Refused.closes == 1


def test_cli_resume_with_other_settings_is_refused(tmp_path, slow_backend, capsys):
    out = tmp_path / "m.csv"
    assert main(["characterize", "--array", "slow", *ARGS, "-o", str(out)]) == 0
    meta = json.loads(sidecar_path(out).read_text())
    meta["complete"] = False
    sidecar_path(out).write_text(json.dumps(meta))
    before = out.read_text()
    for flag, value in (("--pulses", "5"), ("--cycles", "3"), ("--devices", "1:2,0:0"),
                        ("--array", "ideal")):
        args = [*ARGS, "-o", str(out), "--resume", "--array", "slow"]
        if flag == "--array":
            args[-1] = value
        else:
            args[args.index(flag) + 1] = value
        assert main(["characterize", *args]) == 2
        err = capsys.readouterr().err
        assert flag in err and "m.json" in err, err
        assert out.read_text() == before


def test_cli_resume_after_sigkill(tmp_path, slow_backend):
    """A real process killed with SIGKILL mid-run; --resume completes the file."""
    out = tmp_path / "m.csv"
    args = ["--rows", "2", "--cols", "3", "--devices", "all", "--pulses", "150", "--cycles",
            "1", "--no-progress", "-o", str(out)]
    code = textwrap.dedent(f"""
        import sys, time
        from rpuhw import backends
        from rpuhw.ideal import IdealArray
        from rpuhw.cli import main

        class SlowIdeal(IdealArray):
            def _read(self):
                time.sleep(0.002)
                return super()._read()

        backends.register_backend("slow", lambda a, r, c, s: SlowIdeal(r, c))
        sys.exit(main(["characterize", "--array", "slow", *{args!r}]))
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if out.exists() and out.read_bytes().count(b"\n") > 120:
                break
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    side = json.loads(sidecar_path(out).read_text())
    assert side["complete"] is False
    kept = load_measurements(out, partial=True)
    assert 120 <= len(kept) < 6 * 302
    # this process's ideal array starts at zero, not where the killed one left the devices:
    # the resume is refused (tests/test_resume_checks.py) unless the jump is accepted
    resume = ["characterize", "--array", "slow", *args[:-2], "-o", str(out), "--resume"]
    assert main(resume) == 2
    assert main([*resume, "--accept-jump"]) == 0
    m = load_measurements(out)
    _no_dupes_no_gaps(m, parse_devices("all", 2, 3), 3, 150, 1)
    assert len(m) == 6 * 302 and m.meta["complete"] and len(m.meta["resumed"]) == 1
    assert m.meta["resumed"][0]["row"] == len(kept) and len(m.meta["resumed"][0]["jumps"]) == 6
