"""Digital periphery: noise / bound / update management, DAC/ADC, stochastic encoding.

Statistical tests use fixed seeds; their tolerances are a number of standard
errors of the sampled quantity (derivations beside each test). With fixed
seeds they are deterministic; the tolerance only says how unlikely a failure
of a correct implementation would be for an arbitrary seed.
"""

from __future__ import annotations

import math

import pytest
import torch

import rpuhw
from rpuhw import DeviceSpec, IdealArray, PackedBits, SimulatedArray
from rpuhw._jit import HAVE_NUMBA
from rpuhw.config import from_mapping
from rpuhw.devices import get_model
from rpuhw.errors import ConfigError
from rpuhw.periphery import Periphery, PeripheryConfig
from rpuhw.periphery.io import IOConfig

ROWS, COLS = 16, 26
ENGINES = [pytest.param("numba", marks=pytest.mark.skipif(not HAVE_NUMBA, reason="no numba")),
           "torch"]
Z = 5.0
"""Tolerance in standard errors. P(|N(0,1)| > 5) = 5.7e-7, so even over ~1000 checks
of one test a correct implementation fails for fewer than 1 seed in 1000."""


def _corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    a, b = a - a.mean(), b - b.mean()
    return float((a @ b) / (a.norm() * b.norm()))


def _no_um(**kw) -> PeripheryConfig:
    """UM off, lr 0.01, BL 10, dw_min 0.001: C = sqrt(lr / (BL dw_min)) = 1, so p = min(1, |v|)."""
    return PeripheryConfig(update_management=False, lr=0.01, bl=10, dw_min=0.001, **kw)


# ---- config ---------------------------------------------------------------------------
def test_config_defaults_and_validation():
    c = PeripheryConfig()
    c.validate()
    assert (c.noise_management, c.bound_management, c.update_management) == (True, True, True)
    assert (c.bl, c.lr, c.bm_max_halvings, c.bm_backward) == (10, 0.01, 10, False)
    bad = [{"bl": 0}, {"lr": 0.0}, {"lr": -1.0}, {"lr": float("nan")}, {"inp_res": 0.0},
           {"out_res": 1.5}, {"out_bound": 0.0}, {"dw_min": -0.001}, {"bm_max_halvings": -1},
           {"noise_management": 1}, {"bl": 2.5}]
    for kw in bad:
        key = next(iter(kw))
        with pytest.raises(ConfigError, match=key):
            PeripheryConfig(**kw).validate()
    with pytest.raises(ConfigError, match="bl"):
        Periphery(IdealArray(2, 3), PeripheryConfig(bl=0))
    # loads from a YAML-style mapping with the config machinery
    cfg = from_mapping(PeripheryConfig, {"bl": 31, "inp_res": 0.0078125}, source="t.yaml")
    assert cfg.bl == 31
    with pytest.raises(ConfigError, match="t.yaml"):
        from_mapping(PeripheryConfig, {"bl": -3}, source="t.yaml")


def test_resolved_constants_come_from_the_array():
    sim = rpuhw.open_array("sim", ROWS, COLS, seed=0)
    per = Periphery(sim)
    assert per.out_bound == sim.io.out_bound == 12.0
    assert per.dw_min == sim.nominal_step() == 0.001
    ideal = IdealArray(ROWS, COLS, dw=0.004)
    per = Periphery(ideal)
    assert per.out_bound == 12.0 and per.dw_min == 0.004
    per = Periphery(ideal, PeripheryConfig(out_bound=3.0, dw_min=0.002))
    assert per.out_bound == 3.0 and per.dw_min == 0.002


