"""The asymmetric-devices study script (issue 18, item 7): examples/asymmetric_devices/run.py.

At a tiny size (2 algorithms x 2 devices x 1 seed, 20 training / 20 test images, 1
epoch; a few seconds) the script writes the markdown table, the CSV and the figure with
one row/cell/line per (device, algorithm), the numbers taken from the runs' JSONs;
a second invocation trains nothing; more epochs continue from the checkpoints; a
diverged run is recorded and not retried; ``--docs`` replaces only the marked block;
bad input is one line and exit 2 with nothing written. The algorithms and devices come
from the registries (a newly registered algorithm joins the grid).

Numbers compared are copies of the same floats (the CSV's 4 decimals: 5e-5 absolute);
no sampling is involved.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from test_figures import assert_legends_outside_data, assert_text_inside, saved  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "asymmetric_devices" / "run.py"


def tiny(out: Path, algorithms: str = "sgd,mp", devices: str = "paper,hidden_device",
         epochs: int = 1, *extra: str) -> list[str]:
    """The script's arguments at the tiny size (1 seed, 20 training / 20 test images)."""
    return ["--algorithms", algorithms, "--devices", devices, "--seeds", "0", "--epochs",
            str(epochs), "--train-limit", "20", "--test-limit", "20", "--out", str(out),
            *extra]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("asymmetric_study_run", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


def _json(out: Path, device: str, alg: str, seed: int = 0) -> dict:
    return json.loads((out / "runs" / device / alg / f"seed{seed}.json").read_text())


def test_tiny_study_table_csv_figure_and_resume(study, tmp_path, saved, monkeypatch):  # noqa: F811
    out = tmp_path / "study"
    logs: list[str] = []
    assert study.main(tiny(out), log=logs.append) == 0
    assert logs[0].startswith("4 runs, 0 done already, 4 to train")
    pairs = [(d, a) for d in ("paper", "hidden_device") for a in ("sgd", "mp")]
    runs = {p: _json(out, *p) for p in pairs}
    for (dev, alg), res in runs.items():
        assert res["epochs"] == 1 and len(res["test_error"]) == 1
        assert set(res["algorithms"].values()) == {alg}
        assert res["config"]["backend"] == ("sim" if dev == "paper" else
                                            f"sim:{study.HIDDEN_DEVICE}")
        assert res["config"]["management"] == "nm+bm+um" and res["config"]["batch_size"] == 1
    # CSV: one row per (device, algorithm), the runs' final error (%) and images/s
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == study.CSV_COLUMNS
    assert [(r["device"], r["algorithm"]) for r in rows] == pairs
    for r in rows:
        res = runs[(r["device"], r["algorithm"])]
        assert (r["seeds"], r["runs"], r["diverged"]) == ("1", "1", "0")
        assert abs(float(r["test_error_mean_pct"]) - 100 * res["test_error"][-1]) < 5e-5
        assert r["test_error_std_pct"] == ""  # one seed: no sample std
        assert abs(float(r["images_per_s_mean"]) - res["images_per_s"]) < 5e-5
    # markdown: two device x algorithm tables (error, images/s)
    md = (out / "results.md").read_text()
    tables = [t for t in md.split("\n\n") if t.startswith("|")]
    assert len(tables) == 2
    for t in tables:
        lines = t.strip().splitlines()
        assert lines[0] == "| device | `sgd` | `mp` |"
        assert [ln.split("|")[1].strip() for ln in lines[2:]] == ["paper", "hidden_device"]
    err_cells = [ln.split("|")[2:4] for ln in tables[0].strip().splitlines()[2:]]
    for dev, cells in zip(("paper", "hidden_device"), err_cells, strict=True):
        for alg, cell in zip(("sgd", "mp"), cells, strict=True):
            assert float(cell.strip(" *")) == pytest.approx(
                100 * runs[(dev, alg)]["test_error"][-1], abs=5e-3)
    # figure: one panel per device, one line per algorithm at the runs' errors (%)
    assert (out / "curves.png").stat().st_size > 0
    fig = saved[-1]
    assert_text_inside(fig, monkeypatch)
    assert_legends_outside_data(fig)
    axes = [ax for ax in fig.get_axes() if ax.lines]
    assert [ax.get_title() for ax in axes] == ["the paper's device (sim)",
                                               "hidden_device.yaml (demo chip)"]
    for ax, dev in zip(axes, ("paper", "hidden_device"), strict=True):
        assert "%" in ax.get_ylabel() and ax.get_yscale() == "linear"
        assert ax.get_xlabel() == "epoch" and ax.get_ylim()[0] == 0
        for line, alg in zip(ax.get_lines(), ("sgd", "mp"), strict=True):
            assert line.get_label().startswith(alg)
            np.testing.assert_allclose(line.get_ydata(),
                                       [100 * e for e in runs[(dev, alg)]["test_error"]])
    texts = [t.get_text() for t in fig.findobj(matplotlib.text.Text)]
    assert not any("sim:" in t or str(tmp_path) in t for t in texts), texts

    # a second invocation trains nothing and leaves the runs' files as they were
    import rpuhw.train

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    stamps = {p: (out / "runs" / p[0] / p[1] / "seed0.json").stat().st_mtime_ns
              for p in pairs}
    monkeypatch.setattr(rpuhw.train, "train", no_training)
    logs.clear()
    assert study.main(tiny(out), log=logs.append) == 0
    assert logs[0].startswith("4 runs, 4 done already, 0 to train")
    assert stamps == {p: (out / "runs" / p[0] / p[1] / "seed0.json").stat().st_mtime_ns
                      for p in pairs}
    monkeypatch.undo()

    # a second epoch of one run continues from its checkpoint (not trained from scratch)
    assert study.main(tiny(out, "sgd", "paper", 2), log=logs.append) == 0
    res = _json(out, "paper", "sgd")
    assert res["epochs"] == 2 and res["test_error"][0] == runs[("paper", "sgd")]["test_error"][0]
    assert [r["epoch"] for r in res["resumed"]] == [1]
    # ... and the 1-epoch table then uses that run's first epoch
    monkeypatch.setattr(rpuhw.train, "train", no_training)
    assert study.main(tiny(out), log=logs.append) == 0
    with open(out / "results.csv") as f:
        again = list(csv.DictReader(f))
    assert [r["test_error_mean_pct"] for r in again] == [r["test_error_mean_pct"] for r in rows]
    # runs of another size in the same --out are refused, not mixed into the table
    other = tiny(out)
    other[other.index("--train-limit") + 1] = "30"
    assert study.main(other, log=logs.append) == 2


def test_diverged_run_recorded_not_retried(study, tmp_path, monkeypatch):
    import rpuhw.train

    calls = []

    def diverge(cfg, **k):
        calls.append(cfg.algorithm)
        raise FloatingPointError("training diverged (loss nan) at epoch 1, image 3")

    monkeypatch.setattr(rpuhw.train, "train", diverge)
    args = tiny(tmp_path, "tt", "paper")
    assert study.main(args, log=lambda m: None) == 0  # a diverged run is a result
    assert calls == ["tt"]
    failed = tmp_path / "runs" / "paper" / "tt" / "seed0.failed.json"
    assert "diverged" in json.loads(failed.read_text())["failed"]
    assert "| paper | diverged |" in (tmp_path / "results.md").read_text()
    assert study.main(args, log=lambda m: None) == 0
    assert calls == ["tt"]  # not retried


def test_docs_block_replaced_only(study, tmp_path):
    docs = tmp_path / "algorithms.md"
    original = (ROOT / "docs" / "algorithms.md").read_text()
    assert original.count(study.BEGIN) == 1 and original.count(study.END) == 1
    docs.write_text(original)
    args = tiny(tmp_path / "o", "sgd", "paper", 1, "--docs", "--docs-file", str(docs))
    assert study.main(args, log=lambda m: None) == 0
    new = docs.read_text()
    a, b = new.index(study.BEGIN), new.index(study.END) + len(study.END)
    assert new[:a] == original[:original.index(study.BEGIN)]
    assert new[b:] == original[original.index(study.END) + len(study.END):]
    block = new[a:b]
    assert "python examples/asymmetric_devices/run.py --algorithms sgd" in block
    assert "| paper |" in block and "--docs" not in block.split("`")[1].split()
    assert f"]({study.FIGURE_IN_DOCS})" in block
    assert (tmp_path / study.FIGURE_IN_DOCS).stat().st_size > 0


def test_grid_from_registries(study):
    from rpuhw.algorithms import ALGORITHMS
    from rpuhw.interop.presets import preset_names, preset_status

    assert set(study.algorithm_names()) == set(ALGORITHMS.names())
    ALGORITHMS.add("zz_new", "rpuhw.algorithms.sgd:SGD", usage="zz_new")
    try:
        assert study.algorithm_names()[-1] == "zz_new"
    finally:
        ALGORITHMS.remove("zz_new")
    devices = study.all_devices()
    loadable = [n for n in preset_names() if preset_status(n) is None]
    assert len(loadable) < len(preset_names())  # the refused ReRamArray presets stay out
    assert [d.name for d in devices] == ["paper", "hidden_device", *loadable]
    assert [d.spec for d in devices[2:]] == [f"sim:preset:{n}" for n in loadable]


@pytest.mark.parametrize("flag, value, names", [
    ("--algorithms", "sgd,nope", "unknown algorithm nope (allowed: sgd, "),
    ("--devices", "paper,nope", "unknown device nope (allowed: paper, hidden_device, "),
    ("--seeds", "0,x", "expected comma-separated integers"),
    ("--epochs", "0", "must be >= 1"),
    ("--device", "fitted", "expected NAME=SPEC"),
    ("--device", "paper=sim", "must be a new name"),
    ("--device", "fitted=sim:nowhere/device.yaml", "nowhere/device.yaml: no such file"),
    ("--weight-scaling-omega", "-1", "must be a number >= 0"),
])
def test_bad_input_one_line_exit_2(study, tmp_path, capsys, flag, value, names):
    out = tmp_path / "o"
    assert study.main([flag, value, "--out", str(out)], log=lambda m: None) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {flag}: ") and names in err
    assert not out.exists()


def test_bad_input_from_the_command_line(tmp_path):
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--algorithms", "nope", "--out",
                           str(out)], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --algorithms: unknown algorithm nope")
    assert not out.exists()


