"""``tt``: Tiki-Taka v1 (Gokmen & Haensch, Front. Neurosci. 14:103, 2020).

Two arrays: the fast array A takes the gradient (pulsed SGD at ``fast_lr``), and every
``transfer_every`` updates ``n_reads_per_transfer`` consecutive columns of A are read
(a forward MVM of unit vectors through A's periphery) and written into the slow array C
with a pulsed rank-1 update, ``C[:, j] += lr_t A[:, j]`` in expectation. The layer's
weight is ``W = gamma A + C``: forward and backward are one MVM on C, plus one on A
scaled by ``gamma`` when ``gamma != 0`` (two MVMs summed digitally).

A starts at zero, then, with ``centre_a`` (``null``, the default: where A is simulated
with a device model that has a symmetry point), is centred on its devices' symmetry
points (:func:`rpuhw.symmetry.relax_to_symmetry_points`, alternating up and down pulses
to the whole array, a fixed number of cycles). The found points are kept as the digital
reference ``A_ref`` (the reference devices of aihwkit's ``subtract_symmetry_point``,
section 6 of the algorithms reference): every read of A is taken as ``A - A_ref``, so
the layer's weight is ``gamma (A - A_ref) + C`` and a transfer moves C by ``lr_t (A -
A_ref)[:, j]``. A's implicit decay (the asymmetry) then pulls toward 0 of that
difference instead of transferring each device's symmetry point into C as a bias.

Devices with ``lifetime`` decay once per ``update`` call of a grid (as in ``sgd``) and
a grid that got no ``update`` call in an optimizer step (C without a transfer, or C
moved through ``pulse``) decays once at its end, so with the defaults each array decays
exactly once per step.

Order of operations as aihwkit's ``TransferCompound`` (CPU): the rank-1 updates of a
step go to A in order; after update vector k (counted over the whole run) a transfer
happens when ``k % period == 0``, with ``period = ceil(transfer_every * P)`` vectors
(``units_in_mbatch``: P = the step's update vectors, so ``transfer_every=1`` is one
transfer per mini-batch) or ``round(transfer_every)`` vectors otherwise. With
``position`` granularity the step's updates are split at those points; with ``sample``
or ``batch`` granularity A's update is one aggregated block and the step's transfers
follow it. One exception, the common case: when a step's only transfer falls at its end
(``transfer_every`` a whole number of mini-batches), the transfer is **pipelined**: it
runs first, reading A as the previous steps left it, and A's update follows (on the
simulator's background thread, beside the next image's forward pass). A transfer thus
sees A one step late, which Tiki-Taka's slow transfers do not notice, and A's update
no longer waits for the transfer or the transfer for it. Not implemented:
``random_selection``, ``with_reset_prob``, row transfers (``transfer_columns=False``),
more than two devices.
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import AbstractContextManager, nullcontext
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
    n_reads_per_transfer: int | None = None
    """Consecutive columns of A read and written into C per transfer (one forward of
    that many unit vectors, one write of C). None: ``ceil(in / transfers_per_sweep)``
    for a layer with ``in`` columns, so that each column is read every
    ``transfers_per_sweep`` transfers on any layer (aihwkit: 1, one column per
    transfer, so that fc1 of lenet, 513 columns, reads a column every 513 images)."""
    transfers_per_sweep: int = 8
    """With ``n_reads_per_transfer`` None: transfers it takes to read every column of A
    once (rpuhw's key; bounds how long A integrates a column between reads and how
    often C can move: at most once per column read for the buffered algorithms)."""
    fast_lr: float = 1.0
    """Learning rate of A's update (times the SGD lr when ``scale_fast_lr``); with
    ``auto_scale`` the expected pulses per update vector on A's most driven device, in
    units of the pulse train's length BL."""
    scale_fast_lr: bool | None = None
    """Multiply A's learning rate by the SGD learning rate. None: true without
    ``auto_scale`` (aihwkit 1.2's ``TransferCompound``), false with it (aihwkit's
    ``ChoppedTransferCompound``)."""
    auto_scale: bool = True
    """Scale A's learning rate to its device and the layer's signals (aihwkit's
    ``auto_scale``): ``lr_A = fast_lr BL dw_min_A / (m_x m_d)``, with ``m_x``, ``m_d``
    running means of each update vector's ``max|x|`` and ``max|d|``, so that A's most
    driven device gets about ``fast_lr BL`` pulses per update vector on any device and
    layer. (aihwkit: false for ``TransferCompound``, where A learns at the SGD scale
    and with the defaults barely moves on a device with 600 states.)"""
    auto_momentum: float = 0.99
    """Momentum of ``m_x``, ``m_d`` per optimizer step (aihwkit's ``auto_momentum``):
    ``m <- auto_momentum m + (1 - auto_momentum) mean_v max|x_v|``; the first step sets
    them."""
    transfer_lr: float | None = None
    """Learning rate of the transfer into C (times the SGD lr when
    ``scale_transfer_lr``). None = 1, raised where needed so that an A entry at 30 % of
    half A's weight range moves C by one pulse (``dw_min`` of C) per read in
    expectation: ``max(1 [x lr], dw_min_C / (A_SHARE (w_max_A - w_min_A)/2))``,
    ``A_SHARE = 0.3``."""
    scale_transfer_lr: bool = True
    """Multiply ``transfer_lr`` by the SGD learning rate."""
    centre_a: bool | None = None
    """Centre A on its devices' symmetry points at ``set_weights`` and subtract them
    (``A_ref``) from every read of A (:func:`rpuhw.symmetry.relax_to_symmetry_points`:
    ``3 K`` cycles of an up and a down pulse to every device, whole-array reads in the
    last ``K``, ``K`` = the number of states / 2). None (default): true where A is
    simulated with a device model that has a symmetry point (not ``ideal`` or
    ``constant_step``); on hardware
    only when asked (``true``: ~1,700 pulses per device and ~570 reads of the whole
    array on the hidden device)."""

    def validate(self) -> None:
        require(math.isfinite(self.gamma) and self.gamma >= 0, "gamma",
                f"must be a number >= 0, got {self.gamma!r}")
        require(self.transfer_every > 0, "transfer_every",
                f"must be > 0, got {self.transfer_every!r}")
        k = self.n_reads_per_transfer
        require(k is None or (isinstance(k, int) and k >= 1), "n_reads_per_transfer",
                f"must be null or an integer >= 1, got {k!r}")
        k = self.transfers_per_sweep
        require(isinstance(k, int) and not isinstance(k, bool) and k >= 1,
                "transfers_per_sweep", f"must be an integer >= 1, got {k!r}")
        require(self.fast_lr > 0, "fast_lr", f"must be > 0, got {self.fast_lr!r}")
        require(0 <= self.auto_momentum < 1, "auto_momentum",
                f"must be a number in [0, 1), got {self.auto_momentum!r}")
        t = self.transfer_lr
        require(t is None or t > 0, "transfer_lr", f"must be null or > 0, got {t!r}")


