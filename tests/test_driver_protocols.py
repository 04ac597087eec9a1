"""Protocol tests: every driver method sends exactly the strings of docs/instrument_commands.md.

Expected messages are written from the instrument manuals (via that document), never from
the emulators. Scripts are exhaustive: a :class:`ScriptedTransport` fails on any unexpected
message and on leftovers, so "nothing was sent" is proven by an already-empty script.
"""

from __future__ import annotations

import math

import pytest

from rpuhw.drivers.doubles import LoopbackTransport, ScriptedTransport, ScriptMismatch
from rpuhw.drivers.errors import (
    InstrumentCommandError,
    InstrumentError,
    InstrumentTimeout,
    SafetyError,
)
from rpuhw.drivers.instruments import (
    DRIVERS,
    Keithley707B,
    Keithley2450,
    Keithley2600B,
    Keysight33500B,
    get_driver,
)
from rpuhw.drivers.scpi import fmt, parse_scpi_error
from rpuhw.drivers.tsp import parse_tsp_error

IDN_2450 = "KEITHLEY INSTRUMENTS,MODEL 2450,04512345,1.7.12b"
IDN_2602 = "Keithley Instruments Inc., Model 2602B, 04512346, 4.0.4"
IDN_707 = "Keithley Instruments Inc., Model 707B, 04512347, 1.6.2"
IDN_335 = "Keysight Technologies,33522B,MY52345678,4.03-1.19-2.00-52-00"
ZERO = "0.00000e+00"
NOERR = '0,"No error"'
NOERR_K = '+0,"No error"'
TSP_ERR = "-2.85000e+02\tTSP Syntax error at line 1: unexpected symbol\t2.00000e+00\t0.00000e+00"
EXCL = 'channel.exclusiveclose("1A01,1C05")'


def k2450(**kw):
    t = ScriptedTransport([("*IDN?", IDN_2450), ("*LANG?", "SCPI")])
    return Keithley2450(t, **kw), t


def k2600(**kw):
    t = ScriptedTransport([("*IDN?", IDN_2602)])
    return Keithley2600B(t, **kw), t


def k707():
    t = ScriptedTransport([("*IDN?", IDN_707)])
    return Keithley707B(t), t


def k335(**kw):
    t = ScriptedTransport([("*IDN?", IDN_335)])
    return Keysight33500B(t, **kw), t


def expect(t: ScriptedTransport, *script: tuple[str, str | None]) -> None:
    """Append the messages the next call must send (after construction consumed its part)."""
    t.assert_done()
    t.script.extend(script)


# -- number format ------------------------------------------------------------------------
def test_number_format_matches_the_document():
    assert [fmt(x) for x in (1e-4, 1e-7, 1.2, 0.0, -2.0)] == ["0.0001", "1e-07", "1.2", "0", "-2"]


# -- Keithley 2450 ------------------------------------------------------------------------
def test_2450_open_checks_idn_then_language():
    inst, t = k2450()
    t.assert_done()
    assert inst.idn == IDN_2450


def test_2450_reset():
    inst, t = k2450()
    expect(t, ("*RST", None), (":SYST:ERR?", NOERR))
    inst.reset()
    t.assert_done()


def test_2450_source_measure_output():
    inst, t = k2450()
    expect(t, (":SOUR:FUNC VOLT;:SOUR:VOLT:ILIM 0.001;:SOUR:VOLT 0.2", None),
           (":SYST:ERR?", NOERR), (":OUTP ON", None), (":SYST:ERR?", NOERR),
           (":MEAS:CURR?", "1.234567E-06"), (":OUTP OFF", None), (":SYST:ERR?", NOERR))
    inst.source_voltage(0.2, 1e-3)
    inst.output(True)
    assert inst.measure_current() == pytest.approx(1.234567e-6, rel=1e-12)
    inst.output(False)
    t.assert_done()
    snap = inst.snapshot()
    assert snap["source_voltage_v"] == 0.2 and snap["compliance_a"] == 1e-3
    assert snap["output"] is False and snap["idn"] == IDN_2450


def test_2450_idn_mismatch_refused_before_any_setting():
    t = ScriptedTransport([("*IDN?", IDN_2602)])
    with pytest.raises(InstrumentError, match=r"Keithley 2450.*Model 2602B") as err:
        Keithley2450(t)
    assert "scripted" in str(err.value)
    t.assert_done()