def test_an_added_device_runs_alone_under_its_own_name(study, tmp_path):
    """``--device NAME=SPEC`` without ``--devices``: only that device, its runs under
    runs/NAME/, its spec in the run's config."""
    out = tmp_path / "o"
    spec = f"sim:{study.HIDDEN_DEVICE}"
    assert study.main(["--algorithms", "mp", "--seeds", "0", "--epochs", "1",
                       "--train-limit", "8", "--test-limit", "8", "--device",
                       f"fitted={spec}", "--out", str(out)], log=lambda m: None) == 0
    assert [p.name for p in (out / "runs").iterdir()] == ["fitted"]
    res = json.loads((out / "runs" / "fitted" / "mp" / "seed0.json").read_text())
    assert res["config"]["backend"] == spec


def test_weight_scaling_reaches_the_runs_and_tells_studies_apart(study, tmp_path):
    """``--weight-scaling-omega`` goes into every run's config; a folder holding runs
    without it is refused (another study), not mixed in."""
    out = tmp_path / "o"
    args = ["--algorithms", "mp", "--seeds", "0", "--epochs", "1", "--train-limit", "8",
            "--test-limit", "8", "--device", "pcm=pair:sim:preset:PCM", "--out", str(out)]
    assert study.main(args + ["--weight-scaling-omega", "1"], log=lambda m: None) == 0
    res = json.loads((out / "runs" / "pcm" / "mp" / "seed0.json").read_text())
    assert res["config"]["weight_scaling_omega"] == 1.0
    assert res["config"]["backend"] == "pair:sim:preset:PCM"
    assert study.main(args, log=lambda m: None) == 2
