"""Parameter recovery and the automatic model choice on simulated devices
(calibration/fit.py; the generator and the devices are tests/test_fit.py's). Its own file
so that ``make test``'s workers (one file each at a time) run these long fits beside the
rest of tests/test_fit.py."""

from __future__ import annotations

import pytest
from test_fit import (  # tests/ is on sys.path
    BASE,
    EXTRA,
    MODELS,
    PROTOCOL,
    _drawn_up_down,
    _rel,
    generate,
)

from rpuhw.calibration.fit import FitConfig, fit
from rpuhw.calibration.fit_report import mid_range_steps, parameter_table
from rpuhw.device_spec import spec_from_mapping


@pytest.mark.parametrize("model", MODELS)
def test_recovers_known_parameters(model):
    # reads with read noise a tenth of the step (issue 19's quieter condition): the
    # state-space likelihood needs some read noise (noise-free reads make it unbounded;
    # the fit's read-noise floor is 1e-3 of the median step)
    mapping = {"model": model, **BASE, **EXTRA.get(model, {}),
               "io": {"read_noise": 0.1 * BASE["dw_min"]}}
    pulses, cycles = PROTOCOL.get(model, (300, 2))
    m, arr = generate(mapping, rows=8, cols=8, pulses=pulses, cycles=cycles)
    res = fit(m, model)
    table = parameter_table(res)
    assert res.ok, table
    true_spec = spec_from_mapping(mapping)
    fitted = res.to_device_spec()
    t_up, t_down = mid_range_steps(true_spec)
    f_up, f_down = mid_range_steps(fitted)
    errors = {"mid-range up step": _rel(f_up, t_up), "mid-range down step":
              _rel(f_down, t_down), "g_min": _rel(res.g_min, 3e-5),
              "g_max": _rel(res.g_max, 1e-4),
              "up_down": _rel(res.params["up_down"],
                              _drawn_up_down(arr, 0.5 * (res.g_min + res.g_max)))}
    spreads = {k: _rel(res.params[k], mapping[k]) for k in
               ("dw_min_dtod", "up_down_dtod", "w_min_dtod", "w_max_dtod", "dw_min_std")}
    assert max(errors.values()) < 0.10, f"{errors}\n{table}"
    assert max(spreads.values()) < 0.25, f"{spreads}\n{table}"
    # the fitted weight range is [-1, 1] on the fitted mean conductances
    assert fitted.model.params.w_min == -1.0 and fitted.model.params.w_max == 1.0
    assert fitted.conductance.g_min == pytest.approx(res.g_min)
    # uncertainties are reported for the fitted keys and are small against the values
    assert res.uncertainties["dw_min"] < 0.05 * res.params["dw_min"]


def test_auto_picks_the_true_model():
    cfg = FitConfig()
    for model in ("soft_bounds", "constant_step"):
        # 16 devices (64 gave the same choices and the same thin margins against the
        # nested, more flexible models, in 2.4 times the time)
        m, _ = generate({"model": model, **BASE}, rows=4, cols=4, pulses=250, cycles=2)
        res = fit(m, "auto", cfg)
        assert res.model == model, parameter_table(res)
        assert res.ok
        assert res.explanation.startswith(f"{model}: held-out log-likelihood")
        assert set(res.scores) == set(MODELS)
