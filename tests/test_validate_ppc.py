"""Posterior-predictive validation (issue 19 item 5): it rejects a wrong model of the data,
accepts the true one, keeps its false-rejection rate, and follows the measured protocol
(K reads per pulse, devices stopped at different pulses)."""

from __future__ import annotations

import numpy as np
import pytest

from rpuhw.calibration.measurements import Measurements, MeasurementWriter, load_measurements
from rpuhw.calibration.protocols import parse_devices, pulse_response
from rpuhw.calibration.validate import CHECKS, measured_traces, replay, validate
from rpuhw.device_spec import spec_from_mapping
from rpuhw.sim.array import SimulatedArray

pytestmark = pytest.mark.timeout(300)

# soft bounds, read noise equal to one step (dw_min 0.02 weight units); w in [-1, 1] <->
# g in [5, 14] uS; 200 pulses per direction are 4 e-folds of soft bounds' approach
# (1 / dw_min = 50 pulses), so both bounds are reached
BASE = dict(dw_min=0.02, dw_min_std=0.3, dw_min_dtod=0.1, up_down=0.0, w_min=-1.0,
            w_max=1.0, w_min_dtod=0.1, w_max_dtod=0.1, io={"read_noise": 0.02},
            conductance={"g_min": 5e-6, "g_max": 1.4e-5})
SOFT = spec_from_mapping({"model": "soft_bounds", **BASE}, source="soft")
CONST = spec_from_mapping({"model": "constant_step", **BASE}, source="const")


def _measure(tmp, seed, devices=12, pulses=200, cycles=2):
    """The pulse-response protocol on a 4 x 4 simulated array of soft-bounds devices."""
    path = tmp / f"soft{seed}.csv"
    arr = SimulatedArray(4, 4, device=SOFT, seed=seed, engine="torch")
    with MeasurementWriter(path, {}) as w:
        pulse_response(arr, parse_devices(str(devices), 4, 4), pulses, cycles, w,
                       progress=False)
        w.finish()
    return load_measurements(path)


@pytest.fixture(scope="module")
def soft_data(tmp_path_factory):
    return _measure(tmp_path_factory.mktemp("ppc"), seed=0)


def test_rejects_constant_step_fit_of_soft_bounds_data(soft_data):
    r = validate(CONST, soft_data, seed=0)
    assert not r.passed and "step_vs_state" in r.failed, r.summary()
    c = r.check("step_vs_state")
    # the measured discrepancy exceeds all 79 replicas' (the smallest p there is), and the
    # worst bin is one near a bound, where soft-bounds steps are large one way and vanish
    # the other while constant steps do not
    assert c.pvalue == 1 / 80 and abs(c.z) > 10 and c.effect > 0.5, c.line()
    assert " bin 0 " in c.worst or " bin 4 " in c.worst, c.line()
    assert "FAIL step_vs_state" in r.summary() and r.reasons[0].startswith("step_vs_state")


def test_accepts_the_true_spec_of_the_same_data(soft_data):
    # at seed 0; each check's false-rejection rate is <= 1.25 % (alpha 0.05 / 4), measured
    # in test_false_rejection_rate below
    r = validate(SOFT, soft_data, seed=0)
    assert r.passed, r.summary()
    assert all(c.tested for c in r.checks) and r.devices == 12
    c = r.check("residual_autocorrelation")
    # read noise equal to one step dominates the step residuals: r1 near -0.5 (pure read
    # noise gives -0.5; the 30 % multiplicative step noise pulls it slightly towards 0)
    assert -0.5 < c.measured < -0.4 and -0.5 < c.simulated < -0.4, c.line()


def test_seeded_and_deterministic(soft_data):
    a, b = validate(SOFT, soft_data, seed=3), validate(SOFT, soft_data, seed=3)
    assert a.to_dict() == b.to_dict()
    c = validate(SOFT, soft_data, seed=4)
    assert c.check("step_vs_state").simulated_mean != a.check("step_vs_state").simulated_mean