@pytest.mark.parametrize("lang", ["TSP", "SCPI2400"])
def test_2450_in_tsp_mode_refused(lang):
    t = ScriptedTransport([("*IDN?", IDN_2450), ("*LANG?", lang)])
    with pytest.raises(InstrumentError, match=f"{lang}.*not 'SCPI'"):
        Keithley2450(t)
    t.assert_done()


def test_2450_error_queue_is_drained_and_raised():
    inst, t = k2450()
    msg = ":SOUR:FUNC VOLT;:SOUR:VOLT:ILIM 0.001;:SOUR:VOLT 0.2"
    expect(t, (msg, None), (":SYST:ERR?", '-222,"Data out of range"'),
           (":SYST:ERR?", '-113,"Undefined header"'), (":SYST:ERR?", NOERR))
    with pytest.raises(InstrumentCommandError) as err:
        inst.source_voltage(0.2, 1e-3)
    t.assert_done()
    e = err.value
    assert (e.code, e.message) == (-222, "Data out of range")
    assert msg in e.recent_commands and e.resource == "scripted"
    assert "-222" in str(e) and "scripted" in str(e)


def test_2450_output_on_refused_without_compliance():
    inst, t = k2450()
    with pytest.raises(SafetyError, match="compliance"):
        inst.output(True)
    t.assert_done()


def test_2450_reset_forgets_the_compliance():
    inst, t = k2450()
    expect(t, (":SOUR:FUNC VOLT;:SOUR:VOLT:ILIM 0.001;:SOUR:VOLT 0", None),
           (":SYST:ERR?", NOERR), ("*RST", None), (":SYST:ERR?", NOERR))
    inst.source_voltage(0.0, 1e-3)
    inst.reset()
    with pytest.raises(SafetyError):
        inst.output(True)
    t.assert_done()


@pytest.mark.parametrize("volts", [2.5, -2.01, math.nan, math.inf])
def test_2450_v_limit_and_finite_levels(volts):
    inst, t = k2450(v_limit=2.0)
    with pytest.raises(SafetyError, match="volts") as err:
        inst.source_voltage(volts, 1e-3)
    if math.isfinite(volts):
        assert "v_limit=2.0" in str(err.value) and repr(volts) in str(err.value)
    t.assert_done()


@pytest.mark.parametrize("c", [0.0, -1e-3, math.nan, "1e-3"])
def test_2450_compliance_validated(c):
    inst, t = k2450()
    with pytest.raises(ValueError, match="compliance_a"):
        inst.source_voltage(0.1, c)
    t.assert_done()


def test_2450_close_turns_output_off_then_closes():
    inst, t = k2450()
    expect(t, (":OUTP OFF", None), (":SYST:ERR?", NOERR))
    with inst:
        pass
    assert t.closed
    t.assert_done()
    inst.close()  # idempotent: sends nothing more


def test_2450_close_is_best_effort():
    inst, t = k2450()
    expect(t, (":OUTP OFF", None), (":SYST:ERR?", None))  # error query times out
    inst.close()
    assert t.closed


def test_bad_v_limit_refused_before_sending():
    t = ScriptedTransport([])
    with pytest.raises(ValueError, match="v_limit"):
        Keithley2450(t, v_limit=-1.0)


# -- Keithley 2600B -----------------------------------------------------------------------
def test_2600b_reset():
    inst, t = k2600()
    expect(t, ("reset(); print(errorqueue.count)", ZERO))
    inst.reset()
    t.assert_done()


@pytest.mark.parametrize("ch", ["a", "b"])
def test_2600b_channel_source_measure_output(ch):
    inst, t = k2600()
    n = f"smu{ch}"
    expect(t,
           (f"{n}.source.func = {n}.OUTPUT_DCVOLTS; {n}.source.limiti = 0.0001; "
            f"{n}.source.levelv = 0.2; print(errorqueue.count)", ZERO),
           (f"{n}.source.output = {n}.OUTPUT_ON; print(errorqueue.count)", ZERO),
           (f"print({n}.measure.i())", "1.23456e-06"),
           (f"{n}.source.output = {n}.OUTPUT_OFF; print(errorqueue.count)", ZERO))
    c = getattr(inst, ch)
    assert c.name == n
    c.source_voltage(0.2, 1e-4)
    c.output(True)
    assert c.measure_current() == pytest.approx(1.23456e-6, rel=1e-12)
    c.output(False)
    t.assert_done()
    assert inst.snapshot()[n]["source_voltage_v"] == 0.2


