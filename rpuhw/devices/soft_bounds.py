"""``soft_bounds``: the step shrinks linearly to zero at the device's bounds (aihwkit's
SoftBoundsDevice).

.. math::

    \\Delta_{up}(w) = \\Delta w^{up}_{ij}\\,(1 - w / w^{max}_{ij}),\\qquad
    \\Delta_{down}(w) = \\Delta w^{down}_{ij}\\,(1 - w / w^{min}_{ij})

with each device's own bounds (requires ``w_min < 0 < w_max``). This is aihwkit's
SoftBoundsDevice, a LinearStep with ``gamma_up = gamma_down = 1``, no spread of gamma and
``mean_bound_reference: false``. Noise is multiplicative,
:math:`\\Delta_d(w)(1 + \\sigma\\xi)`, or with ``mult_noise: false`` additive on the
constant part only, :math:`\\Delta_d(w) + \\Delta w^{d}_{ij}\\sigma\\xi`. The step is
affine in ``w``, so n pulses compose in closed form. aihwkit's
``reverse_up/down`` and the SoftBoundsReference keys are not simulated (rejected unless at
their no-effect values); write noise (``write_noise_std``) and decay (``lifetime``) as
aihwkit's (:mod:`rpuhw.devices.base`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rpuhw.config import require
from rpuhw.devices.base import (
    AIHWKIT_UNSUPPORTED,
    DeviceModel,
    WriteNoiseParams,
)
from rpuhw.devices.linear_step import REVERSE_UNSUPPORTED
from rpuhw.devices.linear_step import noise as linear_noise
from rpuhw.devices.registry import register_model

_TINY = 1e-12

REFERENCE_UNSUPPORTED: dict[str, tuple[object, str]] = {
    "slope_up_dtod": (0.0, "SoftBoundsReference's slope spread is not simulated"),
    "slope_down_dtod": (0.0, "SoftBoundsReference's slope spread is not simulated"),
    "reference_mean": (0.0, "SoftBoundsReference's reference device is not simulated"),
    "reference_std": (0.0, "SoftBoundsReference's reference device is not simulated"),
    "subtract_symmetry_point": (False, "SoftBoundsReference's symmetry-point subtraction "
                                       "is not simulated"),
}
"""aihwkit SoftBoundsReferenceDevice keys: accepted at the values where that device is a
SoftBoundsDevice."""


def mean_step(w, up, prm, i, j, c):
    """The step rule: ``dw_up (1 - w / w_max)`` up, ``dw_down (1 - w / w_min)`` down."""
    if up:
        return prm[i, j, 0] * (1.0 - w / prm[i, j, 3])
    return prm[i, j, 1] * (1.0 - w / prm[i, j, 2])


@dataclass
class SoftBoundsParams(WriteNoiseParams):
    """Parameters of ``soft_bounds`` (the shared pulsed-device keys and mult_noise)."""

    mult_noise: bool = True
    """Cycle-to-cycle noise multiplies the whole step (else it is added to the constant
    part, scaled by the device's dw)."""

    def validate(self) -> None:
        require(self.w_max > 0, "w_max", f"soft_bounds needs w_max > 0, got {self.w_max}")
        require(self.w_min < 0, "w_min", f"soft_bounds needs w_min < 0, got {self.w_min}")
        super().validate()


@register_model
class SoftBounds(DeviceModel):
    """Step proportional to the distance to the bound in the pulse's direction."""

    name = "soft_bounds"
    Params = SoftBoundsParams
    unsupported = {**AIHWKIT_UNSUPPORTED, **REVERSE_UNSUPPORTED,
                   **REFERENCE_UNSUPPORTED}
    mean_step = mean_step
    noise = linear_noise  # linear_step's rule: multiplicative, or additive (mult_noise)
    affine_step = True

    def draw_extra(self, state, rows, cols, gen):
        # keep the bounds strictly on their side of zero so 1/w_max and 1/w_min exist
        state["w_max"] = state["w_max"].clamp_min(_TINY)
        state["w_min"] = state["w_min"].clamp_max(-_TINY)
        return {}

    def constants(self) -> list[float]:
        return [self.params.dw_min_std, 1.0 if self.params.mult_noise else 0.0]