# ---- noise management -----------------------------------------------------------------
def test_noise_management_lifts_small_signals_above_read_noise():
    # W ~ U(-0.3, 0.3) (std 0.173), x ~ 1e-3 N(0,1), out_noise 0.06.
    # Without NM: signal std = 1e-3 * sqrt(26) * 0.173 = 8.8e-4 against noise 0.06,
    #   expected correlation 8.8e-4 / 0.06 = 0.015; the sample correlation of
    #   N * rows = 1024 points has standard error 1/sqrt(1024) = 0.031, so < 0.015 + 5*0.031 = 0.17.
    # With NM: x / max|x| has entries of std ~0.45, signal std ~ sqrt(26)*0.45*0.173 = 0.40
    #   against 0.06: expected correlation sqrt(0.16 / (0.16 + 0.0036)) = 0.989 -> > 0.95.
    torch.manual_seed(0)
    sim = rpuhw.open_array("sim", ROWS, COLS, seed=1)
    sim.set_weights(0.6 * torch.rand(ROWS, COLS) - 0.3)
    W = sim.read()  # read_noise is 0: the exact weights (after clipping to bounds)
    x = 1e-3 * torch.randn(64, COLS)
    exact = x @ W.T
    y_nm = Periphery(sim, PeripheryConfig(noise_management=True)).forward(x)
    y_raw = Periphery(sim, PeripheryConfig(noise_management=False)).forward(x)
    assert _corr(y_nm, exact) > 0.95
    assert abs(_corr(y_raw, exact)) < 0.17
    # the NM error is the read noise scaled back by max|x| (~2.2e-3): tiny in absolute terms
    assert (y_nm - exact).abs().max() < 5 * 0.06 * x.abs().max()


def test_noise_management_backward_and_zero_vectors():
    ideal = IdealArray(ROWS, COLS)
    W = torch.randn(ROWS, COLS) * 0.1
    ideal.weights.copy_(W)
    per = Periphery(ideal)
    d = torch.randn(5, ROWS) * 1e-4
    d[2] = 0.0
    z = per.backward(d)
    torch.testing.assert_close(z, d @ W, rtol=1e-5, atol=1e-9)
    assert torch.equal(z[2], torch.zeros(COLS))
    assert per.stats.backward_calls == 1 and per.stats.backward_vectors == 4  # zero row skipped
    y = per.forward(torch.zeros(3, COLS))
    assert torch.equal(y, torch.zeros(3, ROWS))
    assert per.stats.forward_calls == 0  # all-zero batch: no array cycle at all
    assert per.forward(torch.zeros(0, COLS)).shape == (0, ROWS)
    per.stats.reset()
    assert per.stats.backward_calls == 0 and per.stats.backward_vectors == 0


# ---- bound management -----------------------------------------------------------------
def _bm_array(seed=0):
    model = get_model("constant_step")(from_mapping(
        get_model("constant_step").Params,
        {"w_min": -1.0, "w_max": 1.0, "w_min_dtod": 0.0, "w_max_dtod": 0.0}))
    io = IOConfig(out_noise=0.0, out_res=1 / 510)
    sim = SimulatedArray(ROWS, COLS, device=DeviceSpec(model, io=io), seed=seed)
    g = torch.Generator().manual_seed(seed)
    sim.set_weights(0.5 + 0.3 * torch.rand(ROWS, COLS, generator=g))  # row sums 13 .. 20.8
    return sim


def test_bound_management_recovers_saturated_outputs():
    sim = _bm_array()
    W = sim.read()
    step = (1 / 510) * 2 * 12.0  # the array's ADC step (output units)
    g = torch.Generator().manual_seed(3)
    x = 0.5 + 0.5 * torch.rand(6, COLS, generator=g)
    x[0] = 1.0
    x[5] = 0.02 * x[5]   # NM normalises it like the others
    x[4] = 0.1
    x[4, 0] = 1.0        # small output: never saturates, never recomputed
    exact = x @ W.T
    m = x.abs().amax(dim=1, keepdim=True)
    assert (exact / m).max() > 12 and (exact / m).max() < 24  # saturates once, not twice
    assert (exact[4] / m[4]).max() < 12
    per = Periphery(sim)  # NM + BM
    y = per.forward(x)
    # halvings k per sample: the least k with max(exact / m) / 2**k < 12; the result is
    # 2**k * m * ADC(array output), and the ADC rounds to within step/2 -> tolerance 2 steps
    k = torch.ceil(torch.log2((exact / m).amax(dim=1, keepdim=True) / 12.0)).clamp(min=0)
    tol = 2 * step * 2**k * m
    assert ((y - exact).abs() <= tol).all()
    assert per.stats.bm_halvings == int(k.sum()) and per.stats.bm_unresolved == 0
    # only saturated samples were recomputed
    assert per.stats.forward_calls == 2
    assert per.stats.forward_vectors == 6 + int((k > 0).sum())

    y_clip = Periphery(sim, PeripheryConfig(bound_management=False)).forward(x)
    sat = exact / m > 12
    assert sat.any()
    torch.testing.assert_close(y_clip[sat], (12.0 * m.expand_as(exact))[sat])
    assert ((y_clip - exact).abs() <= 2 * step * m)[~sat].all()  # unsaturated outputs exact
    assert (exact - y_clip)[sat].max() > 4 * m.max()  # clipped far below the exact value