def test_2600b_pulse_voltage_default_and_explicit_period():
    inst, t = k2600()
    expect(t,
           ("smua.source.limiti = 0.001; PulseVMeasureI(smua, 0, 1.2, 1e-06, 1e-06, 5); "
            "smua.source.output = smua.OUTPUT_OFF; print(errorqueue.count)", ZERO),
           ("smub.source.limiti = 0.001; PulseVMeasureI(smub, 0, -0.8, 1e-06, 2e-06, 1); "
            "smub.source.output = smub.OUTPUT_OFF; print(errorqueue.count)", ZERO))
    inst.a.pulse_voltage(1.2, 1e-6, 5, 1e-3)
    inst.b.pulse_voltage(-0.8, 1e-6, 1, 1e-3, period_s=3e-6)
    t.assert_done()


@pytest.mark.parametrize("kw, name", [
    (dict(width_s=2e-6, period_s=2e-6), "width_s"), (dict(width_s=0.0), "width_s"),
    (dict(count=0), "count"), (dict(count=2.0), "count"), (dict(count=True), "count"),
    (dict(period_s=-1.0), "period_s"), (dict(compliance_a=0.0), "compliance_a"),
])
def test_2600b_pulse_arguments_validated(kw, name):
    inst, t = k2600()
    args = dict(volts=1.0, width_s=1e-6, count=1, compliance_a=1e-3) | kw
    with pytest.raises(ValueError, match=name):
        inst.a.pulse_voltage(**args)
    t.assert_done()


def test_2600b_output_on_refused_per_channel_until_compliance():
    inst, t = k2600()
    expect(t, ("smua.source.func = smua.OUTPUT_DCVOLTS; smua.source.limiti = 0.001; "
               "smua.source.levelv = 0; print(errorqueue.count)", ZERO))
    inst.a.source_voltage(0.0, 1e-3)
    for call in (lambda: inst.b.output(True), lambda: inst.b.cmd_output(True)):
        with pytest.raises(SafetyError, match="smub.*compliance"):
            call()
    assert inst.b.cmd_output(False) == "smub.source.output = smub.OUTPUT_OFF"
    assert inst.a.cmd_output(True) == "smua.source.output = smua.OUTPUT_ON"
    t.assert_done()


def test_2600b_v_limit_on_methods_and_builders():
    inst, t = k2600(v_limit=1.5)
    with pytest.raises(SafetyError, match=r"smua volts=2.0 V exceeds v_limit=1.5"):
        inst.a.source_voltage(2.0, 1e-3)
    with pytest.raises(SafetyError, match="v_limit"):
        inst.b.cmd_source_voltage(-1.6, 1e-3)
    with pytest.raises(SafetyError, match="v_limit"):
        inst.a.pulse_voltage(1.51, 1e-6, 1, 1e-3)
    with pytest.raises(SafetyError, match="v_limit"):
        inst.a.cmd_pulse_voltage(-3.0, 1e-6, 1, 1e-3)
    t.assert_done()


def test_2600b_error_queue_is_drained_and_raised():
    inst, t = k2600()
    expect(t, ("bogus(); print(errorqueue.count)", "2.00000e+00"),
           ("print(errorqueue.next())", TSP_ERR),
           ("print(errorqueue.next())", "-2.86000e+02\tTSP Runtime error\t2.00000e+00\t"
                                        "0.00000e+00"))
    with pytest.raises(InstrumentCommandError) as err:
        inst.run(["bogus()"])
    t.assert_done()
    e = err.value
    assert e.code == -285 and e.message == "TSP Syntax error at line 1: unexpected symbol"
    assert "bogus(); print(errorqueue.count)" in e.recent_commands


