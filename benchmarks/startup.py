"""Start-up of rpuhw's commands, in fresh processes, against ``python -c "import torch"``.

``python -m benchmarks.startup [--repeats 5]`` prints JSON: for each command, the
seconds from process start to exit (median and range over the repeats, interleaved
with the baseline), and the median beyond ``import torch`` measured in the same round.
The training commands train one image and test one (``--train-limit 1 --test-limit 1``),
so their time is start-up: imports, data, model, the kernels' first call. The first
``sim`` run uses an empty kernel cache (``RPUHW_CACHE_DIR`` in a temporary folder: it
compiles); every later run finds the cache warm, as a user's second run does.
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

from benchmarks._whole_run import _cpu, _git, _load, _median

ROOT = Path(__file__).resolve().parents[1]
DEVICE = ROOT / "drivers" / "emulators" / "hidden_device.yaml"


def commands(out: Path) -> dict[str, list[str]]:
    """The timed command lines (``rpuhw`` through this interpreter)."""
    rpuhw = [sys.executable, "-m", "rpuhw.cli"]
    one = ["--epochs", "1", "--train-limit", "1", "--test-limit", "1", "--no-progress"]
    return {
        "import torch": [sys.executable, "-c", "import torch"],
        "rpuhw --help": [*rpuhw, "--help"],
        "rpuhw models": [*rpuhw, "models"],
        "rpuhw device hidden_device.yaml": [*rpuhw, "device", str(DEVICE)],
        "rpuhw train --backend float (1 image)": [*rpuhw, "train", "--backend", "float",
                                                  *one, "--out", str(out / "f.json")],
        "rpuhw train --backend ideal (1 image)": [*rpuhw, "train", "--backend", "ideal",
                                                  "--management", "nm+bm+um", *one,
                                                  "--out", str(out / "i.json")],
        "rpuhw train --backend sim (1 image)": [*rpuhw, "train", "--backend", "sim",
                                                "--management", "nm+bm+um", *one,
                                                "--out", str(out / "s.json")],
    }


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Seconds from start to exit of ``cmd`` (output discarded; a failure raises)."""
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="rounds of every command")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "RPUHW_CACHE_DIR": str(Path(tmp) / "cache")}
        cmds = commands(Path(tmp))
        load_before = _load()
        cold = timed(cmds["rpuhw train --backend sim (1 image)"], env)
        for name in ("rpuhw train --backend ideal (1 image)",):  # fill the cache untimed
            timed(cmds[name], env)
        times: dict[str, list[float]] = {name: [] for name in cmds}
        beyond: dict[str, list[float]] = {name: [] for name in cmds if name != "import torch"}
        for _ in range(args.repeats):
            torch_s = timed(cmds["import torch"], env)
            times["import torch"].append(torch_s)
            for name, cmd in cmds.items():
                if name == "import torch":
                    continue
                t = timed(cmd, env)
                times[name].append(t)
                beyond[name].append(t - torch_s)
    result = {
        "benchmark": "startup",
        "command": "python -m benchmarks.startup " + " ".join(argv or sys.argv[1:]),
        **_git(),
        "python": sys.version.split()[0],
        "cpu": _cpu(),
        "cpu_count": os.cpu_count(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "repeats": args.repeats,
        "sim_first_run_empty_cache_s": cold,
        "seconds": {name: {"median": _median(v), "min": min(v), "max": max(v)}
                    for name, v in times.items()},
        "median_beyond_import_torch_s": {name: _median(v) for name, v in beyond.items()},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
