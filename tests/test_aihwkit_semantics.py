"""aihwkit 1.2's parameter meanings, checked on rpuhw alone (always run; issue 17).

The formulas are aihwkit's (``PulsedRPUDevice::populate``, the LinearStep/PowStep populate
and update rules; docs/simulator.md, formula table). Draws are checked on large arrays with
fixed seeds: a sample mean of n devices has standard error sd / sqrt(n), a sample
variance sqrt((mu4 - var^2) / n) (for a normal quantity var sqrt(2 / n)), a fraction p has
sqrt(p (1 - p) / n). Every comparison allows Z = 5 standard errors (two-sided normal tail
5.7e-7; with fixed seeds the outcome is deterministic, the margin says the formula, not
the seed, makes it pass). A wrong formula (rpuhw's old symmetric ``up_down``: both steps
scaled by 1 +- up_down) misses by tens of standard errors at these sizes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from rpuhw._jit import HAVE_NUMBA
from rpuhw.config import from_mapping
from rpuhw.device_spec import spec_from_mapping
from rpuhw.devices import get_model
from rpuhw.devices.base import (
    migrate_legacy_mapping,
    migrate_legacy_pow,
    migrate_legacy_steps,
    one_sided_from_moments,
)
from rpuhw.errors import ConfigError
from rpuhw.sim.array import SimulatedArray

ROOT = Path(__file__).resolve().parents[1]
N = 300  # 300 x 300 = 90,000 devices per draw
Z = 5.0


def draw(name: str, seed: int = 0, **params) -> dict[str, np.ndarray]:
    """Per-device parameters (float64 numpy, flattened) of an N x N array."""
    cls = get_model(name)
    model = cls(from_mapping(cls.Params, params, source="test"))
    state = model.draw(N, N, torch.Generator().manual_seed(seed))
    return {k: v.double().numpy().ravel() for k, v in state.items()}


def close_mean(x: np.ndarray, expect: float, sd: float | None = None) -> None:
    """Sample mean of x within Z standard errors of ``expect`` (sd: the true spread)."""
    sd = float(x.std()) if sd is None else sd
    se = sd / math.sqrt(len(x))
    assert abs(x.mean() - expect) <= Z * se + 1e-12, (x.mean(), expect, se)


def close_sd(x: np.ndarray, expect: float) -> None:
    """Sample std of a (near) normal quantity within Z standard errors of ``expect``:
    SE(var) = var sqrt(2 / n), so SE(sd) = sd / sqrt(2 n)."""
    se = expect / math.sqrt(2 * len(x))
    assert abs(x.std(ddof=1) - expect) <= Z * se, (x.std(ddof=1), expect, se)


def close_fraction(mask: np.ndarray, p: float) -> None:
    se = math.sqrt(p * (1 - p) / len(mask))
    assert abs(mask.mean() - p) <= Z * se, (mask.mean(), p, se)


def phi(z: float) -> float:
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


# ---- up_down: one-sided, spread in units of dw_min with opposite signs -------------------

@pytest.mark.parametrize("up_down", [0.2, -0.3])
def test_step_draws_are_aihwkit_one_sided(up_down):
    dw, sg, sr = 0.01, 0.2, 0.05
    s = draw("constant_step", dw_min=dw, dw_min_dtod=sg, up_down=up_down, up_down_dtod=sr)
    # scale_up = dw (min(ud, 0) + g + r), scale_down = dw (-max(ud, 0) + g - r)
    sd = dw * math.hypot(sg, sr)
    close_mean(s["dw_up"], dw * (1 + min(up_down, 0.0)), sd)
    close_mean(s["dw_down"], dw * (1 - max(up_down, 0.0)), sd)
    close_sd(s["dw_up"], sd)
    close_sd(s["dw_down"], sd)
    # up_down_dtod enters with opposite signs: half-sum spread dw sg, half-difference dw sr
    close_sd(0.5 * (s["dw_up"] + s["dw_down"]), dw * sg)
    close_sd(0.5 * (s["dw_up"] - s["dw_down"]), dw * sr)
    # the larger direction keeps dw_min: rpuhw's old symmetric rule gave dw (1 + |ud|)
    larger = s["dw_up"] if up_down > 0 else s["dw_down"]
    assert abs(larger.mean() - dw) < 0.2 * abs(up_down) * dw


def test_bounds_are_relative_spreads():
    s = draw("constant_step", w_min=-0.5, w_max=0.8, w_min_dtod=0.1, w_max_dtod=0.2)
    close_mean(s["w_max"], 0.8, 0.8 * 0.2)
    close_sd(s["w_max"], 0.8 * 0.2)
    close_mean(s["w_min"], -0.5, 0.5 * 0.1)
    close_sd(s["w_min"], 0.5 * 0.1)


def test_enforce_consistency_reflects_and_swaps():
    # dtod 1.2: P(1 + 1.2 xi < 0) = Phi(-1/1.2) = 0.2023 of the draws are negative
    dw, sg = 0.01, 1.2
    s = draw("constant_step", dw_min=dw, dw_min_dtod=sg, up_down_dtod=0.0, w_min_dtod=1.2,
             w_max_dtod=1.2)
    assert (s["dw_up"] >= 0).all() and (s["dw_down"] >= 0).all()
    assert (s["w_max"] >= 0).all() and (s["w_min"] <= 0).all()
    # reflected, not clipped: |N(1, sg)| has mean sg sqrt(2/pi) e^(-1/(2 sg^2)) +
    # (1 - 2 Phi(-1/sg)); clipping at 0 would give another mean and an atom at 0
    folded = sg * math.sqrt(2 / math.pi) * math.exp(-1 / (2 * sg ** 2)) + (1 - 2 * phi(-1 / sg))
    close_mean(s["dw_up"], dw * folded)
    assert (s["dw_up"] == 0).mean() < 1e-3
    # the bounds: |w_max (1 + s xi3)| and -|w_min (1 + s xi4)| after a swap where crossed;
    # with w_max = -w_min the swap keeps the pair {a, b}: sum of magnitudes is unchanged
    a = np.abs(s["w_max"]) + np.abs(s["w_min"])
    close_mean(a, 2 * 0.6 * folded)


def test_without_consistency_crossed_bounds_pin_the_device():
    # crossing: -0.6 (1 + 0.9 xi4) > 0.6 (1 + 0.9 xi3)  <=>  xi3 + xi4 < -2 / 0.9, a normal
    # of variance 2: P = Phi(-2 / (0.9 sqrt 2)) = 0.0581
    s = draw("constant_step", dw_min=0.01, dw_min_dtod=1.2, up_down_dtod=0.0,
             w_min_dtod=0.9, w_max_dtod=0.9, enforce_consistency=False)
    pinned = s["w_min"] == s["w_max"]
    close_fraction(pinned, phi(-2 / (0.9 * math.sqrt(2))))
    # and negative steps stay negative: P(1 + 1.2 xi < 0) = Phi(-1 / 1.2)
    close_fraction(s["dw_up"] < 0, phi(-1 / 1.2))


def test_log_normal_gain():
    # g = exp(s xi): mean e^(s^2/2), log of the half-sum normal with sd s
    s = draw("constant_step", dw_min=0.01, dw_min_dtod=0.5, dw_min_dtod_log_normal=True,
             up_down_dtod=0.0)
    g = 0.5 * (s["dw_up"] + s["dw_down"]) / 0.01
    close_mean(np.log(g), 0.0, 0.5)
    close_sd(np.log(g), 0.5)


# ---- model-specific draws ------------------------------------------------------------------

@pytest.mark.parametrize("beta", [0.2, -0.25])
def test_pow_step_exponents_are_one_sided(beta):
    gam, sg, sr = 2.0, 0.1, 0.05
    s = draw("pow_step", pow_gamma=gam, pow_gamma_dtod=sg, pow_up_down=beta,
             pow_up_down_dtod=sr)
    sd = gam * math.hypot(sg, sr)
    close_mean(s["pow_gamma_up"], gam * (1 + min(beta, 0.0)), sd)
    close_mean(s["pow_gamma_down"], gam * (1 - max(beta, 0.0)), sd)
    close_sd(s["pow_gamma_up"], sd)


@pytest.mark.parametrize("reference", [True, False])
def test_linear_step_slopes(reference):
    # slope = -|gamma + dtod xi| / w_ref (times the device's own scale in aihwkit): mean
    # bounds (mean_bound_reference) or the device's own
    s = draw("linear_step", gamma_up=0.5, gamma_down=0.3, gamma_up_dtod=0.05,
             gamma_down_dtod=0.05, w_min=-0.5, w_max=0.8, mean_bound_reference=reference)
    if reference:
        close_mean(s["gamma_up"], -0.5 / 0.8, 0.05 / 0.8)
        close_mean(s["gamma_down"], 0.3 / 0.5, 0.05 / 0.5)
    else:  # gamma times the own bound is the drawn |gamma + dtod xi|
        close_mean(s["gamma_up"] * s["w_max"], -0.5, 0.05)
        close_mean(s["gamma_down"] * s["w_min"], -0.3, 0.05)


# ---- one pulse of each model, at chosen w ----------------------------------------------------

NOISELESS = dict(dw_min=0.01, dw_min_dtod=0.0, dw_min_std=0.0, up_down_dtod=0.0,
                 w_min=-1.0, w_max=1.0, w_min_dtod=0.0, w_max_dtod=0.0)


def one_pulse(name: str, w: float, up: bool, xi: float = 0.0, **params) -> float:
    cls = get_model(name)
    model = cls(from_mapping(cls.Params, {**NOISELESS, **params}, source="test"))
    state = model.draw(1, 1, torch.Generator().manual_seed(0))
    state = {k: v.double() for k, v in state.items()}
    out = model.pulse(torch.full((1, 1), w, dtype=torch.float64), torch.tensor([[up]]),
                      torch.full((1, 1), xi, dtype=torch.float64), state)
    return float(out) - w


@pytest.mark.parametrize("name,params,w,up,expect", [
    # constant_step, up_down -0.3: the up step shrinks to 0.01 (1 - 0.3), the down stays
    ("constant_step", {"up_down": -0.3}, 0.2, True, 0.007),
    ("constant_step", {"up_down": -0.3}, 0.2, False, -0.01),
    # soft_bounds, up_down 0.1 at w = 0.5: up 0.01 (1 - 0.5), down 0.009 (1 + 0.5)
    ("soft_bounds", {"up_down": 0.1}, 0.5, True, 0.005),
    ("soft_bounds", {"up_down": 0.1}, 0.5, False, -0.0135),
    # linear_step gamma_up 0.4 at w = 0.5 (w_max 1): 0.01 (1 - 0.4 * 0.5)
    ("linear_step", {"gamma_up": 0.4, "gamma_up_dtod": 0.0}, 0.5, True, 0.008),
    # exp_step with a negative A (the step grows towards the bound), a = 0.5, b = 0:
    # z = 2 * 0.5 * 0.4 / 2 = 0.2, up 0.01 (1 + 0.5 e^(2 * 0.2)) = 0.01 * 1.745912349
    ("exp_step", {"A_up": -0.5, "gamma_up": 2.0, "a": 0.5, "b": 0.0}, 0.4, True,
     0.01745912349),
    # pow_step gamma 2, pow_up_down 0.5 (> 0: only the down exponent drops, to 1) at w = 0:
    # omega = 0.5, up 0.01 * 0.25, down 0.01 * 0.5
    ("pow_step", {"pow_gamma": 2.0, "pow_gamma_dtod": 0.0, "pow_up_down": 0.5}, 0.0, True,
     0.0025),
    ("pow_step", {"pow_gamma": 2.0, "pow_gamma_dtod": 0.0, "pow_up_down": 0.5}, 0.0, False,
     -0.005),
])
def test_one_pulse_is_the_formula(name, params, w, up, expect):
    # float32 per-device parameters: 1e-6 relative
    assert one_pulse(name, w, up, **params) == pytest.approx(expect, rel=1e-6)


def test_noise_rules():
    # multiplicative: step (1 + s xi); additive (mult_noise false): slope part without noise
    # soft_bounds at w = 0.5, xi = 1, s = 0.3: mult 0.005 * 1.3, additive 0.005 + 0.01 * 0.3
    assert one_pulse("soft_bounds", 0.5, True, 1.0, dw_min_std=0.3) == pytest.approx(0.0065)
    assert one_pulse("soft_bounds", 0.5, True, 1.0, dw_min_std=0.3,
                     mult_noise=False) == pytest.approx(0.008)
    # exp_step's complex noise: s (|dw| + add + slope |w|) xi, absolute (not times dw_min);
    # A_up = 0 makes the mean step 0.01: 0.01 + 0.3 (0.01 + 0.002 + 0.01 * 0.5)
    assert one_pulse("exp_step", 0.5, True, 1.0, A_up=0.0, dw_min_std=0.3,
                     dw_min_std_add=0.002, dw_min_std_slope=0.01) == pytest.approx(0.0151)


def test_granularity_is_aihwkits():
    def model(name, **p):
        cls = get_model(name)
        return cls(from_mapping(cls.Params, p, source="test"))

    assert model("constant_step", dw_min=0.01).granularity() == 0.01
    assert model("pow_step", dw_min=0.01, pow_gamma=2.0).granularity() == pytest.approx(0.0025)
    # exp_step: the down step at w = 0, z = b: 0.01 (1 - 0.1) (1 - 0.36833 e^(-12.78785 b))
    g = model("exp_step", dw_min=0.01, up_down=0.1).granularity()
    assert g == pytest.approx(0.009 * (1 - 0.36833 * math.exp(-12.78785 * 0.2425)))


# ---- the inverse of the draw and the migration of old devices --------------------------------

def test_one_sided_from_moments_inverts_the_draw():
    truth = dict(dw_min=0.01, dw_min_dtod=0.25, up_down=0.3, up_down_dtod=0.04)
    s = draw("constant_step", **truth)
    half_sum = 0.5 * (s["dw_up"] + s["dw_down"])
    half_diff = 0.5 * (s["dw_up"] - s["dw_down"])
    got = one_sided_from_moments(half_sum.mean(), half_sum.std(), half_diff.mean(),
                                 half_diff.std())
    n = len(half_sum)
    # dw_min = E s + |E a|: SE from both means; up_down = 2 E a / dw_min
    assert got.scale == pytest.approx(0.01, abs=Z * 0.01 * 0.26 / math.sqrt(n))
    assert got.up_down == pytest.approx(0.3, abs=Z * 2 * 0.04 / math.sqrt(n))
    assert got.scale_dtod == pytest.approx(0.25, rel=Z / math.sqrt(2 * n))
    assert got.up_down_dtod == pytest.approx(0.04, rel=Z / math.sqrt(2 * n))


def _old_draw(dw_min, dw_min_dtod, up_down, up_down_dtod, n, seed):
    """rpuhw's old symmetric draw: dw_min g (1 +- r), g = 1 + dtod xi, r = ud + ud_dtod xi'."""
    rng = np.random.default_rng(seed)
    g = 1 + dw_min_dtod * rng.standard_normal(n)
    r = up_down + up_down_dtod * rng.standard_normal(n)
    return dw_min * g * (1 + r), dw_min * g * (1 - r)


@pytest.mark.parametrize("old", [(0.002, 0.2, 0.05, 0.02), (0.01, 0.3, -0.2, 0.05)])
def test_migrated_steps_keep_the_device(old):
    up0, down0 = _old_draw(*old, N * N, 1)
    s = draw("constant_step", **migrate_legacy_steps(*old))
    # the mean up and down steps, and the mean of their variances, are kept
    close_mean(s["dw_up"], up0.mean(), math.sqrt(2) * up0.std())
    close_mean(s["dw_down"], down0.mean(), math.sqrt(2) * down0.std())
    v_new = 0.5 * (s["dw_up"].var() + s["dw_down"].var())
    v_old = 0.5 * (up0.var() + down0.var())
    assert v_new == pytest.approx(v_old, rel=Z * math.sqrt(2 * 2 / (N * N)))


def test_migrated_pow_exponents_keep_the_device():
    new = migrate_legacy_pow(2.0, 0.1, 0.2, 0.05)
    # old gamma_up = 2 (1 + 0.2 + ...) = 2.4, gamma_down = 1.6, sd 2 hypot(0.1, 0.05)
    s = draw("pow_step", **new)
    sd = 2 * math.hypot(0.1, 0.05)
    close_mean(s["pow_gamma_up"], 2.4, sd)
    close_mean(s["pow_gamma_down"], 1.6, sd)
    close_sd(s["pow_gamma_up"], sd)


def test_hidden_device_is_the_migrated_old_device():
    """drivers/emulators/hidden_device.yaml is the emulated chip's device of before the keys
    took aihwkit's meanings, converted (the demo's truth stays the same device)."""
    old = {"model": "soft_bounds", "dw_min": 0.002, "dw_min_dtod": 0.2, "dw_min_std": 0.2,
           "up_down": 0.05, "up_down_dtod": 0.02}
    shipped = yaml.safe_load((ROOT / "drivers/emulators/hidden_device.yaml").read_text())
    for key, value in migrate_legacy_mapping(old).items():
        assert shipped[key] == (value if key == "model" else pytest.approx(value, rel=1e-6))


# ---- aihwkit keys rpuhw does not simulate ---------------------------------------------------

@pytest.mark.parametrize("model,key,value", [
    ("constant_step", "diffusion", 1e-3),
    ("linear_step", "corrupt_devices_prob", 0.5),
    ("soft_bounds", "reverse_up", True),
    ("soft_bounds", "subtract_symmetry_point", True),
    ("exp_step", "corrupt_devices_prob", 0.1),
    ("pow_step", "diffusion", 0.01),
])
def test_unsupported_aihwkit_key_is_named(model, key, value):
    with pytest.raises(ConfigError) as err:
        spec_from_mapping({"model": model, key: value}, source="dev.yaml")
    msg = str(err.value)
    assert "dev.yaml" in msg and f"key '{key}'" in msg and "not supported" in msg
    assert "\n" not in msg


def test_unsupported_aihwkit_keys_at_no_effect_values_are_accepted():
    spec = spec_from_mapping({"model": "linear_step", "write_noise_std": 0.0, "lifetime": 0,
                              "reverse_offset": 0.02, "construction_seed": 0,
                              "reset_std": 0.01, "drift": {"nu": 0.0}})
    assert spec.model.name == "linear_step"


def test_bounds_must_contain_zero():
    with pytest.raises(ConfigError, match="w_min"):
        spec_from_mapping({"model": "constant_step", "w_min": 0.1, "w_max": 1.0})


def test_cli_names_an_unsupported_key(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "dev.yaml"
    path.write_text("model: linear_step\ndiffusion: 0.5\n")
    out = subprocess.run([sys.executable, "-m", "rpuhw.cli", "device", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "diffusion" in lines[0] and str(path) in lines[0]
    assert "not supported by rpuhw" in lines[0]


# ---- write noise and decay (aihwkit's PulsedRPUDevice, rpu_pulsed_device.cpp) ----------------

ENGINES = ["torch"] + (["numba"] if HAVE_NUMBA else [])
WN = 200  # 200 x 200 = 40,000 devices per array


def _array(engine: str, seed: int = 0, **params) -> SimulatedArray:
    spec = spec_from_mapping({"model": "soft_bounds", "dw_min": 0.01, "dw_min_std": 0.0,
                              **params}, source="test")
    return SimulatedArray(WN, WN, device=spec, seed=seed, engine=engine)


def _flat(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy().ravel()


def test_write_noise_is_in_units_of_dw_min_and_only_where_aihwkit_has_it():
    """aihwkit's getScaledWriteNoise: write_noise_std * dw_min; ConstantStepDevice has no
    write noise (no such key), the other five models do."""
    spec = spec_from_mapping({"model": "linear_step", "dw_min": 0.02, "write_noise_std": 3.0})
    assert spec.model.write_noise == pytest.approx(0.06)
    for name in ("linear_step", "soft_bounds", "exp_step", "pow_step", "piecewise"):
        assert spec_from_mapping({"model": name, "write_noise_std": 0.5}).model.write_noise > 0
    with pytest.raises(ConfigError, match="write_noise_std"):
        spec_from_mapping({"model": "constant_step", "write_noise_std": 0.5})
    with pytest.raises(ConfigError, match="write_noise_std"):
        spec_from_mapping({"model": "soft_bounds", "write_noise_std": -1.0})


@pytest.mark.parametrize("engine", ENGINES)
def test_write_noise_on_set_is_fresh_unclipped_noise_on_the_clipped_weights(engine):
    """onSetWeights: the set weights are clipped to the bounds and become the hidden ones;
    every visible weight is hidden + sigma xi (not clipped), sigma = write_noise_std dw_min.
    The array's creation sets w = 0 the same way."""
    arr = _array(engine, write_noise_std=3.0)
    sigma = 0.03
    assert torch.equal(arr.hidden_weights, torch.zeros(WN, WN))
    close_mean(_flat(arr.weights), 0.0, sigma)
    close_sd(_flat(arr.weights), sigma)
    arr.set_weights(torch.full((WN, WN), 10.0))  # beyond every upper bound: clipped to it
    assert torch.equal(arr.hidden_weights, arr.state["w_max"])
    noise = _flat(arr.weights - arr.hidden_weights)
    close_mean(noise, 0.0, sigma)
    close_sd(noise, sigma)
    above = float((noise > 0).mean())  # half of the visible weights lie above the bound
    assert abs(above - 0.5) <= Z * math.sqrt(0.25 / noise.size)
    quiet = _array(engine, write_noise_std=3.0, apply_write_noise_on_set=False)
    assert torch.equal(quiet.weights, quiet.hidden_weights)
    quiet.set_weights(torch.full((WN, WN), 0.1))
    assert torch.equal(quiet.weights, quiet.hidden_weights)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("how", ["pulse", "update"])
