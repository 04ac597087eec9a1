"""Training algorithms (rpuhw.algorithms): sgd unchanged, mp, tt, ttv2, cttv2 and agad
against step-by-step numpy references on tiny ideal arrays, properties (chopper, decay,
symmetry-point centring), selection, bad input, resume."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from kill_run import kill_after_checkpoints

import rpuhw.train as train_mod
from rpuhw.cli import main
from rpuhw.errors import ConfigError
from rpuhw.ideal import IdealArray
from rpuhw.nn import AnalogLinear, analog_layers
from rpuhw.periphery import Periphery
from rpuhw.schedule import LayerPlan, TileGrid
from rpuhw.train import TrainConfig, train

DW = 0.001  # the ideal backend's exact step (weight units)


def _ref_fast_lr(p, m: dict, x: torch.Tensor, d: torch.Tensor, lr: float, g: float,
                 bl: int) -> float:
    """A's learning rate for one step, from the description of ``auto_scale``: running
    means (``auto_momentum``, the first step sets them) of each vector's max|x|, max|d|;
    ``fast_lr BL g / (m_x m_d)``; ``fast_lr x lr`` without it (``m`` keeps the means)."""
    scale = (not p.auto_scale) if p.scale_fast_lr is None else p.scale_fast_lr
    eta = p.fast_lr * lr if scale else p.fast_lr
    if not p.auto_scale:
        return eta
    mx, md = float(x.abs().amax(dim=1).mean()), float(d.abs().amax(dim=1).mean())
    a = p.auto_momentum
    m["x"] = mx if "x" not in m else a * m["x"] + (1 - a) * mx
    m["d"] = md if "d" not in m else a * m["d"] + (1 - a) * md
    return eta * bl * g / (m["x"] * m["d"])


def _ideal_layer(alg: str, params: dict | None = None, in_f: int = 3, out_f: int = 2,
                 **plan_kw) -> AnalogLinear:
    plan = LayerPlan(backend="ideal", algorithm=alg, algorithm_params=params or {},
                     **plan_kw)
    return AnalogLinear(in_f, out_f, plan=plan, seed=5)


# ---- sgd: bit for bit what the layer did before algorithms -----------------------------
def test_sgd_layer_is_its_tile_grid_driven_directly():
    """The default layer (sgd) gives exactly the numbers of a TileGrid driven by hand as
    the layer did before algorithms existed (forward, backward, update with the layer's
    seed), on the stochastic simulator with 2 x 2 tiles."""
    torch.manual_seed(0)
    plan = LayerPlan(backend="sim", max_rows=3, max_cols=4)
    layer = AnalogLinear(6, 5, plan=plan, seed=11)
    grid = TileGrid(5, 7, LayerPlan(backend="sim", max_rows=3, max_cols=4), seed=11)
    grid.set_weights(layer.grid.read())  # same start (sim: set directly)
    for _ in range(3):
        x = torch.randn(4, 6)
        y = layer(x.requires_grad_())
        g = torch.randn_like(y)
        y.backward(g)
        layer.apply_update(0.05)
        xb = torch.cat([x.detach(), torch.ones(4, 1)], 1)
        assert torch.equal(y.detach(), grid.forward(xb))
        grid.backward(g)
        grid.update(xb, g, 0.05, images=4)
        assert torch.equal(layer.grid.read(), grid.read())


def test_sgd_explicit_equals_default_run(tmp_path):
    """``algorithm: sgd`` is the default: a fixed-seed run gives the same weights and
    numbers with and without it."""
    cfg = dict(backend="sim", train_limit=12, test_limit=10, epochs=1, seed=4,
               progress=False)
    got = {}

    def keep(tag):
        return lambda m: got.__setitem__(tag, {n: la.analog_weight().clone()
                                               for n, la in analog_layers(m).items()})

    a = train(TrainConfig(**cfg), log=lambda *_: None, on_model=keep("default"))
    b = train(TrainConfig(**cfg, algorithm="sgd"), log=lambda *_: None, on_model=keep("sgd"))
    assert a["test_error"] == b["test_error"] and a["train_loss"] == b["train_loss"]
    for n in got["default"]:
        assert torch.equal(got["default"][n], got["sgd"][n]), n
    assert b["algorithms"] == {"conv1": "sgd", "conv2": "sgd", "fc1": "sgd", "fc2": "sgd"}


# ---- mp ----------------------------------------------------------------------------
def test_mp_matches_numpy_reference_and_keeps_chi_below_granularity():
    """chi += -lr d x^T; n = trunc(chi / eps) pulses of exactly eps (ideal); chi keeps the
    rest. Inputs are multiples of 1/8 so float32/64 sums are exact."""
    eps = 3 * DW
    layer = _ideal_layer("mp", {"granularity": eps})
    algo = layer.algorithm
    rng = np.random.default_rng(1)
    w_ref = layer.grid.read().double().numpy().copy()
    chi = np.zeros_like(w_ref)
    lr = 0.01
    for _ in range(12):
        x = rng.integers(-8, 9, size=(2, 4)) / 8.0
        d = rng.integers(-8, 9, size=(2, 2)) / 8.0
        algo.update(torch.tensor(x, dtype=torch.float32), torch.tensor(d, dtype=torch.float32),
                    lr)
        for p in range(2):  # one rank-1 outer product at a time
            chi += -lr * np.outer(d[p], x[p])
        for i in range(2):  # one device, one pulse at a time
            for j in range(4):
                n = int(np.trunc(chi[i, j] / eps))
                for _ in range(abs(n)):
                    w_ref[i, j] += np.sign(n) * DW * (eps / DW)
                chi[i, j] -= n * eps
        np.testing.assert_allclose(algo.chi.numpy(), chi, atol=1e-12)
        # float32 weights of the ideal array: |w| < 1, steps of 1e-3: error < 1e-6
        np.testing.assert_allclose(layer.grid.read().double().numpy(), w_ref, atol=2e-6)
        assert float(algo.chi.abs().max()) < eps


def test_mp_granularity_defaults_to_the_devices_dw_min():
    layer = AnalogLinear(3, 2, plan=LayerPlan(backend="sim:pow_step", algorithm="mp"), seed=1)
    assert layer.algorithm.granularity == layer.grid.arrays[0].info().dw_min


# ---- tt ----------------------------------------------------------------------------
def _apply_bits(w: np.ndarray, xb: torch.Tensor, db: torch.Tensor, dw: float) -> None:
    """Pulse by pulse: update p, slot t, device (i, j) moves by dw * x_bit * d_bit."""
    xb, db = xb.numpy(), db.numpy()
    for p in range(xb.shape[0]):
        for t in range(xb.shape[1]):
            for i in range(w.shape[0]):
                for j in range(w.shape[1]):
                    w[i, j] += dw * int(xb[p, t, j]) * int(db[p, t, i])


@pytest.mark.parametrize("params, per_step", [
    ({}, 1),  # aihwkit defaults: one column per mini-batch
    ({"transfer_every": 2, "units_in_mbatch": False, "n_reads_per_transfer": 2,
      "fast_lr": 0.5, "transfer_lr": 3.0}, 3),  # splits inside a step
])
def test_tt_matches_numpy_reference(params, per_step):
    """A gets the gradient, columns of A go to C. The reference replays the same pulse
    trains (twin peripheries with the layer's generator states) one pulse at a time and
    derives the order (transfer after vector k when k % period == 0) itself."""
    layer = _ideal_layer("tt", params, in_f=3, out_f=2)
    algo = layer.algorithm
    cfg = layer.plan.periphery
    twin = {}
    for name in ("A", "C"):
        real = algo.grids[name].tiles[0][0]
        twin[name] = Periphery(IdealArray(2, 4), cfg, seed=0)
        twin[name].set_rng_state(real.rng_state())
    wa = algo.grids["A"].read().double().numpy().copy()
    wc = algo.grids["C"].read().double().numpy().copy()
    assert not wa.any()  # A starts at zero
    p = algo.params
    c0 = wc.copy()
    lr, k_done, col = 0.1, 0, 0
    means: dict = {}
    rng = np.random.default_rng(2)
    for _ in range(20):
        x = torch.tensor(rng.uniform(-1, 1, (per_step, 4)), dtype=torch.float32)
        d = torch.tensor(rng.uniform(-1, 1, (per_step, 2)), dtype=torch.float32)
        algo.update(x, d, lr)
        lr_a = _ref_fast_lr(p, means, x, d, lr, algo.dw_min("A"), cfg.bl)
        period = int(np.ceil(p.transfer_every * per_step)) if p.units_in_mbatch \
            else round(p.transfer_every)
        # pipelined: the step's one transfer falls at its end, so it reads A first
        pipelined = per_step <= period and (k_done + per_step) % period == 0

        def transfer():
            nonlocal col
            cols = [(col + i) % 4 for i in range(algo.reads_per_transfer)]
            col = (col + algo.reads_per_transfer) % 4
            e = torch.eye(4)[cols]
            read = torch.tensor(wa[:, cols].T, dtype=torch.float32)
            t_lr = (p.transfer_lr or 1.0) * lr
            xb, db = twin["C"].encode_bits(e, -read, t_lr)
            _apply_bits(wc, xb, db, DW)

        if pipelined:
            transfer()
        start = 0
        for v in range(per_step):
            k_done += 1
            if k_done % period and v < per_step - 1:
                continue
            xb, db = twin["A"].encode_bits(x[start:v + 1], d[start:v + 1], lr_a)
            _apply_bits(wa, xb, db, DW)
            start = v + 1
            if k_done % period == 0 and not pipelined:
                transfer()
        np.testing.assert_allclose(algo.grids["A"].read().double().numpy(), wa, atol=2e-6)
        np.testing.assert_allclose(algo.grids["C"].read().double().numpy(), wc, atol=2e-6)
    assert np.abs(wc - c0).max() > 5 * DW  # the transfers did move C
    assert algo.vectors == 20 * per_step


def test_tt_weight_is_gamma_a_plus_c():
    layer = _ideal_layer("tt", {"gamma": 0.5})
    a = torch.tensor([[0.1, -0.2, 0.05, 0.0], [0.3, 0.0, -0.1, 0.2]])
    layer.algorithm.grids["A"].set_weights(a)
    c = layer.grid.read()
    w = 0.5 * a + c
    assert torch.allclose(layer.algorithm.read(), w)
    x = torch.tensor([[0.5, -1.0, 0.25]])
    assert torch.allclose(layer(x), torch.cat([x, torch.ones(1, 1)], 1) @ w.T, atol=1e-6)


def test_tt_places_array_a_on_another_backend():
    plan = LayerPlan(backend="ideal", algorithm="tt", arrays={"A": "sim"},
                     algorithm_params={"centre_a": False})
    layer = AnalogLinear(3, 2, plan=plan, seed=1)
    assert type(layer.algorithm.grids["A"].arrays[0]).__name__ == "SimulatedArray"
    assert isinstance(layer.grid.arrays[0], IdealArray)
    assert len(layer.arrays) == 2


# ---- bad input ---------------------------------------------------------------------
@pytest.mark.parametrize("args, fragment", [
    (["--algorithm", "adam"], "unknown training algorithm 'adam' (known: agad, cttv2, mp, "
     "sgd, tt, ttv2)"),
    (["--algorithm", "cttv2:in_chop_prob=2"], "key 'algorithm.in_chop_prob': must be a "
     "number in [0, 1], got 2"),
    (["--algorithm", "cttv2:n_reads_per_transfer=27"], "key 'n_reads_per_transfer': must "
     "be at most the layer's 26 columns with a chopper"),
    (["--algorithm", "tt:transfers_per_sweep=0"], "key 'algorithm.transfers_per_sweep': "
     "must be an integer >= 1"),
    (["--algorithm", "cttv2:buffer_granularity=0"], "key 'algorithm.buffer_granularity': "
     "must be a number > 0"),
    (["--algorithm", "agad:in_chop_prob=0"], "key 'algorithm.in_chop_prob': must be > 0 "
     "for agad"),
    (["--algorithm", "agad:tail_weightening=-1"], "key 'algorithm.tail_weightening'"),
    (["--algorithm", "ttv2:momentum=1"], "key 'algorithm.momentum': must be a number in "
     "[0, 1)"),
    (["--algorithm", "ttv2:thres_scale=0"], "key 'algorithm.thres_scale': must be a "
     "number > 0"),
    (["--algorithm", "ttv2:out_chop_prob=0.1"], "key 'algorithm.out_chop_prob': unknown "
     "hyper-parameter of ttv2"),
    (["--algorithm", "tt:centre_a=maybe"], "algorithm.centre_a"),
    (["--algorithm", "tt:gama=1"], "key 'algorithm.gama': unknown hyper-parameter of tt "
     "(known: gamma,"),
    (["--layer-algorithm", "conv9=mp"], "has no layer conv9 (layers: conv1, conv2, fc1, "
     "fc2)"),
    (["--algorithm", "tt", "--layer", "conv1.B=sim"], "algorithm tt of layer conv1 has no "
     "array B (arrays: A, C)"),
    (["--layer", "conv1.A=sim"], "algorithm sgd of layer conv1 has no array A (arrays: C)"),
    (["--algorithm", "mp:granularity=-1"], "key 'algorithm.granularity': must be null"),
    (["--backend", "float", "--layer-algorithm", "fc1=tt"], "layer fc1 is in floating "
     "point"),
])
def test_cli_bad_algorithm_input_is_one_line_exit_2(args, fragment, tmp_path, capsys):
    out = tmp_path / "r.json"
    status = main(["train", "--no-progress", "--train-limit", "2", "--test-limit", "2",
                   "--out", str(out), "--checkpoint", str(tmp_path / "ck"), *args])
    err = capsys.readouterr().err
    assert status == 2, err
    assert fragment in err and "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert not out.exists() and not (tmp_path / "ck").exists()


def test_yaml_algorithm_mapping_and_unknown_key(tmp_path):
    good = tmp_path / "ok.yaml"
    good.write_text("algorithm: {name: tt, gamma: 0.2}\nlayer_algorithms: {fc2: mp}\n")
    cfg = train_mod.load_config(str(good), {})
    choices = cfg.layer_algorithm_choices()
    assert choices["conv1"] == ("tt", {"gamma": 0.2}) and choices["fc2"] == ("mp", {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("layer_algorithms: {conv2: {name: mp, granulrity: 0.01}}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*layer_algorithms.conv2.granulrity.*"
                                          r"known: granularity, transfer_every"):
        train_mod.load_config(str(bad), {})


def test_backend_without_the_operation_is_refused():
    class WriteOnly(IdealArray):  # can neither read nor do an MVM
        capabilities = IdealArray.capabilities.__class__(update=True, pulse=True)

    from rpuhw.backends import BACKENDS

    BACKENDS.add("writeonly", lambda spec, rows, cols, seed=None: WriteOnly(rows, cols))
    try:
        with pytest.raises(ConfigError, match="algorithm tt needs forward on array A, which "
                                              "backend 'writeonly' can neither do nor emulate"):
            AnalogLinear(3, 2, plan=LayerPlan(backend="ideal", algorithm="tt",
                                              arrays={"A": "writeonly"}), seed=1)
    finally:
        BACKENDS.remove("writeonly")


# ---- checkpoint / resume -----------------------------------------------------------
@pytest.mark.parametrize("alg", [
    "mp", "tt:gamma=0.1,n_reads_per_transfer=3,centre_a=false",
    # (sim's default device has no symmetry point to settle at: centring there is slow)
    "ttv2:centre_a=false,transfer_every=0.5", "cttv2:gamma=0.1,in_chop_prob=0.3",
    "agad:in_chop_prob=0.5"])
def test_interrupted_run_resumes_to_the_same_numbers(alg, tmp_path, monkeypatch):
    """Stop a run right after its second checkpoint (mid-epoch), resume it: every
    number (errors, losses, final weights and algorithm state) equals an uninterrupted
    run's. (The SIGKILL variant for sgd is tests/test_train.py's.)"""
    cfg = dict(backend="sim", train_limit=30, test_limit=20, epochs=2, seed=3,
               progress=False, checkpoint_every=10, algorithm=alg)
    final = {}

    def keep(tag):
        return lambda m: final.__setitem__(tag, m.state_dict())

    ref = train(TrainConfig(**cfg), log=lambda *_: None, on_model=keep("ref"))
    real_write, writes = train_mod._atomic_write, []

    def stop_after_two(path, write):
        real_write(path, write)
        if path.name == train_mod.CHECKPOINT:
            writes.append(path)
            if len(writes) == 2:
                raise KeyboardInterrupt

    ck = str(tmp_path / "ck")
    monkeypatch.setattr(train_mod, "_atomic_write", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg, checkpoint=ck), log=lambda *_: None)
    monkeypatch.setattr(train_mod, "_atomic_write", real_write)
    st = torch.load(tmp_path / "ck" / train_mod.CHECKPOINT, weights_only=False)
    assert (st["epoch"], st["done"]) == (0, 20)  # really interrupted mid-epoch
    assert any("algorithm" in v for k, v in st["model"].items() if k.endswith("_extra_state"))
    out = tmp_path / "r.json"
    res = train(TrainConfig(**cfg, checkpoint=ck, out=str(out)), resume=True,
                log=lambda *_: None, on_model=keep("resumed"))
    assert res["test_error"] == ref["test_error"]
    assert res["train_loss"] == ref["train_loss"]
    assert json.loads(out.read_text())["test_error"] == ref["test_error"]
    for key, v in final["ref"].items():
        w = final["resumed"][key]
        if isinstance(v, torch.Tensor):
            assert torch.equal(v, w), key
        else:
            a_ref, a_res = v["algorithm"], w["algorithm"]
            assert a_ref["name"] == a_res["name"]
            for sk, sv in a_ref["state"].items():
                assert (torch.equal(sv, a_res["state"][sk]) if isinstance(sv, torch.Tensor)
                        else sv == a_res["state"][sk]), (key, sk)
            for sa, sb in zip(v["arrays"], w["arrays"], strict=True):
                assert torch.equal(sa["weights"], sb["weights"]), key


# ---- ttv2, cttv2, agad: step-by-step references ------------------------------------
def _reference_run(alg: str, params: dict, per_step: int, steps: int,
                   a_ref: np.ndarray | None = None, offset: float = 0.0):
    """Drive a 2 x 4 ideal layer with ``alg`` and replay it in numpy: A's pulse trains
    (twin periphery, one pulse at a time), then per transfer the column read, the
    buffer, the threshold rule, C's single exact pulses, the chopper and (agad) the
    running reference, all derived here from the algorithm's description."""
    layer = _ideal_layer(alg, params, in_f=3, out_f=2)
    algo = layer.algorithm
    p = algo.params
    if a_ref is not None:
        algo.a_ref = torch.tensor(a_ref, dtype=torch.float32)
    ref = np.zeros((2, 4)) if a_ref is None else a_ref.astype(np.float32).astype(np.float64)
    twin = Periphery(IdealArray(2, 4), layer.plan.periphery, seed=0)
    twin.set_rng_state(algo.grids["A"].tiles[0][0].rng_state())
    wa = algo.grids["A"].read().double().numpy().copy()
    wc = algo.grids["C"].read().double().numpy().copy()
    c0 = wc.copy()
    H, chop, reads = np.zeros((2, 4)), np.ones(4), np.zeros(4, int)
    mu, mu_p, switched = np.zeros((2, 4)), np.zeros((2, 4)), np.zeros(4, bool)
    chopped = alg in ("cttv2", "agad") and p.in_chop_prob > 0
    ns = max(int(np.ceil(1 / p.in_chop_prob)), 2) if chopped else None
    # A moves in exact steps of DW: an lr with no short rational ratio to 1 keeps the
    # buffer off its thresholds (float32 vs float64 reads would decide a tie there)
    lr, k_done, col = 0.1037, 0, 0
    period = int(np.ceil(p.transfer_every * per_step)) if p.units_in_mbatch \
        else round(p.transfer_every)
    rng = np.random.default_rng(2)
    pulses_c = flips = 0
    means: dict = {}
    g = algo.dw_min("A")  # the granularity the backend reports (float32 of DW)
    for _ in range(steps):
        x = torch.tensor(rng.uniform(-1, 1, (per_step, 4)), dtype=torch.float32)
        d = torch.tensor(rng.uniform(-1, 1, (per_step, 2)), dtype=torch.float32)
        algo.update(x, d, lr)
        lr_a = _ref_fast_lr(p, means, x, d, lr, g, layer.plan.periphery.bl)
        # pipelined: the step's one transfer falls at its end, so it reads A (and flips
        # the choppers) before A's update of the step
        pipelined = per_step <= period and (k_done + per_step) % period == 0

        def transfer():
            nonlocal col, pulses_c, flips
            k = algo.reads_per_transfer
            cols, col = [(col + i) % 4 for i in range(k)], (col + k) % 4
            for j in cols:  # each column read, buffered, pulsed, chopped in turn
                read = wa[:, j].astype(np.float32).astype(np.float64) - ref[:, j] + offset
                t_lr = (p.transfer_lr or 1.0) * lr
                gate = True
                if alg == "ttv2":
                    thr = p.thres_scale * g
                    H[:, j] += t_lr * read
                else:
                    thr = 1.0
                    if alg == "agad":
                        if switched[j]:
                            mu_p[:, j] = mu[:, j]
                        dev = read - mu_p[:, j]
                        reads[j] += 1
                        gate = reads[j] > ns
                    else:
                        dev = read
                        reads[j] += 1
                    if gate:
                        H[:, j] += chop[j] * dev * t_lr / (p.buffer_granularity * g)
                if gate:
                    for i in range(2):  # one device at a time
                        n = int(np.clip(np.trunc(H[i, j] / thr), -1, 1))
                        if n:
                            wc[i, j] += n * DW  # one exact pulse
                            pulses_c += 1
                            H[i, j] = p.momentum * H[i, j] if p.forget_buffer \
                                else H[i, j] - (1 - p.momentum) * n * thr
                if alg == "agad":
                    a = min(p.tail_weightening / ns, 1.0)
                    mu[:, j] = (1 - a) * mu[:, j] + a * read
                flipped = chopped and reads[j] % ns == 0
                if flipped:
                    chop[j] = -chop[j]
                    flips += 1
                switched[j] = flipped

        if pipelined:
            transfer()
        start = 0
        for v in range(per_step):
            k_done += 1
            if k_done % period and v < per_step - 1:
                continue
            xc = x[start:v + 1] * torch.tensor(chop, dtype=torch.float32)
            xb, db = twin.encode_bits(xc, d[start:v + 1], lr_a)
            _apply_bits(wa, xb, db, DW)
            start = v + 1
            if k_done % period == 0 and not pipelined:
                transfer()
        np.testing.assert_allclose(algo.grids["A"].read().double().numpy(), wa, atol=2e-6)
        np.testing.assert_allclose(algo.grids["C"].read().double().numpy(), wc, atol=2e-6)
        # H from float32 reads (relative 6e-8) times lr_t / thr <= ~100, summed over
        # <= 72 transfers: within 1e-4 of the threshold
        h_tol = 1e-4 * (p.thres_scale * g if alg == "ttv2" else 1.0)
        np.testing.assert_allclose(algo.H.numpy(), H, rtol=0, atol=h_tol)
    return algo, wc - c0, pulses_c, chop, flips


