"""The bench YAML: instruments, wiring, bias scheme, pulses, weight mapping, safety limits.

Loading validates everything that can be checked without an instrument, so a
bad file is refused with one :class:`~rpuhw.errors.ConfigError` naming the key
before anything is sent anywhere. See docs/hardware.md for the reference and
an annotated example; ``rpuhw emulate --bench-out`` writes a complete one.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpuhw.config import from_mapping, load_yaml, require
from rpuhw.errors import ConfigError

from .envelope import (
    BenchLimits,
    BenchPulseConfig,
    BenchReadConfig,
    Limits,
    PulseConfig,
    PulseShape,
    ReadConfig,
    WeightMap,
)
from .instrument import Instrument
from .instruments import INSTRUMENTS

__all__ = ["BenchConfig", "BenchLimits", "BenchPulseConfig", "BenchReadConfig",
           "InstrumentConfig", "Limits", "PulseConfig", "PulseShape", "ReadConfig",
           "Region", "TerminalConfig", "TspLink", "WeightMap", "Wiring", "bench_from_mapping",
           "load_bench"]

TERMINALS = ("sense", "bias", "pulse", "ground")
SMU_MIN_PULSE_WIDTH_S = 100e-6
"""Shortest pulse (s) a bench asks of a 2600B channel (``PulseVMeasureI``'s ``ton``).

The Series 2600B specifications (Models 2601B/2602B/2604B, SPEC-2602B, "Pulse
specifications") give a minimum programmable pulse width of 100 us, noting that a settled
pulse at a given level and load can need longer; the reference manual (2600BS-901-01,
"Pulse characteristics") defers pulse widths to those specifications, and its source
settling times (< 50 us on the 1 V range, < 110 us on the 10 V range) rule out shorter
pulses anyway. Shorter pulses need a pulse generator (``keysight33500b``)."""
_LINE = re.compile(r"^([1-6]):(\d{1,2})$")
_REGION_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass
class TspLink:
    """Reach a TSP instrument through another one's TSP-Link session."""

    via: str
    """Name of the TSP master instrument (a keithley2600b of this bench)."""
    node: int
    """TSP-Link node number of the linked instrument (2-64)."""


@dataclass
class InstrumentConfig:
    """One instrument of the bench."""

    driver: str
    """Driver name: keithley2450, keithley2600b, keithley707b or keysight33500b."""
    resource: str = ""
    """VISA resource string, e.g. ``TCPIP::192.168.0.12::5025::SOCKET``."""
    backend: str = "@py"
    """pyvisa backend (``@py``, ``@ivi``, ``path.yaml@sim``)."""
    timeout_s: float = 2.0
    """Reply timeout (s)."""
    tsp_link: TspLink | None = None
    """Reach this instrument through a TSP master instead of its own resource."""


@dataclass
class TerminalConfig:
    """An instrument terminal wired to one row of the switch-matrix card."""

    matrix_row: str
    """Card row letter A-H."""
    instrument: str | None = None
    """Instrument name (none for ``ground``)."""
    channel: str | None = None
    """Output channel of that instrument (``a``/``b`` on a 2600B, ``1``/``2`` on a 33500B).

    ``pulse`` names a 33500B channel, or the sense 2600B channel itself (instrument and
    channel of ``sense``, v/2 only, widths >= :data:`SMU_MIN_PULSE_WIDTH_S`): that
    channel then pulses with ``PulseVMeasureI`` and may share sense's card row."""


@dataclass
class Wiring:
    """Chip lines -> switch-matrix columns, written ``"SLOT:COLUMN"`` (slot 1-6, column 1-12)."""

    rows: list[str] = field(default_factory=list)
    """Matrix column of each chip row line (array output i)."""
    cols: list[str] = field(default_factory=list)
    """Matrix column of each chip column line (array input j)."""


@dataclass(frozen=True)
class Region:
    """A named block of the wired crossbar: chip rows ``rows[0] .. rows[1] - 1`` and chip
    columns ``cols[0] .. cols[1] - 1`` (half-open, counted in the order of ``wiring``).

    ``bench:BENCH.yaml#NAME`` opens an array on it (its top-left corner, at most the
    region's size), so that two arrays (an algorithm's A and C) share one chip."""

    name: str
    rows: tuple[int, int]
    """First chip row line, one past the last (0-based, ``wiring.rows`` order)."""
    cols: tuple[int, int]
    """First chip column line, one past the last (0-based, ``wiring.cols`` order)."""

    @property
    def shape(self) -> tuple[int, int]:
        """Devices (rows, cols) of the region."""
        return self.rows[1] - self.rows[0], self.cols[1] - self.cols[0]

    def describe(self) -> str:
        """``rows 0-15, cols 0-25`` (inclusive line numbers, for messages)."""
        return f"rows {self.rows[0]}-{self.rows[1] - 1}, cols {self.cols[0]}-{self.cols[1] - 1}"


@dataclass
class BenchConfig:
    """A whole bench YAML."""

    rows: int
    """Chip row lines wired (array rows = outputs)."""
    cols: int
    """Chip column lines wired (array columns = inputs)."""
    instruments: dict[str, Any]
    """Instrument name -> :class:`InstrumentConfig`."""
    terminals: dict[str, Any]
    """``sense``, ``bias``, ``pulse``, ``ground`` -> :class:`TerminalConfig`."""
    wiring: Wiring
    """Chip lines -> switch-matrix columns."""
    bias_scheme: str = "v/2"
    """Unselected lines during pulses: ``v/2`` or ``v/3``."""
    read: BenchReadConfig = field(default_factory=BenchReadConfig)
    """Read settings."""
    pulse: BenchPulseConfig = field(default_factory=BenchPulseConfig)
    """Pulse settings."""
    weights: WeightMap = field(default_factory=WeightMap)
    """Conductance -> weight map."""
    limits: BenchLimits = field(default_factory=BenchLimits)
    """Safety limits."""
    regions: dict[str, Any] = field(default_factory=dict)
    """Region name -> :class:`Region`: named blocks of the wired crossbar that arrays open
    as ``bench:BENCH.yaml#NAME``; written ``NAME: {rows: [START, STOP], cols: [START,
    STOP]}`` (half-open line numbers). Regions may overlap in the file; two arrays open
    at once on overlapping devices of one chip are refused."""
    source: str = field(default="<bench>", init=False, repr=False)
    """Where it was read from (for messages)."""

    def region(self, name: str) -> Region:
        """The region ``name`` (ConfigError listing the regions when there is none)."""
        if name not in self.regions:
            known = ", ".join(self.regions) if self.regions else "none: add a regions: block"
            raise ConfigError(f"unknown region {name!r} (regions: {known})", source=self.source,
                              key="regions")
        return self.regions[name]

    def channel(self, line: str, terminal: str) -> str:
        """707B channel that connects chip line ``"S:C"`` to ``terminal``'s card row."""
        slot, col = _LINE.match(line).groups()
        return f"{slot}{self.terminals[terminal].matrix_row}{int(col):02d}"

    def driver(self, name: str) -> type[Instrument]:
        """The driver class of instrument ``name``."""
        return INSTRUMENTS.get(self.instruments[name].driver)

    def matrix_name(self) -> str:
        """Name of the bench's switch matrix."""
        return next(n for n in self.instruments if self.driver(n).IS_SWITCH_MATRIX)

    @property
    def pulse_source(self) -> str:
        """``"generator"`` (a pulse generator pulses) or ``"smu"`` (the sense SMU channel
        pulses, with ``PulseVMeasureI`` on a 2600B)."""
        name = self.terminals["pulse"].instrument or ""
        smu = name in self.instruments and _known(self.instruments[name].driver) \
            and self.driver(name).SMU_PULSES
        return "smu" if smu else "generator"


def _known(driver: str) -> bool:
    """A registered driver name, spelt as registered (lower case)."""
    return driver in INSTRUMENTS.names()


def _drivers(test: Callable[[type[Instrument]], bool]) -> list[str]:
    """Registered driver names whose class passes ``test`` (sorted)."""
    return [n for n, cls in INSTRUMENTS.items() if test(cls)]


def _pulse_drivers() -> list[str]:
    """Drivers a ``pulse`` terminal may name: pulse generators, then SMUs that pulse
    (the sense channel itself)."""
    return _drivers(lambda d: d.IS_PULSE_GENERATOR) + _drivers(lambda d: d.SMU_PULSES)


def load_bench(path: str | Path) -> BenchConfig:
    """Read and validate a bench YAML (nothing is contacted)."""
    return bench_from_mapping(load_yaml(path), source=str(path))


def bench_from_mapping(data: dict[str, Any], source: str = "<bench>") -> BenchConfig:
    """Validate a bench mapping; every problem is one ConfigError naming the key."""
    data = dict(data)
    for key in ("rows", "cols", "instruments", "terminals", "wiring"):
        if key not in data:
            raise ConfigError("missing (a bench needs rows, cols, instruments, terminals and "
                              "wiring)", source=source, key=key)
    _check_quoted_lines(data.get("wiring"), source)
    instruments = _mapping_of(InstrumentConfig, data.pop("instruments"), source, "instruments")
    terminals = _mapping_of(TerminalConfig, data.pop("terminals"), source, "terminals")
    regions = data.pop("regions", None) or {}
    cfg = from_mapping(BenchConfig, {**data, "instruments": {}, "terminals": {}}, source=source)
    cfg.instruments, cfg.terminals, cfg.source = instruments, terminals, source
    try:
        _check(cfg)
        cfg.regions = _regions(regions, cfg.rows, cfg.cols)
    except ConfigError as exc:
        raise ConfigError(exc.detail, source=source, key=exc.key) from None
    return cfg


def _regions(value: Any, rows: int, cols: int) -> dict[str, Region]:
    """Validate ``regions:``: each a block inside the ``rows x cols`` wired crossbar."""
    require(isinstance(value, dict), "regions",
            f"expected a mapping NAME: {{rows: [START, STOP], cols: [START, STOP]}}, "
            f"got {value!r}")
    out: dict[str, Region] = {}
    for name, block in value.items():
        key = f"regions.{name}"
        require(isinstance(name, str) and _REGION_NAME.match(name) is not None, key,
                "a region name is letters, digits, '_', '.' or '-'")
        require(isinstance(block, dict) and set(block) == {"rows", "cols"}, key,
                f"expected {{rows: [START, STOP], cols: [START, STOP]}}, got {block!r}")
        span = {}
        for axis, n in (("rows", rows), ("cols", cols)):
            v = block[axis]
            ok = isinstance(v, list) and len(v) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in v)
            require(ok, f"{key}.{axis}", f"expected [START, STOP] (two integers), got {v!r}")
            require(0 <= v[0] < v[1] <= n, f"{key}.{axis}",
                    f"[{v[0]}, {v[1]}] is not inside the wired crossbar's {n} {axis} "
                    f"(need 0 <= START < STOP <= {n}; STOP is one past the last line)")
            span[axis] = (v[0], v[1])
        out[name] = Region(name, span["rows"], span["cols"])
    return out


def example_regions(rows: int, cols: int) -> dict[str, dict[str, list[int]]]:
    """Two regions for an algorithm's arrays: ``A`` the top half of the wired rows, ``C``
    the bottom half, each all columns (on the 32 x 32 emulated chip: 16 x 32 each, room
    for conv1's 16 x 26 A and C); none when there is a single row."""
    if rows < 2:
        return {}
    half = rows // 2
    return {"A": {"rows": [0, half], "cols": [0, cols]},
            "C": {"rows": [half, rows], "cols": [0, cols]}}


def _check_quoted_lines(wiring: Any, source: str) -> None:
    """YAML 1.1 reads an unquoted 1:9 as the base-60 number 69: say so."""
    if not isinstance(wiring, dict):
        return
    for name in ("rows", "cols"):
        for k, line in enumerate(wiring.get(name) or []):
            if isinstance(line, int):
                raise ConfigError(f"got the number {line}; write matrix columns in quotes "
                                  "('1:9'): YAML reads an unquoted 1:9 as a base-60 number",
                                  source=source, key=f"wiring.{name}[{k}]")


def _mapping_of(cls, value, source: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"expected a non-empty mapping, got {value!r}", source=source, key=key)
    out = {}
    for name, block in value.items():
        if not isinstance(block, dict):
            raise ConfigError(f"expected a mapping, got {block!r}", source=source,
                              key=f"{key}.{name}")
        if "channel" in block and block["channel"] is not None:
            block = {**block, "channel": str(block["channel"])}
        out[str(name)] = from_mapping(cls, block, source=source, prefix=f"{key}.{name}.")
    return out


def _check(cfg: BenchConfig) -> None:
    require(cfg.rows >= 1, "rows", f"must be >= 1, got {cfg.rows}")
    require(cfg.cols >= 1, "cols", f"must be >= 1, got {cfg.cols}")
    _check_instruments(cfg)
    _check_terminals(cfg)
    _check_wiring(cfg)
    require(cfg.bias_scheme in ("v/2", "v/3"), "bias_scheme",
            f"must be v/2 or v/3, got {cfg.bias_scheme!r}")
    require(cfg.bias_scheme == "v/2" or cfg.pulse_source == "generator", "bias_scheme",
            "v/3 needs both SMU channels for its biases (V/3 and 2V/3), so the sense channel "
            "cannot also pulse: use v/2 with an SMU pulse terminal, or a keysight33500b")
    _check_levels(cfg)


def _check_instruments(cfg: BenchConfig) -> None:
    for name, inst in cfg.instruments.items():
        key = f"instruments.{name}"
        require(_known(inst.driver), f"{key}.driver",
                f"unknown driver {inst.driver!r} (known: {', '.join(INSTRUMENTS.names())})")
        require(inst.timeout_s > 0, f"{key}.timeout_s", f"must be > 0, got {inst.timeout_s}")
        if inst.tsp_link is None:
            require(bool(inst.resource), f"{key}.resource", "missing (a VISA resource string)")
            continue
        via = cfg.instruments.get(inst.tsp_link.via)
        masters = _drivers(lambda d: d.TSP_LINK_MASTER)
        require(via is not None and via.driver in masters, f"{key}.tsp_link.via",
                f"must name a {' or '.join(masters)} of this bench, got {inst.tsp_link.via!r}")
        nodes = _drivers(lambda d: d.TSP_LINK_NODE)
        require(inst.driver in nodes, f"{key}.tsp_link",
                f"only a {' or '.join(nodes)} can be reached over TSP-Link here, "
                f"not {inst.driver}")
        require(2 <= inst.tsp_link.node <= 64, f"{key}.tsp_link.node",
                f"must be in 2..64, got {inst.tsp_link.node}")
    matrices = [n for n in cfg.instruments if cfg.driver(n).IS_SWITCH_MATRIX]
    kinds = " or ".join(_drivers(lambda d: d.IS_SWITCH_MATRIX))
    require(len(matrices) == 1, "instruments",
            f"a bench needs exactly one {kinds} switch matrix, found {len(matrices)}")


def _check_terminals(cfg: BenchConfig) -> None:
    for name in TERMINALS:
        require(name in cfg.terminals, f"terminals.{name}",
                f"missing (a bench needs terminals {', '.join(TERMINALS)})")
    rows_used: dict[str, str] = {}
    for name, term in cfg.terminals.items():
        key = f"terminals.{name}"
        require(name in TERMINALS, key, f"unknown terminal (known: {', '.join(TERMINALS)})")
        require(re.fullmatch(r"[A-H]", term.matrix_row or "") is not None, f"{key}.matrix_row",
                f"must be a card row letter A-H, got {term.matrix_row!r}")
        if name == "ground":
            require(term.instrument is None, f"{key}.instrument", "ground takes no instrument")
        else:
            inst = cfg.instruments.get(term.instrument or "")
            require(inst is not None, f"{key}.instrument",
                    f"unknown instrument {term.instrument!r} (bench has: "
                    f"{', '.join(cfg.instruments)})")
            wanted = _pulse_drivers() if name == "pulse" else _drivers(lambda d: d.IS_SMU)
            require(inst.driver in wanted, f"{key}.instrument",
                    f"{name} needs a {' or '.join(wanted)}, got {inst.driver}")
            chans = cfg.driver(term.instrument).CHANNELS
            chan = term.channel or ""
            require(chan in chans, f"{key}.channel",
                    f"{inst.driver} has channels {', '.join(c or '(none)' for c in chans)}, "
                    f"got {term.channel!r}")
        # one card row per terminal; the one exception: an SMU pulse terminal is the sense
        # channel itself, so it may sit on sense's card row (the same wire)
        shared = rows_used.get(term.matrix_row)
        smu_pulse_on_sense = {name, shared} == {"pulse", "sense"} and cfg.pulse_source == "smu"
        require(shared is None or smu_pulse_on_sense, f"{key}.matrix_row",
                f"card row {term.matrix_row} is already used by terminal {shared}")
        rows_used.setdefault(term.matrix_row, name)
    s, b = cfg.terminals["sense"], cfg.terminals["bias"]
    require((s.instrument, s.channel) != (b.instrument, b.channel), "terminals.bias",
            "sense and bias must be different source channels")
    if cfg.pulse_source == "smu":
        _check_smu_pulse(cfg)


def _check_smu_pulse(cfg: BenchConfig) -> None:
    """A 2600B pulse terminal is the sense channel itself (KIPulse ``PulseVMeasureI``)."""
    p, s = cfg.terminals["pulse"], cfg.terminals["sense"]
    which = "instrument" if p.instrument != s.instrument else "channel"
    require((p.instrument, p.channel) == (s.instrument, s.channel), f"terminals.pulse.{which}",
            f"an SMU pulse terminal must be the sense channel (instrument {s.instrument!r}, "
            f"channel {s.channel!r}; the bias channel holds V/2 meanwhile), got instrument "
            f"{p.instrument!r}, channel {p.channel!r}")


def _check_wiring(cfg: BenchConfig) -> None:
    for name, n in (("rows", cfg.rows), ("cols", cfg.cols)):
        lines = getattr(cfg.wiring, name)
        require(len(lines) == n, f"wiring.{name}",
                f"expected {n} entries ({name}: {n}), got {len(lines)}")
    seen: dict[tuple[int, int], str] = {}
    for name in ("rows", "cols"):
        for k, line in enumerate(getattr(cfg.wiring, name)):
            key = f"wiring.{name}[{k}]"
            m = _LINE.match(str(line))
            require(m is not None, key, f"expected 'SLOT:COLUMN' (slot 1-6, column 1-12), "
                                        f"got {line!r}")
            slot, col = int(m.group(1)), int(m.group(2))
            require(1 <= col <= 12, key, f"matrix column must be 1-12, got {col}")
            require((slot, col) not in seen, key,
                    f"matrix column {line} is already wired to {seen.get((slot, col))}")
            seen[(slot, col)] = f"wiring.{name}[{k}]"


def _check_levels(cfg: BenchConfig) -> None:
    v_max, i_max = cfg.limits.v_max, cfg.limits.compliance_max_a  # both > 0 (validate)
    require(cfg.limits.allows(cfg.read.voltage), "read.voltage",
            f"must be in (0, limits.v_max = {v_max}] V, got {cfg.read.voltage}")
    for key, c in (("read.compliance_a", cfg.read.compliance_a),
                   ("pulse.compliance_a", cfg.pulse.compliance_a)):
        require(0 < c <= i_max, key, f"must be in (0, limits.compliance_max_a = {i_max}] A, "
                                     f"got {c}")
    for pol in ("potentiation", "depression"):
        shape: PulseShape = getattr(cfg.pulse, pol)
        require(cfg.limits.allows(shape.amplitude), f"pulse.{pol}.amplitude",
                f"{shape.amplitude} V exceeds the bench's own limit limits.v_max = {v_max} V"
                if shape.amplitude > v_max else f"must be > 0, got {shape.amplitude}")
        require(0 < shape.width_s < cfg.pulse.period_s, f"pulse.{pol}.width_s",
                f"must be > 0 and < pulse.period_s = {cfg.pulse.period_s}, got {shape.width_s}")
        if cfg.pulse_source == "smu":
            require(shape.width_s >= SMU_MIN_PULSE_WIDTH_S, f"pulse.{pol}.width_s",
                    f"must be >= {SMU_MIN_PULSE_WIDTH_S:g} s, the 2600B's minimum pulse width "
                    f"(SMU pulse terminal), got {shape.width_s}; use a keysight33500b pulse "
                    "terminal for shorter pulses")
