"""Training throughput of each training algorithm (issue 18): rpuhw and aihwkit 1.2.

    python -m benchmarks.algorithms [--algorithms sgd,mp,tt,...] [--images 300]
                                    [--warmup 20] [--seed 0]
                                    [--device drivers/emulators/hidden_device.yaml]
                                    [--aihwkit-python /opt/aihwkit-venv/bin/python]
                                    [--centre-a]

For every algorithm registered in :mod:`rpuhw.algorithms` (or those of
``--algorithms``; ``sgd`` is always run, it is the baseline of the costs): images/s
of the paper's LeNet (conv 1->16 5x5, tanh, maxpool 2, conv 16->32 5x5, tanh, maxpool
2, fc 512->128, tanh, fc 128->10), mnist5k training images in their stored order,
batch size 1, lr 0.01, every layer on ``sim:DEVICE`` (default the demo chip's
soft-bounds device, ``drivers/emulators/hidden_device.yaml``) with ``nm+bm+um``,
``position`` granularity, BL 10, the algorithm at its defaults (``LayerPlan.algorithm``),
one torch and one numba thread as ``rpuhw train`` sets them (``threads: 1``;
background updates at their default).

aihwkit 1.2's same algorithm runs in its own interpreter (``--aihwkit-python``; skipped
with the reason when ``import aihwkit`` fails there) by ``_aihwkit_algorithms.py``,
one process per algorithm, one torch thread (its fastest at batch 1) and
``OMP_NUM_THREADS=1``: ``sgd`` as ``SingleRPUConfig``, ``mp`` as
``DigitalRankUpdateRPUConfig(device=MixedPrecisionCompound(...))``, ``tt`` / ``ttv2`` /
``cttv2`` / ``agad`` as ``UnitCellRPUConfig`` with ``TransferCompound`` /
``BufferedTransferCompound`` / ``ChoppedTransferCompound`` / ``DynamicTransferCompound``
of two copies of the device. The device, IO and update settings are the device YAML's
through :func:`rpuhw.interop.aihwkit.tree_of_spec` (what ``to_aihwkit`` builds; the
transfer's forward and update parameters are the layer's own, as rpuhw reads A through
its periphery and writes C with the layer's update); the hyper-parameters are those
rpuhw's defaults resolve to on each layer (device-derived values such as ``mp``'s
granularity or ``tt``'s transfer learning rate included, converted to aihwkit's
scaled form), keys aihwkit's compound has, except ``centre_a``: false unless
``--centre-a`` is given (``tt`` and ``ttv2`` would otherwise centre A on its devices'
symmetry points while the model is built, ~1,700 alternating pulses per device,
docs/calibration.md section 8: minutes for LeNet, outside the timing anyway; per
image it adds one subtraction per read of A; aihwkit's compounds have no such step).
rpuhw-only keys and values rpuhw leaves
unresolved (None) are listed in the JSON (``not_passed``). An algorithm without an
aihwkit counterpart is reported as skipped. Both sides start from the same initial
weights (torch's default init under ``--seed``) and see the same images.

Each configuration trains ``--warmup`` images untimed (compilation, allocations), then
times ``--images`` images (forward, backward, optimizer step each). Prints one JSON
object: per algorithm the images/s, wall and CPU seconds and losses of each side, the
ratio rpuhw/aihwkit and the algorithm's cost per image relative to rpuhw's ``sgd``
(``sgd`` images/s over its images/s); the same two from the processes' CPU seconds
(``rpuhw_over_aihwkit_cpu``: aihwkit's CPU seconds over rpuhw's; ``cpu_cost_vs_sgd``),
less sensitive to other load on a shared machine (rpuhw's include its background
update thread), with the git commit, machine, versions and the
load average before and after (the machine may be shared: compare only within a run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numba
import torch

import rpuhw
from benchmarks._common import DEFAULT_AIHWKIT_PYTHON, aihwkit_unavailable
from benchmarks._whole_run import _cpu, _git, _load
from benchmarks.train import BL, LAYERS, LR, initial_model, summarize, train, write_inputs
from rpuhw.algorithms import ALGORITHMS, algorithm_class
from rpuhw.data import load_dataset
from rpuhw.nn import AnalogSGD, convert
from rpuhw.schedule import LayerPlan

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEVICE = "drivers/emulators/hidden_device.yaml"
MANAGEMENT = "nm+bm+um"

AIHWKIT_COMPOUND: dict[str, str | None] = {
    "sgd": None,  # SingleRPUConfig
    "mp": "MixedPrecisionCompound",
    "tt": "TransferCompound",
    "ttv2": "BufferedTransferCompound",
    "cttv2": "ChoppedTransferCompound",
    "agad": "DynamicTransferCompound",
}
"""rpuhw algorithm -> aihwkit 1.2 compound (None: a plain ``SingleRPUConfig``)."""


def overrides(algorithm: str, centre_a: bool) -> dict[str, Any]:
    """Hyper-parameters set away from the algorithm's defaults: ``centre_a: false``
    (A not centred on its symmetry points) unless ``centre_a``, for algorithms with
    that key."""
    fields = {f.name for f in dataclasses.fields(algorithm_class(algorithm).Params)}
    return {} if centre_a or "centre_a" not in fields else {"centre_a": False}


def plan_for(algorithm: str, device: str, centre_a: bool = True) -> LayerPlan:
    """The layer plan of every analog layer: ``sim:DEVICE``, nm+bm+um, position, BL 10,
    the algorithm at its defaults (with ``centre_a`` false: see :func:`overrides`)."""
    plan = LayerPlan(backend=f"sim:{device}", granularity="position",
                     periphery=LayerPlan.management(MANAGEMENT), algorithm=algorithm,
                     algorithm_params=overrides(algorithm, centre_a))
    if plan.periphery.bl != BL:
        raise RuntimeError(f"PeripheryConfig.bl default is {plan.periphery.bl}, expected {BL}")
    return plan


def build(algorithm: str, device: str, seed: int, centre_a: bool = True
          ) -> tuple[torch.nn.Module, AnalogSGD]:
    """rpuhw's analog LeNet (initial weights of ``seed``) with ``algorithm`` on every layer."""
    model = convert(initial_model(seed), {"default": plan_for(algorithm, device, centre_a)},
                    seed=seed)
    return model, AnalogSGD(model.parameters(), lr=LR)


