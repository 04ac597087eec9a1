"""Interchange against a real aihwkit 1.2 (marker ``parity``): defaults and preset data,
round trips through aihwkit objects, each loadable preset's pulse response, a trained
network exported to an aihwkit model file.

aihwkit runs in its own interpreter (``$RPUHW_AIHWKIT_PYTHON``, else
/opt/aihwkit-venv/bin/python); without one every test here is skipped. aihwkit's side:
``rpuhw/interop/_aihwkit_side.py`` (the package's own) and ``tests/aihwkit_side.py``
(the semantics parity tests' ``pulses`` request).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from rpuhw.interop._aihwkit_defaults import DEFAULTS
from rpuhw.interop.aihwkit import import_tree, run_aihwkit, tree_of_spec
from rpuhw.interop.presets import load_preset, preset_names, preset_table
from rpuhw.sim.array import SimulatedArray

pytestmark = pytest.mark.parity

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PYTHON = "/opt/aihwkit-venv/bin/python"


def _python() -> str | None:
    env = os.environ.get("RPUHW_AIHWKIT_PYTHON")
    if env:
        return env
    return DEFAULT_PYTHON if Path(DEFAULT_PYTHON).is_file() else None


PYTHON = _python()
if PYTHON is None:
    pytest.skip("no aihwkit interpreter ($RPUHW_AIHWKIT_PYTHON or /opt/aihwkit-venv)",
                allow_module_level=True)


@pytest.fixture(autouse=True)
def _aihwkit_env(monkeypatch):
    monkeypatch.setenv("RPUHW_AIHWKIT_PYTHON", PYTHON)


def test_defaults_table_is_aihwkits():
    assert run_aihwkit("defaults") == DEFAULTS


@pytest.mark.parametrize("name", preset_names())
def test_preset_data_is_aihwkits(name):
    """presets.yaml's values over the base class's defaults = aihwkit's preset object."""
    entry = preset_table()[name]
    theirs = run_aihwkit("preset", name)
    assert theirs["class"] == entry["aihwkit"]
    mine = dict(DEFAULTS[entry["base"]]["kwargs"])
    mine.update(entry["values"])
    assert theirs["kwargs"] == mine


def test_round_trip_through_aihwkit_objects():
    """from_aihwkit(to_aihwkit(spec)) == spec for every shipped device: each config is
    built by aihwkit, pickled and unpickled there, dumped and imported back."""
    from test_interop import SPECS

    trees = [tree_of_spec(s) for s in SPECS] + [tree_of_spec(s, device_only=True)
                                                 for s in SPECS if s.source.startswith("sim:")]
    back = run_aihwkit("build", stdin=json.dumps(trees))
    specs = SPECS + [s for s in SPECS if s.source.startswith("sim:")]
    for spec, tree in zip(specs, back, strict=True):
        assert import_tree(tree, source=spec.source).spec.to_mapping() == spec.to_mapping(), \
            spec.source


# ---- pulse responses ------------------------------------------------------------------
ROWS, COLS = 32, 32
"""1,024 devices per side."""
UP = DOWN = 100
CHECKPOINTS = [1, 10, 50, 100, 101, 150, 200]
Z = 4.5
"""Allowed difference in standard errors: 4.5 sigma two-sided is p = 7e-6 per
comparison, about 1e-3 over the ~150 comparisons of this file's pulse tests."""


def _moments(t: torch.Tensor) -> dict:
    v = t.double().flatten()
    c = v - v.mean()
    return {"n": v.numel(), "mean": float(v.mean()), "var": float(v.var()),
            "m4": float((c ** 4).mean())}


def _se_var(m: dict) -> float:
    """Standard error of the sample variance: sqrt((m4 - var^2 (n - 3)/(n - 1)) / n)."""
    n = m["n"]
    return math.sqrt(max(m["m4"] - m["var"] ** 2 * (n - 3) / (n - 1), 0.0) / n)


def _agree(mine: dict, theirs: dict, what: str) -> None:
    """Means within Z standard errors of their difference, variances likewise (the
    variance's standard error from the 4th moment, not assuming normality)."""
    se_mean = math.sqrt(mine["var"] / mine["n"] + theirs["var"] / theirs["n"])
    assert abs(mine["mean"] - theirs["mean"]) <= Z * se_mean + 1e-12, \
        f"{what}: mean {mine['mean']:.6g} vs aihwkit {theirs['mean']:.6g} (se {se_mean:.3g})"
    se_var = math.sqrt(_se_var(mine) ** 2 + _se_var(theirs) ** 2)
    assert abs(mine["var"] - theirs["var"]) <= Z * se_var + 1e-18, \
        f"{what}: var {mine['var']:.6g} vs aihwkit {theirs['var']:.6g} (se {se_var:.3g})"