def _has_symmetry_point(array: Any) -> bool:
    """Whether ``centre_a: null`` centres this array: a simulated device whose model has
    a symmetry point to settle at (not ``constant_step``: symmetric, every weight is one,
    or asymmetric, it drifts to a bound). Hardware is centred only on request (the search
    costs millions of instrument messages per layer)."""
    from rpuhw.sim.array import SimulatedArray

    return isinstance(array, SimulatedArray) and array.model.name != "constant_step"


def _in_place(flag: bool) -> AbstractContextManager:
    """:func:`rpuhw.sim.background.in_place` when ``flag`` (else nothing)."""
    if not flag:
        return nullcontext()
    from rpuhw.sim.background import in_place

    return in_place()


A_SHARE = 0.3
"""The share of half A's weight range that the default ``transfer_lr`` turns into one
pulse of C per read (the TT family's device rule). On the hidden device, ``agad`` after
3 epochs: 7.1 % test error with 0.1, 4.1 % with 0.3, 4.5 % with 0.5 (seed 0; a higher
share pulses C less often, so less of A's noise reaches C and an asymmetric C is
dragged less toward its own symmetry points)."""


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
        self._min_transfer_lr = (None if half is None else
                                 self.dw_min("C") / (A_SHARE * half))
        self.m_x: float | None = None
        """Running mean of the update vectors' ``max|x|`` (``auto_scale``)."""
        self.m_d: float | None = None
        """Running mean of the update vectors' ``max|d|`` (``auto_scale``)."""
        self._eye = torch.eye(self.in_features)
        self.a_ref: torch.Tensor | None = None
        """A's reference [out, in] (weight units, its symmetry points) or None (0)."""
        self.centring: list[Any] = []
        """The :class:`~rpuhw.symmetry.RelaxResult` of each of A's tiles from the last
        centring."""

    # ---- weight ------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.C.forward(x)
        g = self.params.gamma
        if g == 0:
            return y
        xa = self.fast_input(x)
        ya = self.A.forward(xa)
        if self.a_ref is not None:
            ya = ya - xa @ self.a_ref.T
        return y + g * ya

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        z = self.C.backward(d)
        g = self.params.gamma
        if g == 0:
            return z
        za = self.A.backward(d)
        if self.a_ref is not None:
            za = za - d @ self.a_ref
        return z + g * self.fast_input(za)

    def read(self) -> torch.Tensor:
        c = self.C.read()
        g = self.params.gamma
        return c if g == 0 else c + g * self.read_fast()

    def read_fast(self) -> torch.Tensor:
        """A as the algorithm sees it, ``A - A_ref`` [out, in] (weight units; the
        choppers' signs undone)."""
        a = self.A.read()
        return self.fast_input(a if self.a_ref is None else a - self.a_ref)

    def set_weights(self, w: torch.Tensor) -> None:
        """C = w, A initialised (:meth:`initialise_fast_array`; aihwkit: C = W, A = 0)."""
        self.C.set_weights(w)
        self.initialise_fast_array()

    def centres_a(self) -> bool:
        """Whether :meth:`initialise_fast_array` centres A (``centre_a``; None: every
        array of A pulses and reads natively and is a simulated device with a symmetry
        point, see ``TTParams.centre_a``)."""
        c = getattr(self.params, "centre_a", False)
        if c is not None:
            return bool(c)
        return all(a.capabilities.pulse and a.capabilities.read and _has_symmetry_point(a)
                   for a in self.A.arrays)

    def initialise_fast_array(self) -> None:
        """Program A to zero (each backend's ``set_weights``); with :meth:`centres_a`,
        then drive every device of A to its symmetry point
        (:func:`~rpuhw.symmetry.relax_to_symmetry_points`, per tile) and keep the found
        points as ``A_ref`` (the mean of the K copies of a weight). Cost: see
        docs/algorithms.md."""
        self.A.set_weights(torch.zeros(self.out_features, self.in_features))
        self.a_ref, self.centring = None, []
        if not self.centres_a():
            return
        from rpuhw.symmetry import relax_to_symmetry_points

        grid = self.A
        phys = torch.zeros(grid.k * self.out_features, self.in_features)
        for (r0, r1), row in zip(grid.row_splits, grid.tiles, strict=True):
            for (c0, c1), per in zip(grid.col_splits, row, strict=True):
                res = relax_to_symmetry_points(per.array)
                phys[r0:r1, c0:c1] = res.symmetry_point
                self.centring.append(res)
        self.a_ref = phys.view(grid.k, self.out_features, self.in_features).mean(0) * grid.scale

    # ---- update ------------------------------------------------------------------------
    def fast_lr(self, lr: float) -> float:
        """A's learning rate at SGD learning rate ``lr`` (with ``auto_scale``: from the
        running ``m_x``, ``m_d``; 0 before the first update or when they are 0)."""
        p = self.params
        eta = p.fast_lr * lr if self.scales_fast_lr else p.fast_lr
        if not p.auto_scale:
            return eta
        if not self.m_x or not self.m_d or lr == 0:  # lr 0 freezes the layer
            return 0.0
        return eta * self.plan.periphery.bl * self.dw_min("A") / (self.m_x * self.m_d)

    @property
    def scales_fast_lr(self) -> bool:
        """``scale_fast_lr`` resolved: None is true without ``auto_scale``, false with
        it."""
        p = self.params
        return (not p.auto_scale) if p.scale_fast_lr is None else p.scale_fast_lr

    def resolved_params(self, lr: float) -> dict[str, Any]:
        """The hyper-parameters this layer runs with at SGD learning rate ``lr``, in
        aihwkit's form (``transfer_lr`` divided by ``lr`` where ``scale_transfer_lr``):
        the None defaults resolved (``centre_a`` None stays None: decided per array)."""
        p = self.params
        out = dataclasses.asdict(p)
        out["n_reads_per_transfer"] = self.reads_per_transfer
        out["scale_fast_lr"] = self.scales_fast_lr
        if p.transfer_lr is None:
            t = self.transfer_lr(lr)
            out["transfer_lr"] = t / lr if p.scale_transfer_lr else t
        return out

    def track_signals(self, x: torch.Tensor, d: torch.Tensor) -> None:
        """``auto_scale``: update ``m_x``, ``m_d`` with a step's update vectors
        (x [P, in], d [P, out])."""
        if not self.params.auto_scale:
            return
        mx = float(x.abs().amax(dim=1).mean())
        md = float(d.abs().amax(dim=1).mean())
        if self.m_x is None or self.m_d is None:
            self.m_x, self.m_d = mx, md
            return
        a = self.params.auto_momentum
        self.m_x = a * self.m_x + (1 - a) * mx
        self.m_d = a * self.m_d + (1 - a) * md

    def transfer_lr(self, lr: float) -> float:
        """The transfer's learning rate at SGD learning rate ``lr`` (see ``TTParams``)."""
        p = self.params
        base = 1.0 if p.transfer_lr is None else p.transfer_lr
        eta = base * lr if p.scale_transfer_lr else base
        if p.transfer_lr is None and self._min_transfer_lr is not None and lr != 0:
            eta = max(eta, self._min_transfer_lr)
        return eta

    def _period(self, n_vectors: int) -> int:
        p = self.params
        if p.units_in_mbatch:
            return max(1, math.ceil(p.transfer_every * n_vectors))
        return max(1, round(p.transfer_every))

    def fast_input(self, x: torch.Tensor) -> torch.Tensor:
        """A's input for the gradient update, columns of ``x [..., in]`` times the
        choppers' signs (the choppers' hook; here x itself)."""
        return x

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float, images: int = 1) -> None:
        n = x.shape[0]
        if n == 0:
            return
        self.track_signals(x, d)
        period, lr_a = self._period(n), self.fast_lr(lr)
        transfers = 0
        if n <= period and (self.vectors + n) % period == 0:
            # the step's one transfer falls at its end: pipelined, it reads A as the
            # previous steps left it, then A's update goes to the background thread and
            # runs beside the next image's forward pass (one step late; see the module)
            self.transfer(lr)
            kw = {} if self.plan.granularity == "position" else {"images": images}
            self.A.update(self.fast_input(x), d, lr_a, **kw)
            self.vectors += n
            transfers = 1
        elif self.plan.granularity != "position":
            due = (self.vectors + n) // period - self.vectors // period
            with _in_place(due > 0):  # a transfer reads A at once: no hand-over
                self.A.update(self.fast_input(x), d, lr_a, images=images)
            self.vectors += n
            for _ in range(due):
                self.transfer(lr)
            transfers = due
        else:
            start = 0
            while start < n:
                end = min(n, start + period - self.vectors % period)
                with _in_place((self.vectors + end - start) % period == 0):
                    self.A.update(self.fast_input(x[start:end]), d[start:end], lr_a)
                self.vectors += end - start
                start = end
                if self.vectors % period == 0:
                    self.transfer(lr)
                    transfers += 1
        if transfers == 0 or self.pulses_c:
            self.decay("C")  # C's update cycle of this step, when no C.update had one

    pulses_c = False
    """Whether :meth:`transfer` moves C through ``pulse`` (no decay of its own)."""

    def read_columns(self, cols: list[int]) -> torch.Tensor:
        """Columns ``cols`` of ``A - A_ref`` as read: [k, out] (one forward of unit
        vectors through A's periphery)."""
        v = self.A.forward(self._eye[cols])
        return v if self.a_ref is None else v - self.a_ref[:, cols].T

    @property
    def reads_per_transfer(self) -> int:
        """Columns read per transfer: ``n_reads_per_transfer``, or with None
        ``ceil(in / transfers_per_sweep)`` (at most ``in``)."""
        p = self.params
        if p.n_reads_per_transfer is not None:
            return p.n_reads_per_transfer
        return min(math.ceil(self.in_features / p.transfers_per_sweep), self.in_features)

    def next_columns(self) -> list[int]:
        """The next :attr:`reads_per_transfer` columns, cyclically (moves the pointer)."""
        k = self.reads_per_transfer
        cols = [(self.column + i) % self.in_features for i in range(k)]
        self.column = (self.column + k) % self.in_features
        return cols

    def transfer(self, lr: float) -> None:
        """Read the next ``n_reads_per_transfer`` columns of A - A_ref (forward of unit
        vectors) and write them into C (``C[:, j] += lr_t A[:, j]`` by a pulsed update)."""
        cols = self.next_columns()
        v = self.read_columns(cols)  # [k, out]: the columns as read
        # W <- W - lr_t d^T x with x = e_j, d = -v: C[:, j] += lr_t v
        self.C.update(self._eye[cols], -v, self.transfer_lr(lr), images=1)

    def state_dict(self) -> dict[str, Any]:
        st: dict[str, Any] = {"vectors": self.vectors, "column": self.column,
                              "m_x": self.m_x, "m_d": self.m_d}
        if self.a_ref is not None:
            st["a_ref"] = self.a_ref.clone()
        return st

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.vectors = int(state["vectors"])
        self.column = int(state["column"])
        self.m_x, self.m_d = state.get("m_x"), state.get("m_d")
        ref = state.get("a_ref")
        self.a_ref = None if ref is None else ref.clone()
