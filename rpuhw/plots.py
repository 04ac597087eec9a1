"""Figures (matplotlib, PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rpuhw.errors import ConfigError


def _label(path: Path, res: dict) -> str:
    cfg = res.get("config", {})
    backends = sorted(set(res.get("backends", {}).values()))
    return f"{path.stem} ({'/'.join(backends)}, {cfg.get('management', '?')})"


def plot_runs(paths: list[str], output: str, epochs: int | None = None) -> None:
    """Test error (%) vs epoch of each results JSON, log y axis, one line per run
    (the first ``epochs`` epochs of each when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in paths:
        path = Path(name)
        try:
            res = json.loads(path.read_text())
            errors = [100 * e for e in res["test_error"][:epochs]]
        except FileNotFoundError:
            raise ConfigError("file not found", source=name) from None
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a results JSON of rpuhw train ({exc})", source=name) from None
        ax.plot(range(1, len(errors) + 1), errors, marker="o", label=_label(path, res))
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("test error (%)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    plt.close(fig)


def plot_weight_histograms(weights: dict[str, dict[str, Any]], output: str) -> None:
    """One panel per layer: histograms of the trained weights of each run.

    ``weights[run][layer]`` is an array of that layer's weights (any shape).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    layers = list(dict.fromkeys(layer for w in weights.values() for layer in w))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3.0), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for run, w in weights.items():
            if layer in w:
                ax.hist(np.asarray(w[layer]).ravel(), bins=50, histtype="step", label=run,
                        density=True)
        ax.set_title(layer)
        ax.set_xlabel("weight")
    axes[0][0].set_ylabel("density")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    plt.close(fig)
