"""Keithley 2450 SourceMeter in its SCPI command set (2450-901-01).

Voltage source with current compliance, current measurement. The driver refuses an
instrument in TSP or SCPI2400 mode (``*LANG?`` != ``SCPI``) and ``output(True)`` before a
compliance was set with :meth:`Keithley2450.source_voltage`. Units: volts, amps.
"""

from __future__ import annotations

from ..command_table import Amps, Command, Switch, Volts, number
from ..errors import InstrumentError
from ..instrument import INSTRUMENTS
from ..scpi import ScpiInstrument


@INSTRUMENTS.register
class Keithley2450(ScpiInstrument):
    """Keithley 2450 SMU (SCPI mode)."""

    name = "keithley2450"
    MODEL = "Keithley 2450"
    MODEL_RE = r"MODEL 2450\b"
    IS_SMU = True
    ARMING = "no compliance set (call source_voltage first)"

    source_voltage = Command(
        ":SOUR:FUNC VOLT", ":SOUR:VOLT:ILIM {compliance_a}", ":SOUR:VOLT {volts}",
        volts=Volts(), compliance_a=Amps(), arms=True,
        records=lambda a: dict(source_voltage_v=a.volts, compliance_a=a.compliance_a),
        doc="Source ``volts`` with the current limit ``compliance_a``.")
    output = Command(
        ":OUTP {on}", on=Switch("ON", "OFF"), needs_armed="on",
        records=lambda a: dict(output=a.on),
        doc="Output relay on/off; on is refused until a compliance was set.")
    measure_current = Command(":MEAS:CURR?", reply=number, doc="One current reading (A).")

    def _after_open(self) -> None:
        lang = self._query("*LANG?")
        if lang.upper() != "SCPI":
            raise InstrumentError(
                f"command set is {lang!r}, not 'SCPI' (TSP or SCPI2400 mode); select SCPI "
                "on the front panel (System > Settings > Command Set) and reboot",
                self.resource,
            )

    def _outputs_off(self) -> None:
        self.output(False)
