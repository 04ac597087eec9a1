#!/usr/bin/env python
"""The aihwkit side of :mod:`rpuhw.interop.aihwkit`: run by an interpreter with aihwkit.

Standalone on purpose: it imports only the standard library at the top, and aihwkit,
torch and numpy inside the commands, never rpuhw (aihwkit's interpreter usually has no
rpuhw, and rpuhw's no aihwkit). rpuhw runs it as a script::

    AIHWKIT_PYTHON _aihwkit_side.py COMMAND [ARGS]

and exchanges JSON on stdin/stdout. A config travels as a *tree*: a dataclass is
``{"class": NAME, "kwargs": {field: tree, ...}}`` (every field when dumped from an
object), an enum member ``{"enum": "EnumClass.MEMBER"}``, a class object
``{"type": "module.Name"}``, lists and scalars as themselves; the optional key
``"rpuhw"`` of the root holds rpuhw-only values (``{"io.read_noise": 0.002, ...}``)
carried along as the attribute ``rpuhw_only`` of the built object.

Commands:

``defaults``
    the default trees of the classes rpuhw maps (its table ``_aihwkit_defaults``).
``build``
    stdin a tree (or a list of trees) -> builds the object, pickles and unpickles it,
    dumps it back (the round trip ``from_aihwkit(to_aihwkit(spec))`` through a real
    aihwkit object).
``load FILE``
    a pickled (``pickle`` or ``torch.save``) aihwkit config -> its tree. Unpickling runs
    code from the file: load only files you trust.
``python``
    stdin Python source that builds a config (``rpu_config = ...`` or a bare
    expression as its last statement) -> executed here, its tree (trusted input only).
``preset NAME``
    the tree of ``aihwkit.simulator.presets.devices.<NAME>PresetDevice()``.
``export-model REQUEST.json``
    builds an aihwkit network from the request (see :func:`export_model`), saves it
    with ``torch.save`` and prints what it checked.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
import json
import sys

NAMESPACES = (
    "aihwkit.simulator.configs",
    "aihwkit.simulator.configs.devices",
    "aihwkit.simulator.configs.compounds",
    "aihwkit.simulator.parameters",
    "aihwkit.simulator.parameters.enums",
    "aihwkit.simulator.parameters.runtime",
    "aihwkit.simulator.parameters.inference",
    "aihwkit.simulator.presets.devices",
    "aihwkit.simulator.presets.utils",
    "aihwkit.simulator.presets.compounds",
    "aihwkit.simulator.presets.configs",
)
"""Modules searched for a class name of a tree."""

DEFAULT_CLASSES = (
    "SingleRPUConfig", "ConstantStepDevice", "LinearStepDevice", "SoftBoundsDevice",
    "SoftBoundsReferenceDevice", "ExpStepDevice", "PowStepDevice", "PiecewiseStepDevice",
    "PulsedDevice", "IOParameters", "PresetIOParameters", "UpdateParameters",
    "PresetUpdateParameters", "MappingParameter", "DriftParameter", "RuntimeParameter",
    "PrePostProcessingParameter", "InputRangeParameter",
)
"""Classes whose defaults rpuhw keeps as data (``rpuhw/interop/_aihwkit_defaults.py``)."""


def lookup(name: str):
    """The aihwkit class (or enum) called ``name``."""
    for mod in NAMESPACES:
        try:
            module = importlib.import_module(mod)
        except ImportError:
            continue
        obj = getattr(module, name, None)
        if isinstance(obj, type):
            return obj
    raise SystemExit(f"aihwkit has no class {name!r}")


def to_tree(obj):
    """A JSON-able tree of ``obj`` (every dataclass field)."""
    if isinstance(obj, enum.Enum):
        return {"enum": f"{type(obj).__name__}.{obj.name}"}
    if isinstance(obj, type):
        return {"type": f"{obj.__module__}.{obj.__qualname__}"}
    if dataclasses.is_dataclass(obj):
        out = {"class": type(obj).__name__,
               "kwargs": {f.name: to_tree(getattr(obj, f.name))
                          for f in dataclasses.fields(obj) if f.init}}
        extra = getattr(obj, "rpuhw_only", None)
        if isinstance(extra, dict) and extra:
            out["rpuhw"] = dict(extra)
        return out
    if isinstance(obj, (list, tuple)):
        return [to_tree(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return {"repr": repr(obj)}


def build(tree):
    """The aihwkit object of a tree."""
    if isinstance(tree, list):
        return [build(v) for v in tree]
    if isinstance(tree, dict):
        if "enum" in tree:
            cls_name, _, member = tree["enum"].partition(".")
            return getattr(lookup(cls_name), member)
        if "type" in tree:
            module, _, name = tree["type"].rpartition(".")
            return getattr(importlib.import_module(module), name)
        if "class" in tree:
            obj = lookup(tree["class"])(**{k: build(v) for k, v in
                                            tree.get("kwargs", {}).items()})
            if tree.get("rpuhw"):
                obj.rpuhw_only = dict(tree["rpuhw"])
            return obj
        raise SystemExit(f"cannot build {tree!r}")
    return tree


def cmd_defaults() -> dict:
    return {name: to_tree(lookup(name)()) for name in DEFAULT_CLASSES}


def cmd_build(tree):
    """A tree (or a list of trees) -> built, pickled, unpickled, dumped again."""
    import pickle

    if isinstance(tree, list):
        return [cmd_build(t) for t in tree]
    obj = pickle.loads(pickle.dumps(build(tree)))
    return to_tree(obj)


def cmd_load(path: str) -> dict:
    import pickle

    try:
        with open(path, "rb") as f:
            obj = pickle.load(f)
    except Exception:  # a torch.save file (zip) is not a plain pickle
        import torch

        obj = torch.load(path, weights_only=False)
    if not dataclasses.is_dataclass(obj):
        raise SystemExit(f"{path}: holds a {type(obj).__name__}, not an aihwkit config")
    return to_tree(obj)


def cmd_python(source: str) -> dict:
    import ast

    tree = ast.parse(source)
    scope: dict = {}
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, "<config>", "exec"), scope)
        obj = eval(compile(last, "<config>", "eval"), scope)
    else:
        exec(compile(tree, "<config>", "exec"), scope)
        obj = scope.get("rpu_config", scope.get("device"))
    if not dataclasses.is_dataclass(obj):
        raise SystemExit("the source builds no aihwkit config (assign it to rpu_config)")
    return to_tree(obj)


def cmd_preset(name: str) -> dict:
    return to_tree(lookup(f"{name}PresetDevice")())


class _Call:
    """Pickles as ``fn(*args)``: the call runs when the pickle is loaded (``args`` may
    hold other ``_Call`` objects, resolved first); only aihwkit, torch and the standard
    library are needed to load it."""

    def __init__(self, fn, *args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)

    def run(self):
        """The call now, as unpickling makes it."""
        return self.fn(*[a.run() if isinstance(a, _Call) else a for a in self.args])


def _persistent_steps(tile, persistent, visible) -> list:
    """Calls that give a write-noise tile these persistent (hidden) and visible weights
    (tile layout ``[out, in (+1 bias column)]``): the C++ ``set_weights`` makes the
    persistent weights (``onSetWeights``: clipped to the bounds, visible redrawn), then
    the visible ones are written into the tile's shared weight storage, which does not
    touch the persistent ones. aihwkit 1.2 stores no persistent weights of its own
    across pickling (its ``__setstate__`` sets them from the visible weights)."""
    from operator import methodcaller

    return [_Call(methodcaller("set_weights", persistent), _Call(getattr, tile, "tile")),
            _Call(methodcaller("_copy_weights_to_shared_tensors", visible), tile)]


def export_model(req: dict) -> dict:
    """Build, fill and save an aihwkit network.

    ``req``: ``{"layers": [...], "tensors": PATH (torch.save of name -> tensor),
    "out": PATH}``; each layer ``{"kind": "conv2d" | "linear" | "tanh" | "relu" |
    "sigmoid" | "maxpool2d" | "avgpool2d" | "flatten", ...}``; weight layers carry
    ``name``, sizes, ``bias``, ``rpu_config`` (a tree, or null for a digital layer) and
    ``hidden`` (names of per-device tensors ``NAME.hidden.KEY`` to set first) and, for a
    device with write noise, ``persistent`` (tensors ``NAME.persistent_weights`` and
    ``NAME.visible_weights``, tile layout, set last: :func:`_persistent_steps`).
    Returns per layer the largest |difference| between the weights aihwkit reads back
    and the ones given (``max_abs_diff``; persistent ones: ``hidden_max_abs_diff``).
    """
    import torch
    from aihwkit.nn import AnalogConv2d, AnalogLinear, AnalogSequential
    from torch import nn

    tensors = torch.load(req["tensors"], weights_only=True)
    modules, report = [], {}
    restore: list = []
    hidden_diff: dict = {}
    for spec in req["layers"]:
        kind = spec["kind"]
        if kind in ("conv2d", "linear"):
            cfg = spec.get("rpu_config")
            if kind == "conv2d":
                args = (spec["in"], spec["out"], tuple(spec["kernel"]))
                kw = {"stride": tuple(spec["stride"]), "padding": tuple(spec["padding"]),
                      "bias": spec["bias"]}
                mod = (AnalogConv2d(*args, **kw, rpu_config=build(cfg)) if cfg
                       else nn.Conv2d(*args, **kw))
            else:
                mod = (AnalogLinear(spec["in"], spec["out"], bias=spec["bias"],
                                    rpu_config=build(cfg)) if cfg
                       else nn.Linear(spec["in"], spec["out"], bias=spec["bias"]))
            name = spec["name"]
            w = tensors[f"{name}.weight"]
            b = tensors.get(f"{name}.bias")
            if cfg:
                if spec.get("hidden"):
                    tiles = list(mod.analog_tiles())
                    if len(tiles) != 1:
                        raise SystemExit(f"{name}: {len(tiles)} tiles, expected one")
                    hp = tiles[0].get_hidden_parameters()
                    for key in spec["hidden"]:
                        value = tensors[f"{name}.hidden.{key}"]
                        if tuple(hp[key].shape) != tuple(value.shape):
                            raise SystemExit(f"{name}: hidden parameter {key} has shape "
                                             f"{list(hp[key].shape)}, got {list(value.shape)}")
                        hp[key] = value.to(hp[key].dtype)
                    tiles[0].set_hidden_parameters(hp)
                mod.set_weights(w, b)
                if spec.get("persistent"):
                    tile = next(iter(mod.analog_tiles()))
                    pers = tensors[f"{name}.persistent_weights"]
                    vis = tensors[f"{name}.visible_weights"]
                    steps = _persistent_steps(tile, pers, vis)
                    for step in steps:  # here, and again when the file is loaded
                        step.run()
                    restore.extend(steps)
                    got = tile.get_hidden_parameters()["persistent_weights"]
                    hidden_diff[name] = float((got - pers).abs().max())
                got_w, got_b = mod.get_weights()
            else:
                with torch.no_grad():
                    mod.weight.copy_(w)
                    if b is not None:
                        mod.bias.copy_(b)
                got_w, got_b = mod.weight.detach(), mod.bias
            diff = float((got_w.reshape(w.shape) - w).abs().max())
            if b is not None:
                diff = max(diff, float((got_b.detach() - b).abs().max()))
            report[name] = diff
            modules.append(mod)
        elif kind == "tanh":
            modules.append(nn.Tanh())
        elif kind == "relu":
            modules.append(nn.ReLU())
        elif kind == "sigmoid":
            modules.append(nn.Sigmoid())
        elif kind == "maxpool2d":
            modules.append(nn.MaxPool2d(spec["kernel"]))
        elif kind == "avgpool2d":
            modules.append(nn.AvgPool2d(spec["kernel"]))
        elif kind == "flatten":
            modules.append(nn.Flatten())
        else:
            raise SystemExit(f"unknown layer kind {kind!r}")
    model = AnalogSequential(*modules)
    if restore:  # after the tiles in the pickle: runs once they are rebuilt
        model.rpuhw_restore_hidden_weights = restore
    tmp = req["out"] + ".tmp"
    torch.save(model, tmp)
    import os

    os.replace(tmp, req["out"])  # the file appears complete or not at all
    import aihwkit

    return {"max_abs_diff": report, "hidden_max_abs_diff": hidden_diff,
            "aihwkit_version": aihwkit.__version__,
            "torch_version": torch.__version__}


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "defaults":
        out = cmd_defaults()
    elif cmd == "build":
        out = cmd_build(json.load(sys.stdin))
    elif cmd == "load":
        out = cmd_load(args[0])
    elif cmd == "python":
        out = cmd_python(sys.stdin.read())
    elif cmd == "preset":
        out = cmd_preset(args[0])
    elif cmd == "export-model":
        with open(args[0]) as f:
            out = export_model(json.load(f))
    else:
        print(f"unknown command {cmd!r}", file=sys.stderr)
        return 2
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    # run as a script, this folder is sys.path[0]: its aihwkit.py (rpuhw's) would shadow
    # the aihwkit package
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.exit(main(sys.argv[1:]))
