"""The state-space fit (calibration/statespace.py, calibration/fit.py; issue 19 items 2-4).

Generator: ``tests/test_fit.py``'s ``generate`` (a SimulatedArray of a known device YAML
runs the pulse-response protocol, every device in lockstep, one read after each pulse,
reads with the YAML's read noise), so the data come from the project's own simulator and
device models.

Read noise is given relative to the step: ``dw_min`` = 0.02 weight units, so read noise
0.02 is one step and 0.002 a tenth of one.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_fit import BASE, EXTRA, MODELS, generate  # tests/ is on sys.path

from rpuhw.calibration import statespace as ss
from rpuhw.calibration.fit import FitConfig, fit
from rpuhw.calibration.fit_models import FIT_MODELS, Frame
from rpuhw.calibration.fit_report import parameter_table

STEP = BASE["dw_min"]
"""The mean step (weight units): read noise is given in units of it."""


# ---- the filter's pieces ---------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(FIT_MODELS))
def test_torch_rule_is_the_device_models_rule(name):
    """The filter's torch step rule equals the device model's own rule (numpy), both
    directions, at random states and parameters (piecewise with random node tables)."""
    fm = FIT_MODELS.get(name)(5)
    rng = np.random.default_rng(3)
    n = 400
    frame = Frame(u_ref=0.45, h_ref=0.55)
    lo = rng.uniform(-0.2, 0.1, n)
    hi = lo + rng.uniform(0.6, 1.2, n)
    p = np.column_stack([lo, hi, rng.uniform(0.005, 0.03, (n, 2)),
                         *([rng.uniform(-1.0, 0.0, n), rng.uniform(0.0, 1.0, n)]
                           if name == "linear_step" else []),
                         *([rng.uniform(0.5, 2.5, (n, 2))] if name == "pow_step" else [])])
    lo_g, hi_g = fm.glob_bounds()
    glob = {"exp_step": np.array([-7.0, -1.0, 12.0, 12.5]),
            "piecewise": rng.uniform(0.2, 2.0, len(fm.glob))}.get(name, np.zeros(0))
    u = rng.uniform(lo - 0.05, hi + 0.05)
    rule = ss.TorchRule(fm, frame)
    for up in (True, False):
        ctx = rule.prepare(torch.as_tensor(p), torch.as_tensor(np.tile(glob, (n, 1))),
                           torch.full((n,), up))
        got = rule.magnitude(torch.as_tensor(u), ctx).numpy()
        want = fm.magnitude(up, u, p, glob, frame)
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-14)


def test_clipped_update_is_the_exact_posterior():
    """The filter's step through the clip against adaptive quadrature of the same density
    (scipy.integrate.quad, relative tolerance 1e-11, the range split at the read and the
    bound): the state min(X, b) (or max) with X ~ N(a, v) is a point mass at b plus a
    truncated normal; p(y), E[state | y] and Var[state | y], for states far from, near and
    beyond the bound and reads finer and coarser than the state's spread."""
    from scipy import integrate, stats

    cases = ((0.9, 0.01, 1.0, 1.0, 0.97, 1e-4), (0.9, 0.01, 1.0, 1.0, 1.0, 1e-6),
             (1.05, 0.01, 1.0, 1.0, 0.99, 1e-3), (0.1, 0.04, 0.0, -1.0, 0.05, 0.01),
             (0.5, 0.01, 1.0, 1.0, 0.52, 1e-4), (0.02, 1e-4, 0.0, -1.0, 0.0, 1e-8))
    for a, v, b, sign, y, r2 in cases:
        sd, r = math.sqrt(v), math.sqrt(r2)
        lo, hi = (a - 14 * sd, b) if sign > 0 else (b, a + 14 * sd)
        cuts = sorted({lo, hi, *(c for c in (y - 8 * r, y, y + 8 * r) if lo < c < hi)})

        def moment(j: int, a=a, sd=sd, y=y, r=r, cuts=cuts) -> float:
            def f(x: float) -> float:
                return x ** j * stats.norm.pdf(x, a, sd) * stats.norm.pdf(y, x, r)
            return sum(integrate.quad(f, c0, c1, epsabs=0, epsrel=1e-11, limit=500)[0]
                       for c0, c1 in zip(cuts[:-1], cuts[1:], strict=True))

        mass = stats.norm.sf(sign * (b - a) / sd) * stats.norm.pdf(y, b, r)
        z = moment(0) + mass
        mean = (moment(1) + b * mass) / z
        var = (moment(2) + b * b * mass) / z - mean ** 2
        ll, m, p = ss.clipped_update(*(torch.tensor([q], dtype=torch.float64)
                                       for q in (a, v, b, sign, y, r2)))
        assert float(ll) == pytest.approx(math.log(z), abs=1e-8)
        assert float(m) == pytest.approx(mean, abs=1e-7 * sd)
        assert float(p) == pytest.approx(var, rel=1e-5, abs=1e-9 * v)


