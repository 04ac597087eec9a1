"""The scheduler: one layer's weight matrix -> tiles on arrays, and how its cycles run.

A layer's logical matrix ``W [out, in + 1]`` (bias as an extra input column fixed at
1) is held as ``K = devices_per_weight`` copies of each row (the paper's
device-variability reduction: K devices per weight, their outputs averaged, all K
updated with the same pulses), and the resulting ``[K*out, in+1]`` physical matrix is
split into a grid of tiles of at most ``max_rows x max_cols`` devices, each an array
opened from the layer's backend spec and driven through its own
:class:`~rpuhw.periphery.Periphery`. Partial sums of column tiles are added
digitally.

Every cycle is one call per tile for the whole batch: ``forward`` of all N vectors
(all output positions of all images of a conv layer), ``backward`` likewise, and one
``update`` with all rank-1 updates in order (``position`` granularity, the paper's:
per image, every output position's rank-1 update in sequence). ``sample`` and
``batch`` granularity instead sum the gradient over an image or the batch and send it
as stochastically rounded pulse counts through ``pulse`` (an approximation of the
pulsed SGD the paper analyses, offered because it is what some hardware can do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from rpuhw.backends import open_array
from rpuhw.config import require
from rpuhw.periphery.management import Periphery, PeripheryConfig, TileLines

Granularity = Literal["position", "sample", "batch"]
MANAGEMENT = {
    "none": (False, False, False),
    "nm": (True, False, False),
    "nm+bm": (True, True, False),
    "nm+bm+um": (True, True, True),
}
"""``--management`` levels: (noise, bound, update management)."""


@dataclass
class LayerPlan:
    """How one layer is mapped onto arrays."""

    backend: str = "sim"
    """Array spec of this layer's tiles (``ideal``, ``sim``, ``sim:FILE.yaml``, ...)."""
    devices_per_weight: int = 1
    """K devices per weight (outputs averaged, all K updated): device-variability reduction."""
    max_rows: int | None = None
    """Largest tile height (devices); None = the whole layer on one array."""
    max_cols: int | None = None
    """Largest tile width (devices); None = the whole layer on one array."""
    granularity: str = "position"
    """``position`` (paper), ``sample`` or ``batch`` (aggregated counts, approximate)."""
    periphery: PeripheryConfig = field(default_factory=PeripheryConfig)
    """Noise / bound / update management and pulse-train settings of every tile."""
    algorithm: str = "sgd"
    """Training algorithm (:mod:`rpuhw.algorithms`: ``sgd``, ``mp``, ``tt``)."""
    algorithm_params: dict[str, Any] = field(default_factory=dict)
    """The algorithm's hyper-parameters (aihwkit's names), e.g. ``{"gamma": 0.1}``;
    unset keys take the algorithm's (device-derived) defaults."""
    arrays: dict[str, str] = field(default_factory=dict)
    """Backend spec of one of the algorithm's arrays, e.g. ``{"A": "sim:fast.yaml"}``;
    the others use :attr:`backend`."""
    weight_scaling_omega: float = 0.0
    """> 0: map the layer's weights onto the devices' range (aihwkit's key). The weights
    the network sees are ``alpha`` times the device weights, ``alpha = 1 / (omega
    sqrt(n_in))`` (``n_in``: the matrix's columns, the bias column included; torch's
    default initial weights lie within ``+-1/sqrt(fan_in)``, so on the devices within
    about ``+-omega``). Every MVM's output is multiplied by ``alpha`` after the ADC and
    the devices are asked for ``-lr d x^T / alpha``, so the SGD step of the weights is
    unchanged (aihwkit's ``weight_scaling_lr_compensation``). aihwkit takes ``alpha``
    from the largest weight it is given; here it is fixed by the layer's shape. 0 (the
    default): ``alpha = 1``."""

    def weight_scale(self, n_in: int) -> float:
        """``alpha`` for a matrix of ``n_in`` columns (see :attr:`weight_scaling_omega`)."""
        omega = self.weight_scaling_omega
        return 1.0 if omega == 0 else 1.0 / (omega * math.sqrt(n_in))

    def validate(self) -> None:
        require(self.devices_per_weight >= 1, "devices_per_weight",
                f"must be >= 1, got {self.devices_per_weight}")
        for key in ("max_rows", "max_cols"):
            v = getattr(self, key)
            require(v is None or v >= 1, key, f"must be >= 1 or null, got {v}")
        require(self.granularity in ("position", "sample", "batch"), "granularity",
                f"must be one of position, sample, batch; got {self.granularity!r}")
        check_omega(self.weight_scaling_omega)

    def check_algorithm(self) -> None:
        """The algorithm, its hyper-parameters and the arrays placed in :attr:`arrays`
        exist (ConfigError naming the allowed values otherwise)."""
        from rpuhw.algorithms import algorithm_class, make_params

        cls = algorithm_class(self.algorithm)
        make_params(self.algorithm, self.algorithm_params)
        for arr, spec in self.arrays.items():
            require(arr in cls.array_names, "layers",
                    f"algorithm {self.algorithm} has no array {arr} (arrays: "
                    f"{', '.join(cls.array_names)})")
            require(isinstance(spec, str) and spec not in ("", "float"), "layers",
                    f"array {arr} needs an array spec, got {spec!r}")

    @staticmethod
    def management(level: str) -> PeripheryConfig:
        """PeripheryConfig for a ``--management`` level (none, nm, nm+bm, nm+bm+um)."""
        require(level in MANAGEMENT, "management",
                f"must be one of {', '.join(MANAGEMENT)}; got {level!r}")
        nm, bm, um = MANAGEMENT[level]
        return PeripheryConfig(noise_management=nm, bound_management=bm,
                               update_management=um)


