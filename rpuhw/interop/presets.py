"""aihwkit's device presets as rpuhw devices: ``sim:preset:NAME``, no aihwkit needed.

The values are data (``rpuhw/devices/presets.yaml``, each entry with its source):
aihwkit 1.2's preset classes (``EcRamPresetDevice``, ...) as the fields they set on
their base class. A preset loads through the same mapping as any aihwkit config
(:func:`rpuhw.interop.aihwkit.import_tree`), so a preset that needs a key rpuhw cannot
express (``reference_std``, ``subtract_symmetry_point`` of the ReRamArray presets) is
refused with one line naming the key, never loaded as a different device; write noise,
decay and the reset values are simulated. :func:`preset_status` says which load.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from rpuhw.errors import ConfigError

PRESETS_FILE = Path(__file__).resolve().parents[1] / "devices" / "presets.yaml"
"""The preset data (aihwkit 1.2's values, with sources)."""

PREFIX = "preset:"
"""``sim:preset:NAME`` / ``rpuhw device preset:NAME``."""


@lru_cache(maxsize=1)
def preset_table() -> dict[str, dict[str, Any]]:
    """NAME -> ``{"aihwkit": class, "base": base class, "source": text, "values": {...}}``."""
    import yaml

    with open(PRESETS_FILE) as f:
        data = yaml.safe_load(f)
    return {name: dict(entry) for name, entry in data.items()}


def preset_names() -> list[str]:
    """The preset names, in the data file's order."""
    return list(preset_table())


def preset_tree(name: str) -> dict[str, Any]:
    """The aihwkit config tree of preset ``name`` (its base class with its values)."""
    table = preset_table()
    if name not in table:
        raise ConfigError(f"unknown preset {name!r} (presets: {', '.join(table)})",
                          key="preset")
    entry = table[name]
    return {"class": entry["base"], "kwargs": dict(entry["values"])}


def load_preset(name: str) -> Any:
    """The :class:`~rpuhw.device_spec.DeviceSpec` of preset ``name`` (rpuhw's default
    ``io:`` block; aihwkit's device presets carry no periphery). Raises
    :class:`~rpuhw.errors.ConfigError` naming the keys rpuhw cannot express."""
    from rpuhw.interop.aihwkit import import_tree

    return import_tree(preset_tree(name), source=f"{PREFIX}{name}").spec


def preset_status(name: str) -> str | None:
    """None when preset ``name`` loads exactly, else why not (one line)."""
    try:
        load_preset(name)
    except ConfigError as exc:
        return str(exc)
    return None


def is_preset(arg: str) -> bool:
    """Whether a device argument names a preset (``preset:NAME``)."""
    return isinstance(arg, str) and arg.startswith(PREFIX)