def resolved_params(alg: Any, lr: float = LR) -> tuple[dict[str, Any], list[str]]:
    """The hyper-parameters a layer's algorithm object runs with, in aihwkit's form, and
    the keys left unresolved (None).

    An algorithm may say so itself (``resolved_params(lr)`` returning a mapping);
    otherwise a None field takes the object's attribute of the same name (a number, as
    ``mp``'s ``granularity``, or a method of the learning rate, as ``tt``'s
    ``transfer_lr(lr)``/``fast_lr(lr)``, divided by ``lr`` where the matching
    ``scale_*`` flag is set, aihwkit's convention)."""
    own = getattr(alg, "resolved_params", None)
    if callable(own):
        params = dict(own(lr))
    else:
        params = dataclasses.asdict(alg.params) if dataclasses.is_dataclass(alg.params) else {}
        for key, value in list(params.items()):
            if value is not None:
                continue
            attr = getattr(alg, key, None)
            if callable(attr):
                try:
                    v = float(attr(lr))
                except (TypeError, ValueError):
                    continue
                params[key] = v / lr if params.get(f"scale_{key}") else v
            elif isinstance(attr, (int, float)) and not isinstance(attr, bool):
                params[key] = float(attr)
    unresolved = sorted(k for k, v in params.items() if v is None)
    return {k: v for k, v in params.items() if v is not None}, unresolved


def layer_params(model: torch.nn.Module) -> tuple[dict[str, dict], list[str]]:
    """Per layer (conv1, conv2, fc1, fc2) the resolved hyper-parameters, and the union of
    the unresolved keys."""
    out, missing = {}, set()
    for name in LAYERS:
        params, unresolved = resolved_params(getattr(model, name).algorithm)
        out[name] = params
        missing.update(unresolved)
    return out, sorted(missing)


