"""``weight_scaling_omega`` (LayerPlan, ``rpuhw train --weight-scaling-omega``): the
layer's weights are ``alpha`` times the device weights, ``alpha = 1/(omega sqrt(n_in))``;
outputs are scaled by ``alpha``, the devices asked for ``lr / alpha``."""

from __future__ import annotations

import math

import pytest
import torch

from rpuhw.errors import ConfigError
from rpuhw.nn import AnalogLinear
from rpuhw.schedule import LayerPlan, TileGrid
from rpuhw.train import TrainConfig

IN, OUT = 16, 5  # 17 columns with the bias


def _layer(omega: float, backend: str = "ideal", **kw) -> AnalogLinear:
    torch.manual_seed(0)
    return AnalogLinear(IN, OUT, plan=LayerPlan(backend=backend, weight_scaling_omega=omega,
                                                **kw), seed=1)


def test_weights_live_on_the_devices_scaled_and_read_back_unscaled():
    alpha = 1 / (0.8 * math.sqrt(IN + 1))
    plain, scaled = _layer(0.0), _layer(0.8)
    grid = scaled.algorithm.grids["C"]
    assert grid.scale == pytest.approx(alpha)
    w = plain.analog_weight()
    assert torch.allclose(scaled.analog_weight(), w, rtol=1e-6, atol=1e-7)
    # the devices hold w / alpha: torch's bound 1/sqrt(16) becomes 0.8 sqrt(17/16)
    dev = grid.arrays[0].read()[:, :IN]
    assert torch.allclose(dev, w / alpha, rtol=1e-6, atol=1e-6)
    assert dev.abs().max() <= 0.8 * math.sqrt(17 / 16) + 1e-6
    x = torch.randn(7, IN)
    assert torch.allclose(scaled(x), plain(x), rtol=1e-5, atol=1e-5)


def test_omega_zero_leaves_the_grid_unscaled():
    grid = TileGrid(OUT, IN + 1, LayerPlan(backend="ideal"), seed=0)
    assert grid.scale == 1.0
    assert grid.forward == grid._single.forward  # the direct path is kept


def test_the_sgd_step_of_the_weights_is_unchanged_in_expectation():
    """ideal devices (steps of exactly dw): the mean change of 400 repeated updates is
    -lr d x^T with and without scaling; with alpha the devices take 1/alpha as many
    steps per weight change. Tolerance: each weight's change is a sum of stochastic
    pulses, whose count has variance <= its mean; 5 standard errors."""
    x = torch.full((1, IN + 1), 0.5)
    d = torch.linspace(-0.5, 0.5, OUT)[:, None].T.contiguous()
    lr, reps = 0.002, 400  # at most 4.1 expected pulses of BL 10 per update (no clipping)
    for omega in (0.0, 2.0):
        grid = TileGrid(OUT, IN + 1, LayerPlan(backend="ideal", weight_scaling_omega=omega),
                        seed=3)
        grid.set_weights(torch.zeros(OUT, IN + 1))
        for _ in range(reps):
            grid.update(x, d, lr)
        mean = grid.read() / reps
        want = -lr * d.T @ x
        dw = grid.arrays[0].nominal_step() * grid.scale  # one pulse in weight units
        se = torch.sqrt(want.abs() / dw / reps) * dw  # Poisson-like count, per update
        assert ((mean - want).abs() <= 5 * se + 1e-9).all(), (omega, mean - want)


def test_algorithms_see_the_device_step_in_weight_units():
    """mp's granularity (the device's dw_min) and tt's transfer rule are in the layer's
    weight units: alpha times the device's."""
    plain = _layer(0.0, backend="sim", algorithm="mp")
    scaled = _layer(0.5, backend="sim", algorithm="mp")
    alpha = scaled.algorithm.grids["C"].scale
    assert scaled.algorithm.granularity == pytest.approx(alpha * plain.algorithm.granularity)
    assert scaled.algorithm.pulses_per_granule == plain.algorithm.pulses_per_granule
    tt0 = _layer(0.0, backend="sim", algorithm="tt", algorithm_params={"centre_a": False})
    tt1 = _layer(0.5, backend="sim", algorithm="tt", algorithm_params={"centre_a": False})
    assert tt1.algorithm.weight_range("A") == pytest.approx(alpha * tt0.algorithm
                                                            .weight_range("A"))
    assert tt1.algorithm.transfer_lr(0.01) == pytest.approx(tt0.algorithm.transfer_lr(0.01))


@pytest.mark.parametrize("omega", [-1.0, float("nan"), "big", True])
def test_bad_omega_names_the_key(omega):
    with pytest.raises(ConfigError, match="weight_scaling_omega"):
        LayerPlan(weight_scaling_omega=omega).validate()
    with pytest.raises(ConfigError, match="weight_scaling_omega"):
        TrainConfig(weight_scaling_omega=omega).validate()