def test_write_noise_is_redrawn_for_pulsed_devices_only(engine, how):
    """update_once: a pulse moves the hidden weight by the device's rule and draws the
    visible one anew (hidden + sigma xi, independent of the old noise); devices without a
    pulse keep both."""
    arr = _array(engine, write_noise_std=3.0)
    sigma = 0.03
    arr.set_weights(torch.full((WN, WN), 0.2))
    h0, v0 = arr.hidden_weights.clone(), arr.weights.clone()
    hit = torch.zeros(WN, WN, dtype=torch.bool)
    hit[:, ::2] = True  # even columns
    if how == "pulse":
        arr.pulse(hit.to(torch.int32) * 2)  # two up pulses each
    else:
        x = (torch.arange(WN) % 2 == 0).to(torch.int8).view(1, 1, WN).repeat(1, 2, 1)
        arr.update(x, torch.ones(1, 2, WN, dtype=torch.int8))
    h1, v1 = arr.hidden_weights, arr.weights
    assert torch.equal(h1[~hit], h0[~hit]) and torch.equal(v1[~hit], v0[~hit])
    st = arr.state
    expect = h0.double()
    for _ in range(2):  # soft bounds without cycle-to-cycle noise: dw_up (1 - w / w_max)
        expect = torch.minimum(expect + st["dw_up"].double() * (1 - expect / st["w_max"]),
                               st["w_max"].double())
    assert torch.allclose(h1[hit].double(), expect[hit], atol=1e-6)
    new, old = _flat(v1[hit] - h1[hit]), _flat(v0[hit] - h0[hit])
    close_mean(new, 0.0, sigma)
    close_sd(new, sigma)
    corr = float(np.corrcoef(new, old)[0, 1])  # fresh: uncorrelated with the old noise
    assert abs(corr) <= Z / math.sqrt(new.size)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model,kept", [("exp_step", True), ("pow_step", True),
                                        ("linear_step", False)])
