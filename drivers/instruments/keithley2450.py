"""Keithley 2450 SourceMeter in its SCPI command set (2450-901-01).

Voltage source with current compliance, current measurement. The driver refuses an
instrument in TSP or SCPI2400 mode (``*LANG?`` != ``SCPI``) and ``output(True)`` before a
compliance was set with :meth:`Keithley2450.source_voltage`. Units: volts, amps.
"""

from __future__ import annotations

from ..errors import InstrumentError, SafetyError
from ..scpi import ScpiInstrument, fmt, positive
from ..transport import Transport


class Keithley2450(ScpiInstrument):
    """Keithley 2450 SMU (SCPI mode)."""

    DRIVER = "keithley2450"
    MODEL = "Keithley 2450"
    MODEL_RE = r"MODEL 2450\b"

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None) -> None:
        super().__init__(resource, backend=backend, timeout_s=timeout_s, v_limit=v_limit)
        self._compliance_set = False
        try:
            lang = self._query("*LANG?")
            if lang.upper() != "SCPI":
                raise InstrumentError(
                    f"command set is {lang!r}, not 'SCPI' (TSP or SCPI2400 mode); select SCPI "
                    "on the front panel (System > Settings > Command Set) and reboot",
                    self.resource,
                )
        except BaseException:
            self._closed = True
            if self._owns_transport:
                self.transport.close()
            raise

    def reset(self) -> None:
        """``*RST``; the compliance must be set again before output on."""
        self._compliance_set = False
        super().reset()

    def source_voltage(self, volts: float, compliance_a: float) -> None:
        """Source ``volts`` (V) with current limit ``compliance_a`` (A)."""
        v = self.level("volts", volts)
        c = positive("compliance_a", compliance_a, self.resource)
        self.configure([":SOUR:FUNC VOLT", f":SOUR:VOLT:ILIM {fmt(c)}", f":SOUR:VOLT {fmt(v)}"])
        self._compliance_set = True
        self._settings.update(source_voltage_v=v, compliance_a=c)

    def measure_current(self) -> float:
        """One current reading (A)."""
        return self._float(":MEAS:CURR?")

    def output(self, on: bool) -> None:
        """Output relay on/off; on is refused until a compliance was set."""
        if on and not self._compliance_set:
            raise SafetyError("output(True) refused: no compliance set (call source_voltage "
                              "first); nothing sent", self.resource)
        self._write(":OUTP ON" if on else ":OUTP OFF")
        self.check_errors()
        self._settings["output"] = bool(on)

    def _outputs_off(self) -> None:
        self.output(False)
