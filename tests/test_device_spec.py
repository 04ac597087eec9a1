"""Device YAML files and array specs: loading, saving, and one clear error per mistake."""

from __future__ import annotations

import pytest
import torch

import rpuhw
from rpuhw.device_spec import load_device, save_device
from rpuhw.errors import ConfigError


def write(tmp_path, text: str):
    p = tmp_path / "dev.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, key, fragment", [
    ("model: constant_step\ndw_min: -0.001\n", "dw_min", "must be > 0"),
    ("model: constant_step\ndw_min: 0\n", "dw_min", "must be > 0"),
    ("model: constant_step\ngamma: 1\n", "gamma", "unknown key"),
    ("model: constant_step\nw_min: 0.7\n", "w_min", "must be < w_max"),
    ("model: constant_step\ndw_min: abc\n", "dw_min", "expected a number"),
    ("model: constant_step\ndw_min: .nan\n", "dw_min", "finite"),
    ("model: linear_step\nmult_noise: 1\n", "mult_noise", "true or false"),
    ("model: nope\n", "model", "known: constant_step"),
    ("dw_min: 0.001\n", "model", "missing"),
    ("model: constant_step\nio:\n  out_noise: -1\n", "io.out_noise", ">= 0"),
    ("model: constant_step\nio:\n  shot_noise: 1\n", "io.shot_noise", "unknown key"),
    ("model: constant_step\nio: 3\n", "io", "mapping"),
    ("model: constant_step\nconductance:\n  g_min: 1e-5\n  g_max: 1e-6\n",
     "conductance.g_max", "must be > g_min"),
    ("model: constant_step\nread_noise: 0.1\nio:\n  read_noise: 0.1\n", "read_noise", "both"),
    ("model: soft_bounds\nw_max: -0.1\nw_min: -0.5\n", "w_max", "w_max > 0"),
])
def test_bad_yaml_names_file_and_key(tmp_path, text, key, fragment):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        rpuhw.open_array(f"sim:{path}", 2, 3)
    msg = str(err.value)
    assert str(path) in msg and f"key '{key}'" in msg and fragment in msg, msg
    assert "\n" not in msg


def test_unparsable_yaml_and_missing_file(tmp_path):
    path = write(tmp_path, "dw_min: [1\n")
    with pytest.raises(ConfigError, match=r"dev\.yaml: line 2, column 1: not valid YAML"):
        load_device(path)
    with pytest.raises(ConfigError, match="nothere.yaml: file not found"):
        rpuhw.open_array(f"sim:{tmp_path / 'nothere.yaml'}", 2, 2)
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_device(write(tmp_path, "- 1\n- 2\n"))


def test_yaml_values_reach_the_array(tmp_path):
    path = write(tmp_path, "model: soft_bounds\ndw_min: 0.01\ndw_min_dtod: 0\nw_max_dtod: 0\n"
                           "w_min_dtod: 0\nup_down_dtod: 0\ndw_min_std: 0\nread_noise: 0.02\n"
                           "io:\n  out_noise: 0.0\n")
    a = rpuhw.open_array(f"sim:{path}", 3, 4, seed=0)
    assert a.model.name == "soft_bounds" and a.io.read_noise == 0.02 and a.io.out_noise == 0.0
    a.pulse(torch.ones(3, 4, dtype=torch.int32))
    # one soft-bounds pulse from w = 0: exactly dw_min * (1 - 0 / w_max)
    assert torch.allclose(a.weights, torch.full((3, 4), 0.01))


def test_save_load_round_trip(tmp_path):
    spec = rpuhw.DeviceSpec(model=rpuhw.devices.get_model("linear_step")(
        rpuhw.devices.get_model("linear_step").Params(gamma_up=0.3, dw_min=0.002)))
    spec.conductance = rpuhw.device_spec.ConductanceMap(g_min=1e-6, g_max=5e-6)
    out = tmp_path / "fitted.yaml"
    save_device(spec, out)
    back = load_device(out)
    assert back.model.params == spec.model.params and back.io == spec.io
    assert back.conductance == spec.conductance
    assert [p.name for p in tmp_path.iterdir()] == ["fitted.yaml"]  # no temp file left
    assert back.w_to_g(back.model.params.w_max) == pytest.approx(5e-6)
    assert back.g_to_w(1e-6) == pytest.approx(back.model.params.w_min)


def test_specs(tmp_path):
    assert isinstance(rpuhw.open_array("ideal", 2, 2), rpuhw.IdealArray)
    sim = rpuhw.open_array("sim", 2, 2, seed=3)
    assert sim.model.name == "constant_step" and sim.io.out_noise == 0.06
    assert sim.io.out_bound == 12
    assert rpuhw.open_array("sim:pow_step", 2, 2).model.name == "pow_step"
    with pytest.raises(ConfigError, match="neither a device YAML file nor a model"):
        rpuhw.open_array("sim:powstep", 2, 2)
    with pytest.raises(ConfigError, match="takes no argument"):
        rpuhw.open_array("ideal:x", 2, 2)
    with pytest.raises(ConfigError, match="b.yaml: file not found"):
        rpuhw.open_array("bench:b.yaml", 2, 2)
    from rpuhw.backends import BACKENDS, register_backend

    register_backend("nothere", "no_such_module:open_it")
    try:
        with pytest.raises(ConfigError, match="not available"):
            rpuhw.open_array("nothere:x", 2, 2)
    finally:
        BACKENDS.remove("nothere")


def test_register_backend_plugs_in_without_core_changes():
    calls = []

    def factory(arg, rows, cols, seed):
        calls.append(arg)
        return rpuhw.IdealArray(rows, cols)

    rpuhw.register_backend("toy", factory, "toy:NAME")
    try:
        assert isinstance(rpuhw.open_array("toy:abc", 2, 2), rpuhw.IdealArray)
        assert calls == ["abc"] and "toy:NAME" in rpuhw.known_specs()
    finally:
        from rpuhw import backends

        backends.BACKENDS.remove("toy")