def test_2600b_tsp_joins_statements_in_one_message():
    inst, t = k2600()
    expect(t, ("smua.source.output = smua.OUTPUT_OFF; print(smua.measure.i())", "1.0e-06"),
           ("a = 1; b = 2", None))
    stmts = [inst.a.cmd_output(False), inst.a.cmd_measure_current()]
    assert inst.tsp(stmts, reply=True) == "1.0e-06"
    assert inst.tsp(["a = 1", "b = 2"], reply=False) is None
    t.assert_done()


def test_2600b_builders():
    inst, _ = k2600()
    assert inst.b.cmd_source_voltage(0.2, 1e-3) == [
        "smub.source.func = smub.OUTPUT_DCVOLTS", "smub.source.limiti = 0.001",
        "smub.source.levelv = 0.2"]
    assert inst.a.cmd_measure_current() == "print(smua.measure.i())"
    assert inst.a.cmd_pulse_voltage(1.0, 1e-6, 2, 1e-3) == [
        "smua.source.limiti = 0.001", "PulseVMeasureI(smua, 0, 1, 1e-06, 1e-06, 2)",
        "smua.source.output = smua.OUTPUT_OFF"]


def test_2600b_idn_mismatch_and_close():
    t = ScriptedTransport([("*IDN?", IDN_707)])
    with pytest.raises(InstrumentError, match="Keithley 2600B"):
        Keithley2600B(t)
    t.assert_done()
    inst, t = k2600()
    expect(t, ("smua.source.output = smua.OUTPUT_OFF; print(errorqueue.count)", ZERO),
           ("smub.source.output = smub.OUTPUT_OFF; print(errorqueue.count)", ZERO))
    inst.close()
    assert t.closed
    t.assert_done()


def test_2600b_close_turns_second_channel_off_even_if_first_fails():
    inst, t = k2600()
    expect(t, ("smua.source.output = smua.OUTPUT_OFF; print(errorqueue.count)", None),
           ("smub.source.output = smub.OUTPUT_OFF; print(errorqueue.count)", ZERO))
    inst.close()
    t.assert_done()
    assert t.closed


# -- Keithley 707B ------------------------------------------------------------------------
def test_707b_methods():
    inst, t = k707()
    expect(t, ("reset(); print(errorqueue.count)", ZERO),
           (f"{EXCL}; waitcomplete(); print(errorqueue.count)", ZERO),
           ('print(channel.getclose("allslots"))', "1A01;1C05"),
           ('channel.open("allslots"); waitcomplete(); print(errorqueue.count)', ZERO),
           ('print(channel.getclose("allslots"))', "nil"))
    inst.reset()
    inst.close_exclusive(["1A01", "1C05"])
    assert inst.closed() == ["1A01", "1C05"]
    inst.open_all()
    assert inst.closed() == []
    t.assert_done()


@pytest.mark.parametrize("channels", [
    ["1I01"], ["7A01"], ["0A01"], ["1A13"], ["1A00"], ["1A1"], ["1a01"], ["1A01 "], [],
    "1A01", ["1A01", "1A01"], [101],
])
def test_707b_channel_specs_validated(channels):
    inst, t = k707()
    with pytest.raises(ValueError, match="channel"):
        inst.close_exclusive(channels)
    t.assert_done()


def test_707b_idn_mismatch_and_close_sends_nothing():
    t = ScriptedTransport([("*IDN?", IDN_2602)])
    with pytest.raises(InstrumentError, match="707B"):
        Keithley707B(t)
    t.assert_done()
    inst, t = k707()
    inst.close()
    assert t.closed


def test_707b_over_tsp_link_through_2600b():
    smu, t = k2600()
    m = Keithley707B(None, via=smu, node=2)
    assert m.resource == "scripted node[2]"
    t.assert_done()  # no *IDN? of its own over the link
    expect(t,
           ('node[2].channel.exclusiveclose("1A01,1C05"); waitcomplete(0); '
            "print(node[2].errorqueue.count)", ZERO),
           ('node[2].channel.open("allslots"); waitcomplete(0); '
            "print(node[2].errorqueue.count)", ZERO),
           ('print(node[2].channel.getclose("allslots"))', "1B02"),
           ("node[2].reset(); print(node[2].errorqueue.count)", "1.00000e+00"),
           ("print(node[2].errorqueue.next())",
            "-2.85000e+02\tTSP Syntax error\t2.00000e+00\t2.00000e+00"))
    m.close_exclusive(["1A01", "1C05"])
    m.open_all()
    assert m.closed() == ["1B02"]
    with pytest.raises(InstrumentCommandError, match="node\\[2\\]") as err:
        m.reset()
    assert err.value.code == -285
    t.assert_done()
    m.close()
    assert not t.closed  # the 2600B owns the transport