def test_filter_is_the_exact_likelihood_of_a_linear_gaussian_chain():
    """constant_step far from its bounds is a linear-Gaussian model: the filter's
    log-likelihood of a window, log p(y_1..n | y_0) with a flat prior on the first state,
    equals the multivariate normal density of the reads: y_t - y_0 has mean t d s and
    covariance sigma_r^2 (1 + delta_tt') + min(t, t') (sigma_c s)^2."""
    fm = FIT_MODELS.get("constant_step")()
    frame = Frame(0.5, 0.5)
    n, s, sc, sr = 12, 0.01, 0.3, 0.004
    rng = np.random.default_rng(1)
    y = 0.3 + s * np.arange(n + 1) + sr * rng.standard_normal(n + 1)
    w = ss.Windows(index=np.zeros((1, n + 1), dtype=np.int64), dev=torch.zeros(1, dtype=torch.long),
                   up=torch.tensor([True]),
                   pulse=torch.tensor([[0.0] + [1.0] * n], dtype=torch.float64),
                   y=torch.tensor(y[None, :]), k=torch.ones(1, n + 1, dtype=torch.float64),
                   ss=torch.zeros(1, n + 1, dtype=torch.float64), fold=np.zeros(1, np.int64),
                   folds_by="windows")
    p = torch.tensor([[-10.0, 10.0, s, s]], dtype=torch.float64)
    none = torch.zeros(1, 0, dtype=torch.float64)
    got = float(ss.log_likelihood(ss.TorchRule(fm, frame), w, p, none, torch.tensor([sc]),
                                  torch.tensor([sr]))[0])
    t = np.arange(1, n + 1)
    cov = sr ** 2 * (1 + np.eye(n)) + np.minimum.outer(t, t) * (sc * s) ** 2
    r = y[1:] - y[0] - s * t
    want = -0.5 * (n * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1]
                   + r @ np.linalg.solve(cov, r))
    assert got == pytest.approx(want, rel=1e-7)  # float64 round-off of two routes


def test_windows_use_every_pulse_once_and_keep_every_read():
    m, _ = generate({"model": "constant_step", **BASE}, rows=2, cols=2, pulses=37, cycles=2)
    index = {d: d for d in range(4)}
    st = ss.step_table(m, index, 0.0, 1.0)
    assert len(st.dev) == len(m) and st.pulsed.sum() == 4 * 2 * 2 * 37
    for length in (2, 5, 16, 100):
        w = ss.windows(st, length)
        assert float(w.pulse.sum()) == st.pulsed.sum()  # each transition in one window
        seen = np.unique(w.index[w.index >= 0])
        assert len(seen) == len(st.dev)


# ---- recovery, model choice ------------------------------------------------------------

PULSES = {"pow_step": 400}
"""Pulses per half-cycle: pow_step's power-law approach to its bounds is slow."""


def _data(model: str, read_noise: float, devices: tuple[int, int] = (3, 4), seed: int = 1,
          cycles: int = 2):
    mapping = {"model": model, **BASE, **EXTRA.get(model, {}), "io": {"read_noise": read_noise}}
    return generate(mapping, rows=devices[0], cols=devices[1], pulses=PULSES.get(model, 200),
                    cycles=cycles, seed=seed)