def test_bound_management_limits_and_backward_flag():
    sim = _bm_array()
    x = torch.ones(2, COLS)
    x[1, :] = 0.1
    x[1, 0] = 1.0  # small output: never saturates
    per = Periphery(sim, PeripheryConfig(bm_max_halvings=0))
    per.forward(x)
    assert per.stats.bm_halvings == 0 and per.stats.bm_unresolved == 1
    assert per.stats.forward_calls == 1
    # backward: BM only with bm_backward
    sim.set_weights(torch.full((ROWS, COLS), 0.95))
    d = torch.ones(1, ROWS)  # column sums of W: 16 * 0.95 = 15.2 > 12
    per = Periphery(sim)
    assert float(per.backward(d).max()) == pytest.approx(12.0)
    assert per.stats.bm_halvings == 0
    per = Periphery(sim, PeripheryConfig(bm_backward=True))
    z = per.backward(d)
    assert per.stats.bm_halvings >= 1
    torch.testing.assert_close(z, d @ sim.read(), atol=2 * 2 * (24 / 510) * 2, rtol=0)


# ---- DAC / ADC ------------------------------------------------------------------------
def test_dac_adc_quantisation_in_the_periphery():
    ideal = IdealArray(ROWS, COLS)
    W = torch.randn(ROWS, COLS) * 0.1
    ideal.weights.copy_(W)
    x = torch.randn(4, COLS)
    m = x.abs().amax(dim=1, keepdim=True)
    per = Periphery(ideal, PeripheryConfig(inp_res=1 / 8, bound_management=False))
    xq = torch.round((x / m) / 0.25) * 0.25  # step = inp_res * 2 = 0.25
    torch.testing.assert_close(per.forward(x), (xq @ W.T) * m)
    per = Periphery(ideal, PeripheryConfig(out_res=1 / 64, out_bound=2.0,
                                           bound_management=False))
    y = per.forward(x) / m  # array output before rescaling: on the grid of 4 / 64
    torch.testing.assert_close(y / (4 / 64), torch.round(y / (4 / 64)), atol=1e-4, rtol=0)
    assert ((y - (x / m) @ W.T).abs() <= 2 / 64 + 1e-6).all()


# ---- update management ----------------------------------------------------------------
def test_update_management_balances_pulse_probabilities():
    g = torch.Generator().manual_seed(0)
    x = 2 * torch.rand(50, COLS, generator=g) - 1           # |x| ~ 1
    d = 1e-3 * (2 * torch.rand(50, ROWS, generator=g) - 1)  # |d| ~ 1e-3
    ideal = IdealArray(ROWS, COLS)
    um = Periphery(ideal, PeripheryConfig(update_management=True), seed=0)
    um.update(x, d)
    s = um.stats
    # per update vector the largest probabilities are equal: sqrt(lr x_max d_max / (BL dw))
    px, pd = um.probabilities(x, d)
    torch.testing.assert_close(px.amax(dim=1), pd.amax(dim=1), rtol=1e-5, atol=0)
    assert s.px_max == pytest.approx(s.pd_max, rel=1e-5)
    assert 0.3 < s.px_mean / s.pd_mean < 3  # same order of magnitude
    raw = Periphery(ideal, PeripheryConfig(update_management=False), seed=0)
    raw.update(x, d)
    r = raw.stats
    assert r.px_max / r.pd_max > 300 and r.px_mean / r.pd_mean > 300
    # same learning rate either way: C_x C_d = lr / (BL dw_min) for every update
    px_r, pd_r = raw.probabilities(x, d)
    torch.testing.assert_close(px[:, :, None] * pd[:, None, :],
                               px_r[:, :, None] * pd_r[:, None, :], rtol=1e-4, atol=1e-12)


