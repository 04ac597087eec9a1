"""One step rule per device model: the fitter and both simulator engines agree on it.

Every registered device model writes its mean step once (``DeviceModel.mean_step``, see
rpuhw/devices/rule.py). These tests hold the paths that evaluate it to each other, for
every registered model (so that a new model cannot drift):

* the calibration fitter's mean step (``FitModel.step``, normalised conductance units,
  fit parameters), converted to the weights of the fitted YAML (``FitModel.weights``);
* the torch engine: ``DeviceModel.pulse`` (numpy on the rules) and
  ``update_torch.apply_counts`` (closed forms for affine models, else the loop);
* the numba engine: the compiled pulse kernel with the model's inlined ``nb_pulse``.

Noiseless single pulses at random states of random devices must give the same step in
all of them; with noise, numba and numpy must give the same pulse for the same normal
number; and a model declared affine must really be affine in w and in xi.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpuhw._jit import HAVE_NUMBA
from rpuhw.calibration.fit_models import FIT_MODELS, FitModel, Frame
from rpuhw.devices import get_model, model_names
from rpuhw.devices.rule import Columns
from rpuhw.errors import ConfigError
from rpuhw.sim import kernels
from rpuhw.sim.update_torch import apply_counts

ROWS, COLS = 6, 7
D = ROWS * COLS
FIT = Frame(u_ref=0.45, h_ref=0.38)
"""The fit's frame (normalised conductance)."""


def test_every_device_model_has_a_fit_model():
    assert FIT_MODELS.names() == model_names()


def test_a_fit_model_needs_a_registered_device_model():
    with pytest.raises(ConfigError, match="unknown device model 'no_such_model'"):
        type("NoSuchFit", (FitModel,), {"name": "no_such_model"})


GLOB_RANGES = {"exp_step": ([-8.0, -8.0, 0.5, 0.5], [-3.0, -3.0, 8.0, 8.0])}
"""Ranges of the shared fit parameters where a model's steps are mostly non-zero (default:
the fit's bounds, clipped to [-4, 6])."""


def _random_fit(name: str, seed: int):
    """A fit model and random fit parameters (p [D, k], g) of model ``name``."""
    fm = FIT_MODELS.get(name)()
    rng = np.random.default_rng(seed)
    lo = 0.07 + 0.03 * rng.standard_normal(D)
    hi = 0.83 + 0.03 * rng.standard_normal(D)
    s = 0.008 * rng.uniform(0.5, 1.5, (D, 2))
    lo_e, hi_e = (np.clip(b, -2.0, 3.0) for b in fm.extra_bounds())
    extra = rng.uniform(lo_e, hi_e, (D, len(fm.extra_dev)))
    lo_g, hi_g = GLOB_RANGES.get(name, [np.clip(b, -4.0, 6.0) for b in fm.glob_bounds()])
    g = rng.uniform(lo_g, hi_g, len(fm.glob))
    return fm, np.column_stack([lo, hi, s, extra]), g


def _device(fm: FitModel, p: np.ndarray, g: np.ndarray, out: Frame, dtype: torch.dtype):
    """The device model (noiseless) and its per-device state in the weight frame ``out``."""
    per = fm.weights(p, g, FIT, out.u_ref, 2.0 * out.h_ref)
    model = fm.device(fm.device.Params(**fm.spec_extras(g), dw_min_std=0.0))
    state = {k: torch.as_tensor(per[k].reshape(ROWS, COLS), dtype=dtype)
             for k in model.state_names}
    return model, state


def _frames(name: str) -> list[Frame]:
    # exp_step's z is relative to the frame's centre: its conversion to the YAML frame is
    # exact only at the fit's centre (the fit refits with the converged centre)
    shifted = Frame(u_ref=FIT.u_ref if name == "exp_step" else 0.5, h_ref=0.35)
    return [FIT, shifted]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", model_names())
