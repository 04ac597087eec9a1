"""The published figures (issue 16, item 5): curves.png, fit.png, weights.png.

Each figure is rendered through its public writer (``plot_runs``, ``plot_fit``,
``plot_weight_histograms``) from small synthetic inputs; the figure is taken at
``savefig`` and redrawn on its Agg canvas, recording every text artist that is actually
drawn (titles, axis labels, tick labels, legend texts, annotations, table cells). Checks:
every drawn text lies inside the figure box; legends lie outside every data area; error
axes are linear in %; epoch ticks are integers; units are named; weight bounds and the
true device are drawn when given.

Geometry is checked in display pixels with a 1 px tolerance (antialiasing rounds extents
to whole pixels); numbers drawn from a device model are compared with an independent
computation to 1e-9 relative (float64 arithmetic, no sampling).
"""

from __future__ import annotations

import json
import re

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.legend import Legend  # noqa: E402
from matplotlib.table import Table  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from rpuhw.plots import plot_runs, plot_weight_histograms  # noqa: E402

TOL_PX = 1.0


@pytest.fixture
def saved(monkeypatch):
    """The figures passed to ``Figure.savefig`` during the test, in order."""
    figs: list[Figure] = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figs.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figs


def drawn_texts(fig: Figure, monkeypatch) -> list[Text]:
    """Redraw ``fig`` and return every text artist that drew something."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not isinstance(fig.canvas, FigureCanvasAgg):  # pyplot's close() detaches the canvas
        FigureCanvasAgg(fig)
    drawn: list[Text] = []
    original = Text.draw

    def draw(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return original(self, renderer)

    with monkeypatch.context() as m:
        m.setattr(Text, "draw", draw)
        fig.canvas.draw()
    return drawn


def assert_text_inside(fig: Figure, monkeypatch) -> list[Text]:
    texts = drawn_texts(fig, monkeypatch)
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    outside = []
    for t in texts:
        e = t.get_window_extent(renderer)
        if (e.x0 < box.x0 - TOL_PX or e.y0 < box.y0 - TOL_PX or e.x1 > box.x1 + TOL_PX
                or e.y1 > box.y1 + TOL_PX):
            outside.append(f"{t.get_text()!r} at x {e.x0:.0f}..{e.x1:.0f}, "
                           f"y {e.y0:.0f}..{e.y1:.0f}")
    assert not outside, (f"text outside the {box.width:.0f} x {box.height:.0f} px figure: "
                         + "; ".join(outside))
    return texts


def legends(fig: Figure) -> list[Legend]:
    return [a for a in fig.findobj(Legend)]


def assert_legends_outside_data(fig: Figure) -> None:
    """No legend overlaps the data area of any axes that shows data."""
    renderer = fig.canvas.get_renderer()
    data_axes = [ax for ax in fig.get_axes() if ax.axison and (ax.lines or ax.patches
                                                                or ax.collections or ax.images)]
    found = legends(fig)
    assert found, "no legend"
    for leg in found:
        e = leg.get_window_extent(renderer)
        for ax in data_axes:
            overlap = (min(e.x1, ax.bbox.x1) - max(e.x0, ax.bbox.x0) > TOL_PX
                       and min(e.y1, ax.bbox.y1) - max(e.y0, ax.bbox.y0) > TOL_PX)
            assert not overlap, (f"legend {[t.get_text() for t in leg.get_texts()]} covers the "
                                 f"data of {ax.get_title()!r}")


# ---- curves.png ------------------------------------------------------------------------


def _results(tmp_path, name: str, errors: list[float], backends: dict[str, str],
             backend: str, layers: dict[str, str] | None = None) -> str:
    path = tmp_path / f"{name}.json"
    cfg = {"model": "lenet", "data": "mnist5k", "backend": backend, "layers": layers or {},
           "management": "nm+bm+um", "train_limit": 200, "test_limit": 100}
    path.write_text(json.dumps({"config": cfg, "epochs": len(errors), "test_error": errors,
                                "backends": backends}))
    return str(path)


@pytest.fixture
def three_runs(tmp_path) -> list[str]:
    dev = str(tmp_path / "device.yaml")
    bench = str(tmp_path / "bench.yaml")
    layers = ("conv1", "conv2", "fc1", "fc2")
    sim = {k: f"sim:{dev}" for k in layers}
    return [
        _results(tmp_path, "floating_point", [0.41, 0.22, 0.12], dict.fromkeys(layers, "float"),
                 "float"),
        _results(tmp_path, "calibrated_simulator", [0.62, 0.35, 0.31], sim, f"sim:{dev}"),
        _results(tmp_path, "conv1_on_the_chip", [0.7, 0.45, 0.38],
                 {**sim, "conv1": f"bench:{bench}"}, f"sim:{dev}", {"conv1": f"bench:{bench}"}),
    ]


def test_curves_figure(tmp_path, three_runs, saved, monkeypatch):
    plot_runs(three_runs, str(tmp_path / "curves.png"))
    fig = saved[-1]
    assert_text_inside(fig, monkeypatch)
    assert_legends_outside_data(fig)
    (ax,) = fig.get_axes()
    assert ax.get_yscale() == "linear" and "%" in ax.get_ylabel()
    assert ax.get_xscale() == "linear" and "epoch" in ax.get_xlabel()
    lo, hi = ax.get_xlim()
    ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
    assert ticks == [1, 2, 3], f"epoch ticks {ticks}"
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert all(re.fullmatch(r"\d+", s) for s in labels), labels
    assert ax.get_title() or fig.get_suptitle()
    # the plotted values are the errors in %, on a linear axis starting at 0
    first = ax.get_lines()[0]
    np.testing.assert_allclose(first.get_ydata(), [41, 22, 12])
    assert ax.get_ylim()[0] == 0
    # readable names derived from the specs, never a raw spec string
    names = [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
    assert names[0].startswith("floating point")
    assert names[1].startswith("simulator (device.yaml)")
    assert names[2].startswith("conv1 on chip, rest simulator (device.yaml)")
    assert not any(str(tmp_path) in n or "sim:" in n or "bench:" in n for n in names), names


def test_curves_labels_given(tmp_path, three_runs, saved):
    names = ["floating point", "calibrated simulator", "conv1 on the chip"]
    plot_runs(three_runs, str(tmp_path / "curves.png"), labels=names)
    shown = [t.get_text() for leg in legends(saved[-1]) for t in leg.get_texts()]
    assert [s.split(" (final")[0] for s in shown] == names


def test_curves_same_backend_runs_get_distinct_names(tmp_path, saved):
    runs = [_results(tmp_path, f"run{k}", [0.5, 0.2], {"fc1": "sim"}, "sim") for k in (1, 2)]
    plot_runs(runs, str(tmp_path / "curves.png"))
    shown = [t.get_text() for leg in legends(saved[-1]) for t in leg.get_texts()]
    assert len(set(shown)) == 2 and "run1" in shown[0] and "run2" in shown[1], shown
    assert all(s.startswith("simulator, management nm+bm+um, run") for s in shown), shown


def test_curves_zoom_panel(tmp_path, three_runs, saved, monkeypatch):
    plot_runs(three_runs, str(tmp_path / "curves.png"), zoom=(10.0, 40.0))
    fig = saved[-1]
    assert_text_inside(fig, monkeypatch)
    assert_legends_outside_data(fig)
    full, zoomed = fig.get_axes()
    assert full.get_ylim()[0] == 0 and full.get_ylim()[1] >= 70  # every point in view
    assert zoomed.get_ylim() == (10.0, 40.0) and zoomed.get_yscale() == "linear"
    assert "%" in zoomed.get_ylabel() and "Zoom" in zoomed.get_title()


# ---- fit.png ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_fit():
    """A fit of 16 simulated soft_bounds devices (4 x 4, 1 cycle of 120 + 120 pulses)."""
    from test_fit import generate

    from rpuhw.calibration.fit import fit
    from rpuhw.device_spec import spec_from_mapping

    mapping = {"model": "soft_bounds", "dw_min": 0.02, "dw_min_dtod": 0.2, "dw_min_std": 0.2,
               "up_down": 0.05, "up_down_dtod": 0.02, "w_min": -0.6, "w_max": 0.6,
               "w_min_dtod": 0.1, "w_max_dtod": 0.1, "read_noise": 0.002,
               "conductance": {"g_min": 2e-5, "g_max": 1e-4}}
    m, _ = generate(mapping, rows=4, cols=4, pulses=120, cycles=1, seed=3)
    m.meta = {"settings": {"pulses": 120, "cycles": 1, "read_voltage": 0.2}}
    # model "auto": the explanation names the runner-up, as the demo's fit does
    return fit(m, "auto"), spec_from_mapping(mapping), m.meta


def _all_labels(fig: Figure) -> list[str]:
    out = []
    for ax in fig.get_axes():
        out += [ax.get_xlabel(), ax.get_ylabel(), ax.get_title()]
    return [s for s in out if s]


def test_fit_figure_without_truth(tmp_path, small_fit, saved, monkeypatch):
    from rpuhw.calibration.plots import plot_fit

    res, _truth, _meta = small_fit
    plot_fit(res, tmp_path / "fit.png")
    fig = saved[-1]
    texts = [t.get_text() for t in assert_text_inside(fig, monkeypatch)]
    assert_legends_outside_data(fig)
    labels = _all_labels(fig)
    # the model choice is shown whole (it was cut at 70 characters)
    assert " ".join(res.explanation.split()) in " ".join(" ".join(texts).split())
    assert not any("uS" in s for s in texts), "micro is µ"
    assert any("µS" in s for s in labels) and any("nS" in s for s in labels)
    assert any("pulse number (pulses)" in s for s in labels)
    # every axes that shows data names its quantities (a unit in parentheses or a colorbar)
    for ax in fig.get_axes():
        if ax.axison and (ax.lines or ax.images) and ax.get_label() != "<colorbar>":
            assert ax.get_xlabel() and ax.get_ylabel() and ax.get_title(), ax.get_title()
    # dw_min is shown in siemens, not in weight units only
    cbars = [ax.get_ylabel() for ax in fig.get_axes() if ax.get_label() == "<colorbar>"]
    assert any("nS" in s for s in cbars), cbars
    # the traces' colours are named: a legend of the devices in the traces panel
    (traces,) = [ax for ax in fig.get_axes() if "pulse number" in ax.get_xlabel()]
    names = [t.get_text() for t in traces.get_legend().get_texts()]
    assert sum(n.startswith("device ") for n in names) == 4, names  # n_traces=4
    assert not any("true" in s for s in texts)


def test_fit_figure_with_truth(tmp_path, small_fit, saved, monkeypatch):
    from rpuhw.calibration.fit_report import mid_range_steps
    from rpuhw.calibration.plots import plot_fit

    res, truth, meta = small_fit
    plot_fit(res, tmp_path / "fit.png", truth=truth, meta=meta)
    fig = saved[-1]
    texts = [t.get_text() for t in assert_text_inside(fig, monkeypatch)]
    assert_legends_outside_data(fig)
    assert any("0.2 V" in s for s in texts), "the read voltage"
    # the true mean step is drawn in both step panels; at mid-range it is the true
    # device's mid-range step (computed independently by fit_report.mid_range_steps)
    true_up, true_down = mid_range_steps(truth)
    g_mid = 0.5 * (truth.conductance.g_min + truth.conductance.g_max) * 1e6
    curves = [ln for ax in fig.get_axes() for ln in ax.get_lines()
              if "true" in str(ln.get_label())]
    assert len(curves) == 2
    for ln, want in zip(curves, (true_up, -true_down), strict=True):
        got = np.interp(g_mid, ln.get_xdata(), ln.get_ydata())
        assert got == pytest.approx(want * 1e9, rel=1e-2)  # 200-point grid, linear interp
    # fitted vs true: a table with a "true" column holding the hidden g_min (20 µS)
    tables = [{rc: cell.get_text().get_text() for rc, cell in t.get_celld().items()}
              for t in fig.findobj(Table)]
    with_truth = [t for t in tables if "true" in {v for (r, _c), v in t.items() if r == 0}]
    assert len(with_truth) == 1, tables
    cells = with_truth[0]
    assert "fitted / true" in {v for (r, _c), v in cells.items() if r == 0}
    row = next(r for (r, c), v in cells.items() if v.startswith("g_min (mean"))
    col = next(c for (r, c), v in cells.items() if r == 0 and v == "true")
    assert cells[(row, col)] == "20"
    # and a panel of fitted / true ratios
    ratio_ax = [ax for ax in fig.get_axes() if "fitted / true" in ax.get_xlabel()]
    assert len(ratio_ax) == 1 and ratio_ax[0].get_lines()


# ---- weights.png -----------------------------------------------------------------------


def test_weights_figure(tmp_path, saved, monkeypatch):
    rng = np.random.default_rng(0)
    runs = ("floating point", "calibrated simulator", "conv1 on the chip")
    weights = {run: {"conv1": rng.normal(0, 0.1, (6, 25)), "fc2": rng.normal(0, 0.03, 840)}
               for run in runs}
    bounds = {"calibrated simulator": {"conv1": (-1.0, 1.0), "fc2": (-1.0, 1.0)},
              "conv1 on the chip": {"conv1": (-0.6, 0.6), "fc2": (-1.0, 1.0)}}
    plot_weight_histograms(weights, str(tmp_path / "weights.png"), bounds=bounds)
    fig = saved[-1]
    assert_text_inside(fig, monkeypatch)
    assert_legends_outside_data(fig)
    hist_axes = [ax for ax in fig.get_axes() if ax.patches]
    assert len(hist_axes) == 2
    for ax in hist_axes:  # every panel says what its y axis is
        assert ax.get_ylabel() and ax.get_xlabel() and ax.get_title()
    # the bounds of every run and layer are drawn and in view
    for layer in ("conv1", "fc2"):
        axes = [ax for ax in fig.get_axes() if ax.get_title().startswith(layer)]
        xs = {round(float(x), 9) for ax in axes for ln in ax.get_lines()
              for x in np.atleast_1d(ln.get_xdata())
              if ax.get_xlim()[0] <= float(x) <= ax.get_xlim()[1]}
        for run, b in bounds.items():
            assert set(b[layer]) <= xs, f"{run} {layer} bounds {b[layer]} not drawn ({xs})"
    names = [t.get_text() for leg in legends(fig) for t in leg.get_texts()]
    assert set(runs) <= set(names) and any("bound" in n for n in names), names


def test_weight_bounds_from_specs(tmp_path):
    from rpuhw.plots import weight_bounds

    dev = tmp_path / "device.yaml"
    dev.write_text("model: soft_bounds\nw_min: -0.7\nw_max: 0.8\n")
    bench = tmp_path / "bench.yaml"
    bench.write_text("weights: {g_min: 2.0e-05, g_max: 1.0e-4, w_min: -0.6, w_max: 0.6}\n")
    got = weight_bounds({"conv1": f"bench:{bench}", "fc1": f"sim:{dev}", "fc2": "float",
                         "fc3": "ideal"})
    assert got == {"conv1": (-0.6, 0.6), "fc1": (-0.7, 0.8)}



def test_ratio_panel_takes_estimates_near_zero_and_negative_parameters():
    """fit.png's fitted/true panel: an estimate below the log axis' floor (1e-3), a
    negative parameter (its interval over a negative truth flips ends) and an interval
    reaching past 0 are drawn (matplotlib refused the negative error bars the demo's
    fit once produced); every bar's ends bracket its point."""
    import matplotlib.pyplot as plt

    from rpuhw.calibration.plots import _ROWS, _ratio_panel

    a, b, c = list(_ROWS)[:3]
    fig, ax = plt.subplots()
    try:
        _ratio_panel(ax, {a: 1e-5, b: -0.9, c: 0.011}, {a: 0.05, b: -1.0, c: 0.01},
                     {a: (-0.04, 0.02), b: (-1.1, -0.7), c: (0.009, 0.013)})
        bars = ax.containers[0]
        x = bars.lines[0].get_xdata()
        np.testing.assert_allclose(x, [1e-3, 0.9, 1.1])  # |fitted / true|, floored at 1e-3
    finally:
        plt.close(fig)
