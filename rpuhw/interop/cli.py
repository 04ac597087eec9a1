"""The command line of the interchange: ``rpuhw device`` (show, presets, export,
import) and ``rpuhw export-model``.

``rpuhw device`` lives in :mod:`rpuhw.cli.core`, which hands its arguments and its run
to :func:`add_device_arguments` and :func:`run_device`; ``rpuhw export-model`` is
:class:`ExportModel`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rpuhw.cli.command import Command, UsageError
from rpuhw.errors import ConfigError

DEVICE_EPILOG = """examples:
  rpuhw device my_device.yaml          # validate a device YAML, print its parameters
  rpuhw device my_device.yaml --json   # the same as JSON
  rpuhw device preset:EcRam            # one of aihwkit's device presets
  rpuhw device --presets               # list the presets, which load exactly, their sources
  rpuhw device export my_device.yaml --to aihwkit -o my_device_aihwkit.py
  rpuhw device import config.py -o my_device.yaml   # printed aihwkit config (parsed, not run)
  rpuhw device import config.pkl -o my_device.yaml  # pickled config (read by aihwkit's python)

export prints the Python that builds the aihwkit SingleRPUConfig (device, IO and
update settings of rpuhw train; --management/--bl choose them). import reads Python
source as `rpuhw device export` or aihwkit's print(config) writes it, parsed with ast
(nothing is run; --run runs it in aihwkit's interpreter instead: trusted files only), or
a pickle / torch.save of a config, which aihwkit's interpreter ($RPUHW_AIHWKIT_PYTHON)
unpickles (trusted files only). A compound device or a key rpuhw cannot express is one
error line naming it (exit 2); training settings are printed as notes on stderr.
"""


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``rpuhw device``."""
    parser.usage = ("rpuhw device FILE.yaml|preset:NAME [--json]\n"
                    "       rpuhw device --presets [--json]\n"
                    "       rpuhw device export FILE.yaml|preset:NAME --to aihwkit [-o OUT.py] "
                    "[--management LEVEL] [--bl BL] [--device-only]\n"
                    "       rpuhw device import CONFIG.py|CONFIG.pkl [-o OUT.yaml] [--run]")
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="device YAML or preset:NAME (or: export FILE, import FILE)")
    parser.add_argument("path", nargs="?", metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--presets", action="store_true",
                        help="list aihwkit's device presets (sim:preset:NAME)")
    parser.add_argument("--to", choices=["aihwkit"], default=None,
                        help="export: the target (aihwkit)")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="export/import: write here instead of printing")
    parser.add_argument("--management", default=None,
                        help="export: rpuhw train's management level for the config's IO "
                             "and update settings (default nm+bm+um)")
    parser.add_argument("--bl", type=int, default=None,
                        help="export: pulse-train length (default 10)")
    parser.add_argument("--device-only", action="store_true",
                        help="export: only the device (no SingleRPUConfig)")
    parser.add_argument("--run", action="store_true",
                        help="import: run the Python source in aihwkit's interpreter instead "
                             "of parsing it (trusted files only)")


def run_device(prog: str, args: argparse.Namespace) -> int:
    """``rpuhw device``: dispatch on the first argument."""
    action = args.file
    if action in ("export", "import") and args.path is not None:
        _only(args, action)
        return _export(args) if action == "export" else _import(args, prog)
    if action in ("export", "import"):
        raise UsageError(f"{action} needs a file: rpuhw device {action} FILE"
                         + (" --to aihwkit" if action == "export" else ""))
    if args.path is not None:
        raise UsageError(f"unexpected argument {args.path!r} (rpuhw device FILE, or "
                         "rpuhw device export|import FILE)")
    _only(args, "show")
    if args.presets:
        if action is not None:
            raise UsageError("--presets takes no FILE")
        return _list_presets(args.json)
    if action is None:
        raise UsageError("give a device YAML, preset:NAME or --presets")
    return _show(action, args.json)


_OPTIONS = {"export": ("to", "output", "management", "bl", "device_only"),
            "import": ("output", "run"), "show": ("json", "presets")}


def _only(args: argparse.Namespace, action: str) -> None:
    """Refuse options that belong to another action (one line naming it)."""
    for name in ("json", "presets", "to", "output", "management", "bl", "device_only", "run"):
        value = getattr(args, name)
        if value not in (None, False) and name not in _OPTIONS[action]:
            flag = "--" + name.replace("_", "-")
            raise UsageError(f"{flag} does not apply to "
                             + ("showing a device" if action == "show" else f"{action}"))


def load_device_arg(arg: str) -> Any:
    """A device YAML path or ``preset:NAME`` -> DeviceSpec."""
    from rpuhw.interop.presets import is_preset, load_preset

    if is_preset(arg):
        return load_preset(arg.partition(":")[2])
    from rpuhw.device_spec import load_device

    return load_device(arg)


def _show(arg: str, as_json: bool) -> int:
    spec = load_device_arg(arg)
    mapping = spec.to_mapping()
    if as_json:
        print(json.dumps(mapping, indent=1))
        return 0
    extra = ""
    from rpuhw.interop.presets import is_preset, preset_table

    if is_preset(arg):
        entry = preset_table()[arg.partition(":")[2]]
        extra = f" (aihwkit {entry['aihwkit']}; source: {entry['source']})"
    print(f"{arg}: model {spec.model.name}{extra}")
    for key, value in mapping.items():
        if key == "model":
            continue
        if isinstance(value, dict):
            for sub, v in value.items():
                print(f"  {key}.{sub:18s} {v}")
        else:
            print(f"  {key:21s} {value}")
    return 0