def test_bench_style_combined_message_over_tsp_link():
    smu, t = k2600()
    m = Keithley707B(None, via=smu, node=2)
    stmts = [smu.a.cmd_output(False), *m.cmd_close_exclusive(["1A09", "1B01"]),
             *smu.a.cmd_source_voltage(0.0, 1e-3), smu.a.cmd_output(True),
             smu.a.cmd_measure_current(), smu.a.cmd_output(False)]
    expect(t, ('smua.source.output = smua.OUTPUT_OFF; node[2].channel.exclusiveclose('
               '"1A09,1B01"); waitcomplete(0); smua.source.func = smua.OUTPUT_DCVOLTS; '
               "smua.source.limiti = 0.001; smua.source.levelv = 0; smua.source.output = "
               "smua.OUTPUT_ON; print(smua.measure.i()); smua.source.output = smua.OUTPUT_OFF",
               "-2.00000e-07"))
    assert float(smu.tsp(stmts, reply=True)) == -2e-7
    t.assert_done()


def test_707b_link_arguments():
    smu, _ = k2600()
    with pytest.raises(ValueError, match="node"):
        Keithley707B(None, via=smu)
    with pytest.raises(ValueError, match="node"):
        Keithley707B(None, via=smu, node=0)
    with pytest.raises(ValueError, match="resource"):
        Keithley707B(None)


# -- Keysight 33500B ----------------------------------------------------------------------
PULSE1 = (":OUTP1:LOAD INF;:SOUR1:FUNC PULS;:SOUR1:FUNC:PULS:PER 2e-06;"
          ":SOUR1:FUNC:PULS:WIDT 1e-06;:SOUR1:VOLT:HIGH 1.2;:SOUR1:VOLT:LOW 0;"
          ":SOUR1:BURS:MODE TRIG;:SOUR1:BURS:NCYC 1;:TRIG1:SOUR BUS;:SOUR1:BURS:STAT ON")


def test_33500b_methods():
    inst, t = k335()
    expect(t, ("*RST", None), (":SYST:ERR?", NOERR_K),
           (":SOUR1:VOLT:LIM:HIGH 2;:SOUR1:VOLT:LIM:LOW -2;:SOUR1:VOLT:LIM:STAT ON", None),
           (":SYST:ERR?", NOERR_K), (PULSE1, None), (":SYST:ERR?", NOERR_K),
           (":OUTP1 ON", None), (":SYST:ERR?", NOERR_K), ("*TRG;*OPC?", "1"),
           (":OUTP1 OFF", None), (":SYST:ERR?", NOERR_K),
           (":SOUR1:BURS:NCYC 3;:OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?", "1"))
    inst.reset()
    inst.voltage_limits(2.0)
    inst.configure_pulse(1.2, 0.0, 1e-6, 2e-6, 1)
    inst.output(True)
    inst.trigger()
    inst.output(False)
    inst.fire(3)
    t.assert_done()
    snap = inst.snapshot()
    assert snap["load"] == "INF" and snap["count"] == 3 and snap["output"] is False


def test_33500b_channel_2():
    inst, t = k335(channel=2)
    expect(t, (":OUTP2:LOAD INF;:SOUR2:FUNC PULS;:SOUR2:FUNC:PULS:PER 2e-06;"
               ":SOUR2:FUNC:PULS:WIDT 1e-06;:SOUR2:VOLT:HIGH 1.2;:SOUR2:VOLT:LOW 0;"
               ":SOUR2:BURS:MODE TRIG;:SOUR2:BURS:NCYC 1;:TRIG2:SOUR BUS;:SOUR2:BURS:STAT ON",
               None), (":SYST:ERR?", NOERR_K),
           (":SOUR2:BURS:NCYC 1;:OUTP2 ON;*TRG;*WAI;:OUTP2 OFF;*OPC?", "1"))
    inst.configure_pulse(1.2, 0.0, 1e-6, 2e-6, 1)
    inst.fire(1)
    t.assert_done()


