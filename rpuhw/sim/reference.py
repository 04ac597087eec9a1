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
                     d_bits: torch.Tensor, gen: torch.Generator,
                     visible: torch.Tensor | None = None):
    """Apply P updates of BL slots pulse by pulse; returns the new weights.

    With ``visible`` (a model with write noise), ``w`` are the hidden weights and every
    pulse also redraws its device's visible weight, ``w + write_noise xi``, as aihwkit's
    ``update_once`` does (not for a pinned device of a model that skips them); returns
    ``(w, visible)``.
    """
    xf, df = x_bits.float(), d_bits.float()
    pulse = model.pulser(state)
    wn = model.write_noise if visible is not None else 0.0
    movable = (state["w_max"] > state["w_min"]) if model.write_noise_skips_pinned else True
    for p in range(x_bits.shape[0]):
        for t in range(x_bits.shape[1]):
            coinc = torch.outer(df[p, t], xf[p, t])
            active = coinc != 0
            if not active.any():
                continue
            xi = torch.randn(w.shape, generator=gen)
            w = torch.where(active, pulse(w, coinc > 0, xi), w)
            if wn > 0:
                fresh = w + wn * torch.randn(w.shape, generator=gen)
                visible = torch.where(active & movable, fresh, visible)
    return w if visible is None else (w, visible)


def reference_decay(state: State, w: torch.Tensor) -> torch.Tensor:
    """One decay, element by element as aihwkit's ``decayWeights`` loop writes it."""
    out = w.clone()
    flat, b, s = out.view(-1), state["reset_bias"].reshape(-1), state["decay_scale"].reshape(-1)
    lo, hi = state["w_min"].reshape(-1), state["w_max"].reshape(-1)
    for k in range(flat.numel()):
        v = (flat[k] - b[k]) * s[k] + b[k]
        flat[k] = max(min(v, hi[k]), lo[k])
    return out
