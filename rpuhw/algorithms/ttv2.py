"""``ttv2``: Tiki-Taka v2, buffered transfer (Gokmen, Front. Artif. Intell. 4:699148, 2021).

As ``tt`` (gradient into the fast array A, a column of ``A - A_ref`` read per transfer,
A centred on its symmetry points by default), but the read column goes into a digital
buffer ``H [out, in]`` (float64, weight units) instead of straight into C::

    H[:, j] += |lr_t| v                       (v: column j of A - A_ref as read)
    n_i = clamp(trunc(H_ij / thr), -1, 1)     thr = thres_scale * dw_min_C
    where n_i != 0:  H_ij <- momentum H_ij                 (forget_buffer)
                     H_ij <- H_ij - (1 - momentum) n_i thr  (otherwise)
    C[:, j] += n_i pulses (``pulse``: exact signed counts, one pulse = dw_min_C)

as aihwkit's ``BufferedTransferCompound`` with its default ``transfer_update``
(``desired_bl = 1``: at most one pulse per device and transfer, ``step = 1``). The
digital buffer low-pass filters A's noisy reads; C only ever gets single, exact pulses.

Defaults from the device: ``transfer_lr`` None is ``tt``'s rule (an A entry at half A's
weight range fills the buffer to the threshold, ``dw_min_C``, in one transfer, at
least ``1 x lr``); ``thr`` is C's own ``dw_min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rpuhw.algorithms.tt import TikiTaka, TTParams
from rpuhw.config import require


@dataclass
class TTv2Params(TTParams):
    """Hyper-parameters of ``ttv2`` (aihwkit's ``BufferedTransferCompound`` names and
    defaults; the rest as ``tt``)."""

    thres_scale: float = 1.0
    """Buffer threshold in units of C's granularity (``dw_min`` of C)."""
    momentum: float = 0.1
    """Fraction of H kept after a pulse (``forget_buffer``) or not subtracted."""
    forget_buffer: bool = True
    """After a pulse set ``H <- momentum H`` (else ``H -= (1 - momentum) n thr``)."""

    def validate(self) -> None:
        super().validate()
        require(math.isfinite(self.thres_scale) and self.thres_scale > 0, "thres_scale",
                f"must be a number > 0, got {self.thres_scale!r}")
        require(0 <= self.momentum < 1, "momentum",
                f"must be a number in [0, 1), got {self.momentum!r}")


class BufferedTikiTaka(TikiTaka):
    """Tiki-Taka with a digital buffer between A's reads and C's pulses."""

    name = "ttv2"
    Params = TTv2Params
    requires = {"A": ("forward", "update"), "C": ("pulse",)}
    pulses_c = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.H = torch.zeros(self.out_features, self.in_features, dtype=torch.float64)
        """The digital transfer buffer (weight units for ``ttv2``; pulses for the
        chopped algorithms), logical layout [out, in]."""

    def set_weights(self, w: torch.Tensor) -> None:
        """C = w, A initialised, H cleared."""
        super().set_weights(w)
        self.H.zero_()

    def buffer_step(self, cols: list[int], dh: torch.Tensor, thr: float) -> None:
        """``H[:, cols] += dh`` ([out, k]), then the threshold rule: ``n = clamp(trunc(H
        / thr), +-1)`` pulses to C's columns ``cols``, H forgets or keeps the rest."""
        p = self.params
        h = self.H[:, cols] + dh
        n = torch.clamp(torch.trunc(h / thr), -1, 1)
        hit = n != 0
        if p.forget_buffer:
            h = torch.where(hit, p.momentum * h, h)
        else:
            h = h - (1 - p.momentum) * n * thr
        self.H[:, cols] = h
        if hit.any():
            counts = torch.zeros(self.out_features, self.in_features, dtype=torch.int32)
            counts[:, cols] = n.to(torch.int32)
            self.C.pulse(counts)

    def transfer(self, lr: float) -> None:
        """Read the next columns of ``A - A_ref`` into H; pulse C where |H| >= thr."""
        cols = self.next_columns()
        v = self.read_columns(cols)  # [k, out]
        thr = self.params.thres_scale * self.dw_min("C")
        self.buffer_step(cols, abs(self.transfer_lr(lr)) * v.T.double(), thr)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "H": self.H.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.H.copy_(state["H"])
