"""Measurement data: one row per read (the in-memory form of a measurement CSV).

CSV columns (header line, any order when loading; ``device, pulse, polarity,
conductance`` required, the rest optional):

========== ======================================================================
device     device id: any text (``chipA-d0``) or an integer (rpuhw writes the row-major
           index ``row * cols + col``); loaded as codes 0..n-1 in order of first
           appearance, :attr:`Measurements.device_ids` maps them back
row, col   array position of the device (int; -1 when unknown)
cycle      cycle number, 0-based (0 when absent)
pulse      pulses applied in this half-cycle before the read: 0 = the read before
           the first pulse, k = after the k-th pulse; for read-noise rows the
           repeat index
polarity   +1 potentiation (up), -1 depression (down), 0 a read-noise row
           (loading also accepts up/down/pot/dep/set/reset/read)
conductance measured conductance (S)
time_s     seconds since the start of the measurement
read_voltage read voltage (V)
read       read index 0..K-1 after the same pulse when each pulse is read K times
           (0 when absent; a file without the column whose ``(device, cycle,
           polarity, pulse)`` rows repeat gets the index from the order of repetition)
========== ======================================================================

Steps: the change of conductance at pulse k of (device, cycle, polarity) is
``g[k] - g[k-1]``, with ``g[k]`` the mean of the K reads after pulse k; when the
``pulse = 0`` read is missing, the first step of a half-cycle uses the last read of
the previous half-cycle of the same device, if any, else it is dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from rpuhw._io import atomic_write, remove_stale_temps
from rpuhw.errors import ConfigError

COLUMNS = ("device", "row", "col", "cycle", "pulse", "polarity", "conductance", "time_s",
           "read_voltage", "read")
"""Columns rpuhw writes, in this order."""

OLD_COLUMNS = COLUMNS[:-1]
"""The header of files written before the ``read`` column: still loaded and resumed (a
resumed old file gets rows without ``read``)."""

REQUIRED = ("device", "pulse", "polarity", "conductance")
"""Columns a user's file must have."""


@dataclass
class Measurements:
    """Rows of a measurement, as parallel numpy arrays (one entry per read)."""

    device: np.ndarray
    """int64 device codes 0..n-1 (:attr:`device_ids` holds each code's id in the file)."""
    pulse: np.ndarray
    """int64 pulse index within the half-cycle (repeat index for read-noise rows)."""
    polarity: np.ndarray
    """int8: +1 up, -1 down, 0 read-noise row."""
    conductance: np.ndarray
    """float64 conductance (S)."""
    cycle: np.ndarray | None = None
    """int64 cycle numbers (None: all 0)."""
    row: np.ndarray | None = None
    """int64 array rows (None: unknown)."""
    col: np.ndarray | None = None
    """int64 array columns (None: unknown)."""
    time_s: np.ndarray | None = None
    """float64 seconds since the start."""
    read_voltage: np.ndarray | None = None
    """float64 read voltage (V)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Sidecar JSON content (settings, instrument snapshot, version, date)."""
    source: str = "<measurements>"
    """Where the rows came from (for messages)."""
    read: np.ndarray | None = None
    """int64 read index 0..K-1 after the same pulse (None: one read per pulse)."""
    device_ids: list[str] = field(default_factory=list)
    """The file's id of each device code (``device_ids[code]``), in order of first
    appearance; integer ids as their decimal text. Empty when constructed without: filled
    with ``str(code)``."""

    def __post_init__(self) -> None:
        if not self.device_ids and len(self.device):
            self.device_ids = [str(c) for c in range(int(np.max(self.device)) + 1)]

    def __len__(self) -> int:
        return len(self.device)

    def device_name(self, code: int) -> str:
        """The file's id of device ``code`` (``"chipA-d0"``, ``"17"``) for messages and
        per-device output."""
        code = int(code)
        return self.device_ids[code] if 0 <= code < len(self.device_ids) else str(code)

    def ids(self) -> np.ndarray:
        """int64 per-row device ids as written in the file (rpuhw's ``row * cols + col``);
        a ConfigError naming the file when an id is not an integer."""
        try:
            table = np.array([int(t) for t in self.device_ids], dtype=np.int64)
        except ValueError:
            bad = next(t for t in self.device_ids if not _is_int(t))
            raise ConfigError(f"device id {bad!r} is not an integer (expected the row-major "
                              "index an rpuhw measurement writes)", source=self.source) \
                from None
        return table[self.device] if len(self.device) else np.zeros(0, dtype=np.int64)

    def take(self, keep: np.ndarray) -> Measurements:
        """The rows where ``keep`` (a boolean mask) is true, in order (a segment of a
        measurement, a subset of its devices); the device-id table is kept whole."""
        cut = {f.name: (getattr(self, f.name)[keep]
                        if isinstance(getattr(self, f.name), np.ndarray)
                        else getattr(self, f.name))
               for f in dataclasses.fields(self)}
        return Measurements(**cut)

    def reads(self) -> np.ndarray:
        """Read index of each row (zeros when :attr:`read` is None)."""
        return self.read if self.read is not None else np.zeros(len(self), dtype=np.int64)

    def cycles(self) -> np.ndarray:
        """Cycle numbers (zeros when the file had none)."""
        return self.cycle if self.cycle is not None else np.zeros(len(self), dtype=np.int64)


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ---- writing ---------------------------------------------------------------------------

