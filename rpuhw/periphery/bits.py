"""Stochastic pulse trains: int8 bit tensors and their packed form.

The contract's update takes bit tensors ``x_bits[P, BL, cols]`` and
``d_bits[P, BL, rows]`` with entries in {-1, 0, +1}. :class:`PackedBits`
holds the same information as two 64-bit masks per line and update (slots
with a non-zero bit; slots with a +1 bit): 16x smaller and what the compiled
update kernel reads. Either form may be passed to ``CrossPointArray.update``.
PackedBits is the contract's data type, so this module needs no numba.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MAX_BL = 64
"""Longest pulse train packed bits hold (one uint64 per line and update)."""


@dataclass(frozen=True)
class PackedBits:
    """Packed pulse trains of P updates: uint64 masks, bit t = slot t."""

    x_nz: np.ndarray
    """[P, cols] slots where the column (input) bit is non-zero."""
    x_pos: np.ndarray
    """[P, cols] slots where the column bit is +1."""
    d_nz: np.ndarray
    """[P, rows] slots where the row (error) bit is non-zero."""
    d_pos: np.ndarray
    """[P, rows] slots where the row bit is +1."""
    bl: int
    """Slots per update (BL <= 64)."""

    @property
    def n_updates(self) -> int:
        return self.x_nz.shape[0]

    @property
    def cols(self) -> int:
        return self.x_nz.shape[1]

    @property
    def rows(self) -> int:
        return self.d_nz.shape[1]

    @classmethod
    def from_bits(cls, x_bits: torch.Tensor, d_bits: torch.Tensor) -> PackedBits:
        """Pack int8 bit tensors (already shape-checked); ValueError on values outside {-1,0,1}."""
        bl = x_bits.shape[1]
        if bl > MAX_BL:
            raise ValueError(f"packed bit streams hold at most {MAX_BL} slots, got BL={bl}")
        x_nz, x_pos, bad_x = _pack(x_bits.numpy())
        d_nz, d_pos, bad_d = _pack(d_bits.numpy())
        if bad_x or bad_d:
            which = "x_bits" if bad_x else "d_bits"
            raise ValueError(f"{which}: entries must be -1, 0 or +1 "
                             f"({bad_x + bad_d} entries are not)")
        return cls(x_nz, x_pos, d_nz, d_pos, bl)

    def to_bits(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Unpack to int8 tensors ``(x_bits[P, BL, cols], d_bits[P, BL, rows])``."""
        return _unpack(self.x_nz, self.x_pos, self.bl), _unpack(self.d_nz, self.d_pos, self.bl)


def _pack(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """int8 bits [P, BL, L] -> (non-zero mask, +1 mask) uint64 [P, L] and the number of
    entries outside {-1, 0, +1}."""
    P, bl, L = bits.shape
    nz = np.zeros((P, L), np.uint64)
    pos = np.zeros((P, L), np.uint64)
    for t in range(bl):  # one vectorised pass per slot (BL <= 64)
        slot = bits[:, t, :]
        nz |= (slot != 0).astype(np.uint64) << np.uint64(t)
        pos |= (slot == 1).astype(np.uint64) << np.uint64(t)
    bad = int(np.count_nonzero((bits < -1) | (bits > 1)))
    return nz, pos, bad


def _unpack(nz: np.ndarray, pos: np.ndarray, bl: int) -> torch.Tensor:
    shifts = np.arange(bl, dtype=np.uint64)[None, :, None]
    on = (nz[:, None, :] >> shifts) & np.uint64(1)
    plus = (pos[:, None, :] >> shifts) & np.uint64(1)
    bits = on.astype(np.int8) * (2 * plus.astype(np.int8) - 1)
    return torch.from_numpy(bits)
