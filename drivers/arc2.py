"""ArC TWO backend: a :class:`~rpuhw.array.CrossPointArray` on an ArC TWO board via pyarc2.

Spec ``arc2:FILE.yaml`` (see :func:`open_arc2`). The YAML:

.. code-block:: yaml

    firmware: arc2fw.bin        # optional; relative to the YAML's folder; else $RPUHW_ARC2_FIRMWARE
    device_id: 0                # pyarc2.find_ids() entry to connect to
    rows: 32                    # chip rows wired (<= 32), chip row i -> a bit-line channel
    cols: 32                    # chip columns wired (<= 32), chip column j -> a word-line channel
    channel_map:                # optional: explicit channels (default: the board's 32x32 map)
      rows: [0, 1, 2, 3]        # bit-line channels 0-15, 32-47
      cols: [16, 17, 18, 19, 20]  # word-line channels 16-31, 48-63
    read: {voltage: 0.2}        # V across the read devices
    pulse:
      potentiation: {amplitude: 1.2, width_s: 1.0e-6}   # row (bit-line) high: weight up
      depression:   {amplitude: 1.2, width_s: 1.0e-6}   # column (word-line) high: weight down
    weights: {g_min: 1.0e-6, g_max: 1.0e-4, w_min: -0.6, w_max: 0.6, dw_min: 0.001}
    limits: {v_max: 2.0}        # no read/pulse level above this (V): checked at load and per call

Board model (libarc2): 64 channels; bit-lines (array rows) are channels 0-15 and
32-47, word-lines (columns) 16-31 and 48-63. Line index k (0-31) of the board's
32x32 array is channel ``k`` / ``k + 16`` (bit-lines, k < 16 / k >= 16) and
``k + 16`` / ``k + 32`` (word-lines). The default map puts chip row i on
bit-line index i and chip column j on word-line index j.

Electrical conventions used here (from libarc2's sources, pyarc2 0.6.0):

* ``pulse_one(low, high, v, nanos)`` puts ``-v/2`` on ``low`` and ``+v/2`` on
  ``high``: the device sees ``V(high) - V(low) = v``. ``pulse_slice_masked(chan,
  v, nanos, mask)`` does the same with ``low = chan`` and every ``high`` in mask.
* ``read_slice(chan, vread)`` biases ``chan`` at ``-vread`` and returns the 32
  currents of the crossing lines in board index order; ``read_all(vread,
  BiasOrder.Rows)`` does that for every word-line in turn, so its 32x32 result is
  indexed ``[word-line index, bit-line index]``. Conductance is ``|I| / vread``.

Batching of pulses: a device with ``n`` pulses of one polarity gets ``n``
queued pulses (pulse trains). Devices sharing a row and polarity are pulsed
together with ``pulse_slice_masked`` (row as the low channel, their columns as
the mask), as a staircase: pulse k goes to every device of that row that still
needs more than k pulses, so a row costs ``max |count|`` calls instead of the
sum; a step with a single device uses ``pulse_one``. Commands are queued and
run by ``execute()`` + ``wait()`` every :data:`MAX_QUEUE` commands and at the
end. Every operation ends with ``finalise_operation(IdleMode.Float)`` (also when
it fails), so no line is left biased.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpuhw.array import ArrayInfo, Capabilities, CrossPointArray
from rpuhw.config import from_mapping, load_yaml, require
from rpuhw.errors import ConfigError

from .envelope import Limits, PulseConfig, PulseShape, ReadConfig, WeightMap
from .errors import InstrumentConnectionError, SafetyError
from .safety import failsafe

try:
    import pyarc2
except ImportError:  # pragma: no cover - pyarc2 has wheels for x86_64 Linux/Windows only
    pyarc2 = None

log = logging.getLogger("rpuhw.drivers.arc2")

BOARD_LINES = 32
"""Bit-lines (and word-lines) of the board's 32x32 array."""
BIT_CHANNELS: tuple[int, ...] = tuple(range(0, 16)) + tuple(range(32, 48))
"""Channel of bit-line index k (array rows), in board index order."""
WORD_CHANNELS: tuple[int, ...] = tuple(range(16, 32)) + tuple(range(48, 64))
"""Channel of word-line index k (array columns), in board index order."""
MAX_QUEUE = 1024
"""Queued pulse commands between two ``execute()`` + ``wait()``."""
FIRMWARE_ENV = "RPUHW_ARC2_FIRMWARE"
"""Environment variable naming the firmware file when the YAML has no ``firmware``."""