FSYNC_INTERVAL_S = 0.5
"""Longest time (s) between two ``os.fsync`` calls of a :class:`MeasurementWriter`."""


def sidecar_path(path: str | Path) -> Path:
    """The sidecar JSON of a measurement CSV: ``meas.csv`` -> ``meas.json``."""
    return Path(path).with_suffix(".json")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    atomic_write(path, json.dumps(data, indent=1, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (np.ndarray, tuple, set)):
        return list(obj)
    return repr(obj)


def _fmt(value: Any) -> str:
    """One CSV field: ints as integers, floats exactly (``repr``), None/NaN as empty."""
    t = type(value)
    if t is float:
        return repr(value) if value == value else ""
    if t is int:
        return str(value)
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    v = float(value)
    return "" if math.isnan(v) else repr(v)


class MeasurementWriter:
    """Streams measurement rows to a CSV and keeps its sidecar JSON up to date.

    Every :meth:`write` appends whole lines with one ``os.write`` call (no user-space
    buffer), so a killed process leaves every row written before it; ``os.fsync`` runs at
    most every :data:`FSYNC_INTERVAL_S` seconds (and on :meth:`finish`/:meth:`close`) so
    the rows also survive a power loss up to that age. The sidecar
    (:func:`sidecar_path`) is written atomically when the writer opens, with
    ``complete: false``, and again with ``complete: true`` by :meth:`finish`.

    Args:
        path: the CSV file.
        meta: sidecar content (``settings``, ``instrument``, ...); ``rpuhw_version`` and
            ``date`` (ISO 8601) are added when absent.
        resume: append to an existing file instead of creating it. The header must be
            rpuhw's (:data:`COLUMNS`, or :data:`OLD_COLUMNS` of files written before the
            ``read`` column: their new rows are written without it); a last line cut short
            by a kill is removed; the rows already there
            are available as :attr:`existing`. The sidecar keeps its ``date`` and gets
            an entry ``{"at": ISO time, "row": rows before the resume, "jumps": {}}``
            appended to ``resumed`` (read back by :func:`resume_points`;
            :meth:`record_jumps` fills ``jumps``). It is rewritten only with the first row (or
            :meth:`update_meta`, :meth:`finish`), so a resume refused before any row
            (:func:`~rpuhw.calibration.protocols.check_resume_state`) leaves it as it was.
    """

    def __init__(self, path: str | Path, meta: dict[str, Any], resume: bool = False):
        from rpuhw import __version__

        self.path = Path(path)
        self.meta = dict(meta)
        self.meta.setdefault("rpuhw_version", __version__)
        now = datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")
        self.meta.setdefault("date", now)
        self.meta["complete"] = False
        self.existing: Measurements | None = None
        """Rows already in the file when resuming (None otherwise)."""
        self.rows_written = 0
        """Rows appended by this writer."""
        self._last_sync = time.monotonic()
        self._sidecar_due = False  # a resume's sidecar waits for its first row
        self.columns: tuple[str, ...] = COLUMNS
        """The file's columns (:data:`OLD_COLUMNS` when resuming an old file)."""
        if resume:
            self._prepare_resume()
            old = self.existing.meta if self.existing is not None else {}
            self.meta["date"] = old.get("date", self.meta["date"])
            row = len(self.existing) if self.existing is not None else 0
            self.meta["resumed"] = [*old.get("resumed", []),
                                    {"at": now, "row": row, "jumps": {}}]
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self._sidecar_due = True
        else:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
            os.write(self._fd, (",".join(COLUMNS) + "\n").encode())
            write_json_atomic(sidecar_path(self.path), self.meta)
        self._closed = False

    def _prepare_resume(self) -> None:
        if not self.path.is_file():
            raise ConfigError("nothing to resume: file not found", source=str(self.path))
        with open(self.path, "rb+") as fh:
            data = fh.read()
            header = data.split(b"\n", 1)[0].decode(errors="replace").strip()
            if header == ",".join(OLD_COLUMNS):
                self.columns = OLD_COLUMNS
            elif header != ",".join(COLUMNS):
                raise ConfigError(f"line 1: not an rpuhw measurement header (expected "
                                  f"{','.join(COLUMNS)!r}, got {header!r}); cannot resume it",
                                  source=str(self.path))
            cut = data.rfind(b"\n") + 1
            if cut < len(data):  # a line cut short by a kill: drop it
                fh.truncate(cut)
        remove_stale_temps(sidecar_path(self.path))  # a sidecar write cut short by a kill
        self.existing = load_measurements(self.path, partial=True)

    def __enter__(self) -> MeasurementWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def write(self, rows: Iterable[Sequence[Any] | dict[str, Any]]) -> int:
        """Append rows (sequences in :data:`COLUMNS` or :data:`OLD_COLUMNS` order, the
        latter read 0; or dicts keyed by column).

        Missing dict keys and None/NaN values are written as empty fields. Returns the
        number of rows written. A file resumed with the old header takes only rows of
        read 0 (written without the column).
        """
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        lines = []
        old = self.columns is OLD_COLUMNS
        for row in rows:
            if isinstance(row, dict):
                row = [row.get(c) for c in COLUMNS]
            if len(row) == len(OLD_COLUMNS):
                row = [*row, 0]
            if len(row) != len(COLUMNS):
                raise ValueError(f"row: expected {len(COLUMNS)} values ({', '.join(COLUMNS)}), "
                                 f"got {len(row)}")
            if old:
                if row[-1] not in (None, 0):
                    raise ValueError(f"{self.path}: a file with the old header (no 'read' "
                                     f"column) cannot take read {row[-1]!r}")
                row = row[:-1]
            lines.append(",".join(map(_fmt, row)))
        if not lines:
            return 0
        if self._sidecar_due:  # the resume happens: the sidecar says so before its rows
            self._write_sidecar()
        data = ("\n".join(lines) + "\n").encode()
        view = memoryview(data)
        while view:  # os.write to a regular file is normally complete; loop for safety
            view = view[os.write(self._fd, view):]
        self.rows_written += len(lines)
        now = time.monotonic()
        if now - self._last_sync >= FSYNC_INTERVAL_S:
            os.fsync(self._fd)
            self._last_sync = now
        return len(lines)

    def update_meta(self, **items: Any) -> None:
        """Merge ``items`` into the sidecar and rewrite it atomically."""
        self.meta.update(items)
        self._write_sidecar()

    def record_jumps(self, jumps: dict[str, float]) -> None:
        """Set ``jumps`` (device id -> jump, in the rows' conductance unit) of this
        resume's entry in ``resumed`` (written with the next row, or now when rows were
        written already)."""
        entries = self.meta.get("resumed") or []
        if not entries or not isinstance(entries[-1], dict):
            raise ValueError(f"{self.path}: this writer did not resume the file")
        entries[-1]["jumps"] = {str(k): float(v) for k, v in jumps.items()}
        if not self._sidecar_due:
            self._write_sidecar()

    def _write_sidecar(self) -> None:
        self._sidecar_due = False
        write_json_atomic(sidecar_path(self.path), self.meta)

    def finish(self) -> None:
        """Mark the measurement complete (sidecar ``complete: true``) and close the file."""
        self.close()
        self.meta["complete"] = True
        self._write_sidecar()

    def close(self) -> None:
        """fsync and close the CSV (the sidecar keeps ``complete: false``)."""
        if self._closed:
            return
        self._closed = True
        try:
            os.fsync(self._fd)
        finally:
            os.close(self._fd)


# ---- loading ---------------------------------------------------------------------------

_POLARITY = {
    "+1": 1, "1": 1, "1.0": 1, "+1.0": 1, "up": 1, "pot": 1, "potentiation": 1, "set": 1,
    "-1": -1, "-1.0": -1, "down": -1, "dep": -1, "depression": -1, "reset": -1,
    "0": 0, "0.0": 0, "+0": 0, "-0": 0, "read": 0,
}
_INT_COLUMNS = ("row", "col", "cycle", "pulse", "read")
_FLOAT_COLUMNS = ("conductance", "time_s", "read_voltage")


def _where(source: str, line: int, col_index: int, name: str, message: str) -> ConfigError:
    return ConfigError(f"line {line}, column {col_index + 1} ({name!r}): {message}",
                       source=source)


def _parse_ints(values: list[str], lines: list[int], ci: int, name: str, source: str,
                optional: bool) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.int64)
    except ValueError:
        pass
    out = np.empty(len(values), dtype=np.int64)
    for k, text in enumerate(values):
        t = text.strip()
        if not t and optional:
            out[k] = -1 if name in ("row", "col") else 0
            continue
        try:
            v = float(t)
        except ValueError:
            raise _where(source, lines[k], ci, name, f"expected an integer, got {text!r}") \
                from None
        if not math.isfinite(v) or v != int(v):
            raise _where(source, lines[k], ci, name, f"expected an integer, got {text!r}")
        out[k] = int(v)
    return out


