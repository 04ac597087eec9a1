"""``rpuhw sweep-report DIR``: the sweep's results grouped over seeds, and plots.

Trials that differ only in ``seed`` form a group. ``DIR/report.md`` holds one table row
per group: its axis values, the number of seeds that finished ``ok`` (n), the failed
ones, the final test error as mean ± sample standard deviation over the seeds (ddof 1,
in %), and images/s. For each numeric axis (other than ``seed``) with two or more values,
``DIR/plot_AXIS.png`` shows the test error against that axis, one line per value of the
other axes (categorical or numeric), the band mean ± std over the seeds. Linked axes
(varied together) show under the first of their group.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rpuhw._io import atomic_write
from rpuhw.errors import ConfigError
from rpuhw.sweep.results import SWEEP_JSON, SweepDir

REPORT = "report.md"
SEED = "seed"


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _numeric(values: Sequence[Any]) -> bool:
    return bool(values) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                for v in values)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return str(v)


def groups(records: list[dict[str, Any]], axes: list[str]) -> dict[tuple, list[dict]]:
    """Records grouped by their axis values other than ``seed`` (key: ``((axis, value),
    ...)`` over the axes the record has)."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        key = tuple((a, _hashable(r["params"][a])) for a in axes
                    if a != SEED and a in r["params"])
        out[key].append(r)
    return dict(out)


def _hashable(v: Any) -> Any:
    if isinstance(v, dict):
        return tuple(sorted((k, _hashable(x)) for k, x in v.items()))
    if isinstance(v, list):
        return tuple(_hashable(x) for x in v)
    return v


def table(records: list[dict[str, Any]], axes: list[str]) -> str:
    """The markdown table over seeds (test error in %)."""
    cols = [a for a in axes if a != SEED]
    lines = ["| " + " | ".join([*cols, "n", "failed", "test error (%)", "images/s"]) + " |",
             "|" + "---|" * (len(cols) + 4)]
    for key, recs in groups(records, axes).items():
        values = dict(key)
        ok = [r for r in recs if r["status"] == "ok" and r.get("test_error") is not None]
        err = "–"
        speed = "–"
        if ok:
            m, s = mean_std([100 * r["test_error"] for r in ok])
            err = f"{m:.2f}" + (f" ± {s:.2f}" if s is not None else "")
            ips = [r["images_per_s"] for r in ok if r.get("images_per_s")]
            if ips:
                speed = f"{sum(ips) / len(ips):.0f}"
        cells = [_fmt(values[c]) if c in values else "" for c in cols]
        lines.append("| " + " | ".join([*cells, str(len(ok)), str(len(recs) - len(ok)),
                                        err, speed]) + " |")
    return "\n".join(lines)


def plot_axis(records: list[dict[str, Any]], axes: list[str], axis: str, path: Path) -> None:
    """Test error (%) against ``axis``: one line per value of the other axes, the band
    mean ± std over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [a for a in axes if a not in (axis, SEED)]
    lines: dict[tuple, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if axis not in r["params"] or r["status"] != "ok" or r.get("test_error") is None:
            continue
        key = tuple((a, _hashable(r["params"][a])) for a in others if a in r["params"])
        lines[key][r["params"][axis]].append(100 * r["test_error"])
    fig, ax = plt.subplots(figsize=(6, 4))
    xs_all = []
    for key, by_x in sorted(lines.items(), key=lambda kv: str(kv[0])):
        xs = sorted(by_x)
        xs_all += xs
        stats = [mean_std(by_x[x]) for x in xs]
        mean = [m for m, _ in stats]
        std = [s or 0.0 for _, s in stats]
        label = ", ".join(f"{a}={_fmt(v)}" for a, v in key) or "test error"
        (line,) = ax.plot(xs, mean, marker="o", label=label)
        ax.fill_between(xs, [m - s for m, s in zip(mean, std, strict=True)],
                        [m + s for m, s in zip(mean, std, strict=True)],
                        color=line.get_color(), alpha=0.2, linewidth=0)
    if xs_all and min(xs_all) > 0 and max(xs_all) / min(xs_all) >= 20:
        ax.set_xscale("log")
    ax.set_xlabel(axis)
    ax.set_ylabel("test error (%)")
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    ax.set_title(f"test error vs {axis} (band: ± std over seeds)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_name(axis: str) -> str:
    return "plot_" + re.sub(r"[^A-Za-z0-9_]+", "_", axis) + ".png"


def write_report(folder: str | Path) -> Path:
    """Write ``report.md`` and the plots into a sweep's folder; returns the report path."""
    sdir = SweepDir(folder)
    if not (sdir.path / SWEEP_JSON).is_file():
        raise ConfigError(f"not a sweep folder (no {SWEEP_JSON}); give the --out DIR of "
                          "rpuhw sweep", source=str(folder))
    records = sorted(sdir.load().values(), key=lambda r: r["id"])
    axes = [a for a in sdir.axes if a not in sdir.followers]  # linked: the first stands in
    n_err = sum(r["status"] != "ok" for r in records)
    parts = [f"# Sweep report: {sdir.path}", "",
             f"{len(records)} trials finished ({len(records) - n_err} ok, {n_err} failed). "
             "Test error after the last epoch, mean ± sample std over the seeds (n: seeds "
             "that finished ok).", "", table(records, sdir.axes), ""]
    for axis in axes:
        if axis == SEED:
            continue
        values = {r["params"][axis] for r in records if axis in r["params"]
                  and not isinstance(r["params"][axis], (dict, list))}
        if len(values) >= 2 and _numeric(list(values)):
            name = plot_name(axis)
            plot_axis(records, axes, axis, sdir.path / name)
            parts += [f"![test error vs {axis}]({name})", ""]
    failed = [r for r in records if r["status"] != "ok"]
    if failed:
        parts += ["## Failed trials", ""]
        parts += [f"- {r['id']} (" + ", ".join(f"{k}={_fmt(v)}" for k, v in r["params"].items())
                  + f"): {r['error']}" for r in failed]
        parts.append("")
    path = sdir.path / REPORT
    atomic_write(path, "\n".join(parts))
    return path
