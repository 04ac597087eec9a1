"""``--pulses auto``, ``--reads-per-step`` and the read-noise block first (issue 19, item 1).

1. On ``sim:`` with the demo's hidden soft-bounds device and on the emulated chip (the
   shipped bench through real pyvisa-py sockets on 127.0.0.1), every half-cycle stops
   saturated, near the device's own bound (tolerance derived from the rule below).
2. A device that never saturates stops at the budget and is reported as not saturated.
3. Resume: an interrupted auto run (cut between two reads of one pulse) continues to the
   same rows as an uninterrupted one on a deterministic array.
4. Resume of a file written before the ``read`` column and the new settings.
5. Bad input: one line, exit 2, nothing written.

Tolerance of "near the bound": the rule stops when the line's drift over the window is at
most ``k sigma`` (``sigma`` the read noise of a per-pulse mean); the drift estimate has the
standard deviation ``0.43 sigma`` at W = 64 (calibration/saturation.py), so the true drift
at the stop is below ``(1 + 5 x 0.43) sigma = 3.15 sigma`` but with a probability of
~3e-7 per check. A soft-bounds device at distance ``x`` from its bound ``b`` steps by
``a x / |b|`` (``a`` its own step at 0), so the drift over ``W - 1`` pulses is
``(W - 1) a x / |b|``: ``x <= 3.15 sigma |b| / ((W - 1) a)``. The end level is the mean of
the last 16 reads (standard error ``sigma / 4``; 4 of them allowed).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rpuhw import open_array
from rpuhw.calibration.measurements import (
    OLD_COLUMNS,
    MeasurementWriter,
    load_measurements,
    sidecar_path,
)
from rpuhw.calibration.protocols import parse_devices, pulse_response_auto
from rpuhw.calibration.saturation import SaturationRule, half_cycle_ends
from rpuhw.cli import main

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = ROOT / "drivers/emulators/hidden_device.yaml"
W = SaturationRule().window


def _tolerance(state, i: int, j: int, polarity: int, sigma: float) -> float:
    """Largest distance (weight units) from the bound at a stop (module docstring)."""
    a = float(state["dw_up" if polarity > 0 else "dw_down"][i, j])
    b = float(state["w_max" if polarity > 0 else "w_min"][i, j])
    return 3.15 * sigma * abs(b) / ((W - 1) * abs(a)) + 4 * sigma / 4


def _conductance(side):
    """The sidecar's weight -> conductance map and its slope (S per weight unit)."""
    cmap = side["settings"]["conductance_map"]
    slope = (cmap["g_max"] - cmap["g_min"]) / (cmap["w_max"] - cmap["w_min"])
    return (lambda w: cmap["g_min"] + (w - cmap["w_min"]) * slope), slope


def _end_levels(m, code: int, cycle: int, polarity: int, last: int = 16) -> float:
    sel = (m.device == code) & (m.cycles() == cycle) & (m.polarity == polarity)
    k = m.pulse[sel]
    return float(m.conductance[sel][k > k.max() - last].mean())


def _keys(m):
    return list(zip(m.ids().tolist(), m.cycles().tolist(), m.polarity.tolist(),
                    m.pulse.tolist(), m.reads().tolist(), strict=True))


def _contiguous(m, reads: int) -> None:
    """Every half-cycle of every device has pulses 0..n, each with reads 0..K-1, once."""
    keys = _keys(m)
    assert not [k for k, n in Counter(keys).items() if n > 1], "duplicate rows"
    halves: dict[tuple[int, int, int], set[tuple[int, int]]] = {}
    for d, c, p, k, r in keys:
        if p:
            halves.setdefault((d, c, p), set()).add((k, r))
    for key, got in halves.items():
        n = max(k for k, _ in got)
        assert got == {(k, r) for k in range(n + 1) for r in range(reads)}, key


# ---- 1. both bounds reached -------------------------------------------------------------