def _parse_devices(values: list[str], lines: list[int], ci: int, source: str
                   ) -> tuple[np.ndarray, list[str]]:
    """Device codes 0..n-1 in order of first appearance, and the id of each code.

    Integer ids (``7``, ``7.0``) must be >= 0 and are kept as their decimal text; any
    other non-empty text is an id as it stands (stripped)."""
    try:
        ints = np.asarray(values, dtype=np.int64)
    except ValueError:
        ints = None
    if ints is not None:
        if (ints < 0).any():
            k = int(np.argmax(ints < 0))
            raise _where(source, lines[k], ci, "device", f"must be >= 0, got {values[k]!r}")
        names = ints
    else:
        texts = []
        for k, text in enumerate(values):
            t = text.strip()
            if not t:
                raise _where(source, lines[k], ci, "device", "empty device id")
            try:
                v = float(t)
            except ValueError:
                v = None
            if v is not None and math.isfinite(v) and v == int(v):
                if v < 0:
                    raise _where(source, lines[k], ci, "device", f"must be >= 0, got {text!r}")
                t = str(int(v))
            texts.append(t)
        names = np.asarray(texts, dtype=str)
    if not len(names):
        return np.zeros(0, dtype=np.int64), []
    uniq, first, inverse = np.unique(names, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    code = np.empty(len(uniq), dtype=np.int64)
    code[order] = np.arange(len(uniq))
    return code[inverse.reshape(-1)], [str(uniq[o]) for o in order]


def _infer_reads(device: np.ndarray, cycle: np.ndarray | None, polarity: np.ndarray,
                 pulse: np.ndarray) -> np.ndarray:
    """Read index of each row: its repetition number among the earlier rows of the same
    ``(device, cycle, polarity, pulse)`` (0 for the first), in file order."""
    n = len(device)
    cyc = cycle if cycle is not None else np.zeros(n, dtype=np.int64)
    order = np.lexsort((np.arange(n), pulse, polarity, cyc, device))
    d, c, p, k = device[order], cyc[order], polarity[order], pulse[order]
    new = np.r_[True, (d[1:] != d[:-1]) | (c[1:] != c[:-1]) | (p[1:] != p[:-1])
                | (k[1:] != k[:-1])] if n else np.zeros(0, dtype=bool)
    start = np.maximum.accumulate(np.where(new, np.arange(n), 0)) if n else new
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) - start
    return out


