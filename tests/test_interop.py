"""Interchange with aihwkit without aihwkit installed: presets as data, ``sim:preset:NAME``,
printed configs (export, parse, import), the refusals, the hidden-parameter mapping.

The side that needs aihwkit itself (its defaults, its presets, real objects, pulse
responses, a model file loaded in aihwkit) is tests/test_parity_presets.py.
"""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from rpuhw.backends import open_array
from rpuhw.cli import main
from rpuhw.device_spec import load_device, spec_from_mapping
from rpuhw.devices import get_model, model_names
from rpuhw.errors import ConfigError
from rpuhw.interop._aihwkit_defaults import DEFAULTS
from rpuhw.interop.aihwkit import (
    MANAGEMENT_LEVELS,
    MODEL_CLASS,
    TrainPeriphery,
    import_tree,
    to_aihwkit,
    to_python,
    tree_from_python,
    tree_of_spec,
)
from rpuhw.interop.presets import load_preset, preset_names, preset_status, preset_table

ROOT = Path(__file__).resolve().parents[1]

LOADABLE = ["ReRamES", "ReRamSB", "EcRam", "EcRamMO", "Capacitor", "Idealized",
            "GokmenVlasov", "PCM"]
"""Presets rpuhw expresses exactly (the others need keys it does not simulate)."""

REFUSED = {
    "ReRamArrayOM": ["reference_std", "subtract_symmetry_point"],
    "ReRamArrayHfO2": ["reference_std", "subtract_symmetry_point"],
}
"""Refused presets -> every key the refusal must name."""

NON_TRIVIAL = [
    {"model": "constant_step", "dw_min": 0.003, "up_down": -0.2, "up_down_dtod": 0.05,
     "w_min": -0.7, "w_max": 0.9, "io": {"out_noise": 0.02, "inp_res": 1 / 126,
                                         "out_res": 1 / 510, "out_bound": 10.0}},
    {"model": "linear_step", "gamma_up": 0.3, "gamma_down": 0.6, "mult_noise": False,
     "mean_bound_reference": False, "allow_increasing": True},
    {"model": "soft_bounds", "dw_min": 0.01, "up_down": 0.1, "w_min": -0.6, "w_max": 0.8},
    {"model": "exp_step", "A_up": -1.18, "A_down": 0.2, "a": -0.5, "b": -0.5,
     "dw_min_std_add": 0.01, "dw_min_std_slope": 0.05},
    {"model": "pow_step", "pow_gamma": 2.0, "pow_up_down": 0.2, "pow_up_down_dtod": 0.01},
    {"model": "piecewise", "piecewise_up": [1.0, 0.5, 0.1], "piecewise_down": [0.2, 0.6, 1.0]},
]
"""A spec per model with values away from the defaults."""


