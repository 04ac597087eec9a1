"""A network trained by ``rpuhw train`` -> an aihwkit model file (``rpuhw export-model``).

From the checkpoint (``rpuhw train --checkpoint DIR``): the network, each layer's
trained weights and the device it trained on. aihwkit's interpreter
(:func:`rpuhw.interop.aihwkit.aihwkit_python`) builds an ``AnalogSequential`` of
``AnalogConv2d``/``AnalogLinear`` (digital ``nn`` layers for layers trained in floating
point), each with the ``SingleRPUConfig`` of its device and of the run's periphery
(:func:`rpuhw.interop.aihwkit.tree_of_spec`; the bias as an array column, as in rpuhw),
sets the weights and saves it with ``torch.save``.

A simulated layer keeps its devices: the per-device parameters rpuhw drew (bounds,
step sizes, linear_step/soft_bounds slopes, pow_step exponents) become the tile's
hidden parameters, so aihwkit holds the same device realisation and the trained
weights are not clipped at bounds drawn anew; with ``lifetime`` its decay scales and
reset values (``decay_scales``, ``reset_bias``). With write noise (``write_noise_std``)
the tile's ``persistent_weights`` are rpuhw's hidden weights and its visible weights
rpuhw's visible ones, both exactly: aihwkit 1.2 itself re-sets the persistent weights
from the visible ones (with fresh write noise) whenever a tile is unpickled, so the saved
network carries a restore step that ``torch.load`` runs after the tiles are rebuilt (the
attribute ``rpuhw_restore_hidden_weights`` of the ``AnalogSequential``; moving a tile to
CUDA in aihwkit re-sets them again). Layers on hardware (bench, arc2) take
their device from ``--device`` (the calibrated YAML); aihwkit draws its own devices for
them and clips weights beyond their bounds (reported).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from rpuhw.errors import ConfigError

CHECKPOINT = "checkpoint.pt"
"""The file ``rpuhw train --checkpoint DIR`` writes (rpuhw.train.CHECKPOINT)."""

SEQUENCES: dict[str, list[Any]] = {
    "lenet": ["conv1", "tanh", ("maxpool2d", 2), "conv2", "tanh", ("maxpool2d", 2),
              "flatten", "fc1", "tanh", "fc2"],
}
"""Network name -> its forward as a sequence (layer names and functions), for networks
whose forward is not an ``nn.Sequential`` (rpuhw.models.LeNet.forward)."""

_SEQUENTIAL_KINDS = {"Tanh": "tanh", "ReLU": "relu", "Sigmoid": "sigmoid",
                     "Flatten": "flatten"}


def find_checkpoint(results: str | Path) -> Path:
    """The checkpoint file of a results folder (or the file itself)."""
    p = Path(results)
    if p.is_dir():
        p = p / CHECKPOINT
        if not p.is_file():
            raise ConfigError(f"no {CHECKPOINT} here: give the folder of rpuhw train "
                              "--checkpoint DIR", source=str(results))
    elif not p.is_file():
        raise ConfigError("not found (the folder of rpuhw train --checkpoint DIR)",
                          source=str(results))
    return p


def _sequence(name: str, model: Any) -> list[Any]:
    from torch import nn

    if name in SEQUENCES:
        return SEQUENCES[name]
    if isinstance(model, nn.Sequential):
        seq: list[Any] = []
        for child_name, child in model.named_children():
            kind = type(child).__name__
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                seq.append(child_name)
            elif kind in _SEQUENTIAL_KINDS:
                seq.append(_SEQUENTIAL_KINDS[kind])
            elif isinstance(child, (nn.MaxPool2d, nn.AvgPool2d)):
                seq.append((kind.lower(), child.kernel_size))
            else:
                raise ConfigError(f"network {name}: layer {child_name} ({kind}) has no "
                                  "aihwkit export", key="model")
        return seq
    raise ConfigError(f"network {name!r} cannot be exported: its forward is not an "
                      f"nn.Sequential and not one of {', '.join(SEQUENCES)}", key="model")


def _device_of(backend: str, layer: str, device: str | None) -> tuple[Any, bool]:
    """(DeviceSpec, simulated?) of a layer's backend spec."""
    from rpuhw.device_spec import DeviceSpec, load_device
    from rpuhw.devices import get_model, model_names
    from rpuhw.interop.presets import load_preset

    prefix, _, arg = backend.partition(":")
    if prefix == "sim":
        if not arg:
            return DeviceSpec(model=get_model("constant_step")()), True
        if arg in model_names():
            return DeviceSpec(model=get_model(arg)()), True
        if arg.startswith("preset:"):
            return load_preset(arg[len("preset:"):]), True
        if not Path(arg).is_file():
            raise ConfigError(f"layer {layer} trained on {backend!r}: the device YAML {arg} "
                              "is not here (run from the folder the training ran in)",
                              key="device")
        return load_device(arg), True
    if prefix == "ideal":
        raise ConfigError(f"layer {layer} trained on 'ideal' (a floating-point reference, no "
                          "device): nothing to export as an aihwkit device", key="backend")
    if device is None:
        raise ConfigError(f"layer {layer} trained on {backend!r}: give its calibrated device "
                          "with --device FILE.yaml", key="--device")
    from rpuhw.interop.cli import load_device_arg

    return load_device_arg(device), False