def _parse_floats(values: list[str], lines: list[int], ci: int, name: str, source: str,
                  required: bool) -> np.ndarray:
    try:
        out = np.asarray(values, dtype=np.float64)
    except ValueError:
        out = np.empty(len(values), dtype=np.float64)
        for k, text in enumerate(values):
            t = text.strip()
            if not t and not required:
                out[k] = np.nan
                continue
            try:
                out[k] = float(t)
            except ValueError:
                raise _where(source, lines[k], ci, name, f"expected a number, got {text!r}") \
                    from None
    if required:
        bad = ~np.isfinite(out)
        if bad.any():
            k = int(np.argmax(bad))
            raise _where(source, lines[k], ci, name, f"expected a finite number, "
                         f"got {values[k]!r}")
    return out


def _parse_polarity(values: list[str], lines: list[int], ci: int, source: str) -> np.ndarray:
    uniq, inverse = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    codes = np.empty(len(uniq), dtype=np.int8)
    for u, text in enumerate(uniq):
        code = _POLARITY.get(str(text).strip().lower())
        if code is None:
            k = int(np.argmax(inverse == u))
            raise _where(source, lines[k], ci, "polarity",
                         f"expected +1/-1/0 or up/down/pot/dep/potentiation/depression/set/"
                         f"reset/read, got {values[k]!r}")
        codes[u] = code
    return codes[inverse.reshape(-1)]


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = sidecar_path(path)
    if side == path or not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"sidecar is not valid JSON ({exc})", source=str(side)) from None
    if not isinstance(data, dict):
        raise ConfigError("sidecar must hold a JSON object", source=str(side))
    return data


