"""Device models: pulse rule (torch vs numba), mean step formulas, draws, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from numba import njit

from rpuhw._jit import HAVE_NUMBA
from rpuhw.config import from_mapping
from rpuhw.devices import get_model
from rpuhw.errors import ConfigError

ROWS, COLS = 6, 7

# (model name, params) pairs exercised by the pulse tests; defaults include dtod spreads
PULSE_CASES = [
    ("constant_step", {}),
    ("soft_bounds", {}),
    ("linear_step", {"gamma_up": 0.3, "gamma_down": 0.2}),
    ("linear_step", {"gamma_up": 0.3, "gamma_down": 0.2, "mult_noise": False}),
    ("exp_step", {}),
    ("exp_step", {"dw_min_std_add": 0.002, "dw_min_std_slope": 0.01}),
    ("pow_step", {"pow_gamma": 2.0, "pow_up_down": 0.2, "pow_up_down_dtod": 0.05}),
    ("piecewise", {"piecewise_up": [1.5, 1.0, 0.2], "piecewise_down": [0.1, 0.7, 1.0, 2.0]}),
]
MODEL_NAMES = ["constant_step", "soft_bounds", "linear_step", "exp_step", "pow_step",
               "piecewise"]

# no device-to-device spread: every device's parameters equal the means
NO_DTOD = {"dw_min": 0.01, "dw_min_dtod": 0.0, "up_down_dtod": 0.0, "w_min_dtod": 0.0,
           "w_max_dtod": 0.0}


def _model(name, params):
    cls = get_model(name)
    return cls(from_mapping(cls.Params, params, source="test"))


def _state(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return model.draw(ROWS, COLS, gen)


_RUNNERS = {}


def _nb_runner(pulse):
    """A compiled loop that applies ``pulse`` once to every device."""
    if pulse not in _RUNNERS:
        @njit
        def run(w, up, xi, prm, c):
            out = np.empty_like(w)
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    out[i, j] = pulse(w[i, j], up[i, j], xi[i, j], prm, i, j, c)
            return out

        _RUNNERS[pulse] = run
    return _RUNNERS[pulse]


def _random_inputs(state, seed):
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(ROWS, COLS, generator=gen)
    w = state["w_min"] + u * (state["w_max"] - state["w_min"])
    up = torch.rand(ROWS, COLS, generator=gen) < 0.5
    xi = torch.randn(ROWS, COLS, generator=gen)
    return w, up, xi


# ---- (1) the pulse rule ------------------------------------------------------------

@pytest.mark.parametrize("name,params", PULSE_CASES)
def test_pulse_without_noise_is_clipped_mean_step(name, params):
    model = _model(name, params)
    state = _state(model)
    w, up, _ = _random_inputs(state, 1)
    got = model.pulse(w, up, torch.zeros_like(w), state)
    step = model.step(w, up, state)
    assert (step >= 0).all()
    expect = torch.where(up, w + step, w - step)
    expect = torch.minimum(torch.maximum(expect, state["w_min"]), state["w_max"])
    torch.testing.assert_close(got, expect, atol=1e-7, rtol=0)


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba disabled or not installed")
@pytest.mark.parametrize("name,params", PULSE_CASES)
def test_numba_pulse_matches_torch(name, params):
    model = _model(name, params)
    state = _state(model)
    prm = model.packed_state(state)
    c = np.asarray(model.constants(), dtype=np.float64)
    assert c[0] == model.params.dw_min_std
    run = _nb_runner(type(model).nb_pulse)
    for seed in (1, 2, 3):
        w, up, xi = _random_inputs(state, seed)
        # include the bounds themselves
        w[0, :] = state["w_min"][0, :]
        w[1, :] = state["w_max"][1, :]
        expect = model.pulse(w, up, xi, state)
        got = run(w.numpy(), up.numpy(), xi.numpy().astype(np.float64), prm, c)
        np.testing.assert_allclose(got, expect.numpy(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["exp_step", "pow_step", "piecewise"])
def test_nonlinear_models_are_not_affine(name):
    model = _model(name, {})
    assert model.affine(_state(model)) is None


# ---- (2) mean step at hand-computed points -----------------------------------------

def _steps(name, params, w_values):
    """Mean up and down steps of device (0, 0) at each weight in ``w_values``."""
    model = _model(name, {**NO_DTOD, **params})
    state = _state(model)
    ups, downs = [], []
    for wv in w_values:
        w = torch.full((ROWS, COLS), wv)
        ups.append(model.step(w, torch.ones(ROWS, COLS, dtype=torch.bool), state)[0, 0].item())
        downs.append(model.step(w, torch.zeros(ROWS, COLS, dtype=torch.bool), state)[0, 0].item())
    return ups, downs


def test_constant_step_formula():
    # aihwkit's one-sided up_down: up_down = 0.2 > 0 leaves dw_up = dw_min = 0.01 and
    # shrinks dw_down to 0.01 (1 - 0.2) = 0.008; up_down = -0.2 the other way round
    ups, downs = _steps("constant_step", {"up_down": 0.2}, [-0.5, 0.0, 0.5])
    assert ups == pytest.approx([0.01] * 3, rel=1e-5)
    assert downs == pytest.approx([0.008] * 3, rel=1e-5)
    ups, downs = _steps("constant_step", {"up_down": -0.2}, [0.0])
    assert (ups, downs) == (pytest.approx([0.008], rel=1e-5), pytest.approx([0.01], rel=1e-5))


def test_soft_bounds_formula():
    # w_max = 1, w_min = -1: up 0.01 (1 - w), down 0.01 (1 + w)
    ups, downs = _steps("soft_bounds", {"w_min": -1.0, "w_max": 1.0}, [-0.5, 0.0, 0.5])
    assert ups == pytest.approx([0.015, 0.01, 0.005], rel=1e-5)
    assert downs == pytest.approx([0.005, 0.01, 0.015], rel=1e-5)


def test_linear_step_formula():
    # gamma+ = -0.5 / 1 = -0.5, gamma- = -0.2 / (-0.5) = 0.4
    # w = 0.4: up 0.01 (1 - 0.2) = 0.008, down 0.01 (1 + 0.16) = 0.0116
    # w = -0.5: up 0.01 (1 + 0.25) = 0.0125, down 0.01 (1 - 0.2) = 0.008
    params = {"w_min": -0.5, "w_max": 1.0, "gamma_up": 0.5, "gamma_down": 0.2,
              "gamma_up_dtod": 0.0, "gamma_down_dtod": 0.0}
    ups, downs = _steps("linear_step", params, [0.4, -0.5])
    assert ups == pytest.approx([0.008, 0.0125], rel=1e-5)
    assert downs == pytest.approx([0.0116, 0.008], rel=1e-5)


def test_exp_step_formula():
    # bounds +-1, a = 0.5, b = 0: z = 2 * 0.5 * w / 2 = 0.5 w
    # up   (A = 0.25, gamma = 2.5): w = 0   -> 1 - 0.25 = 0.75
    #                               w = 0.8 -> 1 - 0.25 e^1 = 1 - 0.6795704571 = 0.3204295429
    # down (A = 0.1, gamma = 5):    w = 0   -> 1 - 0.1 = 0.9
    #                               w = 0.8 -> 1 - 0.1 e^-2 = 1 - 0.0135335283 = 0.9864664717
    #                               w = -0.8 -> 1 - 0.1 e^2 = 1 - 0.7389056099 = 0.2610943901
    #                               w = -1  -> 1 - 0.1 e^2.5 = 1 - 1.2182 < 0 -> 0
    params = {"w_min": -1.0, "w_max": 1.0, "a": 0.5, "b": 0.0, "A_up": 0.25,
              "gamma_up": 2.5, "A_down": 0.1, "gamma_down": 5.0}
    ups, downs = _steps("exp_step", params, [0.0, 0.8, -0.8, -1.0])
    assert ups[:2] == pytest.approx([0.0075, 0.003204295429], rel=1e-5)
    assert downs == pytest.approx([0.009, 0.009864664717, 0.002610943901, 0.0], abs=1e-8)
    # b shifts z: b = 0.2, w = 0, up: 1 - 0.25 e^0.5 = 1 - 0.4121803177 = 0.5878196823
    ups, _ = _steps("exp_step", {**params, "b": 0.2}, [0.0])
    assert ups == pytest.approx([0.005878196823], rel=1e-5)


def test_pow_step_formula():
    # gamma = 2, beta = -0.5 (aihwkit's one-sided pow_up_down: < 0 lowers the up exponent):
    # gamma+ = 2 * (1 - 0.5) = 1, gamma- = 2; with beta = +0.5: gamma+ = 2, gamma- = 1
    # bounds +-1, beta = -0.5:
    # w = 0:   omega = 0.5  -> up 0.01 * 0.5 = 0.005,   down 0.01 * 0.25 = 0.0025
    # w = 0.5: omega = 0.25 -> up 0.01 * 0.25 = 0.0025, down 0.01 * 0.5625 = 0.005625
    # w = 1:   omega = 0    -> up 0,                    down 0.01
    params = {"w_min": -1.0, "w_max": 1.0, "pow_gamma": 2.0, "pow_gamma_dtod": 0.0,
              "pow_up_down": -0.5, "pow_up_down_dtod": 0.0}
    ups, downs = _steps("pow_step", params, [0.0, 0.5, 1.0])
    assert ups == pytest.approx([0.005, 0.0025, 0.0], abs=1e-9)
    assert downs == pytest.approx([0.0025, 0.005625, 0.01], abs=1e-9)
    # beta = +0.5 at w = 0: up 0.01 * 0.25, down 0.01 * 0.5
    ups, downs = _steps("pow_step", {**params, "pow_up_down": 0.5}, [0.0])
    assert (ups, downs) == (pytest.approx([0.0025]), pytest.approx([0.005]))


def test_pow_step_gamma_draw():
    # gamma = 2, beta = 0.5 without spread: per-device exponents 2 (up kept) and 1
    model = _model("pow_step", {**NO_DTOD, "pow_gamma": 2.0, "pow_gamma_dtod": 0.0,
                                "pow_up_down": 0.5})
    state = _state(model)
    assert torch.allclose(state["pow_gamma_up"], torch.tensor(2.0))
    assert torch.allclose(state["pow_gamma_down"], torch.tensor(1.0))


def test_piecewise_formula():
    # bounds +-1. up nodes [1, 2, 0] at w = -1, 0, 1; down nodes [0.5, 1.5] at w = -1, 1
    # w = -1:   up 1,              down 0.5
    # w = -0.5: up (1 + 2) / 2 = 1.5,  down 0.5 + 0.25 * 1 = 0.75
    # w = 0:    up 2,              down 1.0
    # w = 0.5:  up (2 + 0) / 2 = 1.0,  down 0.5 + 0.75 * 1 = 1.25
    # w = 1:    up 0,              down 1.5
    params = {"w_min": -1.0, "w_max": 1.0, "piecewise_up": [1.0, 2.0, 0.0],
              "piecewise_down": [0.5, 1.5]}
    ups, downs = _steps("piecewise", params, [-1.0, -0.5, 0.0, 0.5, 1.0])
    assert ups == pytest.approx([0.01, 0.015, 0.02, 0.01, 0.0], abs=1e-9)
    assert downs == pytest.approx([0.005, 0.0075, 0.01, 0.0125, 0.015], abs=1e-9)


# ---- (3) per-device draws ----------------------------------------------------------

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_draw_shapes_and_reproducibility(name):
    model = _model(name, {})
    a, b, other = _state(model, 7), _state(model, 7), _state(model, 8)
    assert tuple(a) == model.state_names
    for key in model.state_names:
        assert a[key].dtype == torch.float32
        assert a[key].shape == (ROWS, COLS)
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["dw_up"], other["dw_up"])
    assert (a["w_min"] <= a["w_max"]).all()


# ---- (4) validation ----------------------------------------------------------------

COMMON_BAD = [
    ({"dw_min": 0.0}, "dw_min"),
    ({"dw_min": -0.001}, "dw_min"),
    ({"w_min": 0.5, "w_max": 0.1}, "w_min"),
    ({"w_min": 0.3, "w_max": 0.3}, "w_min"),
    ({"no_such_key": 1.0}, "no_such_key"),
]
SPECIFIC_BAD = {
    "constant_step": [({"up_down": 1.0}, "up_down")],
    "soft_bounds": [({"w_min": -1.0, "w_max": -0.5}, "w_max"),
                    ({"w_min": 0.1, "w_max": 0.5}, "w_min")],
    "linear_step": [({"gamma_up_dtod": -0.1}, "gamma_up_dtod"),
                    ({"gamma_down_dtod": -0.1}, "gamma_down_dtod"),
                    ({"w_min": -1.0, "w_max": -0.5}, "w_max")],
    "exp_step": [({"dw_min_std_add": -0.1}, "dw_min_std_add"),
                 ({"dw_min_std_slope": -0.1}, "dw_min_std_slope"),
                 ({"gamma_up": "steep"}, "gamma_up")],
    "pow_step": [({"pow_gamma": 0.0}, "pow_gamma"), ({"pow_gamma": -1.0}, "pow_gamma"),
                 ({"pow_gamma_dtod": -0.1}, "pow_gamma_dtod"),
                 ({"pow_up_down": 1.0}, "pow_up_down"),
                 ({"pow_up_down": -1.5}, "pow_up_down"),
                 ({"pow_up_down_dtod": -0.1}, "pow_up_down_dtod")],
    "piecewise": [({"piecewise_up": [1.0]}, "piecewise_up"),
                  ({"piecewise_up": []}, "piecewise_up"),
                  ({"piecewise_down": [1.0]}, "piecewise_down"),
                  ({"piecewise_up": [1.0, -0.5, 1.0]}, "piecewise_up"),
                  ({"piecewise_down": [0.0, -1.0]}, "piecewise_down"),
                  ({"piecewise_up": 1.0}, "piecewise_up"),
                  ({"piecewise_down": [1.0, "x"]}, "piecewise_down")],
}
BAD_CASES = [(name, bad, key) for name in MODEL_NAMES
             for bad, key in COMMON_BAD + SPECIFIC_BAD[name]]


@pytest.mark.parametrize("name,bad,key", BAD_CASES)
def test_validation_names_file_and_key(name, bad, key):
    cls = get_model(name)
    with pytest.raises(ConfigError) as info:
        from_mapping(cls.Params, bad, source="dev.yaml")
    assert "dev.yaml" in str(info.value)
    assert key in str(info.value)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_defaults_are_valid(name):
    cls = get_model(name)
    params = from_mapping(cls.Params, {}, source="dev.yaml")
    assert isinstance(params, cls.Params)
