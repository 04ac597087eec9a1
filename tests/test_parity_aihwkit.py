"""Parity with aihwkit 1.2: the same parameters give the same statistics (issue 17).

aihwkit runs in its own interpreter (``RPUHW_AIHWKIT_PYTHON``, default
/opt/aihwkit-venv/bin/python; build recipe: docs/performance.md "aihwkit on this
machine"), driven through tests/aihwkit_side.py (JSON in, JSON out). The tests skip with a
reason when that interpreter is missing or cannot import aihwkit, and run only when
selected (``make parity``, i.e. ``pytest -m parity``, or ``RPUHW_PARITY=1``): a full run
takes a few minutes.

Tolerances come from the sample sizes. Two independent samples agree in the mean when
``|m1 - m2| < Z sqrt(v1/n1 + v2/n2)`` and in the variance when
``|v1 - v2| < Z sqrt((mu4_1 - v1^2)/n1 + (mu4_2 - v2^2)/n2)`` (the large-sample variance of
a sample variance, mu4 the fourth central moment, so skewed and bounded distributions get
their own error). Z = 5: a two-sided normal tail of 5.7e-7 per comparison, so the ~600
comparisons of this file give a false alarm with probability < 4e-4 (Bonferroni). A
difference of a few percent in a mean step (rpuhw's old symmetric ``up_down`` was 10 %) is
10 or more standard errors at 4,096 devices.

One error is common to all of aihwkit's devices in a run: its CPU simulator draws every
cycle-to-cycle (and output-noise) Gaussian from a list of 32,768 numbers made per tile
(``RNG::sampleGauss`` in rpucuda/rng.h), whose mean and variance miss 0 and 1 by
1/sqrt(32768) and sqrt(2/32768). A mean after k pulses therefore carries an extra error of
``dw_min_std * L / sqrt(32768)`` (L: the mean path length, the sum of the mean steps) and a
variance one of ``var sqrt(2/32768)``; both are added in quadrature (:data:`AIHWKIT_LIST`).
With ``dw_min_std = 5`` (the ReRamES preset) the first is several of the 4,096-device
standard errors.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rpuhw.device_spec import spec_from_mapping
from rpuhw.periphery import Periphery, PeripheryConfig
from rpuhw.sim.array import SimulatedArray

pytestmark = pytest.mark.parity

SIDE = Path(__file__).with_name("aihwkit_side.py")
Z = 5.0
"""Standard errors allowed per comparison (module docstring)."""

ROWS = COLS = 64
"""4,096 devices, as in the issue's table."""
UP = DOWN = 200
CHECKPOINTS = (1, UP, UP + DOWN)


def _python() -> str:
    return os.environ.get("RPUHW_AIHWKIT_PYTHON", "/opt/aihwkit-venv/bin/python")


