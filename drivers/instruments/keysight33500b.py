"""Keysight 33500B waveform generator as a pulse source (SCPI; 33500B User's Guide).

Bursts of ``count`` pulses from ``v_low`` to ``v_high`` (volts, into a high-impedance
load: ``:OUTP<n>:LOAD INF`` is always sent first, else the 50 ohm default doubles the real
amplitude), ``width_s`` wide every ``period_s`` (seconds), fired by a bus trigger.
``output(True)`` / :meth:`Keysight33500B.fire` are refused until :meth:`configure_pulse`
has set the load and levels. Command templates use ``{c}``, the channel (1 or 2).
"""

from __future__ import annotations

from types import SimpleNamespace

from ..command_table import Command, Count, Seconds, Switch, Volts, done, width_below_period
from ..instrument import INSTRUMENTS
from ..scpi import ScpiInstrument
from ..transport import Transport


def _pulse_rule(a: SimpleNamespace, resource: str) -> None:
    if not a.v_high > a.v_low:
        raise ValueError(f"{resource}: v_high={a.v_high!r} V must be > v_low={a.v_low!r} V")
    width_below_period(a.width_s, a.period_s, resource)


@INSTRUMENTS.register
class Keysight33500B(ScpiInstrument):
    """Keysight 33500B/33600A-series generator, one channel (1 or 2)."""

    name = "keysight33500b"
    MODEL = "Keysight 33500B"
    MODEL_RE = r"335\d\dB\b"
    IS_PULSE_GENERATOR = True
    CHANNELS = ("1", "2")
    CHANNEL_AT_OPEN = True
    ARMING = "call configure_pulse first (high-Z load and levels not set)"

    voltage_limits = Command(
        ":SOUR{c}:VOLT:LIM:HIGH {v_max}", ":SOUR{c}:VOLT:LIM:LOW {v_min}",
        ":SOUR{c}:VOLT:LIM:STAT ON",
        v_max=Volts(positive=True), rule=lambda a, res: dict(v_min=-a.v_max),
        records=lambda a: dict(voltage_limit_v=a.v_max),
        doc="Instrument-side output clamp to +-``v_max``, enabled.")
    configure_pulse = Command(
        ":OUTP{c}:LOAD INF", ":SOUR{c}:FUNC PULS", ":SOUR{c}:FUNC:PULS:PER {period_s}",
        ":SOUR{c}:FUNC:PULS:WIDT {width_s}", ":SOUR{c}:VOLT:HIGH {v_high}",
        ":SOUR{c}:VOLT:LOW {v_low}", ":SOUR{c}:BURS:MODE TRIG", ":SOUR{c}:BURS:NCYC {count}",
        ":TRIG{c}:SOUR BUS", ":SOUR{c}:BURS:STAT ON",
        v_high=Volts(), v_low=Volts(), width_s=Seconds(), period_s=Seconds(), count=Count(),
        rule=_pulse_rule, arms=True,
        records=lambda a: dict(load="INF", v_high=a.v_high, v_low=a.v_low, width_s=a.width_s,
                               period_s=a.period_s, count=a.count),
        doc="High-Z load, pulse shape and a bus-triggered burst of ``count``.")
    output = Command(
        ":OUTP{c} {on}", on=Switch("ON", "OFF"), needs_armed="on",
        records=lambda a: dict(output=a.on),
        doc="Output on/off; on needs :meth:`configure_pulse` first.")
    trigger = Command("*TRG", "*OPC?", reply=done,
                      doc="Bus trigger of the armed burst; returns when the burst is done.")
    fire = Command(
        ":SOUR{c}:BURS:NCYC {count}", ":OUTP{c} ON", "*TRG", "*WAI", ":OUTP{c} OFF", "*OPC?",
        count=Count(), needs_armed=True, reply=done,
        records=lambda a: dict(count=a.count, output=False),
        doc="One message: a burst of ``count`` pulses with the output on only during the "
            "burst; the output is off again when this returns.")

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None,
                 channel: int | str = 1) -> None:
        if isinstance(channel, str) and channel in self.CHANNELS:
            channel = int(channel)
        if channel not in (1, 2) or isinstance(channel, bool):
            raise ValueError(f"channel must be 1 or 2, got {channel!r}")
        self.channel_number = channel
        super().__init__(resource, backend=backend, timeout_s=timeout_s, v_limit=v_limit)

    def _fields(self) -> dict[str, str]:
        return {"c": str(self.channel_number)}

    def _outputs_off(self) -> None:
        self.output(False)
