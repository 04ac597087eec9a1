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
AIHWKIT_LIST = 32768
"""aihwkit's CPU simulator draws every cycle-to-cycle and write-noise Gaussian from a
per-tile list of 32,768 numbers (``RNG::sampleGauss``, rpucuda/rng.h): the list's mean and
variance miss 0 and 1 by about 1/sqrt(32768) and sqrt(2/32768), an error common to all of
a run's devices (tests/test_parity_aihwkit.py)."""


def _moments(t: torch.Tensor) -> dict:
    v = t.double().flatten()
    c = v - v.mean()
    return {"n": v.numel(), "mean": float(v.mean()), "var": float(v.var()),
            "m4": float((c ** 4).mean())}


def _se_var(m: dict) -> float:
    """Standard error of the sample variance: sqrt((m4 - var^2 (n - 3)/(n - 1)) / n)."""
    n = m["n"]
    return math.sqrt(max(m["m4"] - m["var"] ** 2 * (n - 3) / (n - 1), 0.0) / n)


def _agree(mine: dict, theirs: dict, what: str, common_mean: float = 0.0,
           list_var: bool = False) -> None:
    """Means within Z standard errors of their difference, variances likewise (the
    variance's standard error from the 4th moment, not assuming normality); ``common_mean``
    is aihwkit's error common to all its devices (its Gaussian list), ``list_var`` adds the
    list's variance error."""
    se_mean = math.sqrt(mine["var"] / mine["n"] + theirs["var"] / theirs["n"]
                        + common_mean ** 2)
    assert abs(mine["mean"] - theirs["mean"]) <= Z * se_mean + 1e-12, \
        f"{what}: mean {mine['mean']:.6g} vs aihwkit {theirs['mean']:.6g} (se {se_mean:.3g})"
    common_var = theirs["var"] * math.sqrt(2 / AIHWKIT_LIST) if list_var else 0.0
    se_var = math.sqrt(_se_var(mine) ** 2 + _se_var(theirs) ** 2 + common_var ** 2)
    assert abs(mine["var"] - theirs["var"]) <= Z * se_var + 1e-18, \
        f"{what}: var {mine['var']:.6g} vs aihwkit {theirs['var']:.6g} (se {se_var:.3g})"


def _aihwkit_pulses(base: str, params: dict, seed: int, schedule: list[int] | None = None,
                    checkpoints: list[int] = CHECKPOINTS) -> dict:
    req = {"kind": "pulses", "device": base, "params": params, "rows": ROWS, "cols": COLS,
           "up": UP, "down": DOWN, "checkpoints": checkpoints, "seed": seed,
           "schedule": schedule}
    proc = subprocess.run([PYTHON, str(ROOT / "tests" / "aihwkit_side.py")],
                          input=json.dumps(req), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout)


def _rpuhw_steps(spec, schedule: list[int], checkpoints: list[int], seed: int
                 ) -> tuple[SimulatedArray, dict, dict]:
    """rpuhw's side of a ``pulses`` request: each step one ``update`` call (x = 1 on every
    column; d = +-1 on every row, or no pulse for a 0 step), which ends with the decay of a
    device with ``lifetime`` as aihwkit's post_update_step does. Returns the array and the
    moments of the visible and hidden weights at the checkpoints."""
    arr = SimulatedArray(ROWS, COLS, device=spec, seed=seed)
    x = torch.ones(1, 1, COLS, dtype=torch.int8)
    d = torch.ones(1, 1, ROWS, dtype=torch.int8)
    visible, hidden = {}, {}
    for k, step in enumerate(schedule, start=1):
        arr.update(x * abs(step), d * (1 if step >= 0 else -1))
        if k in checkpoints:
            visible[str(k)] = _moments(arr.weights)
            hidden[str(k)] = _moments(arr.hidden_weights)
    return arr, visible, hidden


HIDDEN = (("dw_up", "dwmin_up"), ("dw_down", "dwmin_down"), ("w_max", "max_bound"),
          ("w_min", "min_bound"), ("decay_scale", "decay_scales"), ("reset_bias", "reset_bias"))
"""rpuhw's per-device tensor -> aihwkit's hidden parameter (compared where rpuhw has it)."""