def _skip(line: str) -> bool:
    t = line.strip()
    return not t or t.startswith("#") or not t.strip(",")


def _split(text: str, source: str) -> tuple[list[str], int, list[list[str]], list[int]]:
    """(header, its line number, columns of fields, line number of each row).

    Blank lines and ``#`` comment lines are skipped. Files without quotes take a fast
    path (one ``split`` of all rows); others go through the csv module.
    """
    if '"' in text:
        parsed = [(n, f) for n, f in enumerate(csv.reader(io.StringIO(text)), 1)]
        all_lines = [",".join(f) for _, f in parsed]
        fields_of = dict(parsed)
    else:
        all_lines = text.splitlines()
        fields_of = None
    if fields_of is None and not re.search(r"\n[ \t,\r]*\n|#", text.strip()):
        kept = list(range(1, len(all_lines) + 1))  # nothing to skip (the usual case)
    else:
        kept = [n for n, line in enumerate(all_lines, 1) if not _skip(line)]
    if not kept:
        raise ConfigError("empty file (no header line)", source=source)
    header_line, body = kept[0], kept[1:]
    raw = fields_of[header_line] if fields_of else all_lines[header_line - 1].split(",")
    header = [f.strip().lower() for f in raw]
    ncol = len(header)
    if fields_of is not None:
        rows = [fields_of[n] for n in body]
        for n, f in zip(body, rows, strict=True):
            if len(f) != ncol:
                raise ConfigError(f"line {n}: expected {ncol} fields ({', '.join(header)}), "
                                  f"got {len(f)}", source=source)
        columns = [list(c) for c in zip(*rows, strict=True)] if rows else [[] for _ in header]
        return header, header_line, columns, body
    lines = [all_lines[n - 1] for n in body]
    counts = [line.count(",") for line in lines]
    if any(c != ncol - 1 for c in counts):
        k = next(k for k, c in enumerate(counts) if c != ncol - 1)
        raise ConfigError(f"line {body[k]}: expected {ncol} fields ({', '.join(header)}), "
                          f"got {counts[k] + 1}", source=source)
    flat = ",".join(lines).split(",") if lines else []
    return header, header_line, [flat[ci::ncol] for ci in range(ncol)], body


