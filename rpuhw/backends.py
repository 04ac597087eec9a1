"""Array specs -> arrays: ``open_array("sim:device.yaml", rows, cols)``.

Built-in specs: ``ideal``, ``sim``, ``sim:PATH.yaml``, ``sim:MODEL`` (a
registered device model with its defaults). Hardware backends live outside
the core and are imported lazily when their prefix is used: ``bench:PATH.yaml``
(``rpuhw.drivers``), ``arc2:PATH.yaml``. Third parties register a prefix with
:func:`register_backend` or a ``rpuhw.backends`` entry point.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from rpuhw.array import CrossPointArray
from rpuhw.errors import ConfigError

Factory = Callable[[str, int, int, "int | None"], CrossPointArray]
"""``factory(argument, rows, cols, seed) -> array``; argument is the text after ``prefix:``."""

_FACTORIES: dict[str, Factory | str] = {
    "ideal": "rpuhw.backends:_open_ideal",
    "sim": "rpuhw.backends:_open_sim",
    "bench": "rpuhw.drivers.bench:open_bench",
    "arc2": "rpuhw.drivers.arc2:open_arc2",
}
_USAGE = {
    "ideal": "ideal",
    "sim": "sim, sim:PATH.yaml, sim:MODEL",
    "bench": "bench:PATH.yaml",
    "arc2": "arc2:PATH.yaml",
}


def register_backend(prefix: str, factory: Factory | str, usage: str | None = None) -> None:
    """Make ``prefix:ARG`` specs open with ``factory`` (a callable or ``"module:function"``)."""
    _FACTORIES[prefix] = factory
    _USAGE[prefix] = usage or f"{prefix}:..."


def known_specs() -> list[str]:
    """Spec forms that :func:`open_array` understands."""
    _load_entry_points()
    return [_USAGE[k] for k in _FACTORIES]


def _load_entry_points() -> None:
    try:
        eps = metadata.entry_points(group="rpuhw.backends")
    except Exception:  # pragma: no cover - broken metadata
        return
    for ep in eps:
        _FACTORIES.setdefault(ep.name, ep.value)
        _USAGE.setdefault(ep.name, f"{ep.name}:...")


def _resolve(prefix: str, factory: Factory | str) -> Factory:
    if callable(factory):
        return factory
    module, _, func = factory.partition(":")
    try:
        return getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"backend {prefix!r} is not available in this installation ({exc})",
                          key="spec") from None


def open_array(spec: str, rows: int, cols: int, seed: int | None = None) -> CrossPointArray:
    """Open the array described by ``spec`` with ``rows x cols`` devices.

    Changing this one string moves a script between simulator and hardware.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"expected a spec string such as 'sim', got {spec!r}", key="spec")
    prefix, _, arg = spec.partition(":")
    _load_entry_points()
    if prefix not in _FACTORIES:
        raise ConfigError(f"unknown array spec {spec!r} (known: {'; '.join(known_specs())})",
                          key="spec")
    return _resolve(prefix, _FACTORIES[prefix])(arg, rows, cols, seed)


def _open_ideal(arg: str, rows: int, cols: int, seed: int | None) -> CrossPointArray:
    from rpuhw.ideal import IdealArray

    if arg:
        raise ConfigError(f"'ideal' takes no argument, got 'ideal:{arg}'", key="spec")
    return IdealArray(rows, cols, seed=seed)


def _open_sim(arg: str, rows: int, cols: int, seed: int | None) -> CrossPointArray:
    from rpuhw.device_spec import load_device
    from rpuhw.devices import get_model, model_names
    from rpuhw.sim.array import SimulatedArray

    if not arg:
        return SimulatedArray(rows, cols, seed=seed)
    if arg in model_names():
        return SimulatedArray(rows, cols, device=get_model(arg)(), seed=seed)
    if Path(arg).suffix.lower() not in (".yaml", ".yml") and not Path(arg).exists():
        raise ConfigError(f"'sim:{arg}' is neither a device YAML file nor a model "
                          f"(models: {', '.join(model_names())})", key="spec")
    return SimulatedArray(rows, cols, device=load_device(arg), seed=seed)
