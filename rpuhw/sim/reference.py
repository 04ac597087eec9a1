"""The slow reference: pulses applied one at a time, in order (for tests and benchmarks).

For every update p and slot t, every device with a coincidence gets one pulse
through the model's own one-pulse rule :meth:`DeviceModel.pulse` (its step and noise
rules, evaluated by numpy: the functions the numba kernels compile) with a fresh
normal number. Devices are independent, so doing all devices of one slot in
one vectorised call is the same process as doing them one by one.
"""

from __future__ import annotations

import torch

from rpuhw.devices.base import DeviceModel, State


def reference_update(model: DeviceModel, state: State, w: torch.Tensor, x_bits: torch.Tensor,
                     d_bits: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Apply P updates of BL slots pulse by pulse; returns the new weights."""
    xf, df = x_bits.float(), d_bits.float()
    pulse = model.pulser(state)
    for p in range(x_bits.shape[0]):
        for t in range(x_bits.shape[1]):
            coinc = torch.outer(df[p, t], xf[p, t])
            active = coinc != 0
            if not active.any():
                continue
            xi = torch.randn(w.shape, generator=gen)
            w = torch.where(active, pulse(w, coinc > 0, xi), w)
    return w