@pytest.mark.parametrize("alg, params, per_step", [
    ("ttv2", {}, 1),  # aihwkit's defaults (momentum 0.1, forget_buffer)
    ("ttv2", {"transfer_every": 1, "units_in_mbatch": False, "momentum": 0.3,
              "forget_buffer": False, "thres_scale": 2.0, "fast_lr": 0.5,
              "transfer_lr": 4.0}, 3),
    ("cttv2", {"in_chop_random": False, "in_chop_prob": 0.3}, 2),
    ("cttv2", {"in_chop_random": False, "in_chop_prob": 0.5, "forget_buffer": False,
               "momentum": 0.2, "buffer_granularity": 3.0, "transfer_lr": 2.0}, 1),
    ("agad", {"in_chop_prob": 0.5}, 2),
    ("agad", {"in_chop_prob": 0.25, "tail_weightening": 2.0, "forget_buffer": False}, 1),
    # several columns per transfer (rpuhw's extension): read together, one pulse of C
    ("cttv2", {"in_chop_random": False, "in_chop_prob": 0.3, "n_reads_per_transfer": 3}, 2),
    ("agad", {"in_chop_prob": 0.5, "transfers_per_sweep": 2}, 1),
    ("ttv2", {"transfers_per_sweep": 1}, 1),
])
def test_buffered_algorithms_match_numpy_reference(alg, params, per_step):
    algo, moved, pulses, chop, flips = _reference_run(alg, params, per_step, steps=24)
    assert pulses > 5 and np.abs(moved).max() >= DW  # C really got transfers
    if alg != "ttv2":
        assert torch.equal(algo.chop, torch.tensor(chop, dtype=torch.float32))
        assert flips >= 4  # the choppers really flipped


