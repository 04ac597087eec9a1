"""The safety envelope and the read/pulse/weight settings shared by every hardware array.

One definition each, used by the bench YAML (:mod:`rpuhw.drivers.bench_config`) and
the ArC TWO YAML (:mod:`rpuhw.drivers.arc2`). Where a backend needs more fields, it
composes: the bench's sources are current-limited SMUs, so its read, pulse and limit
blocks add compliances (:class:`BenchReadConfig`, :class:`BenchPulseConfig`,
:class:`BenchLimits`); the ArC TWO uses the common blocks as they are. Units: volts,
amps, seconds, siemens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rpuhw.array import ArrayInfo
from rpuhw.config import require


# ---- safety limits -------------------------------------------------------------------
@dataclass
class Limits:
    """The safety envelope, enforced in code before any command leaves the host."""

    v_max: float = 2.0
    """No source, read or pulse level above this magnitude (V)."""

    def validate(self) -> None:
        require(self.v_max > 0, "v_max", f"must be > 0, got {self.v_max}")

    def allows(self, volts: float) -> bool:
        """True when ``volts`` is a finite level in (0, v_max] (a read voltage or a pulse
        amplitude, a magnitude across the device)."""
        return math.isfinite(volts) and 0 < volts <= self.v_max


@dataclass
class BenchLimits(Limits):
    """:class:`Limits` plus a ceiling on the SMUs' current compliances."""

    compliance_max_a: float = 1e-2
    """No current compliance above this (A)."""

    def validate(self) -> None:
        super().validate()
        require(self.compliance_max_a > 0, "compliance_max_a",
                f"must be > 0, got {self.compliance_max_a}")


# ---- reads ----------------------------------------------------------------------------
@dataclass
class ReadConfig:
    """Device reads at one voltage (conductance = |current| / voltage)."""

    voltage: float = 0.2
    """Read voltage (V) across each read device."""


@dataclass
class BenchReadConfig(ReadConfig):
    """:class:`ReadConfig` on a bench: row at ``voltage``, column on the sense ammeter,
    every other line grounded."""

    compliance_a: float = 1e-3
    """Current compliance (A) of the read sources."""


# ---- pulses ---------------------------------------------------------------------------
@dataclass
class PulseShape:
    """One pulse polarity."""

    amplitude: float = 1.2
    """Voltage magnitude (V) across the selected device."""
    width_s: float = 1e-6
    """Pulse width (s)."""

    @property
    def nanos(self) -> int:
        """Width in whole nanoseconds (the ArC TWO's unit)."""
        return int(round(self.width_s * 1e9))


@dataclass
class PulseConfig:
    """Update pulses, one shape per polarity."""

    potentiation: PulseShape = field(default_factory=PulseShape)
    """Row above column by ``amplitude`` (column grounded, or the row at +V/2 and the
    column at -V/2): weight up."""
    depression: PulseShape = field(default_factory=PulseShape)
    """Column above row by ``amplitude``: weight down."""


@dataclass
class BenchPulseConfig(PulseConfig):
    """:class:`PulseConfig` from a bench's ``pulse`` terminal (a pulse generator or the
    sense SMU): bursts at a fixed period, the bias sources current-limited."""

    period_s: float = 2e-6
    """Burst period (s); must exceed both widths."""
    compliance_a: float = 1e-3
    """Current compliance (A) of the bias sources while pulsing."""


# ---- conductance <-> weight ----------------------------------------------------------
@dataclass
class WeightMap:
    """Conductance -> weight: ``w = w_min + (g - g_min) (w_max - w_min) / (g_max - g_min)``."""

    g_min: float = 1e-6
    """Conductance (S) that maps to ``w_min``."""
    g_max: float = 1e-4
    """Conductance (S) that maps to ``w_max``."""
    w_min: float = -0.6
    """Weight at ``g_min``."""
    w_max: float = 0.6
    """Weight at ``g_max``."""
    dw_min: float = 0.001
    """Nominal weight change of one pulse (first guess for write-verify)."""

    def to_weight(self, g):
        """Weight of conductance ``g`` (S); floats, arrays or tensors."""
        return self.w_min + (g - self.g_min) * (self.w_max - self.w_min) / (self.g_max - self.g_min)

    def to_conductance(self, w):
        """Conductance (S) of weight ``w`` (the inverse of :meth:`to_weight`)."""
        return self.g_min + (w - self.w_min) * (self.g_max - self.g_min) / (self.w_max - self.w_min)

    def info(self, read_voltage: float | None = None) -> ArrayInfo:
        """The array's :class:`~rpuhw.array.ArrayInfo` from this map (and the read voltage)."""
        return ArrayInfo(dw_min=float(self.dw_min), w_min=float(self.w_min),
                         w_max=float(self.w_max), g_min=float(self.g_min),
                         g_max=float(self.g_max), read_voltage=read_voltage)

    def validate(self) -> None:
        require(self.g_min >= 0, "g_min", f"must be >= 0, got {self.g_min}")
        require(self.g_max > self.g_min, "g_max",
                f"must be > g_min ({self.g_min}), got {self.g_max}")
        require(self.w_max > self.w_min, "w_max",
                f"must be > w_min ({self.w_min}), got {self.w_max}")
        require(self.dw_min > 0, "dw_min", f"must be > 0, got {self.dw_min}")
