"""The compiled clip step (calibration/clip_kernel.py) against the torch version
(statespace.clipped_update, itself checked against quadrature in test_fit_statespace.py):
values and gradients with respect to every input, by autograd, on random inputs far from,
near and beyond the bound, fine and coarse reads, and extreme inputs the optimiser's line
search reaches; padded steps hold the state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpuhw.calibration import clip_kernel
from rpuhw.calibration.statespace import clipped_update

pytestmark = pytest.mark.skipif(not clip_kernel.AVAILABLE, reason="numba missing")


def _inputs(n: int, seed: int, extreme: bool = False) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    bound = rng.normal(0.0, 1.0, n)
    sd = 10.0 ** rng.uniform(-3, 0, n)
    # the prior's mean from 6 sd beyond the bound to 40 sd inside it (the clip's weight
    # from 1 to 1e-300), the read near the bound or near the prior
    a = bound - sign * sd * rng.uniform(-6, 40, n)
    r = 10.0 ** rng.uniform(-3, 0, n)
    y = np.where(rng.random(n) < 0.5, bound + r * rng.normal(size=n),
                 a + np.sqrt(sd ** 2 + r ** 2) * rng.normal(size=n))
    v = sd ** 2
    if extreme:  # line-search points: variances of 1e-300, bounds 1e8 steps away
        v = np.where(rng.random(n) < 0.3, 10.0 ** rng.uniform(-300, -20, n), v)
        bound = np.where(rng.random(n) < 0.3, bound + sign * 10.0 ** rng.uniform(3, 8, n),
                         bound)
        y = np.where(rng.random(n) < 0.2, y + 10.0 ** rng.uniform(1, 4, n), y)
    t = {k: torch.tensor(x, dtype=torch.float64) for k, x in
         dict(a=a, v=v, bound=bound, sign=sign, y=y, r2=r ** 2).items()}
    for k in ("a", "v", "bound", "r2"):
        t[k].requires_grad_(True)
    return t


def _weights(n: int, seed: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(seed + 100)
    return [torch.tensor(rng.normal(size=n)) for _ in range(3)]


def _both(t: dict, obs: torch.Tensor, m_prev: torch.Tensor, var_prev: torch.Tensor,
          weights: list[torch.Tensor]):
    ref = clipped_update(t["a"], t["v"], t["bound"], t["sign"], t["y"], t["r2"])
    ref = (torch.where(obs, ref[0], 0.0), torch.where(obs, ref[1], m_prev),
           torch.where(obs, ref[2], var_prev))
    got = clip_kernel.clip_step(t["a"], t["v"], t["bound"], t["sign"], t["y"], t["r2"], obs,
                                m_prev, var_prev)
    inputs = [t["a"], t["v"], t["bound"], t["r2"], m_prev, var_prev]
    out = []
    for res in (ref, got):
        loss = sum((w * r).sum() for w, r in zip(weights, res, strict=True))
        grads = torch.autograd.grad(loss, inputs, allow_unused=True)
        out.append(([r.detach() for r in res],
                    [torch.zeros(len(obs)) if g is None else g for g in grads]))
    return out


@pytest.mark.parametrize("extreme", [False, True])
def test_values_and_gradients_match_the_torch_step(extreme):
    n = 20_000
    t = _inputs(n, seed=1 + extreme, extreme=extreme)
    rng = np.random.default_rng(7)
    obs = torch.tensor(rng.random(n) < 0.9)
    m_prev = torch.tensor(rng.normal(size=n), requires_grad=True)
    var_prev = torch.tensor(rng.random(n), requires_grad=True)
    (rv, rg), (gv, gg) = _both(t, obs, m_prev, var_prev, _weights(n, 1))
    for name, x in zip(("log p(y)", "mean", "var", "a", "v", "bound", "r2", "m_prev",
                        "var_prev"), gv + gg, strict=True):
        assert torch.isfinite(x).all(), name
    assert (gv[2] >= clip_kernel.V_FLOOR).all()
    # both evaluate the same formulas in float64; they differ in the normal log-CDF's
    # implementation (torch: erfcx; here erfc and an asymptotic series), about 1e-15
    # relative. In the ordinary range that stays below 1e-9 (each term of the step is O(1)
    # somewhere in these inputs, so a wrong term fails by far more).
    if not extreme:
        for name, r, g in zip(("log p(y)", "mean", "var"), rv, gv, strict=True):
            np.testing.assert_allclose(g.numpy(), r.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=name)
        for name, r, g in zip(("a", "v", "bound", "r2", "m_prev", "var_prev"), rg, gg,
                              strict=True):
            scale = r.abs().clamp_min(1.0)
            assert float(((g - r).abs() / scale).max()) < 1e-7, name
        return
    # At the line search's extreme points (variances of 1e-300, reads 1e4 away) both
    # explanations of a read can be improbable beyond the log-density floor, and the
    # posterior's moments are then cancellations (1 - beta lambda - lambda^2 at its 1e-12
    # floor amplifies 1e-16 by 1e12): neither version's mean and variance mean anything
    # there, only that they are finite. What the optimiser acts on is log p(y), which must
    # still agree (the line search steps back from these points).
    np.testing.assert_allclose(gv[0].numpy(), rv[0].numpy(), rtol=1e-9, atol=1e-12)


def test_padding_holds_the_state_and_passes_its_gradient():
    n = 50
    t = _inputs(n, seed=3)
    obs = torch.zeros(n, dtype=torch.bool)
    m_prev = torch.linspace(-1, 1, n, dtype=torch.float64).requires_grad_(True)
    var_prev = torch.linspace(0.1, 1, n, dtype=torch.float64).requires_grad_(True)
    ll, m, v = clip_kernel.clip_step(t["a"], t["v"], t["bound"], t["sign"], t["y"], t["r2"],
                                     obs, m_prev, var_prev)
    assert torch.equal(ll, torch.zeros(n, dtype=torch.float64))
    assert torch.equal(m, m_prev.detach()) and torch.equal(v, var_prev.detach())
    g = torch.autograd.grad((2.0 * m + 3.0 * v).sum(), [m_prev, var_prev, t["a"]])
    assert torch.equal(g[0], torch.full((n,), 2.0, dtype=torch.float64))
    assert torch.equal(g[1], torch.full((n,), 3.0, dtype=torch.float64))
    assert torch.equal(g[2], torch.zeros(n, dtype=torch.float64))


def test_log_ndtr_matches_torch_across_its_branches():
    x = np.concatenate([np.linspace(-1e5, -40, 200), np.linspace(-40, 40, 4001)])
    got = np.array([clip_kernel._log_ndtr(float(v)) for v in x])
    want = torch.special.log_ndtr(torch.tensor(x, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)
