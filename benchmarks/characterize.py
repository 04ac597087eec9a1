"""Characterisation wall time on the emulated bench against the instrument-time bound.

    python -m benchmarks.characterize [--rows 8] [--cols 8] [--devices 16] [--pulses 100]
                                      [--cycles 1] [--latency-ms 1]

Starts ``rpuhw emulate --latency-ms X`` in its own process (see
:func:`benchmarks.bench.start_emulator`), opens ``bench:BENCH.yaml`` and runs the
pulse-response protocol (``calibration.protocols.pulse_response``: per cycle a read,
``--pulses`` up pulses with a read after each, a read, ``--pulses`` down pulses with a
read after each; all chosen devices in lockstep) into a measurement CSV in a temporary
folder, as ``rpuhw characterize`` does. The emulator spends X ms before handling every
message, so ``messages x X`` (messages from ``BenchArray.stats()``) is the time the
instruments alone would take: the lower bound of the run. ``ratio = wall /
(messages x X)`` says how much the rest adds; ``overhead_ms_per_message`` is that rest per
message: the host (drivers, protocol, CSV rows), the socket round trip and the emulator's
own work (its nodal solve), which a real instrument would replace by its own. The same run
at latency 0 shows that overhead alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from benchmarks.bench import emulated_array


def run(rows: int, cols: int, devices: int, pulses: int, cycles: int,
        latency_ms: float) -> dict:
    """One pulse-response run on a fresh emulator; wall time and message counts."""
    from rpuhw.calibration.measurements import MeasurementWriter
    from rpuhw.calibration.protocols import parse_devices, pulse_response

    chosen = parse_devices(str(devices), rows, cols)
    steps = cycles * 2 * (pulses + 1)
    with emulated_array(rows, cols, latency_ms) as (arr, tmp):
        writer = MeasurementWriter(tmp / "meas.csv", {})
        before = arr.stats()["messages"]
        t0 = time.perf_counter()
        written = pulse_response(arr, chosen, pulses, cycles, writer, progress=False)
        wall = time.perf_counter() - t0
        msgs = arr.stats()["messages"] - before
        writer.finish()
    lower = msgs * latency_ms / 1000
    return {"latency_ms": latency_ms, "wall_s": round(wall, 3), "rows_written": written,
            "protocol_steps": steps, "messages": msgs,
            "messages_per_device_step": round(msgs / (steps * len(chosen)), 3),
            "instrument_time_s": round(lower, 3),
            "ratio": round(wall / lower, 3) if lower else None,
            "overhead_ms_per_message": round(1000 * (wall - lower) / msgs, 4) if msgs else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.characterize",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--pulses", type=int, default=100)
    ap.add_argument("--cycles", type=int, default=1)
    ap.add_argument("--latency-ms", type=float, default=1.0)
    args = ap.parse_args(argv)
    res = {"rows": args.rows, "cols": args.cols, "devices": args.devices,
           "pulses": args.pulses, "cycles": args.cycles, "cpu_count": os.cpu_count(),
           "python": platform.python_version(),
           "with_latency": run(args.rows, args.cols, args.devices, args.pulses, args.cycles,
                               args.latency_ms),
           "no_latency": run(args.rows, args.cols, args.devices, args.pulses, args.cycles,
                             0.0)}
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
