"""``pair:SPEC`` (rpuhw.pair): a G+/G- pair of one-directional devices with refresh.

The contract itself is tests/test_conformance.py's (case ``pair-sim``); here: that every
training pulse potentiates one device of the pair, that an update is the pulses its
bits ask for, the refresh rule, state and the spec's errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conformance import _pair_sim  # tests/ is on sys.path

from rpuhw import open_array
from rpuhw.errors import ConfigError
from rpuhw.pair import OneSidedPair, RefreshConfig
from rpuhw.train import TrainConfig, train

ROWS, COLS = 6, 7
DW = 0.001  # the default device's dw_min


def _pair(seed: int = 0, refresh: RefreshConfig | None = None) -> OneSidedPair:
    """The conformance suite's pair (constant-step devices without a spread of their
    bounds, exact reads)."""
    return _pair_sim(ROWS, COLS, seed, refresh)


def _bits(rng: np.random.Generator, p: int, bl: int, n: int) -> torch.Tensor:
    return torch.from_numpy(rng.integers(-1, 2, size=(p, bl, n)).astype(np.int8))


def test_training_pulses_only_potentiate():
    """Random mixed-sign updates and pulses: neither device of any pair ever goes down
    (a potentiating pulse of the default device moves it by dw [1 + 0.3 xi]_+ >= 0), and
    the weight moves up only where g+ was pulsed."""
    pair = _pair(refresh=RefreshConfig(refresh_every=0))
    rng = np.random.default_rng(0)
    for k in range(20):
        gp, gm = pair.plus.read(), pair.minus.read()
        if k % 2:
            pair.update(_bits(rng, 3, 5, COLS), _bits(rng, 3, 5, ROWS))
        else:
            counts = torch.from_numpy(rng.integers(-4, 5, size=(ROWS, COLS)).astype(np.int32))
            pair.pulse(counts)
            assert torch.equal(pair.plus.read()[counts <= 0], gp[counts <= 0])
            assert torch.equal(pair.minus.read()[counts >= 0], gm[counts >= 0])
        assert (pair.plus.read() >= gp).all() and (pair.minus.read() >= gm).all()
    assert pair.updates == 20


def test_update_is_the_pulses_its_bits_ask_for():
    """update(x, d) on a pair = for each update p, g+ pulsed once per slot whose bits
    multiply to +1 and g- once per slot at -1 (counted here in numpy), on a twin pair
    with the same seeds."""
    rng = np.random.default_rng(1)
    x, d = _bits(rng, 4, 6, COLS), _bits(rng, 4, 6, ROWS)
    a = _pair(seed=3, refresh=RefreshConfig(refresh_every=0))
    b = _pair(seed=3, refresh=RefreshConfig(refresh_every=0))
    a.update(x, d)
    xn, dn = x.numpy().astype(np.int64), d.numpy().astype(np.int64)
    for p in range(x.shape[0]):
        prod = dn[p][:, :, None] * xn[p][:, None, :]  # [BL, rows, cols]
        up, down = (prod == 1).sum(0), (prod == -1).sum(0)
        if up.any():
            b.plus.pulse(torch.from_numpy(up.astype(np.int32)))
        if down.any():
            b.minus.pulse(torch.from_numpy(down.astype(np.int32)))
    assert torch.equal(a.plus.read(), b.plus.read())
    assert torch.equal(a.minus.read(), b.minus.read())
    assert a.read().abs().max() > 0


def test_refresh_keeps_the_weight_and_frees_headroom():
    """Pairs with both devices high are refreshed (the weight kept within the
    write-verify tolerance, the smaller device back at its lower bound); the others are
    not touched at all."""
    pair = _pair(refresh=RefreshConfig(refresh_every=0))
    lo, span = pair.w_lo, pair.w_hi - pair.w_lo
    gp = torch.full((ROWS, COLS), lo + 0.9 * span)
    gm = torch.full((ROWS, COLS), lo + 0.6 * span)
    gm[:3] = lo + 0.1 * span  # rows 0-2: the smaller device is low, not due
    pair.plus.set_weights(gp)
    pair.minus.set_weights(gm)
    w0, p0, m0 = pair.read(), pair.plus.read(), pair.minus.read()
    due = pair.due(p0, m0)
    assert due[3:].all() and not due[:3].any()
    assert pair.refresh_now() == 3 * COLS
    tol = pair.refresh.refresh_tol_steps * DW
    # write-verify treats a device whose step is below 10 % of the nominal one as not
    # responding (CrossPointArray.program); the simulator draws such steps with
    # probability P(1 + 0.3 xi < 0.1) = 1.3e-3 per direction and device (84 devices here)
    slow = torch.zeros(ROWS, COLS, dtype=torch.bool)
    for half in (pair.plus, pair.minus):
        slow |= torch.minimum(half.state["dw_up"], half.state["dw_down"]) < 0.1 * DW
    assert slow.sum() <= 2
    ok = ~slow[3:]
    # each half converges to within tol (the reads are exact), so the weight to 2 tol
    assert ((pair.read() - w0)[3:].abs() <= 2 * tol)[ok].all()
    assert ((pair.minus.read()[3:] - lo).abs() <= tol)[ok].all()
    assert (pair.plus.read()[3:] < p0[3:] - 0.25 * span)[ok].all()  # headroom came back
    assert torch.equal(pair.plus.read()[:3], p0[:3])
    assert torch.equal(pair.minus.read()[:3], m0[:3])
    assert pair.refreshed == 3 * COLS and pair.stats()["refreshed"] == 3 * COLS


def test_refresh_runs_every_refresh_every_updates():
    pair = _pair(refresh=RefreshConfig(refresh_every=3))
    lo, span = pair.w_lo, pair.w_hi - pair.w_lo
    pair.plus.set_weights(torch.full((ROWS, COLS), lo + 0.9 * span))
    pair.minus.set_weights(torch.full((ROWS, COLS), lo + 0.5 * span))
    one = torch.zeros(ROWS, COLS, dtype=torch.int32)
    one[0, 0] = 1
    pair.pulse(one)
    pair.pulse(one)
    assert pair.refreshed == 0
    pair.pulse(one)
    assert pair.refreshed == ROWS * COLS


def test_program_mask_leaves_other_devices_alone():
    arr = open_array("sim", ROWS, COLS, seed=0)
    before = arr.read()
    mask = torch.zeros(ROWS, COLS, dtype=torch.bool)
    mask[1, 2] = mask[4, 5] = True
    rep = arr.program(torch.full((ROWS, COLS), 0.05), tol=0.005, mask=mask)
    after = arr.read()
    assert torch.equal(after[~mask], before[~mask])
    assert ((after[mask] - 0.05).abs() <= 0.005).all() and rep.converged
    with pytest.raises(ValueError, match="mask"):
        arr.program(torch.zeros(ROWS, COLS), mask=torch.zeros(ROWS, COLS))


def test_state_dict_round_trip_continues_identically():
    a = _pair(seed=5)
    rng = np.random.default_rng(2)
    a.update(_bits(rng, 2, 4, COLS), _bits(rng, 2, 4, ROWS))
    b = _pair(seed=9)
    b.load_state_dict(a.state_dict())
    assert b.updates == a.updates
    x, d = _bits(rng, 3, 4, COLS), _bits(rng, 3, 4, ROWS)
    a.update(x, d)
    b.update(x, d)
    assert torch.equal(a.read(), b.read())
    with pytest.raises(ValueError, match="plus"):
        b.load_state_dict({"weights": a.read()})


@pytest.mark.parametrize("spec, match", [
    ("pair:", "needs the spec of its devices"),
    ("pair:pair:sim", "pair of pairs"),
    ("pair:ideal", "does not know its device bounds"),
    ("pair:sim:nonsense", "neither a device YAML"),
])
def test_bad_specs_name_the_problem(spec, match):
    with pytest.raises(ConfigError, match=match):
        open_array(spec, 2, 3)


def test_pcm_pair_spec_opens_at_zero_with_the_pair_range():
    pair = open_array("pair:sim:preset:PCM", 3, 4, seed=1)
    assert isinstance(pair, OneSidedPair)
    assert torch.equal(pair.read(), torch.zeros(3, 4))  # PCM: w_min 0 on every device
    info = pair.info()
    assert (info.w_min, info.w_max, info.dw_min) == (-2.0, 2.0, 0.01)


def test_training_on_a_pair_resumes_to_the_same_numbers(tmp_path):
    """A run on ``pair:sim:preset:PCM`` with ``mp`` (pulses through the pair, refreshes)
    checkpoints the pair's state: stopped after one epoch and resumed, it ends as an
    uninterrupted run."""
    cfg = dict(backend="pair:sim:preset:PCM", algorithm="mp", train_limit=20,
               test_limit=10, seed=2, progress=False)
    ref = train(TrainConfig(**cfg, epochs=2), log=lambda *_: None)
    ck = str(tmp_path / "ck")
    train(TrainConfig(**cfg, epochs=1, checkpoint=ck), log=lambda *_: None)
    out = tmp_path / "r.json"
    res = train(TrainConfig(**cfg, epochs=2, checkpoint=ck, out=str(out)), resume=True,
                log=lambda *_: None)
    assert res["test_error"] == ref["test_error"]
    assert res["train_loss"] == ref["train_loss"]
    assert json.loads(out.read_text())["test_error"] == ref["test_error"]
