"""The device-requirements study: test error against each device parameter, on Ray.

    python examples/device_requirements/run.py --out runs/device_requirements
    python examples/device_requirements/run.py --out runs/dr_tiny --tiny     # ~1 minute
    python examples/device_requirements/run.py --out runs/device_requirements --docs
    python examples/device_requirements/run.py --out DIR --address HEAD:6379  # a cluster

Runs ``rpuhw sweep`` on :data:`SWEEP` (``sweep.yaml`` beside this file: lenet on mnist5k,
the paper's device with one parameter changed at a time, ``sgd`` and ``mp``, 3 seeds,
3 epochs), continuing the sweep when OUT already holds it (``--resume``), then
``rpuhw sweep-report OUT``. ``--tiny`` runs a reduced copy (40 training and 100 test
images, 1 epoch, seed 0, the first and last value of each axis) to check the pipeline;
``--docs`` writes the report's table and figures into docs/sweeps.md between
:data:`BEGIN` and :data:`END` with the command and the wall time. Other flags go to
``rpuhw sweep`` (``--num-cpus``, ``--address``, ``--cpus-per-trial``, ``--dry-run``).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SWEEP = HERE / "sweep.yaml"
DOCS = ROOT / "docs" / "sweeps.md"
BEGIN = "<!-- device-requirements study: run.py writes from here -->"
END = "<!-- device-requirements study: to here -->"
TINY = {"train_limit": 40, "test_limit": 100, "epochs": 1}


def tiny(data: dict) -> dict:
    """The reduced copy of the sweep file (``--tiny``)."""
    out = {"base": {**data["base"], **TINY}, "grid": []}
    for g in data["grid"]:
        out["grid"].append({k: ([0] if k == "seed" else [v[0], v[-1]])
                            for k, v in g.items()})
    return out


def write_docs(out: Path, command: str, wall_s: float, ncpu: str) -> None:
    """The report's table and figures into docs/sweeps.md (figures copied beside it)."""
    report = (out / "report.md").read_text().splitlines()
    body = []
    for line in report[1:]:  # without the report's title
        if line.startswith("![") and "](" in line:
            name = line[line.index("](") + 2:-1]
            target = f"sweeps_device_requirements_{name.removeprefix('plot_')}"
            shutil.copyfile(out / name, DOCS.parent / target)
            line = line.replace(f"]({name})", f"]({target})")
        body.append(line)
    text = DOCS.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{DOCS}: markers {BEGIN!r} / {END!r} not found")
    block = (f"{BEGIN}\nCommand: `{command}` ({wall_s / 60:.0f} min wall time on {ncpu}).\n\n"
             + "\n".join(body).strip() + f"\n{END}")
    head, rest = text.split(BEGIN, 1)
    DOCS.write_text(head + block + rest.split(END, 1)[1])


def sweep_wall_s(out: Path) -> float | None:
    """Seconds from the sweep's start (``sweep.json``'s ``created``) to its last trial's
    result (the newest ``trial.json``): the study's wall time, also when this call only
    resumed a finished sweep (time between an interruption and its resume included)."""
    import json
    from datetime import datetime

    meta, results = out / "sweep.json", list(out.glob("trials/*/trial.json"))
    if not meta.exists() or not results:
        return None
    created = json.loads(meta.read_text()).get("created")
    if not created:
        return None
    start = datetime.strptime(created, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    return max(f.stat().st_mtime for f in results) - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="the sweep's folder")
    p.add_argument("--tiny", action="store_true", help="a reduced copy, to check the pipeline")
    p.add_argument("--docs", action="store_true", help="write table and figures into "
                   "docs/sweeps.md")
    args, sweep_flags = p.parse_known_args(argv)
    from rpuhw.cli import main as rpuhw

    out = Path(args.out)
    spec = SWEEP
    data = yaml.safe_load(SWEEP.read_text())
    if args.tiny:
        spec = out.parent / f"{out.name}.sweep.yaml"
        spec.parent.mkdir(parents=True, exist_ok=True)
        spec.write_text(yaml.safe_dump(tiny(data), sort_keys=False))
    argv_sweep = ["sweep", str(spec), "--out", str(out), *sweep_flags]
    if (out / "sweep.json").exists() and "--resume" not in sweep_flags:
        argv_sweep.append("--resume")
    t0 = time.perf_counter()
    status = rpuhw(argv_sweep)
    wall = time.perf_counter() - t0
    if status or "--dry-run" in sweep_flags:
        return status
    status = rpuhw(["sweep-report", str(out)])
    if status == 0 and args.docs:
        import os

        command = "python examples/device_requirements/run.py " + " ".join(
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--docs")
        write_docs(out, command, sweep_wall_s(out) or wall, f"{os.cpu_count()} CPUs")
        print(f"wrote {DOCS}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