def conductance_unit(meta: dict[str, Any]) -> str:
    """``"S"`` (siemens, the default) or ``"weight"`` (an array without a conductance map)."""
    settings = meta.get("settings") if isinstance(meta.get("settings"), dict) else {}
    return str(settings.get("conductance_unit", "S"))


PULSE_KEYS = {"pulse-response": "pulses_per_direction", "read-noise": "pulses_between_levels",
              "symmetry-point": "pulses_per_half"}
"""The sidecar key of ``--pulses`` per protocol: pulse response, pulses per direction per
cycle (``n`` up, then ``n`` down); read noise, up pulses between two levels; symmetry
point, pulses per half-cycle of the alternation (``n`` up, ``n`` down, repeated). Sidecars
written before these names have ``pulses`` (same meaning)."""


def sidecar_settings(meta: dict[str, Any]) -> dict[str, Any]:
    """The sidecar's ``settings``, an old sidecar's ``pulses`` renamed to its protocol's
    :data:`PULSE_KEYS` key (so old and new sidecars compare equal)."""
    settings = dict(meta.get("settings") or {}) if isinstance(meta.get("settings"), dict) \
        else {}
    key = PULSE_KEYS.get(str(settings.get("protocol", "pulse-response")))
    if key and "pulses" in settings and key not in settings:
        settings[key] = settings.pop("pulses")
    return settings