@pytest.mark.parametrize("model", [m for m in MODELS if m != "pow_step"])
def test_recovers_the_devices_at_read_noise_one_step(model):
    """Read noise equal to the step. Per device, the fitted bounds and mid-range steps
    against the drawn devices' own (``arr.state``); the noise parameters against the YAML.
    Five of the six models; not pow_step (issue 19): its power-law approach leaves the
    bounds of 8 of 12 devices 11-40 % off their drawn ones even with a third cycle (the
    likelihood still counts its soft bounds as reached), and with two cycles dw_min_std's
    standard error is 11 % (0.315 +- 0.035), above the 10 % the tolerance rests on.

    Tolerances from the sampling error: 12 devices x 2 cycles x 200 pulses = 9,600 steps;
    dw_min_std's relative SE from ~9,600 steps with read noise one step is ~6 % (the
    fit's own standard error, checked below to be below 10 %), so 20 % is > 3 SE; the read
    noise from 9,600 reads has a relative SE ~1 %, 10 % is 10 SE; a device's mean step from
    ~800 steps with c2c 0.3 and read noise 1 step: ~2 %, 10 % is 5 SE.
    """
    m, arr = _data(model, STEP)
    res = fit(m, model, FitConfig(bootstrap=0))
    table = parameter_table(res)
    assert res.ok, table
    assert abs(res.params["dw_min_std"] / 0.3 - 1) < 0.2, table
    assert res.uncertainties["dw_min_std"] < 0.1 * res.params["dw_min_std"], table
    half = (arr.spec.conductance.g_max - arr.spec.conductance.g_min) / 2.0  # S per weight
    read_s = res.read_noise * (res.g_max - res.g_min) / 2.0  # fitted, in siemens
    assert abs(read_s / (STEP * half) - 1) < 0.1, table
    state = {k: v.numpy().ravel().astype(float) for k, v in arr.state.items()}
    c = arr.spec.conductance
    to_s = (c.g_max - c.g_min) / 2.0  # S per weight unit
    g_lo = c.g_min + (state["w_min"] + 1.0) * to_s
    g_hi = c.g_min + (state["w_max"] + 1.0) * to_s
    dev = res.per_device["device"]
    # a bound is measured only where the device reached it (hard bounds; soft bounds
    # follow from the step's shape and count as reached)
    lo_ok, hi_ok = res.per_device["reached_min"], res.per_device["reached_max"]
    assert lo_ok.sum() >= len(dev) // 2 and hi_ok.sum() >= len(dev) // 2, table
    np.testing.assert_allclose(res.per_device["g_min"][lo_ok], g_lo[dev][lo_ok], rtol=0.1,
                               err_msg=table)
    np.testing.assert_allclose(res.per_device["g_max"][hi_ok], g_hi[dev][hi_ok], rtol=0.1,
                               err_msg=table)
    # mid-range up steps of each device (S): the fit's rule against the drawn device's own
    # (the device model's rule at the middle of that device's bounds)
    g_mid = 0.5 * (g_lo + g_hi)
    shape = arr.state["dw_up"].shape
    w_mid = torch.tensor(((g_mid - c.g_min) / to_s - 1.0).reshape(shape), dtype=torch.float64)
    drawn = {k: v.double() for k, v in arr.state.items()}
    true_up = arr.spec.model.step(w_mid, torch.ones(shape, dtype=torch.bool), drawn)
    true_up = true_up.numpy().ravel() * to_s
    for i, d in enumerate(dev):
        fitted = abs(res.mean_step(i, np.array([g_mid[d]]), True)[0])
        true = true_up[d]
        assert abs(fitted / true - 1) < 0.1, f"device {d}: {fitted} vs {true}\n{table}"


def test_same_reads_for_every_model_and_held_out_scores():
    m, _ = _data("soft_bounds", STEP, devices=(2, 3))
    res = fit(m, "auto", FitConfig(bootstrap=0))
    assert len({s.n for s in res.scores.values()}) == 1
    assert set(res.held_out) == set(MODELS)
    best = max(res.held_out.values())
    assert res.held_out[res.model] <= best
    assert math.isfinite(res.margin) and res.margin_se > 0
    assert "held-out log-likelihood" in res.explanation
    if res.thin_margin:
        assert "THIN MARGIN" in res.explanation and "--reads-per-step 8" in res.explanation


def test_bootstrap_gives_an_interval_for_every_parameter():
    m, _ = _data("soft_bounds", STEP, devices=(2, 3))
    res = fit(m, "soft_bounds", FitConfig(bootstrap=4, seed=2))
    want = set(res.params) | {"g_min", "g_max", "read_noise"}
    assert set(res.intervals) == want
    for key, (lo, hi) in res.intervals.items():
        v = getattr(res, key) if key in ("g_min", "g_max", "read_noise") else res.params[key]
        assert lo <= v <= hi, key
        if v != 0 and key not in ("w_min", "w_max"):  # w_min, w_max are the fixed frame
            assert hi > lo, f"{key}: a degenerate interval around {v}"
    assert "bootstrap" in res.interval_method


