"""``rpuhw bench BENCH.yaml``: check a bench before using it.

Validates the bench YAML (nothing is contacted when it is wrong), connects every
instrument (model checked against its ``*IDN?``), puts the bench in its safe state,
and with ``--read`` reads every wired device once and prints the weights and
conductances. Outputs are off and relays open when it returns, whatever happens.
"""

from __future__ import annotations

import argparse
import sys

import torch

from rpuhw.errors import ConfigError, HardwareError

EPILOG = """examples:
  rpuhw bench bench.yaml            # validate, connect, identify, safe state
  rpuhw bench bench.yaml --read     # ... and read every wired device once
"""


def main(argv: list[str] | None = None, prog: str = "rpuhw bench") -> int:
    from rpuhw.drivers.bench import BenchArray
    from rpuhw.drivers.bench_config import load_bench

    ap = argparse.ArgumentParser(
        prog=prog, description=__doc__.split("\n\n")[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench", help="bench YAML file")
    ap.add_argument("--read", action="store_true", help="read every wired device once")
    args = ap.parse_args(argv)
    try:
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
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except HardwareError as exc:
        print(f"{prog}: hardware error: {exc}", file=sys.stderr)
        return 1
    return 0
