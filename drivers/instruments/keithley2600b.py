"""Keithley 2600B System SourceMeter (TSP; 2600BS-901-01), channels ``smua`` / ``smub``.

Each channel exposes methods and the TSP statement builders they send (``cmd_*``), so a
bench can combine routing, output and measurement in one message with
:meth:`Keithley2600B.tsp`. Builders validate like the methods (``v_limit`` in volts,
compliance in amps, widths/periods in seconds) and record what they configure: a
compliance built with ``cmd_source_voltage`` / ``cmd_pulse_voltage`` allows
``cmd_output(True)``; before that it raises :class:`SafetyError`.
Pulses use ``PulseVMeasureI`` of the KIPulse factory script (bias 0 V).
"""

from __future__ import annotations

from typing import Any

from ..errors import SafetyError
from ..scpi import count_arg, fmt, positive
from ..transport import Transport
from ..tsp import TspInstrument


class SmuChannel:
    """One SMU channel (``name`` is ``"smua"`` or ``"smub"``)."""

    def __init__(self, instrument: Keithley2600B, name: str) -> None:
        self.instrument = instrument
        self.name = name
        self.compliance_set = False
        self.settings: dict[str, Any] = {}

    # -- statement builders -------------------------------------------------------------
    def cmd_source_voltage(self, volts: float, compliance_a: float) -> list[str]:
        """DC voltage source statements: function, current limit (A), level (V)."""
        v = self.instrument.level(f"{self.name} volts", volts)
        c = positive("compliance_a", compliance_a, self.instrument.resource)
        n = self.name
        self.compliance_set = True
        self.settings.update(source_voltage_v=v, compliance_a=c)
        return [f"{n}.source.func = {n}.OUTPUT_DCVOLTS", f"{n}.source.limiti = {fmt(c)}",
                f"{n}.source.levelv = {fmt(v)}"]

    def cmd_output(self, on: bool) -> str:
        """Output on/off statement; on needs a compliance set first."""
        if on and not self.compliance_set:
            raise SafetyError(f"{self.name} output on refused: no compliance set (call "
                              "source_voltage or pulse_voltage first); nothing sent",
                              self.instrument.resource)
        self.settings["output"] = bool(on)
        state = "OUTPUT_ON" if on else "OUTPUT_OFF"
        return f"{self.name}.source.output = {self.name}.{state}"

    def cmd_measure_current(self) -> str:
        """``print(smuX.measure.i())``: one current reading (A)."""
        return f"print({self.name}.measure.i())"

    def cmd_pulse_voltage(self, volts: float, width_s: float, count: int,
                          compliance_a: float, period_s: float | None = None) -> list[str]:
        """``count`` pulses 0 V -> ``volts`` of ``width_s`` every ``period_s`` (default
        2 * width_s), current limit ``compliance_a``; the output is off afterwards."""
        res = self.instrument.resource
        v = self.instrument.level(f"{self.name} volts", volts)
        w = positive("width_s", width_s, res)
        n_p = count_arg("count", count, res)
        c = positive("compliance_a", compliance_a, res)
        p = 2 * w if period_s is None else positive("period_s", period_s, res)
        if not w < p:
            raise ValueError(f"{res}: width_s={w!r} s must be < period_s={p!r} s")
        n = self.name
        self.compliance_set = True
        self.settings.update(pulse_voltage_v=v, pulse_width_s=w, pulse_period_s=p,
                             pulse_count=n_p, compliance_a=c, output=False)
        return [f"{n}.source.limiti = {fmt(c)}",
                f"PulseVMeasureI({n}, 0, {fmt(v)}, {fmt(w)}, {fmt(p - w)}, {n_p})",
                f"{n}.source.output = {n}.OUTPUT_OFF"]

    # -- methods ------------------------------------------------------------------------
    def source_voltage(self, volts: float, compliance_a: float) -> None:
        """Source ``volts`` (V) with current limit ``compliance_a`` (A); check errors."""
        self.instrument.run(self.cmd_source_voltage(volts, compliance_a))

    def measure_current(self) -> float:
        """One current reading (A)."""
        return self.instrument.print_number(f"{self.name}.measure.i()")

    def output(self, on: bool) -> None:
        """Output on/off; check errors."""
        self.instrument.run([self.cmd_output(on)])

    def pulse_voltage(self, volts: float, width_s: float, count: int, compliance_a: float,
                      period_s: float | None = None) -> None:
        """Pulse train (see :meth:`cmd_pulse_voltage`) in one message; check errors."""
        self.instrument.run(self.cmd_pulse_voltage(volts, width_s, count, compliance_a,
                                                   period_s))


class Keithley2600B(TspInstrument):
    """Keithley 2601B/2602B/26x4B/26x5B/26x6B; ``smu.a`` / ``smu.b`` are the channels."""

    DRIVER = "keithley2600b"
    MODEL = "Keithley 2600B"
    MODEL_RE = r"Model 26\d\dB\b"

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None) -> None:
        super().__init__(resource, backend=backend, timeout_s=timeout_s, v_limit=v_limit)
        self.a = SmuChannel(self, "smua")
        self.b = SmuChannel(self, "smub")

    @property
    def channels(self) -> tuple[SmuChannel, SmuChannel]:
        return (self.a, self.b)

    def reset(self) -> None:
        """``reset()``; compliances must be set again before output on."""
        for ch in self.channels:
            ch.compliance_set = False
            ch.settings.clear()
        super().reset()

    def tsp(self, statements: list[str], reply: bool) -> str | None:
        """Send ``statements`` joined by ``"; "`` as one message; return the reply line
        when ``reply`` (the statements must print exactly one line), else None."""
        message = "; ".join(statements)
        if reply:
            return self._query(message)
        self._write(message)
        return None

    def snapshot(self) -> dict[str, Any]:
        return {**super().snapshot(), **{ch.name: dict(ch.settings) for ch in self.channels}}

    def _outputs_off(self) -> None:
        errors = []
        for ch in self.channels:
            try:
                ch.output(False)
            except Exception as exc:  # keep going: the other channel must go off too
                errors.append(exc)
        if errors:
            raise errors[0]