_BIT_INDEX = {ch: k for k, ch in enumerate(BIT_CHANNELS)}
_WORD_INDEX = {ch: k for k, ch in enumerate(WORD_CHANNELS)}


# ---- configuration ----------------------------------------------------------------------
@dataclass
class ChannelMap:
    """Explicit board channels of the chip lines (each side optional)."""

    rows: list[int] | None = None
    """Bit-line channel (0-15, 32-47) of each chip row; default: row i -> bit-line index i."""
    cols: list[int] | None = None
    """Word-line channel (16-31, 48-63) of each chip column; default: column j -> index j."""


@dataclass
class Arc2Config:
    """A whole ``arc2:FILE.yaml``."""

    firmware: str | None = None
    """Firmware file for ``pyarc2.Instrument`` (relative paths: from the YAML's folder)."""
    device_id: int = 0
    """Board id as listed by ``pyarc2.find_ids()``."""
    rows: int = BOARD_LINES
    """Chip rows wired to bit-lines (1-32)."""
    cols: int = BOARD_LINES
    """Chip columns wired to word-lines (1-32)."""
    channel_map: ChannelMap = field(default_factory=ChannelMap)
    """Explicit channels of the chip lines (default: the board's 32x32 map)."""
    read: ReadConfig = field(default_factory=ReadConfig)
    """Read settings."""
    pulse: PulseConfig = field(default_factory=PulseConfig)
    """Pulse settings."""
    weights: WeightMap = field(default_factory=WeightMap)
    """Conductance -> weight map."""
    limits: Limits = field(default_factory=Limits)
    """Safety limits."""
    source: str = field(default="<arc2>", init=False, repr=False)
    """Where it was read from (for messages)."""

    def validate(self) -> None:
        require(self.device_id >= 0, "device_id", f"must be >= 0, got {self.device_id}")
        for name, n in (("rows", self.rows), ("cols", self.cols)):
            require(1 <= n <= BOARD_LINES, name, f"must be 1-{BOARD_LINES}, got {n}")
        self.row_channels()
        self.col_channels()
        for key, volts in self.levels():
            require(volts > 0, key, f"must be > 0, got {volts}")
            require(volts <= self.limits.v_max, key,
                    f"{volts} V exceeds limits.v_max = {self.limits.v_max} V")
        for pol, shape in self.shapes():
            require(shape.width_s > 0 and shape.nanos >= 1, f"pulse.{pol}.width_s",
                    f"must be at least 1 ns, got {shape.width_s}")

    def shapes(self) -> list[tuple[str, PulseShape]]:
        """(polarity, shape) of both pulse polarities."""
        return [("potentiation", self.pulse.potentiation), ("depression", self.pulse.depression)]

    def levels(self) -> list[tuple[str, float]]:
        """(key, volts) of every level this config applies to a device."""
        return [("read.voltage", self.read.voltage),
                ("pulse.potentiation.amplitude", self.pulse.potentiation.amplitude),
                ("pulse.depression.amplitude", self.pulse.depression.amplitude)]

    def row_channels(self) -> list[int]:
        """Bit-line channel of each chip row (validated)."""
        return _channels(self.channel_map.rows, self.rows, BIT_CHANNELS, "rows", "bit-line",
                         "0-15 or 32-47")

    def col_channels(self) -> list[int]:
        """Word-line channel of each chip column (validated)."""
        return _channels(self.channel_map.cols, self.cols, WORD_CHANNELS, "cols", "word-line",
                         "16-31 or 48-63")

    def firmware_path(self) -> Path:
        """The firmware file: ``firmware`` (from the YAML's folder) or ``$RPUHW_ARC2_FIRMWARE``."""
        fw = self.firmware or os.environ.get(FIRMWARE_ENV)
        if not fw:
            raise ConfigError(f"missing: pyarc2 needs the ArC TWO firmware file to connect "
                              f"(set firmware: or ${FIRMWARE_ENV})", source=self.source,
                              key="firmware")
        path = Path(fw).expanduser()
        if not path.is_absolute() and self.firmware and self.source not in ("<arc2>", ""):
            path = Path(self.source).parent / path
        if not path.is_file():
            raise ConfigError(f"firmware file not found: {path}", source=self.source,
                              key="firmware")
        return path