def test_33500b_output_and_fire_refused_before_configure():
    inst, t = k335()
    with pytest.raises(SafetyError, match="configure_pulse"):
        inst.output(True)
    with pytest.raises(SafetyError, match="configure_pulse"):
        inst.fire(1)
    t.assert_done()


@pytest.mark.parametrize("args, name, exc", [
    ((2.5, 0.0, 1e-6, 2e-6, 1), "v_high", SafetyError),
    ((1.0, -2.5, 1e-6, 2e-6, 1), "v_low", SafetyError),
    ((0.0, 1.0, 1e-6, 2e-6, 1), "v_high", ValueError),
    ((1.0, 0.0, 2e-6, 2e-6, 1), "width_s", ValueError),
    ((1.0, 0.0, -1e-6, 2e-6, 1), "width_s", ValueError),
    ((1.0, 0.0, 1e-6, math.inf, 1), "period_s", ValueError),
    ((1.0, 0.0, 1e-6, 2e-6, 0), "count", ValueError),
    ((math.nan, 0.0, 1e-6, 2e-6, 1), "v_high", SafetyError),
])
def test_33500b_configure_pulse_validated(args, name, exc):
    inst, t = k335(v_limit=2.0)
    with pytest.raises(exc, match=name):
        inst.configure_pulse(*args)
    t.assert_done()


def test_33500b_voltage_limits_validated_and_errors_raised():
    inst, t = k335(v_limit=2.0)
    with pytest.raises(SafetyError, match="v_max"):
        inst.voltage_limits(3.0)
    with pytest.raises(ValueError, match="v_max"):
        inst.voltage_limits(0.0)
    expect(t, (":SOUR1:VOLT:LIM:HIGH 1;:SOUR1:VOLT:LIM:LOW -1;:SOUR1:VOLT:LIM:STAT ON", None),
           (":SYST:ERR?", '-222,"Data out of range"'), (":SYST:ERR?", NOERR_K))
    with pytest.raises(InstrumentCommandError, match="Data out of range") as err:
        inst.voltage_limits(1.0)
    assert err.value.code == -222
    t.assert_done()


def test_33500b_bad_opc_reply_and_close():
    inst, t = k335()
    expect(t, (PULSE1, None), (":SYST:ERR?", NOERR_K), ("*TRG;*OPC?", "0"))
    inst.configure_pulse(1.2, 0.0, 1e-6, 2e-6, 1)
    with pytest.raises(InstrumentError, match=r"\*OPC\?"):
        inst.trigger()
    expect(t, (":OUTP1 OFF", None), (":SYST:ERR?", NOERR_K))
    inst.close()
    t.assert_done()
    assert t.closed
    with pytest.raises(ValueError, match="channel"):
        Keysight33500B(ScriptedTransport([]), channel=3)


# -- registry and parsers -----------------------------------------------------------------
def test_registry():
    assert set(DRIVERS) == {"keithley2450", "keithley2600b", "keithley707b", "keysight33500b"}
    assert get_driver("keithley2600b") is Keithley2600B
    with pytest.raises(ValueError, match="keithley2450, keithley2600b, keithley707b"):
        get_driver("hp4145")


def test_error_parsers():
    assert parse_scpi_error('-113,"Undefined header"') == (-113, "Undefined header")
    assert parse_scpi_error('+0,"No error"') == (0, "No error")
    assert parse_tsp_error(TSP_ERR) == (-285, "TSP Syntax error at line 1: unexpected symbol", 2,
                                        0)
    with pytest.raises(ValueError):
        parse_scpi_error("garbage")
    with pytest.raises(ValueError):
        parse_tsp_error("1.0\tonly two")


def test_unparseable_error_reply_is_an_instrument_error():
    inst, t = k2450()
    expect(t, ("*RST", None), (":SYST:ERR?", "??"))
    with pytest.raises(InstrumentError, match="scripted"):
        inst.reset()


