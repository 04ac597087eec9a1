"""Per-call seeds of the compiled kernels: a splitmix64 counter in plain Python.

Every compiled call (pulse encoding, update, noisy MVM) takes one 62-bit seed. Drawing
it from a ``torch.Generator`` costs a tensor allocation per call (~4 us, more than
some kernels); :class:`SeedStream` returns successive splitmix64 outputs of a 64-bit
counter instead (~0.5 us). Its whole state is one integer, saved and restored with
its owner's state, and ``peek`` lets a caller validate its input before it consumes a
seed (bad input changes nothing).
"""

from __future__ import annotations

import torch

_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


class SeedStream:
    """Successive 62-bit seeds ``mix(s0 + k * golden) >> 2``, k = 1, 2, ...

    Args:
        state: initial 64-bit counter (e.g. drawn from the owner's generator).
    """

    __slots__ = ("state",)

    def __init__(self, state: int):
        self.state = int(state) & _MASK

    @classmethod
    def from_generator(cls, gen: torch.Generator) -> SeedStream:
        """A stream whose start is one draw of ``gen``."""
        return cls(int(torch.randint(0, 2**62, (1,), generator=gen)))

    def peek(self) -> int:
        """The next seed, without consuming it."""
        return _mix((self.state + _GOLDEN) & _MASK) >> 2

    def __call__(self) -> int:
        """Consume and return the next seed."""
        self.state = (self.state + _GOLDEN) & _MASK
        return _mix(self.state) >> 2
