"""The demo's part of the ``rpuhw`` command line: ``rpuhw demo`` (``make run``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rpuhw.cli.command import COMMANDS, Command, UsageError


@COMMANDS.register
class Demo(Command):
    name = "demo"
    help = "the main job: emulated chip -> calibration -> training, with a report"
    description = "``rpuhw demo``: from an emulated test chip to a trained network, in one command."
    epilog = "example:\n  rpuhw demo --quick --out demo_quick"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        size = parser.add_mutually_exclusive_group()
        from rpuhw.demo.sizes import QUICK_MEASURED, QUICK_TIME, SIZES

        q = SIZES["quick"]
        size.add_argument("--quick", action="store_true",
                          help=f"{QUICK_TIME} on 2 cores ({QUICK_MEASURED}): {q.devices} "
                               f"devices x {q.pulses} pulses per direction, {q.train_limit} "
                               f"training images x {q.epochs} epochs")
        size.add_argument("--full", action="store_true", help="the long version")
        parser.add_argument("--out", default="demo_out",
                            help="output folder (default ./demo_out)")
        parser.add_argument("--seed", type=int, default=0)

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.demo.pipeline import run_demo

        if Path(args.out).exists() and not Path(args.out).is_dir():
            raise UsageError(f"--out: {args.out} exists and is not a folder; give a folder "
                             "(made if missing)")
        size = "quick" if args.quick else "full" if args.full else "default"
        result = run_demo(size, args.out, seed=args.seed)
        return 0 if result["report"].exists() else 1
