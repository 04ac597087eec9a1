"""Round trips and wall time of a BenchArray on the emulated bench.

    python -m benchmarks.bench [--rows 8] [--cols 8] [--latency-ms 1] [--repeats 3]

Starts ``rpuhw emulate`` in its own process (so the emulator's work does not
share this interpreter), opens ``bench:BENCH.yaml``, and times a read of every
device and a pulse program (every device 1-3 pulses, random signs), once per pulse
source: ``pulse_program`` with the 33500B (two messages per pulsed device, strictly
sequential), ``pulse_program_smu`` with ``--pulse-source smu`` (the 2600B's sense
channel pulses: one message per device, pipelined). The emulator spends
``--latency-ms`` on every message it receives, so ``messages x latency`` is the
instrument-time lower bound of an operation; ``ratio = wall / (messages x latency)``
says how much the host adds (target: at most 1.1). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch


def start_emulator(rows: int, cols: int, latency_ms: float, out: Path,
                   pulse_source: str = "generator") -> subprocess.Popen:
    """``rpuhw emulate`` in a subprocess; returns once it printed ``ready``."""
    cmd = [sys.executable, "-m", "rpuhw.cli", "emulate", "--rows", str(rows), "--cols",
           str(cols), "--latency-ms", str(latency_ms), "--pulse-source", pulse_source,
           "--bench-out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    line = proc.stdout.readline()
    if not line.startswith("ready"):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    return proc


@contextmanager
def emulated_array(rows: int, cols: int, latency_ms: float, pulse_source: str = "generator"):
    """``open_array("bench:...")`` on a fresh ``rpuhw emulate`` subprocess (pulses from the
    33500B, or from the 2600B's sense channel with ``pulse_source="smu"``); yields
    ``(array, tmp_dir)``; closes the array and stops the emulator on every exit path."""
    from rpuhw import open_array

    with tempfile.TemporaryDirectory() as tmp:
        bench_yaml = Path(tmp) / "bench.yaml"
        proc = start_emulator(rows, cols, latency_ms, bench_yaml, pulse_source)
        try:
            with open_array(f"bench:{bench_yaml}", rows, cols) as arr:
                yield arr, Path(tmp)
        finally:
            proc.terminate()
            proc.wait(timeout=10)


def _measure(bench, op, repeats: int) -> dict:
    walls, msgs = [], []
    for _ in range(repeats):
        before = bench.stats()["messages"]
        t0 = time.perf_counter()
        op()
        walls.append(time.perf_counter() - t0)
        msgs.append(bench.stats()["messages"] - before)
    best = min(range(repeats), key=lambda k: walls[k])
    return {"wall_s": walls[best], "messages": msgs[best]}


def run(rows: int, cols: int, latency_ms: float, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(1, 4, (rows, cols), generator=g)
    signs = torch.randint(0, 2, (rows, cols), generator=g) * 2 - 1
    program = counts * signs
    with emulated_array(rows, cols, latency_ms) as (arr, _):
        read = _measure(arr, arr.read, repeats)
        pulse = _measure(arr, lambda: arr.pulse(program), repeats)
    with emulated_array(rows, cols, latency_ms, pulse_source="smu") as (arr, _):
        pulse_smu = _measure(arr, lambda: arr.pulse(program), repeats)
    out = {}
    for name, r, source in (("read_all", read, None), ("pulse_program", pulse, "generator"),
                            ("pulse_program_smu", pulse_smu, "smu")):
        lower = r["messages"] * latency_ms / 1000
        out[name] = {**({"pulse_source": source} if source else {}), **r,
                     "messages_per_device": r["messages"] / (rows * cols),
                     "instrument_time_s": lower,
                     "ratio": r["wall_s"] / lower if lower else None}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--latency-ms", type=float, default=1.0)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    res = {"rows": args.rows, "cols": args.cols, "latency_ms": args.latency_ms,
           **run(args.rows, args.cols, args.latency_ms, args.repeats),
           "no_latency": run(args.rows, args.cols, 0.0, args.repeats)}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
