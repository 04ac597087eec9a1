"""``agad``: analog gradient accumulation with dynamic reference (Rasch et al., Nat.
Commun. 15:7133, 2024).

As ``cttv2`` (chopper per column of A, buffer H in pulses, single pulses into C), but the
read of A is taken against a reference estimated on the fly from A's own reads, so no
reference is programmed or measured. Per weight it keeps ``mu`` (a running mean of the
raw reads of its column) and ``mu_p`` (the mean of the chopper phase that just ended).
Transfer of column j (aihwkit's ``DynamicTransferCompound``, CPU order)::

    v = column j of A as read
    if c_j flipped at the previous read of j:  mu_p[:, j] <- mu[:, j]
    if reads of j > n_s:  H[:, j] += c_j (v - mu_p[:, j]) |lr_t| / bg, threshold rule
                          and single pulses into C as cttv2
    mu[:, j] <- (1 - a) mu[:, j] + a v         a = min(tail_weightening / n_s, 1)
    c_j flips every n_s = max(ceil(1/in_chop_prob), 2) reads of j (or at random with
    probability in_chop_prob, ``in_chop_random``)

The first ``n_s`` reads of a column only build its reference (aihwkit: C is written once
the transfer counter passes ``n_s``; here counted per column). Not implemented: the
``buffer_cap`` clip of H (``forget_buffer: false`` only) and the C++-only experimental
options; the documented "significance gate" exists in neither aihwkit's CPU nor CUDA
code (algorithms reference, section 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rpuhw.algorithms import _tt_kernels
from rpuhw.algorithms.cttv2 import ChoppedTikiTaka, CTTv2Params
from rpuhw.config import require


@dataclass
class AGADParams(CTTv2Params):
    """Hyper-parameters of ``agad`` (aihwkit's ``DynamicTransferCompound`` names;
    defaults as aihwkit except ``scale_fast_lr``/``transfer_lr``, see ``cttv2``)."""

    in_chop_random: bool = False
    """Flip at random (aihwkit's AGAD default: regular, every ``n_s`` reads)."""
    tail_weightening: float = 5.0
    """Weight of the newest read in the running mean: ``a = min(tail_weightening/n_s,
    1)``."""

    def validate(self) -> None:
        super().validate()
        require(self.in_chop_prob > 0, "in_chop_prob",
                f"must be > 0 for agad (its reference needs chopper phases), got "
                f"{self.in_chop_prob!r}")
        require(math.isfinite(self.tail_weightening) and self.tail_weightening > 0,
                "tail_weightening", f"must be a number > 0, got {self.tail_weightening!r}")


class DynamicTikiTaka(ChoppedTikiTaka):
    """Chopped transfer against a reference estimated from A's own reads."""

    name = "agad"
    Params = AGADParams
    dynamic_reference = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        shape = (self.out_features, self.in_features)
        self.mu = torch.zeros(shape, dtype=torch.float64)
        """Running mean of each weight's raw reads (weight units)."""
        self.mu_p = torch.zeros(shape, dtype=torch.float64)
        """The reference: ``mu`` at the column's last chopper flip (weight units)."""
        self.switched = torch.zeros(self.in_features, dtype=torch.bool)
        """Whether a column's chopper flipped at its previous read."""

    @property
    def tail(self) -> float:
        """``a``: the newest read's weight in ``mu``."""
        return min(self.params.tail_weightening / self.chop_period, 1.0)

    def set_weights(self, w: torch.Tensor) -> None:
        """As ``cttv2``, and the references cleared."""
        super().set_weights(w)
        self.mu.zero_()
        self.mu_p.zero_()
        self.switched.zero_()

    def transfer(self, lr: float) -> None:
        cols = self.next_columns()
        idx = torch.tensor(cols)
        v = self.read_columns(cols).double().T  # [out, k], raw (chopped) reads
        if _tt_kernels.HAVE_NUMBA:
            self.compiled_transfer(idx, v, lr)
            self.switched[idx] = self.flip(idx)
            return
        sw = self.switched[idx]
        self.mu_p[:, idx] = torch.where(sw, self.mu[:, idx], self.mu_p[:, idx])
        self.reads[idx] += 1
        ready = self.reads[idx] > self.chop_period
        if bool(ready.any()):
            r = idx[ready]
            self.buffer_step(r.tolist(),
                             self.buffer_increment(r, v[:, ready] - self.mu_p[:, r], lr), 1.0)
        a = self.tail
        self.mu[:, idx] = (1 - a) * self.mu[:, idx] + a * v
        self.switched[idx] = self.flip(idx)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mu": self.mu.clone(), "mu_p": self.mu_p.clone(),
                "switched": self.switched.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.mu.copy_(state["mu"])
        self.mu_p.copy_(state["mu_p"])
        self.switched.copy_(state["switched"])
