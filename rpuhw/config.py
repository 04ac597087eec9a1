"""Typed dataclass configs loaded from YAML with one clear error per problem.

A config is a plain ``@dataclass`` whose fields carry their own docstrings.
:func:`from_mapping` builds one from a YAML mapping, refusing unknown keys and
wrong types with a :class:`~rpuhw.errors.ConfigError` that names the source file
and the key; the dataclass's ``validate()`` (if any) then checks value ranges.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rpuhw.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; errors name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError("file not found", source=str(path))
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(f"{where}not valid YAML ({getattr(exc, 'problem', exc)})",
                          source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("top level must be a mapping of keys to values", source=str(path))
    return data


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, source, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"expected {' or '.join(_type_name(a) for a in args)}, "
                          f"got {value!r}", source=source, key=key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"expected a list, got {value!r}", source=source, key=key)
        inner = args[0] if args else Any
        return [_coerce(v, inner, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML (YAML 1.1) reads 1e-5 without a dot as a string: accept numerals
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"expected a number, got {value!r}", source=source, key=key)
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"must be finite, got {value!r}", source=source, key=key)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected an integer, got {value!r}", source=source, key=key)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", source=source, key=key)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {value!r}", source=source, key=key)
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"expected a mapping, got {value!r}", source=source, key=key)
        return from_mapping(tp, value, source=source, prefix=f"{key}.")
    return value


def from_mapping(cls: type[T], data: dict[str, Any], *, source: str = "<config>",
                 prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types are refused.

    Args:
        cls: the dataclass type.
        data: mapping of field name to value (from YAML).
        source: what to name in error messages (usually the file path).
        prefix: dotted key prefix for nested blocks (e.g. ``"io."``).
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(f"unknown key (known keys: {known})", source=source,
                              key=f"{prefix}{key}")
        kwargs[key] = _coerce(value, hints[key], source, f"{prefix}{key}")
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as exc:
            if exc.source is None:
                key = f"{prefix}{exc.key}" if exc.key else None
                raise ConfigError(exc.detail, source=source, key=key) from None
            raise
    return obj


def to_mapping(obj: Any) -> dict[str, Any]:
    """Inverse of :func:`from_mapping`: a plain dict suitable for YAML."""
    return dataclasses.asdict(obj)


def require(condition: bool, key: str, message: str) -> None:
    """Raise ``ConfigError(message, key=key)`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message, key=key)
