"""``mp``: mixed-precision training (Nandakumar et al., Front. Neurosci. 14:406, 2020).

A digital accumulator ``chi [out, in]`` (float64) sums the exact update the step asks
for, ``chi += -lr d^T x`` (every rank-1 pair of the step; the sum over a conv layer's
positions is exact, so no pulse trains are drawn). Every ``transfer_every`` update
blocks, each weight whose ``|chi|`` reached the pulse granularity ``eps`` gets
``n = trunc(chi / eps)`` granules, ``n round(eps / dw_min)`` pulses (n with the default
``eps = dw_min``), through the contract's ``pulse`` (signed counts, all K
devices of a weight the same count), and ``chi -= n eps`` keeps the remainder, so after a
transfer ``|chi| < eps`` everywhere. An update block is one optimizer step (``position``
and ``batch`` granularity) or one image (``sample``).

As aihwkit's ``MixedPrecisionCompound`` with ``n_rows_per_transfer=-1`` (all rows),
except that the pulses go out as exact counts through ``pulse`` instead of a stochastic
rank-1 update per row (at most ``desired_bl`` pulses there); the quantisation of x and
d (``n_x_bins``/``n_d_bins``) is not implemented (x and d are used as computed).

Devices with ``lifetime`` decay once per optimizer step (``decay()`` on C after the
step's transfers: ``pulse`` has none), as after one ``update`` call.

Speed: chi lives in a float64 numpy array (``chi`` is a torch view of it); one compiled
pass (:mod:`rpuhw.algorithms._mp_kernels`) accumulates a block's ``d^T x`` and forms the
transfer's counts; a transfer with no non-zero count sends nothing. On a grid of one
tile and one device per weight whose array keeps the contract's own ``pulse`` and does
pulses natively, the counts (int32, of the array's shape, by construction) go straight to
its ``_pulse`` without ``pulse``'s re-validation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rpuhw.algorithms import _mp_kernels
from rpuhw.algorithms._mp_kernels import mp_step_sparse
from rpuhw.algorithms.base import Algorithm
from rpuhw.array import CrossPointArray
from rpuhw.config import require

_NO_G = np.empty((0, 0), np.float32)
_NO_V = np.empty(0, np.float32)


@dataclass
class MPParams:
    """Hyper-parameters of ``mp`` (aihwkit's ``MixedPrecisionCompound`` names)."""

    granularity: float | None = None
    """Pulse granularity eps (weight units): chi is transferred in multiples of it. None
    (aihwkit's 0) = the device's own ``dw_min`` (C's ``info().dw_min``)."""
    transfer_every: int = 1
    """Update blocks (optimizer steps; images with ``sample`` granularity) between
    transfers of chi to the devices."""

    def validate(self) -> None:
        g = self.granularity
        require(g is None or (math.isfinite(g) and g > 0), "granularity",
                f"must be null (the device's dw_min) or a number > 0, got {g!r}")
        require(self.transfer_every >= 1, "transfer_every",
                f"must be an integer >= 1, got {self.transfer_every!r}")


class MixedPrecision(Algorithm):
    """Digital accumulation in chi, integer pulse counts to C (see the module doc)."""

    name = "mp"
    array_names = ("C",)
    Params = MPParams
    requires = {"C": ("pulse",)}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.forward = self.grid.forward  # type: ignore[method-assign]  # (as sgd: C's)
        self.backward = self.grid.backward  # type: ignore[method-assign]
        self._chi = np.zeros((self.out_features, self.in_features), np.float64)
        self.chi = torch.from_numpy(self._chi)
        """The digital accumulator (weight units), logical layout [out, in] (a view of the
        float64 numpy array the compiled step updates)."""
        self.blocks = 0
        """Update blocks accumulated since the start (the transfer counter)."""
        g = self.params.granularity
        self.granularity = float(g) if g is not None else self.dw_min("C")
        """eps in use (weight units): the hyper-parameter, else C's ``dw_min``."""
        self.pulses_per_granule = max(1, round(self.granularity / self.dw_min("C")))
        """Pulses that move a weight by one eps: ``round(eps / dw_min)``, at least 1."""
        arrays = self._c_arrays = self.grid.arrays
        a = arrays[0]
        self._native = (a if len(arrays) == 1 and self.grid.k == 1 and a.capabilities.pulse
                        and type(a).pulse is CrossPointArray.pulse
                        and tuple(a.shape) == self._chi.shape else None)
        """C's one array when its native ``_pulse`` can take the counts directly."""
        size = self._chi.size
        self._lists = (np.empty(size, np.int32), np.empty(size, np.int32),
                       np.empty(size, np.int32))
        """Work buffers of a transfer's non-zero counts: rows, columns, signed counts."""

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float, images: int = 1) -> None:
        groups = images if self.plan.granularity == "sample" else 1
        every = self.params.transfer_every
        sparse, chi, eps, ppg = _mp_kernels._sparse, self._chi, self.granularity, \
            float(self.pulses_per_granule)
        rows, cols, counts = self._lists
        lr = float(lr)
        pairs = zip(x.chunk(groups), d.chunk(groups), strict=True) if groups > 1 else ((x, d),)
        for xg, dg in pairs:
            if xg.shape[0] == 1 and xg.dtype == dg.dtype == torch.float32:
                # one pair: its outer product, formed inside the pass
                g, dv, xv = _NO_G, dg.detach().numpy()[0], xg.detach().numpy()[0]
            else:
                g, dv, xv = (dg.T @ xg).detach().numpy(), _NO_V, _NO_V
            self.blocks += 1
            m = sparse(chi, g, dv, xv, g is _NO_G, lr, eps, ppg, self.blocks % every == 0,
                       rows, cols, counts)
            if m:
                self._send(m)
        for a in self._c_arrays:  # pulse has no decay: once per optimizer step, as an
            a.decay()  # update (Algorithm.decay("C"))

    def set_weights(self, w: torch.Tensor) -> None:
        """Write C and clear chi (as aihwkit's ``set_weights``)."""
        self.grid.set_weights(w)
        self._chi.fill(0.0)

    def transfer(self) -> None:
        """Pulse ``trunc(chi / eps)`` into C and keep the remainder in chi."""
        m = mp_step_sparse(self._chi, np.zeros_like(self._chi), 0.0, self.granularity,
                           self.pulses_per_granule, True, *self._lists)
        if m:
            self._send(m)

    def _send(self, m: int) -> None:
        """The transfer's ``m`` signed pulse counts (``self._lists``, row-major) to C."""
        rows, cols, counts = (a[:m] for a in self._lists)
        sparse = getattr(self._native, "_pulse_sparse", None)
        if sparse is not None and sparse(rows, cols, counts, m):
            return
        dense = np.zeros(self._chi.shape, np.int32)
        dense[rows, cols] = counts
        t = torch.from_numpy(dense)
        if self._native is not None:
            self._native._pulse(t)
        else:
            self.grid.pulse(t)

    def state_dict(self) -> dict[str, Any]:
        return {"chi": self.chi.clone(), "blocks": self.blocks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.chi.copy_(state["chi"])
        self.blocks = int(state["blocks"])
