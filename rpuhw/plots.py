"""Figures of training runs (matplotlib, Agg canvas, PNG): test error vs epoch, weight
histograms with the devices' weight bounds.

Each figure has a builder that returns the :class:`~matplotlib.figure.Figure`
(:func:`runs_figure`, :func:`weights_figure`, for notebooks and tests) and a writer that
saves it atomically (:func:`plot_runs`, :func:`plot_weight_histograms`). Every text of a
figure lies inside its canvas (constrained layout, legends beside the axes).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rpuhw._io import atomic_write
from rpuhw.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_KIND = {"float": "floating point", "ideal": "ideal arrays", "sim": "simulator",
         "bench": "chip", "arc2": "ArC TWO chip"}
"""Backend spec prefix -> what a reader calls it."""


def new_figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas (no pyplot state), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, output: str | Path, dpi: int) -> None:
    atomic_write(output, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def _kind(spec: str) -> str:
    """``sim:dev/device.yaml`` -> ``simulator (device.yaml)``; ``bench:b.yaml`` -> ``chip``."""
    prefix, _, arg = spec.partition(":")
    name = _KIND.get(prefix, prefix)
    if prefix == "sim":
        return f"{name} ({Path(arg).name})" if arg else name
    return name


def run_label(res: Mapping[str, Any]) -> str:
    """A readable name of a training run from its results JSON: ``floating point``,
    ``simulator (device.yaml)``, ``conv1 on chip, rest simulator (device.yaml)``."""
    backends: dict[str, str] = dict(res.get("backends") or {})
    cfg = res.get("config") if isinstance(res.get("config"), Mapping) else {}
    if not backends:
        return _kind(str(cfg.get("backend", "?")))
    groups: dict[str, list[str]] = {}
    for layer, spec in backends.items():
        groups.setdefault(spec, []).append(layer)
    if len(groups) == 1:
        return _kind(next(iter(groups)))
    rest = cfg.get("backend")
    if rest not in groups:  # the most common backend is "the rest"
        rest = max(groups, key=lambda s: len(groups[s]))
    parts = [f"{', '.join(layers)} on {_kind(spec)}" for spec, layers in groups.items()
             if spec != rest]
    return f"{'; '.join(parts)}, rest {_kind(rest)}"


def _unique_labels(results: list[tuple[Path, dict[str, Any]]]) -> list[str]:
    """:func:`run_label` of each run, made distinct by the management and the file name."""
    labels = [run_label(res) for _, res in results]

    def clash(i: int) -> bool:
        return labels.count(labels[i]) > 1

    for extra in (lambda p, r: f"management {(r.get('config') or {}).get('management', '?')}",
                  lambda p, r: p.stem):
        todo = [i for i in range(len(labels)) if clash(i)]
        for i in todo:
            labels[i] = f"{labels[i]}, {extra(*results[i])}"
    return labels


def _load_results(paths: Sequence[str | Path]) -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for name in paths:
        path = Path(name)
        try:
            res = json.loads(path.read_text())
            [float(e) for e in res["test_error"]]
        except FileNotFoundError:
            raise ConfigError("file not found", source=str(name)) from None
        except IsADirectoryError:
            raise ConfigError("is a directory, expected a results JSON of rpuhw train",
                              source=str(name)) from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a results JSON of rpuhw train ({exc})",
                              source=str(name)) from None
        out.append((path, res))
    return out


def _data_title(results: list[tuple[Path, dict[str, Any]]]) -> str:
    """``lenet on mnist5k, 200 training / 200 test images`` when every run shares them."""
    def key(res: dict[str, Any]) -> tuple:
        c = res.get("config") if isinstance(res.get("config"), Mapping) else {}
        return c.get("model"), c.get("data"), c.get("train_limit"), c.get("test_limit")

    keys = {key(res) for _, res in results}
    if len(keys) != 1:
        return ""
    model, data, n_train, n_test = keys.pop()
    text = f"{model} on {data}" if model and data else ""
    if n_train and n_test:
        text += f", {n_train} training / {n_test} test images"
    return text


def runs_figure(paths: Sequence[str | Path], epochs: int | None = None,
                labels: Sequence[str] | None = None, title: str | None = None,
                zoom: tuple[float, float] | None = None) -> Figure:
    """Test error (%) vs epoch of each results JSON, linear axes, one line per run.

    ``epochs``: plot only the first epochs of each run; ``labels``: the runs' names in the
    legend (default :func:`run_label`); ``title``: the first title line (the second names
    the network, data set and image counts when every run shares them); ``zoom``: (low,
    high) test error in %: a second panel shows that band of the same curves (the first
    always shows every point, from 0 %).
    """
    from matplotlib.ticker import MaxNLocator

    results = _load_results(paths)
    if labels is not None and len(labels) != len(results):
        raise ConfigError(f"{len(labels)} labels for {len(results)} runs", key="labels")
    if zoom is not None and not 0 <= zoom[0] < zoom[1]:
        raise ConfigError(f"expected (low, high) with 0 <= low < high, got {zoom}", key="zoom")
    names = list(labels) if labels is not None else _unique_labels(results)
    fig = new_figure(6.4 if zoom is None else 11.0, 4.6 + 0.2 * len(results))
    axes = fig.subplots(1, 1 if zoom is None else 2, squeeze=False)[0]
    series = [[100.0 * float(e) for e in res["test_error"][:epochs]] for _, res in results]
    n_epochs = max((len(s) for s in series), default=1) or 1
    top = max((max(s) for s in series if s), default=100.0)
    sub = _data_title(results)
    for j, ax in enumerate(axes):
        for k, (errs, name) in enumerate(zip(series, names, strict=True)):
            final = f" (final {errs[-1]:.1f} %)" if errs else " (no epochs)"
            ax.plot(range(1, len(errs) + 1), errs, marker="o", ms=4, color=f"C{k}",
                    label=name + final if j == 0 else None)
        ax.set_xlim(0.5, n_epochs + 0.5)
        if n_epochs <= 12:
            ax.set_xticks(range(1, n_epochs + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.grid(True, alpha=0.3)
        if j == 0:
            ax.set_ylim(0.0, min(100.0, 1.1 * top + 1.0))
            ax.set_title((title or "Test error after each epoch") + (f"\n{sub}" if sub else ""),
                         fontsize=11)
        else:
            assert zoom is not None
            ax.set_ylim(*zoom)
            ax.set_title(f"Zoom: {zoom[0]:g} to {zoom[1]:g} % test error", fontsize=11)
    fig.legend(loc="outside lower center", fontsize=9, frameon=False,
               ncol=1 if zoom is None else 2)
    return fig


def plot_runs(paths: Sequence[str | Path], output: str | Path, epochs: int | None = None,
              labels: Sequence[str] | None = None, title: str | None = None,
              zoom: tuple[float, float] | None = None) -> None:
    """Write :func:`runs_figure` of the results JSONs ``paths`` to the PNG ``output``."""
    fig = runs_figure(paths, epochs=epochs, labels=labels, title=title, zoom=zoom)
    save_figure(fig, output, dpi=130)


def spec_bounds(spec: str) -> tuple[float, float] | None:
    """Mean weight bounds (w_min, w_max) of the devices of an array spec, read from its
    files without opening the array; None where there are none (``float``, ``ideal``)
    or the spec does not say (a bench/arc2 YAML without a ``weights:`` block)."""
    from rpuhw.config import load_yaml
    from rpuhw.device_spec import load_device
    from rpuhw.devices import get_model, model_names

    prefix, _, arg = spec.partition(":")
    if prefix == "sim":
        if not arg:
            p = get_model("constant_step")().params
        elif arg in model_names():
            p = get_model(arg)().params
        else:
            p = load_device(arg).model.params
        return float(p.w_min), float(p.w_max)
    if prefix in ("float", "ideal") or not arg:
        return None
    weights = (load_yaml(arg) or {}).get("weights") or {}
    if "w_min" in weights and "w_max" in weights:
        return float(weights["w_min"]), float(weights["w_max"])
    return None


def weight_bounds(backends: Mapping[str, str]) -> dict[str, tuple[float, float]]:
    """``{layer: (w_min, w_max)}`` of a run's ``backends`` (results JSON) where known."""
    cache: dict[str, tuple[float, float] | None] = {}
    out = {}
    for layer, spec in backends.items():
        if spec not in cache:
            cache[spec] = spec_bounds(spec)
        if cache[spec] is not None:
            out[layer] = cache[spec]
    return out


