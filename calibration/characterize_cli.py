"""``rpuhw characterize``: measure devices of an array into a measurement CSV.

Bad input prints one line ``rpuhw characterize: error: ...`` and exits 2 with nothing
written; an instrument failure mid-run exits 1 and keeps every row measured (continue
with ``--resume``); Ctrl-C exits 130, likewise keeping the rows.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rpuhw.errors import ConfigError, HardwareError

from .measurements import MeasurementWriter, load_measurements, sidecar_path
from .protocols import check_array, parse_devices, protocol_meta, pulse_response, read_noise

PROG = "rpuhw characterize"

EPILOG = """examples:
  rpuhw characterize --array sim --rows 4 --cols 4 --devices 4 --pulses 200 -o meas.csv
  rpuhw characterize --array bench:bench.yaml --rows 8 --cols 8 --devices all \\
                     --pulses 400 --cycles 5 -o meas.csv
  rpuhw characterize ... -o meas.csv --resume        # continue an interrupted run
  rpuhw characterize --array sim --rows 2 --cols 2 --protocol read-noise \\
                     --repeats 50 --cycles 5 --pulses 100 -o noise.csv

pulse-response: per cycle, a read then --pulses up pulses (read after each), a read then
--pulses down pulses (read after each). read-noise: --cycles levels --pulses up pulses
apart (centred on the start), --repeats reads at each.
"""

RESUME_KEYS = {"array": "--array", "rows": "--rows", "cols": "--cols",
               "protocol": "--protocol", "pulses": "--pulses", "cycles": "--cycles",
               "repeats": "--repeats", "seed": "--seed", "devices": "--devices"}
"""Sidecar settings a resumed run must repeat, and the flag that sets each."""


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block
        raise _UsageError(message)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Measure the pulse response (or read noise) of devices "
                "of an array into a measurement CSV with a sidecar JSON.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--array", required=True, metavar="SPEC",
                   help="array spec: sim, sim:device.yaml, ideal, bench:bench.yaml, ...")
    p.add_argument("--rows", required=True, type=int, help="array rows")
    p.add_argument("--cols", required=True, type=int, help="array columns")
    p.add_argument("--devices", default="all", metavar="all|N|r:c,...",
                   help="devices to measure (default all)")
    p.add_argument("--pulses", type=int, default=100,
                   help="pulses per half-cycle, or between read-noise levels (default 100)")
    p.add_argument("--cycles", type=int, default=1,
                   help="up/down cycles, or read-noise levels (default 1)")
    p.add_argument("--protocol", choices=("pulse-response", "read-noise"),
                   default="pulse-response", help="what to measure (default pulse-response)")
    p.add_argument("--repeats", type=int, default=100,
                   help="reads per level for read-noise (default 100)")
    p.add_argument("--seed", type=int, default=None, help="seed of a simulated array")
    p.add_argument("-o", "--output", required=True, metavar="CSV", help="measurement CSV")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted measurement in --output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_args(args: argparse.Namespace) -> None:
    for name in ("rows", "cols", "pulses", "cycles", "repeats"):
        value = getattr(args, name)
        if value < 1:
            raise ConfigError(f"expected a positive integer, got {value}", key=f"--{name}")
    out = Path(args.output)
    if out.suffix.lower() == ".json":
        raise ConfigError("the CSV may not end in .json (that name is its sidecar)",
                          key="--output")
    if not out.parent.is_dir():
        raise ConfigError(f"folder {str(out.parent)!r} does not exist", key="--output")
    if out.exists() and not args.resume:
        raise ConfigError(f"{out} exists; pass --resume to continue it, or choose another "
                          "file", key="--output")
    if args.resume and not out.is_file():
        raise ConfigError(f"{out} does not exist: nothing to resume", key="--resume")


def _settings(args: argparse.Namespace, devices: list[tuple[int, int]]) -> dict[str, Any]:
    s: dict[str, Any] = {"protocol": args.protocol, "array": args.array, "rows": args.rows,
                         "cols": args.cols, "pulses": args.pulses, "cycles": args.cycles,
                         "seed": args.seed, "devices_spec": args.devices,
                         "devices": [list(d) for d in devices]}
    if args.protocol == "read-noise":
        s["repeats"] = args.repeats
        s["states"] = args.cycles
    return s


def _check_resume(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    side = sidecar_path(out)
    meta = load_measurements(out, partial=True).meta
    if not meta:
        raise ConfigError(f"{side} (the settings of the run) is missing; cannot check that "
                          "--resume continues the same measurement", key="--resume")
    old = meta.get("settings") or {}
    for key, flag in RESUME_KEYS.items():
        if key not in settings and key not in old:
            continue
        if old.get(key) != settings.get(key):
            shown = settings.get(key) if key != "devices" else f"{len(settings[key])} devices"
            was = old.get(key) if key != "devices" else f"{len(old.get(key) or [])} devices"
            if key == "devices" and shown == was:
                shown, was = "another set of devices", "the devices in the sidecar"
            raise ConfigError(f"{shown!s} differs from {was!s} in {side} (the run being "
                              "resumed); repeat the original settings", key=flag)
    return meta


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    """Run ``rpuhw characterize``; returns the exit status (0, 1 failure, 2 bad input)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser(prog).parse_args(argv)
    except _UsageError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        return _run(args, prog)
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def _instrument_errors() -> tuple[type[BaseException], ...]:
    """Failures of a backend (every instrument error is a HardwareError) or the OS."""
    return (OSError, HardwareError)


def _run(args: argparse.Namespace, prog: str) -> int:
    from rpuhw.backends import open_array

    _check_args(args)
    devices = parse_devices(args.devices, args.rows, args.cols)
    out = Path(args.output)
    settings = _settings(args, devices)
    if args.resume:
        old = _check_resume(out, settings)
        if old.get("complete"):
            print(f"{out}: already complete; nothing to do")
            return 0
    array = open_array(args.array, args.rows, args.cols, seed=args.seed)
    try:
        check_array(array)
        meta = protocol_meta(array, devices, settings)
        writer = MeasurementWriter(out, meta, resume=args.resume)
        t0 = time.monotonic()
        try:
            if args.protocol == "pulse-response":
                pulse_response(array, devices, args.pulses, args.cycles, writer,
                               progress=not args.no_progress)
            else:
                read_noise(array, devices, args.repeats, args.cycles, writer,
                           pulses=args.pulses, progress=not args.no_progress)
        except KeyboardInterrupt:
            writer.close()
            print(f"{prog}: interrupted; {writer.rows_written} rows of this run kept in {out}; "
                  "continue with --resume", file=sys.stderr)
            return 130
        except _instrument_errors() as exc:
            writer.close()
            print(f"{prog}: error: {exc}; {writer.rows_written} rows of this run kept in "
                  f"{out}; continue with --resume", file=sys.stderr)
            return 1
        except BaseException:
            writer.close()
            raise
        writer.finish()
        total = writer.rows_written + (len(writer.existing) if writer.existing else 0)
        print(f"wrote {total} rows ({len(devices)} devices, {args.protocol}) to {out} and "
              f"{sidecar_path(out)} in {time.monotonic() - t0:.1f} s")
        return 0
    finally:
        array.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
