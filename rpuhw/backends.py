"""Array specs -> arrays: ``open_array("sim:device.yaml", rows, cols)``.

Built-in specs: ``ideal``, ``sim``, ``sim:PATH.yaml``, ``sim:MODEL`` (a
registered device model with its defaults), ``sim:preset:NAME`` (one of aihwkit's device
presets, :mod:`rpuhw.interop.presets`). Hardware backends live outside
the core and are imported lazily when their prefix is used: ``bench:PATH.yaml``
or ``bench:PATH.yaml#REGION`` (a region of the bench YAML: ``rpuhw.drivers``),
``arc2:PATH.yaml``. ``pair:SPEC`` holds each weight on two one-directional devices of
``SPEC`` with refresh (:mod:`rpuhw.pair`; PCM: ``pair:sim:preset:PCM``). Third parties
register a prefix with :func:`register_backend` or a ``rpuhw.backends`` entry point
(:data:`BACKENDS`, a :class:`~rpuhw.registry.Registry`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from rpuhw.array import CrossPointArray
from rpuhw.errors import ConfigError
from rpuhw.registry import Registry

Factory = Callable[[str, int, int, "int | None"], CrossPointArray]
"""``factory(argument, rows, cols, seed) -> array``; argument is the text after ``prefix:``.
A factory that places arrays on physical devices (hardware) also takes the keyword
``offset=(row, col)``: the array's position inside the layer it is a tile of (see
:func:`open_array`)."""

BACKENDS: Registry[Factory] = Registry("array backend", key="spec",
                                       entry_points="rpuhw.backends")
"""Spec prefix -> factory. Hardware backends are lazy strings: naming them imports nothing."""
BACKENDS.add("ideal", "rpuhw.backends:_open_ideal", usage="ideal")
BACKENDS.add("sim", "rpuhw.backends:_open_sim",
             usage="sim, sim:PATH.yaml, sim:MODEL, sim:preset:NAME")
BACKENDS.add("pair", "rpuhw.pair:open_pair", usage="pair:SPEC")
BACKENDS.add("bench", "rpuhw.drivers.bench:open_bench", usage="bench:PATH.yaml[#REGION]")
BACKENDS.add("arc2", "rpuhw.drivers.arc2:open_arc2", usage="arc2:PATH.yaml")


def register_backend(prefix: str, factory: Factory | str, usage: str | None = None) -> None:
    """Make ``prefix:ARG`` specs open with ``factory`` (a callable or ``"module:function"``)."""
    BACKENDS.add(prefix, factory, usage or f"{prefix}:...")


def known_specs() -> list[str]:
    """Spec forms that :func:`open_array` understands."""
    return [BACKENDS.usage(name, default=f"{name}:...") for name in BACKENDS.names()]


def open_array(spec: str, rows: int, cols: int, seed: int | None = None,
               offset: tuple[int, int] = (0, 0)) -> CrossPointArray:
    """Open the array described by ``spec`` with ``rows x cols`` devices.

    Changing this one string moves a script between simulator and hardware.
    ``offset``: where this array sits in a layer's (physical) weight matrix when the
    layer is split into tiles (row, column of its top-left device). Hardware backends
    place it there, at that offset from the spec's origin (a bench region's corner), so
    the tiles of one layer take disjoint blocks of one chip; simulators ignore it.
    """
    if not isinstance(spec, str) or not spec:
        raise ConfigError(f"expected a spec string such as 'sim', got {spec!r}", key="spec")
    prefix, _, arg = spec.partition(":")
    if prefix not in BACKENDS:
        raise ConfigError(f"unknown array spec {spec!r} (known: {'; '.join(known_specs())})",
                          key="spec")
    factory = BACKENDS.get(prefix)
    if tuple(offset) != (0, 0) and _places(factory):
        return factory(arg, rows, cols, seed, offset=tuple(offset))
    return factory(arg, rows, cols, seed)


def _places(factory: Factory) -> bool:
    """Whether ``factory`` takes the ``offset`` keyword (places arrays on devices)."""
    import inspect

    try:
        return "offset" in inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


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
    if arg.startswith("preset:"):
        from rpuhw.interop.presets import load_preset

        return SimulatedArray(rows, cols, device=load_preset(arg[len("preset:"):]), seed=seed)
    if Path(arg).suffix.lower() not in (".yaml", ".yml") and not Path(arg).exists():
        raise ConfigError(f"'sim:{arg}' is neither a device YAML file nor a model "
                          f"(models: {', '.join(model_names())}; or sim:preset:NAME)", key="spec")
    return SimulatedArray(rows, cols, device=load_device(arg), seed=seed)