def test_pulsed_pinned_device_keeps_its_visible_weight_in_exp_and_pow_step(engine, model,
                                                                            kept):
    """aihwkit's ExpStep (b_diff > 0) and PowStep (range == 0) update_once return before the
    write noise when a device's bounds coincide; LinearStep redraws it."""
    spec = spec_from_mapping({"model": model, "write_noise_std": 2.0, "w_min_dtod": 1.5,
                              "w_max_dtod": 1.5, "enforce_consistency": False})
    arr = SimulatedArray(60, 60, device=spec, seed=3, engine=engine)
    pinned = arr.state["w_min"] == arr.state["w_max"]
    assert 0.1 < float(pinned.float().mean()) < 0.9  # both kinds present
    v0 = arr.weights.clone()
    arr.pulse(torch.ones(60, 60, dtype=torch.int32))
    assert torch.equal(arr.weights[pinned], v0[pinned]) == kept
    assert not (arr.weights[~pinned] == v0[~pinned]).any()


def test_decay_parameters_are_drawn_as_aihwkit_populate():
    """t = lifetime (1 + lifetime_dtod xi), decay_scale = 1 - 1/t for t > 1 else 0;
    reset_bias = reset + reset_dtod xi' (additive). Drawn after the other parameters, so
    a device keeps its steps and bounds when a lifetime is added."""
    s = draw("linear_step", seed=4, lifetime=10.0, lifetime_dtod=0.3, reset=0.1,
             reset_dtod=0.05)
    zero = s["decay_scale"] == 0
    p_zero = 0.0013499  # P(1 + 0.3 xi <= 0.1) = P(xi <= -3)
    assert abs(zero.mean() - p_zero) <= Z * math.sqrt(p_zero * (1 - p_zero) / zero.size)
    t = 1.0 / (1.0 - s["decay_scale"][~zero])
    # the mean of t given t > 1 is 10 + 3 phi(3) / (1 - Phi(3)) = 10.0133
    close_mean(t, 10.0133, 3.0)
    close_sd(t, 3.0)
    close_mean(s["reset_bias"], 0.1, 0.05)
    close_sd(s["reset_bias"], 0.05)
    plain = draw("linear_step", seed=4)
    assert "decay_scale" not in plain
    for key in plain:
        assert np.array_equal(plain[key], s[key]), key


