"""The analog input/output stage of an array (the device YAML's ``io:`` block).

:class:`IOConfig` says what the array's DAC, integrators and ADC do to an MVM (its
noise, bound and resolution); :func:`quantize` is the DAC/ADC rounding the periphery
and the simulator share; :data:`SAT_RTOL` says when an output counts as saturated
(bound management).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rpuhw.config import require

if TYPE_CHECKING:  # quantize uses tensor methods only: `rpuhw device` loads no torch
    import torch

SAT_RTOL = 1e-6
"""An output counts as saturated when ``|y| >= bound * (1 - SAT_RTOL)``."""


@dataclass
class IOConfig:
    """Forward/backward MVM non-idealities (aihwkit's IOParameters names)."""

    out_noise: float = 0.06
    """Std of additive Gaussian noise on each MVM output, in units of the output
    (weight x input); the paper's sigma = 0.06."""

    out_bound: float = 12.0
    """Outputs saturate at ±out_bound (integrator/op-amp limit, the paper's alpha = 12)."""

    inp_bound: float = 1.0
    """Inputs are clipped to ±inp_bound (the DAC range)."""

    inp_res: float | None = None
    """DAC step as a fraction of the input range 2*inp_bound (aihwkit's meaning: 1/126 is
    7 bits, 1/(2^n - 2) n bits); null = exact (aihwkit's <= 0). aihwkit's other notation, a
    number of steps N > 1, is refused here: write 1/N."""

    out_res: float | None = None
    """ADC step as a fraction of the output range 2*out_bound (1/510 is 9 bits); null = exact
    (aihwkit's <= 0); a number of steps N > 1 is refused: write 1/N."""

    read_noise: float = 0.0
    """Std of Gaussian noise of a direct weight read (``read()``), in weight units."""

    def validate(self) -> None:
        require(self.out_noise >= 0, "out_noise", f"must be >= 0, got {self.out_noise}")
        require(self.out_bound > 0, "out_bound", f"must be > 0, got {self.out_bound}")
        require(self.inp_bound > 0, "inp_bound", f"must be > 0, got {self.inp_bound}")
        require(self.read_noise >= 0, "read_noise", f"must be >= 0, got {self.read_noise}")
        for key in ("inp_res", "out_res"):
            v = getattr(self, key)
            require(v is None or 0 < v <= 1, key,
                    f"must be null (exact) or a step in (0, 1] as a fraction of the range "
                    f"(aihwkit's N steps: write 1/N), got {v}")


def quantize(x: torch.Tensor, res: float | None, bound: float) -> torch.Tensor:
    """Round to the grid of step ``res * 2 * bound`` (no-op when ``res`` is None)."""
    if not res:
        return x
    step = res * 2.0 * bound
    return (x / step).round() * step