# -- ScriptedTransport / LoopbackTransport themselves ------------------------------------
def test_scripted_transport_fails_on_mismatch_with_both_strings_and_position():
    t = ScriptedTransport([("A", None), ("B?", "1")])
    t.write("A")
    with pytest.raises(ScriptMismatch, match=r"#1[\s\S]*'B\?'[\s\S]*'C\?'"):
        t.query("C?")
    assert (t.messages, t.queries) == (1, 0)


def test_scripted_transport_write_query_kinds_and_timeouts():
    t = ScriptedTransport([("X?", "1"), ("Y?", None)])
    with pytest.raises(ScriptMismatch, match="written"):
        t.write("X?")
    assert t.query("X?") == "1"
    with pytest.raises(InstrumentTimeout, match="Y"):
        t.query("Y?")
    t.assert_done()
    assert (t.messages, t.queries) == (2, 2)
    with pytest.raises(ScriptMismatch, match="script is done"):
        t.write("Z")


def test_scripted_transport_fails_on_leftovers():
    t = ScriptedTransport([("A", None), ("B", None)])
    t.write("A")
    with pytest.raises(ScriptMismatch, match="1 scripted message.*'B'"):
        t.assert_done()
    with pytest.raises(ScriptMismatch, match="never sent"):
        with ScriptedTransport([("A", None)]):
            pass
    with pytest.raises(KeyError):  # an exception in the body is not masked by assert_done
        with ScriptedTransport([("A", None)]):
            raise KeyError("body")


def test_loopback_transport_handshake_counters_and_driver():
    state = {"lang": "SCPI"}

    def handle(msg: str) -> str | None:
        return {"*IDN?": IDN_2450, "*LANG?": state["lang"], ":SYST:ERR?": NOERR,
                ":MEAS:CURR?": "-1e-06"}.get(msg)

    t = LoopbackTransport(handle, record=True)
    assert t.idn == IDN_2450 and (t.messages, t.queries) == (0, 0)
    inst = Keithley2450(t)
    inst.source_voltage(0.1, 1e-3)
    assert inst.measure_current() == -1e-6
    assert (t.messages, t.queries) == (4, 3)
    assert [e.sent for e in t.transcript] == [
        "*LANG?", ":SOUR:FUNC VOLT;:SOUR:VOLT:ILIM 0.001;:SOUR:VOLT 0.1", ":SYST:ERR?",
        ":MEAS:CURR?"]
    assert t.transcript[1].reply is None and t.transcript[3].reply == "-1e-06"
    with pytest.raises(InstrumentTimeout, match="loopback"):
        t.query(":BOGUS?")
    inst.close()
    assert t.closed


def test_tsp_waitcomplete_and_check_errors_direct_and_linked():
    smu, t = k2600()
    m = Keithley707B(None, via=smu, node=3)
    expect(t, ("waitcomplete(); print(1)", "1.00000e+00"),
           ("print(errorqueue.count)", ZERO),
           ("waitcomplete(0); print(1)", "1.00000e+00"),
           ("print(node[3].errorqueue.count)", "1.00000e+00"),
           ("print(node[3].errorqueue.next())", "-1.00000e+02\tCommand error\t2.00000e+00\t"
                                                "3.00000e+00"),
           ("print(errorqueue.count)", "nil"))
    smu.waitcomplete()
    smu.check_errors()
    m.waitcomplete()
    with pytest.raises(InstrumentCommandError, match="Command error"):
        m.check_errors()
    with pytest.raises(InstrumentError, match="errorqueue.count"):
        smu.check_errors()
    t.assert_done()


def test_del_turns_outputs_off_for_an_owned_transport():
    import gc

    inst, t = k2450()
    inst._owns_transport = True  # as if opened from a VISA address by the driver
    expect(t, (":OUTP OFF", None), (":SYST:ERR?", NOERR))
    del inst
    gc.collect()
    t.assert_done()
    assert t.closed


def test_del_leaves_a_callers_transport_alone():
    import gc

    inst, t = k2450()
    del inst
    gc.collect()
    assert not t.closed  # nothing sent either: the script is empty


def test_scripted_transport_bare_read():
    t = ScriptedTransport([("", "late reply")])
    assert t.read() == "late reply"
    assert (t.messages, t.queries) == (0, 0)
    t.assert_done()
