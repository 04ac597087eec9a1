"""Trials of a sweep: the grid's products and the random samples, each a checked config.

Trial ``i`` (id ``t0000``, ``t0001``, ...) is the i-th point in a fixed order: grids in
file order, each the cartesian product of its axes (first axis slowest), each point times
the random samples (drawn once from ``random.seed``, the same samples at every grid
point). The same file always gives the same trials, which is what ``--resume`` relies on.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from rpuhw.errors import ConfigError
from rpuhw.sweep import device as device_axes
from rpuhw.sweep.spec import Dimension, SweepSpec, linked


@dataclass
class Trial:
    """One training run of a sweep."""

    id: str
    """``t0000``...: its folder under DIR/trials and its row key."""
    params: dict[str, Any]
    """Axis -> value (the row's axis columns)."""
    config: dict[str, Any]
    """Training config keys (``rpuhw train --config``), without out/checkpoint."""
    device: dict[str, Any] | None = None
    """The trial's device YAML mapping when it has ``device.KEY`` axes."""
    block: int | None = None
    """Index of the grid it comes from (None: no grid)."""
    instruments: list[str] = field(default_factory=list)
    """Instruments its layers use (``bench:``/``arc2:`` specs without ``#REGION``)."""


def sample(dims: list[Dimension], n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` draws of a space: uniform in [low, high] (in log with ``log``), rounded for
    ``int``, uniform over ``values``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        point: dict[str, Any] = {}
        for d in dims:
            if d.values is not None:
                point[d.key] = d.values[int(rng.integers(len(d.values)))]
                continue
            if d.log:
                v = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                v = float(rng.uniform(d.low, d.high))
            point[d.key] = int(round(v)) if d.integer else v
        out.append(point)
    return out


def points(spec: SweepSpec) -> list[tuple[int | None, dict[str, Any]]]:
    """(grid index, axis values) of every trial, in trial order."""
    grid_points: list[tuple[int | None, dict[str, Any]]] = []
    for b, g in enumerate(spec.grids):
        keys = list(g)
        for combo in itertools.product(*(g[k] for k in keys)):
            point: dict[str, Any] = {}
            for key, value in zip(keys, combo, strict=True):
                names = linked(key)
                point.update(zip(names, value if len(names) > 1 else [value], strict=True))
            grid_points.append((b, point))
    if not grid_points:
        grid_points = [(None, {})]
    if not spec.random_n:
        return grid_points
    samples = sample(spec.random_space, spec.random_n, spec.random_seed)
    return [(b, {**p, **s}) for b, p in grid_points for s in samples]


def instruments_of(config: dict[str, Any]) -> list[str]:
    """Instrument specs (``bench:FILE``/``arc2:FILE``, region dropped) the config uses."""
    specs = [config.get("backend", "sim"), *(config.get("layers") or {}).values()]
    out = []
    for s in specs:
        if isinstance(s, str) and s.partition(":")[0] in ("bench", "arc2"):
            out.append(s.partition("#")[0])
    return sorted(set(out))


def build(spec: SweepSpec, index: int | str, params: dict[str, Any],
          block: int | None = None, prefix: str = "t") -> Trial:
    """The trial ``PREFIX0003`` (``index`` 3; a string index is used as it is) for axis
    values ``params``: its training config checked like ``rpuhw
    train --config`` (one ConfigError naming the sweep file and the trial's values), its
    device mapping with the ``device.KEY`` values (unknown keys refused)."""
    from rpuhw.algorithms import parse_algorithm
    from rpuhw.config import from_mapping
    from rpuhw.train import TrainConfig

    tid = f"{prefix}{index:04d}" if isinstance(index, int) else f"{prefix}{index}"
    where = f"{spec.source} (trial {tid}: " + ", ".join(
        f"{k}={v}" for k, v in params.items()) + ")"
    config = dict(spec.base)
    dev: dict[str, Any] = {}
    alg: dict[str, Any] = {}
    for key, value in params.items():
        head, dot, rest = key.partition(".")
        if dot and head == "device":
            dev[rest] = value
        elif dot and head == "algorithm":
            alg[rest] = value
        else:
            config[key] = value
    if alg:
        name, given = parse_algorithm(config.get("algorithm", "sgd"), source=where)
        config["algorithm"] = {"name": name, **given, **alg}
    from_mapping(TrainConfig, dict(config, progress=False), source=where)  # checks it
    mapping = device_axes.apply(config.get("backend", "sim"), dev, where) if dev else None
    return Trial(tid, dict(params), config, mapping, block, instruments_of(config))


def expand(spec: SweepSpec) -> list[Trial]:
    """Every trial of a grid/random sweep, checked (ConfigError on the first bad one)."""
    out = [build(spec, i, p, b) for i, (b, p) in enumerate(points(spec))]
    if not out:
        raise ConfigError("no trials", source=spec.source, key="grid")
    return out
