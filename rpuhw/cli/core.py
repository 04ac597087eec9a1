"""The core's commands: ``rpuhw models``, ``device``, ``train`` and ``plot``."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from rpuhw.cli.command import COMMANDS, Command
from rpuhw.errors import ConfigError, HardwareError, add_hint


@COMMANDS.register
class Models(Command):
    name = "models"
    help = "list the device models and their YAML keys"
    epilog = "example:\n  rpuhw models"

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.devices import get_model, model_names

        for name in model_names():
            cls = get_model(name)
            keys = ", ".join(f.name for f in dataclasses.fields(cls.Params))
            print(f"{name:14s} {keys}")
        return 0


@COMMANDS.register
class Device(Command):
    name = "device"
    help = "validate a device YAML and print its parameters; aihwkit presets, export, import"

    @property
    def epilog(self) -> str:  # type: ignore[override]
        from rpuhw.interop.cli import DEVICE_EPILOG

        return DEVICE_EPILOG

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from rpuhw.interop.cli import add_device_arguments  # show, presets, export, import

        add_device_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.interop.cli import run_device

        return run_device(self.prog, args)


def _pairs(items: list[str] | None, flag: str, cast=str) -> dict | None:
    """``["conv1=4", ...]`` -> ``{"conv1": 4, ...}`` (None when the flag was not given)."""
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ConfigError(f"expected NAME=VALUE, got {item!r}", key=flag)
        try:
            out[name] = cast(value)
        except ValueError:
            raise ConfigError(f"{name}: expected an integer, got {value!r}", key=flag) from None
    return out


@COMMANDS.register
class Train(Command):
    name = "train"
    help = "train a network with its layers on arrays"
    epilog = """examples:
  rpuhw train --backend sim --management nm+bm+um --epochs 1
  rpuhw train --backend sim --layer conv1=sim:chip.yaml --devices-per-weight conv1=4 \\
              --epochs 3 --out results.json --checkpoint ckpt/
  rpuhw train --config run.yaml --resume --checkpoint ckpt/
  rpuhw train --backend sim:device.yaml --algorithm tt:gamma=0.1 --layer-algorithm fc2=sgd
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--config", help="YAML file with TrainConfig keys (flags override it)")
        p.add_argument("--model", help="network (default lenet)")
        p.add_argument("--data", help="mnist5k (embedded, default) or a folder of MNIST IDX files")
        p.add_argument("--epochs", type=int)
        p.add_argument("--batch-size", type=int)
        p.add_argument("--lr", type=float, help="learning rate (default 0.01)")
        p.add_argument("--backend", help="array spec of all layers: float, ideal, sim, "
                       "sim:FILE.yaml, ... (default sim)")
        p.add_argument("--layer", action="append", metavar="NAME=SPEC",
                       help="backend of one layer, or NAME.A=SPEC of one array of its "
                       "algorithm (repeatable)")
        p.add_argument("--algorithm", metavar="ALG[:KEY=VALUE,...]",
                       help="training algorithm of all analog layers: sgd (default), mp, "
                       "tt, with hyper-parameters e.g. tt:gamma=0.1,transfer_every=2")
        p.add_argument("--layer-algorithm", action="append", metavar="NAME=ALG",
                       help="algorithm of one layer (repeatable)")
        p.add_argument("--management", help="none | nm | nm+bm | nm+bm+um (default)")
        p.add_argument("--devices-per-weight", action="append", metavar="NAME=K",
                       help="K devices per weight for a layer (repeatable)")
        p.add_argument("--update-granularity", help="position (default) | sample | batch")
        p.add_argument("--bl", type=int, help="pulse-train length (default 10)")
        p.add_argument("--weight-scaling-omega", type=float, metavar="OMEGA",
                       help="map the weights onto the devices' range: torch's initial "
                       "weight bound onto about OMEGA device weight units (aihwkit's "
                       "key; default 0: off)")
        p.add_argument("--train-limit", type=int)
        p.add_argument("--test-limit", type=int)
        p.add_argument("--seed", type=int)
        p.add_argument("--out", help="results JSON")
        p.add_argument("--checkpoint", metavar="DIR", help="write checkpoints to DIR")
        p.add_argument("--checkpoint-every", type=int, metavar="N",
                       help="also checkpoint every N images")
        p.add_argument("--resume", action="store_true", help="continue from --checkpoint DIR "
                       "(layers on a bench: refused when its devices moved since then)")
        p.add_argument("--accept-jump", action="store_true",
                       help="with --resume: continue even though a bench's devices moved "
                            "beyond the read noise since the checkpoint")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw import _compile_notice
        from rpuhw.train import load_config, train

        _compile_notice.announce_to(sys.stderr)  # a cold kernel cache: one line, once

        overrides = {
            "model": args.model, "data": args.data, "epochs": args.epochs,
            "batch_size": args.batch_size, "lr": args.lr, "backend": args.backend,
            "layers": _pairs(args.layer, "--layer"), "management": args.management,
            "algorithm": args.algorithm,
            "layer_algorithms": _pairs(args.layer_algorithm, "--layer-algorithm"),
            "devices_per_weight": _pairs(args.devices_per_weight, "--devices-per-weight", int),
            "update_granularity": args.update_granularity, "bl": args.bl,
            "weight_scaling_omega": args.weight_scaling_omega,
            "train_limit": args.train_limit, "test_limit": args.test_limit, "seed": args.seed,
            "out": args.out, "checkpoint": args.checkpoint,
            "checkpoint_every": args.checkpoint_every,
            "progress": False if args.no_progress else None,
        }
        if args.accept_jump and not args.resume:
            raise ConfigError("applies to --resume only", key="--accept-jump")
        cfg = load_config(args.config, overrides)
        try:
            results = train(cfg, resume=args.resume, accept_jump=args.accept_jump)
        except FloatingPointError as exc:
            print(f"{self.prog}: {exc}", file=sys.stderr)
            return 1
        except HardwareError as exc:  # the CLI prints it in one line, exit 1
            add_hint(exc, f"the last checkpoint in {cfg.checkpoint} is intact: run the same "
                     "command with --resume once the instrument is back" if cfg.checkpoint
                     else "train with --checkpoint DIR to be able to resume after such a "
                     "failure")
            raise
        errs = ", ".join(f"{100 * e:.2f} %" for e in results["test_error"])
        print(f"test error per epoch: {errs}; {results['images_per_s']:.1f} images/s"
              + (f"; results in {cfg.out}" if cfg.out else ""))
        return 0


@COMMANDS.register
class Plot(Command):
    name = "plot"
    help = "test error vs epoch of several runs in one figure"
    epilog = "example:\n  rpuhw plot runs/*.json -o curves.png"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("results", nargs="+", help="results JSON files of rpuhw train")
        parser.add_argument("-o", "--output", default="curves.png",
                            help="PNG file (default curves.png)")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.plots import plot_runs

        plot_runs(args.results, args.output)
        print(f"wrote {args.output}")
        return 0