def test_update_sign_convention_is_gradient_descent():
    # p = 1 for both lines (C = 1, |x| = |d| = 1): BL certain coincidences, all depressing
    ideal = IdealArray(2, 3, dw=0.001)
    per = Periphery(ideal, _no_um())
    x = torch.tensor([[1.0, 0.0, -1.0]])
    d = torch.tensor([[1.0, 0.0]])
    per.update(x, d)
    expected = -0.01 * d.T @ x  # -lr d x^T, exact here: BL * dw = lr
    torch.testing.assert_close(ideal.read(), expected)
    xb, db = per.encode_bits(x, d)
    assert torch.equal(xb[0], x.to(torch.int8).expand(10, 3))
    assert torch.equal(db[0], (-d).to(torch.int8).expand(10, 2))


# ---- encoding statistics --------------------------------------------------------------
def _line_values(n: int, g: torch.Generator) -> torch.Tensor:
    """Values covering p in (0, 1), p = 0 and p = 1 (|v| > 1 clips), both signs."""
    v = 1.2 * (2 * torch.rand(n, generator=g) - 1)
    v[0], v[1], v[2] = 0.0, 1.0, -1.5
    return v


@pytest.mark.parametrize("engine", ENGINES)
def test_encoding_statistics(engine):
    g = torch.Generator().manual_seed(7)
    xv, dv = _line_values(COLS, g), _line_values(ROWS, g)
    P, BL = 4000, 10
    per = Periphery(IdealArray(ROWS, COLS), _no_um(), seed=11, engine=engine)
    xb, db = per.encode_bits(xv.expand(P, COLS), dv.expand(P, ROWS))
    assert xb.dtype == torch.int8 and xb.shape == (P, BL, COLS) and db.shape == (P, BL, ROWS)
    px, pd = xv.abs().clamp(max=1), dv.abs().clamp(max=1)
    for bits, v, p, sign in ((xb, xv, px, 1), (db, dv, pd, -1)):
        on = bits.abs().double()
        # signs: every non-zero bit is sign(v) for x lines, -sign(v) for d lines
        assert ((bits == 0) | (bits == (sign * torch.sign(v)).to(torch.int8))).all()
        # frequency over n = P*BL independent slots ~ Binomial(n, p)/n: SE = sqrt(p(1-p)/n)
        freq = on.mean(dim=(0, 1))
        se = torch.sqrt(p * (1 - p) / (P * BL)).double()
        assert ((freq - p).abs() <= Z * se + 1e-12).all(), (freq - p).abs().max()
        # each slot separately (P draws each): catches slot-dependent bias (e.g. one half word)
        per_slot = on.mean(dim=0)
        assert ((per_slot - p).abs() <= Z * torch.sqrt(p * (1 - p) / P) + 1e-12).all()
        # slot pairs in one random word (0, 1) and across words (1, 2) are independent:
        # P(both on) = p^2, over P draws SE = sqrt(p^2 (1 - p^2) / P)
        for a, b in ((0, 1), (1, 2), (8, 9)):
            both = (on[:, a] * on[:, b]).mean(dim=0)
            se2 = torch.sqrt(p**2 * (1 - p**2) / P)
            assert ((both - p**2).abs() <= Z * se2 + 1e-12).all()
    # lines are independent, within an update and from one update to the next (disjoint
    # random streams): the sample correlation of two independent lines' on-slot counts over
    # P updates has SE 1/sqrt(P) (= 0.016); ~2600 line pairs are checked at 5 SE, so a correct
    # encoder fails for ~1 seed in 700. Overlapping streams would give correlations ~0.8.
    n_on = torch.cat([xb.abs().sum(dim=1), db.abs().sum(dim=1)], dim=1).double()
    live = torch.cat([px, pd]).gt(0) & torch.cat([px, pd]).lt(1)
    n_on = n_on[:, live]
    n_on = (n_on - n_on.mean(dim=0)) / n_on.std(dim=0)
    same = (n_on.T @ n_on) / (P - 1) - torch.eye(n_on.shape[1], dtype=torch.float64)
    nxt = (n_on[:-1].T @ n_on[1:]) / (P - 2)
    assert same.abs().max() < Z / math.sqrt(P) and nxt.abs().max() < Z / math.sqrt(P)
    # coincidences of (row i, col j) in one update ~ Binomial(BL, q), q = p_x p_d (independent
    # lines); mean over P updates has SE sqrt(BL q (1 - q) / P)
    co = torch.einsum("ptj,pti->ij", xb.abs().double(), db.abs().double()) / P
    q = (pd[:, None] * px[None, :]).double()
    assert ((co - BL * q).abs() <= Z * torch.sqrt(BL * q * (1 - q) / P) + 1e-12).all()


