"""BenchArray on the shipped emulators through real pyvisa-py sockets.

Reads must equal the hidden chip's weights within its read noise, pulses must move
exactly the addressed device by its count (and half-selected ones only by the
bias scheme's disturb), for every bench the emulator can serve: 2600B with and
without TSP-Link, two 2450s, V/2 and V/3, a pulse generator or the 2600B's sense
channel as pulse source. The end-to-end check runs
``rpuhw emulate`` as a separate process and opens ``bench:BENCH.yaml``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from rpuhw import open_array
from rpuhw.device_spec import ConductanceMap, DeviceSpec
from rpuhw.devices import get_model
from rpuhw.drivers.bench import BenchArray
from rpuhw.drivers.bench_config import bench_from_mapping
from rpuhw.drivers.emulators import Emulator, PulsePhysics

pytestmark = pytest.mark.timeout(120)
ROWS, COLS = 3, 4


def _linear_device() -> DeviceSpec:
    """Constant steps without spreads or noise, bounds far away: a pulse count is visible
    exactly."""
    cls = get_model("constant_step")
    model = cls(cls.Params(dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, w_min=-10.0,
                           w_max=10.0, w_min_dtod=0.0, w_max_dtod=0.0, up_down_dtod=0.0))
    return DeviceSpec(model=model, conductance=ConductanceMap(g_min=5e-5, g_max=1.5e-4))


def _tol(emu: Emulator) -> float:
    # 6 sigma of the read noise (weight units) + the 6-digit current print (~1e-6 weight)
    return 6 * emu.spec.io.read_noise + 1e-5


VARIANTS = [dict(smu="2600b", tsp_link=True), dict(smu="2600b", tsp_link=False),
            dict(smu="2450"), dict(smu="2600b", tsp_link=True, bias_scheme="v/3"),
            dict(smu="2600b", tsp_link=True, pulse_source="smu"),
            dict(smu="2600b", tsp_link=False, pulse_source="smu")]
IDS = ["2600b-tsplink", "2600b", "2450", "2600b-v3", "2600b-tsplink-smupulse",
       "2600b-smupulse"]


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_reads_match_the_hidden_chip(variant):
    with Emulator(rows=ROWS, cols=COLS, seed=3, **variant) as emu, \
            BenchArray(bench_from_mapping(emu.bench_config())) as bench:
        w = bench.read()
        truth = torch.as_tensor(emu.chip.weights(), dtype=torch.float32)
        assert (w - truth).abs().max() <= _tol(emu)
        # the chip's initial state is spread, so a routing error cannot read right
        assert truth.std() > 10 * _tol(emu)
        sub = bench.read_devices([(2, 1), (0, 3)])
        assert (sub - truth[[2, 0], [1, 3]]).abs().max() <= _tol(emu)
        assert emu.chip.hot_switches == 0


@pytest.mark.parametrize("variant", VARIANTS, ids=IDS)
def test_pulses_move_the_addressed_devices(variant):
    # threshold 0.7 V: V/2 = 0.6 V and V/3 = 0.4 V leave half-selected devices alone
    with Emulator(_linear_device(), rows=ROWS, cols=COLS, physics=PulsePhysics(v_min=0.7),
                  **variant) as emu, BenchArray(bench_from_mapping(emu.bench_config())) as b:
        before = emu.chip.weights()
        counts = torch.zeros(ROWS, COLS, dtype=torch.int32)
        counts[0, 1], counts[2, 3], counts[1, 0] = 5, -3, 1
        b.pulse(counts)
        after = emu.chip.weights()
        np.testing.assert_allclose(after - before, 0.01 * counts.numpy(), atol=1e-6)
        assert emu.chip.hot_switches == 0
        assert not any(s.output for s in emu.chip.sources.values())


def test_half_selected_disturb_follows_the_bias_scheme():
    """With the default switching kinetics (p = exp((v - 1.2 V) / 0.1 V)), V/2 disturbs
    half-selected devices a little, never the unselected-unselected ones (0 V)."""
    n = 400
    with Emulator(_linear_device(), rows=ROWS, cols=COLS) as emu, \
            BenchArray(bench_from_mapping(emu.bench_config())) as b:
        before = emu.chip.weights()
        counts = torch.zeros(ROWS, COLS, dtype=torch.int32)
        counts[1, 2] = n
        b.pulse(counts)
        moved = (emu.chip.weights() - before) / 0.01
    assert moved[1, 2] == pytest.approx(n, abs=1e-3)
    half = np.zeros((ROWS, COLS), dtype=bool)
    half[1, :] = half[:, 2] = True
    half[1, 2] = False
    # p(0.6 V) = exp(-6) = 2.5e-3 per pulse: 400 pulses -> mean 1.0 step per half-selected
    # device (Binomial(400, 2.5e-3)); over 5 devices the total is Poisson(5): between 0 and
    # 16 with probability > 1 - 1e-4
    assert 0 <= moved[half].sum() <= 16
    assert np.all(moved[half] >= 0)
    others = ~half
    others[1, 2] = False
    assert np.all(moved[others] == 0)


def test_read_all_costs_one_message_per_device_plus_a_constant():
    with Emulator(rows=ROWS, cols=COLS) as emu, \
            BenchArray(bench_from_mapping(emu.bench_config())) as b:
        before = b.stats()["messages"]
        b.read()
        assert b.stats()["messages"] - before <= ROWS * COLS + 2


@pytest.mark.parametrize("source, per_device", [("generator", 2), ("smu", 1)])
def test_pulse_program_messages_per_device(source, per_device):
    """A pulse generator costs two messages per pulsed device (route; burst), the SMU one
    (pipelined); plus 4 (outputs off, error queues of the SMU and the matrix)."""
    with Emulator(rows=ROWS, cols=COLS, pulse_source=source) as emu, \
            BenchArray(bench_from_mapping(emu.bench_config())) as b:
        before = b.stats()["messages"]
        b.pulse(torch.ones(ROWS, COLS, dtype=torch.int32))
        assert b.stats()["messages"] - before == per_device * ROWS * COLS + 4


@pytest.mark.timeout(180)
@pytest.mark.parametrize("source", ["generator", "smu"])
def test_emulate_cli_then_open_array(tmp_path, source):
    """Done-when of the hardware issue: ``rpuhw emulate ...`` in its own process, then
    ``open_array("bench:BENCH.yaml", ...)`` reads and pulses the emulated chip (pulses
    from the 33500B, or from the 2600B's sense channel with ``--pulse-source smu``)."""
    bench_yaml = tmp_path / "bench.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpuhw.cli", "emulate", "--rows", "4", "--cols", "4",
         "--seed", "1", "--pulse-source", source, "--bench-out", str(bench_yaml)],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert proc.stdout.readline().strip() == f"ready {bench_yaml}"
        with open_array(f"bench:{bench_yaml}", 4, 4) as arr:
            w0 = arr.read()
            counts = torch.zeros(4, 4, dtype=torch.int32)
            counts[2, 2] = 30
            arr.pulse(counts)
            w1 = arr.read()
        # the packaged hidden device: soft bounds, dw_min 0.002 with 20 % spreads; 30 up
        # pulses move (2, 2) up by several read-noise sigmas, the others stay within noise
        assert w1[2, 2] - w0[2, 2] > 0.02
        diff = (w1 - w0).abs()
        diff[2, 2] = 0
        assert diff.max() < 0.02
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_bench_command_checks_a_bench(tmp_path):
    """``rpuhw bench`` validates, connects, identifies and reads; bad YAML exits 2."""
    from rpuhw.cli import main

    with Emulator(rows=ROWS, cols=COLS, seed=2) as emu:
        path = emu.write_bench(tmp_path / "bench.yaml")
        assert main(["bench", str(path), "--read"]) == 0
        assert emu.chip.hot_switches == 0
        assert not any(s.output for s in emu.chip.sources.values())
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("v_max: 2.0", "v_max: 0.5"))
    assert main(["bench", str(bad)]) == 2
