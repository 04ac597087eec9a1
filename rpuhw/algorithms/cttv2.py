"""``cttv2``: chopped Tiki-Taka v2 (Rasch, Carta, Fagbohungbe, Gokmen, Nat. Commun.
15:7133, 2024).

As ``ttv2`` with a chopper: a sign ``c_j = +-1`` per column (input) of A.
- Gradient update: A gets ``c_j x_j`` instead of ``x_j``, so A stores ``c_j`` times the
  gradient it accumulates (plus its devices' drift toward their symmetry points, which
  does not follow the sign).
- Transfer of column j: the read ``v`` (column j of A) is sign-corrected,
  ``H[:, j] += c_j v |lr_t| / bg`` (H in pulses, ``bg = buffer_granularity * dw_min_A``);
  ``n = clamp(trunc(H), +-1)`` pulses go to C's column j through ``pulse`` and
  ``H <- momentum H`` where a pulse went (``forget_buffer``; else ``H -= (1-momentum) n``).
- After column j's read its chopper flips: with probability ``in_chop_prob``
  (``in_chop_random``, the default), or every ``max(ceil(1/in_chop_prob), 2)`` reads of
  the column (``in_chop_random: false``). ``in_chop_prob = 0``: never (plain TTv2 with
  a pulse-count buffer, aihwkit's "TTv2" presets).

A constant offset of A's read (a device's symmetry point off 0, a reference error) enters
H as ``c_j offset``: it cancels over a chopper cycle instead of being transferred into C
as a bias, so A needs neither centring nor a reference (``centre_a`` defaults to false).
With ``gamma > 0`` the weight is ``gamma (A - A_ref) diag(c) + C``.

As aihwkit's ``ChoppedTransferCompound`` (only the input chopper: ``out_chop_prob``,
``auto_granularity``, ``correct_gradient_magnitudes`` and ``no_buffer`` are not
implemented; ``auto_scale`` is, per step, see ``tt``), with defaults from the device
instead of aihwkit's fixed ones (``tt``'s: A auto-scaled, ``ceil(in / 8)`` columns read
per transfer, each with its own chopper, where aihwkit allows one; ``units_in_mbatch``
true, one transfer per mini-batch, where aihwkit's false transfers after every conv
position) and ``transfer_lr`` None the rule that an A entry at ``A_SHARE`` (30 %) of
half A's weight range fills H by one pulse per read (``buffer_granularity dw_min_A /
(A_SHARE (w_max_A - w_min_A)/2)``, at least ``1 x lr``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from rpuhw.algorithms import _tt_kernels
from rpuhw.algorithms.tt import A_SHARE, TTParams
from rpuhw.algorithms.ttv2 import BufferedTikiTaka
from rpuhw.config import require


@dataclass
class CTTv2Params(TTParams):
    """Hyper-parameters of ``cttv2`` (aihwkit's ``ChoppedTransferCompound`` names;
    defaults as aihwkit except ``scale_fast_lr`` and ``transfer_lr``, see the module)."""

    units_in_mbatch: bool = True
    """Count ``transfer_every`` in mini-batches (as ``tt``). aihwkit's chopped default,
    false (update vectors), transfers after every output position of a conv layer: 576
    reads and pulse calls per image for lenet's conv1."""
    centre_a: bool | None = False
    """Centre A on its symmetry points first (not needed: the chopper cancels them)."""
    in_chop_prob: float = 0.1
    """Probability (or, deterministic, the inverse period) of a column's chopper flip
    after its read."""
    in_chop_random: bool = True
    """Flip at random (else every ``max(ceil(1/in_chop_prob), 2)`` reads of a column)."""
    buffer_granularity: float = 1.0
    """H's threshold in units of A's ``dw_min``: one pulse to C per this much read."""
    momentum: float = 0.0
    """Fraction of H kept after a pulse (``forget_buffer``) or not subtracted."""
    forget_buffer: bool = True
    """After a pulse set ``H <- momentum H`` (else ``H -= (1 - momentum) n``)."""

    def validate(self) -> None:
        super().validate()
        require(0 <= self.in_chop_prob <= 1, "in_chop_prob",
                f"must be a number in [0, 1], got {self.in_chop_prob!r}")
        require(math.isfinite(self.buffer_granularity) and self.buffer_granularity > 0,
                "buffer_granularity",
                f"must be a number > 0, got {self.buffer_granularity!r}")
        require(0 <= self.momentum < 1, "momentum",
                f"must be a number in [0, 1), got {self.momentum!r}")