def bench_rpuhw(algorithm: str, device: str, x: torch.Tensor, y: torch.Tensor,
                warmup: int, images: int, seed: int, centre_a: bool = True) -> dict:
    """rpuhw's figures of one algorithm (one torch/numba thread, as ``rpuhw train``);
    ``setup_s``: building the model (A's centring included), not in the timing."""
    threads = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    numba.set_num_threads(1)
    try:
        t0 = time.perf_counter()
        model, opt = build(algorithm, device, seed, centre_a)
        setup_s = time.perf_counter() - t0
        params, unresolved = layer_params(model)
        train(model, opt, x, y, 0, warmup)
        t0, c0 = time.perf_counter(), time.process_time()
        losses = train(model, opt, x, y, warmup, warmup + images)
        out = summarize(time.perf_counter() - t0, losses, time.process_time() - c0)
        arrays = sum(len(getattr(model, n).algorithm.arrays) for n in LAYERS)
    finally:
        torch.set_num_threads(threads[0])
        numba.set_num_threads(min(threads[1], numba.config.NUMBA_NUM_THREADS))
    return {"torch_threads": 1, "numba_threads": 1, "arrays": arrays,
            "overrides": overrides(algorithm, centre_a), "setup_s": setup_s, **out,
            "params": params, "unresolved": unresolved}


def device_tree(device: str) -> dict:
    """aihwkit's ``SingleRPUConfig`` tree of the device YAML with rpuhw train's periphery
    (nm+bm+um, BL 10): what :func:`rpuhw.interop.aihwkit.to_aihwkit` builds."""
    from rpuhw.device_spec import load_device
    from rpuhw.interop.aihwkit import tree_of_spec

    return tree_of_spec(load_device(device))


def run_aihwkit(python: str, algorithm: str, tree: dict, params: dict[str, dict],
                x: torch.Tensor, y: torch.Tensor, warmup: int, images: int,
                seed: int) -> dict | str:
    """aihwkit's figures of one algorithm from its interpreter, or why they are missing."""
    compound = AIHWKIT_COMPOUND.get(algorithm, "missing")
    if compound == "missing":
        return f"aihwkit 1.2 has no counterpart of {algorithm}"
    script = Path(__file__).with_name("_aihwkit_algorithms.py")
    with tempfile.TemporaryDirectory(prefix="rpuhw-bench-alg-") as tmp:
        write_inputs(Path(tmp), x, y, seed)
        spec = {"algorithm": algorithm, "compound": compound, "config": tree,
                "layers": params, "lr": LR,
                "side_module": str(ROOT / "rpuhw" / "interop" / "_aihwkit_side.py")}
        (Path(tmp) / "config.json").write_text(json.dumps(spec))
        cmd = [python, str(script), "--data", tmp, "--warmup", str(warmup),
               "--images", str(images), "--seed", str(seed), "--threads", "1"]
        env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
                   MKL_NUM_THREADS="1")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        return f"aihwkit run failed: {proc.stderr.strip()[-500:]}"
    return json.loads(proc.stdout)


