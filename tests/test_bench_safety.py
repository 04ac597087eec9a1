"""The bench's safety envelope, checked on the transcript of random call sequences.

Hypothesis drives random sequences of BenchArray operations (read, read_devices,
pulse, update) and direct driver calls (levels inside and beyond the limit), with
a KeyboardInterrupt injected at a random message, against the emulators'
instruments through in-process recording transports. The transcript (every
message to every instrument, in order) is then replayed by an independent parser
that asserts the envelope:

1. no level above ``limits.v_max`` ever left the host;
2. no output turned on before a compliance (SMU) or the high-Z load (33500B);
3. every output off whenever a relay changed;
4. every output off after each operation, after an interrupt, and after close.

An SMU pulse (KIPulse ``PulseVMeasureI(smuX, bias, level, ...)``) turns smuX's output on
for the pulse train: it needs smuX's compliance first, both levels within the limit,
and the statement right after it must turn smuX off again. The benches: 2600B with
and without TSP-Link, two 2450s, each pulsed by a 33500B, and the 2600B (with and
without TSP-Link) pulsed by its own sense channel.

Rule 3 and 4 are also checked on the emulated instruments' own state.
"""

from __future__ import annotations

import re

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rpuhw.drivers.bench import BenchArray
from rpuhw.drivers.bench_config import bench_from_mapping
from rpuhw.drivers.doubles import LoopbackTransport
from rpuhw.drivers.emulators import Emulator
from rpuhw.drivers.errors import SafetyError

V_MAX = 2.0
ROWS, COLS = 2, 3


class Interrupt(KeyboardInterrupt):
    """The injected Ctrl-C."""


class Recorder:
    """One shared, ordered log of (instrument, message); raises Interrupt once at message k."""

    def __init__(self, interrupt_at: int | None):
        self.log: list[tuple[str, str]] = []
        self.interrupt_at = interrupt_at

    def wrap(self, name: str, handle):
        def recorded(message: str):
            if self.interrupt_at is not None and len(self.log) == self.interrupt_at:
                self.interrupt_at = None
                raise Interrupt
            self.log.append((name, message))
            return handle(message)
        return recorded


def make_bench(variant: str, recorder: Recorder):
    smu = "2450" if variant == "2450" else "2600b"
    emu = Emulator(rows=ROWS, cols=COLS, serve=False, smu=smu,
                   tsp_link=variant.startswith("2600b-linked"),
                   pulse_source="smu" if variant.endswith("-smupulse") else "generator")
    cfg = bench_from_mapping(emu.bench_config(), source="<safety>")
    transports = {name: LoopbackTransport(recorder.wrap(name, inst.handle), resource=name)
                  for name, inst in emu.instruments.items()
                  if cfg.instruments[name].tsp_link is None}
    return emu, BenchArray(cfg, transports=transports)


# ---- an independent reading of the transcript --------------------------------------------
_TSP_OUT = re.compile(r"(smu[ab])\.source\.output\s*=\s*smu[ab]\.OUTPUT_(ON|OFF)")
_TSP_LIMIT = re.compile(r"(smu[ab])\.source\.limiti\s*=")
_TSP_LEVEL = re.compile(r"smu[ab]\.source\.levelv\s*=\s*([-+0-9.eE]+)")
_PULSE_FN = re.compile(r"PulseVMeasureI\(\s*smu[ab]\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)")
_SCPI_LEVEL = re.compile(r"^:?SOUR(?:CE)?\d?:VOLT(?:AGE)?(?::LEV(?:EL)?)?(?::HIGH|:LOW)?\s+"
                         r"([-+0-9.eE]+)$", re.IGNORECASE)
_SCPI_OUT = re.compile(r"^:?OUTP(?:UT)?(\d?)\s+(ON|OFF|1|0)$", re.IGNORECASE)
_RELAY = re.compile(r"channel\.(exclusiveclose|close|open)\(")
_PULSE_CH = re.compile(r"PulseVMeasureI\(\s*(smu[ab])\s*,")