def test_ttv2_subtracts_the_reference_of_a():
    """With A_ref set, every read of A is A - A_ref (transfer and weight)."""
    a_ref = np.array([[0.01, -0.02, 0.0, 0.03], [-0.01, 0.02, 0.015, 0.0]])
    algo, *_ = _reference_run("ttv2", {"gamma": 0.5}, 1, steps=8, a_ref=a_ref)
    w = 0.5 * (algo.grids["A"].read() - algo.a_ref) + algo.grids["C"].read()
    assert torch.allclose(algo.read(), w)
    x = torch.tensor([[0.5, -1.0, 0.25, 1.0]])
    assert torch.allclose(algo.forward(x), x @ w.T, atol=1e-6)
    assert torch.allclose(algo.backward(torch.tensor([[1.0, -2.0]])),
                          torch.tensor([[1.0, -2.0]]) @ w, atol=1e-6)


def test_cttv2_weight_undoes_the_chopper():
    layer = _ideal_layer("cttv2", {"gamma": 0.5})
    algo = layer.algorithm
    a = torch.tensor([[0.1, -0.2, 0.05, 0.0], [0.3, 0.0, -0.1, 0.2]])
    algo.grids["A"].set_weights(a)
    algo.chop = torch.tensor([1.0, -1.0, -1.0, 1.0])
    w = 0.5 * a * algo.chop + algo.grids["C"].read()
    assert torch.allclose(algo.read(), w)
    x = torch.tensor([[0.5, -1.0, 0.25, 1.0]])
    assert torch.allclose(algo.forward(x), x @ w.T, atol=1e-6)
    d = torch.tensor([[1.0, -2.0]])
    assert torch.allclose(algo.backward(d), d @ w, atol=1e-6)