def check_omega(omega: Any) -> None:
    """``weight_scaling_omega`` is a finite number >= 0 (ConfigError naming the key)."""
    require(isinstance(omega, (int, float)) and not isinstance(omega, bool)
            and math.isfinite(omega) and omega >= 0, "weight_scaling_omega",
            f"must be a number >= 0, got {omega!r}")


def _splits(n: int, most: int | None) -> list[tuple[int, int]]:
    """Split range(n) into nearly equal consecutive chunks of at most ``most``."""
    if most is None or n <= most:
        return [(0, n)]
    parts = -(-n // most)
    base, extra = divmod(n, parts)
    out, start = [], 0
    for k in range(parts):
        size = base + (k < extra)
        out.append((start, start + size))
        start += size
    return out


class TileGrid:
    """A logical ``out x in_features`` matrix (bias column included) on a grid of arrays."""

    def __init__(self, out_features: int, in_features: int, plan: LayerPlan,
                 seed: int | None = None):
        plan.validate()
        self.out_features, self.in_features, self.plan = out_features, in_features, plan
        self.k = plan.devices_per_weight
        self.scale = plan.weight_scale(in_features)
        """``alpha``: the logical weights are ``alpha`` times the device weights (1
        unless ``weight_scaling_omega``)."""
        self.row_splits = _splits(self.k * out_features, plan.max_rows)
        self.col_splits = _splits(in_features, plan.max_cols)
        self.tiles: list[list[Periphery]] = []
        n = 0
        for r0, r1 in self.row_splits:
            row = []
            for c0, c1 in self.col_splits:
                tile_seed = None if seed is None else seed * 7919 + n
                array = open_array(plan.backend, r1 - r0, c1 - c0, seed=tile_seed,
                                   offset=(r0, c0))
                # the periphery's generator must not share the array's seed (their
                # streams would be correlated)
                per_seed = None if tile_seed is None else (tile_seed * 2654435761 + 97) % 2**62
                row.append(Periphery(array, plan.periphery, seed=per_seed))
                n += 1
            self.tiles.append(row)
        # one tile holds the whole matrix: calls go to it without slicing or partial sums
        self._single = self.tiles[0][0] if len(self.tiles) == 1 and len(row) == 1 else None
        if self._single is not None and self.k == 1 and self.scale == 1.0:
            # MVMs straight to the one tile
            self.forward = self._single.forward  # type: ignore[method-assign]
            self.backward = self._single.backward  # type: ignore[method-assign]
        # K > 1: physical row r of the stacked copies is logical row r % out
        self._lines = [TileLines(per, np.arange(r0, r1) % out_features, slice(c0, c1))
                       for (r0, r1), row in zip(self.row_splits, self.tiles, strict=True)
                       for (c0, c1), per in zip(self.col_splits, row, strict=True)]

    @property
    def arrays(self):
        return [p.array for row in self.tiles for p in row]

    # ---- weights ---------------------------------------------------------------------
    def set_weights(self, w: torch.Tensor) -> None:
        """Write the logical weights (each array's ``set_weights``: direct on a simulator,
        a short write-verify on hardware)."""
        phys = w.detach().float().repeat(self.k, 1)  # K stacked copies of the rows
        if self.scale != 1.0:
            phys = phys / self.scale
        for (r0, r1), row in zip(self.row_splits, self.tiles, strict=True):
            for (c0, c1), per in zip(self.col_splits, row, strict=True):
                block = phys[r0:r1, c0:c1].contiguous()
                # simulators set states directly; hardware does a short write-verify
                per.array.set_weights(block)

    def read(self) -> torch.Tensor:
        """The logical weights as read (the K copies averaged)."""
        phys = torch.cat([torch.cat([p.array.read() for p in row], 1) for row in self.tiles], 0)
        w = phys.view(self.k, self.out_features, self.in_features).mean(0)
        return w if self.scale == 1.0 else w * self.scale

    def pulse(self, counts: torch.Tensor) -> None:
        """Signed pulse counts of the logical matrix [out, in] (int32): every one of the
        K devices of a weight gets its weight's count, each tile its block (``pulse``)."""
        if self.k > 1:
            counts = counts.repeat(self.k, 1)
        if self._single is not None:
            self._single.array.pulse(counts)
            return
        for (r0, r1), row in zip(self.row_splits, self.tiles, strict=True):
            for (c0, c1), per in zip(self.col_splits, row, strict=True):
                per.array.pulse(counts[r0:r1, c0:c1].contiguous())

    # ---- cycles ----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``y = W x`` for x [N, in] -> [N, out] (one forward call per tile; times
        ``scale``)."""
        if self._single is not None and self.k == 1:
            return self._single.forward(x) * self.scale
        parts = []
        for row in self.tiles:
            acc = None
            for (c0, c1), per in zip(self.col_splits, row, strict=True):
                y = per.forward(x[:, c0:c1])
                acc = y if acc is None else acc + y
            parts.append(acc)
        y = torch.cat(parts, 1)
        y = y.view(-1, self.k, self.out_features).mean(1) if self.k > 1 else y
        return y if self.scale == 1.0 else y * self.scale

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        """``z = W^T d`` for d [N, out] -> [N, in] (one backward call per tile; times
        ``scale``)."""
        if self._single is not None and self.k == 1:
            return self._single.backward(d) * self.scale
        phys = d.repeat(1, self.k) / self.k if self.k > 1 else d
        z = torch.zeros(d.shape[0], self.in_features)
        for (r0, r1), row in zip(self.row_splits, self.tiles, strict=True):
            for (c0, c1), per in zip(self.col_splits, row, strict=True):
                z[:, c0:c1] += per.backward(phys[:, r0:r1].contiguous())
        return z if self.scale == 1.0 else z * self.scale

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float,
               images: int = 1) -> None:
        """Apply ``W <- W - lr d^T x`` for the rank-1 pairs (x [P, in], d [P, out]) in order.

        ``images`` (number of images the P pairs come from, equal blocks) matters for
        ``sample`` granularity only. The devices get ``lr / scale``.
        """
        g = self.plan.granularity
        if self.scale != 1.0:
            lr = lr / self.scale
        if g == "position":
            if self._single is not None and self.k == 1:
                self._single.update(x, d, lr)
            elif self.k == 1:
                for (r0, r1), row in zip(self.row_splits, self.tiles, strict=True):
                    for (c0, c1), per in zip(self.col_splits, row, strict=True):
                        per.update(x[:, c0:c1].contiguous(), d[:, r0:r1].contiguous(), lr)
            else:  # K copies of each row: the logical pulse trains, drawn once, fanned out
                self.tiles[0][0].update_tiles(x, d, lr, self._lines)
            return
        groups = images if g == "sample" else 1
        for xg, dg in zip(x.chunk(groups), d.chunk(groups), strict=True):
            if self.k == 1:  # each tile rounds its own block of the aggregated update
                for (r0, r1), row in zip(self.row_splits, self.tiles, strict=True):
                    for (c0, c1), per in zip(self.col_splits, row, strict=True):
                        per.array.pulse(per.pulse_counts(xg[:, c0:c1].contiguous(),
                                                         dg[:, r0:r1].contiguous(), lr))
                continue
            # K copies: the logical counts, rounded once, repeated K times
            counts = self.tiles[0][0].pulse_counts(xg, dg, lr).repeat(self.k, 1)
            for (r0, r1), row in zip(self.row_splits, self.tiles, strict=True):
                for (c0, c1), per in zip(self.col_splits, row, strict=True):
                    per.array.pulse(counts[r0:r1, c0:c1].contiguous())
        for array in self.arrays:  # pulse has no decay: one per update, as update has
            array.decay()
