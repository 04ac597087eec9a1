"""The commands ``rpuhw sweep``, ``rpuhw sweep-report`` and ``rpuhw tune``.

Everything a user can get wrong (the sweep file, an axis, a device key, ``--address``,
``--resume`` on another sweep's folder) is checked before Ray starts: one line, exit 2.
Ray and Optuna are imported inside ``run`` only.
"""

from __future__ import annotations

import argparse
import sys

from rpuhw.cli.command import Command, UsageError

SWEEP_EPILOG = """examples:
  rpuhw sweep sweep.yaml --out runs/study --dry-run
  rpuhw sweep sweep.yaml --out runs/study --cpus-per-trial 1
  rpuhw sweep sweep.yaml --out runs/study --resume          # after an interruption
  rpuhw sweep sweep.yaml --out runs/study --address HEAD:6379   # a Ray cluster
  rpuhw sweep-report runs/study

exit status: 0 the sweep ran (failed trials are recorded in results.csv), 2 bad input
(nothing started), 130 interrupted (continue with --resume). See docs/sweeps.md.
"""


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="an existing Ray cluster (HOST:PORT, ray://HOST:PORT, "
                   "auto); default: start a local Ray with this machine's CPUs")
    p.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")
    p.add_argument("--max-concurrent", type=int, metavar="N",
                   help="at most N trials at once (default: as the CPUs allow)")
    p.add_argument("--cpus-per-trial", type=int, default=1, metavar="N",
                   help="CPUs of each trial, also its torch and numba threads (default 1)")


def _ray_options(args: argparse.Namespace):
    from rpuhw.sweep.engine import RayOptions

    for flag in ("num_cpus", "max_concurrent", "cpus_per_trial"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise UsageError(f"--{flag.replace('_', '-')}: must be >= 1, got {v}")
    if args.address and args.num_cpus:
        raise UsageError("--num-cpus applies to a local Ray only, not with --address")
    return RayOptions(address=args.address, num_cpus=args.num_cpus,
                      cpus_per_trial=args.cpus_per_trial, max_concurrent=args.max_concurrent)


class Sweep(Command):
    name = "sweep"
    help = "run a sweep of training runs (grid, random or Optuna search) on Ray"
    epilog = SWEEP_EPILOG

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("sweep", metavar="SWEEP.yaml",
                            help="sweep file: base, grid, random or search (docs/sweeps.md)")
        parser.add_argument("--out", metavar="DIR", help="output folder (results.csv, "
                            "results.parquet, trials/); required unless --dry-run")
        _add_ray_arguments(parser)
        parser.add_argument("--resume", action="store_true",
                            help="continue the sweep in DIR: finished trials are not rerun")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the trials and exit (starts nothing)")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.sweep.run import run_sweep

        opts = _ray_options(args)
        if not args.out and not args.dry_run:
            raise UsageError("--out DIR is required (the sweep's output folder)")
        return run_sweep(args.sweep, args.out, opts, resume=args.resume,
                         dry_run=args.dry_run, prog=self.prog)


class SweepReport(Command):
    name = "sweep-report"
    help = "tables over seeds and plots of a sweep's results -> DIR/report.md"
    epilog = "example:\n  rpuhw sweep-report runs/study\n"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dir", metavar="DIR", help="output folder of rpuhw sweep")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.sweep.report import write_report

        path = write_report(args.dir)
        print(f"wrote {path}")
        return 0


class Tune(Command):
    name = "tune"
    help = "search an algorithm's hyper-parameters on one device (Ray Tune + Optuna)"
    epilog = """examples:
  rpuhw tune --backend sim:drivers/emulators/hidden_device.yaml --algorithm cttv2 \\
             --trials 20 --epochs 1 --out runs/tune_cttv2
  rpuhw train --config runs/tune_cttv2/best.yaml

The search starts from the algorithm's defaults (its first trial), so the best found is
at least as good as the defaults on the same seed and data. See docs/sweeps.md.
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--backend", required=True, help="array spec of the device (sim, "
                       "sim:FILE.yaml, sim:preset:NAME, ...)")
        p.add_argument("--algorithm", required=True, help="algorithm whose hyper-parameters "
                       "are searched (sgd, mp, tt, ttv2, cttv2, agad)")
        p.add_argument("--out", required=True, metavar="DIR",
                       help="output folder (trials, results.csv, best.yaml)")
        p.add_argument("--trials", type=int, default=20, help="trials (default 20)")
        p.add_argument("--config", help="training YAML with the fixed keys (epochs, "
                       "train_limit, ...)")
        p.add_argument("--epochs", type=int, help="epochs of each trial (default 1)")
        p.add_argument("--train-limit", type=int)
        p.add_argument("--test-limit", type=int)
        p.add_argument("--seed", type=int, default=0, help="seed of the search and trials")
        _add_ray_arguments(p)
        p.add_argument("--resume", action="store_true", help="continue the search in DIR")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.sweep.search import tune_command

        opts = _ray_options(args)
        if args.trials < 1:
            raise UsageError(f"--trials: must be >= 1, got {args.trials}")
        return tune_command(args, opts, prog=self.prog, out=sys.stdout)
