"""The shipped instrument emulators, through raw sockets and plain pyvisa + pyvisa-py.

Nothing here uses rpuhw.drivers.instruments: the messages are the strings of
docs/instrument_commands.md, written out by hand.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import pyvisa
import yaml

from rpuhw.cli import main
from rpuhw.device_spec import spec_from_mapping
from rpuhw.drivers.emulators import Emulator, parse_faults

pytestmark = pytest.mark.timeout(30)

IDN = {
    "smu": "Keithley Instruments Inc., Model 2602B, 04512346, 4.0.4",
    "matrix": "Keithley Instruments Inc., Model 707B, 04512347, 1.6.2",
    "pulser": "Keysight Technologies,33522B,MY52345678,4.03-1.19-2.00-52-00",
}
ROWS, COLS = 4, 5
V_READ = 0.2
TSP_ZERO = "0.00000e+00"

# A linear device without device-to-device spread: n effective pulses move w by n * dw_min
# on average (cycle-to-cycle spread 10 % per pulse).
LINEAR = {"model": "constant_step", "dw_min": 0.002, "dw_min_dtod": 0.0, "dw_min_std": 0.1,
          "up_down": 0.0, "up_down_dtod": 0.0, "w_min": -0.6, "w_max": 0.6,
          "w_min_dtod": 0.0, "w_max_dtod": 0.0, "io": {"read_noise": 0.002},
          "conductance": {"g_min": 2e-5, "g_max": 1e-4}}


# ---- helpers -------------------------------------------------------------------------------

class Raw:
    """A raw TCP client: write lines, read "\\n"-terminated replies."""

    def __init__(self, resource: str, timeout: float = 5.0):
        host, port = resource.split("::")[1:3]
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def write(self, msg: str) -> None:
        self.sock.sendall(msg.encode() + b"\n")

    def read(self) -> str:
        while b"\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.buf += data
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()

    def query(self, msg: str) -> str:
        self.write(msg)
        return self.read()

    def close(self) -> None:
        self.sock.close()


def visa(resource: str, timeout_ms: int = 3000):
    rm = pyvisa.ResourceManager("@py")
    inst = rm.open_resource(resource, read_termination="\n", write_termination="\n",
                            timeout=timeout_ms)
    return rm, inst


def channels(cfg: dict, assign: dict[tuple[str, int], str], default: str) -> str:
    """707B channel list routing chip lines to terminals, from the bench YAML alone."""
    out = []
    for kind in ("rows", "cols"):
        for k, line in enumerate(cfg["wiring"][kind]):
            slot, col = line.split(":")
            term = assign.get((kind, k), default)
            out.append(f"{slot}{cfg['terminals'][term]['matrix_row']}{int(col):02d}")
    return ",".join(out)


def read_message(cfg: dict, i: int, j: int) -> str:
    """One 2600B message reading device (i, j): route (TSP-Link), bias, measure, off."""
    route = channels(cfg, {("rows", i): "bias", ("cols", j): "sense"}, "ground")
    c = cfg["read"]["compliance_a"]
    return "; ".join([
        "smua.source.output = smua.OUTPUT_OFF", "smub.source.output = smub.OUTPUT_OFF",
        f'node[2].channel.exclusiveclose("{route}")', "waitcomplete(0)",
        "smub.source.func = smub.OUTPUT_DCVOLTS", f"smub.source.limiti = {c:g}",
        f"smub.source.levelv = {V_READ:g}",
        "smua.source.func = smua.OUTPUT_DCVOLTS", f"smua.source.limiti = {c:g}",
        "smua.source.levelv = 0",
        "smub.source.output = smub.OUTPUT_ON", "smua.source.output = smua.OUTPUT_ON",
        "print(smua.measure.i())",
        "smua.source.output = smua.OUTPUT_OFF", "smub.source.output = smub.OUTPUT_OFF"])


PULSER_SETUP = [
    ":SOUR1:VOLT:LIM:HIGH 2;:SOUR1:VOLT:LIM:LOW -2;:SOUR1:VOLT:LIM:STAT ON",
    ":OUTP1:LOAD INF;:SOUR1:FUNC PULS;:SOUR1:FUNC:PULS:PER 2e-06;:SOUR1:FUNC:PULS:WIDT 1e-06;"
    ":SOUR1:VOLT:HIGH 1.2;:SOUR1:VOLT:LOW 0;:SOUR1:BURS:MODE TRIG;:SOUR1:BURS:NCYC 1;"
    ":TRIG1:SOUR BUS;:SOUR1:BURS:STAT ON",
]


def v2_potentiation(smu, pulser, cfg: dict, i: int, j: int, n: int) -> None:
    """V/2 potentiation burst of n on (i, j): row i on the pulser, column j grounded,
    every other line on the bias source at V/2. ``smu``/``pulser`` have query()."""
    route = channels(cfg, {("rows", i): "pulse", ("cols", j): "ground"}, "bias")
    assert smu.query("smua.source.output = smua.OUTPUT_OFF; smub.source.output = "
                     f'smub.OUTPUT_OFF; node[2].channel.exclusiveclose("{route}"); '
                     "waitcomplete(0); smub.source.limiti = 0.001; smub.source.levelv = 0.6; "
                     "smub.source.output = smub.OUTPUT_ON; print(errorqueue.count)") == TSP_ZERO
    for msg in PULSER_SETUP:
        pulser.write(msg)
        assert pulser.query(":SYST:ERR?") == '+0,"No error"'
    assert pulser.query(f":SOUR1:BURS:NCYC {n};:OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?") == "1"
    smu.query("smub.source.output = smub.OUTPUT_OFF; print(errorqueue.count)")


def v2_potentiation_smu(smu, cfg: dict, i: int, j: int, n: int) -> None:
    """The same V/2 burst from the 2600B's sense channel (bench YAML of
    ``--pulse-source smu``: the pulse terminal is smua on card row A), in one message:
    outputs off, route, smub at V/2 and on, smua's limit, PulseVMeasureI (0 V -> 1.2 V,
    100 us on, 100 us off, n times), both off, the error count."""
    assert cfg["terminals"]["pulse"] == {"instrument": "smu", "channel": "a",
                                         "matrix_row": "A"}
    route = channels(cfg, {("rows", i): "pulse", ("cols", j): "ground"}, "bias")
    assert smu.query("smua.source.output = smua.OUTPUT_OFF; smub.source.output = "
                     f'smub.OUTPUT_OFF; node[2].channel.exclusiveclose("{route}"); '
                     "waitcomplete(0); smub.source.limiti = 0.001; smub.source.levelv = 0.6; "
                     "smub.source.output = smub.OUTPUT_ON; smua.source.limiti = 0.001; "
                     f"PulseVMeasureI(smua, 0, 1.2, 0.0001, 0.0001, {n}); "
                     "smua.source.output = smua.OUTPUT_OFF; smub.source.output = "
                     "smub.OUTPUT_OFF; print(errorqueue.count)") == TSP_ZERO


class Loop:
    """query/write over an in-process personality (no sockets)."""

    def __init__(self, inst):
        self.inst = inst

    def write(self, msg: str) -> None:
        assert self.inst.handle(msg) is None

    def query(self, msg: str) -> str:
        reply = self.inst.handle(msg)
        assert reply is not None, msg
        return reply


@pytest.fixture
def emu():
    with Emulator(rows=ROWS, cols=COLS, seed=1) as e:
        yield e


# ---- identity and errors -------------------------------------------------------------------

def test_idn_over_raw_sockets_and_pyvisa(emu):
    for name, idn in IDN.items():
        c = Raw(emu.resources[name])
        assert c.query("*IDN?") == idn
        c.close()
    rm, inst = visa(emu.resources["pulser"])
    try:
        assert inst.query("*IDN?") == IDN["pulser"]
        assert inst.query("*OPC?") == "1"
    finally:
        inst.close()
        rm.close()


def test_2450_pair_identifies_as_scpi_and_sources():
    with Emulator(rows=2, cols=2, smu="2450") as e:
        assert set(e.resources) == {"smu", "smu_bias", "matrix", "pulser"}
        rm, inst = visa(e.resources["smu"])
        try:
            assert inst.query("*IDN?") == "KEITHLEY INSTRUMENTS,MODEL 2450,04512345,1.7.12b"
            assert inst.query("*LANG?") == "SCPI"
            inst.write(":SOUR:FUNC VOLT;:SOUR:VOLT:ILIM 0.001;:SOUR:VOLT 0.2")
            assert inst.query(":SYST:ERR?") == '0,"No error"'
            # long forms, lower case: same settings
            assert inst.query(":source:voltage:level?") == "2.000000E-01"
            assert inst.query(":SOURce:VOLTage:ILIMit?") == "1.000000E-03"
            inst.write(":SOUR:VOLT 500")
            assert inst.query(":SYST:ERR?") == '-222,"Data out of range"'
            inst.write(":FOO?")
            assert inst.query(":SYST:ERR?") == '-113,"Undefined header"'
        finally:
            inst.close()
            rm.close()
        cfg = e.bench_config()
        assert "tsp_link" not in cfg["instruments"]["matrix"]
        # a read without TSP-Link: route on the 707B, bias on smu_bias, measure on smu
        sense, bias = Loop(e.instruments["smu"]), Loop(e.instruments["smu_bias"])
        route = channels(cfg, {("rows", 1): "bias", ("cols", 0): "sense"}, "ground")
        assert e.instruments["matrix"].handle(f'channel.exclusiveclose("{route}")') is None
        bias.write(":SOUR:FUNC VOLT;:SOUR:VOLT:ILIM 0.001;:SOUR:VOLT 0.2;:OUTP ON")
        sense.write(":SOUR:FUNC VOLT;:SOUR:VOLT:ILIM 0.001;:SOUR:VOLT 0;:OUTP ON")
        cur = float(sense.query(":MEAS:CURR?"))
        sigma = e.chip.read_noise_s * V_READ
        assert abs(cur + e.chip.conductances()[1, 0] * V_READ) < 5 * sigma
        assert e.stats()["hot_switches"] == 0


def test_floating_lines_carry_sneak_path_current():
    """Only row 0 (bias, 1 V) and column 0 (sense, 0 V) routed; row 1 and column 1 float, so
    the sense current adds the series path G01 -> G11 -> G10 (nodal solve, no noise)."""
    e = Emulator(rows=2, cols=2, seed=4, serve=False)
    cfg = e.bench_config()
    r0, c0 = cfg["wiring"]["rows"][0].split(":"), cfg["wiring"]["cols"][0].split(":")
    e.chip.set_relays({f"{r0[0]}B{int(r0[1]):02d}", f"{c0[0]}A{int(c0[1]):02d}"})
    a, b = e.chip.sources["smu.a"], e.chip.sources["smu.b"]
    a.level_v, b.level_v, a.output, b.output = 0.0, 1.0, True, True
    g = e.chip.conductances()
    sneak = 1 / (1 / g[0, 1] + 1 / g[1, 1] + 1 / g[1, 0])
    assert e.chip.measure_current("smu.a", noisy=False) == pytest.approx(-(g[0, 0] + sneak),
                                                                         rel=1e-6)
    assert e.chip.measure_current("smu.b", noisy=False) == pytest.approx(g[0, 0] + sneak,
                                                                         rel=1e-6)
    a.compliance_a = 1e-6                       # reported current clamps at the compliance
    assert e.chip.measure_current("smu.a") == -1e-6


def test_v3_scheme_keeps_every_unselected_device_at_v_over_3():
    e = Emulator(rows=3, cols=4, bias_scheme="v/3", serve=False)
    cfg = e.bench_config()
    assert cfg["bias_scheme"] == "v/3"
    # potentiation of (1, 2): row 1 pulse, col 2 ground, other rows V/3, other cols 2V/3
    assign = {("rows", 1): "pulse", ("cols", 2): "ground"}
    assign.update({("rows", k): "bias" for k in (0, 2)})
    e.chip.set_relays(channels(cfg, assign, "sense").split(","))
    a, b = e.chip.sources["smu.a"], e.chip.sources["smu.b"]
    a.level_v, b.level_v, a.output, b.output = 0.8, 0.4, True, True
    v = e.chip.device_voltages({"pulser.1": 1.2})
    assert v[1, 2] == pytest.approx(1.2)
    mask = np.ones_like(v, dtype=bool)
    mask[1, 2] = False
    assert np.allclose(np.abs(v[mask]), 0.4)


def test_unknown_scpi_command_is_minus_113_in_the_queue(emu):
    rm, inst = visa(emu.resources["pulser"])
    try:
        inst.write(":FOO:BAR 1")          # no reply: the error goes to the queue
        inst.write(":SOUR1:VOLT:HIGH")   # missing parameter
        assert inst.query(":SYST:ERR?") == '-113,"Undefined header"'
        assert inst.query(":SYST:ERR?") == '-109,"Missing parameter"'
        assert inst.query(":SYST:ERR?") == '+0,"No error"'
        # short/long forms, case-insensitive, relative headers after ";"
        inst.write(":sour1:voltage:high 1.1;LOW 0.1")
        assert inst.query(":SOURce1:VOLTage:HIGH?;:SOUR1:VOLT:LOW?") == \
            "+1.100000000000000E+00;+1.000000000000000E-01"
        assert inst.query(":SYST:ERR?") == '+0,"No error"'
    finally:
        inst.close()
        rm.close()


def test_pulser_limits_clip_with_minus_222(emu):
    p = Loop(emu.instruments["pulser"])
    p.write(PULSER_SETUP[0])
    p.write(":SOUR1:VOLT:HIGH 3")
    assert p.query(":SYST:ERR?") == '-222,"Data out of range"'
    assert float(p.query(":SOUR1:VOLT:HIGH?")) == 2.0
    p.write(":SOUR1:VOLT:HIGH 1.5")
    assert p.query(":SYST:ERR?") == '+0,"No error"'


def test_unknown_tsp_statements_go_to_errorqueue(emu):
    c = Raw(emu.resources["smu"])
    try:
        c.write("bogus statement here")           # does not parse: nothing runs
        c.write("smua.source.levelv = 0.5; bogus(); smub.source.levelv = 0.7")
        assert c.query("print(errorqueue.count)") == "2.00000e+00"
        assert c.query("print(errorqueue.next())").split("\t") == [
            "-2.85000e+02", "TSP Syntax error at line 1: unexpected symbol near 'bogus statement "
            "here'", "2.00000e+00", TSP_ZERO]
        code, msg, sev, node = c.query("print(errorqueue.next())").split("\t")
        assert (code, sev, node) == ("-2.86000e+02", "2.00000e+00", TSP_ZERO)
        assert "bogus" in msg
        # a runtime error stops the chunk: the first assignment ran, the last did not
        assert c.query("print(smua.source.levelv, smub.source.levelv)") == \
            "5.00000e-01\t0.00000e+00"
        assert c.query("print(errorqueue.count)") == TSP_ZERO
    finally:
        c.close()
    m = Raw(emu.resources["matrix"])
    try:
        m.write('channel.exclusiveclose("1Z01")')
        assert m.query("print(errorqueue.count)") == "1.00000e+00"
        assert m.query("print(errorqueue.next())").startswith("1.11500e+03\t")
        assert m.query('print(channel.getclose("allslots"))') == "nil"
    finally:
        m.close()


# ---- physics through the documented routing --------------------------------------------------

def test_read_routing_gives_minus_g_v_within_read_noise(emu):
    cfg = emu.bench_config()
    g_true = emu.chip.conductances()
    # Read noise is truth io.read_noise (weight units) mapped to siemens by the bench's own
    # weight map; with every unselected line grounded only device (i, j) carries current, so
    # one reading's noise is sigma_I = sigma_G * V_read. 5 sigma per reading: a false alarm
    # over 20 readings has probability ~1e-5.
    w = cfg["weights"]
    sigma_g = emu.spec.io.read_noise * (w["g_max"] - w["g_min"]) / (w["w_max"] - w["w_min"])
    tol = 5 * sigma_g * V_READ
    assert sigma_g > 0
    # devices differ by many tolerances, so a routing mix-up could not pass
    assert np.ptp(g_true) * V_READ > 20 * tol
    rm, inst = visa(emu.resources["smu"])
    try:
        for i in range(ROWS):
            for j in range(COLS):
                cur = float(inst.query(read_message(cfg, i, j)))
                assert abs(cur - (-g_true[i, j] * V_READ)) < tol, (i, j)
        assert inst.query("print(errorqueue.count)") == TSP_ZERO
    finally:
        inst.close()
        rm.close()
    assert np.array_equal(emu.chip.conductances(), g_true)   # 0.2 V reads never disturb
    assert emu.stats()["hot_switches"] == 0


def test_v2_burst_moves_selected_device_n_steps(tmp_path):
    spec = spec_from_mapping(LINEAR)
    n, i, j = 50, 1, 2
    with Emulator(spec, rows=ROWS, cols=COLS, seed=3) as e:
        cfg = e.bench_config()
        smu, pulser = Raw(e.resources["smu"]), Raw(e.resources["pulser"])
        try:
            w0 = e.chip.weights()
            v2_potentiation(smu, pulser, cfg, i, j, n)
            dw = (e.chip.weights() - w0) / LINEAR["dw_min"]
        finally:
            smu.close()
            pulser.close()
        assert e.stats()["hot_switches"] == 0
    # selected: n full pulses, each step 1 +- 0.1 dw_min: sd 0.1 sqrt(50) = 0.7 steps
    assert abs(dw[i, j] - n) < 5
    half = np.zeros_like(dw, dtype=bool)
    half[i, :] = half[:, j] = True
    half[i, j] = False
    # half-selected see V/2 = 0.6 V: p = exp(-6) = 0.0025, ~0.12 pulses each on average
    assert np.abs(dw[half]).max() < 0.2 * n
    assert np.abs(dw[half]).sum() < 0.2 * n
    assert np.all(dw[half] >= 0)
    # unselected rows and columns are both at V/2: 0 V, never a change
    unselected = (np.arange(ROWS)[:, None] != i) & (np.arange(COLS)[None, :] != j)
    assert np.all(dw[unselected] == 0)


def test_depression_and_default_50_ohm_load_doubles_amplitude():
    spec = spec_from_mapping(LINEAR)
    e = Emulator(spec, rows=2, cols=2, seed=0, serve=False)
    cfg = e.bench_config()
    smu, pulser = Loop(e.instruments["smu"]), Loop(e.instruments["pulser"])
    # depression on (0, 1): column 1 on the pulser, row 0 grounded, others at V/2
    route = channels(cfg, {("cols", 1): "pulse", ("rows", 0): "ground"}, "bias")
    smu.query(f'node[2].channel.exclusiveclose("{route}"); smub.source.levelv = 0.3; '
              "smub.source.output = smub.OUTPUT_ON; print(errorqueue.count)")
    # 50 ohm load setting (no :OUTP1:LOAD INF): 0.6 V programmed = 1.2 V on the device
    pulser.write(":SOUR1:FUNC PULS;:SOUR1:VOLT:HIGH 0.6;:SOUR1:VOLT:LOW 0;:SOUR1:BURS:MODE TRIG;"
                 ":TRIG1:SOUR BUS;:SOUR1:BURS:STAT ON")
    w0 = e.chip.weights()
    assert pulser.query(":SOUR1:BURS:NCYC 40;:OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?") == "1"
    dw = (e.chip.weights() - w0) / LINEAR["dw_min"]
    assert abs(dw[0, 1] + 40) < 5
    assert dw[1, 0] == 0


def test_pulse_v_measure_i_on_the_2600b_pulses_its_row():
    e = Emulator(spec_from_mapping(LINEAR), rows=2, cols=2, seed=0, serve=False)
    cfg = e.bench_config()
    smu = Loop(e.instruments["smu"])
    # row 0 on smua (sense row A), column 0 grounded, the rest floating (not routed)
    r0, c0 = cfg["wiring"]["rows"][0].split(":"), cfg["wiring"]["cols"][0].split(":")
    route = f"{r0[0]}A{int(r0[1]):02d},{c0[0]}D{int(c0[1]):02d}"
    w0 = e.chip.weights()
    assert smu.query(f'node[2].channel.exclusiveclose("{route}"); waitcomplete(0); '
                     "smua.source.limiti = 0.001; PulseVMeasureI(smua, 0, 1.2, 1e-06, 1e-06, 30); "
                     "smua.source.output = smua.OUTPUT_OFF; print(errorqueue.count)") == TSP_ZERO
    dw = (e.chip.weights() - w0) / LINEAR["dw_min"]
    assert abs(dw[0, 0] - 30) < 5
    assert e.stats()["hot_switches"] == 0


def test_smu_pulsed_v2_burst_disturbs_like_the_generator():
    """--pulse-source smu: a V/2 potentiation of (1, 2) from smua moves (1, 2) up by ~n
    steps; its half-selected neighbours (row 1, column 2) see +V/2 and move exactly as
    they do under the 33500B's burst (same seed, same amplitude: the same draws), and
    the rest see 0 V and stay."""
    import torch

    n = 250

    def moved(source: str) -> np.ndarray:
        e = Emulator(spec_from_mapping(LINEAR), rows=ROWS, cols=COLS, seed=4, serve=False,
                     pulse_source=source)
        e.chip.array.set_weights(torch.zeros(ROWS, COLS))  # far from the bounds (+-0.6)
        cfg, smu = e.bench_config(), Loop(e.instruments["smu"])
        w0 = e.chip.weights()
        if source == "smu":
            v2_potentiation_smu(smu, cfg, 1, 2, n)
        else:
            v2_potentiation(smu, Loop(e.instruments["pulser"]), cfg, 1, 2, n)
        assert e.stats()["hot_switches"] == 0
        assert not any(src.output for src in e.chip.sources.values())
        return (e.chip.weights() - w0) / LINEAR["dw_min"]

    smu, gen = moved("smu"), moved("generator")
    assert abs(smu[1, 2] - n) < 5 * np.sqrt(n) * LINEAR["dw_min_std"] + 5
    half = np.zeros((ROWS, COLS), dtype=bool)
    half[1, :] = half[:, 2] = True
    half[1, 2] = False
    np.testing.assert_allclose(smu[half], gen[half], atol=1e-9)
    # p(0.6 V) = exp(-6) per pulse: ~0.6 steps per half-selected device, all upwards
    assert (smu[half] >= -1e-9).all() and 0 < smu[half].sum() < 30
    assert np.all(smu[~half & (np.arange(COLS) != 2)[None, :]] == 0)


def test_hot_switches_counted_only_with_an_output_on(emu):
    c = Raw(emu.resources["smu"])
    try:
        c.query('node[2].channel.exclusiveclose("1A01"); print(errorqueue.count)')
        assert emu.stats()["hot_switches"] == 0
        c.write("smub.source.output = smub.OUTPUT_ON")
        c.query('node[2].channel.exclusiveclose("1A01"); print(errorqueue.count)')  # no change
        assert emu.stats()["hot_switches"] == 0
        c.query('node[2].channel.exclusiveclose("1B02"); print(errorqueue.count)')
        assert emu.stats()["hot_switches"] == 1
        c.write("smub.source.output = smub.OUTPUT_OFF")
        c.query('node[2].channel.open("allslots"); print(errorqueue.count)')
        assert emu.stats()["hot_switches"] == 1
    finally:
        c.close()
    emu.instruments["pulser"].handle(":OUTP1 ON")        # the pulser counts too
    emu.instruments["matrix"].handle('channel.close("1C03")')
    assert emu.stats()["hot_switches"] == 2
    assert emu.stats()["messages"]["smu"] == 6


def test_tsp_link_dispatches_node2_statements_to_the_707b(emu):
    smu, mat = Raw(emu.resources["smu"]), Raw(emu.resources["matrix"])
    try:
        assert smu.query('node[2].channel.exclusiveclose("1C05,1A01"); waitcomplete(0); '
                         "print(errorqueue.count)") == TSP_ZERO
        assert smu.query('print(node[2].channel.getclose("allslots"))') == "1A01;1C05"
        assert mat.query('print(channel.getclose("allslots"))') == "1A01;1C05"
        assert emu.chip.closed == {"1A01", "1C05"}
        # an error on node 2 shows in the master's queue, tagged with node 2
        smu.write('node[2].channel.exclusiveclose("9A01")')
        assert smu.query("print(node[2].errorqueue.count)") == "1.00000e+00"
        assert smu.query("print(errorqueue.next())").endswith("\t2.00000e+00")
        assert emu.chip.closed == {"1A01", "1C05"}
    finally:
        smu.close()
        mat.close()
    e = Emulator(rows=2, cols=2, tsp_link=False, serve=False)
    smu2 = e.instruments["smu"]
    assert smu2.handle('node[2].channel.open("allslots")') is None
    assert smu2.handle("print(errorqueue.count)") == "1.00000e+00"
    assert "tsp_link" not in e.bench_config()["instruments"]["matrix"]


# ---- faults ----------------------------------------------------------------------------------

def test_latency_per_message_and_latency_fault():
    with Emulator(rows=2, cols=2, latency_ms=50, faults=["latency:400"]) as e:
        c = Raw(e.resources["pulser"])
        try:
            # lower bounds are the emulator's sleeps; upper bounds only order the three
            # (a busy machine can stretch any reply, never shorten a sleep)
            t = time.perf_counter()
            assert c.query("*IDN?") == IDN["pulser"]           # message 1: handshake
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            assert c.query("*OPC?") == "1"                     # message 2: delayed once
            t2 = time.perf_counter() - t
            t = time.perf_counter()
            assert c.query("*OPC?") == "1"
            t3 = time.perf_counter() - t
            assert t1 >= 0.05 and t3 >= 0.05 and t2 >= 0.45
            assert t1 < t2 and t3 < t2
        finally:
            c.close()


def test_latency_fault_times_out_a_pyvisa_query_then_the_reply_arrives():
    with Emulator(rows=2, cols=2, faults=["latency:600"]) as e:
        rm, inst = visa(e.resources["smu"], timeout_ms=200)
        try:
            assert inst.query("*IDN?") == IDN["smu"]
            with pytest.raises(pyvisa.errors.VisaIOError) as exc:
                inst.query("print(errorqueue.count)")
            assert exc.value.error_code == pyvisa.constants.StatusCode.error_timeout
            time.sleep(0.6)
            assert inst.read() == TSP_ZERO    # the late reply is still in the buffer
        finally:
            inst.close()
            rm.close()


def test_drop_after_closes_once_and_a_reconnect_works():
    with Emulator(rows=2, cols=2, faults=["drop-after:2"]) as e:
        for name in ("smu", "matrix", "pulser"):   # every server counts its own messages
            c = Raw(e.resources[name])
            assert c.query("*IDN?") == IDN[name]
            assert c.query("*OPC?") == "1"
            c.write("*IDN?")                           # message 3: connection closed
            with pytest.raises(ConnectionError):
                c.read()
            c.close()
            c = Raw(e.resources[name])
            assert c.query("*IDN?") == IDN[name]
            assert c.query("*IDN?") == IDN[name]
            c.close()


def test_no_terminator_after_the_handshake():
    with Emulator(rows=2, cols=2, faults=["no-terminator"]) as e:
        c = Raw(e.resources["pulser"], timeout=0.5)
        try:
            assert c.query("*IDN?") == IDN["pulser"]
            c.write("*OPC?")
            with pytest.raises(socket.timeout):
                c.read()                                    # "1" without "\n"
            assert c.query("*OPC?") == "11"                 # the next reply completes it
        finally:
            c.close()


def test_error_after_pushes_one_instrument_error():
    with Emulator(rows=2, cols=2, faults=["error-after:1"]) as e:
        p, s = Raw(e.resources["pulser"]), Raw(e.resources["smu"])
        try:
            assert p.query("*IDN?") == IDN["pulser"]
            assert p.query(":SYST:ERR?") == '-200,"Execution error"'
            assert p.query(":SYST:ERR?") == '+0,"No error"'
            assert s.query("*IDN?") == IDN["smu"]
            assert s.query("print(errorqueue.count)") == "1.00000e+00"
            assert s.query("print(errorqueue.count)") == "1.00000e+00"   # once only
        finally:
            p.close()
            s.close()


def test_stuck_device_never_changes():
    e = Emulator(spec_from_mapping(LINEAR), rows=ROWS, cols=COLS, seed=2,
                 faults=["stuck:1,2"], serve=False)
    w0 = e.chip.weights()
    v2_potentiation(Loop(e.instruments["smu"]), Loop(e.instruments["pulser"]),
                    e.bench_config(), 1, 2, 50)
    assert e.chip.weights()[1, 2] == w0[1, 2]
    v2_potentiation(Loop(e.instruments["smu"]), Loop(e.instruments["pulser"]),
                    e.bench_config(), 0, 0, 50)
    assert e.chip.weights()[0, 0] > w0[0, 0] + 0.05


@pytest.mark.parametrize("bad", ["nope", "drop-after", "drop-after:x", "latency:-1",
                                 "stuck:1", "no-terminator:-2", "error-after"])
def test_bad_fault_specs_are_refused(bad):
    with pytest.raises(ValueError, match="fault"):
        parse_faults([bad])


def test_emulator_argument_checks_and_wiring():
    with pytest.raises(ValueError, match="72"):
        Emulator(rows=40, cols=33, serve=False)
    with pytest.raises(ValueError, match="pulse_source"):
        Emulator(rows=2, cols=2, pulse_source="laser", serve=False)
    for bad in (dict(smu="2450"), dict(bias_scheme="v/3")):
        with pytest.raises(ValueError, match="pulse_source 'smu' needs"):
            Emulator(rows=2, cols=2, pulse_source="smu", serve=False, **bad)
    with pytest.raises(ValueError, match="stuck"):
        Emulator(rows=2, cols=2, faults=["stuck:2,0"], serve=False)
    e = Emulator(rows=30, cols=42, serve=False)
    w = e.bench_config()["wiring"]
    assert w["rows"][:2] == ["1:1", "1:2"] and w["rows"][12] == "2:1"
    assert w["cols"][-1] == "6:12" and len(set(w["rows"] + w["cols"])) == 72


# ---- the CLI ---------------------------------------------------------------------------------

def _check_bench(data: dict, rows: int, cols: int) -> None:
    assert data["rows"] == rows and data["cols"] == cols
    assert set(data) - {"regions"} == {"rows", "cols", "instruments", "terminals", "wiring",
                                       "bias_scheme", "read", "pulse", "weights", "limits"}
    if "regions" in data:  # rpuhw emulate --bench-out: two example regions, the halves
        half = rows // 2
        assert data["regions"] == {"A": {"rows": [0, half], "cols": [0, cols]},
                                   "C": {"rows": [half, rows], "cols": [0, cols]}}
    assert {i["driver"] for i in data["instruments"].values()} == {
        "keithley2600b", "keithley707b", "keysight33500b"}
    assert data["instruments"]["matrix"]["tsp_link"] == {"via": "smu", "node": 2}
    assert set(data["terminals"]) == {"sense", "bias", "pulse", "ground"}
    assert len(data["wiring"]["rows"]) == rows and len(data["wiring"]["cols"]) == cols
    w = data["weights"]
    assert (w["g_min"], w["g_max"], w["w_min"], w["w_max"], w["dw_min"]) == (
        2e-5, 1e-4, -0.6, 0.6, 0.0021)   # the packaged hidden device (aihwkit dw_min)
    assert data["limits"]["v_max"] == 2.0
    try:  # the lead's validator, when present
        from rpuhw.drivers.bench_config import bench_from_mapping
    except ImportError:
        return
    bench_from_mapping(data, source="emulated")


def test_cli_serves_until_sigterm(tmp_path):
    out = tmp_path / "bench.yaml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rpuhw.drivers.emulators", "--rows", "3", "--cols", "4",
         "--seed", "5", "--bench-out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == f"ready {out}\n", proc.stderr.read() if proc.poll() is not None else line
        data = yaml.safe_load(out.read_text())
        _check_bench(data, 3, 4)
        resources = [i["resource"] for i in data["instruments"].values()]
        for res in resources:
            c = Raw(res)
            assert c.query("*IDN?") in IDN.values()
            c.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stdout.read() == ""            # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    for res in resources:
        with pytest.raises(OSError):
            Raw(res, timeout=1)


def test_emulator_bench_config_validates_in_process(emu):
    _check_bench(emu.bench_config(), ROWS, COLS)


def test_smu_pulse_source_bench_config():
    """--pulse-source smu: no 33500B; the pulse terminal is smua on sense's card row,
    pulses of 100 us (the 2600B's minimum) every 200 us."""
    e = Emulator(rows=ROWS, cols=COLS, pulse_source="smu", serve=False)
    data = e.bench_config()
    assert set(e.instruments) == {"smu", "matrix"} and "pulser" not in data["instruments"]
    assert {i["driver"] for i in data["instruments"].values()} == {"keithley2600b",
                                                                  "keithley707b"}
    assert data["terminals"]["pulse"] == {"instrument": "smu", "channel": "a",
                                          "matrix_row": "A"}
    assert data["bias_scheme"] == "v/2"
    assert data["pulse"]["potentiation"]["width_s"] == 1e-4
    assert data["pulse"]["period_s"] == 2e-4
    from rpuhw.drivers.bench_config import bench_from_mapping
    assert bench_from_mapping(data, source="emulated").pulse_source == "smu"


def test_write_bench_is_atomic_and_round_trips(emu, tmp_path):
    path = emu.write_bench(tmp_path / "b.yaml")
    assert yaml.safe_load(path.read_text()) == emu.bench_config()
    assert [p.name for p in tmp_path.iterdir()] == ["b.yaml"]   # no temp file left


@pytest.mark.parametrize("argv, arg", [
    (["--device", "missing.yaml"], "--device"),
    (["--fault", "explode"], "--fault"),
    (["--rows", "40", "--cols", "40"], "--rows"),
    (["--smu", "2400"], "--smu"),
    (["--pulse-source", "laser"], "--pulse-source"),
    (["--pulse-source", "smu", "--smu", "2450"], "--pulse-source"),
    (["--pulse-source", "smu", "--bias-scheme", "v/3"], "--pulse-source"),
])
def test_cli_bad_input_exits_2_with_one_line(argv, arg, tmp_path, capsys):
    out = tmp_path / "bench.yaml"
    assert main(["emulate", *argv, "--bench-out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rpuhw emulate: error: ")
    assert arg in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_cli_device_without_conductance_is_refused(tmp_path, capsys):
    dev = tmp_path / "dev.yaml"
    dev.write_text("model: constant_step\n")
    assert main(["emulate", "--device", str(dev), "--bench-out", str(tmp_path / "b.yaml")]) == 2
    err = capsys.readouterr().err
    assert "--device" in err and "conductance" in err
    assert [p.name for p in tmp_path.iterdir()] == ["dev.yaml"]
