"""Figures (matplotlib, PNG)."""

from __future__ import annotations

import json
from pathlib import Path

from rpuhw.errors import ConfigError


def _label(path: Path, res: dict) -> str:
    cfg = res.get("config", {})
    backends = sorted(set(res.get("backends", {}).values()))
    return f"{path.stem} ({'/'.join(backends)}, {cfg.get('management', '?')})"


def plot_runs(paths: list[str], output: str) -> None:
    """Test error (%) vs epoch of each results JSON, log y axis, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name in paths:
        path = Path(name)
        try:
            res = json.loads(path.read_text())
            errors = [100 * e for e in res["test_error"]]
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
