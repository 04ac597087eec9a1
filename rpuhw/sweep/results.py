"""A sweep's output folder: what it ran, each trial's record, the results tables.

::

    DIR/sweep.json          the sweep file's mapping and its sha256 (checked by --resume)
    DIR/trials/t0003/       trial.json (its record), train.json, device.yaml, ckpt/
    DIR/results.csv         one row per finished trial (axes, status, error, test error,
    DIR/results.parquet     per-epoch test error, images/s, wall time, host)

Every file is written atomically (temporary file + rename) as each trial finishes; the
trial records are the truth and the tables are rewritten from them, so a driver killed at
any moment leaves each finished trial exactly once, and ``--resume`` runs only the
others.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from rpuhw._io import atomic_write, remove_stale_temps
from rpuhw.errors import ConfigError
from rpuhw.sweep.spec import SweepSpec, differing_keys

SWEEP_JSON = "sweep.json"
TRIALS = "trials"
TRIAL_JSON = "trial.json"
CSV = "results.csv"
PARQUET = "results.parquet"
FIXED = ("status", "error", "test_error", "test_error_epochs", "train_loss", "images_per_s",
         "wall_s", "host")
"""Columns after the trial id and the axes."""


class SweepDir:
    """The output folder of one sweep."""

    def __init__(self, path: str | Path, axes: list[str] | None = None):
        self.path = Path(path)
        self.axes = list(axes or [])
        self.records: dict[str, dict[str, Any]] = {}
        self.followers: list[str] = []
        """Linked axes that follow another one (see :func:`~rpuhw.sweep.spec.linked`)."""

    # -- opening -------------------------------------------------------------------------
    def check(self, spec: SweepSpec, resume: bool) -> None:
        """Refuse before anything starts: a DIR of another sweep, a DIR holding a sweep
        without ``--resume``, ``--resume`` with nothing to resume."""
        meta = self.path / SWEEP_JSON
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError("not a folder", source=str(self.path))
        if not meta.exists():
            if resume:
                raise ConfigError(f"nothing to resume: no {SWEEP_JSON} here; leave out "
                                  "--resume to start the sweep", source=str(self.path))
            return
        if not resume:
            raise ConfigError("holds a sweep already: continue it with --resume, or choose "
                              "another --out", source=str(self.path))
        try:
            saved = json.loads(meta.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read ({exc})", source=str(meta)) from None
        if saved.get("digest") != spec.digest():
            diff = differing_keys(saved.get("spec", {}), spec.raw)
            raise ConfigError(f"--resume refused: this folder holds another sweep (the sweep "
                              f"files differ in: {', '.join(diff) or 'their contents'})",
                              source=str(self.path))

    def start(self, spec: SweepSpec) -> None:
        """Create the folder and ``sweep.json`` (a new sweep), or load the finished trials
        (a resumed one)."""
        self.path.mkdir(parents=True, exist_ok=True)
        meta = self.path / SWEEP_JSON
        if not meta.exists():
            atomic_write(meta, json.dumps({"digest": spec.digest(), "spec": spec.raw,
                                           "axes": self.axes, "source": spec.source,
                                           "followers": spec.followers(),
                                           "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
                                          indent=1, default=str))
        self.load()

    def load(self) -> dict[str, dict[str, Any]]:
        """Read the finished trials' records (and the axes) from the folder."""
        meta = self.path / SWEEP_JSON
        if meta.exists():
            saved = json.loads(meta.read_text())
            self.axes = self.axes or saved.get("axes", [])
            self.followers = saved.get("followers", [])
        self.records = {}
        for f in sorted((self.path / TRIALS).glob(f"*/{TRIAL_JSON}")):
            remove_stale_temps(f)
            rec = json.loads(f.read_text())
            self.records[rec["id"]] = rec
        return self.records

    def trial_dir(self, tid: str) -> Path:
        return self.path / TRIALS / tid

    # -- writing -------------------------------------------------------------------------
    def add(self, record: dict[str, Any]) -> None:
        """Record a finished trial: its JSON, then both tables (atomically each)."""
        folder = self.trial_dir(record["id"])
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / TRIAL_JSON, json.dumps(record, indent=1, default=str))
        self.records[record["id"]] = record
        self.write_tables()

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per record, in trial order."""
        out = []
        for tid in sorted(self.records):
            rec = self.records[tid]
            row: dict[str, Any] = {"trial": tid}
            row.update({a: rec["params"].get(a) for a in self.axes})
            row.update({k: rec.get(k) for k in FIXED})
            row["test_error_epochs"] = json.dumps(rec.get("test_error_epochs") or [])
            out.append(row)
        return out

    def write_tables(self) -> None:
        rows = self.rows()
        columns = ["trial", *self.axes, *FIXED]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(v) for k, v in r.items()})
        atomic_write(self.path / CSV, buf.getvalue())
        _write_parquet(self.path / PARQUET, rows, columns)


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return v


def _column(values: list[Any]) -> list[Any]:
    """Values of one column in one parquet type: numbers, booleans, or text."""
    present = [v for v in values if v is not None]
    if all(isinstance(v, bool) for v in present):
        return values
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        if all(isinstance(v, int) for v in present):
            return values
        return [None if v is None else float(v) for v in values]
    return [None if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else str(v))
            for v in values]


def _write_parquet(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({c: _column([r.get(c) for r in rows]) for c in columns})
    atomic_write(path, lambda tmp: pq.write_table(table, tmp))
