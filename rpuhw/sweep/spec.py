"""SWEEP.yaml: parsing and checking, before anything starts.

.. code-block:: yaml

    base:                       # any keys of `rpuhw train --config`
      backend: sim:drivers/emulators/hidden_device.yaml
      epochs: 3
    grid:                       # cartesian product; or a list of such mappings (union)
      algorithm: [sgd, mp]
      device.up_down: [0.0, 0.05]   # a key of the backend's device YAML
      seed: [0, 1, 2]
    random:                     # N samples of a space (times every grid point)
      N: 8
      seed: 0
      space: {lr: {low: 0.001, high: 0.1, log: true}}
    search:                     # Ray Tune + Optuna (alone: no grid or random)
      method: optuna
      trials: 20
      metric: test_error
      space: {algorithm.fast_lr: {low: 0.1, high: 10, log: true}}

Linked axes vary together: ``"device.w_min,device.w_max": [[-0.3, 0.3], [-0.6, 0.6]]``
(a key of comma-separated axes, each value a list with one entry per axis).

An axis is a key of the training config (``lr``, ``seed``, ``algorithm``, ...),
``device.KEY`` (a key of the backend's device YAML, :mod:`rpuhw.sweep.device`) or
``algorithm.KEY`` (a hyper-parameter of the trial's algorithm). Every problem is one
:class:`~rpuhw.errors.ConfigError` naming the file and key and the allowed values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from rpuhw.config import load_yaml
from rpuhw.errors import ConfigError

SECTIONS = ("base", "grid", "random", "search")
"""Top-level keys of a sweep file."""
CONTROLLED = ("out", "checkpoint", "progress", "threads")
"""Training keys the sweep sets itself (per trial folder, ``--cpus-per-trial``)."""
METRICS = ("test_error", "train_loss")
"""What a search may minimise (the value after the last epoch)."""


def train_keys() -> list[str]:
    """Keys of ``rpuhw train --config`` a sweep may set or vary."""
    from rpuhw.train import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig) if f.name not in CONTROLLED]


@dataclass(frozen=True)
class Dimension:
    """One dimension of a random or search space."""

    key: str
    """The axis (training key, ``device.KEY`` or ``algorithm.KEY``)."""
    low: float | None = None
    """Lower end of a numeric range."""
    high: float | None = None
    """Upper end of a numeric range."""
    log: bool = False
    """Sample uniformly in log(value) (needs low > 0)."""
    integer: bool = False
    """Integer values (``int: true``)."""
    values: tuple[Any, ...] | None = None
    """Choices of a categorical dimension (instead of low/high)."""


@dataclass
class SweepSpec:
    """A parsed, checked sweep file."""

    base: dict[str, Any]
    """Training config keys shared by every trial."""
    grids: list[dict[str, list[Any]]] = field(default_factory=list)
    """Grids (axis -> values); trials are the union of their products."""
    random_n: int = 0
    """Random samples (per grid point; 0: none)."""
    random_seed: int = 0
    """Seed of the random samples."""
    random_space: list[Dimension] = field(default_factory=list)
    """What the random samples draw."""
    search: dict[str, Any] | None = None
    """``method, trials, metric, mode, seed`` of a search (None: no search)."""
    search_space: list[Dimension] = field(default_factory=list)
    """What the search explores."""
    source: str = "<sweep>"
    """Where the spec came from (for messages)."""
    raw: dict[str, Any] = field(default_factory=dict)
    """The file's mapping (hashed, and compared on ``--resume``)."""

    def axes(self) -> list[str]:
        """Every varied key, in file order (grids, then random, then search)."""
        out: dict[str, None] = {}
        for g in self.grids:
            for key in g:
                out.update(dict.fromkeys(linked(key)))
        out.update(dict.fromkeys(d.key for d in self.random_space))
        out.update(dict.fromkeys(d.key for d in self.search_space))
        return list(out)

    def followers(self) -> list[str]:
        """Linked axes after the first of their group (they follow it: not plotted)."""
        return [k for g in self.grids for key in g for k in linked(key)[1:]]

    def digest(self) -> str:
        """sha256 of the file's mapping in canonical JSON (what ``--resume`` checks)."""
        return hashlib.sha256(canonical(self.raw).encode()).hexdigest()


