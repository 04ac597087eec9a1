"""The ``rpuhw`` command line.

Every subcommand has ``--help`` with an example. Bad input prints one line
``rpuhw: error: ...`` naming the file, key or argument and exits with status 2;
no traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from rpuhw import __version__
from rpuhw.errors import ConfigError

EPILOG_DEVICE = """example:
  rpuhw device my_device.yaml          # validate a device YAML, print its parameters
  rpuhw device my_device.yaml --json   # the same as JSON
"""


def _cmd_demo(args: argparse.Namespace) -> int:
    print("rpuhw demo: coming soon - the end-to-end demo (emulated chip -> calibration -> "
          "training) lands with the training, hardware and calibration issues.\n"
          "Available now: the exact simulator and periphery; see README.md and "
          "docs/simulator.md, and `python -m benchmarks.update` for the speed figures.")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from rpuhw.devices import get_model, model_names

    for name in model_names():
        cls = get_model(name)
        keys = ", ".join(f.name for f in dataclasses.fields(cls.Params))
        print(f"{name:14s} {keys}")
    return 0


def _cmd_device(args: argparse.Namespace) -> int:
    from rpuhw.device_spec import load_device

    spec = load_device(args.file)
    mapping = spec.to_mapping()
    if args.json:
        print(json.dumps(mapping, indent=1))
        return 0
    print(f"{args.file}: model {spec.model.name}")
    for key, value in mapping.items():
        if key == "model":
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                print(f"  {key}.{sub:18s} {v}")
        else:
            print(f"  {key:21s} {value}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rpuhw", description="Train neural networks on resistive cross-point arrays.",
        epilog="example:\n  rpuhw models\n  rpuhw device dev.yaml\n  rpuhw demo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rpuhw {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("demo", help="the main job, end to end (coming soon)",
                       epilog="example:\n  rpuhw demo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("models", help="list the device models and their YAML keys",
                       epilog="example:\n  rpuhw models",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=_cmd_models)
    p = sub.add_parser("device", help="validate a device YAML and print its parameters",
                       epilog=EPILOG_DEVICE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", help="device YAML file")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_cmd_device)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"rpuhw: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rpuhw: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
