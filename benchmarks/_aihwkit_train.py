#!/usr/bin/env python
"""Time IBM aihwkit 1.2 training the paper's LeNet at batch size 1 (CPU).

Standalone: uses only the standard library, numpy, torch and aihwkit (never rpuhw),
because it is run under the separate aihwkit interpreter (e.g.
/opt/aihwkit-venv/bin/python) by ``python -m benchmarks.train``, which reads the single
JSON object printed on stdout.

Usage::

    python _aihwkit_train.py --data DIR --warmup 20 --images 300 --seed 0

``DIR`` holds what the main benchmark wrote, so that every configuration trains on the
same images from the same initial weights:

* ``images.npy``: float32 ``[warmup + images, 1, 28, 28]`` in [0, 1];
* ``labels.npy``: int64 ``[warmup + images]``;
* ``<layer>.weight.npy`` / ``<layer>.bias.npy`` for conv1, conv2, fc1, fc2: the
  initial weights (torch layout).

Network: conv 1->16 5x5, tanh, maxpool 2, conv 16->32 5x5, tanh, maxpool 2, flatten
512, fc 512->128, tanh, fc 128->10, cross-entropy on the logits. Every layer analog:
``SingleRPUConfig(device=ConstantStepDevice())`` with fixed BL 10
(``update.desired_bl = 10``, ``update.fixed_bl = True``), no update-BL management,
update management on; forward/backward IO parameters at their defaults (noise
management ABS_MAX, iterative bound management, 7-bit DAC, 9-bit ADC, out_noise 0.06);
mapping at its defaults (``digital_bias = True``: the biases are digital in aihwkit,
an extra array column in rpuhw). ``AnalogSGD(lr=0.01)``, batch size 1.

The first ``--warmup`` images train untimed; the next ``--images`` are timed
(forward, backward, optimizer step of each image). Prints the wall and CPU seconds,
images/s and the per-image training losses of the timed images.

Whole run (``--whole-run --out results.json``, for ``python -m benchmarks.train
--whole-run``): what ``rpuhw train --out results.json`` does, in this fresh process:
import, read the data, build the model, train every image of ``images.npy`` once in
the stored order (the caller writes them in rpuhw's epoch order), print the line
``training starts`` before the first image and ``first image trained`` after it
(flushed), evaluate the test error on
``test_images.npy`` / ``test_labels.npy`` (batches of 100, as rpuhw does) and write
the results JSON atomically; the caller times the process from its start until that
file exists. ``--warmup`` and ``--images`` are ignored.
"""

import argparse
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
from aihwkit.simulator.configs import SingleRPUConfig
from aihwkit.simulator.configs.devices import ConstantStepDevice
from torch import nn

BL = 10
LR = 0.01
LAYERS = ("conv1", "conv2", "fc1", "fc2")


def rpu_config() -> SingleRPUConfig:
    cfg = SingleRPUConfig(device=ConstantStepDevice())
    cfg.update.desired_bl = BL
    cfg.update.fixed_bl = True  # the field is called ``fixed_bl`` in aihwkit 1.2.0
    cfg.update.update_bl_management = False
    cfg.update.update_management = True
    return cfg


class AnalogLeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = AnalogConv2d(1, 16, 5, rpu_config=rpu_config())
        self.conv2 = AnalogConv2d(16, 32, 5, rpu_config=rpu_config())
        self.fc1 = AnalogLinear(512, 128, rpu_config=rpu_config())
        self.fc2 = AnalogLinear(128, 10, rpu_config=rpu_config())

    def forward(self, x):
        x = F.max_pool2d(torch.tanh(self.conv1(x)), 2)
        x = F.max_pool2d(torch.tanh(self.conv2(x)), 2)
        x = torch.tanh(self.fc1(x.flatten(1)))
        return self.fc2(x)


def load_model(data: str) -> AnalogLeNet:
    """The analog LeNet with the initial weights of ``data``."""
    model = AnalogLeNet()
    for name in LAYERS:
        w = torch.from_numpy(np.load(os.path.join(data, f"{name}.weight.npy")))
        b = torch.from_numpy(np.load(os.path.join(data, f"{name}.bias.npy")))
        getattr(model, name).set_weights(w, b)
    return model


def whole_run(args) -> int:
    """Train every image once, evaluate, write ``args.out`` (see the module docstring)."""
    images = torch.from_numpy(np.load(os.path.join(args.data, "images.npy")))
    labels = torch.from_numpy(np.load(os.path.join(args.data, "labels.npy")))
    x_test = torch.from_numpy(np.load(os.path.join(args.data, "test_images.npy")))
    y_test = torch.from_numpy(np.load(os.path.join(args.data, "test_labels.npy")))
    model = load_model(args.data)
    model.train()
    opt = AnalogSGD(model.parameters(), lr=LR)
    opt.regroup_param_groups(model)
    print("training starts", flush=True)
    t0 = time.perf_counter()
    loss_sum = 0.0
    for i in range(len(images)):
        opt.zero_grad()
        loss = F.cross_entropy(model(images[i:i + 1]), labels[i:i + 1])
        loss.backward()
        opt.step()
        loss_sum += loss.item()
        if i == 0:
            print("first image trained", flush=True)
    train_s = time.perf_counter() - t0
    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x_test), 100):
            wrong += int((model(x_test[i:i + 100]).argmax(1) != y_test[i:i + 100]).sum())
    result = {"aihwkit_version": getattr(aihwkit, "__version__", "unknown"),
              "torch_version": torch.__version__, "torch_threads": torch.get_num_threads(),
              "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",
                                                              "OPENBLAS_NUM_THREADS")},
              "images": len(images), "test_images": len(x_test),
              "train_loss": loss_sum / max(len(images), 1),
              "test_error": wrong / max(len(x_test), 1), "train_s": train_s,
              "images_per_s": len(images) / train_s if train_s > 0 else None}
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f)
    os.replace(tmp, args.out)  # the file appears complete
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with images.npy, labels.npy, ...")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--whole-run", action="store_true",
                   help="train all images once, evaluate, write --out (see above)")
    p.add_argument("--out", help="results JSON of --whole-run")
    args = p.parse_args(argv)
    if args.whole_run and not args.out:
        p.error("--whole-run needs --out")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.whole_run:
        return whole_run(args)

    images = torch.from_numpy(np.load(os.path.join(args.data, "images.npy")))
    labels = torch.from_numpy(np.load(os.path.join(args.data, "labels.npy")))
    if len(images) < args.warmup + args.images:
        p.error(f"{len(images)} images in --data, need {args.warmup + args.images}")

    model = load_model(args.data)
    model.train()
    opt = AnalogSGD(model.parameters(), lr=LR)
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

    cfg = rpu_config()
    result = {
        "aihwkit_version": getattr(aihwkit, "__version__", "unknown"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "env_threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS",
                                                        "OPENBLAS_NUM_THREADS")},
        "images": args.images,
        "warmup": args.warmup,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "images_per_s": args.images / seconds,
        "losses": losses,
        "config": {"device": "ConstantStepDevice()", "desired_bl": cfg.update.desired_bl,
                   "fixed_bl": cfg.update.fixed_bl,
                   "update_bl_management": cfg.update.update_bl_management,
                   "update_management": cfg.update.update_management,
                   "digital_bias": cfg.mapping.digital_bias,
                   "forward_noise_management": str(cfg.forward.noise_management.value),
                   "forward_bound_management": str(cfg.forward.bound_management.value),
                   "lr": LR},
    }
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