def canonical(data: Any) -> str:
    """Canonical JSON (sorted keys) of a YAML mapping."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        out.update(flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else
                   {f"{prefix}{k}": v})
    return out


def differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two sweep mappings."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if canonical(fa.get(k)) != canonical(fb.get(k)))


def load_spec(path: str) -> SweepSpec:
    """Read and check a sweep file (:func:`parse_spec`)."""
    return parse_spec(load_yaml(path), source=str(path))


def _err(source: str, key: str, message: str) -> ConfigError:
    return ConfigError(message, source=source, key=key)


def check_axis(key: str, source: str, where: str) -> None:
    """An axis must be a training key, ``device.KEY`` or ``algorithm.KEY``."""
    if not isinstance(key, str) or not key:
        raise _err(source, where, f"expected an axis name, got {key!r}")
    head, dot, rest = key.partition(".")
    if dot and head in ("device", "algorithm") and rest:
        return
    if key in CONTROLLED:
        raise _err(source, f"{where}.{key}", "set by the sweep itself (each trial's folder, "
                   "--cpus-per-trial); not an axis")
    if key not in train_keys():
        raise _err(source, f"{where}.{key}", "unknown axis (allowed: "
                   f"{', '.join(train_keys())}, device.KEY, algorithm.KEY)")


def _dimensions(space: Any, source: str, where: str) -> list[Dimension]:
    if not isinstance(space, dict) or not space:
        raise _err(source, where, "expected a non-empty mapping of axis -> {low, high, log} "
                   f"or {{values: [...]}}, got {space!r}")
    out = []
    for key, d in space.items():
        check_axis(key, source, where)
        k = f"{where}.{key}"
        if not isinstance(d, dict):
            raise _err(source, k, f"expected {{low, high, log}} or {{values: [...]}}, got {d!r}")
        unknown = sorted(set(d) - {"low", "high", "log", "int", "values"})
        if unknown:
            raise _err(source, f"{k}.{unknown[0]}", "unknown key (allowed: low, high, log, "
                       "int, values)")
        if "values" in d:
            if set(d) - {"values"}:
                raise _err(source, k, "give either values or low/high, not both")
            if not isinstance(d["values"], list) or not d["values"]:
                raise _err(source, f"{k}.values", f"expected a non-empty list, got "
                           f"{d['values']!r}")
            out.append(Dimension(key, values=tuple(d["values"])))
            continue
        try:
            low, high = float(d["low"]), float(d["high"])
        except KeyError as exc:
            raise _err(source, k, f"missing {exc.args[0]} (a range needs low and high)") \
                from None
        except (TypeError, ValueError):
            raise _err(source, k, f"low and high must be numbers, got {d.get('low')!r}, "
                       f"{d.get('high')!r}") from None
        log, integer = d.get("log", False), d.get("int", False)
        if not isinstance(log, bool) or not isinstance(integer, bool):
            raise _err(source, k, "log and int must be true or false")
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise _err(source, k, f"needs finite low < high, got {low}, {high}")
        if log and low <= 0:
            raise _err(source, k, f"log: true needs low > 0, got {low}")
        out.append(Dimension(key, low, high, log, integer))
    return out


def _grid(g: Any, source: str, where: str) -> dict[str, list[Any]]:
    if not isinstance(g, dict):
        raise _err(source, where, f"expected a mapping of axis -> list of values, got {g!r}")
    if not g:
        raise _err(source, where, "empty grid: give at least one axis with values")
    out = {}
    for key, values in g.items():
        names = linked(key)
        for name in names:
            check_axis(name, source, where)
        if not isinstance(values, list):
            values = [values]
        if not values:
            raise _err(source, f"{where}.{key}", "empty list of values: the grid would have "
                       "no trials")
        if len(names) > 1:
            for v in values:
                if not isinstance(v, list) or len(v) != len(names):
                    raise _err(source, f"{where}.{key}", f"linked axes: each value must be a "
                               f"list of {len(names)} (one per axis), got {v!r}")
        out[key] = values
    return out


def linked(key: str) -> list[str]:
    """The axes of a grid key: ``"a,b"`` (linked axes, varied together) -> ``["a", "b"]``."""
    return [k.strip() for k in key.split(",")] if isinstance(key, str) else [key]


def _int(value: Any, source: str, key: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _err(source, key, f"expected an integer >= {low}, got {value!r}")
    return value


def parse_spec(data: dict[str, Any], source: str = "<sweep>") -> SweepSpec:
    """Check a sweep mapping: sections, keys, axes and spaces (values of the training
    keys are checked per trial by :func:`rpuhw.sweep.trials.expand`)."""
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise _err(source, unknown[0], f"unknown section (allowed: {', '.join(SECTIONS)})")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise _err(source, "base", f"expected a mapping of training keys, got {base!r}")
    for key in base:
        if key in CONTROLLED:
            raise _err(source, f"base.{key}", "set by the sweep itself (each trial's folder, "
                       "--cpus-per-trial); leave it out")
        if key not in train_keys():
            raise _err(source, f"base.{key}", f"unknown key (allowed: {', '.join(train_keys())})")
    spec = SweepSpec(base=dict(base), source=source, raw=data)
    if "grid" in data:
        g = data["grid"]
        if isinstance(g, list):
            if not g:
                raise _err(source, "grid", "empty list of grids: no trials")
            spec.grids = [_grid(x, source, f"grid[{i}]") for i, x in enumerate(g)]
        else:
            spec.grids = [_grid(g, source, "grid")]
    if "random" in data:
        r = data["random"]
        if not isinstance(r, dict):
            raise _err(source, "random", f"expected {{N, seed, space}}, got {r!r}")
        bad = sorted(set(r) - {"N", "seed", "space"})
        if bad:
            raise _err(source, f"random.{bad[0]}", "unknown key (allowed: N, seed, space)")
        if "N" not in r:
            raise _err(source, "random.N", "missing: how many samples")
        spec.random_n = _int(r["N"], source, "random.N", 1)
        spec.random_seed = _int(r.get("seed", 0), source, "random.seed", 0)
        spec.random_space = _dimensions(r.get("space"), source, "random.space")
    if "search" in data:
        s = data["search"]
        if spec.grids or spec.random_n:
            raise _err(source, "search", "a search runs alone: leave out grid and random "
                       "(put fixed values in base)")
        if not isinstance(s, dict):
            raise _err(source, "search", f"expected {{method, trials, metric, space}}, got {s!r}")
        allowed = {"method", "trials", "metric", "mode", "seed", "space"}
        bad = sorted(set(s) - allowed)
        if bad:
            raise _err(source, f"search.{bad[0]}", f"unknown key (allowed: "
                       f"{', '.join(sorted(allowed))})")
        method = s.get("method", "optuna")
        if method != "optuna":
            raise _err(source, "search.method", f"unknown method {method!r} (allowed: optuna)")
        metric = s.get("metric", "test_error")
        if metric not in METRICS:
            raise _err(source, "search.metric", f"unknown metric {metric!r} (allowed: "
                       f"{', '.join(METRICS)})")
        mode = s.get("mode", "min")
        if mode not in ("min", "max"):
            raise _err(source, "search.mode", f"expected min or max, got {mode!r}")
        spec.search = {"method": method, "metric": metric, "mode": mode,
                       "trials": _int(s.get("trials"), source, "search.trials", 1),
                       "seed": _int(s.get("seed", 0), source, "search.seed", 0)}
        spec.search_space = _dimensions(s.get("space"), source, "search.space")
    if not (spec.grids or spec.random_n or spec.search):
        raise _err(source, "grid", "no trials: give a grid, random or search section")
    return spec