def check_transcript(log: list[tuple[str, str]]) -> dict[str, bool]:
    """Assert rules 1-3 along the transcript; return the output states at its end."""
    on: dict[str, bool] = {}
    armed: set[str] = set()
    pulsing: str | None = None  # the channel a PulseVMeasureI left on (next part: its off)
    for name, message in log:
        if message.startswith("*IDN?") or message.startswith("*LANG?"):
            continue
        tsp = "smua." in message or "smub." in message or "channel." in message \
            or "errorqueue" in message or "reset()" in message
        parts = [p.strip() for p in message.split(";")]
        for part in parts:
            where = f"{name}: {part!r} in {message!r}"
            if tsp:
                if part.endswith("reset()"):
                    armed = {a for a in armed if not a.startswith(name)}
                    on = {k: v for k, v in on.items() if not k.startswith(name)}
                for m in _TSP_LEVEL.finditer(part):
                    assert abs(float(m.group(1))) <= V_MAX, where
                for m in _PULSE_FN.finditer(part):
                    assert max(abs(float(m.group(1))), abs(float(m.group(2)))) <= V_MAX, where
                for m in _TSP_LIMIT.finditer(part):
                    armed.add(f"{name}.{m.group(1)}")
                for m in _TSP_OUT.finditer(part):
                    key = f"{name}.{m.group(1)}"
                    if m.group(2) == "ON":
                        assert key in armed, f"output on before compliance: {where}"
                    on[key] = m.group(2) == "ON"
                if _RELAY.search(part):
                    assert not any(on.values()), f"relay change with outputs on {on}: {where}"
                if pulsing is not None:  # the part right after a pulse train turns it off
                    assert on.get(pulsing) is False, \
                        f"{pulsing} left on after PulseVMeasureI: {where}"
                    pulsing = None
                m = _PULSE_CH.search(part)
                if m:  # the pulse train: the channel's output is on from here
                    key = f"{name}.{m.group(1)}"
                    assert key in armed, f"pulse before compliance: {where}"
                    on[key] = True
                    pulsing = key
                continue
            up = part.upper()
            if up in ("*RST",):
                armed = {a for a in armed if not a.startswith(name)}
                on = {k: v for k, v in on.items() if not k.startswith(name)}
            m = _SCPI_LEVEL.match(part)
            if m:
                assert abs(float(m.group(1))) <= V_MAX, where
            if re.match(r"^:?SOUR(CE)?:VOLT(AGE)?:ILIM", up):
                armed.add(f"{name}.out")
            if re.match(r"^:?OUTP(UT)?\d?:LOAD\s+INF", up):
                armed.add(f"{name}.out")
            m = _SCPI_OUT.match(part)
            if m:
                key = f"{name}.out"
                state = m.group(2).upper() in ("ON", "1")
                if state:
                    assert key in armed, f"output on before compliance/load: {where}"
                on[key] = state
    assert pulsing is None, f"{pulsing} left on: the transcript ends with PulseVMeasureI"
    return on


def assert_all_off(emu: Emulator, recorder: Recorder) -> None:
    on = check_transcript(recorder.log)
    assert not any(on.values()), f"outputs left on (transcript): {on}"
    assert not any(s.output for s in emu.chip.sources.values()), "outputs left on (emulator)"
    assert emu.chip.hot_switches == 0


# ---- the random programs ----------------------------------------------------------------
counts_st = st.lists(st.integers(-3, 3), min_size=ROWS * COLS, max_size=ROWS * COLS)
op_st = st.one_of(
    st.just(("read",)),
    st.tuples(st.just("read_devices"), st.integers(0, ROWS - 1), st.integers(0, COLS - 1)),
    st.tuples(st.just("pulse"), counts_st),
    st.tuples(st.just("update"), st.integers(0, 2 ** 31 - 1)),
    st.tuples(st.just("bias_level"), st.floats(-3.0, 3.0, allow_nan=False)),
    st.tuples(st.just("pulse_shape"), st.floats(0.05, 3.0, allow_nan=False)),
)


