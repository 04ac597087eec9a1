"""Figures of a fit (matplotlib, Agg backend, PNG): traces, step vs conductance, maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rpuhw._io import atomic_write
from rpuhw.calibration.fit import FitResult


def _maps_grid(res: FitResult) -> tuple[np.ndarray, np.ndarray, str]:
    """Row/col of each device; devices without a position go on a near-square grid."""
    rows, cols = res.per_device["row"], res.per_device["col"]
    if np.all(rows >= 0) and np.all(cols >= 0):
        return rows, cols, "row / col"
    n = len(rows)
    width = int(np.ceil(np.sqrt(n)))
    idx = np.arange(n)
    return idx // width, idx % width, "device index (row-major)"


def plot_fit(res: FitResult, path: str | Path, n_traces: int = 4) -> None:
    """Write one PNG: traces with the fitted mean response, step vs conductance (up and
    down), and device-to-device maps of dw_min, g_min, g_max, up_down."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = res.data
    assert data is not None
    fig, axes = plt.subplots(2, 4, figsize=(18, 8.5))
    s0, g0 = data.s0, data.g0
    # 1: traces (first cycle, up then down) of a few devices with the fitted mean response
    ax = axes[0, 0]
    picks = np.linspace(0, data.n_dev - 1, min(n_traces, data.n_dev)).astype(int)
    cycles = sorted({c for (_i, c, _p) in data.traces})
    for n, i in enumerate(picks):
        offset = 0
        for pol in (1, -1):
            key = (int(i), cycles[0], pol)
            if key not in data.traces:
                continue
            k, u = data.traces[key]
            g = g0 + u * s0
            ax.plot(offset + k, g * 1e6, ".", ms=2, color=f"C{n}", alpha=0.5)
            model = res.rollout(int(i), float(g[0]), len(k) - 1, pol > 0)
            ax.plot(offset + k, model * 1e6, "-", color="k", lw=1)
            offset += int(k[-1]) + 1
    ax.set(title=f"traces (cycle {cycles[0]}), black: fitted mean", xlabel="pulse",
           ylabel="conductance (uS)")
    # 2, 3: step size vs conductance, up and down (all devices, fitted curve of the median)
    mid = int(np.argsort(res.per_device["dw"])[data.n_dev // 2])
    for ax, side, up, name in ((axes[0, 1], data.up, True, "up"),
                               (axes[0, 2], data.down, False, "down")):
        take = np.random.default_rng(0).permutation(len(side.u))[:20000]
        ax.plot((g0 + side.u[take] * s0) * 1e6, side.du[take] * s0 * 1e9, ",", alpha=0.3,
                color="C0")
        sel = side.dev == mid
        ax.plot((g0 + side.u[sel] * s0) * 1e6, side.du[sel] * s0 * 1e9, ".", ms=2,
                color="C1", label=f"device {int(data.devices[mid])}")
        lo, hi = res.per_device["g_min"][mid], res.per_device["g_max"][mid]
        g = np.linspace(lo, hi, 200)
        ax.plot(g * 1e6, res.mean_step(mid, g, up) * 1e9, "k-", label="fitted mean step")
        ax.set(title=f"{name} steps vs conductance", xlabel="conductance before (uS)",
               ylabel="step (nS)")
        ax.legend(fontsize=8)
    # 4: text
    ax = axes[0, 3]
    ax.axis("off")
    lines = [f"model: {res.model} ({'ok' if res.ok else 'NOT OK'})", res.explanation[:70],
             f"g_min {res.g_min:.3g} S, g_max {res.g_max:.3g} S"]
    lines += [f"{k}: {v:.4g}" for k, v in res.params.items() if isinstance(v, float)]
    ax.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=8)
    # 5-8: device maps
    r, c, label = _maps_grid(res)
    shape = (int(r.max()) + 1, int(c.max()) + 1)
    for ax, key, unit, scale in ((axes[1, 0], "dw", "dw_min (weight)", 1.0),
                                 (axes[1, 1], "g_min", "g_min (uS)", 1e6),
                                 (axes[1, 2], "g_max", "g_max (uS)", 1e6),
                                 (axes[1, 3], "up_down", "up_down", 1.0)):
        grid = np.full(shape, np.nan)
        grid[r, c] = res.per_device[key] * scale
        im = ax.imshow(grid, cmap="viridis", interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.8)
        ax.set(title=unit, xlabel=label.split(" / ")[-1], ylabel=label.split(" / ")[0])
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    finally:
        plt.close(fig)
