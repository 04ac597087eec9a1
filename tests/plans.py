"""Layer plans shared by the scheduler and layer tests."""

from __future__ import annotations

from rpuhw.periphery import PeripheryConfig
from rpuhw.schedule import LayerPlan

DW = 0.001
BL = 10
LR = BL * DW  # gain C = 1 with update management off


def exact(**kw) -> PeripheryConfig:
    """No management, BL 10: pulse probabilities are |x| and |d| exactly."""
    cfg = {"noise_management": False, "bound_management": False,
           "update_management": False, "bl": BL, **kw}
    return PeripheryConfig(**cfg)


def ideal_plan(**kw) -> LayerPlan:
    """A plan on the exact ``ideal`` backend with :func:`exact` periphery by default."""
    kw.setdefault("periphery", exact())
    return LayerPlan(backend="ideal", **kw)