@functools.cache
def _aihwkit_problem() -> str | None:
    """Why aihwkit cannot run here, or None."""
    py = _python()
    if not Path(py).exists():
        return (f"no aihwkit interpreter at {py} (set RPUHW_AIHWKIT_PYTHON; build recipe in "
                "docs/performance.md 'aihwkit on this machine')")
    try:
        out = subprocess.run([py, "-c", "import aihwkit; print(aihwkit.__version__)"],
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{py} does not run: {exc}"
    if out.returncode != 0:
        return f"{py} cannot import aihwkit: {out.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(autouse=True)
def _aihwkit_available(request):
    selected = "parity" in (request.config.getoption("markexpr") or "")
    if not (selected or os.environ.get("RPUHW_PARITY") == "1"):
        pytest.skip("parity tests run with `make parity` (pytest -m parity) or RPUHW_PARITY=1")
    problem = _aihwkit_problem()
    if problem:
        pytest.skip(problem)


def aihwkit(request: dict) -> dict:
    """aihwkit's answer to one request of tests/aihwkit_side.py."""
    out = subprocess.run([_python(), str(SIDE)], input=json.dumps(request),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def moments(t: torch.Tensor | np.ndarray) -> dict:
    """n, mean, variance (ddof 1) and fourth central moment (as tests/aihwkit_side.py)."""
    v = torch.as_tensor(np.asarray(t)).double().flatten()
    c = v - v.mean()
    return {"n": int(v.numel()), "mean": float(v.mean()), "var": float(v.var()),
            "m4": float((c ** 4).mean())}


AIHWKIT_LIST = 32768
"""Length of aihwkit's per-tile list of Gaussian numbers (module docstring)."""


def same_distribution(what: str, ours: dict, theirs: dict, common_mean: float = 0.0,
                      list_var: bool = True) -> None:
    """Mean and variance agree within Z standard errors (module docstring); ``common_mean``
    is the error common to all of aihwkit's samples (its Gaussian list), ``list_var`` adds
    the list's variance error."""
    n1, n2 = ours["n"], theirs["n"]
    se_mean = math.sqrt(ours["var"] / n1 + theirs["var"] / n2 + common_mean ** 2)
    common_var = theirs["var"] * math.sqrt(2 / AIHWKIT_LIST) if list_var else 0.0
    se_var = math.sqrt(max(ours["m4"] - ours["var"] ** 2, 0.0) / n1
                       + max(theirs["m4"] - theirs["var"] ** 2, 0.0) / n2 + common_var ** 2)
    tiny = 1e-12 * (1.0 + abs(ours["mean"]) + abs(theirs["mean"]))
    assert abs(ours["mean"] - theirs["mean"]) <= Z * se_mean + tiny, (
        f"{what}: mean rpuhw {ours['mean']:.6g} vs aihwkit {theirs['mean']:.6g} "
        f"(SE {se_mean:.3g})")
    assert abs(ours["var"] - theirs["var"]) <= Z * se_var + tiny ** 2, (
        f"{what}: std rpuhw {math.sqrt(ours['var']):.6g} vs aihwkit "
        f"{math.sqrt(theirs['var']):.6g} (SE of the variance {se_var:.3g})")


# ---- devices: the table ---------------------------------------------------------

DEVICES = {
    # name: (rpuhw model, aihwkit class, parameters with the same names in both)
    "constant_step": ("constant_step", "ConstantStepDevice",
                      dict(dw_min=0.01, up_down=0.1, w_min_dtod=0.1, w_max_dtod=0.1)),
    "soft_bounds": ("soft_bounds", "SoftBoundsDevice",
                    dict(dw_min=0.01, up_down=0.1, w_min=-0.6, w_max=0.8)),
    "soft_bounds_additive": ("soft_bounds", "SoftBoundsDevice",
                             dict(dw_min=0.01, up_down=-0.2, mult_noise=False, dw_min_std=0.5)),
    "linear_step": ("linear_step", "LinearStepDevice",
                    dict(dw_min=0.01, up_down=-0.1, gamma_up=0.5, gamma_down=0.3)),
    "linear_step_own_bounds_additive": (
        "linear_step", "LinearStepDevice",
        dict(dw_min=0.01, up_down=0.2, gamma_up=0.4, gamma_down=0.6, gamma_up_dtod=0.1,
             mean_bound_reference=False, mult_noise=False, w_min=-0.5, w_max=0.9)),
    "exp_step": ("exp_step", "ExpStepDevice", dict(dw_min=0.01, up_down=0.05)),
    "exp_step_reram_es": (  # ReRamESPresetDevice without its write noise: negative A
        "exp_step", "ExpStepDevice",
        dict(dw_min=0.00135, dw_min_dtod=0.2, dw_min_std=5.0, up_down=0.259359,
             up_down_dtod=0.05, w_min=-1.0, w_max=1.0, a=-0.5, b=-0.5, gamma_up=5.0,
             gamma_down=5.0, A_up=-1.18445, A_down=-0.081404)),
    "exp_step_complex_noise": ("exp_step", "ExpStepDevice",
                               dict(dw_min=0.01, dw_min_std_add=0.002, dw_min_std_slope=0.01)),
    "pow_step": ("pow_step", "PowStepDevice",
                 dict(dw_min=0.01, pow_gamma=2.0, pow_up_down=0.2, pow_gamma_dtod=0.1,
                      pow_up_down_dtod=0.05, up_down=0.1)),
    "piecewise": ("piecewise", "PiecewiseStepDevice",
                  dict(dw_min=0.01, up_down=0.1, piecewise_up=[1.5, 1.0, 0.5],
                       piecewise_down=[0.5, 1.0, 1.5])),
    "reflected_draws": ("constant_step", "ConstantStepDevice",  # many negative draws
                        dict(dw_min=0.01, dw_min_dtod=0.8, up_down=-0.3, up_down_dtod=0.3,
                             w_min_dtod=0.9, w_max_dtod=0.9)),
    "log_normal_no_consistency": ("constant_step", "ConstantStepDevice",
                                  dict(dw_min=0.01, dw_min_dtod=0.6,
                                       dw_min_dtod_log_normal=True, up_down=0.3,
                                       up_down_dtod=0.3, w_min_dtod=0.9, w_max_dtod=0.9,
                                       enforce_consistency=False)),
}

HIDDEN = {"max_bound": "w_max", "min_bound": "w_min", "dwmin_up": "dw_up",
          "dwmin_down": "dw_down", "gamma_up": "pow_gamma_up", "gamma_down": "pow_gamma_down"}
"""aihwkit's hidden parameter -> rpuhw's per-device tensor (slopes: dw times gamma)."""


def rpuhw_pulses(model: str, params: dict, seed: int = 0) -> tuple[dict, dict]:
    """rpuhw's side of a ``pulses`` request: weight moments at the checkpoints and the
    per-device parameters' moments (aihwkit's names)."""
    arr = SimulatedArray(ROWS, COLS, device=spec_from_mapping({"model": model, **params}),
                         seed=seed)
    st = arr.state
    hidden = {name: moments(st[ours]) for name, ours in HIDDEN.items() if ours in st}
    if "gamma_up" in st and model == "linear_step":  # aihwkit stores dw * slope
        hidden["slope_up"] = moments(st["dw_up"] * st["gamma_up"])
        hidden["slope_down"] = moments(st["dw_down"] * st["gamma_down"])
    out, done = {}, 0
    ones = torch.ones(ROWS, COLS, dtype=torch.int32)
    for k in CHECKPOINTS:  # pulses are applied one at a time, in order, per device
        up_now = max(0, min(k, UP) - done)
        if up_now:
            arr.pulse(up_now * ones)
        down_now = k - done - up_now
        if down_now:
            arr.pulse(-down_now * ones)
        done = k
        out[str(k)] = moments(arr.read())
    return out, hidden


def device_table(name: str) -> dict:
    """Both sides of one device of :data:`DEVICES` (also used for the docs' table)."""
    model, cls, params = DEVICES[name]
    theirs = aihwkit({"kind": "pulses", "device": cls, "params": params, "rows": ROWS,
                      "cols": COLS, "up": UP, "down": DOWN, "checkpoints": list(CHECKPOINTS)})
    ours, hidden = rpuhw_pulses(model, params)
    return {"ours": ours, "theirs": theirs["checkpoints"], "hidden": hidden,
            "their_hidden": theirs["hidden"], "aihwkit": theirs["aihwkit"]}


@pytest.mark.parametrize("name", list(DEVICES))
def test_device_pulse_response_matches_aihwkit(name):
    t = device_table(name)
    assert t["aihwkit"].startswith("1.2"), t["aihwkit"]
    for key in t["hidden"]:  # the per-device draws (aihwkit's exact generator)
        same_distribution(f"{name} {key}", t["hidden"][key], t["their_hidden"][key],
                          list_var=False)
    params = DEVICES[name][2]
    sigma = params.get("dw_min_std", 0.3)
    path, last, k_last = 0.0, 0.0, 0
    for k in map(str, CHECKPOINTS):  # mean and spread after 1, 200 and 400 pulses
        mean = t["theirs"][k]["mean"]
        path += abs(mean - last) + (int(k) - k_last) * (  # exp_step's absolute noise terms
            params.get("dw_min_std_add", 0.0) + params.get("dw_min_std_slope", 0.0))
        last, k_last = mean, int(k)
        same_distribution(f"{name} after {k} pulses", t["ours"][k], t["theirs"][k],
                          common_mean=sigma * path / math.sqrt(AIHWKIT_LIST))


def test_old_symmetric_up_down_would_fail():
    """The comparison has the power to see the issue's discrepancy: rpuhw's old symmetric
    up_down (both steps scaled by 1 +- up_down) differs from aihwkit after one pulse."""
    model, cls, params = DEVICES["constant_step"]
    theirs = aihwkit({"kind": "pulses", "device": cls, "params": params, "rows": ROWS,
                      "cols": COLS, "up": 1, "down": 0, "checkpoints": [1]})["checkpoints"]
    old = {**params, "dw_min": params["dw_min"] * (1 + params["up_down"]), "up_down": 0.0}
    ours, _ = rpuhw_pulses(model, old)  # the old device's up step: dw_min (1 + up_down)
    with pytest.raises(AssertionError, match="mean"):
        same_distribution("old up_down", ours["1"], theirs["1"])


# ---- periphery: forward with noise, DAC/ADC, noise and bound management ------------------

IO = {"out_noise": 0.06, "inp_res": 1 / 126, "out_res": 1 / 510, "out_bound": 4.0,
      "inp_bound": 1.0}
"""rpuhw's ``io:`` keys (aihwkit's IOParameters names) of the forward test."""
REPEATS = 2000


def _forward_case() -> tuple[np.ndarray, np.ndarray]:
    """Weights [16, 32] and inputs [8, 32]: half of the inputs aligned with the signs of one
    of the first four rows (weights doubled there), so that their outputs (about 12) saturate
    at out_bound 4 and bound management halves them twice; one other vector once."""
    rng = np.random.default_rng(1)
    w = rng.uniform(-0.5, 0.5, (16, 32)).astype(np.float32)
    w[:4] *= 2.0
    x = rng.uniform(-1.0, 1.0, (8, 32)).astype(np.float32)
    x[::2] = np.sign(w[:4]) * rng.uniform(0.5, 1.0, (4, 32)) * 3.0
    return w, x


def test_forward_statistics_match_aihwkit():
    w, x = _forward_case()
    # precondition: no clean output lands within 0.3 of the bound at any halving level (the
    # saturation tests differ there: rpuhw |y| >= out_bound after clip and ADC, aihwkit
    # y > out_bound after the ADC, so a value the ADC rounds onto the bound passes in
    # aihwkit only); 0.3 is 5 sigma of out_noise
    top = np.abs((x / np.abs(x).max(1, keepdims=True)) @ w.T).max(1)  # per vector
    for k in range(11):  # the levels bound management visits: until the top is inside
        visited = top / 2 ** (k - 1) > IO["out_bound"] if k else np.ones_like(top, bool)
        assert not (visited & (np.abs(top / 2 ** k - IO["out_bound"]) < 0.3)).any()
    theirs = aihwkit({"kind": "forward", "weights": w.tolist(), "x": x.tolist(),
                      "repeats": REPEATS,
                      "io": {**IO, "noise_management": "ABS_MAX",
                             "bound_management": "ITERATIVE", "max_bm_factor": 1000,
                             "max_bm_res": 1e9}})
    spec = spec_from_mapping({"model": "constant_step", "w_min": -10.0, "w_max": 10.0,
                              "w_min_dtod": 0.0, "w_max_dtod": 0.0, "io": IO})
    arr = SimulatedArray(16, 32, device=spec, seed=3)
    arr.set_weights(torch.from_numpy(w))
    per = Periphery(arr, PeripheryConfig(noise_management=True, bound_management=True,
                                         bm_max_halvings=10), seed=4)
    ys = per.forward(torch.from_numpy(x).repeat(REPEATS, 1)).reshape(REPEATS, 8, 16)
    assert per.stats.bm_halvings > 0  # bound management was exercised
    mean, var = ys.double().mean(0).numpy(), ys.double().var(0).numpy()
    t_mean, t_var = np.asarray(theirs["mean"]), np.asarray(theirs["var"])
    # per output: both sides' noise is out_noise times the NM/BM scale (Gaussian to the
    # ADC's step), so SE(mean) = sqrt(2 var / n), SE(var) = var sqrt(2 * 2 / (n - 1)); plus
    # aihwkit's Gaussian list (module docstring): sd / sqrt(32768) on the mean,
    # var sqrt(2 / 32768) on the variance
    pooled = 0.5 * (var + t_var)
    se = np.sqrt(2 * pooled / REPEATS + pooled / AIHWKIT_LIST)
    z = np.abs(mean - t_mean) / se
    assert (z <= Z).all(), f"forward mean: max {z.max():.2f} standard errors apart"
    se_var = pooled * math.sqrt(4.0 / (REPEATS - 1) + 2.0 / AIHWKIT_LIST)
    z = np.abs(var - t_var) / se_var
    assert (z <= Z).all(), f"forward variance: max {z.max():.2f} standard errors apart"
    # and the noise is out_noise in the array's units times the input scale of each vector
    assert np.sqrt(pooled).min() > 0.5 * IO["out_noise"]


# ---- periphery: one pulsed update with BL and update management --------------------------

UPDATE_DEVICE = dict(dw_min=0.001, dw_min_dtod=0.0, dw_min_std=0.3, up_down=0.0,
                     up_down_dtod=0.0, w_min=-1.0, w_max=1.0, w_min_dtod=0.0, w_max_dtod=0.0)
"""Identical devices (no device-to-device spread), so that each device's weight change is
comparable across the two simulators."""
UPDATE_REPEATS = 3000


@pytest.mark.parametrize("um", [True, False])
def test_pulsed_update_matches_aihwkit(um):
    rng = np.random.default_rng(11)
    rows, cols, bl, lr = 8, 12, 10, 0.004
    x = rng.uniform(-1.0, 1.0, cols).astype(np.float32)
    d = rng.uniform(-0.5, 0.5, rows).astype(np.float32)
    w0 = rng.uniform(-0.3, 0.3, (rows, cols)).astype(np.float32)
    theirs = aihwkit({"kind": "update", "device": "ConstantStepDevice",
                      "params": UPDATE_DEVICE, "w0": w0.tolist(), "x": x.tolist(),
                      "d": d.tolist(), "lr": lr, "repeats": UPDATE_REPEATS,
                      "update": {"desired_bl": bl, "fixed_bl": True,
                                 "update_bl_management": False, "update_management": um,
                                 "pulse_type": "STOCHASTIC_COMPRESSED"}})
    arr = SimulatedArray(rows, cols, device=spec_from_mapping(
        {"model": "constant_step", **UPDATE_DEVICE}), seed=5)
    per = Periphery(arr, PeripheryConfig(bl=bl, update_management=um, lr=lr), seed=6)
    changes = []
    for _ in range(UPDATE_REPEATS):
        arr.set_weights(torch.from_numpy(w0))
        per.update(torch.from_numpy(x)[None], torch.from_numpy(d)[None], lr)
        changes.append(arr.read() - torch.from_numpy(w0))
    dw = torch.stack(changes).double()
    mean, var = dw.mean(0).numpy(), dw.var(0).numpy()
    t_mean, t_var = np.asarray(theirs["mean"]), np.asarray(theirs["var"])
    # the expected change is -lr d x (probabilities below 1 here); a device with rare
    # coincidences may see none in all repeats: its variance is then at least that of their
    # count, about |expect| dw_min, not the sample's 0
    expect = -lr * np.outer(d, x)
    pooled = 0.5 * (var + t_var)
    var_floor = np.maximum(pooled, np.abs(expect) * UPDATE_DEVICE["dw_min"])
    common = UPDATE_DEVICE["dw_min_std"] * np.abs(expect) / math.sqrt(AIHWKIT_LIST)
    z = np.abs(mean - t_mean) / np.sqrt(2 * var_floor / UPDATE_REPEATS + common ** 2)
    assert (z <= Z).all(), f"mean change: max {z.max():.2f} standard errors apart"
    z_expect = np.abs(mean - expect) / np.sqrt(var_floor / UPDATE_REPEATS)
    assert (z_expect <= Z).all(), f"mean change vs -lr d x: {z_expect.max():.2f} SE"
    # a change is a sum of +-dw_min (1 + 0.3 xi) over BL coincidence draws: not Gaussian;
    # SE(var) from the fourth moment of the pooled changes
    m4 = 0.5 * (((dw - dw.mean(0)) ** 4).mean(0).numpy() + np.asarray(theirs["m4"]))
    se_var = np.sqrt(2 * np.maximum(m4 - pooled ** 2, 0.0) / UPDATE_REPEATS
                     + 2 * t_var ** 2 / AIHWKIT_LIST) + 1e-15
    assert (np.abs(var - t_var) <= Z * se_var).all(), (np.abs(var - t_var) / se_var).max()


if __name__ == "__main__":  # print the docs' table: python tests/test_parity_aihwkit.py
    for name in sys.argv[1:] or list(DEVICES):
        t = device_table(name)
        cells = [f"{t['ours'][k]['mean']:.4f} ± {math.sqrt(t['ours'][k]['var']):.4f} / "
                 f"{t['theirs'][k]['mean']:.4f} ± {math.sqrt(t['theirs'][k]['var']):.4f}"
                 for k in map(str, CHECKPOINTS)]
        print(f"| {name} | " + " | ".join(cells) + " |")
