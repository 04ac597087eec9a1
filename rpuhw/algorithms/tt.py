"""``tt``: Tiki-Taka v1 (Gokmen & Haensch, Front. Neurosci. 14:103, 2020).

Two arrays: the fast array A takes the gradient (pulsed SGD at ``fast_lr``), and every
``transfer_every`` updates ``n_reads_per_transfer`` consecutive columns of A are read
(a forward MVM of unit vectors through A's periphery) and written into the slow array C
with a pulsed rank-1 update, ``C[:, j] += lr_t A[:, j]`` in expectation. The layer's
weight is ``W = gamma A + C``: forward and backward are one MVM on C, plus one on A
scaled by ``gamma`` when ``gamma != 0`` (two MVMs summed digitally). A is programmed
to zero at the start (:meth:`TikiTaka.initialise_fast_array`: the hook where the
symmetry-point centring of A, ``centre_on_symmetry_point``, plugs in).

Order of operations as aihwkit's ``TransferCompound`` (CPU): the rank-1 updates of a
step go to A in order; after update vector k (counted over the whole run) a transfer
happens when ``k % period == 0``, with ``period = ceil(transfer_every * P)`` vectors
(``units_in_mbatch``: P = the step's update vectors, so ``transfer_every=1`` is one
transfer per mini-batch) or ``round(transfer_every)`` vectors otherwise. With
``position`` granularity the step's updates are split at those points; with ``sample``
or ``batch`` granularity A's update is one aggregated block and the step's transfers
follow it. Not implemented: ``random_selection``, ``with_reset_prob``, row transfers
(``transfer_columns=False``), more than two devices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rpuhw.algorithms.base import Algorithm
from rpuhw.config import require


@dataclass
class TTParams:
    """Hyper-parameters of ``tt`` (aihwkit's ``TransferCompound`` names and defaults)."""

    gamma: float = 0.0
    """Weight of A in the layer's weight ``gamma A + C`` (0: A hidden)."""
    transfer_every: float = 1.0
    """Transfer period, in mini-batches (``units_in_mbatch``) or update vectors."""
    units_in_mbatch: bool = True
    """Count ``transfer_every`` in mini-batches (the step's update vectors) instead of
    single update vectors."""
    n_reads_per_transfer: int = 1
    """Consecutive columns of A read and written into C per transfer."""
    fast_lr: float = 1.0
    """Learning rate of A's update (times the SGD lr when ``scale_fast_lr``)."""
    scale_fast_lr: bool = True
    """Multiply ``fast_lr`` by the SGD learning rate (aihwkit 1.2)."""
    transfer_lr: float | None = None
    """Learning rate of the transfer into C (times the SGD lr when
    ``scale_transfer_lr``). None = 1, raised where needed so that an A entry at half
    A's weight range moves C by at least one pulse (``dw_min`` of C) in expectation:
    ``max(1 [x lr], dw_min_C / ((w_max_A - w_min_A)/2))``."""
    scale_transfer_lr: bool = True
    """Multiply ``transfer_lr`` by the SGD learning rate."""

    def validate(self) -> None:
        require(math.isfinite(self.gamma) and self.gamma >= 0, "gamma",
                f"must be a number >= 0, got {self.gamma!r}")
        require(self.transfer_every > 0, "transfer_every",
                f"must be > 0, got {self.transfer_every!r}")
        require(self.n_reads_per_transfer >= 1, "n_reads_per_transfer",
                f"must be an integer >= 1, got {self.n_reads_per_transfer!r}")
        require(self.fast_lr > 0, "fast_lr", f"must be > 0, got {self.fast_lr!r}")
        t = self.transfer_lr
        require(t is None or t > 0, "transfer_lr", f"must be null or > 0, got {t!r}")


class TikiTaka(Algorithm):
    """Gradient into A, column transfers of A into C, weight ``gamma A + C``."""

    name = "tt"
    array_names = ("A", "C")
    Params = TTParams
    requires = {"A": ("forward", "update"), "C": ("update",)}

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.A, self.C = self.grids["A"], self.grids["C"]
        self.vectors = 0
        """Update vectors applied to A since the start (the transfer counter)."""
        self.column = 0
        """Next column of A to transfer."""
        half = self.weight_range("A")
        self._min_transfer_lr = None if half is None else self.dw_min("C") / half
        self._eye = torch.eye(self.in_features)

    # ---- weight ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.C.forward(x)
        g = self.params.gamma
        return y if g == 0 else y + g * self.A.forward(x)

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        z = self.C.backward(d)
        g = self.params.gamma
        return z if g == 0 else z + g * self.A.backward(d)

    def read(self) -> torch.Tensor:
        c = self.C.read()
        g = self.params.gamma
        return c if g == 0 else c + g * self.A.read()

    def set_weights(self, w: torch.Tensor) -> None:
        """C = w, A initialised (:meth:`initialise_fast_array`; aihwkit: C = W, A = 0)."""
        self.C.set_weights(w)
        self.initialise_fast_array()

    def initialise_fast_array(self) -> None:
        """Program A to zero (each backend's ``set_weights``). The hook for centring A on
        its devices' symmetry points (``centre_on_symmetry_point``), which Tiki-Taka
        needs on devices whose symmetry point is not at w = 0: override or replace this
        method; until then A starts at zero."""
        self.A.set_weights(torch.zeros(self.out_features, self.in_features))

    # ---- update ------------------------------------------------------------------------
    def fast_lr(self, lr: float) -> float:
        """A's learning rate at SGD learning rate ``lr``."""
        p = self.params
        return p.fast_lr * lr if p.scale_fast_lr else p.fast_lr

    def transfer_lr(self, lr: float) -> float:
        """The transfer's learning rate at SGD learning rate ``lr`` (see ``TTParams``)."""
        p = self.params
        base = 1.0 if p.transfer_lr is None else p.transfer_lr
        eta = base * lr if p.scale_transfer_lr else base
        if p.transfer_lr is None and self._min_transfer_lr is not None:
            eta = max(eta, self._min_transfer_lr)
        return eta

    def _period(self, n_vectors: int) -> int:
        p = self.params
        if p.units_in_mbatch:
            return max(1, math.ceil(p.transfer_every * n_vectors))
        return max(1, round(p.transfer_every))

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float, images: int = 1) -> None:
        n = x.shape[0]
        if n == 0:
            return
        period, lr_a = self._period(n), self.fast_lr(lr)
        if self.plan.granularity != "position":
            self.A.update(x, d, lr_a, images=images)
            due = (self.vectors + n) // period - self.vectors // period
            self.vectors += n
            for _ in range(due):
                self.transfer(lr)
            return
        start = 0
        while start < n:
            end = min(n, start + period - self.vectors % period)
            self.A.update(x[start:end], d[start:end], lr_a)
            self.vectors += end - start
            start = end
            if self.vectors % period == 0:
                self.transfer(lr)

    def transfer(self, lr: float) -> None:
        """Read the next ``n_reads_per_transfer`` columns of A (forward of unit vectors)
        and write them into C (``C[:, j] += lr_t A[:, j]`` by a pulsed update)."""
        k = self.params.n_reads_per_transfer
        cols = [(self.column + i) % self.in_features for i in range(k)]
        self.column = (self.column + k) % self.in_features
        e = self._eye[cols]
        v = self.A.forward(e)  # [k, out]: the columns as read
        # W <- W - lr_t d^T x with x = e_j, d = -v: C[:, j] += lr_t v
        self.C.update(e, -v, self.transfer_lr(lr), images=1)

    def state_dict(self) -> dict[str, Any]:
        return {"vectors": self.vectors, "column": self.column}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vectors = int(state["vectors"])
        self.column = int(state["column"])
