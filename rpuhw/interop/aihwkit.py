"""rpuhw devices <-> IBM aihwkit 1.2 configs.

rpuhw's device keys carry aihwkit's names and meanings (docs/simulator.md), so a device
maps key to key:

=================  =====================================================================
rpuhw model        aihwkit class
=================  =====================================================================
``constant_step``  ``ConstantStepDevice``
``linear_step``    ``LinearStepDevice``
``soft_bounds``    ``SoftBoundsDevice`` (also ``SoftBoundsReferenceDevice`` without a
                   reference; with ``mult_noise=False`` both become a ``linear_step``
                   with ``gamma_up = gamma_down = 1``, no spread, own bounds)
``exp_step``       ``ExpStepDevice``
``pow_step``       ``PowStepDevice``
``piecewise``      ``PiecewiseStepDevice``
=================  =====================================================================

The device YAML's ``io:`` block maps to the ``forward`` and ``backward``
``IOParameters`` of a ``SingleRPUConfig`` (``out_noise``, ``out_bound``, ``inp_bound``,
``inp_res``, ``out_res``; rpuhw's ``null`` resolution is aihwkit's ``-1``); the
periphery's management and pulse-train settings (``rpuhw train --management``,
``--bl``) map to ``noise_management``, ``bound_management`` and ``UpdateParameters``.
rpuhw-only values without an aihwkit counterpart and without effect there
(``io.read_noise``: direct reads; the ``conductance`` map) travel along: as the
attribute ``rpuhw_only`` of the aihwkit object, as ``# rpuhw: KEY = VALUE`` lines in
printed Python.

Nothing is dropped silently. From aihwkit: a compound device (``TransferCompound``,
``VectorUnitCell``, ...) is refused naming the compound; a key rpuhw cannot express
with a value other than aihwkit's default (``diffusion``, ``corrupt_devices_prob``,
``reference_std``, ...) is refused naming every such key (``write_noise_std``,
``lifetime`` and ``reset`` are simulated, docs/simulator.md); settings that
belong to a training run rather than to a device (management, BL, bias mapping) are
returned as :attr:`Imported.training` and :attr:`Imported.notes`. To aihwkit: an rpuhw
key without counterpart that changes the device is refused.

Three forms of an aihwkit config are read: an object (:func:`from_aihwkit`, when
aihwkit is importable here), Python source as ``rpuhw device export`` or aihwkit's own
``print(config)`` writes it (:func:`tree_from_python`: parsed with :mod:`ast`, never
run), and a pickle (read by the aihwkit interpreter, :func:`aihwkit_python`).
Internally a config is a *tree* (:mod:`rpuhw.interop._aihwkit_side`).
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rpuhw.devices import base as _base
from rpuhw.errors import ConfigError
from rpuhw.interop._aihwkit_defaults import AIHWKIT_VERSION, DEFAULTS

__all__ = ["AIHWKIT_VERSION", "Imported", "NotCarriedOver", "TrainPeriphery", "aihwkit_python",
           "from_aihwkit", "import_tree", "run_aihwkit", "to_aihwkit", "to_python",
           "tree_from_python", "tree_of_spec"]

_NEVER = object()

SIDE_SCRIPT = Path(__file__).with_name("_aihwkit_side.py")
"""The script the aihwkit interpreter runs (standard library + aihwkit only)."""

AIHWKIT_PYTHON_ENV = "RPUHW_AIHWKIT_PYTHON"
"""Environment variable naming a Python interpreter that has aihwkit 1.2."""

MODEL_CLASS = {
    "constant_step": "ConstantStepDevice",
    "linear_step": "LinearStepDevice",
    "soft_bounds": "SoftBoundsDevice",
    "exp_step": "ExpStepDevice",
    "pow_step": "PowStepDevice",
    "piecewise": "PiecewiseStepDevice",
}
"""rpuhw model -> aihwkit device class."""

CLASS_MODEL = {cls: model for model, cls in MODEL_CLASS.items()}
CLASS_MODEL["SoftBoundsReferenceDevice"] = "soft_bounds"

SOFT_BOUNDS_AS_LINEAR_STEP = {"gamma_up": 1.0, "gamma_down": 1.0, "gamma_up_dtod": 0.0,
                              "gamma_down_dtod": 0.0, "allow_increasing": False,
                              "mean_bound_reference": False}
"""aihwkit's SoftBoundsDevice is its LinearStep with these values (additive noise case)."""

COMPOUNDS = {
    "TransferCompound": "Tiki-Taka v1: a fast and a slow device per weight with transfers",
    "BufferedTransferCompound": "TTv2: Tiki-Taka with a digital transfer buffer",
    "ChoppedTransferCompound": "TTv3 / c-TTv2: chopped Tiki-Taka",
    "DynamicTransferCompound": "TTv4 / AGAD",
    "MixedPrecisionCompound": "mixed precision: a digital rank-update accumulator",
    "VectorUnitCell": "several devices per weight, summed",
    "ReferenceUnitCell": "a device and a reference device per weight",
    "OneSidedUnitCell": "a G+/G- pair of one-directional devices with refresh",
    "DifferenceUnitCell": "a G+/G- pair of devices",
    "DigitalRankUpdateCell": "a digital rank-update cell",
}
"""aihwkit compound devices (several devices or digital state per weight)."""

NOT_PULSED = {
    "FloatingPointRPUConfig": "a floating-point tile",
    "InferenceRPUConfig": "an inference tile (noise and drift models, no pulsed device)",
    "TorchInferenceRPUConfig": "an inference tile (noise and drift models, no pulsed device)",
    "TorchInferenceRPUConfigIRDropT": "an inference tile",
    "QuantizedTorchInferenceRPUConfig": "an inference tile",
    "IdealDevice": "an ideal floating-point update (rpuhw: the 'ideal' backend)",
    "FloatingPointDevice": "a floating-point device (rpuhw: the 'float' backend)",
}