def _compare_runs(name: str, params: dict, arr: SimulatedArray, mine: dict, mine_hidden: dict,
                  theirs: dict, checkpoints: list[int]) -> None:
    """Weights at every checkpoint (visible; hidden ones too with write noise) and the
    per-device draws. aihwkit's list error on a mean after k pulses is its list's mean
    offset times the sum of the noise std of the pulses (``dw_min_std`` times the path, plus
    the absolute terms of exp_step's complex noise) and of the write noise."""
    sigma = float(params.get("dw_min_std", 0.3))
    wn = float(params.get("write_noise_std", 0.0)) * float(params.get("dw_min", 0.001))
    w_abs = max(abs(float(params.get("w_min", -0.6))), abs(float(params.get("w_max", 0.6))))
    per_pulse = (float(params.get("dw_min_std_add", 0.0))
                 + float(params.get("dw_min_std_slope", 0.0)) * w_abs)
    path, last, k_last = 0.0, 0.0, 0
    for k in checkpoints:
        t = theirs["checkpoints"][str(k)]
        path += abs(t["mean"] - last) + (k - k_last) * per_pulse
        last, k_last = t["mean"], k
        common = (sigma * path + wn) / math.sqrt(AIHWKIT_LIST)
        _agree(mine[str(k)], t, f"{name} after step {k}", common, list_var=True)
        if wn > 0:
            _agree(mine_hidden[str(k)], theirs["persistent"][str(k)],
                   f"{name} hidden weights after step {k}", sigma * path / math.sqrt(AIHWKIT_LIST),
                   list_var=True)
    for ours, hidden in HIDDEN:
        if ours in arr.state:
            _agree(_moments(arr.state[ours]), theirs["hidden"][hidden], f"{name} {ours}")


LOADABLE = ["ReRamES", "ReRamSB", "Capacitor", "EcRam", "EcRamMO", "Idealized",
            "GokmenVlasov", "PCM"]
"""The presets rpuhw simulates exactly (all but the SoftBoundsReference arrays)."""


def test_loadable_presets_are_all_that_load():
    from rpuhw.interop.presets import preset_status

    assert [n for n in preset_names() if preset_status(n) is None] == LOADABLE


@pytest.mark.parametrize("name", LOADABLE)
def test_preset_pulse_response_matches_aihwkit(name):
    """sim:preset:NAME vs aihwkit's preset: 1,024 devices from w = 0, 100 up pulses then
    100 down pulses, one per device per step (one update call each, so a decay per step as
    aihwkit's optimizer does); mean and spread over the devices after 1, 10, 50, 100 up and
    1, 50, 100 down agree within sampling error (the visible weights, and with write noise
    the hidden ones), and so do the per-device parameters drawn (steps, bounds, decay)."""
    entry = preset_table()[name]
    schedule = [1] * UP + [-1] * DOWN
    theirs = _aihwkit_pulses(entry["base"], entry["values"], seed=11)
    arr, mine, mine_hidden = _rpuhw_steps(load_preset(name), schedule, CHECKPOINTS, seed=12)
    _compare_runs(name, entry["values"], arr, mine, mine_hidden, theirs, CHECKPOINTS)


DECAYING = {
    # the Capacitor preset with a lifetime that shows within 200 steps, a reset value to
    # decay towards and spreads of both
    "Capacitor_short_lifetime": ("Capacitor", {"lifetime": 25.0, "lifetime_dtod": 0.3,
                                               "reset": 0.05, "reset_dtod": 0.03}),
    # write noise and decay together: the visible weights get fresh noise at every decay
    "ReRamSB_with_lifetime": ("ReRamSB", {"lifetime": 40.0, "lifetime_dtod": 0.2,
                                          "reset": -0.05, "reset_dtod": 0.02}),
}
DECAY_SCHEDULE = [1] * 60 + [0] * 40 + [-1] * 60 + [0] * 40
"""60 up, 40 update cycles without pulses (decay only), 60 down, 40 without pulses."""
DECAY_CHECKPOINTS = [1, 30, 60, 61, 80, 100, 130, 160, 161, 180, 200]