def _rows(g_reads: list[np.ndarray], k: int) -> Measurements:
    """Measurements of traces ``g_reads`` (per half-cycle [pulses + 1, D]), each read
    written ``k`` times with fresh noise already in the array (``[pulses + 1, k, D]``)."""
    dev, pul, pol, cyc, g = [], [], [], [], []
    for h, arr in enumerate(g_reads):
        n1, kk, n_dev = arr.shape
        idx = np.indices((n1, kk, n_dev))
        ok = ~np.isnan(arr)
        dev.append(idx[2][ok])
        pul.append(idx[0][ok])
        pol.append(np.full(ok.sum(), -1 if h % 2 else 1))
        cyc.append(np.full(ok.sum(), h // 2))
        g.append(arr[ok])
    return Measurements(device=np.concatenate(dev).astype(np.int64),
                        pulse=np.concatenate(pul).astype(np.int64),
                        polarity=np.concatenate(pol).astype(np.int8),
                        conductance=np.concatenate(g), cycle=np.concatenate(cyc),
                        source="<test>")


def _simulate(seed: int, k: int, stops: np.ndarray | None, pulses: int = 120) -> Measurements:
    """8 soft-bounds devices, 2 cycles, ``k`` reads after each pulse; device ``d`` gets
    ``stops[d]`` pulses per half-cycle (all ``pulses`` when None)."""
    n_dev = 8
    stops = np.full(n_dev, pulses) if stops is None else stops
    sim = SimulatedArray(1, n_dev, device=SOFT, seed=seed, engine="torch")
    out = []
    for h in range(4):
        arr = np.full((pulses + 1, k, n_dev), np.nan)
        for p in range(pulses + 1):
            if p:
                sim.pulse(torch_counts(np.where(stops >= p, -1 if h % 2 else 1, 0)))
            for r in range(k):
                arr[p, r] = SOFT.w_to_g(sim.read()[0].double().numpy())
        arr[np.arange(pulses + 1)[:, None, None] > stops[None, None, :]
            .repeat(k, axis=1)] = np.nan
        out.append(arr)
    return _rows(out, k)


def torch_counts(c: np.ndarray):
    import torch

    return torch.from_numpy(c.astype(np.int32))[None]


def test_k_reads_per_pulse_are_averaged_and_replayed():
    m = _simulate(seed=5, k=4, stops=None)
    assert getattr(m, "read", None) is None  # repeated rows without a read column
    tr = measured_traces(m)
    assert tr.reads == 4 and tr.g[0].shape == (121, 8)
    r = validate(SOFT, m, seed=0)
    assert r.passed and r.reads_per_pulse == 4, r.summary()
    # the step residual of pulse k is e_k = xi_k + n_(k+1) - n_k (step noise xi, variance
    # x; read noise of a K-read mean n, variance s^2 / K), so r1 = -(s^2/K) / (x + 2 s^2/K).
    # Averaging 4 reads moves r1 towards 0 by the amount this predicts from one read's r1
    # (in units of s^2: x = -1/r1(K=1) - 2, r1(K=4) = -0.25 / (x + 0.5)): the replicas
    # read 4 times too. Their mean r1 has a sampling error of sd / sqrt(79) ~ 0.0012; the
    # tolerance 0.015 also allows for the formula's neglect of the per-device bin means'
    # own noise (the same for both K)
    c = r.check("residual_autocorrelation")
    one = validate(SOFT, _simulate(seed=5, k=1, stops=None), seed=0)
    c1 = one.check("residual_autocorrelation")
    x = -1 / c1.simulated - 2
    assert abs(c.simulated - (-0.25 / (x + 0.5))) < 0.015, (c.simulated, c1.simulated)
    # the measured r1 moves the same way: predicted shift ~0.05, sd of the difference of
    # two data sets' r1 ~ sqrt(2) x 0.01 -> at least 0.05 - 3 x 0.014 = 0.008
    assert c.measured - c1.measured > 0.008, (c.measured, c1.measured)


def test_replay_follows_per_device_pulse_counts():
    stops = np.array([120, 100, 80, 60, 120, 90, 70, 110])
    m = _simulate(seed=6, k=1, stops=stops)
    tr = measured_traces(m)
    assert np.array_equal(tr.last[0], stops) and np.array_equal(tr.last[3], stops)
    sim = replay(SOFT, m, seed=0, replicas=3, traces=tr)
    for arr_m, arr_s in zip(tr.g, sim, strict=True):
        assert arr_s.shape == (121, 3, 8)
        assert np.array_equal(np.isnan(arr_s), np.broadcast_to(np.isnan(arr_m)[:, None],
                                                               arr_s.shape))
    # a device stopped early is not pulsed on: its next half-cycle starts where it stopped
    # (the replicas' first read of the down half equals their last up read within the read
    # noise, 0.02 weight units = 0.09 uS per read; 6 sigma of the difference of two reads)
    diff = np.abs(sim[1][0] - sim[0][stops, :, np.arange(8)].T)
    assert np.all(diff < 6 * np.sqrt(2) * 0.02 * 4.5e-6)
    r = validate(SOFT, m, seed=0)
    assert r.passed and r.pulses == 4 * int(stops.sum()), r.summary()


@pytest.mark.slow
def test_false_rejection_rate(tmp_path):
    """20 measurements drawn from the true device, validated against it: 80 p-values.

    Under the null each p-value is (at most) uniform on {1/80, ..., 1}: P(p <= 1/80) =
    1/80, so among 80 p-values the count at the rejection level is ~Binomial(80, 0.0125),
    mean 1; >= 5 has probability 0.3 %. The p-values' mean is 0.5 +- 0.032 (sd of a
    uniform over sqrt(80)); a conservative rule gives larger ones, an anti-conservative
    smaller: the mean must exceed 0.5 - 3 x 0.032 = 0.40. And no check may fail (with the
    effect floors, a failure needs p <= 1/80 and a large difference)."""
    p = []
    failed = []
    for seed in range(20):
        m = _measure(tmp_path, seed=100 + seed, devices=8, pulses=100)
        r = validate(SOFT, m, seed=seed)
        p += [c.pvalue for c in r.checks]
        failed += r.failed
    p = np.array(p)
    assert (p <= 1 / 80).sum() <= 4, p
    assert p.mean() > 0.40, p
    assert len(failed) <= 2 and set(failed) <= set(CHECKS), failed


def test_fit_report_shows_intervals_and_checks(soft_data):
    """The Markdown report: every fitted key with its 95 % interval (and the truth), and
    one row per validation check; the JSON report's intervals cover params + bounds."""
    from rpuhw.calibration.fit import fit
    from rpuhw.calibration.fit_report import interval, markdown_report, report

    res = fit(soft_data, "soft_bounds")
    val = validate(res, soft_data, seed=0)  # a FitResult is validated as its device spec
    md = markdown_report(res, val, truth=SOFT)
    keys = [k for k, v in res.params.items() if isinstance(v, float)]
    for k in [*keys, "g_min", "g_max", "read_noise"]:
        iv = interval(res, k)
        row = next(ln for ln in md.splitlines() if ln.startswith(f"| `{k}` |"))
        assert (iv is None and "| - |" in row) or f"[{iv[0]:.4g}, {iv[1]:.4g}]" in row, row
        assert row.rstrip().endswith(("| yes |", "| **no** |", "| - |")), row
    assert f"### Validation: {'PASS' if val.passed else 'FAIL'}" in md
    for c in val.checks:
        assert any(ln.startswith(f"| {c.name} |") for ln in md.splitlines()), c.name
    js = report(res)
    assert {"g_min", "g_max", "read_noise"} <= set(js["intervals"]), js["intervals"]
    assert all(lo <= hi for lo, hi in js["intervals"].values())


def test_string_device_ids(soft_data, tmp_path):
    """A lab's CSV with device ids such as ``chipA-d0`` validates like the integer one."""
    src = soft_data.source
    lines = open(src).read().splitlines()
    col = lines[0].split(",").index("device")
    out = [lines[0]]
    for ln in lines[1:]:
        f = ln.split(",")
        f[col] = f"chipA-d{f[col]}"
        out.append(",".join(f))
    path = tmp_path / "ids.csv"
    path.write_text("\n".join(out) + "\n")
    a, b = validate(SOFT, soft_data, seed=0), validate(SOFT, path, seed=0)
    assert b.passed and b.devices == 12, b.summary()
    assert [c.pvalue for c in a.checks] == [c.pvalue for c in b.checks]
