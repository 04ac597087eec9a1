"""Instrument drivers and their registry (names used in bench YAML ``driver:`` fields).

Each driver class registers itself (``@INSTRUMENTS.register``) under its ``name``;
importing this package registers the shipped ones.
"""

from __future__ import annotations

from ..instrument import INSTRUMENTS, Instrument
from .keithley707b import Keithley707B
from .keithley2450 import Keithley2450
from .keithley2600b import Keithley2600B, SmuChannel
from .keysight33500b import Keysight33500B

__all__ = ["DRIVERS", "INSTRUMENTS", "Keithley2450", "Keithley2600B", "Keithley707B",
           "Keysight33500B", "SmuChannel", "get_driver"]

DRIVERS = INSTRUMENTS
"""The same registry under its former name (``set(DRIVERS)`` lists the driver names)."""


def get_driver(name: str) -> type[Instrument]:
    """Driver class registered as ``name`` (case-insensitive); an unknown name raises
    :class:`~rpuhw.errors.ConfigError` (a ValueError) listing the known drivers."""
    return INSTRUMENTS.get(name)