def test_an_unreached_bound_is_not_identifiable():
    """30 pulses of a 0.02 step never cross half the range: both bounds are extrapolated."""
    mapping = {"model": "constant_step", **BASE, "io": {"read_noise": 0.002}}
    m, _ = generate(mapping, rows=2, cols=3, pulses=30, cycles=2)
    res = fit(m, "constant_step", FitConfig(bootstrap=0))
    bounds = [t for t in res.not_identifiable if ": g_m" in t]
    assert bounds and all(t.startswith("not identifiable from these data:") for t in bounds)
    assert all("--pulses auto" in t for t in bounds)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bootstrap_intervals_cover_the_truth():
    """Coverage of the 95 % intervals over 20 independent draws (seeds 100..119; 6
    devices, 2 cycles x 150 pulses, read noise one step, constant_step) for dw_min_std and
    g_min (the population's mean lower bound: the bootstrap resamples the devices, so its
    interval includes the device-to-device sampling). With true coverage 0.95 the number
    of covering draws is Binomial(20, 0.95): P(X <= 15) = 1.6 %, so >= 16 of 20 is
    required for each."""
    covered = {"dw_min_std": 0, "g_min": 0}
    for seed in range(100, 120):
        mapping = {"model": "constant_step", **BASE, "io": {"read_noise": STEP}}
        m, _ = generate(mapping, rows=2, cols=3, pulses=150, cycles=2, seed=seed)
        res = fit(m, "constant_step", FitConfig(bootstrap=20, seed=seed))
        for key, true in (("dw_min_std", 0.3), ("g_min", BASE["conductance"]["g_min"])):
            lo, hi = res.intervals[key]
            covered[key] += lo <= true <= hi
    assert min(covered.values()) >= 16, covered


def test_clipped_update_is_finite_at_extreme_inputs():
    """The filter's step through the clip is finite in value and gradient wherever the
    optimiser's line search may go (bounds 1e8 away, variances of 1e-300, reads 1e8 off,
    read variances 1e-20 to 1e3), and its log-CDF's gradient is the inverse Mills ratio
    (mpmath, 50 digits) down to ss.Z_MIN (torch's own is wrong below about -1e8)."""
    import itertools

    import mpmath as mp

    grid = itertools.product([0.0, 0.5, 1e8, -1e8], [1e-300, 1e-20, 1e-3, 1e3, 1e20],
                             [0.0, 1.0, 1e8, -1e8], [1.0, -1.0], [0.0, 1.0, 1e8, -1e8],
                             [1e-20, 1e-11, 1e-3, 1e3])
    cols = [torch.tensor(c, dtype=torch.float64) for c in zip(*grid, strict=True)]
    a, v, b, y, r2 = (cols[i].clone().requires_grad_() for i in (0, 1, 2, 4, 5))
    sign = cols[3]
    ll, m, p = ss.clipped_update(a, v, b, sign, y, r2)
    assert torch.isfinite(ll).all() and torch.isfinite(m).all() and torch.isfinite(p).all()
    (ll.sum() + m.sum() + p.sum()).backward()
    for t in (a, v, b, y, r2):
        assert torch.isfinite(t.grad).all()
    mp.mp.dps = 50
    for x in (-5.0, -45.0, -1e3, ss.Z_MIN):
        t = torch.tensor([x], dtype=torch.float64, requires_grad=True)
        lg = ss.log_ndtr(t)
        lg.backward()
        xm = mp.mpf(x)
        assert float(lg.detach()) == pytest.approx(float(mp.log(mp.ncdf(xm))), rel=1e-12)
        assert float(t.grad) == pytest.approx(float(mp.npdf(xm) / mp.ncdf(xm)), rel=1e-5)