def _channels(given: list[int] | None, n: int, allowed: tuple[int, ...], side: str,
              kind: str, ranges: str) -> list[int]:
    if given is None:
        return list(allowed[:n])
    key = f"channel_map.{side}"
    require(len(given) == n, key, f"expected {n} channels ({side}: {n}), got {len(given)}")
    seen: dict[int, int] = {}
    for k, ch in enumerate(given):
        require(ch in allowed, f"{key}[{k}]",
                f"channel {ch} is not a {kind} channel (those are {ranges})")
        require(ch not in seen, f"{key}[{k}]",
                f"channel {ch} is already used by {key}[{seen.get(ch)}]")
        seen[ch] = k
    return list(given)


def load_arc2(path: str | Path) -> Arc2Config:
    """Read and validate an arc2 YAML (nothing is contacted)."""
    return arc2_from_mapping(load_yaml(path), source=str(path))


def arc2_from_mapping(data: dict[str, Any], source: str = "<arc2>") -> Arc2Config:
    """Validate an arc2 mapping; every problem is one ConfigError naming the file and key."""
    cfg = from_mapping(Arc2Config, data, source=source)
    cfg.source = source
    return cfg


# ---- connection -------------------------------------------------------------------------
def _pyarc2():
    if pyarc2 is None:
        raise ImportError("the ArC TWO backend needs pyarc2 (pip install 'rpuhw[arc2]'; "
                          "wheels exist for x86_64 Linux and Windows)")
    return pyarc2


def connect(config: Arc2Config):
    """Open the board ``config.device_id`` with its firmware (``pyarc2.Instrument``)."""
    pa = _pyarc2()
    firmware = config.firmware_path()
    ids = [int(i) for i in pa.find_ids()]
    if config.device_id not in ids:
        raise InstrumentConnectionError(
            f"{config.source}: no ArC TWO with device_id {config.device_id} "
            f"(pyarc2.find_ids() lists {ids or 'none'}; is the board on USB with its driver?)",
            resource=f"arc2:{config.device_id}")
    try:
        return pa.Instrument(config.device_id, str(firmware))
    except Exception as exc:
        raise InstrumentConnectionError(
            f"{config.source}: could not open ArC TWO {config.device_id} with firmware "
            f"{firmware}: {exc}", resource=f"arc2:{config.device_id}") from exc