def run_op(bench: BenchArray, op) -> None:
    kind = op[0]
    if kind == "read":
        bench.read()
    elif kind == "read_devices":
        bench.read_devices([(op[1], op[2])])
    elif kind == "pulse":
        bench.pulse(torch.tensor(op[1], dtype=torch.int32).reshape(ROWS, COLS))
    elif kind == "update":
        g = torch.Generator().manual_seed(op[1])
        x = torch.randint(-1, 2, (1, 2, COLS), generator=g).to(torch.int8)
        d = torch.randint(-1, 2, (1, 2, ROWS), generator=g).to(torch.int8)
        bench.update(x, d)
    elif kind == "bias_level":  # a direct driver call: refused beyond the limit
        v = op[1]
        before = len(bench._recorder.log)
        if abs(v) > V_MAX:
            with pytest.raises(SafetyError):
                bench._bias.channel.source_voltage(v, 1e-3)
            assert len(bench._recorder.log) == before, "a refused level still sent something"
        else:
            bench._bias.channel.source_voltage(v, 1e-3)
    elif kind == "pulse_shape" and bench._pulser is None:  # the SMU pulses: a direct train
        v = op[1]
        before = len(bench._recorder.log)
        if v > V_MAX:
            with pytest.raises(SafetyError):
                bench._sense.channel.pulse_voltage(v, 1e-4, 2, 1e-3, 2e-4)
            assert len(bench._recorder.log) == before, "a refused level still sent something"
        else:
            bench._bias.channel.output(False)  # the relays stay as the last operation left
            bench._sense.channel.pulse_voltage(v, 1e-4, 2, 1e-3, 2e-4)
    elif kind == "pulse_shape":
        v = op[1]
        before = len(bench._recorder.log)
        if v > V_MAX:
            with pytest.raises(SafetyError):
                bench._pulser.configure_pulse(v, 0.0, 1e-6, 2e-6, 1)
            assert len(bench._recorder.log) == before, "a refused level still sent something"
        else:
            bench._pulser.configure_pulse(v, 0.0, 1e-6, 2e-6, 1)
            bench._pulse_shape = None  # the bench reconfigures its own shape next time


@pytest.mark.parametrize("variant", ["2600b-linked", "2600b", "2450", "2600b-linked-smupulse",
                                     "2600b-smupulse"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op_st, min_size=1, max_size=6), interrupt_at=st.none() | st.integers(0, 120))
def test_envelope_holds_on_random_programs(variant, ops, interrupt_at):
    rec = Recorder(None)
    emu, bench = make_bench(variant, rec)
    bench._recorder = rec
    rec.interrupt_at = None if interrupt_at is None else len(rec.log) + interrupt_at
    interrupted = False
    for op in ops:
        try:
            run_op(bench, op)
        except Interrupt:
            interrupted = True
        assert_all_off(emu, rec)
    try:
        bench.close()
    except Interrupt:
        interrupted = True
    assert_all_off(emu, rec)
    assert not emu.chip.closed, "relays left closed after close()"
    # the interrupt fired if the program sent enough messages to reach it
    assert interrupted == (interrupt_at is not None and rec.interrupt_at is None)


def test_transcript_checker_catches_violations():
    """The parser above must be able to fail (each rule broken once on purpose)."""
    ok = [("smu", "smua.source.limiti = 0.001; smua.source.output = smua.OUTPUT_ON")]
    assert check_transcript(ok) == {"smu.smua": True}
    with pytest.raises(AssertionError, match="before compliance"):
        check_transcript([("smu", "smua.source.output = smua.OUTPUT_ON")])
    with pytest.raises(AssertionError, match="relay change"):
        check_transcript(ok + [("smu", 'node[2].channel.exclusiveclose("1A01")')])
    with pytest.raises(AssertionError):
        check_transcript([("smu", "smub.source.levelv = 2.5")])
    with pytest.raises(AssertionError):
        check_transcript([("pulser", ":SOUR1:VOLT:HIGH 2.4")])
    with pytest.raises(AssertionError, match="before compliance/load"):
        check_transcript([("pulser", ":OUTP1 ON")])


