"""``rpuhw emulate``: serve an emulated bench on 127.0.0.1 until SIGTERM/SIGINT.

Prints exactly one line ``ready BENCH.yaml`` on stdout once the servers listen
and the bench YAML is written. Bad input prints one line
``rpuhw emulate: error: ...`` naming the argument on stderr and exits with 2,
having written nothing.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

PROG = "rpuhw emulate"
EPILOG = """example:
  rpuhw emulate --rows 8 --cols 8 --bench-out bench.yaml &   # prints: ready bench.yaml
  rpuhw emulate --device truth.yaml --rows 4 --cols 5 --fault stuck:1,2 --bench-out b.yaml
  rpuhw emulate --pulse-source smu --bench-out b.yaml   # the 2600B's smua pulses (v/2)
faults: latency[:MS]  drop-after:N  no-terminator[:N]  error-after:N  stuck:R,C
"""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Serve emulated bench instruments (2600B or 2450 SMU, "
                "707B switch matrix, 33500B pulser) around a simulated chip on 127.0.0.1.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", metavar="TRUTH.yaml",
                   help="truth device YAML with a conductance: block (default: packaged "
                        "hidden device)")
    p.add_argument("--rows", type=int, default=8, help="chip rows (default 8)")
    p.add_argument("--cols", type=int, default=8, help="chip columns (default 8)")
    p.add_argument("--seed", type=int, default=0, help="chip seed (default 0)")
    p.add_argument("--latency-ms", type=float, default=0.0,
                   help="delay before every message (ms)")
    p.add_argument("--fault", action="append", default=[], metavar="KIND[:ARG]",
                   help="inject a fault (repeatable), see below")
    p.add_argument("--bias-scheme", default="v/2", choices=["v/2", "v/3"])
    p.add_argument("--smu", default="2600b", choices=["2600b", "2450"])
    p.add_argument("--no-tsp-link", action="store_true",
                   help="with a 2600B, do not declare the 707B as TSP-Link node 2")
    p.add_argument("--pulse-source", default="generator", choices=["generator", "smu"],
                   help="who pulses: the 33500B (default) or the 2600B's sense channel "
                        "with PulseVMeasureI (needs --smu 2600b, --bias-scheme v/2); "
                        "chooses the bench YAML written")
    p.add_argument("--bench-out", required=True, metavar="BENCH.yaml",
                   help="where to write the bench YAML")
    return p


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the emulator; returns the exit status (0 after SIGTERM/SIGINT, 2 on bad input)."""
    from rpuhw.drivers.emulators.bench import Emulator
    from rpuhw.drivers.emulators.server import parse_faults
    from rpuhw.errors import ConfigError

    try:
        args = build_parser().parse_args(argv)
    except _UsageError as exc:
        return _fail(str(exc))
    if args.rows < 1 or args.cols < 1:
        return _fail(f"--rows/--cols: must be >= 1, got {args.rows} x {args.cols}")
    if args.rows + args.cols > 72:
        return _fail(f"--rows/--cols: {args.rows} + {args.cols} = {args.rows + args.cols} chip "
                     "lines do not fit the switch matrix (at most 72)")
    if args.latency_ms < 0:
        return _fail(f"--latency-ms: must be >= 0, got {args.latency_ms}")
    if args.pulse_source == "smu" and (args.smu != "2600b" or args.bias_scheme != "v/2"):
        return _fail("--pulse-source: smu needs --smu 2600b and --bias-scheme v/2 (the sense "
                     "channel pulses while the bias channel holds V/2), got --smu "
                     f"{args.smu} --bias-scheme {args.bias_scheme}")
    try:
        parse_faults(args.fault)
    except ValueError as exc:
        return _fail(f"--fault: {exc}")
    out = Path(args.bench_out)
    if not out.parent.is_dir():
        return _fail(f"--bench-out: directory {str(out.parent)!r} does not exist")
    try:
        emu = Emulator(args.device, rows=args.rows, cols=args.cols, seed=args.seed,
                       latency_ms=args.latency_ms, faults=args.fault,
                       bias_scheme=args.bias_scheme, smu=args.smu,
                       tsp_link=not args.no_tsp_link, pulse_source=args.pulse_source)
    except (ConfigError, ValueError) as exc:
        key = "--fault" if str(exc).startswith("fault ") else "--device"
        return _fail(f"{key}: {exc}")

    stop = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    old = {}
    if in_main:
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        emu.start()
        try:
            emu.write_bench(out)
        except OSError as exc:
            return _fail(f"--bench-out: cannot write {str(out)!r} ({exc.strerror or exc})")
        print(f"ready {args.bench_out}", flush=True)
        while not stop.wait(0.2):
            pass
        return 0
    finally:
        emu.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