# ---- the array --------------------------------------------------------------------------
class ArcTwoArray(CrossPointArray):
    """The top-left ``rows x cols`` block of a chip wired to an ArC TWO board.

    Args:
        config: an :class:`Arc2Config` or the path of an arc2 YAML.
        rows, cols: block size (default: all wired lines); larger than wired -> ConfigError.
        instrument: an open ``pyarc2.Instrument`` (or a test fake) to use instead of
            connecting; it is released by :meth:`close` like a connected one.
        offset: (row, col) of the block's corner on the wired chip: a tile of a layer
            split into tiles sits at its position in the layer (disjoint blocks).

    Native: ``read`` and ``pulse``; forward, backward and update are emulated by
    the base class. Use as a context manager, or call :meth:`close`.
    """

    capabilities = Capabilities(read=True, pulse=True)

    def __init__(self, config: Arc2Config | str | Path, rows: int | None = None,
                 cols: int | None = None, *, instrument: Any = None,
                 offset: tuple[int, int] = (0, 0)):
        self._inst = None
        cfg = config if isinstance(config, Arc2Config) else load_arc2(config)
        rows = cfg.rows if rows is None else rows
        cols = cfg.cols if cols is None else cols
        super().__init__(rows, cols)
        dr, dc = (int(v) for v in offset)
        for name, n, d, wired in (("rows", rows, dr, cfg.rows), ("cols", cols, dc, cfg.cols)):
            if d + n > wired:
                at = f" from line {d}" if d else ""
                raise ConfigError(f"{n} {name}{at} requested but only {wired} are wired",
                                  source=cfg.source, key=name)
        self.config = cfg
        self.row_channels = cfg.row_channels()[dr:dr + rows]
        """Bit-line channel of each array row."""
        self.col_channels = cfg.col_channels()[dc:dc + cols]
        """Word-line channel of each array column."""
        self._bit_idx = np.array([_BIT_INDEX[c] for c in self.row_channels])
        self._word_idx = np.array([_WORD_INDEX[c] for c in self.col_channels])
        self._check_levels()
        self._inst = connect(cfg) if instrument is None else instrument

    def __repr__(self) -> str:
        return f"ArcTwoArray(rows={self.rows}, cols={self.cols}, source={self.config.source!r})"

    # ---- lifecycle -------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        """True once :meth:`close` released the instrument."""
        return self._inst is None

    def close(self) -> None:
        """Float every channel and release the instrument (idempotent)."""
        inst, self._inst = self._inst, None
        if inst is not None:
            inst.finalise_operation(_pyarc2().IdleMode.Float)

    def __del__(self):
        try:
            self.close()
        except Exception:  # best effort at garbage collection / interpreter exit
            pass

    def nominal_step(self) -> float:
        return self.config.weights.dw_min

    def info(self) -> ArrayInfo:
        """The arc2 YAML's ``weights:`` map and read voltage."""
        return self.config.weights.info(read_voltage=self.config.read.voltage)

    # ---- safety ------------------------------------------------------------------------
    def _check_levels(self) -> None:
        """Refuse (SafetyError) any configured level above limits.v_max; sends nothing."""
        limits = self.config.limits
        for key, volts in self.config.levels():
            if not limits.allows(volts):
                raise SafetyError(f"{self.config.source}: {key} = {volts} V is outside "
                                  f"(0, limits.v_max = {limits.v_max}] V; nothing was sent",
                                  resource=f"arc2:{self.config.device_id}")
        for pol, shape in self.config.shapes():
            if shape.nanos < 1:
                raise SafetyError(f"{self.config.source}: pulse.{pol}.width_s is below 1 ns; "
                                  "nothing was sent", resource=f"arc2:{self.config.device_id}")

    @contextmanager
    def _operation(self):
        """Check levels, yield the instrument, float all lines afterwards (also on errors)."""
        if self._inst is None:
            raise RuntimeError(f"{self!r} is closed")
        self._check_levels()
        inst = self._inst
        with failsafe(lambda: inst.finalise_operation(_pyarc2().IdleMode.Float), always=True,
                      what="ArC TWO: floating the lines"):
            yield inst

    # ---- native operations -------------------------------------------------------------
    def _read(self) -> torch.Tensor:
        vread = float(self.config.read.voltage)
        with self._operation() as inst:
            if self.rows > BOARD_LINES // 2:
                # read_all costs 32 slice reads; worth it when the block needs more than 16
                full = np.asarray(inst.read_all(vread, _pyarc2().BiasOrder.Rows), dtype=float)
                if full.shape != (BOARD_LINES, BOARD_LINES):
                    raise RuntimeError(f"ArC TWO read_all returned shape {full.shape}, "
                                       "expected (32, 32)")
                currents = full[np.ix_(self._word_idx, self._bit_idx)].T  # [word, bit] -> rows
            else:
                currents = np.empty((self.rows, self.cols))
                for i, ch in enumerate(self.row_channels):
                    line = np.asarray(inst.read_slice(ch, vread), dtype=float)
                    if line.shape != (BOARD_LINES,):
                        raise RuntimeError(f"ArC TWO read_slice({ch}) returned shape "
                                           f"{line.shape}, expected (32,)")
                    currents[i] = line[self._word_idx]
        if not np.isfinite(currents).all():
            bad = np.argwhere(~np.isfinite(currents))[0].tolist()
            raise RuntimeError(f"ArC TWO returned a non-finite current for device {bad}")
        g = np.abs(currents) / vread
        return torch.from_numpy(self.config.weights.to_weight(g)).to(torch.float32)

    def _pulse(self, counts: torch.Tensor) -> None:
        c = counts.numpy()
        pot, dep = self.config.pulse.potentiation, self.config.pulse.depression
        plan = []  # (row, voltage across the devices (row minus column), nanos, col indices, n)
        for i in range(self.rows):
            for sign, shape in ((1, pot), (-1, dep)):
                need = np.where(sign * c[i] > 0, np.abs(c[i]), 0)
                plan.extend((i, sign * shape.amplitude, shape.nanos, cols, n)
                            for cols, n in _staircase(need))
        with self._operation() as inst:
            queued = 0
            for i, v_dev, nanos, cols, n in plan:
                row_ch = self.row_channels[i]
                if len(cols) == 1:
                    col_ch = self.col_channels[cols[0]]
                    for _ in range(n):  # V(high) - V(low) = V(row) - V(col) = v_dev
                        inst.pulse_one(col_ch, row_ch, v_dev, nanos)
                        queued = self._flush(inst, queued + 1)
                else:
                    mask = np.array([self.col_channels[j] for j in cols], dtype=np.uint64)
                    for _ in range(n):  # low = row: V(col) - V(row) = -v_dev
                        inst.pulse_slice_masked(row_ch, -v_dev, nanos, mask)
                        queued = self._flush(inst, queued + 1)
            inst.execute()
            inst.wait()

    @staticmethod
    def _flush(inst, queued: int) -> int:
        if queued < MAX_QUEUE:
            return queued
        inst.execute()
        inst.wait()
        return 0


def _staircase(need: np.ndarray) -> list[tuple[list[int], int]]:
    """Split per-device pulse counts of one line into (devices, repeats) steps.

    Step s pulses every device that needs more pulses than the steps before gave;
    the repeats add up to ``max(need)`` and each device gets exactly ``need[j]``.
    """
    steps = []
    done = 0
    for level in sorted({int(n) for n in need if n > 0}):
        steps.append(([int(j) for j in np.flatnonzero(need >= level)], level - done))
        done = level
    return steps


# ---- open_array factory -----------------------------------------------------------------
def open_arc2(argument: str, rows: int, cols: int, seed: int | None = None,
              offset: tuple[int, int] = (0, 0)) -> ArcTwoArray:
    """``open_array("arc2:FILE.yaml", rows, cols)``: the top-left block of the wired chip
    (a tile of a layer: the block at its ``offset`` in the layer).

    ``seed`` is ignored (hardware is not reproducible from a seed).
    """
    if not argument:
        raise ConfigError("'arc2' needs a YAML file: arc2:PATH.yaml", key="spec")
    return ArcTwoArray(load_arc2(argument), rows, cols, offset=offset)