@pytest.mark.skipif(not HAVE_NUMBA, reason="no numba")
def test_numba_and_torch_encoders_agree_statistically():
    g = torch.Generator().manual_seed(5)
    xv, dv = _line_values(COLS, g), _line_values(ROWS, g)
    P = 3000
    freqs = []
    for engine in ("numba", "torch"):
        per = Periphery(IdealArray(ROWS, COLS), _no_um(), seed=2, engine=engine)
        xb, db = per.encode_bits(xv.expand(P, COLS), dv.expand(P, ROWS))
        freqs.append(torch.cat([xb.abs().double().mean(dim=(0, 1)),
                                db.abs().double().mean(dim=(0, 1))]))
    p = torch.cat([xv, dv]).abs().clamp(max=1).double()
    # difference of two independent estimates, each with variance p(1-p)/(P BL)
    se = torch.sqrt(2 * p * (1 - p) / (P * 10))
    assert ((freqs[0] - freqs[1]).abs() <= Z * se + 1e-12).all()


@pytest.mark.parametrize("um", [True, False])
@pytest.mark.parametrize("engine", ENGINES)
def test_expected_weight_change_is_minus_lr_d_xT(um, engine):
    # IdealArray: every coincidence adds exactly sign * dw, no bounds. Over P updates
    # dW_ij = dw * sum_p s_pij * Binomial(BL, q_pij), q = p_x p_d, s = -sign(x_j d_i), so
    # E[dW] = -sum_p BL dw C_x C_d x_j d_i = -lr sum_p d_i x_j and
    # Var[dW_ij] = dw^2 sum_p BL q (1 - q). z = (dW - E) / sd is ~N(0, 1) per entry:
    # max |z| < 5 over 416 entries, and mean(z^2) = 1 within 5 * sqrt(2 / 416).
    g = torch.Generator().manual_seed(21)
    P, lr, dw = 2000, 0.01, 0.001
    x = 2 * torch.rand(P, COLS, generator=g) - 1
    d = 0.1 * (2 * torch.rand(P, ROWS, generator=g) - 1)
    d[3] = 0.0  # a zero error vector changes nothing
    ideal = rpuhw.open_array("ideal", ROWS, COLS)
    assert ideal.nominal_step() == dw
    per = Periphery(ideal, PeripheryConfig(update_management=um), seed=4, engine=engine)
    px, pd = per.probabilities(x, d, lr=lr)
    assert float(px.max()) < 1 and float(pd.max()) < 1  # no clipping: identity is exact
    per.update(x, d, lr=lr)
    assert per.stats.updates == P and per.stats.update_calls == 1
    dW = ideal.read().double()
    expected = -lr * d.double().T @ x.double()
    q = pd.double()[:, :, None] * px.double()[:, None, :]  # [P, rows, cols]
    sd = dw * torch.sqrt((10 * q * (1 - q)).sum(dim=0))
    z = (dW - expected) / sd
    assert z.abs().max() < Z
    assert abs(float((z**2).mean()) - 1) < Z * math.sqrt(2 / z.numel())


