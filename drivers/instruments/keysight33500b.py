"""Keysight 33500B waveform generator as a pulse source (SCPI; 33500B User's Guide).

Bursts of ``count`` pulses from ``v_low`` to ``v_high`` (volts, into a high-impedance
load: ``:OUTP<n>:LOAD INF`` is always sent first, else the 50 ohm default doubles the real
amplitude), ``width_s`` wide every ``period_s`` (seconds), fired by a bus trigger.
``output(True)`` / :meth:`Keysight33500B.fire` are refused until :meth:`configure_pulse`
has set the load and levels.
"""

from __future__ import annotations

from ..errors import SafetyError
from ..scpi import ScpiInstrument, count_arg, fmt, positive
from ..transport import Transport


class Keysight33500B(ScpiInstrument):
    """Keysight 33500B/33600A-series generator, one channel (1 or 2)."""

    DRIVER = "keysight33500b"
    MODEL = "Keysight 33500B"
    MODEL_RE = r"335\d\dB\b"

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None,
                 channel: int = 1) -> None:
        if channel not in (1, 2) or isinstance(channel, bool):
            raise ValueError(f"channel must be 1 or 2, got {channel!r}")
        self.channel = channel
        self._configured = False
        super().__init__(resource, backend=backend, timeout_s=timeout_s, v_limit=v_limit)

    def reset(self) -> None:
        """``*RST``; the pulse must be configured again before output on."""
        self._configured = False
        super().reset()

    def voltage_limits(self, v_max: float) -> None:
        """Instrument-side output clamp to +-``v_max`` (V), enabled."""
        v = positive("v_max", self.level("v_max", v_max), self.resource)
        s = f":SOUR{self.channel}:VOLT:LIM"
        self.configure([f"{s}:HIGH {fmt(v)}", f"{s}:LOW {fmt(-v)}", f"{s}:STAT ON"])
        self._settings["voltage_limit_v"] = v

    def configure_pulse(self, v_high: float, v_low: float, width_s: float, period_s: float,
                        count: int) -> None:
        """High-Z load, pulse shape (V, V, s, s) and a bus-triggered burst of ``count``."""
        h, lo = self.level("v_high", v_high), self.level("v_low", v_low)
        res = self.resource
        if not h > lo:
            raise ValueError(f"{res}: v_high={h!r} V must be > v_low={lo!r} V")
        w, p = positive("width_s", width_s, res), positive("period_s", period_s, res)
        if not w < p:
            raise ValueError(f"{res}: width_s={w!r} s must be < period_s={p!r} s")
        n = count_arg("count", count, res)
        c = self.channel
        self.configure([
            f":OUTP{c}:LOAD INF", f":SOUR{c}:FUNC PULS", f":SOUR{c}:FUNC:PULS:PER {fmt(p)}",
            f":SOUR{c}:FUNC:PULS:WIDT {fmt(w)}", f":SOUR{c}:VOLT:HIGH {fmt(h)}",
            f":SOUR{c}:VOLT:LOW {fmt(lo)}", f":SOUR{c}:BURS:MODE TRIG",
            f":SOUR{c}:BURS:NCYC {n}", f":TRIG{c}:SOUR BUS", f":SOUR{c}:BURS:STAT ON",
        ])
        self._configured = True
        self._settings.update(load="INF", v_high=h, v_low=lo, width_s=w, period_s=p, count=n)

    def _require_configured(self, what: str) -> None:
        if not self._configured:
            raise SafetyError(f"{what} refused: call configure_pulse first (high-Z load and "
                              "levels not set); nothing sent", self.resource)

    def output(self, on: bool) -> None:
        """Output on/off; on needs :meth:`configure_pulse` first."""
        if on:
            self._require_configured("output(True)")
        self._write(f":OUTP{self.channel} {'ON' if on else 'OFF'}")
        self.check_errors()
        self._settings["output"] = bool(on)

    def trigger(self) -> None:
        """Bus trigger of the armed burst; returns when ``*OPC?`` answers (burst done)."""
        self.opc("*TRG;*OPC?")

    def fire(self, count: int) -> None:
        """One message: burst of ``count`` pulses with output on only during the burst;
        the output is off again when this returns."""
        n = count_arg("count", count, self.resource)
        self._require_configured("fire()")
        c = self.channel
        self._settings.update(count=n, output=False)
        self.opc(f":SOUR{c}:BURS:NCYC {n};:OUTP{c} ON;*TRG;*WAI;:OUTP{c} OFF;*OPC?")

    def _outputs_off(self) -> None:
        self.output(False)