NOTE_ONLY_DEVICE_KEYS = {
    "construction_seed": "rpuhw draws the devices from its own seed (--seed)",
    "count_pulses": "a pulse counter, no effect on the device",
}
"""aihwkit device keys without effect on the device statistics: a note, not an error."""

WHEN_ZERO = {"corrupt_devices_range": "corrupt_devices_prob", "lifetime_dtod": "lifetime",
             "diffusion_dtod": "diffusion", "apply_write_noise_on_set": "write_noise_std",
             "ir_drop_g_ratio": "ir_drop", "v_offset_w_min": "v_offset_std"}
"""key -> the key without which it has no effect (aihwkit ignores it while that is 0)."""

IO_TRAINING_KEYS = ("noise_management", "bound_management", "max_bm_factor", "max_bm_res",
                    "bm_test_negative_bound", "nm_thres")
"""IOParameters keys of the periphery's management (training settings, not the device)."""

RPUHW_ONLY_NO_EFFECT = {
    "io.read_noise": "noise of a direct weight read; aihwkit's get_weights reads exactly",
    "conductance.g_min": "the weight <-> conductance map",
    "conductance.g_max": "the weight <-> conductance map",
}
"""rpuhw-only values carried along (no counterpart in aihwkit, no effect there)."""

MANAGEMENT_LEVELS = {
    "none": (False, False, False),
    "nm": (True, False, False),
    "nm+bm": (True, True, False),
    "nm+bm+um": (True, True, True),
}
"""``rpuhw train --management`` levels (noise, bound, update management); the same
table as :data:`rpuhw.schedule.MANAGEMENT`, kept here so that ``rpuhw device`` loads
no torch (tests/test_interop.py holds them equal)."""


@dataclass
class TrainPeriphery:
    """The periphery settings of ``rpuhw train`` an aihwkit config carries: its defaults are
    :class:`~rpuhw.periphery.PeripheryConfig`'s (tests/test_interop.py holds them equal);
    a ``PeripheryConfig`` may be passed wherever this is (kept apart so that ``rpuhw
    device export`` loads no torch)."""

    noise_management: bool = True
    """NM on both passes (aihwkit ``NoiseManagementType.ABS_MAX``, else ``NONE``)."""
    bound_management: bool = True
    """BM on the forward pass (aihwkit ``BoundManagementType.ITERATIVE``, else ``NONE``)."""
    bm_max_halvings: int = 10
    """Most BM halvings (aihwkit ``max_bm_factor = 2 ** bm_max_halvings``)."""
    bm_backward: bool = False
    """BM on the backward pass (aihwkit has none: True is refused)."""
    update_management: bool = True
    """UM (aihwkit ``update_management``)."""
    bl: int = 10
    """Pulse-train length (aihwkit ``desired_bl`` with ``fixed_bl`` and no BL management)."""

    @classmethod
    def level(cls, management: str, bl: int = 10) -> TrainPeriphery:
        """The settings of ``rpuhw train --management LEVEL --bl BL``."""
        if management not in MANAGEMENT_LEVELS:
            raise ConfigError(f"must be one of {', '.join(MANAGEMENT_LEVELS)}; got "
                              f"{management!r}", key="management")
        if not isinstance(bl, int) or bl < 1:
            raise ConfigError(f"must be an integer >= 1, got {bl!r}", key="bl")
        nm, bm, um = MANAGEMENT_LEVELS[management]
        return cls(noise_management=nm, bound_management=bm, update_management=um, bl=bl)


class NotCarriedOver(UserWarning):
    """A setting of an aihwkit config that an rpuhw device does not hold (training
    settings, no-effect keys); :func:`from_aihwkit` warns with one per setting."""


@dataclass
class Imported:
    """What an aihwkit config gives rpuhw."""

    spec: Any
    """The :class:`~rpuhw.device_spec.DeviceSpec`."""
    training: dict[str, Any] = field(default_factory=dict)
    """``rpuhw train`` settings from an RPU config: ``management``, ``bl``."""
    notes: list[str] = field(default_factory=list)
    """One line per setting not carried into the device YAML (training settings rpuhw
    cannot express, keys without effect)."""


# ---- trees ----------------------------------------------------------------------------
def _is_node(v: Any) -> bool:
    return isinstance(v, dict) and "class" in v


def _preset_values(cls: str) -> tuple[str, dict[str, Any]] | None:
    """(base class, values) of an aihwkit preset device class, e.g. EcRamPresetDevice."""
    if not cls.endswith("PresetDevice"):
        return None
    from rpuhw.interop.presets import preset_table

    entry = preset_table().get(cls[: -len("PresetDevice")])
    if entry is None:
        return None
    return entry["base"], dict(entry["values"])


def _class_defaults(cls: str, path: str, source: str) -> dict[str, Any]:
    """Every field of aihwkit class ``cls`` with its default (a full tree per value)."""
    if _is_compound(cls):
        raise _compound_error(cls, path, source)
    if cls in DEFAULTS:
        return dict(DEFAULTS[cls]["kwargs"])
    preset = _preset_values(cls)
    if preset is not None:
        base, values = preset
        out = dict(DEFAULTS[base]["kwargs"])
        out.update(values)
        return out
    raise ConfigError(f"aihwkit class {cls} is not one rpuhw maps (aihwkit "
                      f"{AIHWKIT_VERSION}; devices: {', '.join(sorted(CLASS_MODEL))})",
                      source=source, key=path or None)