def hidden_parameters(model_name: str, state: dict[str, Any]) -> dict[str, Any]:
    """aihwkit hidden parameters (tensors [out, in + 1]) of rpuhw per-device parameters.

    aihwkit's ``slope_up = -|gamma_up| dwmin_up / w_ref_max``,
    ``slope_down = -|gamma_down| dwmin_down / w_ref_min`` are rpuhw's step times its
    relative slopes ``gamma_up``/``gamma_down`` (linear_step) or ``-1/w_max``, ``-1/w_min``
    of the device's own bounds (soft_bounds)."""
    out = {"max_bound": state["w_max"], "min_bound": state["w_min"],
           "dwmin_up": state["dw_up"], "dwmin_down": state["dw_down"]}
    if model_name == "linear_step":
        out["slope_up"] = state["dw_up"] * state["gamma_up"]
        out["slope_down"] = state["dw_down"] * state["gamma_down"]
    elif model_name == "soft_bounds":
        out["slope_up"] = -state["dw_up"] / state["w_max"]
        out["slope_down"] = -state["dw_down"] / state["w_min"]
    elif model_name == "pow_step":
        out["gamma_up"] = state["pow_gamma_up"]
        out["gamma_down"] = state["pow_gamma_down"]
    if "decay_scale" in state:  # lifetime > 0: aihwkit's w_decay_scale_, w_reset_bias_
        out["decay_scales"] = state["decay_scale"]
        out["reset_bias"] = state["reset_bias"]
    return {k: v.float().contiguous() for k, v in out.items()}