def load_measurements(path: str | Path, *, partial: bool = False) -> Measurements:
    """Read a measurement CSV (rpuhw's or a user's) and its sidecar JSON if present.

    Columns may come in any order and extra columns are ignored; ``device, pulse,
    polarity, conductance`` are required. Blank lines and lines starting with ``#``
    are skipped. Errors are one :class:`~rpuhw.errors.ConfigError` naming the file,
    line and column: a missing required column, a non-integer id/pulse/cycle, a
    non-numeric, non-finite or negative conductance (negative values are allowed when
    the sidecar says ``conductance_unit: weight``), an unknown polarity, a row with
    the wrong number of fields, no data rows, or pulse rows of only one polarity.

    Args:
        path: the CSV file.
        partial: accept an unfinished measurement (no rows, or one polarity so far):
            used when resuming. A last line without newline in a file whose sidecar says
            ``complete: false`` (a run killed mid-write) is dropped either way.
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ConfigError("file not found", source=source)
    meta = _read_sidecar(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read as text ({exc})", source=source) from None
    if not text.strip():
        raise ConfigError("empty file (expected a header line with the columns "
                          f"{', '.join(REQUIRED)} and one row per read)", source=source)
    if not text.endswith("\n") and meta.get("complete") is False:
        text = text[:text.rfind("\n") + 1]  # a row cut short by a kill
    header, header_line, columns, lines = _split(text, source)
    seen = set()
    for ci, name in enumerate(header):
        if name in seen:
            raise ConfigError(f"line {header_line}, column {ci + 1}: column {name!r} appears "
                              "twice", source=source)
        seen.add(name)
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise ConfigError(f"line {header_line}: missing required column(s) "
                          f"{', '.join(missing)} (required: {', '.join(REQUIRED)}; found: "
                          f"{', '.join(header)})", source=source)
    if not len(lines) and not partial:
        raise ConfigError(f"no data rows after the header (line {header_line})", source=source)
    data: dict[str, np.ndarray] = {}
    for ci, name in enumerate(header):
        values = columns[ci]
        if name == "device":
            data[name], device_ids = _parse_devices(values, lines, ci, source)
        elif name in _INT_COLUMNS:
            data[name] = _parse_ints(values, lines, ci, name, source,
                                     optional=name not in REQUIRED)
        elif name in _FLOAT_COLUMNS:
            data[name] = _parse_floats(values, lines, ci, name, source,
                                       required=name == "conductance")
        elif name == "polarity":
            data[name] = (_parse_polarity(values, lines, ci, source) if values
                          else np.zeros(0, dtype=np.int8))
    g = data["conductance"]
    if conductance_unit(meta) != "weight" and (g < 0).any():
        k = int(np.argmax(g < 0))
        ci = header.index("conductance")
        raise _where(source, lines[k], ci, "conductance",
                     f"must be >= 0 siemens, got {columns[ci][k]!r}")
    for name in ("pulse", "read"):
        if name in data and (data[name] < 0).any():
            k = int(np.argmax(data[name] < 0))
            ci = header.index(name)
            raise _where(source, lines[k], ci, name, f"must be >= 0, got {columns[ci][k]!r}")
    pol = data["polarity"]
    if not partial and (pol != 0).any() and not ((pol > 0).any() and (pol < 0).any()):
        only = "up (+1)" if (pol > 0).any() else "down (-1)"
        raise ConfigError(f"needs both up and down pulses, but every pulse row is {only}",
                          source=source)
    read = data.get("read")
    if read is None:
        read = _infer_reads(data["device"], data.get("cycle"), pol, data["pulse"])
    return Measurements(
        device=data["device"], pulse=data["pulse"], polarity=pol, conductance=g,
        cycle=data.get("cycle"), row=data.get("row"), col=data.get("col"),
        time_s=data.get("time_s"), read_voltage=data.get("read_voltage"), meta=meta,
        source=source, read=read if len(read) and read.max() > 0 else None,
        device_ids=device_ids)


class ResumePoint(NamedTuple):
    """One resume of a measurement (an entry of the sidecar's ``resumed`` list)."""

    at: str
    """When the run was resumed (ISO 8601)."""
    row: int | None
    """Data rows in the CSV before the resume (the header excluded), so the resumed rows
    start at data row ``row`` counted from 0; None when unknown (an old sidecar: a plain
    time string)."""
    jumps: dict[int, float]
    """Per device id, the jump (conductance units) measured when resuming (may be empty)."""


def resume_points(meta: dict[str, Any], source: str = "<sidecar>") -> list[ResumePoint]:
    """The sidecar's ``resumed`` entries, oldest first.

    Each entry is a time string (older sidecars: the row is unknown) or an object
    ``{"at": time, "row": rows before the resume, "jumps": {device id: jump}}``. A
    malformed entry is a ConfigError naming ``source`` and the key.
    """
    raw = meta.get("resumed") or []
    if not isinstance(raw, list):
        raise ConfigError(f"expected a list of resume times or objects, got {raw!r}",
                          source=source, key="resumed")
    out = []
    for n, item in enumerate(raw):
        if isinstance(item, str):
            out.append(ResumePoint(item, None, {}))
            continue
        where = f"resumed[{n}]"
        if not isinstance(item, dict):
            raise ConfigError(f"expected a time string or an object with 'at', 'row', "
                              f"'jumps', got {item!r}", source=source, key=where)
        row = item.get("row")
        if row is not None and (isinstance(row, bool) or not isinstance(row, int) or row < 0):
            raise ConfigError(f"'row' must be a non-negative integer (data rows before the "
                              f"resume), got {row!r}", source=source, key=where)
        jumps_raw = item.get("jumps") or {}
        try:
            jumps = {int(k): float(v) for k, v in dict(jumps_raw).items()}
        except (TypeError, ValueError):
            raise ConfigError(f"'jumps' must map device ids to numbers, got {jumps_raw!r}",
                              source=source, key=where) from None
        out.append(ResumePoint(str(item.get("at", "")), row, jumps))
    return out


# ---- steps -----------------------------------------------------------------------------


class StepTrace(NamedTuple):
    """Pulses of one half-cycle of one device and the conductance around each (S)."""

    pulse: np.ndarray
    """int64 pulse number k of each step (1-based within the half-cycle)."""
    before: np.ndarray
    """float64 conductance read before pulse k."""
    after: np.ndarray
    """float64 conductance read after pulse k."""


def steps(m: Measurements) -> dict[tuple[int, int, int], StepTrace]:
    """Per ``(device, cycle, polarity)`` the conductance before and after each pulse.

    Uses the rows with polarity +-1. Half-cycles are ordered by cycle, then up before
    down. The step of pulse ``k`` goes from the read at ``pulse = k - 1`` to the read at
    ``pulse = k``; when ``k = 1`` has no ``pulse = 0`` read, the last read of the
    previous half-cycle of the same device stands in (if there is one), else the step
    is dropped; a step whose earlier read is missing is dropped too. With K reads per
    pulse (:attr:`Measurements.read`) the conductance at a pulse is the mean of its reads
    (read noise / sqrt(K)). Duplicate ``(device, cycle, polarity, pulse, read)`` rows: the
    first in the file is used.
    """
    sel = np.flatnonzero(m.polarity != 0)
    dev = m.device[sel]
    cyc = m.cycles()[sel]
    pol = m.polarity[sel].astype(np.int64)
    pul = m.pulse[sel]
    rd = m.reads()[sel]
    g = m.conductance[sel]
    half = 2 * cyc + (pol < 0)  # order of half-cycles: cycle, then up before down
    order = np.lexsort((np.arange(len(sel)), rd, pul, half, dev))
    dev, half, pul, g, pol, rd = (dev[order], half[order], pul[order], g[order], pol[order],
                                  rd[order])
    keep = np.ones(len(dev), dtype=bool)
    if len(dev) > 1:
        keep[1:] = ~((dev[1:] == dev[:-1]) & (half[1:] == half[:-1]) & (pul[1:] == pul[:-1])
                     & (rd[1:] == rd[:-1]))
    dev, half, pul, g, pol = dev[keep], half[keep], pul[keep], g[keep], pol[keep]
    if m.read is not None and len(dev):  # the mean of the K reads of each pulse
        first = np.flatnonzero(np.r_[True, (dev[1:] != dev[:-1]) | (half[1:] != half[:-1])
                                     | (pul[1:] != pul[:-1])])
        counts = np.diff(np.r_[first, len(dev)])
        g = np.add.reduceat(g, first) / counts
        dev, half, pul, pol = dev[first], half[first], pul[first], pol[first]
    out: dict[tuple[int, int, int], StepTrace] = {}
    if not len(dev):
        return out
    starts = np.flatnonzero(np.r_[True, (dev[1:] != dev[:-1]) | (half[1:] != half[:-1])])
    ends = np.r_[starts[1:], len(dev)]
    prev_last: dict[int, tuple[int, float]] = {}  # device -> (half, last conductance)
    for s, e in zip(starts, ends, strict=True):
        d, h = int(dev[s]), int(half[s])
        k, gg = pul[s:e], g[s:e]
        consecutive = k[1:] == k[:-1] + 1
        step_k = k[1:][consecutive]
        before = gg[:-1][consecutive]
        after = gg[1:][consecutive]
        if k[0] == 1 and d in prev_last and prev_last[d][0] == h - 1:
            step_k = np.r_[1, step_k]
            before = np.r_[prev_last[d][1], before]
            after = np.r_[gg[0], after]
        prev_last[d] = (h, float(gg[-1]))
        out[(d, h // 2, int(pol[s]))] = StepTrace(step_k.astype(np.int64),
                                                  before.astype(np.float64),
                                                  after.astype(np.float64))
    return out