def parse_algorithms(value: str | None) -> list[str]:
    """The algorithms to run, ``sgd`` first (ValueError naming an unknown one)."""
    known = list(ALGORITHMS.names())
    names = known if not value else [v.strip() for v in value.split(",") if v.strip()]
    for n in names:
        if n not in known:
            raise ValueError(f"--algorithms: unknown training algorithm {n!r} "
                             f"(known: {', '.join(known)})")
    return ["sgd"] + [n for n in dict.fromkeys(names) if n != "sgd"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--algorithms", default=None,
                    help="comma-separated algorithms (default: every registered one)")
    ap.add_argument("--images", type=int, default=300, help="timed images per configuration")
    ap.add_argument("--warmup", type=int, default=20, help="untimed images before timing")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=DEFAULT_DEVICE,
                    help="device YAML of every array (backend sim:DEVICE)")
    ap.add_argument("--aihwkit-python",
                    default=DEFAULT_AIHWKIT_PYTHON if Path(DEFAULT_AIHWKIT_PYTHON).exists()
                    else "", help="interpreter where `import aihwkit` works ('' : skip)")
    ap.add_argument("--centre-a", action="store_true",
                    help="keep centre_a at its default (tt, ttv2: A centred on its "
                         "symmetry points at set-up, minutes for lenet); default: "
                         "centre_a false")
    args = ap.parse_args(argv)
    command = " ".join(["python -m benchmarks.algorithms",
                        *(argv if argv is not None else sys.argv[1:])])
    try:
        algorithms = parse_algorithms(args.algorithms)
    except ValueError as exc:
        print(f"benchmarks.algorithms: {exc}", file=sys.stderr)
        return 2
    if not Path(args.device).is_file():
        print(f"benchmarks.algorithms: --device {args.device}: no such file (give a device "
              "YAML, e.g. drivers/emulators/hidden_device.yaml)", file=sys.stderr)
        return 2
    data = load_dataset("mnist5k")
    need = args.warmup + args.images
    if args.images < 1 or args.warmup < 0 or need > len(data.x_train):
        print(f"benchmarks.algorithms: need --images >= 1, --warmup >= 0 and warmup + "
              f"images <= {len(data.x_train)} training images", file=sys.stderr)
        return 2
    x, y = data.x_train[:need].contiguous(), data.y_train[:need].contiguous()
    reason = aihwkit_unavailable(args.aihwkit_python)
    tree = device_tree(args.device) if reason is None else None

    result: dict = {
        "benchmark": "algorithms", "command": command, "git": _git(),
        "machine": {"node": platform.node(), "cpu": _cpu(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": {"rpuhw": rpuhw.__version__, "python": platform.python_version(),
                     "torch": torch.__version__, "numba": numba.__version__},
        "settings": {"network": "lenet", "dataset": data.name, "batch_size": 1, "lr": LR,
                     "bl": BL, "management": MANAGEMENT, "granularity": "position",
                     "backend": f"sim:{args.device}", "images": args.images,
                     "warmup": args.warmup, "seed": args.seed, "threads": 1,
                     "centre_a_default": args.centre_a},
        "aihwkit": {"python": args.aihwkit_python or None, "skipped": reason},
        "loadavg_before": _load(), "algorithms": {},
    }
    table = result["algorithms"]
    for name in algorithms:
        r = bench_rpuhw(name, args.device, x, y, args.warmup, args.images, args.seed,
                        args.centre_a)
        entry: dict = {"rpuhw": r}
        if reason is not None:
            entry["aihwkit"] = {"skipped": reason}
        else:
            a = run_aihwkit(args.aihwkit_python, name, tree, r["params"], x, y,
                            args.warmup, args.images, args.seed)
            if isinstance(a, str):
                entry["aihwkit"] = {"skipped": a}
            else:
                entry["aihwkit"] = {
                    "version": a.get("aihwkit_version"), "config": a.get("config"),
                    "torch_threads": a.get("torch_threads"),
                    "not_passed": sorted(set(a.get("not_passed", [])) | set(r["unresolved"])),
                    **summarize(a["seconds"], a["losses"], a.get("cpu_seconds"))}
        table[name] = entry
    base, base_cpu = (table["sgd"]["rpuhw"][k] for k in ("images_per_s", "cpu_seconds"))
    for entry in table.values():
        ips, cpu = entry["rpuhw"]["images_per_s"], entry["rpuhw"]["cpu_seconds"]
        entry["cost_vs_sgd"] = base / ips
        entry["cpu_cost_vs_sgd"] = cpu / base_cpu if base_cpu else None
        aips, acpu = entry["aihwkit"].get("images_per_s"), entry["aihwkit"].get("cpu_seconds")
        entry["rpuhw_over_aihwkit"] = ips / aips if aips else None
        entry["rpuhw_over_aihwkit_cpu"] = acpu / cpu if acpu and cpu else None
    result["loadavg_after"] = _load()
    json.dump(result, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
