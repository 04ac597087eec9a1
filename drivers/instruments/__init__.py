"""Instrument drivers and their registry (names used in bench YAML ``driver:`` fields)."""

from __future__ import annotations

from ..scpi import Instrument
from .keithley707b import Keithley707B
from .keithley2450 import Keithley2450
from .keithley2600b import Keithley2600B, SmuChannel
from .keysight33500b import Keysight33500B

DRIVERS: dict[str, type[Instrument]] = {
    "keithley2450": Keithley2450,
    "keithley2600b": Keithley2600B,
    "keithley707b": Keithley707B,
    "keysight33500b": Keysight33500B,
}


def get_driver(name: str) -> type[Instrument]:
    """Driver class registered as ``name`` (case-insensitive); ValueError lists the names."""
    try:
        return DRIVERS[name.lower()]
    except (KeyError, AttributeError):
        known = ", ".join(sorted(DRIVERS))
        raise ValueError(f"unknown instrument driver {name!r}; known drivers: {known}") from None


__all__ = ["DRIVERS", "Keithley2450", "Keithley2600B", "Keithley707B", "Keysight33500B",
           "SmuChannel", "get_driver"]