@pytest.mark.parametrize("engine", ENGINES)
def test_decay_once_per_update_call_towards_the_reset_value(engine):
    """decayWeights: h <- clip((h - b) delta + b, w_min, w_max) once per update call (with
    or without pulses in it), never by pulse(); decay() does one explicitly."""
    from rpuhw.sim.reference import reference_decay

    spec = spec_from_mapping({"model": "linear_step", "lifetime": 4.0, "lifetime_dtod": 0.5,
                              "reset": 0.2, "reset_dtod": 0.1, "w_min": -0.3, "w_max": 0.3})
    arr = SimulatedArray(40, 50, device=spec, seed=5, engine=engine)
    w0 = torch.empty(40, 50).uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(1))
    arr.set_weights(w0)
    expect = arr.weights.clone()
    no_pulse = torch.zeros(1, 1, 50, dtype=torch.int8), torch.ones(1, 1, 40, dtype=torch.int8)
    for _ in range(3):
        arr.update(*no_pulse)
        expect = reference_decay(arr.state, expect)
        assert torch.equal(arr.weights, expect)
    # some devices are back at their reset value at once (t <= 1), some clipped
    assert (arr.state["decay_scale"] == 0).any()
    assert (expect == arr.state["w_max"]).any()
    counts = torch.zeros(40, 50, dtype=torch.int32)
    counts[0, 0] = 1
    arr.pulse(counts)
    assert torch.equal(arr.weights[1:], expect[1:])  # pulse: no decay
    before = arr.weights.clone()
    arr.decay()
    assert torch.equal(arr.weights, reference_decay(arr.state, before))


