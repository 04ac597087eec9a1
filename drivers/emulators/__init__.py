"""Shipped instrument emulators: a simulated chip behind emulated lab instruments.

``Emulator`` builds an :class:`EmulatedChip` (a seeded SimulatedArray of the
truth device, relays, a nodal solver and a pulse-disturb model), the instrument
personalities that share it (Keithley 2600B or 2450, Keithley 707B, Keysight
33500B; each with ``handle(message) -> reply | None``), and one TCP server per
instrument on 127.0.0.1. ``rpuhw emulate`` runs it as a process and writes the
bench YAML. The instruments understand exactly the command subset of
docs/instrument_commands.md and answer anything else with their own errors.
"""

from rpuhw.drivers.emulators.base import Personality
from rpuhw.drivers.emulators.bench import HIDDEN_DEVICE, Emulator, resolve_device
from rpuhw.drivers.emulators.chip import EmulatedChip, PulsePhysics, Source
from rpuhw.drivers.emulators.scpi import Keithley2450, Keysight33500B
from rpuhw.drivers.emulators.server import Faults, InstrumentServer, parse_faults
from rpuhw.drivers.emulators.tsp import Keithley707B, Keithley2600B

__all__ = ["Emulator", "EmulatedChip", "PulsePhysics", "Source", "Personality",
           "Keithley2450", "Keithley2600B", "Keithley707B", "Keysight33500B",
           "InstrumentServer", "Faults", "parse_faults", "HIDDEN_DEVICE", "resolve_device"]