def shipped_specs() -> list:
    """Every device rpuhw ships: device YAMLs in the repository, each model's defaults
    (``sim:MODEL``), each loadable preset, and one non-trivial spec per model."""
    files = subprocess.run(["git", "ls-files", "*.yaml"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    specs = []
    for f in files:
        if f.startswith("rpuhw/devices/presets"):
            continue
        try:
            specs.append(load_device(ROOT / f))
        except ConfigError as exc:  # training configs (examples/paper_ablation) are not devices
            assert "model" in str(exc) or "unknown key" in str(exc), exc
    assert any(s.source.endswith("hidden_device.yaml") for s in specs)
    specs += [spec_from_mapping({"model": m}, source=f"sim:{m}") for m in model_names()]
    specs += [load_preset(n) for n in LOADABLE]
    specs += [spec_from_mapping(m, source=f"non-trivial {m['model']}") for m in NON_TRIVIAL]
    return specs


SPECS = shipped_specs()


# ---- presets -----------------------------------------------------------------------------
def test_presets_are_the_issue_list_with_sources():
    names = preset_names()
    for n in ("ReRamES", "ReRamSB", "EcRam", "EcRamMO", "Capacitor", "Idealized",
              "GokmenVlasov", "PCM"):
        assert n in names
    for n, entry in preset_table().items():
        assert entry["aihwkit"] == f"{n}PresetDevice"
        assert entry["base"] in DEFAULTS
        assert len(entry["source"]) > 20 and ("et al." in entry["source"]
                                               or "&" in entry["source"])
        assert set(entry["values"]) <= set(DEFAULTS[entry["base"]]["kwargs"])


@pytest.mark.parametrize("name", LOADABLE)
def test_loadable_preset_equals_its_data(name):
    """Every key of the loaded device is the preset's value, else aihwkit's class default."""
    entry = preset_table()[name]
    spec = load_preset(name)
    assert preset_status(name) is None
    assert spec.model.name == {"LinearStepDevice": "linear_step",
                               "ConstantStepDevice": "constant_step",
                               "ExpStepDevice": "exp_step",
                               "SoftBoundsReferenceDevice": "soft_bounds"}[entry["base"]]
    defaults = DEFAULTS[entry["base"]]["kwargs"]
    params = dataclasses.asdict(spec.model.params)
    for key, value in params.items():
        expected = entry["values"].get(key, defaults[key])
        assert value == expected, key
    for key in entry["values"]:
        assert key in params, f"{key} of {name} is not carried"


@pytest.mark.parametrize("name", list(REFUSED))
def test_preset_rpuhw_cannot_express_is_refused_naming_the_keys(name):
    with pytest.raises(ConfigError) as exc:
        load_preset(name)
    text = str(exc.value)
    assert "\n" not in text and f"preset:{name}" in text
    for key in REFUSED[name]:
        assert key in text
    assert set(LOADABLE) | set(REFUSED) == set(preset_names())


def test_sim_preset_spec_opens_the_preset_device():
    arr = open_array("sim:preset:EcRam", 4, 5, seed=1)
    assert arr.model.name == "linear_step"
    assert arr.model.params == load_preset("EcRam").model.params
    with pytest.raises(ConfigError, match="unknown preset 'Nope'.*EcRam.*GokmenVlasov"):
        open_array("sim:preset:Nope", 4, 5)
    with pytest.raises(ConfigError, match="reference_std"):
        open_array("sim:preset:ReRamArrayOM", 4, 5)


def test_cli_bad_preset_is_one_line_exit_2(capsys):
    assert main(["device", "preset:Nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown preset 'Nope'" in err
    for n in preset_names():
        assert n in err
    assert main(["device", "preset:ReRamArrayHfO2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "subtract_symmetry_point" in err


def test_cli_lists_presets_with_status(capsys):
    assert main(["device", "--presets"]) == 0
    out = capsys.readouterr().out
    for n in LOADABLE:
        assert f"sim:preset:{n} " in out and "loads exactly" in out.split(f"sim:preset:{n} ")[1
                                                                          ].splitlines()[0]
    for n, keys in REFUSED.items():
        line = out.split(f"sim:preset:{n} ")[1].splitlines()[0]
        assert "refused" in line and keys[0] in line
    assert main(["device", "preset:EcRam"]) == 0
    out = capsys.readouterr().out
    assert "model linear_step" in out and "Tang et al." in out and "1.1724" in out


# ---- export / import ----------------------------------------------------------------------
@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.source.rsplit("/", 1)[-1])
def test_round_trip_through_the_tree_and_the_printed_python(spec):
    """from_aihwkit(to_aihwkit(spec)) == spec, without aihwkit: through the config tree
    and through the Python that export prints."""
    mapping = spec.to_mapping()
    assert import_tree(tree_of_spec(spec)).spec.to_mapping() == mapping
    if dataclasses.replace(spec.io, read_noise=0.0) == type(spec.io)():  # read_noise travels
        assert import_tree(tree_of_spec(spec, device_only=True)).spec.to_mapping() == mapping
    else:  # the device alone cannot hold the io: block
        with pytest.raises(ConfigError, match="export the whole config"):
            tree_of_spec(spec, device_only=True)
    source = to_python(spec, header=spec.source)
    imported = import_tree(tree_from_python(source))
    assert imported.spec.to_mapping() == mapping
    assert imported.training == {"management": "nm+bm+um", "bl": 10}
    assert imported.notes == []  # the exported periphery is rpuhw train's


def _calls(source: str) -> dict[str, dict]:
    """Class name -> keyword values of every call in ``source``."""
    out = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            out[node.func.id] = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords
                                 if not isinstance(kw.value, (ast.Call, ast.Attribute))}
    return out


@pytest.mark.parametrize("m", NON_TRIVIAL, ids=lambda m: m["model"])
def test_cli_export_prints_python_naming_class_and_values(m, tmp_path, capsys):
    f = tmp_path / "dev.yaml"
    import yaml

    f.write_text(yaml.safe_dump(m))
    assert main(["device", "export", str(f), "--to", "aihwkit", "--management", "nm+bm",
                 "--bl", "31"]) == 0
    source = capsys.readouterr().out
    calls = _calls(source)
    cls = MODEL_CLASS[m["model"]]
    assert cls in calls and "SingleRPUConfig" in calls
    params = dataclasses.asdict(load_device(f).model.params)
    assert calls[cls] == {k: v for k, v in params.items()}  # every key, aihwkit's names
    assert calls["UpdateParameters"] == {"desired_bl": 31, "fixed_bl": True,
                                         "update_bl_management": False,
                                         "update_management": False}
    io = m.get("io", {})
    assert calls["IOParameters"]["out_noise"] == io.get("out_noise", 0.06)
    assert calls["IOParameters"]["inp_res"] == io.get("inp_res", -1.0)
    assert "NoiseManagementType.ABS_MAX" in source
    assert calls["MappingParameter"]["digital_bias"] is False
    # and it imports back to the same device YAML
    py = tmp_path / "dev_aihwkit.py"
    py.write_text(source)
    out = tmp_path / "back.yaml"
    assert main(["device", "import", str(py), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "--management nm+bm --bl 31" in err
    assert load_device(out).to_mapping() == load_device(f).to_mapping()


def test_rpuhw_only_values_travel_as_comments(capsys):
    spec = load_device(ROOT / "drivers/emulators/hidden_device.yaml")
    source = to_python(spec)
    assert "# rpuhw: io.read_noise = 0.002" in source
    assert "# rpuhw: conductance.g_min" in source
    tree = tree_from_python(source)
    assert tree["rpuhw"]["conductance.g_max"] == spec.conductance.g_max


AIHWKIT_PRINTED = """SingleRPUConfig(
    runtime=RuntimeParameter(),
    pre_post=PrePostProcessingParameter(input_range=InputRangeParameter(enable=False)),
    mapping=MappingParameter(),
    forward=IOParameters(out_noise=0.1),
    backward=IOParameters(out_noise=0.1),
    update=UpdateParameters(desired_bl=10, pulse_type=PulseType.STOCHASTIC_COMPRESSED),
    device=EcRamPresetDevice()
)
"""
"""What aihwkit 1.2's ``print(SingleRPUConfig(device=EcRamPresetDevice()))`` shows (with
out_noise 0.1 set on both passes)."""


def test_aihwkit_printed_config_imports():
    imported = import_tree(tree_from_python(AIHWKIT_PRINTED))
    spec = imported.spec
    assert spec.model.params == load_preset("EcRam").model.params
    assert spec.io.out_noise == 0.1
    assert spec.io.inp_res == pytest.approx(1 / 126) and spec.io.out_res == pytest.approx(1 / 510)
    assert imported.training == {"management": "nm+bm+um", "bl": 10}
    # aihwkit's defaults that rpuhw train cannot take are named, not dropped silently
    (note,) = imported.notes
    assert "update_bl_management" in note and "digital_bias" in note and "max_bm_res" in note


def test_attribute_assignments_and_arithmetic_are_read():
    source = ("from aihwkit.simulator.configs import SingleRPUConfig, ConstantStepDevice\n"
              "rpu_config = SingleRPUConfig(device=ConstantStepDevice(w_min_dtod=0.3 / 0.75))\n"
              "rpu_config.device.dw_min = 2e-3\n"
              "rpu_config.forward.out_noise = 0.02\n"
              "rpu_config.backward.out_noise = 0.02\n"
              "rpu_config.update.update_management = False\n"
              "rpu_config.forward.bound_management = enums.BoundManagementType.NONE\n")
    imported = import_tree(tree_from_python(source))
    spec = imported.spec
    assert imported.training["management"] == "nm"
    assert spec.model.params.dw_min == 0.002 and spec.io.out_noise == 0.02
    assert spec.model.params.w_min_dtod == 0.3 / 0.75


BAD_SOURCES = [
    ("rpu_config = UnitCellRPUConfig(device=TransferCompound(unit_cell_devices=[]))\n",
     "compound device TransferCompound"),
    ("rpu_config = SingleRPUConfig(device=VectorUnitCell())\n", "compound device VectorUnitCell"),
    ("device = LinearStepDevice(diffusion=0.01)\n", "diffusion"),
    ("device = LinearStepDevice(diffusion=0.01, corrupt_devices_prob=0.1)\n",
     "key 'corrupt_devices_prob, diffusion'"),
    ("device = ExpStepDevice(drift=DriftParameter(nu=0.1))\n", "key 'drift'"),
    ("rpu_config = SingleRPUConfig(forward=IOParameters(w_noise=0.1, "
     "w_noise_type=WeightNoiseType.ADDITIVE_CONSTANT))\n", "forward.w_noise"),
    ("rpu_config = SingleRPUConfig(forward=IOParameters(out_noise=0.1))\n",
     "key 'backward.out_noise'"),
    ("rpu_config = SingleRPUConfig(forward=IOParameters(out_bound=-1), "
     "backward=IOParameters(out_bound=-1))\n", "finite bound"),
    ("device = ConstantStepDevice(dw_minn=0.1)\n", "has no field 'dw_minn'"),
    ("device = SoftBoundsPmaxDevice()\n", "SoftBoundsPmaxDevice has no rpuhw model"),
    ("device = PowStepDevice(drift=Nonsense())\n", "key 'drift': aihwkit class Nonsense is not"),
    ("rpu_config = InferenceRPUConfig()\n", "no pulsed device"),
    ("device = IdealDevice()\n", "rpuhw: the 'ideal' backend"),
    ("device = ConstantStepDevice(dw_min=x)\n", "line 1: the name 'x' is a variable"),
    ("device = ConstantStepDevice(0.1)\n", "line 1: ConstantStepDevice(...) with positional"),
    ("device = ConstantStepDevice(\n", "line 1: not valid Python"),
    ("import os\nos.system('echo hi')\n", "line 2: only imports"),
    ("rpu_config = SingleRPUConfig()\nfor k in range(2):\n    pass\n", "line 2: only imports"),
    ("x = 1\n", "no aihwkit config found"),
    ("device = ConstantStepDevice()\n# rpuhw: io.read_noise 0.1\n", "line 2: expected"),
    ("device = ConstantStepDevice()\n# rpuhw: io.inp_noise = 0.1\n",
     "key 'io.inp_noise': unknown rpuhw-only value"),
    ("device = ConstantStepDevice(dw_min=-0.1)\n", "key 'dw_min': must be > 0"),
]


@pytest.mark.parametrize("source,message", BAD_SOURCES, ids=[m for _, m in BAD_SOURCES])
def test_bad_import_is_one_line_exit_2(source, message, tmp_path, capsys):
    f = tmp_path / "config.py"
    f.write_text(source)
    out = tmp_path / "dev.yaml"
    assert main(["device", "import", str(f), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    assert err.startswith("rpuhw device: ") and message in err, err
    assert str(f) in err or "config.py" in err
    assert not out.exists()  # nothing half-written


def test_soft_bounds_reference_at_defaults_is_soft_bounds_with_additive_noise():
    spec = import_tree(tree_from_python("d = SoftBoundsReferenceDevice(dw_min=0.01)\n")).spec
    assert spec.model.name == "soft_bounds" and spec.model.params.mult_noise is False
    spec = import_tree(tree_from_python("d = SoftBoundsDevice(dw_min=0.01)\n")).spec
    assert spec.model.params.mult_noise is True


def test_keys_without_effect_are_accepted():
    """aihwkit keys rpuhw lacks, set where they have no effect (rpuhw's table), load."""
    src = ("d = ConstantStepDevice(corrupt_devices_range=0.5, lifetime_dtod=0.2, "
           "reset_std=0.1, count_pulses=True)\n")
    assert import_tree(tree_from_python(src)).spec.model.name == "constant_step"


@pytest.mark.parametrize("argv,message", [
    (["device", "export"], "export needs a file"),
    (["device", "export", "x.yaml"], "needs --to aihwkit"),
    (["device", "import", "missing.py"], "file not found"),
    (["device", "x.yaml", "--to", "aihwkit"], "--to does not apply"),
    (["device", "export", "preset:EcRam", "--to", "aihwkit", "--run"], "--run does not apply"),
    (["device", "export", "preset:EcRam", "--to", "aihwkit", "--management", "um"],
     "key 'management': must be one of none, nm, nm+bm, nm+bm+um"),
    (["device", "export", "preset:EcRam", "--to", "aihwkit", "--device-only", "--bl", "3"],
     "--device-only writes no IO"),
    (["device"], "give a device YAML"),
])
def test_cli_bad_arguments(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.yaml").write_text("model: constant_step\n")
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err, err


def test_export_refuses_what_aihwkit_cannot_hold():
    spec = spec_from_mapping({"model": "piecewise", "piecewise_up": [1.0, 1.0],
                              "piecewise_down": [1.0, 0.5, 0.2]})
    with pytest.raises(ConfigError, match="as many up as down nodes"):
        tree_of_spec(spec)
    with pytest.raises(ConfigError, match="backward pass"):
        tree_of_spec(load_preset("EcRam"), TrainPeriphery(bm_backward=True))


def test_pickle_import_needs_the_aihwkit_interpreter(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RPUHW_AIHWKIT_PYTHON", raising=False)
    f = tmp_path / "config.pkl"
    f.write_bytes(b"\x80\x04K\x01.")  # a pickle (of 1)
    assert main(["device", "import", str(f)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "RPUHW_AIHWKIT_PYTHON" in err
    with pytest.raises(ConfigError, match="aihwkit is not installed in this interpreter"):
        to_aihwkit(load_preset("EcRam"))


def test_export_model_without_aihwkit_interpreter_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("RPUHW_AIHWKIT_PYTHON", raising=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert main(["export-model", str(tmp_path), "--to", "aihwkit"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "RPUHW_AIHWKIT_PYTHON" in err
    assert main(["export-model", str(tmp_path / "nope"), "--to", "aihwkit"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "rpuhw train --checkpoint" in err


# ---- tables kept in step with the rest of rpuhw --------------------------------------------
def test_light_copies_equal_the_periphery_and_the_scheduler():
    from rpuhw.periphery import PeripheryConfig
    from rpuhw.schedule import MANAGEMENT

    assert MANAGEMENT_LEVELS == MANAGEMENT
    full = dataclasses.asdict(PeripheryConfig())
    for key, value in dataclasses.asdict(TrainPeriphery()).items():
        assert full[key] == value, key


def test_every_model_has_an_aihwkit_class():
    assert set(MODEL_CLASS) == set(model_names())
    for model, cls in MODEL_CLASS.items():
        shared = {f.name for f in dataclasses.fields(get_model(model).Params)}
        assert shared <= set(DEFAULTS[cls]["kwargs"]), (model, shared - set(DEFAULTS[cls]
                                                                            ["kwargs"]))


@pytest.mark.parametrize("model", ["linear_step", "soft_bounds", "pow_step", "constant_step"])
def test_hidden_parameters_give_rpuhw_steps_by_aihwkit_formulas(model):
    """The hidden parameters export-model gives aihwkit reproduce every device's mean step
    through aihwkit's own update rules (LinearStep: ``slope w + scale``; PowStep:
    ``scale omega^gamma``), for the per-device parameters rpuhw drew."""
    import torch

    from rpuhw.interop.export_model import hidden_parameters

    kwargs = {"linear_step": {"gamma_up": 0.4, "gamma_down": 0.7, "mean_bound_reference": False},
              "pow_step": {"pow_gamma": 1.7, "pow_up_down": 0.2, "pow_up_down_dtod": 0.1}
              }.get(model, {})
    m = get_model(model)(get_model(model).Params(**kwargs))
    state = m.draw(6, 7, torch.Generator().manual_seed(3))
    hp = hidden_parameters(model, state)
    u = torch.rand(6, 7, generator=torch.Generator().manual_seed(4))
    w = state["w_min"] + (state["w_max"] - state["w_min"]) * u
    for up in (True, False):
        mine = m.step(w, torch.full((6, 7), up), state)
        scale = hp["dwmin_up"] if up else hp["dwmin_down"]
        if model in ("linear_step", "soft_bounds"):
            slope = hp["slope_up"] if up else hp["slope_down"]
            # aihwkit: up  w += slope_up w + scale_up ; down  w -= slope_down w + scale_down
            theirs = scale + slope * w
        elif model == "pow_step":
            omega = ((hp["max_bound"] - w) / (hp["max_bound"] - hp["min_bound"])).clamp(0, 1)
            theirs = (scale * omega ** hp["gamma_up"] if up
                      else scale * (1 - omega) ** hp["gamma_down"])
        else:
            theirs = scale
        assert torch.allclose(mine, theirs, rtol=1e-5, atol=1e-9), (model, up)


def test_device_show_still_works(tmp_path, capsys):
    f = tmp_path / "dev.yaml"
    f.write_text("model: soft_bounds\ndw_min: 0.002\n")
    assert main(["device", str(f)]) == 0
    assert "model soft_bounds" in capsys.readouterr().out
    assert sys.modules.get("aihwkit") is None


def test_hidden_parameters_carry_the_decay_draws():
    """With lifetime, export-model gives aihwkit each device's decay scale and reset
    value (aihwkit's hidden parameters ``decay_scales``, ``reset_bias``); without, none."""
    import torch

    from rpuhw.interop.export_model import hidden_parameters

    m = get_model("constant_step")(get_model("constant_step").Params(
        lifetime=50.0, lifetime_dtod=0.3, reset=0.05, reset_dtod=0.02))
    state = m.draw(4, 5, torch.Generator().manual_seed(1))
    hp = hidden_parameters("constant_step", state)
    assert torch.equal(hp["decay_scales"], state["decay_scale"])
    assert torch.equal(hp["reset_bias"], state["reset_bias"])
    plain = get_model("constant_step")()
    assert "decay_scales" not in hidden_parameters(
        "constant_step", plain.draw(4, 5, torch.Generator().manual_seed(1)))
