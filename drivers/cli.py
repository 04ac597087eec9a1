"""The drivers' part of the ``rpuhw`` command line: ``rpuhw bench`` (check a bench) and
``rpuhw emulate`` (serve emulated instruments)."""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path

from rpuhw.cli.command import COMMANDS, Command, UsageError


@COMMANDS.register
class Bench(Command):
    """Validates the bench YAML (nothing is contacted when it is wrong), connects every
    instrument (model checked against its ``*IDN?``), puts the bench in its safe state,
    and with ``--read`` reads every wired device once and prints the weights and
    conductances. Outputs are off and relays open when it returns, whatever happens."""

    name = "bench"
    help = "check a bench YAML: connect, identify, safe state, read"
    description = "``rpuhw bench BENCH.yaml``: check a bench before using it."
    epilog = """examples:
  rpuhw bench bench.yaml            # validate, connect, identify, safe state
  rpuhw bench bench.yaml --read     # ... and read every wired device once
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("bench", help="bench YAML file")
        parser.add_argument("--read", action="store_true", help="read every wired device once")

    def run(self, args: argparse.Namespace) -> int:
        import torch

        from rpuhw.drivers.bench import BenchArray
        from rpuhw.drivers.bench_config import load_bench

        cfg = load_bench(args.bench)
        print(f"{args.bench}: {cfg.rows} x {cfg.cols} devices, bias scheme {cfg.bias_scheme}, "
              f"read {cfg.read.voltage} V, pulses {cfg.pulse.potentiation.amplitude} / "
              f"{cfg.pulse.depression.amplitude} V from the {cfg.pulse_source}, "
              f"limit {cfg.limits.v_max} V")
        with BenchArray(cfg) as bench:
            for name, idn in bench.snapshot()["instruments"].items():
                print(f"  {name:8s} {cfg.instruments[name].driver:15s} {idn}")
            if args.read:
                w = bench.read()
                g = cfg.weights.to_conductance(w.double())
                torch.set_printoptions(precision=3, linewidth=120)
                print(f"weights (w = {cfg.weights.w_min} .. {cfg.weights.w_max}):")
                print(w)
                print(f"conductance: {float(g.min()):.3e} .. {float(g.max()):.3e} S, "
                      f"mean {float(g.mean()):.3e} S")
            print(f"ok: {bench.stats()['messages']} messages; outputs off, relays open")
        return 0


@COMMANDS.register
class Emulate(Command):
    """Prints exactly one line ``ready BENCH.yaml`` on stdout once the servers listen and
    the bench YAML is written, then serves until SIGTERM/SIGINT (exit 0). Bad input
    writes nothing (exit 2)."""

    name = "emulate"
    help = "serve emulated bench instruments on 127.0.0.1"
    description = ("Serve emulated bench instruments (2600B or 2450 SMU, 707B switch matrix, "
                   "33500B pulser) around a simulated chip on 127.0.0.1.")
    epilog = """example:
  rpuhw emulate --rows 8 --cols 8 --bench-out bench.yaml &   # prints: ready bench.yaml
  rpuhw emulate --device truth.yaml --rows 4 --cols 5 --fault stuck:1,2 --bench-out b.yaml
  rpuhw emulate --pulse-source smu --bench-out b.yaml   # the 2600B's smua pulses (v/2)
faults: latency[:MS]  drop-after:N  no-terminator[:N]  error-after:N  stuck:R,C
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
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

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.drivers.emulators.bench import Emulator
        from rpuhw.errors import ConfigError

        out = _check_emulate_args(args)
        try:
            emu = Emulator(args.device, rows=args.rows, cols=args.cols, seed=args.seed,
                           latency_ms=args.latency_ms, faults=args.fault,
                           bias_scheme=args.bias_scheme, smu=args.smu,
                           tsp_link=not args.no_tsp_link, pulse_source=args.pulse_source)
        except (ConfigError, ValueError) as exc:
            key = "--fault" if str(exc).startswith("fault ") else "--device"
            raise UsageError(f"{key}: {exc}") from None
        stop = threading.Event()
        old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                old[sig] = signal.signal(sig, lambda *_: stop.set())
        try:
            emu.start()
            try:
                _write_bench(emu, out)
            except OSError as exc:
                raise UsageError(f"--bench-out: cannot write {str(out)!r} "
                                 f"({exc.strerror or exc})") from None
            print(f"ready {args.bench_out}", flush=True)
            while not stop.wait(0.2):
                pass
            return 0
        finally:
            emu.stop()
            for sig, handler in old.items():
                signal.signal(sig, handler)


def _write_bench(emu, out: Path) -> Path:
    """The emulator's bench YAML with two example regions, ``A`` and ``C`` (top and
    bottom half of the chip: on the 32 x 32 chip each holds conv1's 16 x 26 arrays),
    written atomically."""
    import yaml

    from rpuhw._io import atomic_write
    from rpuhw.drivers.bench_config import example_regions

    data = emu.bench_config()
    regions = example_regions(emu.rows, emu.cols)
    if regions:
        data["regions"] = regions
    return atomic_write(out, yaml.safe_dump(data, sort_keys=False, default_flow_style=None))


def _check_emulate_args(args: argparse.Namespace) -> Path:
    """Refuse bad ``rpuhw emulate`` input before anything starts; returns the bench path."""
    from rpuhw.drivers.emulators.server import parse_faults

    if args.rows < 1 or args.cols < 1:
        raise UsageError(f"--rows/--cols: must be >= 1, got {args.rows} x {args.cols}")
    if args.rows + args.cols > 72:
        raise UsageError(f"--rows/--cols: {args.rows} + {args.cols} = {args.rows + args.cols} "
                         "chip lines do not fit the switch matrix (at most 72)")
    if args.latency_ms < 0:
        raise UsageError(f"--latency-ms: must be >= 0, got {args.latency_ms}")
    if args.pulse_source == "smu" and (args.smu != "2600b" or args.bias_scheme != "v/2"):
        raise UsageError("--pulse-source: smu needs --smu 2600b and --bias-scheme v/2 (the "
                         "sense channel pulses while the bias channel holds V/2), got --smu "
                         f"{args.smu} --bias-scheme {args.bias_scheme}")
    try:
        parse_faults(args.fault)
    except ValueError as exc:
        raise UsageError(f"--fault: {exc}") from None
    out = Path(args.bench_out)
    if not out.parent.is_dir():
        raise UsageError(f"--bench-out: directory {str(out.parent)!r} does not exist")
    return out
