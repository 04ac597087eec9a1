"""The scheduler (rpuhw.schedule): tiling, devices per weight, granularity, call counts.

Most checks run on the exact ``ideal`` backend (y = W x exactly; each pulse is exactly
±dw = 0.001) with the periphery's management off, so results are compared with torch
up to float32 rounding. Statistical checks use fixed seeds; each tolerance is derived
from the sampling error next to it.

Pulse arithmetic used throughout: with update management off, the periphery's gain is
C = sqrt(lr / (BL dw)); with lr = BL dw = 0.01 (BL = 10, dw = 0.001) C = 1, so a line
with value v fires in each of the BL slots with probability |v| and a device (i, j)
gets a coincidence with probability q = |x_j d_i| per slot, each moving it by
-dw sign(d_i x_j). Hence E[dW_ij] = -lr sum_p d_pi x_pj and
Var[dW_ij] = dw^2 BL sum_p q_p (1 - q_p); with |x| = |d| = 1 every slot fires and the
update is deterministic: dW = -lr d^T x exactly.
"""

from __future__ import annotations

import math
from collections import defaultdict

import pytest
import torch
from plans import BL, DW, LR, exact, ideal_plan

from rpuhw.errors import ConfigError
from rpuhw.ideal import IdealArray
from rpuhw.periphery.bits import PackedBits
from rpuhw.schedule import LayerPlan, TileGrid, _splits
from rpuhw.sim.array import SimulatedArray


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def uniform(*shape, seed: int, lo=-1.0, hi=1.0) -> torch.Tensor:
    return torch.empty(*shape).uniform_(lo, hi, generator=gen(seed))


def dw_grid(*shape, seed: int, scale=0.3) -> torch.Tensor:
    """Weights on the ideal array's grid (multiples of dw)."""
    return torch.round(uniform(*shape, seed=seed) * scale / DW) * DW


def n_updates(arg) -> int:
    return arg.n_updates if isinstance(arg, PackedBits) else arg.shape[0]


@pytest.fixture
def calls(monkeypatch):
    """Count (and record the arguments of) every IdealArray contract call."""
    log: dict[str, list] = defaultdict(list)
    for name in ("forward", "backward", "update", "pulse", "read"):
        orig = getattr(IdealArray, name)

        def spy(self, *args, _orig=orig, _name=name, **kw):
            log[_name].append((self, args))
            return _orig(self, *args, **kw)

        monkeypatch.setattr(IdealArray, name, spy)
    return log