# ---- engines, reproducibility, packing ------------------------------------------------
@pytest.mark.parametrize("engine", ENGINES)
def test_seeded_runs_are_reproducible(engine):
    g = torch.Generator().manual_seed(0)
    x, d = torch.randn(40, COLS, generator=g), 1e-2 * torch.randn(40, ROWS, generator=g)

    def run(seed):
        per = Periphery(IdealArray(ROWS, COLS), seed=seed, engine=engine)
        return per.encode_bits(x, d) + per.encode_bits(x, d)

    a, b, c = run(3), run(3), run(4)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0], a[2])  # successive calls draw fresh bits

    def trained(seed):
        sim = rpuhw.open_array("sim", ROWS, COLS, seed=9)
        per = Periphery(sim, seed=seed, engine=engine)
        per.update(x, d, lr=0.05)
        return sim.read()

    assert torch.equal(trained(1), trained(1))


@pytest.mark.skipif(not HAVE_NUMBA, reason="no numba")
def test_packed_encoder_independent_of_threads_and_consistent_with_bits():
    import numba
    import numpy as np

    from rpuhw.periphery.encode import encode_kernel, encode_kernel_serial

    g = torch.Generator().manual_seed(1)
    x, d = torch.randn(300, COLS, generator=g), 1e-2 * torch.randn(300, ROWS, generator=g)
    # parallel kernel on 1 and on all threads, and the serial kernel: bit-identical
    ax = (2 * torch.rand(1000, COLS, generator=g) - 1).numpy()
    ad = (2 * torch.rand(1000, ROWS, generator=g) - 1).numpy()
    def run(kernel):
        out = [np.empty((1000, n), np.uint64) for n in (COLS, COLS, ROWS, ROWS)]
        kernel(ax, ad, 31, np.uint64(12345), *out)
        return out

    n0 = numba.get_num_threads()
    try:
        outs = []
        for n in sorted({1, n0}):
            numba.set_num_threads(n)
            outs.append(run(encode_kernel))
    finally:
        numba.set_num_threads(n0)
    outs.append(run(encode_kernel_serial))
    for out in outs[1:]:
        assert all((a == b).all() for a, b in zip(out, outs[0], strict=True))
    assert int((outs[0][0] >> np.uint64(31)).max()) == 0  # no bits beyond BL
    # the periphery's packed and int8 outputs are the same bits for the same seed
    cfg = PeripheryConfig(bl=31)
    pb = Periphery(IdealArray(ROWS, COLS), cfg, seed=8).encode(x, d)
    assert isinstance(pb, PackedBits) and pb.bl == 31 and pb.n_updates == 300
    xb, db = Periphery(IdealArray(ROWS, COLS), cfg, seed=8).encode_bits(x, d)
    xu, du = pb.to_bits()
    assert torch.equal(xb, xu) and torch.equal(db, du)


def test_update_passes_packed_bits_or_int8_bits():
    seen = []

    class Spy(IdealArray):
        def update(self, x_bits, d_bits=None):
            seen.append(type(x_bits).__name__ if d_bits is None else "int8")
            return super().update(x_bits, d_bits)

    x, d = torch.randn(3, COLS), torch.randn(3, ROWS)
    Periphery(Spy(ROWS, COLS), engine="torch").update(x, d)
    Periphery(Spy(ROWS, COLS), PeripheryConfig(bl=70)).update(x, d)
    assert seen[:2] == ["int8", "int8"]
    if HAVE_NUMBA:
        Periphery(Spy(ROWS, COLS)).update(x, d)
        assert seen[2] == "PackedBits"


def test_long_pulse_trains_fall_back_to_int8_bits():
    per = Periphery(IdealArray(ROWS, COLS), PeripheryConfig(bl=100), seed=0)
    x, d = torch.rand(5, COLS), torch.rand(5, ROWS)
    xb, db = per.encode_bits(x, d)
    assert xb.shape == (5, 100, COLS) and db.shape == (5, 100, ROWS)
    with pytest.raises(ValueError, match="encode_bits"):
        per.encode(x, d)
    per.update(x, d)  # BL 100 goes through int8 bits
    assert per.array.read().abs().sum() > 0


