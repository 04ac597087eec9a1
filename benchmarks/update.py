"""Pulsed-update throughput on the paper's layer shapes, against the reference and aihwkit.

    python -m benchmarks.update [--images 64] [--repeats 5] [--layers conv1,conv2,fc1,fc2]
                                [--aihwkit-python /opt/aihwkit-venv/bin/python]

Workload per layer (rows x cols incl. the bias column, P rank-1 updates per image):
conv1 16x26 (P=576), conv2 32x401 (P=64), fc1 128x513 (P=1), fc2 10x129 (P=1), a batch of
``--images`` images; x and d uniform in [-0.4, 0.4]; BL 10, lr = dw_min * BL so the
pulse probabilities are |x| and |d| (0 to 0.4, mean 0.2), update and BL management off;
the paper's RPU baseline device (constant_step, dw_min 0.001, 30 % dtod and c2c).

Timed, median of ``--repeats`` after one warm-up:

* ``rpuhw``: ``Periphery.update`` = pulse-train encoding + ``SimulatedArray.update``
  (numba engine) — the same work as aihwkit's ``tile.update(x, d)``;
  ``rpuhw_encode`` and ``rpuhw_array_update`` split it;
* ``rpuhw_torch``: the torch engine (closed forms + composition) on the same bits;
* ``reference``: pulse-by-pulse reference on the first ``--reference-updates`` updates;
* ``aihwkit``: aihwkit 1.2's ConstantStepDevice tile (fixed BL 10), run in the
  interpreter given by ``--aihwkit-python`` when ``import aihwkit`` works there.

Prints one JSON object: rank-1 updates/s and device-pulse events/s per engine and layer,
and ``ratio_vs_aihwkit`` (rpuhw throughput / aihwkit throughput, same run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numba
import torch

import rpuhw
from benchmarks._common import aihwkit_unavailable
from rpuhw.periphery import Periphery, PeripheryConfig
from rpuhw.sim import background
from rpuhw.sim.array import SimulatedArray
from rpuhw.sim.reference import reference_update

LAYERS = {"conv1": (16, 26, 576), "conv2": (32, 401, 64), "fc1": (128, 513, 1),
          "fc2": (10, 129, 1)}
BL, DW_MIN, AMPLITUDE = 10, 0.001, 0.4


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up (JIT compilation, allocations)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _rates(n_updates: int, events: float, seconds: float) -> dict[str, float]:
    return {"seconds": seconds, "rank1_updates_per_s": n_updates / seconds,
            "pulse_events_per_s": events / seconds}


def bench_layer(name: str, images: int, repeats: int, ref_updates: int, seed: int) -> dict:
    rows, cols, per_image = LAYERS[name]
    n = images * per_image
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(n, cols, generator=gen) * 2 - 1) * AMPLITUDE
    d = (torch.rand(n, rows, generator=gen) * 2 - 1) * AMPLITUDE
    events = float(BL * (d.abs().T @ x.abs()).sum())  # expected coincidences
    cfg = PeripheryConfig(update_management=False, bl=BL, lr=DW_MIN * BL)
    out: dict = {"rows": rows, "cols": cols, "rank1_updates": n,
                 "expected_pulse_events": events}

    array = SimulatedArray(rows, cols, seed=seed, engine="numba")
    per = Periphery(array, cfg, seed=seed)
    out["rpuhw"] = _rates(n, events, _median_time(lambda: per.update(x, d), repeats))
    packed = per.encode(x, d)
    out["rpuhw_encode"] = _rates(n, events, _median_time(lambda: per.encode(x, d), repeats))
    out["rpuhw_array_update"] = _rates(n, events,
                                       _median_time(lambda: array.update(packed), repeats))

    t_array = SimulatedArray(rows, cols, seed=seed, engine="torch")
    x_bits, d_bits = packed.to_bits()
    out["rpuhw_torch"] = _rates(n, events, _median_time(lambda: t_array.update(x_bits, d_bits),
                                                        max(1, repeats // 2)))

    m = min(n, ref_updates)
    ref_array = SimulatedArray(rows, cols, seed=seed, engine="torch")
    xs, ds = x_bits[:m], d_bits[:m]

    def run_ref():
        ref_array.weights = reference_update(ref_array.model, ref_array.state,
                                             ref_array.weights, xs, ds, ref_array.gen)

    ref_events = events * m / n
    out["reference"] = {**_rates(m, ref_events, _median_time(run_ref, 1)), "updates_timed": m}
    return out


def run_aihwkit(python: str, layers: list[str], images: int, repeats: int,
                seed: int) -> dict | str:
    """aihwkit's figures from its own interpreter, or the reason they are missing."""
    reason = aihwkit_unavailable(python)
    if reason:
        return reason
    script = Path(__file__).with_name("_aihwkit_update.py")
    cmd = [python, str(script), "--layers", ",".join(layers), "--images", str(images),
           "--repeats", str(repeats), "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        return f"aihwkit run failed: {proc.stderr.strip()[-500:]}"
    return json.loads(proc.stdout)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--layers", default="conv1,conv2,fc1,fc2")
    ap.add_argument("--reference-updates", type=int, default=576)
    ap.add_argument("--seed", type=int, default=0)
    default_aihw = "/opt/aihwkit-venv/bin/python"
    ap.add_argument("--aihwkit-python", default=default_aihw if Path(default_aihw).exists()
                    else "", help="interpreter where `import aihwkit` works")
    args = ap.parse_args(argv)
    # one update after another and nothing else to do meanwhile: background updates
    # (rpuhw.sim.background) would only add the hand-over to every timed call
    background.set_enabled(False)
    layers = [s for s in args.layers.split(",") if s]
    unknown = [s for s in layers if s not in LAYERS]
    if unknown:
        print(f"benchmarks.update: --layers: unknown {unknown} (known: {list(LAYERS)})",
              file=sys.stderr)
        return 2
    result: dict = {
        "benchmark": "update", "command": "python -m benchmarks.update " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "rpuhw_version": rpuhw.__version__, "torch": torch.__version__,
        "numba": numba.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(), "images": args.images, "bl": BL,
        "layers": {},
    }
    for i, name in enumerate(layers):
        result["layers"][name] = bench_layer(name, args.images, args.repeats,
                                             args.reference_updates, args.seed + i)
    aihw = run_aihwkit(args.aihwkit_python, layers, args.images, args.repeats, args.seed)
    if isinstance(aihw, str):
        result["aihwkit"] = {"skipped": aihw}
    else:
        result["aihwkit"] = {"version": aihw.get("aihwkit_version"),
                             "torch": aihw.get("torch_version")}
        for name in layers:
            a = aihw["layers"][name]
            mine = result["layers"][name]
            mine["aihwkit"] = {"seconds": a["seconds_per_call"],
                               "rank1_updates_per_s": a["rank1_updates_per_s"],
                               "pulse_events_per_s": a["pulse_events_per_s"]}
            mine["ratio_vs_aihwkit"] = {
                k: mine[k]["rank1_updates_per_s"] / a["rank1_updates_per_s"]
                for k in ("rpuhw", "rpuhw_array_update", "rpuhw_torch", "reference")}
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