# ---- splitting and tile shapes ---------------------------------------------------------
def test_splits_are_consecutive_and_bounded():
    for n in (1, 7, 64, 65, 128, 513):
        for most in (None, 1, 7, 64):
            parts = _splits(n, most)
            assert parts[0][0] == 0 and parts[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
            sizes = [b - a for a, b in parts]
            assert most is None or max(sizes) <= most
            assert max(sizes) - min(sizes) <= 1  # nearly equal chunks
            assert len(parts) == (1 if most is None else -(-n // most))


def test_128x513_on_64x64_arrays_is_a_2x9_grid():
    grid = TileGrid(128, 513, ideal_plan(max_rows=64, max_cols=64), seed=0)
    assert len(grid.tiles) == 2 and all(len(row) == 9 for row in grid.tiles)
    assert all(a.rows <= 64 and a.cols <= 64 for a in grid.arrays)
    assert sum(p.array.rows for p in (row[0] for row in grid.tiles)) == 128
    assert sum(p.array.cols for p in grid.tiles[0]) == 513
    assert all(isinstance(a, IdealArray) for a in grid.arrays)


def test_plan_validation_names_the_key():
    for kw, key in (({"devices_per_weight": 0}, "devices_per_weight"),
                    ({"max_rows": 0}, "max_rows"), ({"granularity": "epoch"}, "granularity")):
        with pytest.raises(ConfigError, match=key):
            TileGrid(4, 4, LayerPlan(backend="ideal", **kw))
    with pytest.raises(ConfigError, match="management"):
        LayerPlan.management("everything")
    pm = LayerPlan.management("nm+bm")
    assert (pm.noise_management, pm.bound_management, pm.update_management) == (True, True,
                                                                                  False)


# ---- tiled cycles equal the untiled ones -------------------------------------------------
@pytest.mark.parametrize("nm", [False, True])
def test_tiled_forward_backward_read_equal_untiled(nm):
    w = dw_grid(128, 513, seed=1, scale=0.1)
    per = exact(noise_management=nm)
    one = TileGrid(128, 513, ideal_plan(periphery=per), seed=0)
    tiled = TileGrid(128, 513, ideal_plan(max_rows=64, max_cols=64, periphery=per), seed=0)
    for g in (one, tiled):
        g.set_weights(w)
    # read() reassembles the tiles into the logical matrix; the ideal array has no direct
    # set_weights, so weights are write-verified to within the program tolerance 2 dw
    # (device by device, hence identically in both layouts)
    assert float((tiled.read() - w).abs().max()) <= 2 * DW + 1e-6
    assert torch.equal(tiled.read(), one.read())
    w = one.read()
    x = uniform(20, 513, seed=2)
    d = uniform(20, 128, seed=3)
    # sums of 513 float32 products in another order: rounding ~1e-6 relative
    assert torch.allclose(tiled.forward(x), x @ w.T, atol=1e-4, rtol=1e-5)
    assert torch.allclose(tiled.forward(x), one.forward(x), atol=1e-4, rtol=1e-5)
    assert torch.allclose(tiled.backward(d), d @ w, atol=1e-4, rtol=1e-5)
    assert torch.allclose(tiled.backward(d), one.backward(d), atol=1e-4, rtol=1e-5)


def test_set_weights_programs_ideal_within_tolerance():
    """Arbitrary (off-grid) weights are write-verified to within the program tolerance."""
    w = uniform(10, 30, seed=4, lo=-0.4, hi=0.4)
    grid = TileGrid(10, 30, ideal_plan(max_rows=4, max_cols=8), seed=0)
    grid.set_weights(w)
    assert float((grid.read() - w).abs().max()) <= 2 * DW + 1e-7


# ---- updates: deterministic when every slot fires ----------------------------------------
@pytest.mark.parametrize("kw", [{}, {"max_rows": 3, "max_cols": 4},
                                {"devices_per_weight": 3},
                                {"devices_per_weight": 3, "max_rows": 5, "max_cols": 4}])
def test_position_update_with_certain_pulses_is_exact(kw):
    """|x| = |d| = 1 (and zeros) fire every slot: dW = -lr sum_p d_p x_p^T exactly."""
    out, inp, p = 7, 9, 12
    grid = TileGrid(out, inp, ideal_plan(**kw), seed=0)
    w0 = dw_grid(out, inp, seed=5)
    grid.set_weights(w0)
    x = torch.sign(uniform(p, inp, seed=6)) * (uniform(p, inp, seed=7) > -0.6)  # some zeros
    d = torch.sign(uniform(p, out, seed=8))
    grid.update(x, d, LR)
    assert torch.allclose(grid.read() - w0, -LR * d.T @ x, atol=1e-5)
    if grid.k > 1:  # every copy changed by the same amount
        phys = torch.cat([torch.cat([q.array.read() for q in row], 1) for row in grid.tiles])
        copies = phys.view(grid.k, out, inp)
        for c in copies:
            assert torch.allclose(c - w0, -LR * d.T @ x, atol=1e-5)


@pytest.mark.parametrize("um", [False, True])
def test_position_update_mean_and_variance_match_binomial(um):
    """Stochastic pulses: per device z = (dW - E) / sd with the binomial variance of the
    coincidence count (see module docstring). Each line keeps one sign (random magnitudes)
    so that |E| ~ 1 is ~40 sd: a gain error of a few per cent shifts every z the same way.
    A device's count is correlated (rho = E[p_d(1-p_d)] E[p_x]^2 / E[q(1-q)] = 0.3) with the
    others in its row and column (shared bit streams). So: max |z| < 5 over 160 devices
    (normal tail 5.7e-7 each; over 300 seeds the largest was 4.4); mean z^2 in 0.3..2.5
    (correlations widen it beyond the chi^2 standard error sqrt(2/160) = 0.11: sd 0.22
    over 300 seeds, range 0.56..2.13); |mean(z sign E)| < 1.25, since the mean of 160 z
    has sd sqrt((1 + 19 * 0.3 + 7 * 0.3) / 160) = 0.23 (0.236 over 300 seeds) and 1.25 is
    5 sd, while a 5 % gain error shifts it by ~2 (caught)."""
    out, inp, p = 8, 20, 400
    grid = TileGrid(out, inp, ideal_plan(periphery=exact(update_management=um)), seed=3)
    x = uniform(p, inp, seed=10, lo=0) * torch.sign(uniform(inp, seed=30))
    d = uniform(p, out, seed=11, lo=0) * torch.sign(uniform(out, seed=31))
    grid.update(x, d, LR)
    dw = grid.read()
    expect = -LR * d.T @ x
    q = d.abs().T[:, None, :] * x.abs().T[None, :, :]  # [out, in, P]
    var = DW**2 * BL * (q * (1 - q)).sum(-1)
    assert float((expect.abs() / var.sqrt()).min()) > 20
    z = (dw - expect) / var.sqrt()
    assert float(z.abs().max()) < 5.0
    assert 0.3 < float(z.pow(2).mean()) < 2.5
    assert abs(float((z * expect.sign()).mean())) < 1.25


def test_k_copies_get_the_same_pulses_on_ideal():
    """Stochastic update (p < 1): on an exact array identical pulses give identical changes;
    independently drawn pulse trains would differ in almost every device."""
    out, inp, k = 6, 10, 3
    grid = TileGrid(out, inp, ideal_plan(devices_per_weight=k, max_rows=7), seed=1)
    grid.update(uniform(30, inp, seed=12), uniform(30, out, seed=13), LR)
    phys = torch.cat([row[0].array.read() for row in grid.tiles]).view(k, out, inp)
    assert float(phys[0].abs().sum()) > 0
    assert torch.equal(phys[0], phys[1]) and torch.equal(phys[0], phys[2])


def test_k_copies_average_in_forward_backward_read():
    """Give the 3 copies different weights: outputs are their mean, not one copy's."""
    out, inp, k = 4, 6, 3
    grid = TileGrid(out, inp, ideal_plan(devices_per_weight=k), seed=0)
    base = dw_grid(out, inp, seed=14)
    shift = dw_grid(out, inp, seed=15)
    arr = grid.arrays[0]
    assert arr.shape == (k * out, inp)
    arr.weights.copy_(torch.cat([base + c * shift for c in range(k)]))
    mean = base + shift  # (0 + 1 + 2) / 3
    x, d = uniform(5, inp, seed=16), uniform(5, out, seed=17)
    assert torch.allclose(grid.read(), mean, atol=1e-6)
    assert torch.allclose(grid.forward(x), x @ mean.T, atol=1e-5)
    assert torch.allclose(grid.backward(d), d @ mean, atol=1e-5)


def test_k_copies_on_ideal_equal_single_device():
    w = dw_grid(5, 9, seed=18)
    one = TileGrid(5, 9, ideal_plan(), seed=0)
    three = TileGrid(5, 9, ideal_plan(devices_per_weight=3, max_rows=4, max_cols=5), seed=0)
    for g in (one, three):
        g.set_weights(w)
    assert torch.allclose(three.read(), one.read(), atol=1e-7)  # mean of 3 equal copies
    x, d = uniform(7, 9, seed=19), uniform(7, 5, seed=20)
    assert torch.allclose(three.forward(x), one.forward(x), atol=1e-6)
    assert torch.allclose(three.backward(d), one.backward(d), atol=1e-6)


def test_k_copies_on_sim_differ_by_cycle_to_cycle_noise_only(tmp_path):
    """On a simulated device without device-to-device spread, K = 3 copies that get the
    same pulses differ only by cycle-to-cycle noise: with n coincidences each copy's change
    has c2c variance n (sigma dw)^2, so Var(copy0 - copy1) = 2 sigma^2 dw^2 n_mean, with
    n_mean = -mean(dW) / dw measured (the c2c noise averages out of it). 1024 independent
    differences estimate a variance to sqrt(2/1023) = 4.4 % (plus ~2 % from n varying over
    devices), so +-25 % is > 5 standard errors. Independent pulse trains per copy would add
    2 Var(n) dw^2 = 2 n (1 - q) dw^2 with q = 1/4: a ratio of 1 + 0.75/0.09 = 9."""
    sigma = 0.3
    yaml = tmp_path / "c2c_only.yaml"
    yaml.write_text(f"model: constant_step\ndw_min: {DW}\ndw_min_std: {sigma}\n"
                    "dw_min_dtod: 0\nup_down_dtod: 0\nw_min_dtod: 0\nw_max_dtod: 0\n")
    out, inp, k, p = 32, 32, 3, 20
    grid = TileGrid(out, inp, LayerPlan(backend=f"sim:{yaml}", devices_per_weight=k,
                                        periphery=exact()), seed=4)
    assert isinstance(grid.arrays[0], SimulatedArray)
    x = torch.full((p, inp), 0.5)
    d = torch.full((p, out), 0.5)  # q = 1/4, E[n] = P BL q = 50 coincidences
    before = grid.arrays[0].read()
    grid.update(x, d, LR)
    change = (grid.arrays[0].read() - before).view(k, out, inp)
    n_mean = -float(change.mean()) / DW
    assert 40 < n_mean < 60  # E = 50, sd of the mean well below 1
    ratio = float((change[0] - change[1]).var()) / (2 * sigma**2 * DW**2 * n_mean)
    assert 0.75 < ratio < 1.25, ratio


# ---- aggregated granularities --------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3])
def test_batch_granularity_is_stochastic_rounding(k):
    """batch: counts = stochastic round(-lr d^T x / dw): each weight is within one dw of
    the exact SGD change, an integer number of steps away from the start."""
    out, inp = 6, 11
    grid = TileGrid(out, inp, ideal_plan(granularity="batch", devices_per_weight=k,
                                         max_cols=5), seed=2)
    x, d = uniform(40, inp, seed=21), uniform(40, out, seed=22)
    grid.update(x, d, 0.003)
    dw = grid.read()
    target = -0.003 * d.T @ x
    assert float((dw - target).abs().max()) < DW
    steps = dw / DW
    assert torch.allclose(steps, steps.round(), atol=1e-3)


def test_sample_granularity_rounds_each_image(calls):
    """sample: one rounding (one pulse call per tile) per image: the change is the sum of
    per-image floors plus 0..images extra steps."""
    out, inp, images, per_img = 5, 8, 4, 6
    grid = TileGrid(out, inp, ideal_plan(granularity="sample", max_rows=3), seed=2)
    calls.clear()
    x, d = uniform(images * per_img, inp, seed=23), uniform(images * per_img, out, seed=24)
    grid.update(x, d, 0.003, images=images)
    assert len(calls["pulse"]) == images * len(grid.arrays)
    assert not calls["update"]
    floors = sum(torch.floor(-0.003 * dg.T @ xg / DW)
                 for xg, dg in zip(x.chunk(images), d.chunk(images), strict=True))
    extra = grid.read() / DW - floors
    assert torch.allclose(extra, extra.round(), atol=1e-3)
    assert float(extra.round().min()) >= 0 and float(extra.round().max()) <= images


def test_position_and_batch_agree_in_expectation():
    """R = 100 repetitions of the same (x, d): both granularities accumulate changes whose
    expectation is R * (-lr d^T x). Per device the difference has variance
    R (dw^2 BL sum_p q (1 - q)) (position) + R dw^2 f (1 - f) (batch rounding, f the
    fractional part); |z| < 5 for all 40 devices (normal tail 5.7e-7 each; the devices'
    correlations through shared bit streams make the maximum's tail a little heavier)."""
    out, inp, p, reps = 4, 10, 8, 100
    x, d = uniform(p, inp, seed=25), uniform(p, out, seed=26)
    pos = TileGrid(out, inp, ideal_plan(), seed=5)
    bat = TileGrid(out, inp, ideal_plan(granularity="batch"), seed=6)
    for _ in range(reps):
        pos.update(x, d, LR)
        bat.update(x, d, LR)
    target = -LR * d.T @ x
    q = d.abs().T[:, None, :] * x.abs().T[None, :, :]
    f = target / DW - torch.floor(target / DW)
    var = reps * DW**2 * (BL * (q * (1 - q)).sum(-1) + f * (1 - f))
    z = (pos.read() - bat.read()) / var.sqrt()
    assert float(z.abs().max()) < 5.0
    # and each against the exact expectation
    assert float(((bat.read() - reps * target).abs() / (DW * math.sqrt(reps) / 2)).max()) < 4.5


# ---- call counts -------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["position", "sample", "batch"])
def test_one_call_per_tile_for_a_whole_batch(calls, granularity):
    grid = TileGrid(9, 20, ideal_plan(max_rows=5, max_cols=8, granularity=granularity,
                                      periphery=exact(noise_management=True,
                                                      bound_management=True)), seed=0)
    grid.set_weights(dw_grid(9, 20, seed=27, scale=0.05))
    tiles = len(grid.arrays)
    assert tiles == 2 * 3
    calls.clear()
    n = 150  # e.g. 6 images x 25 output positions of a conv layer
    grid.forward(uniform(n, 20, seed=28))
    grid.backward(uniform(n, 9, seed=29))
    assert len(calls["forward"]) == tiles and len(calls["backward"]) == tiles
    assert all(args[0].shape[0] == n for _, args in calls["forward"])
    grid.update(uniform(n, 20, seed=30), uniform(n, 9, seed=31), LR, images=6)
    if granularity == "position":
        assert len(calls["update"]) == tiles and not calls["pulse"]
        assert all(n_updates(args[0]) == n for _, args in calls["update"])
        assert {id(a) for a, _ in calls["update"]} == {id(a) for a in grid.arrays}
    else:
        per_tile = 6 if granularity == "sample" else 1
        assert len(calls["pulse"]) == per_tile * tiles and not calls["update"]
    assert not calls["read"]
