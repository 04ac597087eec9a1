"""How much the demo measures and trains: ``--quick``, default, ``--full``."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DemoSize:
    """How much the demo measures and trains."""

    devices: int
    """Devices characterised (spread over the chip)."""
    pulses: int
    """Up (then down) pulses per cycle."""
    cycles: int
    """Pulse-response cycles."""
    train_limit: int
    """Training images (of mnist5k's 4,000)."""
    test_limit: int
    """Test images (of 1,000)."""
    epochs: int
    """Epochs of each training run."""
    batch_size: int = 10
    """Images per optimizer step."""
    lr: float = 0.1
    """Learning rate (mean loss over the batch)."""


SIZES = {
    # the hidden device needs ~600 pulses from bound to bound: fewer pulses explore only
    # part of the range, and the fit can only describe what was measured
    "quick": DemoSize(devices=8, pulses=300, cycles=1, train_limit=200, test_limit=200,
                      epochs=1),
    "default": DemoSize(devices=16, pulses=500, cycles=1, train_limit=1000, test_limit=500,
                        epochs=2),
    "full": DemoSize(devices=64, pulses=800, cycles=3, train_limit=4000, test_limit=1000,
                     epochs=3),
}
