"""The :class:`Algorithm` base, the registry and the parsing of algorithm choices."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import yaml

from rpuhw.config import from_mapping
from rpuhw.errors import ConfigError
from rpuhw.registry import Registry

if TYPE_CHECKING:
    from rpuhw.array import CrossPointArray
    from rpuhw.periphery import Periphery
    from rpuhw.schedule import LayerPlan, TileGrid

ALGORITHMS: Registry[type[Algorithm]] = Registry("training algorithm", key="algorithm",
                                                 entry_points="rpuhw.algorithms")
"""Algorithm name -> :class:`Algorithm` subclass (lazy entries, see ``__init__``)."""


@dataclasses.dataclass
class NoParams:
    """An algorithm without hyper-parameters."""


def algorithm_class(name: str) -> type[Algorithm]:
    """The class registered as ``name`` (ConfigError listing the known names)."""
    if not isinstance(name, str):
        raise ConfigError(f"expected an algorithm name, got {name!r} (known: "
                          f"{', '.join(ALGORITHMS.names())})", key="algorithm")
    return ALGORITHMS.get(name)


def make_params(name: str, values: dict[str, Any] | None = None, *,
                key: str = "algorithm", source: str | None = None) -> Any:
    """The validated hyper-parameters of algorithm ``name`` (its ``Params`` dataclass);
    an unknown key or a bad value is one ConfigError naming ``key.KEY`` and the known
    keys."""
    cls = algorithm_class(name)
    values = dict(values or {})
    fields = [f.name for f in dataclasses.fields(cls.Params)]
    for k in values:
        if k not in fields:
            raise ConfigError(f"unknown hyper-parameter of {name} (known: "
                              f"{', '.join(fields) or 'none'})", key=f"{key}.{k}",
                              source=source)
    return from_mapping(cls.Params, values, source=source, prefix=f"{key}.")  # type: ignore[arg-type]


def parse_algorithm(value: Any, *, key: str = "algorithm",
                    source: str | None = None) -> tuple[str, dict[str, Any]]:
    """``"tt"``, ``"tt:gamma=0.1,transfer_every=2"`` or ``{"name": "tt", "gamma": 0.1}``
    -> ``("tt", {"gamma": 0.1, ...})``, checked (unknown algorithm or hyper-parameter:
    ConfigError naming ``key`` and the allowed values). The returned mapping holds the
    given values only (defaults stay implicit)."""
    if isinstance(value, str):
        name, _, rest = value.partition(":")
        params: dict[str, Any] = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            k, sep, v = item.partition("=")
            if not sep or not k:
                raise ConfigError(f"expected ALG or ALG:KEY=VALUE,..., got {value!r}",
                                  key=key, source=source)
            params[k.strip()] = yaml.safe_load(v)
    elif isinstance(value, dict):
        params = dict(value)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(f"a mapping needs 'name: ALG' (known: "
                              f"{', '.join(ALGORITHMS.names())})", key=key, source=source)
    else:
        raise ConfigError(f"expected an algorithm name or a mapping with 'name', got "
                          f"{value!r}", key=key, source=source)
    if name not in ALGORITHMS:
        raise ConfigError(f"unknown training algorithm {name!r} (known: "
                          f"{', '.join(ALGORITHMS.names())})", key=key, source=source)
    make_params(name, params, key=key, source=source)
    return name, params


# what an operation needs natively: the contract emulates forward/backward from read (and
# read from forward), update from pulse (and pulse from update)
_PROVIDERS = {"forward": ("forward", "read"), "backward": ("backward", "read"),
              "read": ("read", "forward"), "update": ("update", "pulse"),
              "pulse": ("pulse", "update")}


class Algorithm:
    """A layer's training algorithm: owns the layer's arrays, forms its weight, applies
    its updates.

    Subclasses set :attr:`name`, :attr:`array_names` (the last is the visible array that
    holds the weight, ``C``), :attr:`Params` (a dataclass of hyper-parameters with
    aihwkit's names) and :attr:`requires`, and implement :meth:`update`. The defaults
    here run every cycle on the visible array alone (plain pulsed SGD).

    Args:
        out_features, in_features: the logical matrix (bias column included in
            ``in_features``).
        plan: the layer's plan; ``plan.arrays`` may place an array elsewhere
            (``{"A": "sim:fast.yaml"}``), the others use ``plan.backend``.
        seed: the layer's seed: the visible array gets exactly the grid ``sgd`` would
            (same devices); array k of the others ``seed + 500 + k``.
        params: the hyper-parameters (None: :attr:`Params` defaults).
    """

    name: ClassVar[str] = ""
    array_names: ClassVar[tuple[str, ...]] = ("C",)
    Params: ClassVar[type] = NoParams
    requires: ClassVar[dict[str, tuple[str, ...]]] = {}
    """Array name -> operations the algorithm calls on it beyond the layer's own
    (forward, backward, update)."""

    def __init__(self, out_features: int, in_features: int, plan: LayerPlan,
                 seed: int | None = None, params: Any = None):
        from rpuhw.schedule import TileGrid

        self.params = self.Params() if params is None else params
        self.plan = plan
        self.seed = seed
        """The layer's seed (None: unseeded); algorithms derive their generators from it."""
        self.out_features, self.in_features = out_features, in_features
        self.grids: dict[str, TileGrid] = {}
        visible = self.array_names[-1]
        for k, arr in enumerate(self.array_names):
            spec = plan.arrays.get(arr, plan.backend)
            sub = plan if spec == plan.backend else dataclasses.replace(plan, backend=spec)
            s = seed if (arr == visible or seed is None) else seed + 500 + k
            self.grids[arr] = TileGrid(out_features, in_features, sub, seed=s)
        self.grid: TileGrid = self.grids[visible]
        self._check_operations()

    # ---- what the layer calls ----------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's MVMs ``y = W x`` (x [N, in] -> [N, out])."""
        return self.grid.forward(x)

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        """The layer's transposed MVMs ``z = W^T d``."""
        return self.grid.backward(d)

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float, images: int = 1) -> None:
        """One optimizer step's rank-1 pairs (x [P, in], d [P, out], in order) at
        learning rate ``lr``; ``images``: how many images they come from."""
        raise NotImplementedError

    def read(self) -> torch.Tensor:
        """The layer's logical weight as read [out, in]."""
        return self.grid.read()

    def set_weights(self, w: torch.Tensor) -> None:
        """Write the layer's initial weight (the visible array; the others are
        initialised by the algorithm)."""
        self.grid.set_weights(w)

    # ---- what checkpoints and the training loop see ------------------------------------
    @property
    def arrays(self) -> list[CrossPointArray]:
        """Every array of every grid, in :attr:`array_names` order."""
        return [a for arr in self.array_names for a in self.grids[arr].arrays]

    @property
    def peripheries(self) -> list[Periphery]:
        """Every tile's periphery, in the order of :attr:`arrays`."""
        return [p for arr in self.array_names for row in self.grids[arr].tiles for p in row]

    def state_dict(self) -> dict[str, Any]:
        """Digital state (buffers, counters); arrays and peripheries are saved by the
        layer."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    # ---- helpers -----------------------------------------------------------------------
    def dw_min(self, arr: str) -> float:
        """Pulse granularity of array ``arr`` (weight units): the first tile's
        ``info().dw_min`` (every tile of a grid opens the same spec), times the grid's
        ``scale``."""
        grid = self.grids[arr]
        return float(grid.arrays[0].info().dw_min) * grid.scale

    def weight_range(self, arr: str) -> float | None:
        """Half the mean weight range ``(w_max - w_min)/2`` of array ``arr``'s devices
        (weight units, times the grid's ``scale``), None when the backend does not know
        it."""
        grid = self.grids[arr]
        info = grid.arrays[0].info()
        if info.w_min is None or info.w_max is None:
            return None
        return 0.5 * float(info.w_max - info.w_min) * grid.scale

    def decay(self, *arrays: str) -> None:
        """One decay step (``CrossPointArray.decay``: devices with ``lifetime``) on every
        array of the named grids: what an update cycle ends with, for grids moved through
        ``pulse`` (which has none) or not moved in a step."""
        for arr in arrays:
            for a in self.grids[arr].arrays:
                a.decay()

    def _check_operations(self) -> None:
        for arr, ops in self.requires.items():
            for a in self.grids[arr].arrays:
                caps = a.capabilities
                for op in ops:
                    if not any(getattr(caps, c) for c in _PROVIDERS[op]):
                        raise ConfigError(
                            f"algorithm {self.name} needs {op} on array {arr}, which backend "
                            f"{self.grids[arr].plan.backend!r} can neither do nor emulate "
                            f"(it does: {', '.join(caps.native()) or 'nothing'}); place "
                            f"{arr} elsewhere with --layer NAME.{arr}=SPEC",
                            key="algorithm")