# ---- properties ----------------------------------------------------------------------
@pytest.mark.parametrize("alg, prob, net", [
    ("cttv2", 0.5, 0), ("cttv2", 0.0, 2),  # no chopper: the offset goes into C
    ("agad", 0.5, 0)])
def test_chopper_removes_a_constant_offset_of_a(alg, prob, net):
    """A reads a constant offset o and nothing else (A = 0 plus o on every read). Per
    read the buffer gains c_j o s = 0.6 pulses (s = lr_t / dw_min). cttv2 (period 2,
    forget_buffer off, so H + C's pulses is what was transferred): reads ++ then --
    transfer +1 then -1: after a flip cycle H = 0 and C is back. agad: its running
    reference absorbs o (tail weight 1 here), nothing is transferred. Without a chopper
    the 4 reads put 2 pulses into C. Exact (ideal, float64 H)."""
    params = {"in_chop_random": False, "in_chop_prob": prob, "forget_buffer": False,
              "transfer_lr": 0.6, "scale_transfer_lr": False}
    layer = _ideal_layer(alg, params, in_f=1, out_f=2)  # 2 columns with the bias
    algo = layer.algorithm
    o = torch.tensor([[DW, -DW]])  # [k=1, out]
    algo.read_columns = lambda cols: algo.A.forward(algo._eye[cols]) + o
    c0 = algo.grids["C"].read().clone()
    cycles = 2 * (2 if alg == "cttv2" else 4)  # agad: n_s warm-up reads first
    for _ in range(cycles * 2):  # 2 columns, each read `cycles` times
        algo.transfer(0.0)
    moved = torch.round((algo.grids["C"].read() - c0) / DW)
    assert moved[:, 0].tolist() == [net, -net]
    assert torch.allclose(algo.H[:, 0], torch.zeros(2, dtype=torch.float64), atol=1e-12) \
        or net
    if net == 0:
        assert not algo.H.any() and not moved.any()