def test_auto_reaches_both_bounds_on_sim(tmp_path):
    arr = open_array(f"sim:{HIDDEN}", 6, 6, seed=3)
    devices = parse_devices("4", 6, 6)
    path = tmp_path / "auto.csv"
    with MeasurementWriter(path, {}) as w:
        pulse_response_auto(arr, devices, w, max_pulses=4000, cycles=2, reads=2,
                            noise_reads=50, progress=False)
        w.finish()
    m = load_measurements(path)
    side = json.loads(sidecar_path(path).read_text())
    assert side["settings"]["pulses_per_direction"] == "auto"
    assert side["settings"]["saturation"] == {"window": 64, "k_sigma": 1.0}
    stops = side["stops"]
    assert len(stops) == 4 * 2 * 2 and all(e["saturated"] for e in stops), stops
    assert all(W <= e["pulses"] < 4000 for e in stops)
    _contiguous(m, reads=2)
    noise = m.polarity == 0
    assert noise.sum() == 4 * 50 and set(m.pulse[noise].tolist()) == set(range(50))
    # the file says the same as the live decisions
    ends = half_cycle_ends(m)
    assert [(int(m.device_name(e["device"])), e["cycle"], e["polarity"], e["pulses"],
             e["saturated"]) for e in ends] == sorted(
        (e["device"], e["cycle"], e["polarity"], e["pulses"], e["saturated"]) for e in stops)
    sigma = 0.002  # the hidden device's io.read_noise (weight units)
    to_g, slope = _conductance(side)  # its conductance: block: rows in siemens
    for code, d in enumerate(m.device_ids):
        i, j = divmod(int(d), 6)
        for c in range(2):
            for p in (1, -1):
                bound = to_g(float(arr.state["w_max" if p > 0 else "w_min"][i, j]))
                tol = _tolerance(arr.state, i, j, p, sigma / np.sqrt(2)) * slope
                assert abs(_end_levels(m, code, c, p) - bound) < tol, (d, c, p, bound, tol)


@pytest.mark.timeout(240)
def test_auto_reaches_both_bounds_on_the_emulated_bench(tmp_path, capsys):
    from rpuhw.drivers.emulators import Emulator

    bench, out = tmp_path / "bench.yaml", tmp_path / "auto.csv"
    args = ["characterize", "--array", f"bench:{bench}", "--rows", "8", "--cols", "8",
            "--devices", "2", "--pulses", "auto", "--max-pulses", "3000", "--no-progress",
            "-o", str(out)]
    with Emulator(rows=8, cols=8, seed=4) as emu:
        emu.write_bench(bench)
        state = {k: v.clone() for k, v in emu.chip.array.state.items()}
        assert main(args) == 0
        assert not emu.chip.any_output_on()
    text = capsys.readouterr().out
    assert "both in every cycle for 2 of 2 devices" in text, text
    m = load_measurements(out)
    side = json.loads(sidecar_path(out).read_text())
    st = side["settings"]
    assert st["read_noise_reads"] == 50 and st["reads_per_step"] == 1  # bench default
    assert (m.polarity == 0).sum() == 2 * 50
    assert all(e["saturated"] for e in side["stops"]) and len(side["stops"]) == 4
    to_g, slope = _conductance(side)
    for code, d in enumerate(m.device_ids):
        i, j = divmod(int(d), 8)
        for p in (1, -1):
            g_bound = to_g(float(state["w_max" if p > 0 else "w_min"][i, j]))
            tol = _tolerance(state, i, j, p, 0.002) * slope
            assert abs(_end_levels(m, code, 0, p) - g_bound) < tol, (d, p, g_bound, tol)


# ---- 2. the budget -----------------------------------------------------------------------

FAR_BOUNDS = """model: constant_step
dw_min: 0.001
w_min: -100.0
w_max: 100.0
io:
  read_noise: 0.0005
"""


