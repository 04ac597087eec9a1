"""One registry style for everything looked up by name.

Device models, instrument drivers, fit models, networks, array backends and CLI
subcommands are each a :class:`Registry`: a name -> object table filled three ways,

* a decorator where the object is defined (``@MODELS.register`` uses the class's
  ``name`` attribute; ``@MODELS.register("lenet")`` names it explicitly),
* a lazy ``"module:attribute"`` string (:meth:`Registry.add`), imported on first use,
  for entries that live in a package the registering module must not import (the
  core names ``bench`` -> ``rpuhw.drivers.bench:open_bench`` without loading drivers),
* an entry-point group (``entry_points="rpuhw.backends"``) for third-party packages.

Unknown names raise :class:`~rpuhw.errors.ConfigError` naming the key and listing the
known names, so a typo in a YAML file or on the command line gets one clear line::

    MODELS = Registry("device model", key="model")

    @MODELS.register
    class SoftBounds(DeviceModel):
        name = "soft_bounds"

    MODELS.get("soft_bounds")      # -> SoftBounds
    MODELS.get("soft_bound")       # ConfigError: key 'model': unknown device model ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any, Generic, TypeVar, overload

from rpuhw.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table (see the module docstring).

    Args:
        kind: what the entries are, for messages ("device model", "instrument driver").
        key: the config key or argument that names an entry (``model``, ``driver``), put
            in the :class:`~rpuhw.errors.ConfigError` of an unknown name.
        entry_points: an entry-point group whose entries are added on first lookup.
        case_insensitive: names are matched in lower case (instrument drivers).
    """

    def __init__(self, kind: str, *, key: str | None = None, entry_points: str | None = None,
                 case_insensitive: bool = False) -> None:
        self.kind = kind
        self.key = key
        self.group = entry_points
        self.case_insensitive = case_insensitive
        self._entries: dict[str, T | str] = {}
        self._usage: dict[str, str] = {}
        self._loaded_entry_points = entry_points is None

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    def _norm(self, name: str) -> str:
        return name.lower() if self.case_insensitive else name

    # ---- filling ------------------------------------------------------------------------
    def add(self, name: str, obj: T | str, usage: str | None = None) -> None:
        """Register ``obj`` (or a lazy ``"module:attribute"`` string) under ``name``."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind}: a registered name must be a non-empty string, "
                            f"got {name!r}")
        self._entries[self._norm(name)] = obj
        if usage is not None:
            self._usage[self._norm(name)] = usage

    def remove(self, name: str) -> None:
        """Unregister ``name`` (a plugin unloading, a test cleaning up); unknown names are
        ignored."""
        self._entries.pop(self._norm(name), None)
        self._usage.pop(self._norm(name), None)

    @overload
    def register(self, obj: T) -> T: ...

    @overload
    def register(self, obj: str | None = None, *, usage: str | None = None
                 ) -> Callable[[T], T]: ...

    def register(self, obj=None, *, usage=None):
        """Decorator: ``@reg.register`` (name from the object's ``name`` attribute) or
        ``@reg.register("name")``."""
        if obj is None or isinstance(obj, str):
            explicit = obj

            def deco(target: T) -> T:
                self.add(explicit or _name_of(target, self.kind), target, usage)
                return target

            return deco
        self.add(_name_of(obj, self.kind), obj, usage)
        return obj

    # ---- lookup ---------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        try:
            eps = metadata.entry_points(group=self.group)
        except Exception:  # pragma: no cover - broken metadata of another package
            return
        for ep in eps:
            self._entries.setdefault(self._norm(ep.name), ep.value)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        self._load_entry_points()
        return sorted(self._entries)

    def usage(self, name: str, default: str | None = None) -> str:
        """How an entry is written where it is used (registered with it; else ``default``,
        else the name)."""
        return self._usage.get(self._norm(name), default or name)

    def __contains__(self, name: object) -> bool:
        self._load_entry_points()
        return isinstance(name, str) and self._norm(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def unknown(self, name: Any) -> ConfigError:
        """The error for a name that is not registered (lists the known names)."""
        return ConfigError(f"unknown {self.kind} {name!r} (known: {', '.join(self.names())})",
                           key=self.key)

    def get(self, name: str) -> T:
        """The entry registered as ``name`` (lazy strings are imported now).

        Raises :class:`~rpuhw.errors.ConfigError` listing the known names.
        """
        if name not in self:
            raise self.unknown(name)
        key = self._norm(name)
        entry = self._entries[key]
        if isinstance(entry, str):
            entry = self._entries[key] = _resolve(entry, self.kind, name, self.key)
        return entry

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs, sorted by name (imports every lazy entry)."""
        return [(n, self.get(n)) for n in self.names()]


def _name_of(obj: Any, kind: str) -> str:
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{kind} {obj!r} has no 'name' attribute: register it with "
                        "@registry.register('name')")
    return name


def _resolve(path: str, kind: str, name: str, key: str | None) -> Any:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{kind} {name!r} is not available in this installation ({exc})",
                          key=key) from None
    return obj
