"""``ideal``: an exact floating-point array, for checks.

Forward and backward are exact matmuls (no noise, no bound, no quantisation);
every pulse changes a weight by exactly ``±dw`` (no bounds, no noise), so
updates and write-verify are exact too.
"""

from __future__ import annotations

import torch

from rpuhw.array import Capabilities, CrossPointArray, check_float


class IdealArray(CrossPointArray):
    """Exact array: ``y = W x``, each pulse adds exactly ``±dw``."""

    capabilities = Capabilities(forward=True, backward=True, update=True, pulse=True,
                                read=True)

    def __init__(self, rows: int, cols: int, dw: float = 0.001, seed: int | None = None):
        super().__init__(rows, cols)
        if not dw > 0:
            raise ValueError(f"dw: expected a positive step size, got {dw!r}")
        self.dw = float(dw)
        self.weights = torch.zeros(rows, cols)

    def set_weights(self, w: torch.Tensor) -> None:
        """Set the weights directly (exact; no bounds to respect)."""
        self.weights.copy_(check_float(w, "w", self.shape))

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.set_weights(sd["weights"])

    def nominal_step(self) -> float:
        return self.dw

    def _forward(self, x):
        return x @ self.weights.T

    def _backward(self, d):
        return d @ self.weights

    def _update(self, x_bits, d_bits):
        # coincidences of all P updates summed: exact since there are no bounds
        x = x_bits.float().reshape(-1, self.cols)
        d = d_bits.float().reshape(-1, self.rows)
        self.weights += self.dw * (d.T @ x)

    def _pulse(self, counts):
        self.weights += self.dw * counts.float()

    def _read(self):
        return self.weights.clone()