@pytest.mark.parametrize("alg", ["mp", "ttv2", "cttv2", "agad"])
def test_pulsed_arrays_decay_once_per_step(alg):
    """C moved through ``pulse`` (no decay of its own) decays exactly once per optimizer
    step on a device with lifetime (aihwkit's Capacitor preset): counted per array, and
    with lr 0 (no pulse at all) the weights move by exactly the decay rule
    w <- clip((w - b) scale + b) (float32 as the simulator)."""
    plan = LayerPlan(backend="sim:preset:Capacitor", algorithm=alg,
                     algorithm_params={} if alg == "mp" else {"centre_a": False})
    layer = AnalogLinear(3, 2, plan=plan, seed=2)
    algo = layer.algorithm
    c = algo.grid.arrays[0]
    calls = []
    real = c.decay
    c.decay = lambda: (calls.append(1), real())[1]
    w0 = c.read().clone()
    st = c.state
    scale, b = st["decay_scale"], st["reset_bias"]
    assert (scale < 1).all()  # the preset's lifetime really decays
    x, d = torch.randn(2, 4), torch.randn(2, 2)
    algo.update(x, d, 0.0)
    assert len(calls) == 1
    want = torch.minimum(torch.maximum((w0 - b) * scale + b, st["w_min"]), st["w_max"])
    assert torch.allclose(c.read(), want, atol=1e-7, rtol=0)
    assert not torch.equal(c.read(), w0)
    for _ in range(3):
        algo.update(x, d, 0.05)
    assert len(calls) == 4