def test_a_model_beaten_on_most_devices_is_not_tied():
    """The tie rule's sign test: the best model's per-device held-out scores against
    another's. One device far worse for the other model makes the paired standard error
    huge (the tie rule's first half), yet the best wins on 11 of 12 devices: not a tie
    (P(Binomial(12, 1/2) >= 11) = 0.0032 < P(N > 2) = 0.023); 9 of 12 (0.073) is."""
    from rpuhw.calibration.fit import beaten_on_most_devices

    best = np.zeros(12)
    other = np.full(12, -1.0)
    other[0] = 1e9  # the other model is better on one device only
    assert beaten_on_most_devices(best, other, 2.0)
    other[[0, 1, 2]] = 5.0  # better on three: a tie by this test
    assert not beaten_on_most_devices(best, other, 2.0)
    # 10 of 12: P = 0.019 < 0.023, beaten; with z = 2.5 (P = 0.0062) not
    other = np.full(12, -1.0)
    other[[0, 1]] = 5.0
    assert beaten_on_most_devices(best, other, 2.0)
    assert not beaten_on_most_devices(best, other, 2.5)
    assert not beaten_on_most_devices(best[:1], other[:1], 2.0)  # one device: no test


def test_majority_winner_needs_a_strict_majority_against_every_model():
    from rpuhw.calibration.fit import majority_winner

    a, b, c = np.array([3.0, 3, 0]), np.array([2.0, 0, 2]), np.array([0.0, 2, 3])
    # a beats b on devices 0, 1 and c on 0, 1: a wins although c has the best sum
    assert majority_winner({"a": a, "b": b, "c": c + 10 * (np.arange(3) == 2)}) == "a"
    # a cycle: a beats b, b beats c, c beats a (2 of 3 each)
    assert majority_winner({"a": np.array([3.0, 1, 2]), "b": np.array([2.0, 3, 1]),
                            "c": np.array([1.0, 2, 3])}) is None
    # 2 of 4 is not a majority
    assert majority_winner({"a": np.array([1.0, 1, 0, 0]),
                            "b": np.array([0.0, 0, 1, 1])}) is None


def test_the_vote_replaces_the_simplest_tied_model_only_with_evidence():
    """pick_model on constructed per-device scores (12 devices): the cases the rule is
    for (docs/calibration.md, section 3, item 7)."""
    from rpuhw.calibration.fit import pick_model

    k = {"simple": 6, "flexible": 10}
    # one device hands the sum to the simple model; the flexible one is higher on the
    # other 11 (significant: P(>= 11 of 12) = 0.0032 < 0.023): the vote decides
    flexible = np.zeros(12)
    simple = np.full(12, -5.0)
    simple[0] = 500.0
    chosen, tied, winner = pick_model({"simple": simple, "flexible": flexible}, k, 2.0)
    assert (chosen, winner, tied) == ("flexible", "flexible", ["flexible"])
    # higher on 8 of 12 only (P = 0.19): the simpler tied model stays, the tie is kept
    simple = np.full(12, -5.0)
    simple[:4] = 20.0
    chosen, tied, winner = pick_model({"simple": simple, "flexible": flexible}, k, 2.0)
    assert (chosen, winner, tied) == ("simple", "flexible", ["simple", "flexible"])
    # a simpler model that wins the vote replaces a more flexible best sum outright
    chosen, _, winner = pick_model({"simple": -simple, "flexible": flexible}, k, 2.0)
    assert chosen == winner == "simple"


def test_random_effects_without_standard_errors_do_not_overflow():
    """Standard errors of 0 (a degenerate fit) weigh devices by 1e300: the population
    mean of large values must still be their mean, without an overflow warning."""
    import warnings

    from rpuhw.calibration.fit import _random_effects

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mu, tau = _random_effects(np.array([2e9, 3e9, 4e9]), np.zeros(3))
    assert mu == pytest.approx(3e9) and tau == pytest.approx(1e9)


def test_a_variance_that_is_not_positive_gives_its_device_no_weight():
    """_sd: a non-positive variance (a covariance that is not positive definite) is an
    unknown standard error, NaN, which _random_effects weighs as nothing, without a numpy
    warning; the population mean then comes from the other devices."""
    import warnings

    from rpuhw.calibration.fit import _random_effects, _sd

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        se = _sd(np.array([0.01, -0.02, 0.0, 0.04]))
    assert se[0] == pytest.approx(0.1) and se[3] == pytest.approx(0.2)
    assert np.isnan(se[1]) and np.isnan(se[2])
    x = np.array([1.0, 50.0, 60.0, 1.2])
    mu, _ = _random_effects(x, se)
    assert 1.0 <= mu <= 1.2  # the two unknown devices carry no weight
