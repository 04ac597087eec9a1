#!/usr/bin/env python
"""Time IBM aihwkit 1.2 training the paper's LeNet at batch size 1 with one training
algorithm (CPU), for ``python -m benchmarks.algorithms``.

Standalone: the standard library, numpy, torch and aihwkit (never rpuhw, which the
aihwkit interpreter usually lacks); rpuhw's ``rpuhw/interop/_aihwkit_side.py`` (itself
standalone) is loaded from its file to build the device config from its tree. Prints one
JSON object on stdout.

Usage::

    python _aihwkit_algorithms.py --data DIR --warmup 20 --images 300 --seed 0 --threads 1

``DIR`` holds ``images.npy``, ``labels.npy``, ``<layer>.weight.npy`` /
``<layer>.bias.npy`` (as for ``_aihwkit_train.py``) and ``config.json``:

* ``algorithm``: the rpuhw name (reported back);
* ``compound``: the aihwkit compound class (``MixedPrecisionCompound``,
  ``TransferCompound``, ``BufferedTransferCompound``, ``ChoppedTransferCompound``,
  ``DynamicTransferCompound``) or null for plain ``SingleRPUConfig``;
* ``config``: the ``SingleRPUConfig`` tree of the device with rpuhw's periphery
  (``rpuhw.interop.aihwkit.tree_of_spec``);
* ``layers``: per layer the hyper-parameters rpuhw resolved (aihwkit's names); keys the
  compound lacks are not passed and are listed in the output's ``not_passed``;
* ``lr``: the SGD learning rate; ``side_module``: the path of ``_aihwkit_side.py``.

``mp`` is ``DigitalRankUpdateRPUConfig(device=MixedPrecisionCompound(device=DEV, ...))``;
the transfer compounds are ``UnitCellRPUConfig(device=X(unit_cell_devices=[DEV, DEV],
transfer_forward=FORWARD, transfer_update=UPDATE, ...))`` with the layer's own forward
IO and update parameters for the transfer; forward, backward, update and mapping
parameters of the config are the tree's.
"""

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import sys
import time

import aihwkit
import numpy as np
import torch
import torch.nn.functional as F
from aihwkit.nn import AnalogConv2d, AnalogLinear
from aihwkit.optim import AnalogSGD
from aihwkit.simulator import configs
from torch import nn

LAYERS = ("conv1", "conv2", "fc1", "fc2")
CHOPPED = ("ChoppedTransferCompound", "DynamicTransferCompound")


def load_side(path: str):
    """rpuhw's standalone ``_aihwkit_side`` module, loaded from its file (its folder is
    not put on sys.path: it holds rpuhw's own ``aihwkit.py``)."""
    spec = importlib.util.spec_from_file_location("_rpuhw_aihwkit_side", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rpu_config(base, compound: str | None, params: dict) -> tuple[object, list[str]]:
    """The layer's aihwkit config and the hyper-parameter keys not passed."""
    if compound is None:
        return copy.deepcopy(base), sorted(params)
    cls = getattr(configs, compound)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in params.items() if k in fields}
    not_passed = sorted(k for k in params if k not in fields)
    if compound in CHOPPED and kwargs.get("n_reads_per_transfer", 1) != 1:
        # aihwkit reads one column per transfer with a chopper (fatal otherwise): it runs
        # with 1, fewer reads than rpuhw's
        del kwargs["n_reads_per_transfer"]
        not_passed = sorted([*not_passed, "n_reads_per_transfer"])
    dev = copy.deepcopy(base.device)
    common = dict(forward=copy.deepcopy(base.forward), backward=copy.deepcopy(base.backward),
                  update=copy.deepcopy(base.update), mapping=copy.deepcopy(base.mapping))
    if compound == "MixedPrecisionCompound":
        return (configs.DigitalRankUpdateRPUConfig(device=cls(device=dev, **kwargs), **common),
                not_passed)
    unit = cls(unit_cell_devices=[dev, copy.deepcopy(dev)],
               transfer_forward=copy.deepcopy(base.forward),
               transfer_update=copy.deepcopy(base.update), **kwargs)
    return configs.UnitCellRPUConfig(device=unit, **common), not_passed


class AnalogLeNet(nn.Module):
    def __init__(self, cfgs: dict):
        super().__init__()
        self.conv1 = AnalogConv2d(1, 16, 5, rpu_config=cfgs["conv1"])
        self.conv2 = AnalogConv2d(16, 32, 5, rpu_config=cfgs["conv2"])
        self.fc1 = AnalogLinear(512, 128, rpu_config=cfgs["fc1"])
        self.fc2 = AnalogLinear(128, 10, rpu_config=cfgs["fc2"])

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc2(x)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with config.json, images.npy, ...")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    with open(os.path.join(args.data, "config.json")) as f:
        spec = json.load(f)
    side = load_side(spec["side_module"])
    base = side.build(spec["config"])
    cfgs, not_passed = {}, set()
    for name in LAYERS:
        cfgs[name], skipped = rpu_config(base, spec["compound"], spec["layers"].get(name, {}))
        not_passed.update(skipped)

    images = torch.from_numpy(np.load(os.path.join(args.data, "images.npy")))
    labels = torch.from_numpy(np.load(os.path.join(args.data, "labels.npy")))
    if len(images) < args.warmup + args.images:
        p.error(f"{len(images)} images in --data, need {args.warmup + args.images}")
    model = AnalogLeNet(cfgs)
    for name in LAYERS:
        w = torch.from_numpy(np.load(os.path.join(args.data, f"{name}.weight.npy")))
        b = torch.from_numpy(np.load(os.path.join(args.data, f"{name}.bias.npy")))
        getattr(model, name).set_weights(w, b)
    model.train()
    lr = spec["lr"]
    opt = AnalogSGD(model.parameters(), lr=lr)
    opt.regroup_param_groups(model)

    def step(i: int) -> float:
        opt.zero_grad()
        loss = F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1])
        loss.backward()
        opt.step()
        return loss.item()

    for i in range(args.warmup):
        step(i)
    losses = []
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(args.warmup, args.warmup + args.images):
        losses.append(step(i))
    seconds = time.perf_counter() - t0
    cpu_seconds = time.process_time() - c0
    cfg = cfgs["conv1"]
    dev = cfg.device
    passed = {k: getattr(dev, k) for k in spec["layers"].get("conv1", {})
              if k not in not_passed and hasattr(dev, k)}
    result = {
        "aihwkit_version": getattr(aihwkit, "__version__", "unknown"),
        "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
        "algorithm": spec["algorithm"], "images": args.images, "warmup": args.warmup,
        "seconds": seconds, "cpu_seconds": cpu_seconds,
        "images_per_s": args.images / seconds, "losses": losses,
        "not_passed": sorted(not_passed),
        "config": {"rpu_config": type(cfg).__name__, "compound": spec["compound"],
                   "device": type(base.device).__name__, "conv1_params": passed,
                   "desired_bl": cfg.update.desired_bl, "lr": lr},
    }
    json.dump(result, sys.stdout, default=str)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