def _resolve(node: dict[str, Any], path: str, source: str) -> dict[str, Any]:
    """Every field of ``node``: its given values over its class's defaults (nested nodes
    resolved the same way)."""
    cls = node["class"]
    out = _class_defaults(cls, path, source)
    for key, value in node.get("kwargs", {}).items():
        where = f"{path}.{key}" if path else key
        if key not in out:
            raise ConfigError(f"aihwkit {AIHWKIT_VERSION}'s {cls} has no field {key!r}",
                              source=source, key=where)
        out[key] = _resolve_value(value, where, source)
    return out


def _resolve_value(value: Any, path: str, source: str) -> Any:
    if _is_node(value):
        return {"class": value["class"], "kwargs": _resolve(value, path, source)}
    if isinstance(value, (list, tuple)):
        return [_resolve_value(v, path, source) for v in value]
    return value


def _base_class(cls: str) -> str:
    preset = _preset_values(cls)
    return preset[0] if preset else cls


def _fmt(value: Any) -> str:
    if isinstance(value, dict) and "enum" in value:
        return value["enum"]
    if _is_node(value):
        return f"{value['class']}(...)"
    return repr(value)


def _is_default(key: str, value: Any, defaults: dict[str, Any], resolved: dict[str, Any]
                ) -> bool:
    """Whether ``value`` of ``key`` behaves as aihwkit's default (equal to it, or without
    effect because the key it depends on is 0)."""
    if key in defaults and _same(value, defaults[key]):
        return True
    dep = WHEN_ZERO.get(key)
    if dep is not None and dep in resolved and not resolved[dep]:
        return True
    if key == "reverse_offset" and not resolved.get("reverse_up") \
            and not resolved.get("reverse_down"):
        return True
    return False


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (isinstance(a, (int, float)) and isinstance(b, (int, float))
                and not isinstance(a, bool) and not isinstance(b, bool) and float(a) == float(b))
    return a == b


# ---- aihwkit tree -> rpuhw ------------------------------------------------------------
def _compound_error(cls: str, path: str, source: str) -> ConfigError:
    what = COMPOUNDS.get(cls, "a compound of several devices per weight")
    return ConfigError(f"aihwkit compound device {cls} ({what}) cannot be expressed in rpuhw: "
                       "an rpuhw device is one pulsed device per cross-point (models "
                       f"{', '.join(MODEL_CLASS)})", source=source, key=path or None)


def _is_compound(cls: str) -> bool:
    return cls in COMPOUNDS or cls.endswith(("Compound", "UnitCell", "Cell"))


def _device_from_node(node: dict[str, Any], path: str, source: str,
                      notes: list[str]) -> dict[str, Any]:
    """The rpuhw mapping (``model`` + keys) of an aihwkit device node."""
    from rpuhw.devices import get_model

    cls = node["class"]
    if _is_compound(cls):
        raise _compound_error(cls, path, source)
    if cls in NOT_PULSED:
        raise ConfigError(f"aihwkit {cls} is {NOT_PULSED[cls]}, not a pulsed device model",
                          source=source, key=path or None)
    base = _base_class(cls)
    if base not in CLASS_MODEL:
        raise ConfigError(f"aihwkit device {cls} has no rpuhw model (rpuhw maps "
                          f"{', '.join(sorted(CLASS_MODEL))})", source=source,
                          key=path or None)
    vals = _resolve(node, path, source)
    defaults = dict(DEFAULTS[base]["kwargs"])
    model = CLASS_MODEL[base]
    fixed: dict[str, Any] = {}
    consumed: set[str] = set()
    if base in ("SoftBoundsDevice", "SoftBoundsReferenceDevice"):
        sb_fields = {f.name for f in dataclasses.fields(get_model("soft_bounds").Params)}
        if "mult_noise" not in sb_fields:
            consumed.add("mult_noise")
            if not vals["mult_noise"]:  # additive noise: aihwkit's LinearStep form
                model, fixed = "linear_step", dict(SOFT_BOUNDS_AS_LINEAR_STEP)
                fixed["mult_noise"] = False
    model_cls = get_model(model)
    rp_fields = [f.name for f in dataclasses.fields(model_cls.Params) if f.init]
    out: dict[str, Any] = {"model": model}
    for key in rp_fields:
        if key in fixed:
            out[key] = fixed[key]
        elif key in vals:
            out[key] = vals[key]
    # aihwkit keys the rpuhw model does not simulate: the model's own table (key -> the
    # value at which it has no effect, or ANY; rpuhw.devices.base.AIHWKIT_UNSUPPORTED), else
    # aihwkit's default
    table = getattr(model_cls, "unsupported", {}) or {}
    any_value = getattr(_base, "ANY", _NEVER)
    bad = []
    for key, value in vals.items():
        if key in rp_fields or key in consumed:
            continue
        rule = table.get(key)
        if rule is not None and not _is_node(value):
            neutral, why = rule
            if neutral is any_value or (neutral is not None and _same(value, neutral)):
                continue
            if neutral is not None:
                bad.append((key, value, neutral, why))
                continue
        if key in NOTE_ONLY_DEVICE_KEYS and rule is None:
            if not _same(value, defaults.get(key)):
                notes.append(f"{path + '.' if path else ''}{key}={_fmt(value)} not carried "
                             f"over: {NOTE_ONLY_DEVICE_KEYS[key]}")
            continue
        if not _is_default(key, value, defaults, vals):
            bad.append((key, value, defaults.get(key), rule[1] if rule else None))
    if bad:
        raise _unsupported(cls, model, bad, path, source)
    return out


