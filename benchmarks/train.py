"""Training throughput of the paper's LeNet at batch size 1: torch, rpuhw and aihwkit.

    python -m benchmarks.train [--images 300] [--warmup 20] [--seed 0]
                               [--aihwkit-python /opt/aihwkit-venv/bin/python]
                               [--profile N] [--threads N]
    python -m benchmarks.train --whole-run [--sizes 500,2000,4000] [--repeats 1]
                               [--test-images 200] [--aihwkit-python ...]

``--whole-run`` times whole ``rpuhw train`` runs (fresh process to results file) against
whole aihwkit runs instead; see :mod:`benchmarks._whole_run`. What follows describes
the default mode (steady-state images/s inside one process).

Network (the paper's): conv 1->16 5x5, tanh, maxpool 2, conv 16->32 5x5, tanh,
maxpool 2, flatten 512, fc 512->128, tanh, fc 128->10, cross-entropy on the logits;
mnist5k training images in their stored order, batch size 1, lr 0.01. All three
configurations start from the same initial weights (torch's default init under
``--seed``) and see the same images:

* ``torch``: floating point, ``nn.Conv2d`` / ``nn.Linear`` + ``torch.optim.SGD``;
* ``rpuhw``: every layer on ``sim`` (the paper's RPU baseline device) with full
  management (``LayerPlan.management("nm+bm+um")``), ``position`` granularity, BL 10,
  through ``convert`` and ``AnalogSGD``;
* ``rpuhw_no_background``: the same with background updates off
  (:mod:`rpuhw.sim.background`): one thread does everything. ``rpuhw`` keeps the
  default, on with two or more CPUs: the compiled part of each layer's update runs
  on one background thread, overlapping the next layer's update and the next image;
* ``aihwkit``: aihwkit 1.2, ``SingleRPUConfig(device=ConstantStepDevice())``, fixed
  BL 10, update management on, update-BL management off, IO defaults (noise and
  bound management on), ``AnalogSGD``; run by ``_aihwkit_train.py`` in the
  interpreter given by ``--aihwkit-python`` (skipped, with the reason, when
  ``import aihwkit`` fails there). The images and initial weights reach it as
  ``.npy`` files in a temporary folder.

Each configuration trains ``--warmup`` images untimed (numba compilation, allocations),
then times ``--images`` images (forward, backward, optimizer step each). Prints one
JSON object: per configuration the wall seconds, ``cpu_seconds`` (process CPU time of
all threads: above the wall time when threads run or spin in parallel), images/s, the
mean training loss over the timed images and over their first and last 50 (a learning
run's last-50 mean is below its first-50 mean); the ratios rpuhw/aihwkit and
rpuhw/torch, versions, thread counts and the load average before and after (the
machine may be shared).

``--profile N`` additionally runs cProfile over N images of the rpuhw configuration
(a fresh model, after its warm-up; not part of the timings) and reports the ten
``rpuhw`` functions with the largest cumulative time and the ten with the largest own
time. ``--threads N`` sets torch's and numba's thread counts (and aihwkit's torch
threads, and OMP_NUM_THREADS / OPENBLAS_NUM_THREADS of its process) to N; by default
each library keeps its own default. rpuhw's background update thread (in ``rpuhw``
only) runs its kernels with one numba thread fewer (at least one). The ratios compare both
rpuhw configurations with aihwkit.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import rpuhw
from benchmarks._common import aihwkit_unavailable
from rpuhw.data import load_dataset
from rpuhw.models import LeNet
from rpuhw.nn import AnalogSGD, convert
from rpuhw.schedule import LayerPlan
from rpuhw.sim import background

LR = 0.01
BL = 10
LAYERS = ("conv1", "conv2", "fc1", "fc2")
WINDOW = 50


def initial_model(seed: int) -> LeNet:
    torch.manual_seed(seed)
    return LeNet()


def rpuhw_plan() -> LayerPlan:
    return LayerPlan(backend="sim", granularity="position",
                     periphery=LayerPlan.management("nm+bm+um"))


def build(kind: str, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = initial_model(seed)
    if kind == "torch":
        return model, torch.optim.SGD(model.parameters(), lr=LR)
    plan = rpuhw_plan()
    if plan.periphery.bl != BL:
        raise RuntimeError(f"PeripheryConfig.bl default is {plan.periphery.bl}, expected {BL}")
    model = convert(model, {"default": plan}, seed=seed)
    return model, AnalogSGD(model.parameters(), lr=LR)


def train(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
          start: int, stop: int) -> list[float]:
    model.train()
    losses = []
    for i in range(start, stop):
        opt.zero_grad()
        loss = F.cross_entropy(model(x[i:i + 1]), y[i:i + 1])
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def summarize(seconds: float, losses: list[float], cpu_seconds: float | None) -> dict:
    n = len(losses)
    w = min(WINDOW, n)
    first, last = sum(losses[:w]) / w, sum(losses[-w:]) / w
    return {"seconds": seconds, "images_per_s": n / seconds, "cpu_seconds": cpu_seconds,
            "mean_loss": sum(losses) / n, f"first{WINDOW}_mean_loss": first,
            f"last{WINDOW}_mean_loss": last, "loss_decreased": last < first}


def bench(kind: str, x: torch.Tensor, y: torch.Tensor, warmup: int, images: int,
          seed: int) -> dict:
    model, opt = build(kind, seed)
    train(model, opt, x, y, 0, warmup)
    t0, c0 = time.perf_counter(), time.process_time()
    losses = train(model, opt, x, y, warmup, warmup + images)
    return summarize(time.perf_counter() - t0, losses, time.process_time() - c0)


def profile_rpuhw(x, y, warmup: int, images: int, seed: int, top: int = 10) -> dict:
    """cProfile over ``images`` images of the rpuhw configuration (after warm-up)."""
    model, opt = build("rpuhw", seed)
    train(model, opt, x, y, 0, warmup)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    train(model, opt, x, y, warmup, warmup + images)
    prof.disable()
    wall = time.perf_counter() - t0
    stats = pstats.Stats(prof)
    root = str(Path(rpuhw.__file__).parent)
    rows = []
    for (path, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.stats.items():
        if path.startswith(root):
            rows.append({"function": f"{Path(path).relative_to(root.rsplit('/', 1)[0])}:"
                                     f"{line}({func})",
                         "calls": ncalls, "tottime_s": round(tottime, 4),
                         "cumtime_s": round(cumtime, 4),
                         "cum_fraction_of_wall": round(cumtime / wall, 3)})
    by_cum = sorted(rows, key=lambda r: -r["cumtime_s"])[:top]
    by_self = sorted(rows, key=lambda r: -r["tottime_s"])[:top]
    return {"images": images, "wall_s_profiled": wall, "top_cumulative": by_cum,
            "top_self": by_self}


def write_inputs(folder: Path, x: torch.Tensor, y: torch.Tensor, seed: int) -> None:
    np.save(folder / "images.npy", x.numpy().astype(np.float32))
    np.save(folder / "labels.npy", y.numpy().astype(np.int64))
    model = initial_model(seed)
    for name in LAYERS:
        layer = getattr(model, name)
        np.save(folder / f"{name}.weight.npy", layer.weight.detach().numpy())
        np.save(folder / f"{name}.bias.npy", layer.bias.detach().numpy())


def run_aihwkit(python: str, x: torch.Tensor, y: torch.Tensor, warmup: int, images: int,
                seed: int, threads: int | None = None) -> dict | str:
    """aihwkit's figures from its own interpreter, or the reason they are missing."""
    reason = aihwkit_unavailable(python)
    if reason:
        return reason
    script = Path(__file__).with_name("_aihwkit_train.py")
    with tempfile.TemporaryDirectory(prefix="rpuhw-bench-train-") as tmp:
        write_inputs(Path(tmp), x, y, seed)
        cmd = [python, str(script), "--data", tmp, "--warmup", str(warmup),
               "--images", str(images), "--seed", str(seed)]
        env = dict(os.environ)
        if threads is not None:
            cmd += ["--threads", str(threads)]
            env.update(OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        return f"aihwkit run failed: {proc.stderr.strip()[-500:]}"
    return json.loads(proc.stdout)


def _load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": one, "5min": five, "15min": fifteen}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300, help="timed images per configuration")
    ap.add_argument("--warmup", type=int, default=20, help="untimed images before timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also cProfile N images of the rpuhw configuration")
    ap.add_argument("--threads", type=int, default=None, metavar="N",
                    help="torch and numba threads here, torch threads in aihwkit's run")
    default_aihw = "/opt/aihwkit-venv/bin/python"
    ap.add_argument("--aihwkit-python", default=default_aihw if Path(default_aihw).exists()
                    else "", help="interpreter where `import aihwkit` works")
    ap.add_argument("--whole-run", action="store_true",
                    help="images/s from process start to results file: rpuhw train vs "
                         "aihwkit, fresh processes (benchmarks/_whole_run.py)")
    ap.add_argument("--sizes", default="500,2000,4000",
                    help="--whole-run: training images per run, comma-separated")
    ap.add_argument("--repeats", type=int, default=1, help="--whole-run: repetitions")
    ap.add_argument("--test-images", type=int, default=200,
                    help="--whole-run: test images evaluated at the end of each run")
    args = ap.parse_args(argv)
    command = " ".join(["python -m benchmarks.train",
                        *(argv if argv is not None else sys.argv[1:])])
    if args.whole_run:
        return main_whole_run(args, command)
    if args.threads is not None:
        if args.threads < 1:
            print("benchmarks.train: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    data = load_dataset("mnist5k")
    need = args.warmup + args.images
    if (args.images < 1 or args.warmup < 0 or args.profile < 0
            or args.warmup + max(args.images, args.profile) > len(data.x_train)):
        print(f"benchmarks.train: need --images >= 1, --warmup >= 0, --profile >= 0 and "
              f"warmup + images (and warmup + profile) <= {len(data.x_train)} training "
              "images", file=sys.stderr)
        return 2
    x, y = data.x_train[:need].contiguous(), data.y_train[:need].contiguous()

    result: dict = {
        "benchmark": "train", "command": command,
        "rpuhw_version": rpuhw.__version__, "torch": torch.__version__,
        "numba": numba.__version__, "python": platform.python_version(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "numba_threads": numba.get_num_threads(), "dataset": data.name,
        "images": args.images, "warmup": args.warmup, "batch_size": 1, "lr": LR, "bl": BL,
        "seed": args.seed, "loadavg_before": _load(), "configs": {},
    }
    configs = result["configs"]
    configs["torch"] = bench("torch", x, y, args.warmup, args.images, args.seed)
    plan = rpuhw_plan()
    for name, flag in (("rpuhw", None), ("rpuhw_no_background", False)):
        background.set_enabled(flag)
        configs[name] = {
            "backend": plan.backend, "management": "nm+bm+um",
            "granularity": plan.granularity, "background_updates": background.enabled(),
            **bench("rpuhw", x, y, args.warmup, args.images, args.seed)}
    background.set_enabled(None)
    aihw = run_aihwkit(args.aihwkit_python, x, y, args.warmup, args.images, args.seed,
                       args.threads)
    if isinstance(aihw, str):
        configs["aihwkit"] = {"skipped": aihw}
    else:
        configs["aihwkit"] = {"version": aihw.get("aihwkit_version"),
                              "torch": aihw.get("torch_version"),
                              "torch_threads": aihw.get("torch_threads"),
                              "env_threads": aihw.get("env_threads"),
                              "config": aihw.get("config"),
                              **summarize(aihw["seconds"], aihw["losses"],
                                          aihw.get("cpu_seconds"))}
    result["loadavg_after"] = _load()
    ips = {k: v["images_per_s"] for k, v in configs.items() if "images_per_s" in v}
    result["ratios"] = {"rpuhw_over_torch": ips["rpuhw"] / ips["torch"]}
    for name in ("rpuhw", "rpuhw_no_background"):
        result["ratios"][f"{name}_over_aihwkit"] = (ips[name] / ips["aihwkit"]
                                                    if "aihwkit" in ips else None)
    if args.profile > 0:
        m = args.warmup + args.profile
        result["rpuhw_profile"] = profile_rpuhw(data.x_train[:m].contiguous(),
                                                data.y_train[:m].contiguous(),
                                                args.warmup, args.profile, args.seed)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


def main_whole_run(args: argparse.Namespace, command: str) -> int:
    """``--whole-run``: check the arguments, run, print the JSON."""
    try:
        sizes = [int(v) for v in args.sizes.split(",")]
    except ValueError:
        sizes = []
    if (not sizes or min(sizes) < 1 or max(sizes) > 4000 or args.repeats < 1
            or not 1 <= args.test_images <= 1000 or args.threads is not None
            or args.profile):
        print("benchmarks.train: --whole-run needs --sizes of 1..4000 images (mnist5k's "
              "training set), --repeats >= 1, --test-images 1..1000, and no --threads or "
              "--profile (each side runs at its own best setting)", file=sys.stderr)
        return 2
    from benchmarks._whole_run import whole_run

    result = whole_run(sizes, args.repeats, args.test_images, args.aihwkit_python, command)
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
