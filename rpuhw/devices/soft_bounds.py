"""``soft_bounds``: the step shrinks linearly to zero at the device's bounds.

.. math::

    \\Delta_{up}(w) = \\Delta w^{up}_{ij}\\,(1 - w / w^{max}_{ij}),\\qquad
    \\Delta_{down}(w) = \\Delta w^{down}_{ij}\\,(1 - w / w^{min}_{ij})

(requires ``w_min < 0 < w_max``). The step is affine in ``w``, so n pulses
compose in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpuhw.config import require
from rpuhw.devices.base import DeviceModel, PulsedDeviceParams
from rpuhw.devices.registry import register_model

_TINY = 1e-12


def mean_step(w, up, prm, i, j, c):
    """The step rule: ``dw_up (1 - w / w_max)`` up, ``dw_down (1 - w / w_min)`` down."""
    if up:
        return prm[i, j, 0] * (1.0 - w / prm[i, j, 3])
    return prm[i, j, 1] * (1.0 - w / prm[i, j, 2])


@dataclass
class SoftBoundsParams(PulsedDeviceParams):
    """Parameters of ``soft_bounds`` (the shared pulsed-device keys)."""

    def validate(self) -> None:
        super().validate()
        require(self.w_max > 0, "w_max", f"soft_bounds needs w_max > 0, got {self.w_max}")
        require(self.w_min < 0, "w_min", f"soft_bounds needs w_min < 0, got {self.w_min}")


@register_model
class SoftBounds(DeviceModel):
    """Step proportional to the distance to the bound in the pulse's direction."""

    name = "soft_bounds"
    Params = SoftBoundsParams
    mean_step = mean_step
    affine_step = True

    def draw_extra(self, state, rows, cols, gen):
        # keep the bounds strictly on their side of zero so 1/w_max and 1/w_min exist
        state["w_max"] = state["w_max"].clamp_min(_TINY)
        state["w_min"] = state["w_min"].clamp_max(-_TINY)
        return {}