def _unsupported(cls: str, model: str, bad: list[tuple[str, Any, Any, str | None]],
                 path: str, source: str) -> ConfigError:
    """One line naming every key of ``bad`` (key, value, the value rpuhw needs, why)."""
    keys = [f"{path}.{k}" if path else k for k, *_ in bad]
    values = "; ".join(f"{k}={_fmt(v)}" + (f" ({why})" if why else "")
                       + f", needs {_fmt(d)}" for k, v, d, why in bad)
    return ConfigError(f"{cls}: rpuhw's {model} cannot express {values}",
                       source=source, key=", ".join(keys))


def _io_from_nodes(fwd: dict[str, Any], bwd: dict[str, Any], source: str,
                   notes: list[str]) -> dict[str, Any]:
    """The rpuhw ``io:`` mapping of resolved forward/backward IOParameters."""
    from rpuhw.periphery.io import IOConfig

    io_fields = {f.name for f in dataclasses.fields(IOConfig)}
    defaults = DEFAULTS["IOParameters"]["kwargs"]
    shared = [k for k in defaults if k in io_fields]
    out: dict[str, Any] = {}
    bad = []
    for key in shared:
        v = fwd[key]
        if not _same(bwd[key], v):
            raise ConfigError(f"backward {_fmt(bwd[key])} differs from forward {_fmt(v)}: "
                              "rpuhw's io: block applies to both passes", source=source,
                              key=f"backward.{key}")
        if key in ("inp_res", "out_res"):
            v = None if v <= 0 else (1.0 / v if v > 1 else float(v))
        elif key in ("out_bound", "inp_bound") and v <= 0:
            raise ConfigError(f"{_fmt(v)} (aihwkit: no bound) cannot be expressed: rpuhw needs "
                              "a finite bound", source=source, key=f"forward.{key}")
        out[key] = v
    for name, node in (("forward", fwd), ("backward", bwd)):
        for key, value in node.items():
            if key in io_fields or key in IO_TRAINING_KEYS:
                continue
            if key == "w_noise_type" and not node.get("w_noise"):
                continue
            if key == "w_noise" and _same(node.get("w_noise_type"), defaults["w_noise_type"]):
                continue
            if not _is_default(key, value, defaults, node):
                bad.append((f"{name}.{key}", value, defaults.get(key)))
    if bad:
        values = ", ".join(f"{k}={_fmt(v)} (aihwkit's default {_fmt(d)})" for k, v, d in bad)
        raise ConfigError(f"IOParameters: rpuhw's io: block cannot express {values}; set them "
                          "to aihwkit's defaults to import the rest", source=source,
                          key=", ".join(k for k, _, _ in bad))
    return out


