"""``exp_step``: the step saturates exponentially towards the bounds (aihwkit's ExpStep).

.. math::

    z_{ij}(w) = 2a\\,\\frac{w}{w^{max}_{ij} - w^{min}_{ij}} + b

    \\Delta_{up}(w) = \\Delta w^{up}_{ij}\\,
    \\max\\big(1 - A_{up}\\,e^{\\gamma_{up} z_{ij}},\\,0\\big),\\qquad
    \\Delta_{down}(w) = \\Delta w^{down}_{ij}\\,
    \\max\\big(1 - A_{down}\\,e^{-\\gamma_{down} z_{ij}},\\,0\\big)

with tile-wide fit parameters :math:`A_d, \\gamma_d, a, b` (no device-to-device
spread; ``dw_min``, ``up_down`` and the bounds keep theirs). Cycle-to-cycle noise
has a floor and a weight-dependent part:

.. math::

    w \\leftarrow \\mathrm{clip}\\big(w + d\\,[\\Delta_d(w) + \\sigma_{c2c}\\,
    (\\Delta_d(w) + \\sigma_{add} + \\sigma_{slope}|w|)\\,\\xi],\\;
    w^{min}_{ij},\\; w^{max}_{ij}\\big)

with :math:`\\sigma_{add}` = ``dw_min_std_add`` and :math:`\\sigma_{slope}` =
``dw_min_std_slope``; with both zero this is the usual multiplicative noise
:math:`\\Delta_d(w)(1 + \\sigma_{c2c}\\xi)`. Not affine in ``w``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rpuhw._jit import njit
from rpuhw.config import require
from rpuhw.devices._nb import move
from rpuhw.devices.base import DeviceModel, PulsedDeviceParams, State
from rpuhw.devices.registry import register_model

_TINY = 1e-12
_EXP_MAX = 80.0  # cap on the exponent: A * e^80 is finite in float32, and the step is 0 there


@njit(inline="always")
def _nb_pulse(w, up, xi, prm, i, j, c):
    # c = [dw_min_std, A_up, A_down, gamma_up, gamma_down, a, b, std_add, std_slope]
    span = prm[i, j, 3] - prm[i, j, 2]
    if span < _TINY:
        span = _TINY
    z = 2.0 * c[5] * w / span + c[6]
    if up:
        arg = c[3] * z
        if arg > _EXP_MAX:
            arg = _EXP_MAX
        y = 1.0 - c[1] * math.exp(arg)
        dw = prm[i, j, 0]
    else:
        arg = -c[4] * z
        if arg > _EXP_MAX:
            arg = _EXP_MAX
        y = 1.0 - c[2] * math.exp(arg)
        dw = prm[i, j, 1]
    if y < 0.0:
        y = 0.0
    mean = dw * y
    step = mean + c[0] * (mean + c[7] + c[8] * abs(w)) * xi
    return move(w, up, step, prm, i, j)


@dataclass
class ExpStepParams(PulsedDeviceParams):
    """Parameters of ``exp_step`` (aihwkit's ExpStepDevice names and defaults)."""

    A_up: float = 0.00081
    """Factor A of the up step's exponential (dimensionless, >= 0)."""

    A_down: float = 0.36833
    """Factor A of the down step's exponential (dimensionless, >= 0)."""

    gamma_up: float = 12.44625
    """Exponent gamma of the up step, per unit of z (dimensionless)."""

    gamma_down: float = 12.78785
    """Exponent gamma of the down step, per unit of z (dimensionless)."""

    a: float = 0.244
    """Slope a of z = 2 a w / (w_max - w_min) + b (dimensionless)."""

    b: float = 0.2425
    """Offset b of z = 2 a w / (w_max - w_min) + b (dimensionless)."""

    dw_min_std_add: float = 0.0
    """Noise floor added to the step before scaling by ``dw_min_std`` (weight units)."""

    dw_min_std_slope: float = 0.0
    """Noise growing with |w|, added before scaling by ``dw_min_std`` (per weight unit)."""

    def validate(self) -> None:
        super().validate()
        for key in ("A_up", "A_down", "dw_min_std_add", "dw_min_std_slope"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


@register_model
class ExpStep(DeviceModel):
    """Step that falls off exponentially towards the bound in the pulse's direction."""

    name = "exp_step"
    Params = ExpStepParams
    nb_pulse = staticmethod(_nb_pulse)

    def constants(self) -> list[float]:
        p: ExpStepParams = self.params  # type: ignore[assignment]
        return [p.dw_min_std, p.A_up, p.A_down, p.gamma_up, p.gamma_down, p.a, p.b,
                p.dw_min_std_add, p.dw_min_std_slope]

    def step(self, w: torch.Tensor, up: torch.Tensor, state: State) -> torch.Tensor:
        p: ExpStepParams = self.params  # type: ignore[assignment]
        span = (state["w_max"] - state["w_min"]).clamp_min(_TINY)
        z = 2.0 * p.a * w / span + p.b
        y_up = 1.0 - p.A_up * torch.exp((p.gamma_up * z).clamp_max(_EXP_MAX))
        y_down = 1.0 - p.A_down * torch.exp((-p.gamma_down * z).clamp_max(_EXP_MAX))
        return torch.where(up, state["dw_up"] * y_up.clamp_min(0.0),
                           state["dw_down"] * y_down.clamp_min(0.0))

    def pulse(self, w, up, xi, state):
        p: ExpStepParams = self.params  # type: ignore[assignment]
        sign = torch.where(up, 1.0, -1.0)
        mean = self.step(w, up, state)
        std = p.dw_min_std * (mean + p.dw_min_std_add + p.dw_min_std_slope * w.abs())
        dw = sign * (mean + std * xi)
        return torch.minimum(torch.maximum(w + dw, state["w_min"]), state["w_max"])
