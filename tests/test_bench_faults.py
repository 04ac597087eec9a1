"""Faults on a BenchArray over the emulators, through real pyvisa-py sockets.

For each fault kind of ``rpuhw emulate --fault``: a clear exception (never a hang:
every test has a timeout), every output left off on the emulated instruments, and
the next call after reconnecting works. A loop interrupted by a fault keeps what it
already returned.
"""

from __future__ import annotations

import pytest
import torch

from rpuhw.drivers.bench import BenchArray
from rpuhw.drivers.bench_config import bench_from_mapping
from rpuhw.drivers.emulators import Emulator
from rpuhw.drivers.errors import (
    InstrumentCommandError,
    InstrumentConnectionError,
    InstrumentError,
    InstrumentTimeout,
)

pytestmark = pytest.mark.timeout(60)
ROWS, COLS = 2, 3
TIMEOUT_S = 0.5


def _config(emu: Emulator):
    m = emu.bench_config()
    for inst in m["instruments"].values():
        inst["timeout_s"] = TIMEOUT_S
    return bench_from_mapping(m, source="<faults>")


def _outputs_off(emu: Emulator) -> bool:
    return not any(s.output for s in emu.chip.sources.values())


def _read_tol(emu: Emulator) -> float:
    # read noise of one read in weight units (the truth's io.read_noise), 6 sigma, plus the
    # 6-digit print of the current
    return 6 * emu.spec.io.read_noise + 1e-5


def _setup_messages(pulse_source: str = "generator") -> dict[str, int]:
    """Messages each instrument receives while a bench opens (fault-free run)."""
    with Emulator(rows=ROWS, cols=COLS, pulse_source=pulse_source) as emu:
        bench = BenchArray(_config(emu))
        counts = dict(emu.stats()["messages"])
        bench.close()
    return counts


@pytest.fixture(scope="module")
def setup_messages():
    return _setup_messages()


def test_drop_after_n(setup_messages):
    n = setup_messages["smu"] + 4  # the drop comes during the first read
    with Emulator(rows=ROWS, cols=COLS, faults=[f"drop-after:{n}"]) as emu:
        bench = BenchArray(_config(emu))
        with pytest.raises(InstrumentConnectionError) as info:
            bench.read()
        assert "TCPIP::127.0.0.1" in str(info.value)  # names the resource
        assert _outputs_off(emu)
        bench.reconnect()
        w = bench.read()
        assert (w - torch.as_tensor(emu.chip.weights(), dtype=torch.float32)).abs().max() \
            <= _read_tol(emu)
        bench.close()
        assert _outputs_off(emu) and emu.chip.hot_switches == 0


def test_error_after_n(setup_messages):
    n = setup_messages["smu"] + 2
    with Emulator(rows=ROWS, cols=COLS, faults=[f"error-after:{n}"]) as emu:
        bench = BenchArray(_config(emu))
        with pytest.raises(InstrumentCommandError) as info:
            for _ in range(3):
                bench.read()
        assert info.value.code != 0 and info.value.recent_commands
        assert _outputs_off(emu)
        bench.read()  # the queue was drained: the next call works without a reconnect
        bench.close()


@pytest.mark.parametrize("fault", ["no-terminator", "latency:1000"])
def test_reply_faults_time_out_cleanly(fault):
    """The faulty reply comes during the bench's setup: opening fails with a timeout,
    outputs stay off, and opening again works (the fault is one-shot)."""
    with Emulator(rows=ROWS, cols=COLS, faults=[fault]) as emu:
        with pytest.raises(InstrumentTimeout) as info:
            BenchArray(_config(emu))
        assert "TCPIP::127.0.0.1" in str(info.value)
        assert _outputs_off(emu)
        with BenchArray(_config(emu)) as bench:
            w = bench.read()
        assert (w - torch.as_tensor(emu.chip.weights(), dtype=torch.float32)).abs().max() \
            <= _read_tol(emu)
        assert _outputs_off(emu)


def test_stuck_device_is_reported_by_program():
    with Emulator(rows=ROWS, cols=COLS, faults=["stuck:1,2"]) as emu, \
            BenchArray(_config(emu)) as bench:
        target = torch.full((ROWS, COLS), 0.1)
        report = bench.program(target, tol=0.02, max_iter=8)
        w = bench.read()
        assert not report.converged
        err = (w - target).abs()
        assert err[1, 2] > 0.02                      # the stuck device did not move there
        others = torch.ones(ROWS, COLS, dtype=torch.bool)
        others[1, 2] = False
        assert (err[others] <= 0.02 + _read_tol(emu)).all()


def test_interrupted_loop_keeps_what_it_returned(setup_messages):
    """A read loop stopped by a dropped connection: every value it returned stays valid."""
    n = setup_messages["smu"] + 12
    with Emulator(rows=ROWS, cols=COLS, faults=[f"drop-after:{n}"]) as emu:
        bench = BenchArray(_config(emu))
        truth = emu.chip.weights()
        got = []
        with pytest.raises(InstrumentError):
            for i in range(ROWS):
                for j in range(COLS):
                    got.append(((i, j), float(bench.read_devices([(i, j)])[0])))
        assert 0 < len(got) < ROWS * COLS
        for (i, j), w in got:
            assert abs(w - truth[i, j]) <= _read_tol(emu)
        assert _outputs_off(emu)
        bench.close()


# ---- the SMU pulse path (one pipelined message per pulsed device) ---------------------------

def test_drop_mid_smu_pulse_program_then_reconnect():
    """The connection drops at the 4th of 6 pipelined pulse messages: a clear connection
    error, every output off (the messages that ran each ended with them off), no relay
    switched hot; after reconnect() the same program pulses and reads fine."""
    n = _setup_messages("smu")["smu"] + 3
    with Emulator(rows=ROWS, cols=COLS, faults=[f"drop-after:{n}"],
                  pulse_source="smu") as emu:
        bench = BenchArray(_config(emu))
        counts = torch.tensor([[3, -2, 1], [-1, 2, -3]], dtype=torch.int32)
        with pytest.raises(InstrumentConnectionError) as info:
            bench.pulse(counts)
        assert "TCPIP::127.0.0.1" in str(info.value)
        assert _outputs_off(emu) and emu.chip.hot_switches == 0
        bench.reconnect()
        w0 = emu.chip.weights()
        bench.pulse(counts)
        moved = emu.chip.weights() - w0
        assert (torch.as_tensor(moved).sign() == counts.sign()).all()
        w = bench.read()
        assert (w - torch.as_tensor(emu.chip.weights(), dtype=torch.float32)).abs().max() \
            <= _read_tol(emu)
        bench.close()
        assert _outputs_off(emu) and emu.chip.hot_switches == 0


def test_error_mid_smu_pulse_program_is_raised_then_the_next_call_works():
    n = _setup_messages("smu")["smu"] + 2
    with Emulator(rows=ROWS, cols=COLS, faults=[f"error-after:{n}"],
                  pulse_source="smu") as emu:
        bench = BenchArray(_config(emu))
        with pytest.raises(InstrumentCommandError) as info:
            bench.pulse(torch.ones(ROWS, COLS, dtype=torch.int32))
        assert "injected fault" in str(info.value)
        assert any("PulseVMeasureI" in c for c in info.value.recent_commands)
        assert _outputs_off(emu)
        bench.pulse(torch.ones(ROWS, COLS, dtype=torch.int32))  # queue drained: works
        bench.close()
        assert _outputs_off(emu) and emu.chip.hot_switches == 0