def test_fitter_torch_and_numba_agree_on_the_mean_step(name, seed):
    fm, p, g = _random_fit(name, seed)
    rng = np.random.default_rng(100 + seed)
    u = rng.uniform(p[:, 0], p[:, 1])  # states between each device's bounds
    u[:ROWS] = p[:ROWS, 1]             # ... and at them
    u[ROWS:2 * ROWS] = p[ROWS:2 * ROWS, 0]
    for out in _frames(name):
        w = torch.from_numpy(out.w(u).reshape(ROWS, COLS))
        for up in (True, False):
            fitted = fm.step(up, u, p, g, FIT).reshape(ROWS, COLS) / out.h_ref
            assert np.mean(np.abs(fitted) > 1e-4) > 0.5  # the devices do step
            upt = torch.full((ROWS, COLS), up)
            # torch, float64 state: the same numbers up to rounding
            model, state = _device(fm, p, g, out, torch.float64)
            torch_step = (model.pulse(w, upt, torch.zeros_like(w), state) - w).numpy()
            np.testing.assert_allclose(torch_step, fitted, rtol=1e-9, atol=1e-12)
            # float32 state, as in a simulated array: torch engine and numba kernel
            model, state = _device(fm, p, g, out, torch.float32)
            w32 = w.float()
            n = torch.ones(1, ROWS, COLS)
            gen = torch.Generator().manual_seed(0)
            engine = (apply_counts(model, state, w32, n, upt[None], gen) - w32).numpy()
            scale = 1e-4 * np.abs(fitted).max() + 1e-6
            np.testing.assert_allclose(engine, fitted, rtol=1e-4, atol=scale)
            if HAVE_NUMBA:
                wn = w32.numpy().copy()
                counts = np.full((ROWS, COLS), 1 if up else -1, np.int32)
                kernels.pulse_kernel_for(model.nb_pulse)(
                    counts, wn, model.packed_state(state),
                    np.asarray(model.constants(), np.float64), 1, False)
                np.testing.assert_allclose(wn - w32.numpy(), fitted, rtol=1e-4, atol=scale)


# ---- noise: numba and numpy run the same noise rule -------------------------------------


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba disabled or not installed")
@pytest.mark.parametrize("name", model_names())
def test_noisy_pulse_is_the_same_in_the_kernel_and_in_numpy(name):
    """One noisy pulse per device of a one-row array: the pulse kernel draws the normals
    of row 0's stream in column order, ``kernels.normals(n, seed)``."""
    cls = get_model(name)
    model = cls(cls.Params(dw_min=0.02, dw_min_std=0.4))
    gen = torch.Generator().manual_seed(3)
    state = model.draw(1, D, gen)
    lo, hi = state["w_min"], state["w_max"]
    w = lo + (hi - lo) * torch.rand(1, D, generator=gen)
    up = torch.rand(1, D, generator=gen) < 0.5
    seed = 12
    xi = torch.from_numpy(kernels.normals(D, seed).astype(np.float32)[None])
    expect = model.pulse(w, up, xi, state).numpy()
    got = w.numpy().copy()
    kernels.pulse_kernel_for(model.nb_pulse)(
        np.where(up.numpy(), 1, -1).astype(np.int32), got, model.packed_state(state),
        np.asarray(model.constants(), np.float64), seed, True)
    np.testing.assert_allclose(got, expect, atol=1e-6, rtol=0)


# ---- affine models ------------------------------------------------------------------------

AFFINE_CASES = [(name, {}) for name in model_names() if get_model(name).affine_step] + [
    ("linear_step", {"gamma_up": 0.4, "gamma_down": 0.3, "mult_noise": False})]


def test_the_simulator_has_affine_models():
    assert {"constant_step", "soft_bounds", "linear_step"} <= {n for n, _ in AFFINE_CASES}


@pytest.mark.parametrize("name,params", AFFINE_CASES)
def test_a_model_declared_affine_is_affine_in_w_and_xi(name, params):
    """``d * noise(mean_step(w), w, xi)`` equals the coefficients of ``affine()`` at random
    (w, xi), also beyond the bounds (the rules are not clipped)."""
    cls = get_model(name)
    model = cls(cls.Params(**{"dw_min": 0.01, "dw_min_std": 0.3, **params}))
    state = {k: v.double() for k, v in model.draw(ROWS, COLS,
                                                 torch.Generator().manual_seed(5)).items()}
    prm, c = model.columns(state), np.asarray(model.constants(), np.float64)
    rng = np.random.default_rng(6)
    for (up, sign), coef in zip(((True, 1.0), (False, -1.0)), model.affine(state),
                                strict=True):
        a, b, sa, sb = (t.double().numpy() for t in coef)
        for _ in range(5):
            w = rng.uniform(-1.5, 1.5, (ROWS, COLS))
            xi = rng.standard_normal((ROWS, COLS))
            inc = sign * cls.noise(cls.mean_step(w, up, prm, None, None, c), w, up, xi, prm,
                                   None, None, c)
            np.testing.assert_allclose(inc, b + a * w + (sb + sa * w) * xi, rtol=1e-5,
                                       atol=1e-9)


def test_columns_stand_in_for_prm():
    a, b = np.arange(3.0), np.arange(3.0) + 10
    prm = Columns([a, b])
    assert prm[None, None, 1] is b and prm[0, 0, 0] is a