class ChoppedTikiTaka(BufferedTikiTaka):
    """TTv2 with per-column chopper signs on A's input and read-out."""

    name = "cttv2"
    Params = CTTv2Params

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.chop = torch.ones(self.in_features)
        """Chopper sign per column of A (+1 or -1)."""
        self.reads = torch.zeros(self.in_features, dtype=torch.int64)
        """Reads of each column so far (the deterministic chopper's clock)."""
        self.gen = torch.Generator()
        self.gen.manual_seed((0 if self.seed is None else int(self.seed)) * 1_000_003 + 17)
        """The random choppers' generator (seeded from the layer's seed)."""
        half = self.weight_range("A")
        self._min_transfer_lr = (None if half is None else self.params.buffer_granularity
                                 * self.dw_min("A") / (A_SHARE * half))
        self._chopped = self.params.in_chop_prob > 0
        require(self.reads_per_transfer <= self.in_features, "n_reads_per_transfer",
                f"must be at most the layer's {self.in_features} columns with a chopper "
                f"(each column read once per transfer), got {self.reads_per_transfer}")

    @property
    def chop_period(self) -> int | None:
        """Reads of a column between flips of the deterministic chopper (None: never)."""
        p = self.params.in_chop_prob
        return None if p <= 0 else max(math.ceil(1 / p), 2)

    def fast_input(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.chop if self._chopped else x

    def set_weights(self, w: torch.Tensor) -> None:
        """C = w, A initialised, H cleared, choppers reset to +1."""
        super().set_weights(w)
        self.chop.fill_(1.0)
        self.reads.zero_()

    dynamic_reference: ClassVar[bool] = False
    """Whether the read is taken against a reference estimated from A's reads
    (``agad``)."""

    def buffer_scale(self, lr: float) -> float:
        """``|lr_t| / bg``: pulses added to H per weight unit read."""
        return abs(self.transfer_lr(lr)) / self.buffer_granule()

    def buffer_granule(self) -> float:
        """``bg``: read of A (weight units) worth one pulse of C."""
        return self.params.buffer_granularity * self.dw_min("A")

    def transfer(self, lr: float) -> None:
        """Read the next columns j, add their sign-corrected reads to H (in pulses), pulse
        C where |H| >= 1, then the choppers of the columns read."""
        cols = self.next_columns()
        idx = torch.tensor(cols)
        v = self.read_columns(cols).double().T  # [out, k]
        if _tt_kernels.HAVE_NUMBA:
            self.compiled_transfer(idx, v, lr)
        else:
            self.buffer_step(cols, self.buffer_increment(idx, v, lr), 1.0)
            self.reads[idx] += 1
        self.flip(idx)

    def compiled_transfer(self, idx: torch.Tensor, v: torch.Tensor, lr: float) -> None:
        """Buffer, threshold and pulses of columns ``idx`` read as ``v`` [out, k] in one
        compiled pass (:mod:`rpuhw.algorithms._tt_kernels`; ``agad`` with its
        reference), then one ``pulse`` of C where a count is non-zero."""
        p = self.params
        agad = self.dynamic_reference
        counts = torch.zeros(self.out_features, self.in_features, dtype=torch.int32)
        empty = np.zeros((0, 0))
        hits = _tt_kernels.chopped_transfer(
            np.ascontiguousarray(v.numpy()), idx.numpy(), self.chop.numpy(),
            self.buffer_scale(lr), self.H.numpy(), p.momentum,
            p.forget_buffer, counts.numpy(), agad,
            self.mu.numpy() if agad else empty, self.mu_p.numpy() if agad else empty,
            self.switched.numpy() if agad else np.zeros(0, np.bool_), self.reads.numpy(),
            self.chop_period or 0, self.tail if agad else 0.0)
        if hits:
            self.C.pulse(counts)

    def buffer_increment(self, idx: torch.Tensor, v: torch.Tensor, lr: float) -> torch.Tensor:
        """``c_j v |lr_t| / bg`` [out, k] (pulses) for reads ``v`` [out, k] of columns
        ``idx`` [k]."""
        return v * (self.chop[idx].double() * self.buffer_scale(lr))

    def flip(self, idx: torch.Tensor) -> torch.Tensor:
        """Flip the choppers of columns ``idx`` [k] per the rule (after their reads);
        the flags [k] of those that flipped."""
        p = self.params
        if not self._chopped:
            return torch.zeros(len(idx), dtype=torch.bool)
        if p.in_chop_random:
            hit = torch.rand(len(idx), generator=self.gen) < p.in_chop_prob
        else:
            hit = self.reads[idx] % self.chop_period == 0
        self.chop[idx] = torch.where(hit, -self.chop[idx], self.chop[idx])
        return hit

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "chop": self.chop.clone(),
                "reads": self.reads.clone(), "gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.chop.copy_(state["chop"])
        self.reads.copy_(state["reads"])
        self.gen.set_state(state["gen"])
