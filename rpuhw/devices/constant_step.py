"""``constant_step``: the paper's RPU baseline, a constant step with hard bounds.

.. math::

    \\Delta_{up}(w) = \\Delta w^{up}_{ij},\\qquad \\Delta_{down}(w) = \\Delta w^{down}_{ij}

so n pulses in one direction add :math:`n\\Delta` plus Gaussian noise of
variance :math:`n(\\sigma_{c2c}\\Delta)^2`, then clip to the device's bounds: aihwkit's
ConstantStepDevice, with the per-device steps and bounds drawn as aihwkit draws them
(:mod:`rpuhw.devices.base`).
"""

from __future__ import annotations

from rpuhw.devices.base import DeviceModel, PulsedDeviceParams
from rpuhw.devices.registry import register_model


def mean_step(w, up, prm, i, j, c):
    """The step rule: ``dw_up`` up, ``dw_down`` down (prm[i, j, 0], prm[i, j, 1])."""
    return prm[i, j, 0] if up else prm[i, j, 1]


@register_model
class ConstantStep(DeviceModel):
    """Constant step size per pulse, clipped to per-device hard bounds."""

    name = "constant_step"
    Params = PulsedDeviceParams
    mean_step = mean_step
    affine_step = True