# ---- input validation -----------------------------------------------------------------
def test_bad_inputs_raise_and_change_nothing():
    sim = rpuhw.open_array("sim", ROWS, COLS, seed=2)
    sim.set_weights(0.1 * torch.ones(ROWS, COLS))
    per = Periphery(sim, seed=0)
    w0, rng0, gen0 = sim.read(), per.rng_state(), sim.state_dict()
    seeds0 = (rng0["seeds"], gen0["seeds"])
    stats0 = dict(vars(per.stats))
    x, d = torch.rand(4, COLS), torch.rand(4, ROWS)
    nan_x = x.clone()
    nan_x[1, 2] = float("nan")
    inf_d = d.clone()
    inf_d[0, 0] = float("inf")
    cases = [
        (per.forward, (torch.rand(4, COLS - 1),), r"expected shape \[N, 26\], got \[4, 25\]"),
        (per.forward, (torch.rand(COLS),), "expected shape"),
        (per.forward, (torch.ones(4, COLS, dtype=torch.int64),), "floating-point"),
        (per.forward, (nan_x,), "non-finite"),
        (per.forward, ([[0.0] * COLS],), "torch.Tensor"),
        (per.backward, (torch.rand(4, COLS),), r"expected shape \[N, 16\], got \[4, 26\]"),
        (per.backward, (inf_d,), "non-finite"),
        (per.update, (x, torch.rand(4, ROWS + 1)), r"expected shape \[N, 16\]"),
        (per.update, (nan_x, d), "non-finite"),
        (per.update, (x, inf_d), "non-finite"),
        (per.update, (x, torch.rand(3, ROWS)), "same number of update vectors"),
        (per.update, (x.to(torch.int32), d), "floating-point"),
        (per.update, (x, d, -0.1), "lr"),
        (per.update, (x, d, float("nan")), "lr"),
        (per.encode, (x, d[:, :3]), "expected shape"),
        (per.encode_bits, (x, nan_x[:, :ROWS]), "non-finite"),
    ]
    for fn, args, match in cases:
        with pytest.raises(ValueError, match=match):
            fn(*args)
    assert torch.equal(sim.read(), w0)
    rng1, gen1 = per.rng_state(), sim.state_dict()
    assert torch.equal(rng1["gen"], rng0["gen"]) and torch.equal(gen1["rng"], gen0["rng"])
    assert (rng1["seeds"], gen1["seeds"]) == seeds0  # no seed consumed by a bad call
    assert dict(vars(per.stats)) == stats0
    # the generic path (a backend without the managed MVM): a nan row must not pass
    # for an all-zero row under noise management
    ideal = Periphery(IdealArray(ROWS, COLS))
    for fn, bad in ((ideal.forward, nan_x), (ideal.backward, inf_d)):
        with pytest.raises(ValueError, match="non-finite"):
            fn(bad)
    assert ideal.stats.forward_calls == 0 and ideal.stats.backward_calls == 0
    with pytest.raises(ValueError, match="CrossPointArray"):
        Periphery("sim")
    with pytest.raises(ValueError, match="engine"):
        Periphery(sim, engine="gpu")


# ---- README ---------------------------------------------------------------------------
def test_readme_example_runs(capsys):
    # copied verbatim from README.md ("Python in ten lines")
    import torch, rpuhw  # noqa: E401, I001, F811
    from rpuhw.periphery import Periphery  # noqa: F811

    array = rpuhw.open_array("sim", rows=16, cols=26, seed=0)   # or "sim:my_device.yaml"
    per = Periphery(array)                                       # NM, BM, UM on (paper)
    x, d = torch.rand(8, 26) - 0.5, 1e-3 * torch.randn(8, 16)
    y = per.forward(x)               # noise- and bound-managed analog MVM
    z = per.backward(d)              # transposed MVM
    per.update(x, d, lr=0.01)        # stochastic pulse trains, BL 10, exact device response
    print(array.read()[:2, :4])

    assert y.shape == (8, 16) and z.shape == (8, 26)
    assert "tensor" in capsys.readouterr().out
