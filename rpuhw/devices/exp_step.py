"""``exp_step``: the step saturates exponentially towards the bounds (aihwkit's ExpStep).

.. math::

    z_{ij}(w) = 2a\\,\\frac{w}{w^{max}_{ij} - w^{min}_{ij}} + b

    \\Delta_{up}(w) = \\Delta w^{up}_{ij}\\,
    \\max\\big(1 - A_{up}\\,e^{\\gamma_{up} z_{ij}},\\,0\\big),\\qquad
    \\Delta_{down}(w) = \\Delta w^{down}_{ij}\\,
    \\max\\big(1 - A_{down}\\,e^{-\\gamma_{down} z_{ij}},\\,0\\big)

with tile-wide fit parameters :math:`A_d, \\gamma_d, a, b` (no device-to-device
spread; ``dw_min``, ``up_down`` and the bounds keep theirs). :math:`A_d` may be negative
(aihwkit's ReRamES preset: the step then grows towards the bound). A device whose bounds
coincide does not move. Cycle-to-cycle noise
has a floor and a weight-dependent part:

.. math::

    w \\leftarrow \\mathrm{clip}\\big(w + d\\,[\\Delta_d(w) + \\sigma_{c2c}\\,
    (\\Delta_d(w) + \\sigma_{add} + \\sigma_{slope}|w|)\\,\\xi],\\;
    w^{min}_{ij},\\; w^{max}_{ij}\\big)

with :math:`\\sigma_{add}` = ``dw_min_std_add`` and :math:`\\sigma_{slope}` =
``dw_min_std_slope`` (absolute, weight units, not scaled by ``dw_min``); with both zero
this is the usual multiplicative noise :math:`\\Delta_d(w)(1 + \\sigma_{c2c}\\xi)`. Not
affine in ``w``. aihwkit's weight granularity is the mean device's down step at
``w = 0`` (:meth:`ExpStep.granularity`). Write noise (``write_noise_std``) and decay
(``lifetime``) as aihwkit's (:mod:`rpuhw.devices.base`); a device whose bounds coincide
keeps its visible weight when pulsed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rpuhw.config import require
from rpuhw.devices.base import (
    AIHWKIT_UNSUPPORTED,
    DeviceModel,
    WriteNoiseParams,
)
from rpuhw.devices.registry import register_model
from rpuhw.devices.rule import maximum, minimum

_TINY = 1e-12
_EXP_MAX = 80.0  # cap on the exponent: A * e^80 is finite in float32, and the step is 0 there


def mean_step(w, up, prm, i, j, c):
    """The step rule, ``dw_d max(1 - A_d e^(+-gamma_d z), 0)`` with
    ``z = 2 a w / (w_max - w_min) + b``.

    ``c = [dw_min_std, A_up, A_down, gamma_up, gamma_down, a, b, std_add, std_slope]``.
    """
    z = 2.0 * c[5] * w / maximum(prm[i, j, 3] - prm[i, j, 2], _TINY) + c[6]
    if up:
        return prm[i, j, 0] * maximum(1.0 - c[1] * np.exp(minimum(c[3] * z, _EXP_MAX)),
                                         0.0)
    return prm[i, j, 1] * maximum(1.0 - c[2] * np.exp(minimum(-c[4] * z, _EXP_MAX)),
                                     0.0)


def noise(mean, w, up, xi, prm, i, j, c):
    """``mean + sigma (|mean| + std_add + std_slope |w|) xi`` (aihwkit's complex noise; the
    mean is negative only for a negative step drawn without enforce_consistency)."""
    return mean + c[0] * (abs(mean) + c[7] + c[8] * abs(w)) * xi


@dataclass
class ExpStepParams(WriteNoiseParams):
    """Parameters of ``exp_step`` (aihwkit's ExpStepDevice names and defaults)."""

    A_up: float = 0.00081
    """Factor A of the up step's exponential (dimensionless; < 0: the step grows)."""

    A_down: float = 0.36833
    """Factor A of the down step's exponential (dimensionless; < 0: the step grows)."""

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
        for key in ("dw_min_std_add", "dw_min_std_slope"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


@register_model
class ExpStep(DeviceModel):
    """Step that falls off exponentially towards the bound in the pulse's direction."""

    name = "exp_step"
    Params = ExpStepParams
    unsupported = {**AIHWKIT_UNSUPPORTED}
    write_noise_skips_pinned = True  # aihwkit's update_once returns early
    mean_step = mean_step
    noise = noise

    def granularity(self) -> float:
        """aihwkit's ExpStep granularity: the mean device's down step at w = 0,
        ``dw_min (1 - max(up_down, 0)) max(1 - A_down e^(-gamma_down b), 0)`` (aihwkit
        averages the down step with itself), or ``dw_min`` where that is 0."""
        p: ExpStepParams = self.params  # type: ignore[assignment]
        down = (p.dw_min * (1.0 - max(p.up_down, 0.0))
                * max(1.0 - p.A_down * math.exp(min(-p.gamma_down * p.b, _EXP_MAX)), 0.0))
        return down if down > 0 else float(p.dw_min)

    def constants(self) -> list[float]:
        p: ExpStepParams = self.params  # type: ignore[assignment]
        return [p.dw_min_std, p.A_up, p.A_down, p.gamma_up, p.gamma_down, p.a, p.b,
                p.dw_min_std_add, p.dw_min_std_slope]