def _aihwkit_pulses(base: str, params: dict, seed: int) -> dict:
    req = {"kind": "pulses", "device": base, "params": params, "rows": ROWS, "cols": COLS,
           "up": UP, "down": DOWN, "checkpoints": CHECKPOINTS, "seed": seed}
    proc = subprocess.run([PYTHON, str(ROOT / "tests" / "aihwkit_side.py")],
                          input=json.dumps(req), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


LOADABLE = [n for n in preset_names() if n in ("EcRam", "EcRamMO", "Idealized", "GokmenVlasov")]


@pytest.mark.parametrize("name", LOADABLE)
def test_preset_pulse_response_matches_aihwkit(name):
    """sim:preset:NAME vs aihwkit's preset: 1,024 devices from w = 0, 100 up pulses then
    100 down pulses, one per device per step; mean and spread over the devices after 1, 10,
    50, 100 up and 1, 50, 100 down agree within sampling error, and so do the per-device
    parameters drawn (steps and bounds)."""
    entry = preset_table()[name]
    theirs = _aihwkit_pulses(entry["base"], entry["values"], seed=11)
    arr = SimulatedArray(ROWS, COLS, device=load_preset(name), seed=12)
    ones = torch.ones(ROWS, COLS, dtype=torch.int64)
    mine = {}
    for k in range(1, UP + DOWN + 1):
        arr.pulse(ones if k <= UP else -ones)
        if k in CHECKPOINTS:
            mine[str(k)] = _moments(arr.weights)
    for k in CHECKPOINTS:
        _agree(mine[str(k)], theirs["checkpoints"][str(k)], f"{name} after step {k}")
    for ours, hidden in (("dw_up", "dwmin_up"), ("dw_down", "dwmin_down"),
                         ("w_max", "max_bound"), ("w_min", "min_bound")):
        _agree(_moments(arr.state[ours]), theirs["hidden"][hidden], f"{name} {ours}")


# ---- a trained network --------------------------------------------------------------------
LOAD_IN_AIHWKIT = r"""
import json, sys, torch
model = torch.load(sys.argv[1], weights_only=False)
out, info = {}, {}
for name, mod in model.named_children():
    if hasattr(mod, "analog_tiles"):
        w, b = mod.get_weights()
        out[name + ".weight"], out[name + ".bias"] = w, b
        tile = next(mod.analog_tiles())
        out[name + ".max_bound"] = tile.get_hidden_parameters()["max_bound"]
        info[name] = {"kind": type(mod).__name__, "device": type(tile.rpu_config.device).__name__}
    elif hasattr(mod, "weight"):
        out[name + ".weight"], out[name + ".bias"] = mod.weight.detach(), mod.bias.detach()
        info[name] = {"kind": type(mod).__name__}
    else:
        info[name] = {"kind": type(mod).__name__}
x = torch.zeros(2, 1, 28, 28)
model.eval()
info["_out_shape"] = list(model(x).shape)
torch.save(out, sys.argv[2])
json.dump(info, sys.stdout)
"""


def test_exported_model_loads_in_aihwkit_with_the_trained_weights(tmp_path, capsys):
    from rpuhw.cli import main
    from rpuhw.train import load_config, train

    ck = tmp_path / "ck"
    cfg = load_config(None, {"backend": "sim:preset:EcRam", "layers": {"fc2": "float"},
                             "train_limit": 4, "test_limit": 10, "checkpoint": str(ck),
                             "progress": False, "seed": 3})
    train(cfg, log=lambda *a, **k: None)
    out = tmp_path / "net.pt"
    assert main(["export-model", str(ck), "--to", "aihwkit", "-o", str(out)]) == 0
    assert "max |difference| 0" in capsys.readouterr().out
    got = tmp_path / "got.pt"
    proc = subprocess.run([PYTHON, "-c", LOAD_IN_AIHWKIT, str(out), str(got)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(proc.stdout)
    theirs = torch.load(got, weights_only=True)
    st = torch.load(ck / "checkpoint.pt", weights_only=False)["model"]
    names = [n for n in info if not n.startswith("_")]
    kinds = [info[n]["kind"] for n in names]
    assert kinds == ["AnalogConv2d", "Tanh", "MaxPool2d", "AnalogConv2d", "Tanh", "MaxPool2d",
                     "Flatten", "AnalogLinear", "Tanh", "Linear"]
    assert info["_out_shape"] == [2, 10]
    layers = {"0": ("conv1", (16, 1, 5, 5)), "3": ("conv2", (32, 16, 5, 5)),
              "7": ("fc1", (128, 512))}
    for idx, (layer, shape) in layers.items():
        assert info[idx]["device"] == "LinearStepDevice"
        arr = st[f"{layer}._extra_state"]["arrays"][0]
        w = arr["weights"]
        assert torch.equal(theirs[f"{idx}.weight"].reshape(shape), w[:, :-1].reshape(shape))
        assert torch.equal(theirs[f"{idx}.bias"], w[:, -1])
        # the tile holds rpuhw's drawn devices (bounds), not a fresh draw
        assert torch.equal(theirs[f"{idx}.max_bound"], arr["state"]["w_max"])
    assert torch.equal(theirs["9.weight"], st["fc2.weight"])
    assert torch.equal(theirs["9.bias"], st["fc2.bias"])
