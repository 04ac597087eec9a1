"""``pow_step``: the step is a power of the distance to the bound (aihwkit's PowStep).

A shifted Fusi & Abbott (2007) synapse. With the relative distance to the upper bound
:math:`\\omega_{ij}(w) = (w^{max}_{ij} - w) / (w^{max}_{ij} - w^{min}_{ij})`:

.. math::

    \\Delta_{up}(w) = \\Delta w^{up}_{ij}\\,\\omega_{ij}^{\\gamma^{+}_{ij}},\\qquad
    \\Delta_{down}(w) = \\Delta w^{down}_{ij}\\,(1 - \\omega_{ij})^{\\gamma^{-}_{ij}}

    \\gamma^{+}_{ij} = \\gamma\\,(\\min(\\beta, 0) + g_{ij} + r_{ij}),\\qquad
    \\gamma^{-}_{ij} = \\gamma\\,(-\\max(\\beta, 0) + g_{ij} - r_{ij})

with :math:`\\gamma` = ``pow_gamma``, :math:`\\beta` = ``pow_up_down``,
:math:`g_{ij} = 1 + \\text{pow\\_gamma\\_dtod}\\,\\xi` and
:math:`r_{ij} = \\text{pow\\_up\\_down\\_dtod}\\,\\xi'` drawn once per device: aihwkit's
one-sided scheme, the same as ``up_down``'s (``pow_up_down > 0`` lowers only the down
exponent, to :math:`\\gamma(1 - \\beta)`; < 0 only the up exponent). ``|.|`` is taken
with ``enforce_consistency``. :math:`\\omega` is clamped to [0, 1]; a device whose bounds
coincide does not move. Note that :math:`\\Delta w^{d}_{ij}` is the step at the far
bound, not at ``w = 0`` (aihwkit's weight granularity is ``dw_min 0.5^pow_gamma``);
``pow_gamma = 1`` without spread is soft bounds. Noise is multiplicative. Not affine in
``w``. Write noise (``write_noise_std``) and decay (``lifetime``) as aihwkit's
(:mod:`rpuhw.devices.base`); a device whose bounds coincide keeps its visible weight when
pulsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from rpuhw.config import require
from rpuhw.devices.base import (
    AIHWKIT_UNSUPPORTED,
    DeviceModel,
    WriteNoiseParams,
    one_sided_pair,
)
from rpuhw.devices.registry import register_model
from rpuhw.devices.rule import maximum, minimum

_TINY = 1e-12


def mean_step(w, up, prm, i, j, c):
    """The step rule: ``dw_up omega^gamma_up`` up, ``dw_down (1 - omega)^gamma_down`` down,
    ``omega = (w_max - w) / (w_max - w_min)`` clamped to [0, 1] (exponents prm[i, j, 4:6])."""
    span = maximum(prm[i, j, 3] - prm[i, j, 2], _TINY)
    if up:
        x = (prm[i, j, 3] - w) / span
        return prm[i, j, 0] * minimum(maximum(x, 0.0), 1.0) ** prm[i, j, 4]
    x = (w - prm[i, j, 2]) / span
    return prm[i, j, 1] * minimum(maximum(x, 0.0), 1.0) ** prm[i, j, 5]


@dataclass
class PowStepParams(WriteNoiseParams):
    """Parameters of ``pow_step`` (aihwkit's PowStepDevice names and defaults)."""

    pow_gamma: float = 1.0
    """Mean exponent gamma of the distance to the bound (dimensionless, > 0)."""

    pow_gamma_dtod: float = 0.1
    """Device-to-device spread of the exponent, relative to ``pow_gamma``."""

    pow_up_down: float = 0.0
    """One-sided up/down bias beta of the exponents (aihwkit): > 0 lowers the down exponent
    to gamma (1 - beta), < 0 the up exponent to gamma (1 + beta) (dimensionless)."""

    pow_up_down_dtod: float = 0.0
    """Device-to-device spread of the bias, in units of ``pow_gamma``: + on the up exponent,
    - on the down exponent."""

    def validate(self) -> None:
        super().validate()
        require(self.pow_gamma > 0, "pow_gamma", f"must be > 0, got {self.pow_gamma}")
        for key in ("pow_gamma_dtod", "pow_up_down_dtod"):
            require(getattr(self, key) >= 0, key, f"must be >= 0, got {getattr(self, key)}")
        require(-1 < self.pow_up_down < 1, "pow_up_down",
                f"must be in (-1, 1), got {self.pow_up_down}")


@register_model
class PowStep(DeviceModel):
    """Step proportional to a per-device power of the distance to the bound."""

    name = "pow_step"
    Params = PowStepParams
    unsupported = {**AIHWKIT_UNSUPPORTED}
    write_noise_skips_pinned = True  # aihwkit's update_once returns early
    extra_state = ("pow_gamma_up", "pow_gamma_down")
    mean_step = mean_step

    def granularity(self) -> float:
        """aihwkit's PowStep granularity ``dw_min 0.5^pow_gamma``."""
        p: PowStepParams = self.params  # type: ignore[assignment]
        return float(p.dw_min * 0.5 ** p.pow_gamma)

    def draw_extra(self, state, rows, cols, gen):
        import torch  # here: listing or validating models loads no torch

        p: PowStepParams = self.params  # type: ignore[assignment]
        gain = 1.0 + p.pow_gamma_dtod * torch.randn(rows, cols, generator=gen,
                                                    dtype=torch.float64)
        r = p.pow_up_down_dtod * torch.randn(rows, cols, generator=gen, dtype=torch.float64)
        up, down = one_sided_pair(p.pow_gamma, p.pow_up_down, gain, r)
        if p.enforce_consistency:
            up, down = up.abs(), down.abs()
        return {"pow_gamma_up": up, "pow_gamma_down": down}
