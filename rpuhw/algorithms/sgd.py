"""``sgd``: the paper's pulsed SGD on one array C (the default algorithm).

Every optimizer step sends the stored (x, d) pairs to C as stochastic pulse trains
(``position`` granularity) or rounded pulse counts (``sample``/``batch``), exactly as
:meth:`rpuhw.schedule.TileGrid.update` does: results are bit for bit those of rpuhw
before algorithms existed. No digital state, no hyper-parameters.
"""

from __future__ import annotations

from typing import Any

from rpuhw.algorithms.base import Algorithm


class SGD(Algorithm):
    """Pulsed SGD: ``W <- W - lr d^T x`` in expectation, on array C."""

    name = "sgd"
    array_names = ("C",)

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # the layer calls these per image: the grid's own bound methods, no extra frame
        self.forward = self.grid.forward  # type: ignore[method-assign]
        self.backward = self.grid.backward  # type: ignore[method-assign]
        self.update = self.grid.update  # type: ignore[method-assign]
