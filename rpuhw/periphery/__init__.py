"""The digital periphery of an RPU array, below every backend.

Everything between a layer's floating-point ``(x, d)`` and an array's analog cycles
that is digital maths, shared by the simulator and by hardware:

==================  ==========================================================================
``management``      :class:`Periphery`: noise, bound and update management around any
                    :class:`~rpuhw.array.CrossPointArray` (the paper's ablation switches)
``probabilities``   update management's pulse probabilities (compiled, one pass)
``encode``          stochastic pulse encoding: probabilities -> bit trains (numba or torch)
``bits``            :class:`PackedBits`, the packed pulse trains the contract's ``update``
                    takes (numpy only)
``io``              :class:`IOConfig` (an array's DAC/ADC, noise and bounds),
                    DAC/ADC rounding, the saturation tolerance
``absmax``          ``max |v|`` per row, validating nan/inf in the same pass
``rng``             splitmix64 streams of the compiled kernels
==================  ==========================================================================

``rpuhw.sim`` imports this package, never the reverse (tests/test_layering.py). The
names below load on first use, so ``import rpuhw.periphery.bits`` (which the contract
does) loads no numba kernel.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpuhw.periphery.bits import PackedBits
    from rpuhw.periphery.io import IOConfig
    from rpuhw.periphery.management import Periphery, PeripheryConfig, PeripheryStats

__all__ = ["IOConfig", "PackedBits", "Periphery", "PeripheryConfig", "PeripheryStats"]

_WHERE = {"Periphery": "management", "PeripheryConfig": "management",
          "PeripheryStats": "management", "PackedBits": "bits", "IOConfig": "io"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"rpuhw.periphery.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'rpuhw.periphery' has no attribute {name!r}")
