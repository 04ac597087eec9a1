"""``linear_step``: the step size changes linearly with the weight (aihwkit's LinearStep).

.. math::

    \\Delta_{up}(w) = \\Delta w^{up}_{ij}\\,(1 + \\gamma^{+}_{ij} w),\\qquad
    \\Delta_{down}(w) = \\Delta w^{down}_{ij}\\,(1 + \\gamma^{-}_{ij} w)

    \\gamma^{+}_{ij} = -|\\gamma_{up} + \\gamma^{dtod}_{up}\\xi| / b^{max},\\qquad
    \\gamma^{-}_{ij} = -|\\gamma_{down} + \\gamma^{dtod}_{down}\\xi| / b^{min}

with :math:`b^{max}, b^{min}` the mean bounds ``w_max, w_min``
(``mean_bound_reference: true``) or the device's own; a reference bound of 0 gives no
slope (aihwkit's ``w_ref == 0``). ``allow_increasing: true`` keeps the sign of
:math:`\\gamma + \\gamma^{dtod}\\xi` (no ``|.|``). This is aihwkit's
``slope = -|gamma| scale / w_ref``, step ``slope w + scale``: at the mean bound the mean
step has fallen by the fraction ``gamma``. ``gamma = 1`` with no spread and the own
bounds is soft bounds. Noise is multiplicative, :math:`\\Delta(w)(1+\\sigma\\xi)`, or
with ``mult_noise: false`` additive on the constant part only,
:math:`\\Delta(w) + \\Delta w^{d}_{ij}\\sigma\\xi` (aihwkit's ``slope w + scale (1 +
sigma xi)``). Affine in ``w``. aihwkit's ``reverse_up/down`` are not simulated (rejected
unless at their no-effect values); write noise (``write_noise_std``) and decay
(``lifetime``) as aihwkit's (:mod:`rpuhw.devices.base`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rpuhw.config import require
from rpuhw.devices.base import (
    AIHWKIT_UNSUPPORTED,
    ANY,
    DeviceModel,
    WriteNoiseParams,
)
from rpuhw.devices.registry import register_model


def mean_step(w, up, prm, i, j, c):
    """The step rule: ``dw_up (1 + gamma_up w)`` up, ``dw_down (1 + gamma_down w)`` down
    (per-device slopes prm[i, j, 4], prm[i, j, 5])."""
    if up:
        return prm[i, j, 0] * (1.0 + prm[i, j, 4] * w)
    return prm[i, j, 1] * (1.0 + prm[i, j, 5] * w)


def noise(mean, w, up, xi, prm, i, j, c):
    """Multiplicative noise ``mean (1 + sigma xi)`` when ``c[1]`` (mult_noise), else
    additive ``mean + dw_d sigma xi``."""
    if c[1] > 0.5:
        return mean * (1.0 + c[0] * xi)
    return mean + (prm[i, j, 0] if up else prm[i, j, 1]) * c[0] * xi


@dataclass
class LinearStepParams(WriteNoiseParams):
    """Parameters of ``linear_step``."""

    gamma_up: float = 0.0
    """Relative decrease of the up step from w = 0 to the upper bound (0.1 = 10 %)."""

    gamma_down: float = 0.0
    """Relative decrease of the down step from w = 0 to the lower bound."""

    gamma_up_dtod: float = 0.05
    """Device-to-device spread of ``gamma_up`` (absolute)."""

    gamma_down_dtod: float = 0.05
    """Device-to-device spread of ``gamma_down`` (absolute)."""

    allow_increasing: bool = False
    """Allow steps that grow towards the bound (keep the sign of gamma + spread)."""

    mean_bound_reference: bool = True
    """Scale gamma by the mean bounds ``w_max``/``w_min`` instead of each device's own."""

    mult_noise: bool = True
    """Cycle-to-cycle noise multiplies the whole step (else it is added, scaled by dw)."""

    def validate(self) -> None:
        super().validate()
        for key in ("gamma_up_dtod", "gamma_down_dtod"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")


def _slope(gamma, ref):
    """aihwkit's relative slope ``-gamma / ref``, 0 where the reference bound is 0."""
    import torch

    safe = torch.where(ref == 0, torch.ones_like(ref), ref)
    return torch.where(ref == 0, torch.zeros_like(gamma), -gamma / safe)


REVERSE_UNSUPPORTED: dict[str, tuple[object, str]] = {
    "reverse_up": (False, "aihwkit's reversed up slope is not simulated"),
    "reverse_down": (False, "aihwkit's reversed down slope is not simulated"),
    "reverse_offset": (ANY, "only used with reverse_up / reverse_down"),
}
"""aihwkit LinearStep/SoftBounds keys rpuhw does not simulate (see :data:`AIHWKIT_UNSUPPORTED`)."""


@register_model
class LinearStep(DeviceModel):
    """Step linear in w with per-device slopes."""

    name = "linear_step"
    Params = LinearStepParams
    unsupported = {**AIHWKIT_UNSUPPORTED, **REVERSE_UNSUPPORTED}
    extra_state = ("gamma_up", "gamma_down")
    mean_step = mean_step
    noise = noise
    affine_step = True

    def draw_extra(self, state, rows, cols, gen):
        import torch  # here: listing or validating models loads no torch

        p: LinearStepParams = self.params  # type: ignore[assignment]
        g_up = p.gamma_up + p.gamma_up_dtod * torch.randn(rows, cols, generator=gen,
                                                          dtype=torch.float64)
        g_down = p.gamma_down + p.gamma_down_dtod * torch.randn(rows, cols, generator=gen,
                                                                dtype=torch.float64)
        if not p.allow_increasing:
            g_up, g_down = g_up.abs(), g_down.abs()
        b_max = torch.full_like(g_up, p.w_max) if p.mean_bound_reference else state["w_max"]
        b_min = torch.full_like(g_up, p.w_min) if p.mean_bound_reference else state["w_min"]
        return {"gamma_up": _slope(g_up, b_max), "gamma_down": _slope(g_down, b_min)}

    def constants(self) -> list[float]:
        return [self.params.dw_min_std, 1.0 if self.params.mult_noise else 0.0]
