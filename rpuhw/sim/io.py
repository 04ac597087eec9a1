"""Analog input/output behaviour of a simulated array (the YAML ``io:`` block)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rpuhw.config import require


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
    """DAC step as a fraction of the input range 2*inp_bound (1/126 is 7 bits); null = exact."""

    out_res: float | None = None
    """ADC step as a fraction of the output range 2*out_bound (1/510 is 9 bits); null = exact."""

    read_noise: float = 0.0
    """Std of Gaussian noise of a direct weight read (``read()``), in weight units."""

    def validate(self) -> None:
        require(self.out_noise >= 0, "out_noise", f"must be >= 0, got {self.out_noise}")
        require(self.out_bound > 0, "out_bound", f"must be > 0, got {self.out_bound}")
        require(self.inp_bound > 0, "inp_bound", f"must be > 0, got {self.inp_bound}")
        require(self.read_noise >= 0, "read_noise", f"must be >= 0, got {self.read_noise}")
        for key in ("inp_res", "out_res"):
            v = getattr(self, key)
            require(v is None or 0 < v <= 1, key, f"must be null or in (0, 1], got {v}")


def quantize(x: torch.Tensor, res: float | None, bound: float) -> torch.Tensor:
    """Round to the grid of step ``res * 2 * bound`` (no-op when ``res`` is None)."""
    if not res:
        return x
    step = res * 2.0 * bound
    return torch.round(x / step) * step


def analog_mvm(x: torch.Tensor, w: torch.Tensor, io: IOConfig,
               gen: torch.Generator) -> torch.Tensor:
    """``y = clip(ADC(W DAC(x) + out_noise * xi), ±out_bound)`` for a batch x [N, in].

    ``w`` is [out, in]; pass the transposed weight for the backward pass.
    """
    x = quantize(x.clamp(-io.inp_bound, io.inp_bound), io.inp_res, io.inp_bound)
    y = x @ w.T
    if io.out_noise > 0:
        y = y + io.out_noise * torch.randn(y.shape, generator=gen)
    y = y.clamp(-io.out_bound, io.out_bound)
    return quantize(y, io.out_res, io.out_bound).clamp(-io.out_bound, io.out_bound)