def _smu_pulse_message() -> str:
    """A real one-message SMU pulse of device (0, 1) from an SMU-pulsed bench's transcript."""
    rec = Recorder(None)
    _, bench = make_bench("2600b-linked-smupulse", rec)
    bench.pulse(torch.tensor([[0, 3, 0], [0, 0, 0]], dtype=torch.int32))
    bench.close()
    pulses = [m for _, m in rec.log if "PulseVMeasureI" in m]
    assert len(pulses) == 1
    return pulses[0]


def test_transcript_checker_catches_violations_on_the_smu_pulse_path():
    """The real SMU pulse message passes; each mutation of it breaks one rule and fails."""
    msg = _smu_pulse_message()
    assert check_transcript([("smu", msg)]) == {"smu.smua": False, "smu.smub": False}
    stmts = msg.split("; ")
    k = next(i for i, p in enumerate(stmts) if p.startswith("PulseVMeasureI"))
    route = next(p for p in stmts if "exclusiveclose" in p)

    def mutated(parts: list[str]) -> list[tuple[str, str]]:
        return [("smu", "; ".join(parts))]

    # relays switched while the pulse output is still on (right after the train)
    with pytest.raises(AssertionError, match="relay change with outputs on"):
        check_transcript(mutated(stmts[:k + 1] + [route] + stmts[k + 1:]))
    # relays switched with the bias output on (route moved after bias on)
    moved = [p for p in stmts if p != route]
    on_b = moved.index("smub.source.output = smub.OUTPUT_ON")
    with pytest.raises(AssertionError, match="relay change with outputs on"):
        check_transcript(mutated(moved[:on_b + 1] + [route] + moved[on_b + 1:]))
    # the pulse channel not turned off right after the train
    with pytest.raises(AssertionError, match="left on after PulseVMeasureI"):
        check_transcript(mutated(stmts[:k + 1] + stmts[k + 2:]))
    with pytest.raises(AssertionError, match="left on"):
        check_transcript(mutated(stmts[:k + 1]))
    # the train before its compliance
    no_limit = [p for p in stmts if p != "smua.source.limiti = 0.001"]
    with pytest.raises(AssertionError, match="pulse before compliance"):
        check_transcript(mutated(no_limit))
    # a pulse level above the limit
    with pytest.raises(AssertionError):
        check_transcript(mutated([p.replace("0, 1.2,", "0, 2.5,") for p in stmts]))


def test_off_before_switch_order_with_spies(mocker):
    """pytest-mock spies on the drivers (no TSP-Link: every step is a driver call)."""
    rec = Recorder(None)
    emu, bench = make_bench("2600b", rec)
    order: list[tuple[str, tuple]] = []

    def spy_in_order(obj, attr: str, label: str):
        original = getattr(obj, attr)

        def record(*args):
            order.append((label, args))
            return original(*args)
        return mocker.patch.object(obj, attr, side_effect=record)

    spy_in_order(bench._sense.channel, "output", "sense")
    spy_in_order(bench._bias.channel, "output", "bias")
    switch = spy_in_order(bench._matrix, "close_exclusive", "switch")
    fire = mocker.spy(bench._pulser, "fire")
    bench.read()
    bench.pulse(torch.tensor([[2, 0, -1], [0, 3, 0]], dtype=torch.int32))
    bench.close()
    state = {"sense": False, "bias": False}
    for label, args in order:
        if label == "switch":
            assert not any(state.values()), f"relay change with outputs on: {state}"
        else:
            state[label] = bool(args[0])
    assert not any(state.values())
    assert switch.call_count == ROWS * COLS + 3   # one route per read, one per pulsed device
    assert fire.call_count == 3
    assert emu.chip.hot_switches == 0
