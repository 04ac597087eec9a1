"""SimulatedArray's analog behaviour (io block), state, engines and program report.

Statistical tolerances: a sample std from n Gaussian draws has standard error
sigma / sqrt(2 n); means sigma / sqrt(n); we allow 5 standard errors.
"""

from __future__ import annotations

import math

import pytest
import torch

from rpuhw import DeviceSpec, SimulatedArray
from rpuhw._jit import HAVE_NUMBA
from rpuhw.devices import get_model
from rpuhw.periphery.io import IOConfig


def quiet_model(name="constant_step", **kw):
    cls = get_model(name)
    return cls(cls.Params(dw_min_dtod=0, dw_min_std=0, up_down_dtod=0, w_min_dtod=0,
                          w_max_dtod=0, **kw))


def array(io: IOConfig, rows=8, cols=10, seed=0, name="constant_step"):
    a = SimulatedArray(rows, cols, DeviceSpec(model=quiet_model(name), io=io), seed=seed)
    a.set_weights(torch.empty(rows, cols).uniform_(-0.5, 0.5,
                                                   generator=torch.Generator().manual_seed(1)))
    return a


def test_output_noise_has_the_configured_std():
    a = array(IOConfig(out_noise=0.06))
    x = torch.rand(4000, 10) * 2 - 1
    err = a.forward(x) - x @ a.read().T
    n = err.numel()
    assert abs(float(err.mean())) < 5 * 0.06 / math.sqrt(n)
    assert abs(float(err.std()) - 0.06) < 5 * 0.06 / math.sqrt(2 * n)
    d = torch.rand(4000, 8) * 2 - 1
    errb = a.backward(d) - d @ a.read()
    assert errb.shape == (4000, 10)
    assert abs(float(errb.std()) - 0.06) < 5 * 0.06 / math.sqrt(2 * errb.numel())


def test_output_bound_and_input_range():
    a = array(IOConfig(out_noise=0.0, out_bound=0.5))
    y = a.forward(torch.ones(3, 10) * 5.0)  # inputs clipped to +-1 first
    exact = torch.ones(3, 10) @ a.read().T
    assert torch.allclose(y, exact.clamp(-0.5, 0.5), atol=1e-6)
    assert float(y.abs().max()) <= 0.5


def test_dac_and_adc_resolution():
    a = array(IOConfig(out_noise=0.0, inp_res=1 / 4, out_res=1 / 24, out_bound=12))
    x = torch.rand(50, 10) * 2 - 1
    y = a.forward(x)
    xq = torch.round(x / 0.5) * 0.5  # DAC step = 1/4 of the range 2 -> 0.5
    yq = torch.round((xq @ a.read().T) / 1.0) * 1.0  # ADC step = 24 / 24 = 1
    assert torch.allclose(y, yq, atol=1e-5)
    assert torch.allclose(y, torch.round(y))


def test_read_noise_std():
    a = array(IOConfig(read_noise=0.01), rows=40, cols=50)
    w = a.weights.clone()
    err = torch.stack([a.read() - w for _ in range(20)])
    n = err.numel()
    assert abs(float(err.std()) - 0.01) < 5 * 0.01 / math.sqrt(2 * n)
    assert torch.equal(a.weights, w)  # reading does not disturb


@pytest.mark.parametrize("engine", ["torch"] + (["numba"] if HAVE_NUMBA else []))
def test_program_reaches_targets_and_reports(engine):
    a = SimulatedArray(6, 7, "soft_bounds", seed=3, engine=engine)
    target = torch.empty(6, 7).uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(2))
    rep = a.program(target, tol=0.01, max_iter=50)
    err = (a.read() - target).abs()
    assert rep.converged == bool((err <= 0.01).all())
    assert rep.max_error == pytest.approx(float(err.max()), abs=1e-6)
    assert rep.pulses > 0 and 1 <= rep.iterations <= 50 and len(rep.history) >= rep.iterations
    stuck = (a.state["dw_up"] == 0) | (a.state["dw_down"] == 0)
    assert bool((err[~stuck] <= 0.01).all())


def test_state_dict_round_trip_continues_identically():
    a = SimulatedArray(5, 6, "linear_step", seed=4)
    a.pulse(torch.randint(-20, 20, (5, 6), dtype=torch.int32))
    sd = a.state_dict()
    b = SimulatedArray(5, 6, "linear_step", seed=99)
    b.load_state_dict(sd)
    assert torch.equal(a.read(), b.read())
    counts = torch.randint(-20, 20, (5, 6), dtype=torch.int32)
    a.pulse(counts)
    b.pulse(counts)
    assert torch.equal(a.read(), b.read())
    with pytest.raises(ValueError, match="model"):
        SimulatedArray(5, 6, "soft_bounds").load_state_dict(sd)


def test_engine_argument_and_repr():
    with pytest.raises(ValueError, match="engine"):
        SimulatedArray(2, 2, engine="cuda")
    assert "engine=" in repr(SimulatedArray(2, 2, seed=1))
