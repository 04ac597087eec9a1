#!/usr/bin/env python
"""Time IBM aihwkit's stochastic pulsed update (CPU) on the benchmark layer shapes.

Standalone: uses only the standard library, torch and aihwkit (never rpuhw), because it
is run under the separate aihwkit interpreter (e.g. /opt/aihwkit-venv/bin/python) by the
project's benchmark, which reads the single JSON object printed on stdout.

Usage::

    python _aihwkit_update.py --layers conv1,conv2,fc1,fc2 --images 64 --repeats 3 --seed 0

Setup per layer: ``AnalogTile(rows, cols)`` (no bias; ``cols`` already includes the bias
column of the network layer) with a ``ConstantStepDevice`` (dw_min = 0.001), stochastic
compressed pulse trains of fixed length BL = 10 (``UpdateParameters.desired_bl = 10``,
``UpdateParameters.fixed_bl = True``), no update (BL) management, and learning rate
lr = dw_min * BL = 0.01, so that A = B = sqrt(lr / (dw_min * BL)) = 1 and the bit
probabilities are exactly |x_j| and |d_i|.

Sign convention (checked empirically, see "check" in the output): aihwkit stores the
learning rate as ``-lr`` (gradient descent), so ``tile.update(x, d)`` realises
``W <- W - lr * d^T x`` (summed over the batch), i.e. the realised change correlates
positively with ``-(d^T x)``. The script reports both the observed sign and the
correlation.
"""

import argparse
import json
import statistics
import sys
import time

import aihwkit
import torch
from aihwkit.simulator.configs import SingleRPUConfig
from aihwkit.simulator.configs.devices import ConstantStepDevice
from aihwkit.simulator.tiles import AnalogTile

# name: (rows = out size, cols = in size incl. bias column, rank-1 updates per image)
LAYERS = {
    "conv1": (16, 26, 576),
    "conv2": (32, 401, 64),
    "fc1": (128, 513, 1),
    "fc2": (10, 129, 1),
}

BL = 10
DW_MIN = 0.001
LR = DW_MIN * BL  # = 0.01 -> A = B = 1, bit probabilities = |x|, |d|
AMPLITUDE = 0.4  # x, d ~ U[-0.4, 0.4] -> mean pulse probability 0.2


def make_tile(rows: int, cols: int) -> AnalogTile:
    rpu_config = SingleRPUConfig(device=ConstantStepDevice(dw_min=DW_MIN))
    rpu_config.update.desired_bl = BL
    rpu_config.update.fixed_bl = True  # the field is called ``fixed_bl`` in aihwkit 1.2.0
    rpu_config.update.update_bl_management = False
    rpu_config.update.update_management = False
    tile = AnalogTile(rows, cols, rpu_config, bias=False)
    tile.set_learning_rate(LR)
    tile.set_weights(torch.zeros(rows, cols))
    return tile


def corr(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.flatten().double()
    b = b.flatten().double()
    a = a - a.mean()
    b = b - b.mean()
    den = float(a.norm() * b.norm())
    return float((a * b).sum()) / den if den > 0 else 0.0


def bench_layer(name: str, images: int, repeats: int, seed: int) -> dict:
    rows, cols, per_image = LAYERS[name]
    n_updates = images * per_image

    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n_updates, cols, generator=gen) * 2 - 1) * AMPLITUDE
    d = (torch.rand(n_updates, rows, generator=gen) * 2 - 1) * AMPLITUDE
    x = x.contiguous()
    d = d.contiguous()

    # Expected number of coincidences (device pulses) per call:
    # E = BL * sum_b sum_{i,j} |d_bi| |x_bj| = BL * sum_b (sum_i |d_bi|)(sum_j |x_bj|)
    expected_events = float(BL * (d.abs().double().sum(1) * x.abs().double().sum(1)).sum())
    # Expected (ideal, unbounded) weight change of one call, in the "+" convention.
    dtx = (d.double().t() @ x.double())  # [rows, cols]

    tile = make_tile(rows, cols)

    # Sign / correctness check on the warm-up call (weights start at zero, so the
    # realised change of this first call is not affected by the bounds).
    w0 = tile.get_weights()[0].clone()
    tile.update(x, d)  # warm-up
    dw = (tile.get_weights()[0] - w0).double()
    corr_plus = corr(dw, dtx)
    corr_minus = corr(dw, -dtx)
    # Least-squares scale s in dw ~ s * lr * dtx (ideal: s = -1 for aihwkit).
    ref = LR * dtx
    scale = float((dw * ref).sum() / (ref * ref).sum()) if float((ref * ref).sum()) > 0 else 0.0

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tile.update(x, d)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)

    w_final = tile.get_weights()[0]
    mean_abs_w = float(w_final.abs().mean())

    return {
        "rows": rows,
        "cols": cols,
        "rank1_updates": n_updates,
        "seconds_per_call": median,
        "seconds_all": times,
        "rank1_updates_per_s": n_updates / median,
        "pulse_events_per_s": expected_events / median,
        "expected_pulse_events": expected_events,
        "check": {
            "mean_abs_w_after": mean_abs_w,
            "weights_changed": mean_abs_w > 0,
            "corr_dW_plus_dTx": corr_plus,
            "corr_dW_minus_dTx": corr_minus,
            "observed_sign": "-" if corr_minus > corr_plus else "+",
            "dW_over_lr_dTx_scale": scale,
            "mean_abs_dW_first_call": float(dw.abs().mean()),
            "mean_abs_lr_dTx": float(ref.abs().mean()),
        },
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", default="conv1,conv2,fc1,fc2")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's default)")
    args = p.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    names = [s.strip() for s in args.layers.split(",") if s.strip()]
    unknown = [n for n in names if n not in LAYERS]
    if unknown:
        p.error(f"unknown layer(s) {unknown}; known: {sorted(LAYERS)}")
    if args.repeats < 1 or args.images < 1:
        p.error("--images and --repeats must be >= 1")

    result = {
        "aihwkit_version": getattr(aihwkit, "__version__", "unknown"),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "bl": BL,
        "lr": LR,
        "dw_min": DW_MIN,
        "images": args.images,
        "repeats": args.repeats,
        "seed": args.seed,
        "layers": {},
    }
    for name in names:
        seed = args.seed + list(LAYERS).index(name)
        result["layers"][name] = bench_layer(name, args.images, args.repeats, seed)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