def export_model(results: str | Path, out: str | Path | None = None,
                 device: str | None = None) -> dict[str, Any]:
    """Write the aihwkit model of a training checkpoint; returns what was checked
    (``max_abs_diff`` per layer: aihwkit's weights read back vs the trained ones)."""
    import torch

    from rpuhw.interop.aihwkit import TrainPeriphery, aihwkit_python, run_aihwkit, tree_of_spec
    from rpuhw.models import NETWORKS, build_model

    ckpt = find_checkpoint(results)
    aihwkit_python()  # before any work: a clear line when there is none
    try:
        st = torch.load(ckpt, weights_only=False)  # rpuhw's own checkpoint
    except Exception as exc:
        raise ConfigError(f"cannot read checkpoint ({exc})", source=str(ckpt)) from None
    if not isinstance(st, dict) or "config" not in st or "model" not in st:
        raise ConfigError("not an rpuhw training checkpoint", source=str(ckpt))
    cfg, sd = st["config"], st["model"]
    name = cfg.get("model", "lenet")
    if name not in NETWORKS:
        raise ConfigError(f"network {name!r} is not installed here", source=str(ckpt),
                          key="model")
    net = build_model(name)
    per = TrainPeriphery.level(cfg.get("management", "nm+bm+um"), int(cfg.get("bl", 10)))
    layers_cfg = cfg.get("layers", {}) or {}
    k_cfg = cfg.get("devices_per_weight", {}) or {}
    if cfg.get("weight_scaling_omega"):
        raise ConfigError("the run mapped its weights onto the devices (weight_scaling_omega "
                          f"{cfg['weight_scaling_omega']}); the export writes device weights "
                          "as network weights and would not rescale them (train with "
                          "weight_scaling_omega 0 to export)", source=str(ckpt),
                          key="weight_scaling_omega")
    out = Path(out) if out is not None else ckpt.parent / "aihwkit_model.pt"

    tensors: dict[str, Any] = {}
    request: list[dict[str, Any]] = []
    described: dict[str, str] = {}
    for item in _sequence(name, net):
        if isinstance(item, tuple):
            request.append({"kind": item[0], "kernel": item[1]})
            continue
        if item in ("tanh", "relu", "sigmoid", "flatten"):
            request.append({"kind": item})
            continue
        mod = net.get_submodule(item)
        conv = isinstance(mod, torch.nn.Conv2d)
        entry: dict[str, Any] = {"kind": "conv2d" if conv else "linear", "name": item,
                                 "bias": mod.bias is not None}
        if conv:
            entry.update({"in": mod.in_channels, "out": mod.out_channels,
                          "kernel": list(mod.kernel_size), "stride": list(mod.stride),
                          "padding": list(mod.padding)})
        else:
            entry.update({"in": mod.in_features, "out": mod.out_features})
        backend = layers_cfg.get(item, cfg.get("backend", "sim"))
        if backend == "float":
            tensors[f"{item}.weight"] = sd[f"{item}.weight"].float()
            if mod.bias is not None:
                tensors[f"{item}.bias"] = sd[f"{item}.bias"].float()
            entry["rpu_config"] = None
            described[item] = "digital (float)"
            request.append(entry)
            continue
        k = int(k_cfg.get(item, 1))
        if k != 1:
            raise ConfigError(f"layer {item} holds {k} devices per weight; aihwkit's "
                              "SingleRPUConfig holds one (export runs with "
                              "devices_per_weight 1)", source=str(ckpt), key="devices_per_weight")
        extra = sd.get(f"{item}._extra_state")
        arrays = (extra or {}).get("arrays") or []
        if len(arrays) != 1:
            raise ConfigError(f"layer {item}: {len(arrays)} arrays in the checkpoint, the "
                              "export takes layers on one array", source=str(ckpt))
        arr = arrays[0]
        w = arr["weights"].float()
        weight, bias = (w[:, :-1], w[:, -1]) if mod.bias is not None else (w, None)
        tensors[f"{item}.weight"] = weight.reshape(mod.weight.shape).contiguous()
        if bias is not None:
            tensors[f"{item}.bias"] = bias.contiguous()
        spec, simulated = _device_of(backend, item, device)
        entry["rpu_config"] = tree_of_spec(spec, per)
        hidden: list[str] = []
        if simulated and isinstance(arr.get("state"), dict) and arr.get("model") == \
                spec.model.name:
            for key, value in hidden_parameters(spec.model.name, arr["state"]).items():
                tensors[f"{item}.hidden.{key}"] = value
                hidden.append(key)
            if arr.get("hidden") is not None:  # write noise: the weights pulses move
                tensors[f"{item}.persistent_weights"] = arr["hidden"].float().contiguous()
                tensors[f"{item}.visible_weights"] = w.contiguous()
                entry["persistent"] = True
        entry["hidden"] = hidden
        described[item] = f"{backend} ({spec.model.name}" + (
            ", its devices" if hidden else ", devices drawn by aihwkit") + ")"
        request.append(entry)

    with tempfile.TemporaryDirectory(prefix="rpuhw-export-") as tmp:
        tpath = Path(tmp) / "tensors.pt"
        torch.save(tensors, tpath)
        rpath = Path(tmp) / "request.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        rpath.write_text(json.dumps({"layers": request, "tensors": str(tpath),
                                     "out": str(out.resolve())}))
        report = run_aihwkit("export-model", str(rpath))
    report["out"] = str(out)
    report["layers"] = described
    report["lr"] = cfg.get("lr")
    return report