def test_decay_redraws_every_devices_write_noise():
    """decayWeights ends with applyUpdateWriteNoise: after an update call every visible
    weight is the decayed hidden one plus fresh write noise, pulsed or not."""
    arr = _array("torch", write_noise_std=3.0, lifetime=50.0)
    arr.set_weights(torch.full((WN, WN), 0.3))
    v0 = arr.weights.clone()
    arr.update(torch.zeros(1, 1, WN, dtype=torch.int8), torch.ones(1, 1, WN, dtype=torch.int8))
    noise = _flat(arr.weights - arr.hidden_weights)
    close_mean(noise, 0.0, 0.03)
    close_sd(noise, 0.03)
    assert not (arr.weights == v0).any()


def test_periphery_update_decays_once():
    """rpuhw's training path: one Periphery.update (what an optimizer step sends each
    array, nn.AnalogSGD -> apply_update) is one decay."""
    from rpuhw.periphery import Periphery
    from rpuhw.sim.reference import reference_decay

    spec = spec_from_mapping({"model": "constant_step", "lifetime": 3.0, "reset": 0.1})
    arr = SimulatedArray(8, 6, device=spec, seed=2)
    arr.set_weights(torch.full((8, 6), 0.5))
    expect = reference_decay(arr.state, arr.weights.clone())
    Periphery(arr).update(torch.zeros(4, 6), torch.zeros(4, 8), lr=0.1)
    assert torch.equal(arr.weights, expect)


