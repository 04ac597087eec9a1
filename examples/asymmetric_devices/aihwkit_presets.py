#!/usr/bin/env python
"""aihwkit 1.2's own RPU-config presets (its devices with its tuned algorithms) on the
study's task: lenet on mnist5k (4,000 training / 1,000 test images), batch 1, lr 0.01,
test error after each epoch. What the field's reference simulator reaches on the devices
where rpuhw's algorithms do not learn (docs/algorithms.md, the study).

Standalone: torch, numpy and aihwkit, never rpuhw (run it with aihwkit's interpreter).
The images come from an .npz that rpuhw's interpreter writes once::

    .venv/bin/python -c "from rpuhw.data import load_dataset; import numpy as np; \\
        d = load_dataset('mnist5k'); np.savez('m5k.npz', xtr=d.x_train.numpy(), \\
        ytr=d.y_train.numpy(), xte=d.x_test.numpy(), yte=d.y_test.numpy())"
    /opt/aihwkit-venv/bin/python examples/asymmetric_devices/aihwkit_presets.py \\
        --data m5k.npz --epochs 1 ReRamESPreset AGADReRamESPreset PCMPreset

Prints one JSON line per preset: ``{"preset", "test_error_pct": [per epoch], "seconds"}``.
"""

import argparse
import json
import sys
import time

import numpy as np
import torch
from torch import nn


class LeNet(nn.Module):
    """rpuhw's ``lenet`` (rpuhw/models.py), written out: aihwkit's interpreter lacks rpuhw."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 5)
        self.conv2 = nn.Conv2d(16, 32, 5)
        self.fc1 = nn.Linear(512, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = torch.max_pool2d(torch.tanh(self.conv1(x)), 2)
        x = torch.max_pool2d(torch.tanh(self.conv2(x)), 2)
        return self.fc2(torch.tanh(self.fc1(x.flatten(1))))


def run(preset: str, data, epochs: int, lr: float, seed: int) -> dict:
    import aihwkit.simulator.presets as presets
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.optim import AnalogSGD

    xtr, ytr, xte, yte = data
    torch.manual_seed(seed)
    model = convert_to_analog(LeNet(), getattr(presets, preset)())
    opt = AnalogSGD(model.parameters(), lr=lr)
    opt.regroup_param_groups(model)
    errors, t0 = [], time.time()
    for _ in range(epochs):
        model.train()
        for i in range(len(xtr)):
            opt.zero_grad()
            nn.functional.cross_entropy(model(xtr[i:i + 1]), ytr[i:i + 1]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(xte[j:j + 100]).argmax(1) for j in range(0, len(xte), 100)])
        errors.append(round(100 * (pred != yte).float().mean().item(), 1))
    return {"preset": preset, "test_error_pct": errors, "seconds": round(time.time() - t0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="+", help="aihwkit.simulator.presets RPU-config names")
    ap.add_argument("--data", required=True, help=".npz with xtr, ytr, xte, yte")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    d = np.load(args.data)
    data = (torch.tensor(d["xtr"]), torch.tensor(d["ytr"]).long(), torch.tensor(d["xte"]),
            torch.tensor(d["yte"]).long())
    for name in args.presets:
        print(json.dumps(run(name, data, args.epochs, args.lr, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
