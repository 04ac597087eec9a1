"""Keithley 2600B System SourceMeter (TSP; 2600BS-901-01), channels ``smua`` / ``smub``.

Each channel's commands are declared once (:mod:`rpuhw.drivers.command_table`): a
method sends one (with the error check), and its ``cmd_*`` twin returns the same TSP
statements, so a bench can combine routing, output and measurement in one message with
:meth:`Keithley2600B.tsp`. Both validate alike (``v_limit`` in volts, compliance in
amps, widths/periods in seconds); a compliance built with ``cmd_source_voltage`` /
``cmd_pulse_voltage`` allows ``cmd_output(True)``; before that it raises
:class:`SafetyError`. Pulses use ``PulseVMeasureI`` of the KIPulse factory script
(bias 0 V). Command templates use ``{ch}``, the channel's name.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ..command_table import Amps, Command, Count, Seconds, Switch, Volts, number, width_below_period
from ..instrument import INSTRUMENTS, Channel
from ..safety import run_every
from ..transport import Transport
from ..tsp import TspInstrument


def _pulse_timing(a: SimpleNamespace, resource: str) -> dict[str, float]:
    """The period (default 2 x width) and the time between pulses (s)."""
    period = 2 * a.width_s if a.period_s is None else a.period_s
    width_below_period(a.width_s, period, resource)
    return {"period_s": period, "off_s": period - a.width_s}


class SmuChannel(Channel):
    """One SMU channel (``name`` is ``"smua"`` or ``"smub"``)."""

    ARMING = "no compliance set (call source_voltage or pulse_voltage first)"

    source_voltage = Command(
        "{ch}.source.func = {ch}.OUTPUT_DCVOLTS", "{ch}.source.limiti = {compliance_a}",
        "{ch}.source.levelv = {volts}",
        volts=Volts("{ch} volts"), compliance_a=Amps(), arms=True,
        records=lambda a: dict(source_voltage_v=a.volts, compliance_a=a.compliance_a),
        doc="DC voltage source: function, current limit, level.")
    output = Command(
        "{ch}.source.output = {ch}.{on}", on=Switch("OUTPUT_ON", "OUTPUT_OFF"),
        needs_armed="on", records=lambda a: dict(output=a.on),
        doc="Output on/off; on needs a compliance set first.")
    measure_current = Command("print({ch}.measure.i())", reply=number,
                              doc="One current reading (A).")
    pulse_voltage = Command(
        "{ch}.source.limiti = {compliance_a}",
        "PulseVMeasureI({ch}, 0, {volts}, {width_s}, {off_s}, {count})",
        "{ch}.source.output = {ch}.OUTPUT_OFF",
        volts=Volts("{ch} volts"), width_s=Seconds(), count=Count(), compliance_a=Amps(),
        period_s=Seconds(default=None), rule=_pulse_timing, arms=True,
        records=lambda a: dict(pulse_voltage_v=a.volts, pulse_width_s=a.width_s,
                               pulse_period_s=a.period_s, pulse_count=a.count,
                               compliance_a=a.compliance_a, output=False),
        doc="``count`` pulses 0 V -> ``volts`` of ``width_s`` every ``period_s`` (default "
            "2 * width_s), current limit ``compliance_a``; the output is off afterwards.")

    def _fields(self) -> dict[str, str]:
        return {"ch": self.name}


@INSTRUMENTS.register
class Keithley2600B(TspInstrument):
    """Keithley 2601B/2602B/26x4B/26x5B/26x6B; ``smu.a`` / ``smu.b`` are the channels."""

    name = "keithley2600b"
    MODEL = "Keithley 2600B"
    MODEL_RE = r"Model 26\d\dB\b"
    IS_SMU = True
    SMU_PULSES = True
    TSP_LINK_MASTER = True
    CHANNELS = ("a", "b")

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None) -> None:
        self.a = SmuChannel(self, "smua")
        self.b = SmuChannel(self, "smub")
        super().__init__(resource, backend=backend, timeout_s=timeout_s, v_limit=v_limit)

    @property
    def channels(self) -> tuple[SmuChannel, SmuChannel]:
        return (self.a, self.b)

    def channel(self, name: str | None) -> SmuChannel:
        """Channel ``"a"`` or ``"b"``."""
        return {"a": self.a, "b": self.b}[name or ""]

    def reset(self) -> None:
        """``reset()``; compliances must be set again before output on."""
        for ch in self.channels:
            ch.disarm()
        super().reset()

    def tsp(self, statements: list[str], reply: bool) -> str | None:
        """Send ``statements`` joined by ``"; "`` as one message; return the reply line
        when ``reply`` (the statements must print exactly one line), else None."""
        message = self.JOIN.join(statements)
        if reply:
            return self._query(message)
        self._write(message)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), **{ch.name: dict(ch.settings) for ch in self.channels}}

    def _outputs_off(self) -> None:
        # both channels, whatever the first one does; then the first error
        run_every([(f"{ch.name} output off", lambda ch=ch: ch.output(False))
                   for ch in self.channels], raise_first=True)
