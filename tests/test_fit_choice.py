"""The held-out model choice on simulated devices (issue 19's test: 12 devices of each
of the six models, read noise one step and a tenth of one). Its own file so that
``make test``'s workers (one file each at a time) run it beside the rest of
tests/test_fit_statespace.py, whose generator (``_data``) it uses."""

from __future__ import annotations

import pytest
from test_fit import MODELS  # tests/ is on sys.path
from test_fit_statespace import STEP, _data

from rpuhw.calibration.fit import FitConfig, fit


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("noise", [
    1.0,
    pytest.param(0.1, marks=pytest.mark.xfail(strict=True, run=False, reason=(
        "issue 19 open: at read noise a tenth of a step the held-out choice is right for "
        "4 of 6 models (measured at the commit that holds out the even cycles). exp_step "
        "data -> pow_step: exp_step scores higher on 10 of 12 devices and fits all the "
        "data 275 nats better, but one device's down half-cycle in the training (odd) "
        "cycle ended 1 uS above its lower bound, so the hard bound rests on one read and "
        "the held-out cycle, which sat at the bound, falls 2 read-noise sigma below it: "
        "-258 nats on that device, -141 in all; pow_step's bound comes from its step shape "
        "and escapes this. piecewise data -> linear_step: piecewise is best by 220 nats "
        "but within 2 paired standard errors and not beaten on most devices, so the "
        "model with the fewest per-device parameters among the tied is chosen (ranking by "
        "all parameters on 12 devices instead made it 3 of 6 at both noise levels). "
        "~1.5 min. Run it with --runxfail"))),
])
def test_auto_chooses_the_true_model(noise):
    """12 devices of each model, read noise one step / a tenth of one: the held-out choice
    is the true model for at least 5 of the 6 (the issue's criterion)."""
    right, table = 0, []
    for model in MODELS:
        m, _ = _data(model, noise * STEP)
        res = fit(m, "auto", FitConfig(bootstrap=0))
        right += res.model == model
        table.append(f"{model}: chose {res.model}; {res.explanation}")
        assert set(res.held_out) == set(MODELS)
        assert len({s.n for s in res.scores.values()}) == 1  # every model on the same reads
    assert right >= 5, "\n".join(table)