def test_tt_centres_a_on_its_symmetry_points():
    """centre_a (null, the default: on a simulated device with a symmetry point): A's
    devices driven to their symmetry points (relax_to_symmetry_points), the points kept
    as A_ref, the weight gamma (A - A_ref) + C, A_ref in the checkpoint state. The hidden
    device's devices stay within a few dw_min of their points."""
    plan = LayerPlan(backend="sim:drivers/emulators/hidden_device.yaml", algorithm="tt",
                     algorithm_params={"gamma": 0.5})
    layer = AnalogLinear(3, 2, plan=plan, seed=1)
    algo = layer.algorithm
    assert algo.params.centre_a is None
    assert algo.centres_a() and algo.a_ref is not None
    res = algo.centring[0]
    sp = res.symmetry_point
    assert torch.equal(algo.a_ref, sp)
    assert sp.abs().max() > 3 * algo.dw_min("A")  # not all at 0: centring matters
    dw = algo.dw_min("A")
    assert (algo.grids["A"].read() - algo.a_ref).abs().max() < 6 * dw
    # (the weight's formula with A_ref: test_ttv2_subtracts_the_reference_of_a, exact)
    st = algo.state_dict()
    other = AnalogLinear(3, 2, plan=LayerPlan(
        backend="sim:drivers/emulators/hidden_device.yaml", algorithm="tt",
        algorithm_params={"gamma": 0.5, "centre_a": False}), seed=1).algorithm
    assert other.a_ref is None
    other.load_state_dict(st)
    assert torch.equal(other.a_ref, algo.a_ref)
    ideal = _ideal_layer("tt").algorithm  # symmetric devices: no centring by default
    assert not ideal.centres_a() and ideal.a_ref is None
    const = AnalogLinear(3, 2, plan=LayerPlan(backend="sim", algorithm="tt"), seed=1)
    assert not const.algorithm.centres_a()  # constant_step: no symmetry point to settle at