@pytest.mark.parametrize("key,value", [("lifetime", -1.0), ("reset_dtod", -0.1),
                                       ("reset_std", -0.1), ("lifetime_dtod", -0.2)])
def test_decay_keys_must_be_non_negative(key, value):
    with pytest.raises(ConfigError, match=key):
        spec_from_mapping({"model": "constant_step", key: value})


@pytest.mark.parametrize("granularity", ["sample", "batch"])
def test_pulsed_granularities_decay_once_per_step(granularity):
    """``sample``/``batch`` granularity move devices through ``pulse``, which has no decay:
    the tile grid adds exactly one per optimizer step (TileGrid.update), on every tile, as
    an ``update`` call has (aihwkit: post_update_step once per mini-batch). A zero gradient
    sends no pulses, so the step is the decay alone; three images are three pulse rounds at
    ``sample`` granularity, still one decay."""
    from rpuhw.schedule import LayerPlan, TileGrid
    from rpuhw.sim.reference import reference_decay

    grid = TileGrid(4, 5, LayerPlan(backend="sim:preset:Capacitor", granularity=granularity,
                                    max_rows=2), seed=3)
    grid.set_weights(torch.rand(4, 5, generator=torch.Generator().manual_seed(1)) - 0.5)
    assert len(grid.arrays) == 2 and all(a.model.decays for a in grid.arrays)
    before = [a.weights.clone() for a in grid.arrays]
    grid.update(torch.ones(6, 5), torch.zeros(6, 4), lr=0.1, images=3)
    for arr, w0 in zip(grid.arrays, before, strict=True):
        once = reference_decay(arr.state, w0)
        assert not torch.equal(once, w0)  # lifetime 1e6 still moves float32 weights
        assert torch.equal(arr.weights, once)
