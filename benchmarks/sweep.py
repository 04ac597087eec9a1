"""8 short trials one after another in one process vs through ``rpuhw sweep`` (issue 20).

    python -m benchmarks.sweep [--train-limit 1000] [--epochs 1] [--num-cpus N]

The trials: lenet on mnist5k (``--train-limit`` training images, 200 test images) on the
demo's hidden device, algorithm ``sgd`` and ``mp`` x seeds 0-3. *serial*: one fresh Python
process trains them one after another (:func:`rpuhw.sweep.trial.run_trial`, the same code
as a sweep's trial with one CPU: one thread, no background update thread), as a
hand-written study loop does. *serial_default*: the same loop with ``rpuhw train``'s
default of a background update thread beside torch's (on a machine with 2 or more
CPUs a single run then already uses a second core part of the time). *sweep*: ``rpuhw
sweep`` in a fresh process with a local Ray of ``--num-cpus`` CPUs (default: all), one
CPU per trial. All times are wall clock from process start to exit (imports, Ray's start
and shutdown included). Prints JSON: the times, the ratios ``speedup`` (serial / sweep)
and ``speedup_vs_default`` (serial_default / sweep), the CPUs, the load average before
and after (the machine may be shared) and the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._whole_run import _cpu, _git, _load

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "drivers" / "emulators" / "hidden_device.yaml"


def sweep_file(train_limit: int, epochs: int) -> dict:
    """The benchmark's 8 trials as a sweep file."""
    return {"base": {"backend": f"sim:{DEVICE}", "epochs": epochs,
                     "train_limit": train_limit, "test_limit": 200},
            "grid": {"algorithm": ["sgd", "mp"], "seed": [0, 1, 2, 3]}}


def serial(spec_path: str, out: str, default_threads: bool = False) -> None:
    """Run the sweep's trials one after another in this process (the baseline);
    ``default_threads``: as ``rpuhw train`` runs them (its automatic background update
    thread), else as a sweep's trial with one CPU."""
    from rpuhw.config import from_mapping
    from rpuhw.sweep.engine import trial_payload
    from rpuhw.sweep.spec import load_spec
    from rpuhw.sweep.trial import run_trial
    from rpuhw.sweep.trials import expand
    from rpuhw.train import TrainConfig, train

    for t in expand(load_spec(spec_path)):
        if default_threads:
            cfg = from_mapping(TrainConfig, dict(t.config, progress=False, threads=1,
                                                 out=str(Path(out) / f"{t.id}.json")))
            train(cfg, log=lambda msg: None)
            continue
        rec = run_trial(trial_payload(t), str(Path(out) / t.id), cpus=1)
        if rec["status"] != "ok":
            raise SystemExit(f"trial {t.id} failed: {rec['error']}")


def _timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL,
                   env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train-limit", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count() or 1)
    p.add_argument("--serial-run", nargs=3, metavar=("SPEC", "OUT", "MODE"),
                   help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serial_run:
        spec, out, mode = args.serial_run
        serial(spec, out, default_threads=mode == "default")
        return 0
    import yaml

    load_before = _load()
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "sweep.yaml"
        spec.write_text(yaml.safe_dump(sweep_file(args.train_limit, args.epochs)))
        serial_s = _timed([sys.executable, "-m", "benchmarks.sweep", "--serial-run",
                           str(spec), str(Path(tmp) / "serial"), "one-cpu"])
        default_s = _timed([sys.executable, "-m", "benchmarks.sweep", "--serial-run",
                            str(spec), str(Path(tmp) / "serial_default"), "default"])
        sweep_s = _timed([sys.executable, "-m", "rpuhw.cli", "sweep", str(spec), "--out",
                          str(Path(tmp) / "sweep"), "--num-cpus", str(args.num_cpus)])
        rows = (Path(tmp) / "sweep" / "results.csv").read_text().splitlines()
        assert len(rows) == 9 and all(",ok," in r for r in rows[1:]), rows
    print(json.dumps({
        "benchmark": "sweep", "trials": 8, "train_limit": args.train_limit,
        "test_limit": 200, "epochs": args.epochs, "num_cpus": args.num_cpus,
        "serial_s": round(serial_s, 2), "serial_default_s": round(default_s, 2),
        "sweep_s": round(sweep_s, 2), "speedup": round(serial_s / sweep_s, 3),
        "speedup_vs_default": round(default_s / sweep_s, 3), "cpu": _cpu(),
        "load_before": load_before, "load_after": _load(), "git": _git()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
