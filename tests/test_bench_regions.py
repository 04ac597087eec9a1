"""Regions of one chip: an algorithm's arrays A and C on disjoint blocks of the emulated
32 x 32 chip, through one instrument session (real pyvisa sockets on 127.0.0.1).

Where pulses land is read from the emulator's own per-device counter of fully selected
pulses (``EmulatedChip.selected_pulses``), not from the bench's bookkeeping.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from bench_yaml import bench_mapping

from rpuhw import open_array
from rpuhw.drivers.bench import _SESSIONS
from rpuhw.drivers.bench_config import bench_from_mapping, load_bench
from rpuhw.drivers.cli import _write_bench
from rpuhw.drivers.emulators import Emulator
from rpuhw.drivers.errors import InstrumentError
from rpuhw.errors import ConfigError

CHIP = 32
CONV1 = (16, 26)  # conv1 of the paper's network: 16 kernels x (25 weights + bias)


@pytest.fixture(scope="module")
def chip(tmp_path_factory):
    """The emulated 32 x 32 chip and the bench YAML ``rpuhw emulate --bench-out`` writes."""
    path = tmp_path_factory.mktemp("regions") / "bench.yaml"
    with Emulator(rows=CHIP, cols=CHIP, seed=0) as emu:
        _write_bench(emu, path)
        yield emu, path


def _outputs_on(emu) -> bool:
    return any(s.output for s in emu.chip.sources.values())


def _clients(emu, name: str) -> int:
    """Open connections to the emulated instrument ``name``."""
    deadline = time.monotonic() + 2  # a closed socket leaves the server's set shortly after
    while True:
        n = len(emu.servers[name]._clients)
        if n == 0 or time.monotonic() > deadline:
            return n
        time.sleep(0.02)


def test_emulate_writes_two_regions_that_hold_conv1(chip):
    _, path = chip
    cfg = load_bench(path)
    assert set(cfg.regions) == {"A", "C"}
    a, c = cfg.region("A"), cfg.region("C")
    assert a.rows == (0, 16) and c.rows == (16, 32) and a.cols == c.cols == (0, 32)
    assert a.shape[0] >= CONV1[0] and a.shape[1] >= CONV1[1] and c.shape == a.shape


def test_arrays_on_two_regions_share_one_session_and_hit_their_own_devices(chip):
    emu, path = chip
    before = emu.chip.selected_pulses.copy()
    a = open_array(f"bench:{path}#A", *CONV1)
    c = open_array(f"bench:{path}#C", *CONV1)
    try:
        assert a._session is c._session and len(_SESSIONS) == 1
        assert _clients(emu, "smu") == 1 and _clients(emu, "pulser") == 1  # opened once
        assert a.block() == (0, 16, 0, 26) and c.block() == (16, 32, 0, 26)
        counts = torch.zeros(CONV1, dtype=torch.int32)
        counts[0, 0] = 3
        a.pulse(counts)
        counts = torch.zeros(CONV1, dtype=torch.int32)
        counts[1, 2] = -5
        c.pulse(counts)
        got = emu.chip.selected_pulses - before
        want = np.zeros((CHIP, CHIP), dtype=np.int64)
        want[0, 0] = 3          # A's (0, 0) is chip (0, 0)
        want[16 + 1, 2] = 5     # C's (1, 2) is chip (17, 2)
        np.testing.assert_array_equal(got, want)
        # reads: each array sees its own block of the chip (read noise: 2 % of the range,
        # the hidden device's io.read_noise; 0.1 is > 8 sigma of one read)
        truth = emu.chip.weights()
        np.testing.assert_allclose(c.read().numpy(), truth[16:32, :26], atol=0.1)
        assert not _outputs_on(emu)
        a.close()  # the first to close: outputs off, the session stays for C
        assert not _outputs_on(emu) and not c._session.closed
        assert c.read().shape == CONV1
    finally:
        a.close()
        c.close()
    assert not _outputs_on(emu) and not _SESSIONS
    assert _clients(emu, "smu") == 0  # the last one closed the instruments


def test_an_error_in_one_array_turns_the_chip_off_and_the_other_goes_on(chip):
    emu, path = chip
    a = open_array(f"bench:{path}#A", *CONV1)
    c = open_array(f"bench:{path}#C", *CONV1)
    try:
        smu = emu.servers["smu"]
        smu.faults.error_after = smu.messages + 1  # the SMU reports an error mid-pulse
        with pytest.raises(InstrumentError):
            a.pulse(torch.ones(CONV1, dtype=torch.int32))
        assert not _outputs_on(emu) and emu.chip.hot_switches == 0
        assert c.read().shape == CONV1  # the shared session goes on for C
    finally:
        a.close()
        c.close()
    assert not _outputs_on(emu) and not _SESSIONS


def test_interpreter_exit_closes_the_shared_session(chip):
    """Two arrays left open at exit: outputs off, relays open, connections closed."""
    emu, path = chip
    script = (f"from rpuhw import open_array\n"
              f"import torch\n"
              f"a = open_array('bench:{path}#A', 16, 26)\n"
              f"c = open_array('bench:{path}#C', 16, 26)\n"
              f"a.pulse(torch.ones(16, 26, dtype=torch.int32))\n"
              f"keep = [a, c]\n")  # never closed: the atexit handler must do it
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not _outputs_on(emu) and emu.chip.closed == frozenset()  # relays open
    assert _clients(emu, "smu") == 0 and _clients(emu, "matrix") == 0


def test_overlapping_arrays_are_refused_naming_both(chip):
    emu, path = chip
    a = open_array(f"bench:{path}#A", *CONV1)
    try:
        with pytest.raises(ConfigError) as err:  # a second array on region A
            open_array(f"bench:{path}#A", 4, 4)
        msg = str(err.value)
        assert msg.count(f"bench:{path}#A") == 2 and "overlaps" in msg
        assert "chip rows 0-3, cols 0-3" in msg and "chip rows 0-15, cols 0-25" in msg
        with pytest.raises(ConfigError, match="overlaps"):  # the whole crossbar
            open_array(f"bench:{path}", CHIP, CHIP)
        assert a._session.claims and len(a._session.claims) == 1  # nothing left claimed
        # the other half is free: it opens, and the same chip's session is reused
        c = open_array(f"bench:{path}#C", 16, 32)
        assert c._session is a._session
        c.close()
    finally:
        a.close()
    assert not _outputs_on(emu) and not _SESSIONS


def test_same_chip_from_a_different_bench_is_refused(chip, tmp_path):
    _, path = chip
    data = yaml.safe_load(path.read_text())
    data["read"]["voltage"] = 0.1
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump(data))
    a = open_array(f"bench:{path}#A", *CONV1)
    try:
        with pytest.raises(ConfigError, match="different read") as err:
            open_array(f"bench:{other}#C", *CONV1)
        assert str(path) in str(err.value)
    finally:
        a.close()


@pytest.mark.parametrize("regions, key, words", [
    ({"A": {"rows": [0, 3], "cols": [0, 2]}}, "regions.A.rows", "inside the wired crossbar"),
    ({"A": {"rows": [0, 2], "cols": [1, 4]}}, "regions.A.cols", "STOP <= 3"),
    ({"A": {"rows": [1, 1], "cols": [0, 3]}}, "regions.A.rows", "START < STOP"),
    ({"A": {"rows": [0, 2]}}, "regions.A", "cols"),
    ({"A": {"rows": "0-2", "cols": [0, 3]}}, "regions.A.rows", "two integers"),
    ({"A B": {"rows": [0, 2], "cols": [0, 3]}}, "regions.A B", "region name"),
    ([1, 2], "regions", "expected a mapping"),
])
def test_bad_region_names_the_key(regions, key, words):
    m = bench_mapping(rows=2, cols=3)
    m["regions"] = regions
    with pytest.raises(ConfigError) as err:
        bench_from_mapping(m, source="b.yaml")
    assert err.value.key == key and words in str(err.value), str(err.value)


def test_unknown_region_lists_the_regions_and_contacts_nothing(chip, tmp_path):
    _, path = chip
    with pytest.raises(ConfigError) as err:
        open_array(f"bench:{path}#B", 4, 4)
    assert "unknown region 'B' (regions: A, C)" in str(err.value)
    with pytest.raises(ConfigError, match="does not fit the 16 x 32 region A"):
        open_array(f"bench:{path}#A", 17, 4)
    with pytest.raises(ConfigError, match="name a region after '#'"):
        open_array(f"bench:{path}#", 4, 4)
    assert not _SESSIONS


def _train(tmp_path: Path, bench: Path, c: str, a: str, *extra: str):
    out = tmp_path / "res.json"
    cmd = [sys.executable, "-m", "rpuhw.cli", "train", "--backend", "sim", "--algorithm", "tt",
           "--layer", f"conv1=bench:{bench}#{c}", "--layer", f"conv1.A=bench:{bench}#{a}",
           "--train-limit", "4", "--test-limit", "4", "--epochs", "1", "--batch-size", "1",
           "--update-granularity", "sample", "--seed", "0", "--no-progress",
           "--out", str(out), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return proc, out


def test_tiki_taka_conv1_with_a_and_c_on_the_chip(chip, tmp_path):
    emu, path = chip
    before = emu.chip.selected_pulses.copy()
    proc, out = _train(tmp_path, path, "C", "A")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(out.read_text())
    assert res["backends"]["conv1"] == f"bench:{path}#C"
    assert res["config"]["layers"]["conv1.A"] == f"bench:{path}#A"
    assert res["algorithms"]["conv1"] == "tt" and len(res["test_error"]) == 1
    got = emu.chip.selected_pulses - before
    # tt pulses A (gradient, every image) and C (transfers); set_weights writes both:
    # every selected pulse is inside conv1's 16 x 26 block of region A or of region C
    assert got[:16, :26].any() and got[16:32, :26].any()
    assert not got[:, 26:].any(), "pulses outside the two 16 x 26 blocks"
    assert not _outputs_on(emu) and emu.chip.hot_switches == 0
    assert _clients(emu, "smu") == 0


def test_train_with_a_and_c_on_one_region_exits_2_naming_both(chip, tmp_path):
    emu, path = chip
    proc, out = _train(tmp_path, path, "A", "A")
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].count(f"bench:{path}#A") == 2 and "overlaps" in lines[0]
    assert not out.exists() and not _outputs_on(emu)


def test_a_tiled_layer_takes_disjoint_blocks_of_its_region(chip):
    """A 16 x 26 layer split into 2 x 2 tiles (max_rows 8, max_cols 13) on region C:
    each tile sits at its place in the layer, offset from C's corner (chip row 16), so
    the four tiles are the four quarters of conv1's block, one session, no overlap; a
    pulse through the grid lands on the chip device of its layer position."""
    from rpuhw.schedule import LayerPlan, TileGrid

    emu, path = chip
    plan = LayerPlan(backend=f"bench:{path}#C", max_rows=8, max_cols=13)
    grid = TileGrid(*CONV1, plan)
    arrays = [per.array for row in grid.tiles for per in row]
    try:
        assert [a.block() for a in arrays] == [(16, 24, 0, 13), (16, 24, 13, 26),
                                               (24, 32, 0, 13), (24, 32, 13, 26)]
        assert len(_SESSIONS) == 1 and all(a._session is arrays[0]._session for a in arrays)
        before = emu.chip.selected_pulses.copy()
        counts = torch.zeros(CONV1, dtype=torch.int32)
        counts[9, 14] = 2   # tile (1, 1), its device (1, 1)
        counts[0, 0] = -1   # tile (0, 0), its device (0, 0)
        grid.pulse(counts)
        want = np.zeros((CHIP, CHIP), dtype=np.int64)
        want[16 + 9, 14] = 2
        want[16, 0] = 1
        np.testing.assert_array_equal(emu.chip.selected_pulses - before, want)
        truth = emu.chip.weights()  # the grid reads the chip's block in layer order
        np.testing.assert_allclose(grid.read().numpy(), truth[16:32, :26], atol=0.1)
    finally:
        for a in arrays:
            a.close()
    assert not _SESSIONS and not _outputs_on(emu)


def test_a_tile_outside_its_region_is_refused_naming_it(chip):
    from rpuhw.schedule import LayerPlan, TileGrid

    _, path = chip
    plan = LayerPlan(backend=f"bench:{path}#C", max_rows=10)  # tiles of 10 and 10 rows
    with pytest.raises(ConfigError, match=r"a 10 x 26 tile at rows 10-19, cols 0-25 of its "
                                          r"layer does not fit the 16 x 32 region C"):
        TileGrid(20, 26, plan)
    assert not _SESSIONS