def _training_from_nodes(fwd: dict[str, Any], bwd: dict[str, Any], upd: dict[str, Any],
                         rest: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """``rpuhw train`` settings of an RPU config; what they cannot hold goes to notes."""
    lost: list[str] = []
    nm_f, nm_b = fwd["noise_management"], bwd["noise_management"]
    known_nm = ("NoiseManagementType.ABS_MAX", "NoiseManagementType.NONE")
    nm = nm_f.get("enum") == "NoiseManagementType.ABS_MAX"
    if nm_f.get("enum") not in known_nm:
        lost.append(f"forward.noise_management={_fmt(nm_f)} (rpuhw's NM divides by the "
                    "absolute max)")
    if not _same(nm_b, nm_f):
        lost.append(f"backward.noise_management={_fmt(nm_b)} (rpuhw: one NM switch for both "
                    "passes)")
    bm_f = fwd["bound_management"].get("enum")
    bm = bm_f == "BoundManagementType.ITERATIVE"
    if bm_f not in ("BoundManagementType.ITERATIVE", "BoundManagementType.NONE"):
        lost.append(f"forward.bound_management={bm_f} (rpuhw's BM is iterative halving)")
    um = bool(upd["update_management"])
    level = next((name for name, t in MANAGEMENT_LEVELS.items() if t == (nm, bm, um)), None)
    if level is None:
        level = "nm+bm+um" if um else ("nm+bm" if bm else "nm")
        lost.append(f"the combination NM {nm}, BM {bm}, UM {um} (rpuhw's levels: "
                    f"{', '.join(MANAGEMENT_LEVELS)}; taken as {level})")
    udef = DEFAULTS["UpdateParameters"]["kwargs"]
    if upd["update_bl_management"]:
        lost.append("update.update_bl_management=True (rpuhw: BL fixed at --bl)")
    if not upd["fixed_bl"]:
        lost.append("update.fixed_bl=False (rpuhw: BL fixed at --bl)")
    for key in ("pulse_type", "res", "x_res_implicit", "d_res_implicit", "d_sparsity",
                "sto_round", "um_grad_scale"):
        if not _same(upd[key], udef[key]):
            lost.append(f"update.{key}={_fmt(upd[key])}")
    iodef = DEFAULTS["IOParameters"]["kwargs"]
    if bm:
        h = _bm_halvings(fwd["max_bm_factor"])
        if fwd["inp_res"] > 0 and fwd["max_bm_res"] > 0:
            h = min(h, _bm_halvings(fwd["max_bm_res"] / _inp_step(fwd["inp_res"],
                                                                    fwd["inp_bound"])))
        if h != 10:
            lost.append(f"forward.max_bm_factor={_fmt(fwd['max_bm_factor'])}, max_bm_res="
                        f"{_fmt(fwd['max_bm_res'])}: at most {h} BM halvings (rpuhw train: "
                        "10)")
    for name, node in (("forward", fwd), ("backward", bwd)):
        for key in ("bm_test_negative_bound", "nm_thres"):
            if not _same(node[key], iodef[key]):
                lost.append(f"{name}.{key}={_fmt(node[key])}")
    for key, (value, default, why) in rest.items():
        if not _same(value, default):
            lost.append(f"{key}={_fmt(value)}" + (f" ({why})" if why else ""))
    training = {"management": level, "bl": int(upd["desired_bl"])}
    if lost:
        notes.append("training settings rpuhw train cannot take, not carried over: "
                     + "; ".join(lost))
    return training


def _bm_halvings(limit: float) -> int:
    """Halvings aihwkit's iterative BM makes before its reduction 2^k exceeds ``limit``."""
    k = 0
    while 2.0 ** k <= limit and k < 64:
        k += 1
    return k


def _inp_step(inp_res: float, inp_bound: float) -> float:
    """aihwkit's DAC step: ``inp_res`` (or 1/inp_res when > 1) times 2 inp_bound."""
    return (1.0 / inp_res if inp_res > 1 else inp_res) * 2.0 * inp_bound


def import_tree(tree: dict[str, Any], source: str = "<aihwkit config>") -> Imported:
    """An aihwkit config tree (a device or an RPU config) -> rpuhw device spec, training
    settings and notes. Raises :class:`~rpuhw.errors.ConfigError` (one line naming the
    key or the compound) for anything rpuhw cannot express."""
    from rpuhw.device_spec import spec_from_mapping

    if not _is_node(tree):
        raise ConfigError("not an aihwkit config (expected a device or an RPU config)",
                          source=source)
    cls = tree["class"]
    notes: list[str] = []
    training: dict[str, Any] = {}
    if cls.endswith("RPUConfig") or cls == "RPUConfig":
        if cls in NOT_PULSED:
            raise ConfigError(f"aihwkit {cls} is {NOT_PULSED[cls]}: no pulsed device to "
                              "import", source=source)
        if cls == "DigitalRankUpdateRPUConfig":
            raise _compound_error("MixedPrecisionCompound", "device", source)
        dev = tree.get("kwargs", {}).get("device")
        if cls == "UnitCellRPUConfig" and _is_node(dev):
            raise _compound_error(dev["class"], "device", source)
        if cls != "SingleRPUConfig":
            raise ConfigError(f"aihwkit {cls} is not an RPU config rpuhw maps (use "
                              "SingleRPUConfig)", source=source)
        full = _resolve(tree, "", source)
        mapping = _device_from_node(full["device"], "device", source, notes)
        fwd, bwd = full["forward"]["kwargs"], full["backward"]["kwargs"]
        mapping["io"] = _io_from_nodes(fwd, bwd, source, notes)
        sdef = DEFAULTS["SingleRPUConfig"]["kwargs"]
        mdef = sdef["mapping"]["kwargs"]
        mp = full["mapping"]["kwargs"]
        rest: dict[str, tuple[Any, Any, str | None]] = {
            "mapping.digital_bias": (mp["digital_bias"], False,
                                     "rpuhw's layers hold the bias as an array column"),
        }
        for key in mdef:
            if key in ("digital_bias", "max_input_size", "max_output_size"):
                continue
            rest[f"mapping.{key}"] = (mp[key], mdef[key], None)
        for key in ("runtime", "pre_post", "tile_class", "tile_array_class"):
            rest[key] = (full[key], sdef[key], None)
        training = _training_from_nodes(fwd, bwd, full["update"]["kwargs"], rest, notes)
    else:
        mapping = _device_from_node(tree, "", source, notes)
    extra = tree.get("rpuhw") or {}
    for key, value in extra.items():
        if key not in RPUHW_ONLY_NO_EFFECT:
            raise ConfigError(f"unknown rpuhw-only value (known: "
                              f"{', '.join(RPUHW_ONLY_NO_EFFECT)})", source=source, key=key)
        block, _, sub = key.partition(".")
        mapping.setdefault(block, {})[sub] = value
    spec = spec_from_mapping(mapping, source=source)
    return Imported(spec=spec, training=training, notes=notes)


# ---- rpuhw -> aihwkit tree ------------------------------------------------------------
def tree_of_spec(spec: Any, periphery: Any = None, device_only: bool = False
                 ) -> dict[str, Any]:
    """The aihwkit tree of an rpuhw :class:`~rpuhw.device_spec.DeviceSpec`: a
    ``SingleRPUConfig`` whose device, IO and update settings are the spec's and
    ``periphery``'s (:class:`TrainPeriphery` or a :class:`~rpuhw.periphery.PeripheryConfig`;
    default: rpuhw train's defaults, nm+bm+um with BL 10), or with ``device_only`` just the device.

    Every device key is written, not only those that differ from aihwkit's defaults.
    """
    from rpuhw.periphery.io import IOConfig

    mapping = spec.to_mapping()
    model = mapping.pop("model")
    io = mapping.pop("io", {}) or {}
    cond = mapping.pop("conductance", None)
    source = getattr(spec, "source", None)
    cls = MODEL_CLASS.get(model)
    if cls is None:
        raise ConfigError(f"rpuhw model {model} has no aihwkit counterpart (maps: "
                          f"{', '.join(MODEL_CLASS)})", source=source, key="model")
    adef = DEFAULTS[cls]["kwargs"]
    from rpuhw.devices import get_model

    rdef = {f.name: f.default for f in dataclasses.fields(get_model(model).Params)
            if f.default is not dataclasses.MISSING}
    kwargs: dict[str, Any] = {}
    for key, value in mapping.items():
        if key in adef:
            kwargs[key] = list(value) if isinstance(value, (list, tuple)) else value
        elif key in rdef and _same(value, rdef[key]):
            continue  # an rpuhw-only key at its default: the aihwkit behaviour
        else:
            raise ConfigError(f"rpuhw key without an aihwkit counterpart in {cls} (value "
                              f"{value!r}): the device would differ in aihwkit", source=source,
                              key=key)
    if model == "soft_bounds" and "mult_noise" not in kwargs:
        kwargs["mult_noise"] = True  # rpuhw's soft_bounds noise is multiplicative
    if model == "piecewise" and len(kwargs["piecewise_up"]) != len(kwargs["piecewise_down"]):
        raise ConfigError(f"aihwkit's PiecewiseStepDevice needs as many up as down nodes, got "
                          f"{len(kwargs['piecewise_up'])} and {len(kwargs['piecewise_down'])}",
                          source=source, key="piecewise_down")
    device = {"class": cls, "kwargs": kwargs}
    extra: dict[str, Any] = {}
    io_fields = [f.name for f in dataclasses.fields(IOConfig)]
    io_defaults = {f.name: f.default for f in dataclasses.fields(IOConfig)}
    iokw: dict[str, Any] = {}
    for key in io_fields:
        value = io.get(key, io_defaults[key])
        if key in DEFAULTS["IOParameters"]["kwargs"]:
            if key in ("inp_res", "out_res") and value is None:
                value = -1.0
            iokw[key] = value
        elif f"io.{key}" in RPUHW_ONLY_NO_EFFECT:
            if not _same(value, io_defaults[key]):
                extra[f"io.{key}"] = value
        elif not _same(value, io_defaults[key]):
            raise ConfigError(f"rpuhw io key without an aihwkit counterpart (value {value!r})",
                              source=source, key=f"io.{key}")
    if cond is not None:
        for key, value in cond.items():
            extra[f"conductance.{key}"] = value
    if device_only:
        changed = [k for k in io_fields if f"io.{k}" not in RPUHW_ONLY_NO_EFFECT
                   and not _same(io.get(k, io_defaults[k]), io_defaults[k])]
        if changed:
            raise ConfigError(f"the device's io: block ({', '.join(changed)}) belongs in the "
                              "SingleRPUConfig's IOParameters, not in an aihwkit device: "
                              "export the whole config", source=source, key="io")
        if extra:
            device["rpuhw"] = extra
        return device
    per = periphery if periphery is not None else TrainPeriphery()
    if per.bm_backward:
        raise ConfigError("aihwkit has no bound management on the backward pass",
                          key="bm_backward")
    for key in ("inp_res", "out_res", "out_bound"):
        if getattr(per, key, None) is not None:
            raise ConfigError("set it in the device's io: block for aihwkit (one DAC/ADC "
                              "per tile)", key=key)
    nm = {"enum": "NoiseManagementType.ABS_MAX" if per.noise_management
          else "NoiseManagementType.NONE"}
    bm = {"enum": "BoundManagementType.ITERATIVE" if per.bound_management
          else "BoundManagementType.NONE"}
    fwd = {**iokw, "noise_management": nm, "bound_management": bm}
    if per.bound_management:
        # aihwkit's BM stops once its input reduction 2^k exceeds max_bm_factor (default
        # 1000: 10 halvings, rpuhw's default) or, with a DAC, max_bm_res / inp_res; rpuhw
        # stops after bm_max_halvings only
        h = per.bm_max_halvings
        if h != _bm_halvings(DEFAULTS["IOParameters"]["kwargs"]["max_bm_factor"]):
            fwd["max_bm_factor"] = 2 ** h - 1
        if io.get("inp_res") is not None:
            fwd["max_bm_res"] = (2 ** h - 1) * _inp_step(iokw["inp_res"], iokw["inp_bound"])
    bwd = {**iokw, "noise_management": nm, "bound_management": {
        "enum": "BoundManagementType.NONE"}}
    tree = {"class": "SingleRPUConfig", "kwargs": {
        "device": device,
        "forward": {"class": "IOParameters", "kwargs": fwd},
        "backward": {"class": "IOParameters", "kwargs": bwd},
        "update": {"class": "UpdateParameters", "kwargs": {
            "desired_bl": per.bl, "fixed_bl": True, "update_bl_management": False,
            "update_management": per.update_management}},
        "mapping": {"class": "MappingParameter", "kwargs": {
            "digital_bias": False, "max_input_size": 0, "max_output_size": 0}},
    }}
    if extra:
        tree["rpuhw"] = extra
    return tree


# ---- printed Python -------------------------------------------------------------------
_IMPORTS = {
    "enums": "aihwkit.simulator.parameters.enums",
    "configs": "aihwkit.simulator.configs",
}


def to_python(spec: Any, periphery: Any = None, device_only: bool = False,
              header: str | None = None) -> str:
    """Python source that builds the aihwkit config of ``spec`` (see :func:`tree_of_spec`);
    rpuhw-only values follow as ``# rpuhw: KEY = VALUE`` comments, which
    :func:`tree_from_python` reads back."""
    tree = tree_of_spec(spec, periphery, device_only)
    classes: set[str] = set()
    enums: set[str] = set()

    def render(v: Any, indent: int) -> str:
        pad = "    " * (indent + 1)
        if _is_node(v):
            classes.add(v["class"])
            items = v.get("kwargs", {})
            if not items:
                return f"{v['class']}()"
            inner = ",\n".join(f"{pad}{k}={render(x, indent + 1)}" for k, x in items.items())
            return f"{v['class']}(\n{inner},\n{'    ' * indent})"
        if isinstance(v, dict) and "enum" in v:
            enums.add(v["enum"].partition(".")[0])
            return v["enum"]
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(render(x, indent) for x in v) + "]"
        if isinstance(v, float):
            return repr(v)
        return repr(v)

    name = "device" if device_only else "rpu_config"
    body = f"{name} = {render(tree, 0)}\n"
    lines = [f"# aihwkit {AIHWKIT_VERSION} configuration"
             + (f" of {header}" if header else ""),
             "# Written by `rpuhw device export --to aihwkit`: rpuhw's device keys are aihwkit's",
             "# names with aihwkit's meanings (docs/simulator.md, 'Moving devices between",
             "# aihwkit and rpuhw')."]
    if not device_only:
        lines.append("# IO and update settings: rpuhw train's periphery (noise/bound/update")
        lines.append("# management, fixed BL, the bias as an array column, one tile per layer).")
    lines.append(f"from {_IMPORTS['configs']} import {', '.join(sorted(classes))}")
    if enums:
        lines.append(f"from {_IMPORTS['enums']} import {', '.join(sorted(enums))}")
    extra = tree.get("rpuhw") or {}
    if extra:
        lines.append("")
        lines.append("# rpuhw-only values, no counterpart (and no effect) in aihwkit;")
        lines.append("# `rpuhw device import` reads them back:")
        for key, value in extra.items():
            lines.append(f"# rpuhw: {key} = {value!r}  ({RPUHW_ONLY_NO_EFFECT[key]})")
    return "\n".join(lines) + "\n\n" + body


class _SourceError(Exception):
    def __init__(self, node: ast.AST | None, message: str):
        self.line = getattr(node, "lineno", None)
        super().__init__(message)


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
           ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b,
           ast.Pow: lambda a, b: a ** b}


