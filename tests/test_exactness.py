"""The fast update engines give the same statistics as pulses applied one at a time.

For every device model and three scenarios (conv1-like random updates, saturation
at the bounds, up/down asymmetry) we apply P = 576 rank-1 updates of BL = 10 slots
to a 16 x 26 array whose per-device parameters are fixed, S times with
independent cycle-to-cycle noise, with the slow reference and with each fast
engine (torch closed forms + composition, numba kernel). The S replicas run as one
array of 16*S rows sharing the 16 x 26 device parameters.

Test statistics (all derived from the sampling error of S replicas):

* means: for device k, z_k = (m_fast - m_ref) / sqrt((v_fast + v_ref) / S) is
  N(0, 1) under the null (CLT); we require sum_k z_k^2 below the chi^2(K)
  quantile at 1 - 1e-4 and the pooled |sum_k z_k| / sqrt(K) < 4 (p ~ 6e-5).
* spreads (Brown-Forsythe): the same z-test on the mean absolute deviation from
  the median, |w - median|, whose sampling error is estimated reliably also for
  the skewed, bound-clipped distributions of saturating devices.

A separate test shows the criteria do reject an engine whose step is 3 % off.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from scipy import stats

from rpuhw._jit import HAVE_NUMBA
from rpuhw.devices import get_model, model_names
from rpuhw.periphery.bits import PackedBits
from rpuhw.sim import kernels
from rpuhw.sim.reference import reference_update
from rpuhw.sim.update_torch import pulsed_devices, update_torch, write_noise

ROWS, COLS, P, BL = 16, 26, 576, 10
S = int(os.environ.get("RPUHW_STAT_REPLICAS", "64"))
"""Replicas per comparison; CI default 64, raise it for a sharper check."""

ALPHA = 1e-4

# Model parameters chosen so that every term of each model matters in 576 updates.
MODEL_PARAMS = {
    "constant_step": {},
    "soft_bounds": {"dw_min": 0.004},
    "linear_step": {"dw_min": 0.003, "gamma_up": 0.6, "gamma_down": 0.4},
    "exp_step": {"dw_min": 0.003},
    "pow_step": {"dw_min": 0.003},
    "piecewise": {"dw_min": 0.003, "piecewise_up": [1.6, 1.0, 0.4],
                  "piecewise_down": [0.4, 1.2, 1.4]},
}


def _model(name: str, **extra):
    cls = get_model(name)
    params = cls.Params(**{**MODEL_PARAMS.get(name, {}), **extra})
    params.validate()
    return cls(params)


def _lines(gen, P, n, p_lo, p_hi, sign_mode):
    """Bits [P, BL, n]: Bernoulli(p) per line with p ~ U(p_lo, p_hi), signs per mode."""
    prob = p_lo + (p_hi - p_lo) * torch.rand(P, 1, n, generator=gen)
    on = torch.rand(P, BL, n, generator=gen) < prob
    if sign_mode == "plus":
        sign = torch.ones(P, 1, n)
    elif sign_mode == "alternate":  # update p: all +1 for even p, all -1 for odd p
        sign = (1 - 2 * (torch.arange(P) % 2)).float().view(P, 1, 1).expand(P, 1, n)
    else:
        sign = torch.where(torch.rand(P, 1, n, generator=gen) < 0.5, 1.0, -1.0)
        if sign_mode == "mixed":  # 2 % of lines change sign from slot to slot
            flip = torch.rand(P, 1, n, generator=gen) < 0.02
            per_slot = torch.where(torch.rand(P, BL, n, generator=gen) < 0.5, 1.0, -1.0)
            sign = torch.where(flip, per_slot, sign)
    return (on.float() * sign).to(torch.int8)


def scenario(name: str, model_name: str, **params):
    """(model, state [ROWS, COLS], w0 [ROWS, COLS], x_bits, d_bits) of one scenario
    (``params``: more model parameters)."""
    gen = torch.Generator().manual_seed(1234)
    extra = {"up_down": 0.2} if name == "asymmetry" else {}
    model = _model(model_name, **extra, **params)
    state = model.draw(ROWS, COLS, gen)
    lo, hi = state["w_min"], state["w_max"]
    if name == "random":
        x = _lines(gen, P, COLS, 0.0, 0.4, "mixed")
        d = _lines(gen, P, ROWS, 0.0, 0.4, "random")
        w0 = lo + (hi - lo) * torch.rand(ROWS, COLS, generator=gen)
    elif name == "saturation":
        x = _lines(gen, P, COLS, 0.5, 1.0, "plus")
        d = _lines(gen, P, ROWS, 0.5, 1.0, "plus")
        w0 = lo + 0.8 * (hi - lo)
    else:  # asymmetry: alternating all-up / all-down updates with equal odds
        x = _lines(gen, P, COLS, 0.3, 0.3, "plus")
        d = _lines(gen, P, ROWS, 0.3, 0.3, "alternate")
        w0 = lo + 0.5 * (hi - lo)
    return model, state, w0, x, d


def _tile(t: torch.Tensor, dim: int) -> torch.Tensor:
    reps = [1] * t.dim()
    reps[dim] = S
    return t.repeat(*reps)


def run_engine(engine: str, model, state, w0, x, d, seed: int) -> torch.Tensor:
    """Final weights [S, ROWS, COLS] of S independent replicas."""
    st = {k: _tile(v, 0) for k, v in state.items()}
    w = _tile(w0, 0).clone()
    dd = _tile(d, 2)
    gen = torch.Generator().manual_seed(seed)
    if engine == "reference":
        w = reference_update(model, st, w, x, dd, gen)
    elif engine == "torch":
        w = update_torch(model, st, w, x, dd, gen)
    else:
        prm = model.packed_state(st)
        wn = w.numpy()
        pk = PackedBits.from_bits(x, dd)
        kernel = kernels.update_kernel_for(model.nb_pulse)
        kernel(pk.x_nz, pk.x_pos, pk.d_nz, pk.d_pos, wn, prm,
               np.asarray(model.constants(), dtype=np.float64), seed, model.noisy)
    return w.reshape(S, ROWS, COLS)


def compare(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Chi-square and pooled z statistics of means and spreads (see module doc)."""
    a, b = a.double().reshape(S, -1), b.double().reshape(S, -1)
    out = {}
    # spread: Brown-Forsythe, i.e. a mean test on |w - median|, whose standard error is
    # well estimated at S = 64 (a z-test on raw variances has fat tails there)
    dev_a = (a - a.median(0).values).abs()
    dev_b = (b - b.median(0).values).abs()
    for kind, xa, xb in (("mean", a, b), ("spread", dev_a, dev_b)):
        diff = xa.mean(0) - xb.mean(0)
        # float floor: the engines compute in float32 (reference, torch) or float64
        # (numba); differences below ~1e-6 (16 float32 ulps at |w| ~ 0.6) are
        # rounding, not statistics
        se2 = (xa.var(0) + xb.var(0)) / S + 1e-12
        keep = se2 > 2e-12
        # devices with no spread in either engine must agree up to float32 stagnation:
        # a soft-bounded approach stalls once the float32 step vanishes, i.e. within
        # ulp(w) * w_max / dw_min ~ 6e-8 * 0.6 / 0.003 ~ 1.2e-5 of its bound
        out[f"{kind}_degenerate_max"] = float(diff[~keep].abs().max()) if (~keep).any() else 0.0
        z = diff[keep] / se2[keep].sqrt()
        k = int(keep.sum())
        out[f"{kind}_chi2"] = float((z**2).sum())
        out[f"{kind}_chi2_limit"] = float(stats.chi2.ppf(1 - ALPHA, k)) if k else 0.0
        out[f"{kind}_pooled_z"] = float(z.sum() / max(k, 1) ** 0.5)
    return out