@pytest.mark.parametrize("name", list(DECAYING))
def test_decay_over_update_cycles_matches_aihwkit(name):
    """Weight decay (lifetime) towards each device's reset value, once per update cycle,
    with and without pulses in the cycle: rpuhw's update calls vs aihwkit's tile.update +
    post_update_step (rpu_pulsed_device.cpp, decayWeights)."""
    preset, extra = DECAYING[name]
    entry = preset_table()[preset]
    params = {**entry["values"], **extra}
    theirs = _aihwkit_pulses(entry["base"], params, seed=21, schedule=DECAY_SCHEDULE,
                             checkpoints=DECAY_CHECKPOINTS)
    spec = import_tree({"class": entry["base"], "kwargs": params}, source=name).spec
    arr, mine, mine_hidden = _rpuhw_steps(spec, DECAY_SCHEDULE, DECAY_CHECKPOINTS, seed=22)
    _compare_runs(name, params, arr, mine, mine_hidden, theirs, DECAY_CHECKPOINTS)
    # the test has the power to see the decay: without it rpuhw's means differ
    arr0, mine0, _ = _rpuhw_steps(
        import_tree({"class": entry["base"], "kwargs": {**params, "lifetime": 0.0}},
                    source=name).spec, DECAY_SCHEDULE, [100], seed=22)
    with pytest.raises(AssertionError, match="mean"):
        _agree(mine0["100"], theirs["checkpoints"]["100"], "no decay")


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


HIDDEN_IN_AIHWKIT = r"""
import sys, torch
model = torch.load(sys.argv[1], weights_only=False)
out = {}
for name, mod in model.named_children():
    if hasattr(mod, "analog_tiles"):
        tile = next(mod.analog_tiles())
        out[name + ".tile_weights"] = tile.tile.get_weights()
        for key, value in tile.get_hidden_parameters().items():
            out[name + "." + key] = value
torch.save(out, sys.argv[2])
"""


def test_exported_write_noise_and_decay_devices_come_back_equal(tmp_path, capsys):
    """A network trained on ReRamES (write noise: hidden weights differ from the visible
    ones) with fc1 on Capacitor (lifetime: per-device decay scales) loads in aihwkit with
    rpuhw's visible weights, its hidden (persistent) weights, decay scales and reset
    values, all exactly (aihwkit's own unpickling would set the persistent weights from
    the visible ones and redraw the visible ones)."""
    from rpuhw.cli import main
    from rpuhw.train import load_config, train

    ck = tmp_path / "ck"
    cfg = load_config(None, {"backend": "sim:preset:ReRamES",
                             "layers": {"fc1": "sim:preset:Capacitor", "fc2": "float"},
                             "train_limit": 4, "test_limit": 10, "checkpoint": str(ck),
                             "progress": False, "seed": 5})
    train(cfg, log=lambda *a, **k: None)
    out = tmp_path / "net.pt"
    assert main(["export-model", str(ck), "--to", "aihwkit", "-o", str(out)]) == 0
    diffs = [line for line in capsys.readouterr().out.splitlines() if "max |diff" in line]
    assert len(diffs) == 4 and all(line.endswith("max |difference| 0") for line in diffs)
    got = tmp_path / "got.pt"
    proc = subprocess.run([PYTHON, "-c", HIDDEN_IN_AIHWKIT, str(out), str(got)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    theirs = torch.load(got, weights_only=True)
    st = torch.load(ck / "checkpoint.pt", weights_only=False)["model"]
    for idx, layer in (("0", "conv1"), ("3", "conv2")):  # ReRamES: write noise
        arr = st[f"{layer}._extra_state"]["arrays"][0]
        assert not torch.equal(arr["hidden"], arr["weights"])  # the test can see a swap
        assert torch.equal(theirs[f"{idx}.tile_weights"], arr["weights"])
        assert torch.equal(theirs[f"{idx}.persistent_weights"], arr["hidden"])
        assert torch.equal(theirs[f"{idx}.max_bound"], arr["state"]["w_max"])
    arr = st["fc1._extra_state"]["arrays"][0]  # Capacitor: decay, no write noise
    assert "7.persistent_weights" not in theirs
    assert torch.equal(theirs["7.tile_weights"], arr["weights"])
    assert float(arr["state"]["decay_scale"].std()) > 0  # lifetime_dtod drew them
    assert torch.equal(theirs["7.decay_scales"], arr["state"]["decay_scale"])
    assert torch.equal(theirs["7.reset_bias"], arr["state"]["reset_bias"])
