"""The SMU pulse path: the 2600B's sense channel pulses with KIPulse ``PulseVMeasureI``.

* protocol: the exact TSP message of one SMU-pulsed device, written from the 2600B and
  707B manuals (docs/instrument_commands.md), on a scripted transport;
* pipelining: one message per pulsed device, at most PIPELINE in flight, every reply
  consumed, a non-zero error count raised as the instrument's error;
* the chip: on the emulators, the SMU path moves the addressed device exactly like the
  pulse generator does, and half-selected devices get the very same V/2 disturb.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bench_yaml import smu_pulse_mapping

from rpuhw.device_spec import ConductanceMap, DeviceSpec
from rpuhw.devices import get_model
from rpuhw.drivers.bench import PIPELINE, BenchArray
from rpuhw.drivers.bench_config import bench_from_mapping
from rpuhw.drivers.doubles import LoopbackTransport, ScriptedTransport
from rpuhw.drivers.emulators import Emulator
from rpuhw.drivers.errors import InstrumentCommandError

pytestmark = pytest.mark.timeout(60)

IDN_2602 = "Keithley Instruments Inc., Model 2602B, 04512346, 4.0.4"
ZERO = "0.00000e+00"
OFF_A = "smua.source.output = smua.OUTPUT_OFF"
OFF_B = "smub.source.output = smub.OUTPUT_OFF"
COUNT = "print(errorqueue.count)"
COUNT2 = "print(node[2].errorqueue.count)"


def _q(*stmts: str) -> tuple[str, str]:
    """A driver block: statements + the error count, answered 0."""
    return ("; ".join([*stmts, COUNT]), ZERO)


def _open_script() -> list[tuple[str, str | None]]:
    """What opening the 2 x 3 SMU-pulse bench sends (2600B with the 707B at node 2)."""
    return [
        ("*IDN?", IDN_2602),
        _q(OFF_B), _q(OFF_A),
        ('node[2].channel.open("allslots"); waitcomplete(0); ' + COUNT2, ZERO),
        _q("smua.source.func = smua.OUTPUT_DCVOLTS", "smua.source.limiti = 0.001",
           "smua.source.levelv = 0"),
        _q("smub.source.func = smub.OUTPUT_DCVOLTS", "smub.source.limiti = 0.001",
           "smub.source.levelv = 0"),
    ]


def _end_of_program() -> list[tuple[str, str | None]]:
    """After the pulse messages: both outputs off, the SMU's and the matrix's queues."""
    return [_q(OFF_B), _q(OFF_A), (COUNT, ZERO), (COUNT2, ZERO)]


def _close_script() -> list[tuple[str, str | None]]:
    return [_q(OFF_B), _q(OFF_A),
            ('node[2].channel.open("allslots"); waitcomplete(0); ' + COUNT2, ZERO),
            _q(OFF_A), _q(OFF_B)]   # the 2600B driver's own outputs-off at close


def test_one_smu_pulsed_device_is_one_message():
    """Potentiation of (0, 1) by 3 on a 2 x 3 chip (rows on matrix columns 1:1, 1:2,
    columns on 1:3-1:5): row 0 is the hot line (card row A = smua), column 1 the cold
    one (card row D = ground), every other line on smub (card row B) at V/2 = 0.6 V."""
    pulse = "; ".join([
        OFF_A, OFF_B,
        # 707B: close exactly these crosspoints, then wait for the relays (TSP-Link: all nodes)
        'node[2].channel.exclusiveclose("1A01,1B02,1B03,1D04,1B05")', "waitcomplete(0)",
        # 2600B: bias channel, a DC voltage source with its current limit before its output
        "smub.source.func = smub.OUTPUT_DCVOLTS", "smub.source.limiti = 0.001",
        "smub.source.levelv = 0.6", "smub.source.output = smub.OUTPUT_ON",
        # sense channel: its limit, then KIPulse PulseVMeasureI(smu, bias, level, ton, toff,
        # points): 3 pulses 0 V -> 1.2 V of 100 us, 100 us apart
        "smua.source.limiti = 0.001", "PulseVMeasureI(smua, 0, 1.2, 0.0001, 0.0001, 3)",
        OFF_A, OFF_B, COUNT])
    t = ScriptedTransport([*_open_script(), (pulse, None), ("", ZERO), *_end_of_program(),
                           *_close_script()])
    bench = BenchArray(bench_from_mapping(smu_pulse_mapping()), transports={"smu": t})
    assert bench._fast and bench._pulser is None
    counts = torch.zeros(2, 3, dtype=torch.int32)
    counts[0, 1] = 3
    bench.pulse(counts)
    bench.close()
    t.assert_done()


def test_depression_pulses_the_column_and_reuses_the_cached_statements():
    """(1, 2) by -2: column 2 (1:5) is hot on card row A, row 1 (1:2) grounded; a second
    program on the same device sends the same statements with its own count."""
    def msg(n: int) -> str:
        return "; ".join([
            OFF_A, OFF_B, 'node[2].channel.exclusiveclose("1B01,1D02,1B03,1B04,1A05")',
            "waitcomplete(0)", "smub.source.func = smub.OUTPUT_DCVOLTS",
            "smub.source.limiti = 0.001", "smub.source.levelv = 0.6",
            "smub.source.output = smub.OUTPUT_ON", "smua.source.limiti = 0.001",
            f"PulseVMeasureI(smua, 0, 1.2, 0.0001, 0.0001, {n})", OFF_A, OFF_B, COUNT])
    t = ScriptedTransport([*_open_script(), (msg(2), None), ("", ZERO), *_end_of_program(),
                           (msg(7), None), ("", ZERO), *_end_of_program(), *_close_script()])
    bench = BenchArray(bench_from_mapping(smu_pulse_mapping()), transports={"smu": t})
    counts = torch.zeros(2, 3, dtype=torch.int32)
    counts[1, 2] = -2
    bench.pulse(counts)
    counts[1, 2] = -7
    bench.pulse(counts)
    assert list(bench._smu_pulse_msgs) == [(1, 2, False)]
    bench.close()
    t.assert_done()


def test_a_long_burst_is_split_to_stay_inside_the_reply_timeout():
    """timeout 1 s, period 200 us: at most 0.5 s of pulses (2500) per message."""
    m = smu_pulse_mapping()
    t = ScriptedTransport([*_open_script()])
    bench = BenchArray(bench_from_mapping(m), transports={"smu": t})
    assert bench._max_burst() == 2500
    # three messages in flight, then their three replies
    writes = [(bench._smu_pulse_message(0, 0, n), None) for n in (2500, 2500, 1000)]
    assert writes[2][0].count("PulseVMeasureI(smua, 0, 1.2, 0.0001, 0.0001, 1000)") == 1
    t.script += [*writes, *[("", ZERO)] * 3, *_end_of_program(), *_close_script()]
    counts = torch.zeros(2, 3, dtype=torch.int32)
    counts[0, 0] = 6000
    bench.pulse(counts)
    bench.close()
    t.assert_done()


# ---- pipelining over the emulated instruments, in process ----------------------------------

class DepthTransport(LoopbackTransport):
    """A loopback transport that records how many replies were awaited at once."""

    def __init__(self, handle, resource: str):
        self.in_flight = 0
        self.max_in_flight = 0
        super().__init__(handle, resource=resource)

    def write(self, message: str) -> None:
        super().write(message)
        if message.endswith(COUNT):
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def read(self) -> str:
        reply = super().read()
        self.in_flight -= 1
        return reply


def _in_process(rows: int, cols: int, **kw):
    emu = Emulator(rows=rows, cols=cols, serve=False, pulse_source="smu", **kw)
    cfg = bench_from_mapping(emu.bench_config(), source="<smu pulse>")
    t = DepthTransport(emu.instruments["smu"].handle, "smu")
    return emu, t, BenchArray(cfg, transports={"smu": t})


def test_twenty_devices_are_twenty_pipelined_messages_plus_the_checks():
    emu, t, bench = _in_process(4, 5)
    counts = torch.tensor([[1, -2, 3, -1, 2], [2, 1, -1, -3, 1], [-1, 3, 2, 1, -2],
                           [3, -1, 1, 2, -3]], dtype=torch.int32)
    before = bench.stats()["messages"]
    w0 = emu.chip.weights()
    bench.pulse(counts)
    # 20 pulse messages, then 2 outputs-off blocks and the 2 error-queue checks
    assert bench.stats()["messages"] - before == 20 + 4
    assert t.max_in_flight == PIPELINE
    assert t.in_flight == 0 and not t._pending          # every reply was consumed
    moved = emu.chip.weights() - w0
    assert (np.sign(moved) == np.sign(counts.numpy())).all()   # each device its direction
    assert emu.chip.hot_switches == 0
    assert not any(s.output for s in emu.chip.sources.values())
    bench.close()


def test_a_non_zero_error_count_stops_sending_and_raises_the_instrument_error():
    emu, t, bench = _in_process(4, 5)
    smu = emu.instruments["smu"]
    handle = t.handle
    sent: list[str] = []

    def faulty(message: str):
        sent.append(message)
        if len(sent) == 3:  # the 3rd pulse message: the instrument queues an error first
            smu.inject_error()
        return handle(message)

    t.handle = faulty
    with pytest.raises(InstrumentCommandError, match="injected fault") as info:
        bench.pulse(torch.ones(4, 5, dtype=torch.int32))
    assert info.value.recent_commands
    # 8 went out at once, one more after each of the first two replies; the 3rd reply
    # (count 1) stopped the sending, the replies in flight were read, the queue drained
    pulses = [m for m in sent if "PulseVMeasureI" in m]
    assert len(pulses) == PIPELINE + 2
    assert not t._pending and emu.instruments["smu"].error_count() == 0
    assert not any(s.output for s in emu.chip.sources.values())
    bench.pulse(torch.ones(4, 5, dtype=torch.int32))   # the session is usable again
    bench.close()


# ---- the chip sees the same pulses as from the generator -----------------------------------

def _linear_device() -> DeviceSpec:
    """Constant steps, no spread, bounds far away: a pulse count is visible exactly."""
    cls = get_model("constant_step")
    model = cls(cls.Params(dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, w_min=-10.0,
                           w_max=10.0, w_min_dtod=0.0, w_max_dtod=0.0, up_down_dtod=0.0))
    return DeviceSpec(model=model, conductance=ConductanceMap(g_min=5e-5, g_max=1.5e-4))


def _moved(source: str, tsp_link: bool = True) -> np.ndarray:
    """Effective pulses per device after (1, 2) += 400 and (0, 0) -= 400 on a 3 x 4 chip
    with the default switching kinetics (p(V/2 = 0.6 V) = exp(-6) per pulse)."""
    with Emulator(_linear_device(), rows=3, cols=4, seed=11, pulse_source=source,
                  tsp_link=tsp_link) as emu, \
            BenchArray(bench_from_mapping(emu.bench_config())) as bench:
        before = emu.chip.weights()
        counts = torch.zeros(3, 4, dtype=torch.int32)
        counts[1, 2], counts[0, 0] = 400, -400
        bench.pulse(counts)
        assert emu.chip.hot_switches == 0
        return np.rint((emu.chip.weights() - before) / 0.01)


def test_smu_pulses_move_the_chip_like_the_generator():
    gen, smu = _moved("generator"), _moved("smu")
    # same seed, same bursts at the same amplitude in the same order: the chip's draws are
    # identical, so every device, half-selected ones included, moves identically
    np.testing.assert_array_equal(smu, gen)
    np.testing.assert_array_equal(_moved("smu", tsp_link=False), gen)
    assert smu[1, 2] == 400 and smu[0, 0] == -400
    # half-selected by one pulse only: V/2 of that pulse's sign (row 1 / column 2 for the
    # potentiation of (1, 2); row 0 / column 0 for the depression of (0, 0))
    up = [(1, 1), (1, 3), (2, 2)]
    down = [(0, 1), (0, 3), (2, 0)]
    assert all(smu[d] >= 0 for d in up) and all(smu[d] <= 0 for d in down)
    # mean exp(-6) * 400 = 1 step each: 3 devices, Poisson(3) <= 14 with p > 1 - 1e-6
    assert sum(smu[d] for d in up) <= 14 and -sum(smu[d] for d in down) <= 14
    # and it is there at all (10 half-selections of 400 pulses, ~1 step each)
    half = np.zeros((3, 4), dtype=bool)
    half[[0, 1], :] = half[:, [0, 2]] = True
    half[1, 2] = half[0, 0] = False
    assert np.abs(smu[half]).sum() > 0
    assert smu[2, 1] == 0 and smu[2, 3] == 0   # never selected: 0 V, no change