@pytest.mark.slow
@pytest.mark.parametrize("alg", ["sgd", "mp", "tt:gamma=0.1", "ttv2", "cttv2", "agad"])
def test_killed_run_resumes_to_the_same_numbers(alg, tmp_path):
    """SIGKILL a CLI run after its second checkpoint (mid-epoch, nothing can clean up),
    resume it with --resume: test errors and losses equal an uninterrupted in-process
    run's, for every algorithm (its A, C, H, chi, choppers, counters, references and
    generators all come back from the checkpoint)."""
    name, _, opts = alg.partition(":")
    params = dict(kv.split("=") for kv in opts.split(",")) if opts else {}
    params = {k: float(v) for k, v in params.items()}
    ref = train(TrainConfig(backend="sim", train_limit=120, test_limit=60, epochs=2,
                            seed=3, progress=False, checkpoint_every=10,
                            algorithm={"name": name, **params} if params else name),
                log=lambda *_: None)
    ckdir = tmp_path / "ck"
    args = [sys.executable, "-m", "rpuhw.cli", "train", "--backend", "sim",
            "--algorithm", alg, "--train-limit", "120", "--test-limit", "60",
            "--epochs", "2", "--seed", "3", "--checkpoint-every", "10", "--no-progress",
            "--checkpoint", str(ckdir), "--out", str(tmp_path / "r.json")]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ck = ckdir / train_mod.CHECKPOINT
    kill_after_checkpoints(proc, ck, 2)
    st = torch.load(ck, weights_only=False)
    assert (st["epoch"], st["done"]) != (2, 0)  # really interrupted
    resumed = subprocess.run([*args, "--resume"], capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["test_error"] == ref["test_error"]
    assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-12, abs=0)