def weights_figure(weights: Mapping[str, Mapping[str, Any]],
                   bounds: Mapping[str, Mapping[str, tuple[float, float]]] | None = None,
                   title: str | None = None) -> Figure:
    """One column per layer: histograms of the trained weights of each run (top) and,
    when ``bounds`` are given, where the weights lie within each device's range (bottom:
    1-99 % of the weights as a bar, the run's bounds w_min, w_max as ticks).

    ``weights[run][layer]``: that layer's weights (any shape); ``bounds[run][layer]``:
    (w_min, w_max) of the devices the layer ran on (see :func:`weight_bounds`).
    """
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    bounds = {run: b for run, b in (bounds or {}).items() if b}
    runs = list(weights)
    layers = list(dict.fromkeys(layer for w in weights.values() for layer in w))
    n = max(len(layers), 1)
    rows = 2 if bounds else 1
    fig = new_figure(3.0 * n + 2.2, 3.1 + 1.9 * (rows - 1))
    grid = fig.add_gridspec(rows, n, height_ratios=[3, 2][:rows])
    for j, layer in enumerate(layers):
        ax = fig.add_subplot(grid[0, j])
        data = {run: np.asarray(w[layer], dtype=float).ravel() for run, w in weights.items()
                if layer in w}
        lo = min(float(v.min()) for v in data.values())
        hi = max(float(v.max()) for v in data.values())
        pad = 0.05 * (hi - lo or 1.0)
        edges = np.linspace(lo - pad, hi + pad, 51)
        for k, run in enumerate(runs):
            if run in data:
                ax.hist(data[run], bins=edges, histtype="step", density=True, color=f"C{k}",
                        label=run)
        ax.set_xlim(lo - 2 * pad, hi + 2 * pad)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=4))
        for k, run in enumerate(runs):  # bounds that fall inside the zoomed view
            b = bounds.get(run, {}).get(layer)
            for w in b or ():
                if lo - 2 * pad <= w <= hi + 2 * pad:
                    ax.axvline(w, color=f"C{k}", ls="--", lw=1)
        ax.set_title(f"{layer}: trained weights", fontsize=10)
        ax.set_xlabel("weight w")
        ax.set_ylabel("probability density (1/w)")
        if rows == 2:
            bx = fig.add_subplot(grid[1, j])
            for k, run in enumerate(runs):
                y = len(runs) - 1 - k
                if run in data:
                    q1, q99 = np.percentile(data[run], [1, 99])
                    bx.plot([data[run].min(), data[run].max()], [y, y], color=f"C{k}", lw=1)
                    bx.plot([q1, q99], [y, y], color=f"C{k}", lw=5, solid_capstyle="butt")
                b = bounds.get(run, {}).get(layer)
                if b is not None:
                    bx.plot(list(b), [y, y], ls="none", marker="|", ms=16, mew=2,
                            color=f"C{k}")
            bx.set_ylim(-0.7, len(runs) - 0.3)
            bx.set_yticks([])
            bx.set_title(f"{layer}: weights within the device bounds", fontsize=9)
            bx.set_xlabel("weight w")
            bx.grid(True, axis="x", alpha=0.3)
    handles = [Line2D([], [], color=f"C{k}", lw=2, label=run) for k, run in enumerate(runs)]
    if rows == 2:
        handles += [Line2D([], [], color="k", lw=5, label="1-99 % of the weights"),
                    Line2D([], [], color="k", lw=1, label="all weights"),
                    Line2D([], [], color="k", ls="none", marker="|", ms=12, mew=2,
                           label="device bounds\nw_min, w_max")]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)
    if title is not None or bounds:
        fig.suptitle(title or "Trained weights per layer and the devices' weight bounds",
                     fontsize=11)
    return fig


def plot_weight_histograms(weights: Mapping[str, Mapping[str, Any]], output: str | Path,
                           bounds: Mapping[str, Mapping[str, tuple[float, float]]] | None
                           = None, title: str | None = None) -> None:
    """Write :func:`weights_figure` to the PNG ``output``."""
    save_figure(weights_figure(weights, bounds=bounds, title=title), output, dpi=120)