def test_a_device_that_never_saturates_stops_at_the_budget(tmp_path, capsys):
    dev = tmp_path / "far.yaml"
    dev.write_text(FAR_BOUNDS)
    out = tmp_path / "far.csv"
    assert main(["characterize", "--array", f"sim:{dev}", "--rows", "2", "--cols", "2",
                 "--devices", "0:1", "--pulses", "auto", "--max-pulses", "150",
                 "--no-progress", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "both in every cycle for 0 of 1 devices" in text
    assert "150 NO" in text
    side = json.loads(sidecar_path(out).read_text())
    assert [(e["pulses"], e["saturated"]) for e in side["stops"]] == [(150, False)] * 2
    m = load_measurements(out)
    assert m.read is None and (m.polarity == 0).sum() == 0  # sim: no read-noise block


# ---- 3. resume ---------------------------------------------------------------------------


class _Cut(Exception):
    pass


class _CutWriter(MeasurementWriter):
    """Stops the run (like a kill) after ``cut`` write calls."""

    cut = 10**9

    def write(self, rows):
        n = super().write(rows)
        type(self).cut -= 1
        if type(self).cut <= 0:
            raise _Cut
        return n


EXACT = """model: constant_step
dw_min: 0.002
dw_min_dtod: 0.0
dw_min_std: 0.0
up_down_dtod: 0.0
w_min: -0.2
w_max: 0.2
w_min_dtod: 0.0
w_max_dtod: 0.0
"""
"""Exact steps between hard bounds, no noise: a deterministic device (100 pulses from 0 to
w_max, 200 from w_max to w_min)."""


def test_resume_of_an_auto_run_gives_the_uninterrupted_rows(tmp_path):
    """A run on deterministic devices cut between the two reads of one pulse and resumed
    on the same array has the rows of an uninterrupted run."""
    dev = tmp_path / "exact.yaml"
    dev.write_text(EXACT)
    devices = [(0, 0), (1, 1)]
    ref = tmp_path / "ref.csv"
    arr = open_array(f"sim:{dev}", 2, 2, seed=0)
    with MeasurementWriter(ref, {}) as w:
        pulse_response_auto(arr, devices, w, max_pulses=2500, cycles=1, reads=2,
                            progress=False)
        w.finish()
    path = tmp_path / "cut.csv"
    arr = open_array(f"sim:{dev}", 2, 2, seed=0)
    # up: pulse 0 and 100 + W - 1 pulses, 2 reads each (2 x 164 writes); then 20 pulses
    # of the down half-cycle and read 0 of the 21st
    _CutWriter.cut = 2 * (100 + W) + 2 * 21 + 1
    w = _CutWriter(path, {})
    with pytest.raises(_Cut):
        pulse_response_auto(arr, devices, w, max_pulses=2500, cycles=1, reads=2,
                            progress=False)
    w.close()
    kept = load_measurements(path, partial=True)
    assert kept.reads()[-1] == 0 and kept.polarity[-1] == -1  # cut between two reads
    _CutWriter.cut = 10**9
    w = MeasurementWriter(path, {}, resume=True)
    pulse_response_auto(arr, devices, w, max_pulses=2500, cycles=1, reads=2, progress=False)
    w.finish()
    a, b = load_measurements(ref), load_measurements(path)
    assert _keys(a) == _keys(b)
    np.testing.assert_array_equal(a.conductance, b.conductance)
    sa, sb = (json.loads(sidecar_path(p).read_text())["stops"] for p in (ref, path))
    assert sa == sb and all(e["saturated"] for e in sa)
    # each half-cycle ends at its bound, at most W pulses after reaching it (no noise: the
    # line through a window that ends on the flat part has a drift at most its residuals)
    for p, bound in ((1, 0.2), (-1, -0.2)):
        sel = (a.device == 0) & (a.polarity == p) & (a.reads() == 0)
        g = a.conductance[sel]
        assert g[-1] == pytest.approx(bound, abs=1e-6)
        at_bound = int(np.sum(np.abs(g - bound) < 1e-6))
        assert 1 <= at_bound <= W, (p, at_bound)


def test_fixed_pulses_with_k_reads_and_the_noise_block_resume(tmp_path):
    """``--pulses N --reads-per-step 2`` after the read-noise block: cut between two reads
    of one pulse, resumed on the same (deterministic) array, the rows are those of an
    uninterrupted run; the block's rows are read-noise rows (polarity 0, cycle 0)."""
    from rpuhw.calibration.protocols import pulse_response

    dev = tmp_path / "exact.yaml"
    dev.write_text(EXACT)
    devices = [(0, 1), (1, 0)]

    def run(path, writer_cls, resume=False):
        arr = open_array(f"sim:{dev}", 2, 2, seed=0)
        w = writer_cls(path, {})
        with pytest.raises(_Cut) if writer_cls is _CutWriter else _no_raise():
            pulse_response(arr, devices, 30, 2, w, progress=False, reads=2, noise_reads=5)
        w.close()
        return arr

    ref = tmp_path / "ref.csv"
    run(ref, MeasurementWriter)
    path = tmp_path / "cut.csv"
    _CutWriter.cut = 5 + 2 * 31 + 2 * 7 + 1  # block, up half, down pulses 0-6, read 0 of 7
    arr = run(path, _CutWriter)
    _CutWriter.cut = 10**9
    kept = load_measurements(path, partial=True)
    assert kept.reads()[-1] == 0 and kept.polarity[-1] == -1 and kept.pulse[-1] == 7
    w = MeasurementWriter(path, {}, resume=True)
    pulse_response(arr, devices, 30, 2, w, progress=False, reads=2, noise_reads=5)
    w.close()
    a, b = load_measurements(ref), load_measurements(path)
    assert _keys(a) == _keys(b)
    np.testing.assert_array_equal(a.conductance, b.conductance)
    block = a.polarity == 0
    assert block.sum() == 2 * 5 and set(a.cycles()[block].tolist()) == {0}
    assert a.read.max() == 1 and a.meta["settings"]["reads_per_step"] == 2


class _no_raise:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_cli_resume_of_an_auto_run(tmp_path, capsys):
    dev = tmp_path / "exact.yaml"
    dev.write_text(EXACT)
    out = tmp_path / "a.csv"
    args = ["characterize", "--array", f"sim:{dev}", "--rows", "2", "--cols", "2",
            "--devices", "2", "--pulses", "auto", "--max-pulses", "2500",
            "--reads-per-step", "2", "--no-progress", "-o", str(out)]
    assert main(args) == 0
    full = load_measurements(out)
    # cut the file as a kill would (mid-run, last line half written) and resume it
    lines = out.read_text().splitlines(keepends=True)
    out.write_text("".join(lines[:701]) + lines[701][:7])
    side = json.loads(sidecar_path(out).read_text())
    side["complete"] = False
    side.pop("stops")
    sidecar_path(out).write_text(json.dumps(side))
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2  # a re-opened simulator: its devices are at 0
    assert "not where the interrupted run left them" in capsys.readouterr().err
    assert main([*args, "--resume", "--accept-jump"]) == 0
    m = load_measurements(out)
    _contiguous(m, reads=2)
    assert m.meta["complete"] and len(m.meta["stops"]) == len(full.meta["stops"])
    assert all(e["saturated"] for e in m.meta["stops"])
    assert len(m.meta["resumed"]) == 1 and m.meta["resumed"][0]["row"] == 700
    # another --reads-per-step than the run's is refused
    other = [a if a != "2" or args[n - 1] != "--reads-per-step" else "3"
             for n, a in enumerate(args)]
    assert main([*other, "--resume"]) == 2
    assert "--reads-per-step" in capsys.readouterr().err


def test_resume_of_a_file_written_before_the_read_column(tmp_path, capsys):
    """An old run (old header, sidecar without reads_per_step / read_noise_reads) resumes
    with the same command line as before."""
    out = tmp_path / "old.csv"
    args = ["characterize", "--array", "ideal", "--rows", "2", "--cols", "2", "--devices",
            "2", "--pulses", "20", "--no-progress", "-o", str(out)]
    assert main(args) == 0
    full = load_measurements(out)
    lines = out.read_text().splitlines()
    old = [",".join(OLD_COLUMNS)] + [ln.rsplit(",", 1)[0] for ln in lines[1:40]]
    out.write_text("\n".join(old) + "\n")
    side = json.loads(sidecar_path(out).read_text())
    side["complete"] = False
    for key in ("reads_per_step", "read_noise_reads"):
        side["settings"].pop(key)
    side["columns"] = list(OLD_COLUMNS)
    sidecar_path(out).write_text(json.dumps(side))
    # ideal re-opened at 0 while the file's last rows are elsewhere: accept the jump
    assert main([*args, "--resume", "--accept-jump"]) == 0, capsys.readouterr().err
    text = out.read_text().splitlines()
    assert text[0] == ",".join(OLD_COLUMNS) and {t.count(",") for t in text} == {8}
    m = load_measurements(out)
    assert _keys(m) == _keys(full) and m.meta["complete"]


# ---- 5. bad input ------------------------------------------------------------------------


@pytest.mark.parametrize("extra,words", [
    (["--pulses", "abc"], "--pulses': expected a positive integer or 'auto', got 'abc'"),
    (["--pulses", "0"], "--pulses': expected a positive integer or 'auto'"),
    (["--pulses", "auto", "--reads-per-step", "0"], "--reads-per-step': expected a positive"),
    (["--pulses", "auto", "--max-pulses", "0"], "--max-pulses': expected a positive"),
    (["--pulses", "50", "--max-pulses", "100"], "--max-pulses': applies to"),
    (["--protocol", "read-noise", "--pulses", "auto"], "--pulses': expected a positive integer"),
    (["--protocol", "read-noise", "--reads-per-step", "2"], "--reads-per-step': applies to"),
    (["--protocol", "symmetry-point", "--no-read-noise-first"], "--read-noise-first': applies"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys, extra, words):
    out = tmp_path / "m.csv"
    code = main(["characterize", "--array", "sim", "--rows", "2", "--cols", "2",
                 "--no-progress", "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and words in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_many_devices_get_a_compact_summary(tmp_path, capsys):
    out = tmp_path / "m.csv"
    assert main(["characterize", "--array", "sim", "--rows", "5", "--cols", "5",
                 "--pulses", "auto", "--max-pulses", "80", "--seed", "1", "--no-progress",
                 "-o", str(out)]) == 0
    text = capsys.readouterr().out.splitlines()
    # sim's devices need hundreds of steps of ~0.001 to their bounds near +-0.6: none
    # saturates within 80 pulses
    assert text[1].endswith("both in every cycle for 0 of 25 devices")
    assert text[2] == "  upper bound: reached by 0 of 25 devices; pulses 80-80 (median 80); " \
        "not reached: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ..."
    assert text[3].startswith("  lower bound: reached by 0 of 25 devices")
    assert len(text) == 4