def _list_presets(as_json: bool) -> int:
    from rpuhw.interop.presets import preset_status, preset_table

    rows = []
    for name, entry in preset_table().items():
        status = preset_status(name)
        rows.append({"name": name, "spec": f"sim:preset:{name}", "aihwkit": entry["aihwkit"],
                     "base": entry["base"], "loads": status is None,
                     "refused": None if status is None else status.split(": ", 1)[-1],
                     "source": entry["source"]})
    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    print("aihwkit 1.2's device presets (values in rpuhw/devices/presets.yaml):")
    for r in rows:
        state = "loads exactly" if r["loads"] else "refused: " + r["refused"]
        print(f"  sim:preset:{r['name']:16s} {r['aihwkit']:28s} {state}")
        print(f"  {'':27s} source: {r['source']}")
    return 0


def _write_or_print(text: str, output: str | None) -> None:
    if output is None:
        sys.stdout.write(text)
        return
    from rpuhw._io import atomic_write

    atomic_write(Path(output), text)
    print(f"wrote {output}", file=sys.stderr)


def _export(args: argparse.Namespace) -> int:
    from rpuhw.interop.aihwkit import TrainPeriphery, to_python

    if args.to is None:
        raise UsageError("export needs --to aihwkit (the only target)")
    per = TrainPeriphery.level(args.management or "nm+bm+um",
                               10 if args.bl is None else args.bl)
    if args.device_only and (args.management or args.bl is not None):
        raise UsageError("--device-only writes no IO or update settings: leave out "
                         "--management/--bl")
    spec = load_device_arg(args.path)
    text = to_python(spec, periphery=per, device_only=args.device_only, header=args.path)
    _write_or_print(text, args.output)
    return 0


def _import(args: argparse.Namespace, prog: str) -> int:
    import yaml

    from rpuhw.interop.aihwkit import import_tree, is_pickle, run_aihwkit, tree_from_python

    path = Path(args.path)
    if not path.is_file():
        raise ConfigError("file not found", source=str(path))
    data = path.read_bytes()
    if is_pickle(data):
        if args.run:
            raise UsageError("--run applies to Python source, not to a pickle")
        tree = run_aihwkit("load", str(path.resolve()))
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError("neither Python source (UTF-8) nor a pickle",
                              source=str(path)) from None
        tree = (run_aihwkit("python", stdin=text) if args.run
                else tree_from_python(text, name=str(path)))
    imported = import_tree(tree, source=str(path))
    for note in imported.notes:
        print(f"{prog}: note: {note}", file=sys.stderr)
    if imported.training:
        t = imported.training
        print(f"{prog}: note: the config's training settings: rpuhw train --management "
              f"{t['management']} --bl {t['bl']}", file=sys.stderr)
    text = (f"# imported from {path} (aihwkit config) by rpuhw device import\n"
            + yaml.safe_dump(imported.spec.to_mapping(), sort_keys=False))
    _write_or_print(text, args.output)
    return 0


# ---- rpuhw export-model ---------------------------------------------------------------
class ExportModel(Command):
    name = "export-model"
    help = "a network trained by rpuhw train -> an aihwkit model file"
    description = ("Write an aihwkit model (torch.save of an AnalogSequential) with the "
                   "weights of an rpuhw training checkpoint and each layer's device as its "
                   "rpu_config, so inference studies with aihwkit's noise and drift models "
                   "start from a network trained here.")
    epilog = """examples:
  rpuhw train --backend sim:preset:EcRam --checkpoint run/ --epochs 1
  rpuhw export-model run/ --to aihwkit                # writes run/aihwkit_model.pt
  rpuhw export-model run/ --to aihwkit --device fitted.yaml -o net.pt  # bench layers

Built by aihwkit's interpreter ($RPUHW_AIHWKIT_PYTHON, or this python if it has
aihwkit). Layers on the simulator keep their devices: every device's drawn parameters
(bounds, steps, slopes) become the aihwkit tile's hidden parameters. Layers on hardware
(bench, arc2) need --device, the calibrated device YAML. Load it in aihwkit with
torch.load(FILE, weights_only=False).
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("results", metavar="RESULTS",
                            help="checkpoint folder of rpuhw train --checkpoint (or its "
                                 "checkpoint.pt)")
        parser.add_argument("--to", choices=["aihwkit"], required=True, help="the target")
        parser.add_argument("-o", "--output", metavar="FILE",
                            help="model file (default RESULTS/aihwkit_model.pt)")
        parser.add_argument("--device", metavar="FILE.yaml",
                            help="device YAML (or preset:NAME) of the layers trained on "
                                 "hardware")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.interop.export_model import export_model

        report = export_model(args.results, args.output, device=args.device)
        for name, diff in report["max_abs_diff"].items():
            print(f"  {name:8s} {report['layers'][name]:40s} weights read back by aihwkit: "
                  f"max |difference| {diff:.3g}")
        print(f"wrote {report['out']} (aihwkit {report['aihwkit_version']}); train on with "
              f"AnalogSGD(model.parameters(), lr={report['lr']})")
        return 0