def assert_same(stats_: dict[str, float]) -> None:
    for kind in ("mean", "spread"):
        assert stats_[f"{kind}_chi2"] <= stats_[f"{kind}_chi2_limit"], stats_
        assert abs(stats_[f"{kind}_pooled_z"]) < 4.0, stats_
        assert stats_[f"{kind}_degenerate_max"] < 3e-5, stats_


_REFERENCE: dict[tuple[str, str], torch.Tensor] = {}


def reference(model_name: str, scen: str) -> torch.Tensor:
    key = (model_name, scen)
    if key not in _REFERENCE:
        _REFERENCE[key] = run_engine("reference", *scenario(scen, model_name), seed=7)
    return _REFERENCE[key]


ENGINES = ["torch"] + (["numba"] if HAVE_NUMBA else [])
SCENARIOS = ["random", "saturation", "asymmetry"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("scen", SCENARIOS)
@pytest.mark.parametrize("model_name", model_names())
def test_fast_engine_matches_pulse_by_pulse_reference(model_name, scen, engine):
    ref = reference(model_name, scen)
    fast = run_engine(engine, *scenario(scen, model_name), seed=11)
    assert torch.isfinite(fast).all()
    assert_same(compare(fast, ref))


@pytest.mark.parametrize("scen", SCENARIOS)
def test_scenarios_exercise_what_they_claim(scen):
    """Saturation really reaches the bounds; asymmetry really drifts; random moves weights."""
    model, state, w0, x, d = scenario(scen, "constant_step")
    ref = reference("constant_step", scen)
    at_top = (ref >= state["w_max"] - 1e-6).float().mean()
    if scen == "saturation":
        assert at_top > 0.5
    elif scen == "asymmetry":
        # up steps are (1+0.2)/(1-0.2) = 1.5x the down steps: equal counts drift upwards
        assert float((ref - w0).mean()) > 0.02
    else:
        assert float((ref - w0).abs().mean()) > 0.01
        assert at_top < 0.5


@pytest.mark.parametrize("engine", ENGINES)
def test_criteria_reject_a_wrong_engine(engine):
    """Power check: a 3 % larger step (or a doubled c2c noise) is detected."""
    model, state, w0, x, d = scenario("random", "constant_step")
    ref = reference("constant_step", "random")
    wrong = dict(state)
    wrong["dw_up"] = state["dw_up"] * 1.03
    wrong["dw_down"] = state["dw_down"] * 1.03
    bad = run_engine(engine, model, wrong, w0, x, d, seed=11)
    s = compare(bad, ref)
    assert s["mean_chi2"] > s["mean_chi2_limit"] or abs(s["mean_pooled_z"]) > 4.0
    noisy = _model("constant_step", dw_min_std=0.6)
    bad = run_engine(engine, noisy, state, w0, x, d, seed=11)
    s = compare(bad, ref)
    assert s["spread_chi2"] > s["spread_chi2_limit"] or abs(s["spread_pooled_z"]) > 4.0


def test_engines_are_reproducible_with_a_seed():
    for engine in ENGINES:
        a = run_engine(engine, *scenario("random", "soft_bounds"), seed=5)
        b = run_engine(engine, *scenario("random", "soft_bounds"), seed=5)
        assert torch.equal(a, b)


# ---- write noise: hidden weights moved by the pulses, visible ones redrawn ------------------
WN_MODELS = ["soft_bounds", "exp_step"]
"""An affine model (torch engine in closed form) and one looped pulse by pulse whose
pinned devices (bounds equal) keep their visible weight (aihwkit's ExpStep)."""


def wn_scenario(model_name: str):
    """The random scenario with write noise (write_noise_std 2): column 0 never pulsed, and
    for a model that skips pinned devices every 7th device pinned; visible weights start
    0.05 above the hidden ones (so that an unchanged one is recognised)."""
    model, state, w0, x, d = scenario("random", model_name, write_noise_std=2.0)
    x = x.clone()
    x[:, :, 0] = 0
    state = dict(state)
    if model.write_noise_skips_pinned:
        pin = (torch.arange(ROWS)[:, None] * COLS + torch.arange(COLS)) % 7 == 3
        mid = 0.5 * (state["w_min"] + state["w_max"])
        state["w_min"] = torch.where(pin, mid, state["w_min"])
        state["w_max"] = torch.where(pin, mid, state["w_max"])
        w0 = torch.where(pin, mid, w0)
    return model, state, w0, w0 + 0.05, x, d


def run_engine_wn(engine: str, model, state, w0, v0, x, d, seed: int):
    """Final hidden and visible weights [S, ROWS, COLS] of S replicas: the reference redraws
    the visible weight at every pulse (aihwkit's update_once), the fast engines once per
    pulsed device after its last pulse."""
    st = {k: _tile(v, 0) for k, v in state.items()}
    w, v = _tile(w0, 0).clone(), _tile(v0, 0).clone()
    dd = _tile(d, 2)
    gen = torch.Generator().manual_seed(seed)
    if engine == "reference":
        w, v = reference_update(model, st, w, x, dd, gen, visible=v)
    elif engine == "torch":
        w = update_torch(model, st, w, x, dd, gen)
        v = write_noise(model, st, w, v, pulsed_devices(x, dd), gen)
    else:
        pk = PackedBits.from_bits(x, dd)
        kernel = kernels.update_kernel_for(model.nb_pulse)
        kernel(pk.x_nz, pk.x_pos, pk.d_nz, pk.d_pos, w.numpy(), model.packed_state(st),
               np.asarray(model.constants(), dtype=np.float64), seed, model.noisy, v.numpy(),
               model.write_noise, model.write_noise_skips_pinned)
    return w.reshape(S, ROWS, COLS), v.reshape(S, ROWS, COLS)


_WN_REFERENCE: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("model_name", WN_MODELS)
def test_write_noise_engines_match_pulse_by_pulse_reference(model_name, engine):
    if model_name not in _WN_REFERENCE:
        _WN_REFERENCE[model_name] = run_engine_wn("reference", *wn_scenario(model_name), seed=7)
    ref_h, ref_v = _WN_REFERENCE[model_name]
    fast_h, fast_v = run_engine_wn(engine, *wn_scenario(model_name), seed=11)
    assert_same(compare(fast_h, ref_h))
    assert_same(compare(fast_v, ref_v))
    model, state, w0, v0, x, d = wn_scenario(model_name)
    assert torch.equal(fast_v[:, :, 0], v0[:, 0].expand(S, ROWS))  # never pulsed: kept
    # the write noise is there: where redrawn, visible minus hidden has std
    # write_noise_std * dw_min (5 standard errors of a sample std, sd / sqrt(2 n))
    redrawn = fast_v != v0.expand(S, ROWS, COLS)
    assert redrawn[:, :, 1:].float().mean() > (0.8 if model.write_noise_skips_pinned else 0.99)
    noise = (fast_v - fast_h)[redrawn].double()
    assert abs(float(noise.std()) / model.write_noise - 1) < 5 * (2 * noise.numel()) ** -0.5