def _literal(node: ast.AST) -> Any:
    """A tree value of an expression: numbers (with + - * / ** between them), strings,
    True/False/None, lists, ``Enum.MEMBER``, ``Class(key=value, ...)``."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _literal(node.operand)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise _SourceError(node, "a sign before something that is not a number")
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a, b = _literal(node.left), _literal(node.right)
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in (a, b)):
            raise _SourceError(node, "arithmetic on something that is not a number")
        try:
            return _BINOPS[type(node.op)](a, b)
        except (ArithmeticError, OverflowError) as exc:
            raise _SourceError(node, f"arithmetic fails ({exc})") from None
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Attribute) and isinstance(node.value, (ast.Name, ast.Attribute)):
        owner = node.value  # Enum.MEMBER, also module.Enum.MEMBER
        return {"enum": f"{owner.id if isinstance(owner, ast.Name) else owner.attr}."
                        f"{node.attr}"}
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else (
            func.attr if isinstance(func, ast.Attribute) else None)
        if name is None:
            raise _SourceError(node, "a call of something that is not a class name")
        if node.args:
            raise _SourceError(node, f"{name}(...) with positional arguments: only key=value "
                                     "arguments are read")
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise _SourceError(node, f"{name}(**...) cannot be read")
            kwargs[kw.arg] = _literal(kw.value)
        return {"class": name, "kwargs": kwargs}
    if isinstance(node, ast.Name):
        raise _SourceError(node, f"the name {node.id!r} is a variable, not a value")
    raise _SourceError(node, f"a {type(node).__name__} expression cannot be read "
                             "(the source is parsed, not run)")


def _is_class_call(node: ast.AST) -> bool:
    """``Name(...)`` or ``module.Name(...)`` with a capitalised name (a config class)."""
    if not isinstance(node, ast.Call):
        return False
    f = node.func
    name = f.id if isinstance(f, ast.Name) else (f.attr if isinstance(f, ast.Attribute) else "")
    return name[:1].isupper()


def _field_class(parent_cls: str, key: str) -> str | None:
    """The class of field ``key`` of aihwkit class ``parent_cls`` (from the defaults)."""
    try:
        value = _class_defaults(parent_cls, "", "")[key]
    except (ConfigError, KeyError):
        return None
    return value["class"] if _is_node(value) else None


def tree_from_python(source: str, name: str = "<python>") -> dict[str, Any]:
    """The config tree of Python source that builds an aihwkit config, parsed with
    :mod:`ast` (nothing is run).

    Read: imports (ignored), one assignment ``NAME = Class(key=value, ...)`` (or a bare
    expression: aihwkit's ``print(config)``), assignments to its attributes
    (``rpu_config.forward.out_noise = 0.1``), and ``# rpuhw: KEY = VALUE`` comments.
    Anything else is refused with its line number.
    """
    try:
        module = ast.parse(source, filename=name)
    except SyntaxError as exc:
        raise ConfigError(f"line {exc.lineno}: not valid Python ({exc.msg})", source=name
                          ) from None
    root: dict[str, Any] | None = None
    var: str | None = None
    try:
        for stmt in module.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) \
                    and isinstance(stmt.value.value, str):
                continue  # a docstring
            if isinstance(stmt, ast.Expr) and root is None and _is_class_call(stmt.value):
                root = _literal(stmt.value)
                continue
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1:
                target = stmt.targets[0]
                if isinstance(target, ast.Name) and root is None:
                    root, var = _literal(stmt.value), target.id
                    continue
                if isinstance(target, ast.Attribute) and root is not None:
                    chain = []
                    t: ast.AST = target
                    while isinstance(t, ast.Attribute):
                        chain.append(t.attr)
                        t = t.value
                    if isinstance(t, ast.Name) and t.id == var:
                        _set_path(root, chain[::-1], _literal(stmt.value), stmt)
                        continue
            raise _SourceError(stmt, "only imports, `rpu_config = Class(...)` and "
                                     "`rpu_config.a.b = value` are read (the source is "
                                     "parsed, not run; `rpuhw device import --run` runs it "
                                     "in aihwkit's interpreter)")
    except _SourceError as exc:
        where = f"line {exc.line}: " if exc.line else ""
        raise ConfigError(f"{where}{exc}", source=name) from None
    if not _is_node(root):
        raise ConfigError("no aihwkit config found (expected `rpu_config = "
                          "SingleRPUConfig(...)` or a device such as ConstantStepDevice(...))",
                          source=name)
    extra = _rpuhw_comments(source, name)
    if extra:
        root["rpuhw"] = extra
    return root


def _set_path(root: dict[str, Any], chain: list[str], value: Any, stmt: ast.AST) -> None:
    node = root
    for key in chain[:-1]:
        kwargs = node.setdefault("kwargs", {})
        child = kwargs.get(key)
        if not _is_node(child):
            cls = _field_class(node["class"], key)
            if cls is None:
                raise _SourceError(stmt, f"{node['class']}.{key} is not a config block "
                                         "rpuhw knows")
            child = kwargs[key] = {"class": cls, "kwargs": {}}
        node = child
    node.setdefault("kwargs", {})[chain[-1]] = value


def _rpuhw_comments(source: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, line in enumerate(source.splitlines(), 1):
        text = line.strip()
        if not text.startswith("# rpuhw:"):
            continue
        body = text[len("# rpuhw:"):].split("  (", 1)[0].strip()
        key, eq, value = body.partition("=")
        try:
            if not eq:
                raise ValueError("no '='")
            out[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise ConfigError(f"line {n}: expected '# rpuhw: KEY = VALUE', got {text!r}",
                              source=name) from None
    return out


# ---- objects (aihwkit importable in this interpreter) ---------------------------------
def _side():
    from rpuhw.interop import _aihwkit_side

    return _aihwkit_side


def _require_aihwkit() -> None:
    import importlib.util

    if importlib.util.find_spec("aihwkit") is None:
        raise ConfigError(f"aihwkit is not installed in this interpreter ({sys.executable}); "
                          "`rpuhw device export FILE --to aihwkit` prints the Python that "
                          "builds the config instead", key="aihwkit")


def to_aihwkit(spec: Any, periphery: Any = None, device_only: bool = False) -> Any:
    """The aihwkit config of an rpuhw device spec (needs aihwkit in this interpreter):
    a ``SingleRPUConfig`` (see :func:`tree_of_spec`), or with ``device_only`` its device
    (``ConstantStepDevice``, ``LinearStepDevice``, ...). rpuhw-only values ride along as
    the object's ``rpuhw_only`` attribute."""
    tree = tree_of_spec(spec, periphery, device_only)
    _require_aihwkit()
    return _side().build(tree)


def from_aihwkit(config: Any, source: str = "<aihwkit config>") -> Any:
    """The rpuhw :class:`~rpuhw.device_spec.DeviceSpec` of an aihwkit device or RPU
    config object. Settings a device YAML does not hold are reported as
    :class:`NotCarriedOver` warnings; what rpuhw cannot express raises
    :class:`~rpuhw.errors.ConfigError`."""
    if not dataclasses.is_dataclass(config):
        raise ConfigError(f"expected an aihwkit device or RPU config, got "
                          f"{type(config).__name__}", source=source)
    imported = import_tree(_side().to_tree(config), source=source)
    for note in imported.notes:
        warnings.warn(note, NotCarriedOver, stacklevel=2)
    return imported.spec


# ---- the aihwkit interpreter ----------------------------------------------------------
def aihwkit_python() -> str:
    """A Python interpreter with aihwkit: ``$RPUHW_AIHWKIT_PYTHON``, else this one if it
    has aihwkit. Raises :class:`~rpuhw.errors.ConfigError` when there is none."""
    env = os.environ.get(AIHWKIT_PYTHON_ENV)
    if env:
        path = shutil.which(env) or env
        if not Path(path).is_file():
            raise ConfigError(f"{env!r} is not an interpreter (check the path)",
                              key=AIHWKIT_PYTHON_ENV)
        return path
    import importlib.util

    if importlib.util.find_spec("aihwkit") is not None:
        return sys.executable
    raise ConfigError(f"no Python with aihwkit found: set {AIHWKIT_PYTHON_ENV} to the python "
                      f"of an environment with aihwkit {AIHWKIT_VERSION} (e.g. "
                      "/opt/aihwkit-venv/bin/python)", key=AIHWKIT_PYTHON_ENV)


def run_aihwkit(command: str, *args: str, stdin: str | None = None,
                timeout: float = 600.0) -> Any:
    """Run ``_aihwkit_side.py COMMAND ARGS`` in the aihwkit interpreter; its JSON answer.
    A failure is a :class:`~rpuhw.errors.ConfigError` with the side's last line."""
    py = aihwkit_python()
    try:
        proc = subprocess.run([py, str(SIDE_SCRIPT), command, *args], input=stdin,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"aihwkit's interpreter did not answer within {timeout:.0f} s",
                          key=AIHWKIT_PYTHON_ENV) from None
    except OSError as exc:
        raise ConfigError(f"cannot run {py} ({exc.strerror})", key=AIHWKIT_PYTHON_ENV
                          ) from None
    if proc.returncode != 0:
        lines = [x for x in proc.stderr.strip().splitlines() if x.strip()]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise ConfigError(f"aihwkit side failed: {last}", source=str(py))
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise ConfigError("aihwkit side printed no JSON answer", source=str(py)) from None


def is_pickle(data: bytes) -> bool:
    """Whether file contents look like a pickle or a ``torch.save`` zip."""
    return data[:1] == b"\x80" or data[:4] == b"PK\x03\x04"
