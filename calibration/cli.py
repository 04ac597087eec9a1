"""The calibration part of the ``rpuhw`` command line: ``rpuhw characterize``, ``fit``,
``validate``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from rpuhw.cli.command import COMMANDS, Command, UsageError
from rpuhw.errors import ConfigError, HardwareError, add_hint

RESUME_KEYS = {"array": "--array", "rows": "--rows", "cols": "--cols",
               "protocol": "--protocol", "pulses_per_direction": "--pulses",
               "pulses_between_levels": "--pulses", "cycles": "--cycles",
               "repeats": "--repeats", "seed": "--seed", "devices": "--devices",
               "pulses_per_half": "--pulses", "window": "--window",
               "settle_tol": "--settle-tol", "max_pulses": "--max-pulses",
               "reads_per_step": "--reads-per-step", "read_noise_reads": "--read-noise-first"}
"""Sidecar settings a resumed ``rpuhw characterize`` must repeat, and the flag of each."""

RESUME_DEFAULTS = {"reads_per_step": 1, "read_noise_reads": 0}
"""Values of RESUME_KEYS that sidecars written before the key had (so they resume)."""


@COMMANDS.register
class Characterize(Command):
    """Bad input exits 2 with nothing written; an instrument failure mid-run exits 1 and
    keeps every row measured (continue with ``--resume``); Ctrl-C exits 130, likewise
    keeping the rows."""

    name = "characterize"
    help = ("measure devices' pulse response, read noise or symmetry point on any array into "
            "a measurement CSV")
    description = ("Measure the pulse response (or read noise, or symmetry point) of devices "
                   "of an array into a measurement CSV with a sidecar JSON.")
    epilog = """examples:
  rpuhw characterize --array sim --rows 4 --cols 4 --devices 4 --pulses 200 -o meas.csv
  rpuhw characterize --array bench:bench.yaml --rows 8 --cols 8 --devices 4 \
                     --pulses auto --max-pulses 3000 --reads-per-step 2 -o meas.csv
  rpuhw characterize --array bench:bench.yaml --rows 8 --cols 8 --devices all \\
                     --pulses 400 --cycles 5 -o meas.csv
  rpuhw characterize ... -o meas.csv --resume        # continue an interrupted run
  rpuhw characterize ... -o meas.csv --resume --accept-jump   # ...though the devices moved
  rpuhw characterize --array sim --rows 2 --cols 2 --protocol read-noise \\
                     --repeats 50 --cycles 5 --pulses 100 -o noise.csv
  rpuhw characterize --array bench:bench.yaml --rows 8 --cols 8 --devices 4 \
                     --protocol symmetry-point -o sp.csv
  rpuhw symmetry-point sp.csv -o sp.yaml      # per-device symmetry points

pulse-response: --pulses is per direction per cycle: per cycle, a read then --pulses up
pulses (read after each), a read then --pulses down pulses (read after each); the sidecar
says pulses_per_direction. --pulses auto: each half-cycle goes on until the device
saturates (the drift of a line through its last 64 per-pulse means is within the read
noise) or --max-pulses (default 5000); devices that saturated wait for the others; the
sidecar's "stops" says where each stopped. --reads-per-step K: K reads after each pulse
(column read). On a bench: array a block of 50 reads at the start state comes first
(polarity 0 rows: the measured read noise); --no-read-noise-first skips it.
read-noise: --cycles levels --pulses up pulses apart (centred on the start), --repeats
reads at each. symmetry-point: --pulses (default 1) up pulses then as many down pulses, a
read after each, repeated on every device until
the means of its last two --window cycles differ by less than --settle-tol x dw_min, or
--max-pulses (docs/calibration.md, "Symmetry points").
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("--array", required=True, metavar="SPEC",
                       help="array spec: sim, sim:device.yaml, ideal, bench:bench.yaml, ...")
        p.add_argument("--rows", required=True, type=int, help="array rows")
        p.add_argument("--cols", required=True, type=int, help="array columns")
        p.add_argument("--devices", default="all", metavar="all|N|r:c,...",
                       help="devices to measure (default all)")
        p.add_argument("--pulses", default=None, metavar="N|auto",
                       help="pulse-response: pulses per direction per cycle (N up, then N "
                            "down; default 100), or 'auto': until each device saturates; "
                            "read-noise: up pulses between levels (default 100); "
                            "symmetry-point: pulses per half-cycle (default 1)")
        p.add_argument("--reads-per-step", type=int, default=None, metavar="K",
                       help="pulse-response: reads after each pulse, each a row (default 1)")
        p.add_argument("--read-noise-first", action=argparse.BooleanOptionalAction,
                       default=None,
                       help="pulse-response: first 50 reads of each device at its start "
                            "state (polarity 0 rows), so the read noise is measured (default: "
                            "on for bench: arrays, off otherwise; a resume repeats the run's)")
        p.add_argument("--cycles", type=int, default=1,
                       help="up/down cycles, or read-noise levels (default 1)")
        p.add_argument("--protocol", choices=("pulse-response", "read-noise", "symmetry-point"),
                       default="pulse-response", help="what to measure (default pulse-response)")
        p.add_argument("--repeats", type=int, default=100,
                       help="reads per level for read-noise (default 100)")
        p.add_argument("--window", type=int, default=None, metavar="K",
                       help="symmetry-point: cycles per settle window (default from the "
                            "device: (w_max - w_min) / dw_min / (2 x pulses))")
        p.add_argument("--settle-tol", type=float, default=None, metavar="F",
                       help="symmetry-point: settled when the last two window means differ "
                            "by less than F x dw_min (default 0.5)")
        p.add_argument("--max-pulses", type=int, default=None, metavar="N",
                       help="symmetry-point: most pulses per device (default 20 x window x "
                            "pulses); pulse-response with --pulses auto: most pulses per "
                            "half-cycle (default 5000)")
        p.add_argument("--seed", type=int, default=None, help="seed of a simulated array")
        p.add_argument("-o", "--output", required=True, metavar="CSV", help="measurement CSV")
        p.add_argument("--resume", action="store_true",
                       help="continue an interrupted measurement in --output (refused when "
                            "the devices moved since its last rows)")
        p.add_argument("--accept-jump", action="store_true",
                       help="with --resume: continue even though the devices moved beyond "
                            "the read noise (the jumps are recorded in the sidecar)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.backends import open_array
        from rpuhw.calibration.measurements import MeasurementWriter, sidecar_path
        from rpuhw.calibration.protocols import (
            check_array,
            parse_devices,
            protocol_meta,
            pulse_response,
            pulse_response_auto,
            read_noise,
            symmetry_point,
        )

        _check_characterize_args(args)
        devices = parse_devices(args.devices, args.rows, args.cols)
        out = Path(args.output)
        if args.resume:
            _resume_defaults(out, args)
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
                result = None
                if args.protocol == "pulse-response" and args.pulses == "auto":
                    pulse_response_auto(array, devices, writer, args.max_pulses, args.cycles,
                                        args.reads_per_step, settings["read_noise_reads"],
                                        progress=not args.no_progress,
                                        accept_jump=args.accept_jump)
                elif args.protocol == "pulse-response":
                    pulse_response(array, devices, args.pulses, args.cycles, writer,
                                   progress=not args.no_progress,
                                   accept_jump=args.accept_jump, reads=args.reads_per_step,
                                   noise_reads=settings["read_noise_reads"])
                elif args.protocol == "symmetry-point":
                    result = symmetry_point(array, devices, writer, pulses=args.pulses,
                                            window=args.window, tolerance=args.settle_tol,
                                            max_pulses=args.max_pulses,
                                            progress=not args.no_progress,
                                            accept_jump=args.accept_jump)
                else:
                    read_noise(array, devices, args.repeats, args.cycles, writer,
                               pulses=args.pulses, progress=not args.no_progress,
                               accept_jump=args.accept_jump)
            except (KeyboardInterrupt, OSError, HardwareError) as exc:
                writer.close()  # the rows so far stay; the CLI prints one line (exit 130/1)
                add_hint(exc, f"{writer.rows_written} rows of this run kept in {out}; "
                         "continue with --resume")
                raise
            except BaseException:
                writer.close()
                raise
            writer.finish()
            total = writer.rows_written + (len(writer.existing) if writer.existing else 0)
            print(f"wrote {total} rows ({len(devices)} devices, {args.protocol}) to {out} and "
                  f"{sidecar_path(out)} in {time.monotonic() - t0:.1f} s")
            if result is not None:
                print(f"this run: {result.summary()}; analyse with: rpuhw symmetry-point "
                      f"{out} -o SP.yaml")
            if args.protocol == "pulse-response":
                _print_bounds(out)
            return 0
        finally:
            array.close()


def _check_characterize_args(args: argparse.Namespace) -> None:
    sym = args.protocol == "symmetry-point"
    pr = args.protocol == "pulse-response"
    if args.pulses is None:
        args.pulses = 1 if sym else 100
    elif str(args.pulses).strip().lower() == "auto" and pr:
        args.pulses = "auto"
    else:
        text = str(args.pulses).strip()
        if not text.isdigit() or int(text) < 1:
            allowed = "a positive integer or 'auto'" if pr else "a positive integer"
            raise ConfigError(f"expected {allowed}, got {args.pulses!r}", key="--pulses")
        args.pulses = int(text)
    auto = args.pulses == "auto"
    for name in ("reads_per_step", "read_noise_first"):
        if getattr(args, name) is not None and not pr:
            flag = name.replace("_", "-")
            raise ConfigError("applies to --protocol pulse-response only", key=f"--{flag}")
    if args.reads_per_step is None:
        args.reads_per_step = 1
    if auto and args.max_pulses is None:
        from rpuhw.calibration.protocols import DEFAULT_MAX_PULSES

        args.max_pulses = DEFAULT_MAX_PULSES
    for name in ("rows", "cols", "cycles", "repeats", "window", "max_pulses",
                 "reads_per_step"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ConfigError(f"expected a positive integer, got {value}",
                              key=f"--{name.replace('_', '-')}")
    if args.settle_tol is not None and not (0 < args.settle_tol < float("inf")):
        raise ConfigError(f"expected a positive number (units of dw_min), got "
                          f"{args.settle_tol}", key="--settle-tol")
    for name in ("window", "settle_tol", "max_pulses"):
        if getattr(args, name) is not None and not sym and not (auto and name == "max_pulses"):
            raise ConfigError("applies to --protocol symmetry-point only",
                              key=f"--{name.replace('_', '-')}")
    if sym and args.max_pulses is not None and args.max_pulses < 2 * args.pulses:
        raise ConfigError(f"expected at least one cycle (2 x --pulses = {2 * args.pulses}), "
                          f"got {args.max_pulses}", key="--max-pulses")
    out = Path(args.output)
    if out.suffix.lower() == ".json":
        raise ConfigError("the CSV may not end in .json (that name is its sidecar)",
                          key="--output")
    if not out.parent.is_dir():
        raise ConfigError(f"folder {str(out.parent)!r} does not exist", key="--output")
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; give the CSV's file name", key="--output")
    if out.exists() and not args.resume:
        raise ConfigError(f"{out} exists; pass --resume to continue it, or choose another "
                          "file", key="--output")
    if args.resume and not out.is_file():
        raise ConfigError(f"{out} does not exist: nothing to resume", key="--resume")
    if args.accept_jump and not args.resume:
        raise ConfigError("applies to --resume only", key="--accept-jump")


def _settings(args: argparse.Namespace, devices: list[tuple[int, int]]) -> dict[str, Any]:
    """The run's settings as stored in the sidecar (``--pulses`` under the protocol's
    :data:`~rpuhw.calibration.measurements.PULSE_KEYS` name)."""
    from rpuhw.calibration.measurements import PULSE_KEYS

    s: dict[str, Any] = {"protocol": args.protocol, "array": args.array, "rows": args.rows,
                         "cols": args.cols, PULSE_KEYS[args.protocol]: args.pulses,
                         "cycles": args.cycles,
                         "seed": args.seed, "devices_spec": args.devices,
                         "devices": [list(d) for d in devices]}
    if args.protocol == "read-noise":
        s["repeats"] = args.repeats
        s["states"] = args.cycles
    if args.protocol == "symmetry-point":
        del s["cycles"]
        s.update(window=args.window, settle_tol=args.settle_tol, max_pulses=args.max_pulses)
    if args.protocol == "pulse-response":
        noise_first = args.read_noise_first
        if noise_first is None:
            noise_first = str(args.array).startswith("bench:")
        from rpuhw.calibration.protocols import DEFAULT_NOISE_READS

        s.update(reads_per_step=args.reads_per_step,
                 read_noise_reads=DEFAULT_NOISE_READS if noise_first else 0)
        if args.pulses == "auto":
            from rpuhw.calibration.saturation import SaturationRule

            s.update(max_pulses=args.max_pulses, saturation=SaturationRule().to_dict())
    return s


def _resume_defaults(out: Path, args: argparse.Namespace) -> None:
    """On --resume, --read-noise-first left out repeats the run's choice (an older
    sidecar: off)."""
    from rpuhw.calibration.measurements import _read_sidecar

    if args.protocol != "pulse-response" or args.read_noise_first is not None:
        return
    settings = _read_sidecar(out).get("settings") or {}
    args.read_noise_first = bool(isinstance(settings, dict)
                                 and settings.get("read_noise_reads"))


def _print_bounds(out: Path) -> None:
    """Per device whether both bounds were reached (the saturation rule on the file's
    last window of each half-cycle) and the pulses each half-cycle took; a compact
    summary for more than 16 devices."""
    import numpy as np

    from rpuhw.calibration.measurements import load_measurements
    from rpuhw.calibration.saturation import half_cycle_ends

    m = load_measurements(out)
    ends = half_cycle_ends(m)
    per: dict[int, dict[int, list[dict[str, Any]]]] = {}
    for e in ends:
        per.setdefault(e["device"], {1: [], -1: []})[e["polarity"]].append(e)

    def cell(items: list[dict[str, Any]]) -> str:
        return ", ".join(f"{e['pulses']} {'yes' if e['saturated'] else 'NO'}" for e in items)

    both = [d for d, h in per.items() if all(e["saturated"] for v in h.values() for e in v)]
    print(f"bounds reached (saturated: drift over the last window within the read noise): "
          f"both in every cycle for {len(both)} of {len(per)} devices")
    if len(per) <= 16:
        print(f"  {'device':>10} {'up: pulses reached':>22}   down: pulses reached")
        for d, h in per.items():
            print(f"  {m.device_name(d):>10} {cell(h[1]):>22}   {cell(h[-1])}")
        return
    for pol, word in ((1, "upper"), (-1, "lower")):
        miss = [d for d, h in per.items() if not all(e["saturated"] for e in h[pol])]
        pulses = [e["pulses"] for h in per.values() for e in h[pol]]
        names = ", ".join(m.device_name(d) for d in miss[:10]) + (" ..." if len(miss) > 10
                                                                  else "")
        print(f"  {word} bound: reached by {len(per) - len(miss)} of {len(per)} devices; "
              f"pulses {min(pulses)}-{max(pulses)} (median {int(np.median(pulses))})"
              + (f"; not reached: {names}" if miss else ""))


def _check_resume(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The sidecar of the run to resume, after checking that ``settings`` repeat it."""
    from rpuhw.calibration.measurements import load_measurements, sidecar_path, sidecar_settings

    side = sidecar_path(out)
    meta = load_measurements(out, partial=True).meta
    if not meta:
        raise ConfigError(f"{side} (the settings of the run) is missing; cannot check that "
                          "--resume continues the same measurement", key="--resume")
    old = sidecar_settings(meta)  # an old sidecar's "pulses" under today's name
    for key, flag in RESUME_KEYS.items():
        if key not in settings and key not in old:
            continue
        default = RESUME_DEFAULTS.get(key)
        if old.get(key, default) != settings.get(key, default):
            shown = settings.get(key) if key != "devices" else f"{len(settings[key])} devices"
            was = old.get(key) if key != "devices" else f"{len(old.get(key) or [])} devices"
            if key == "devices" and shown == was:
                shown, was = "another set of devices", "the devices in the sidecar"
            shown = "the default" if shown is None else shown
            was = "the default" if was is None else was
            raise ConfigError(f"{shown!s} differs from {was!s} in {side} (the run being "
                              "resumed); repeat the original settings", key=flag)
    return meta


@COMMANDS.register
class Fit(Command):
    name = "fit"
    help = "fit device models to a measurement CSV -> device YAML"
    description = ("Fit device models to a measurement CSV and write a device YAML for "
                   "sim:device.yaml.")
    epilog = """examples:
  rpuhw fit meas.csv -o device.yaml                      # every model, chosen held out
  rpuhw fit meas.csv --model soft_bounds -o device.yaml --plot fit.png --report fit.json
  rpuhw fit meas.csv --segments -o device.yaml           # traces jump where a run resumed
  rpuhw train --backend sim:device.yaml                  # then train on the fitted device

A resumed measurement whose devices came back in another state (a restarted bench) has
traces that jump at the resume; rpuhw fit names the row and the jump, and --segments fits
the pieces on either side of each jump as separate traces.

The fit is the maximum likelihood of a state-space model (the device state follows the
model's mean step with cycle-to-cycle noise, every read adds read noise); --model auto fits
every model on half the cycles (or every other window of one cycle) and chooses by the
log-likelihood of the other half; the report gives every model's held-out score and the
margin. 95 % intervals come from a parametric bootstrap (--bootstrap replicas). The
chosen fit is then validated (posterior-predictive checks, as rpuhw validate): a fit that
validation fails is not ok.

exit status: 0 written; 1 the fit is not trustworthy (nothing written, see the reason;
--force writes anyway); 2 bad input.
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        from rpuhw.calibration.fit_models import FIT_MODELS

        p = parser
        p.add_argument("measurements", help="measurement CSV (rpuhw characterize or your own)")
        p.add_argument("--model", default="auto",
                       help=f"auto (default) or one of: {', '.join(sorted(FIT_MODELS))}")
        p.add_argument("-o", "--output", required=True, help="device YAML to write")
        p.add_argument("--plot", help="PNG with traces, step vs conductance and device maps")
        p.add_argument("--report", help="JSON with scores, per-device parameters and the choice")
        p.add_argument("--criterion", default="held_out", choices=("held_out", "bic", "aic"),
                       help="model choice of --model auto: held-out log-likelihood (default), "
                            "or BIC/AIC of the likelihood of all the data")
        p.add_argument("--bootstrap", type=int, default=20, metavar="N",
                       help="parametric bootstrap replicas for the 95 %% intervals (default "
                            "20; 0: intervals from the standard errors)")
        p.add_argument("--no-validate", action="store_true",
                       help="skip the posterior-predictive validation of the chosen fit")
        p.add_argument("--force", action="store_true",
                       help="write even when the fit is flagged as not trustworthy")
        p.add_argument("--segments", action="store_true",
                       help="cut every trace where the run was resumed or the traces jump, "
                            "and fit the pieces separately")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.calibration.fit import FitConfig, fit
        from rpuhw.calibration.fit_report import (
            discontinuity_lines,
            parameter_table,
            write_report,
        )
        from rpuhw.calibration.measurements import load_measurements
        from rpuhw.device_spec import save_device

        for flag, target in (("--output", args.output), ("--plot", args.plot),
                             ("--report", args.report)):  # before anything is written
            if target and Path(target).is_dir():
                raise ConfigError(f"{target} is a directory; give a file name", key=flag)
        try:
            if args.bootstrap < 0:
                raise ConfigError(f"expected a count >= 0, got {args.bootstrap}",
                                  key="--bootstrap")
            m = load_measurements(args.measurements)
            res = fit(m, args.model, FitConfig(criterion=args.criterion,
                                               segments=args.segments,
                                               bootstrap=args.bootstrap))
            if not args.no_validate:
                _validate_fit(res, m)
            print(parameter_table(res))
            again = " ".join([self.prog, args.measurements, "--segments", "-o", args.output]
                             + (["--model", args.model] if args.model != "auto" else []))
            for line in discontinuity_lines(res, again, self.prog):
                print(line, file=sys.stderr)
            if not res.ok and not args.force:
                print(f"{self.prog}: not written: {res.reason} (use --force to write anyway)",
                      file=sys.stderr)
                return 1
            spec = res.to_device_spec()
            if args.plot:
                from rpuhw.calibration.plots import plot_fit

                plot_fit(res, args.plot, meta=m.meta)
            if args.report:
                write_report(res, args.report)
            save_device(spec, args.output)
        except OSError as exc:  # the target of an atomic write, not its temporary file
            raise ConfigError(exc.strerror or str(exc),
                              source=exc.filename2 or exc.filename) from None
        if not res.ok:
            print(f"{self.prog}: warning: written despite: {res.reason} (--force)",
                  file=sys.stderr)
        print(f"wrote {args.output}" + (f", {args.plot}" if args.plot else "")
              + (f", {args.report}" if args.report else ""))
        return 0


def _validate_fit(res, m) -> None:
    """Run the posterior-predictive validation on the chosen fit; a failing check makes
    the fit not ok, with the failing statistic in the reason (``res`` is updated)."""
    from rpuhw.calibration.segments import segment_index
    from rpuhw.calibration.validate import validate

    # a fit of segments (--segments) is validated segment by segment, as it was fitted: a
    # replay of the whole trace would run through the jump the cut removed
    cuts = sorted({d.row for d in res.discontinuities}) if res.segments > 1 else []
    seg = segment_index(len(m), cuts)
    spec = res.to_device_spec()
    failed: list[str] = []
    for k in range(len(cuts) + 1):
        part = m if not cuts else m.take(seg == k)
        try:
            result = validate(spec, part)
        except ConfigError as exc:  # data that validation cannot use: say so, keep the fit
            res.notes.append(f"validation not run{f' on segment {k + 1}' if cuts else ''}: "
                             f"{exc}")
            continue
        res.validation = result
        if not result.passed:
            why = "; ".join(result.reasons) or "a posterior-predictive check failed"
            failed.append(f"segment {k + 1}: {why}" if cuts else why)
    if failed:
        res.ok = False
        res.reason = ((res.reason + "; " if res.reason else "")
                      + f"validation fails: {'; '.join(failed)}")


@COMMANDS.register
class Validate(Command):
    name = "validate"
    help = "posterior-predictive checks of a device YAML against the measurements"
    description = ("Replay the measured protocol on replicas of the device YAML's simulator "
                   "and compare four statistics the fit did not target (step size against "
                   "state, the devices' saturation levels, the autocorrelation of step "
                   "residuals, up/down asymmetry per cycle) with the replicas' spread.")
    epilog = """examples:
  rpuhw validate device.yaml meas.csv
  rpuhw validate device.yaml meas.csv --report validate.json --plot validate.png
  rpuhw validate --device device.yaml --measurements meas.csv --replicas 199 --alpha 0.01

Each check prints one line: the component that differs most, measured against simulated
(mean +- standard deviation over the replicas), and its posterior-predictive p-value; it
fails at p <= alpha / 4 when the difference is also larger than its effect floor
(docs/calibration.md, "Validation").

exit status: 0 every check passes; 1 a check fails (named); 2 bad input.
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("device_pos", nargs="?", metavar="DEVICE.yaml",
                       help="device YAML (e.g. from rpuhw fit)")
        p.add_argument("measurements_pos", nargs="?", metavar="MEAS.csv",
                       help="measurement CSV")
        p.add_argument("--device", help="device YAML (instead of the first argument)")
        p.add_argument("--measurements", help="measurement CSV (instead of the second "
                                              "argument)")
        p.add_argument("--report", help="write the checks as JSON here")
        p.add_argument("--plot", help="PNG: measured against simulated for each check")
        p.add_argument("--seed", type=int, default=0, help="seed of the simulator (default 0)")
        p.add_argument("--replicas", type=int, default=None,
                       help="simulated data sets (default 79; at least 4 / alpha - 1)")
        p.add_argument("--alpha", type=float, default=0.05,
                       help="family-wise false-rejection rate of the four checks (default "
                            "0.05)")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.calibration.measurements import write_json_atomic
        from rpuhw.calibration.validate import ValidateConfig, validate

        device = _one_of(args.device_pos, args.device, "--device")
        meas = _one_of(args.measurements_pos, args.measurements, "--measurements")
        if not 0 < args.alpha < 1:
            raise UsageError(f"--alpha: expected a number in (0, 1), got {args.alpha}")
        replicas = ValidateConfig.replicas if args.replicas is None else args.replicas
        need = ValidateConfig.required_replicas(args.alpha)
        if replicas < need:
            raise UsageError(f"--replicas: at least {need} are needed for --alpha "
                             f"{args.alpha:g} (the p-value of each check must reach alpha / "
                             f"4), got {replicas}")
        for flag, path in (("--report", args.report), ("--plot", args.plot)):
            if path and (Path(path).is_dir() or not Path(path).resolve().parent.is_dir()):
                raise UsageError(f"{flag}: {path} is a folder, or its folder does not exist")
        result = validate(device, meas, seed=args.seed, replicas=replicas, alpha=args.alpha)
        print(result.summary())
        if args.report:
            write_json_atomic(args.report, {"device": str(device), "measurements": str(meas),
                                            **result.to_dict()})
        if args.plot:
            from rpuhw.calibration.plots import plot_validation

            plot_validation(result, args.plot)
        if not result.passed:
            print(f"{self.prog}: FAIL: {', '.join(result.failed)}", file=sys.stderr)
        return 0 if result.passed else 1


def _one_of(positional: str | None, flag: str | None, name: str) -> str:
    """The positional argument or its flag (exactly one)."""
    if positional and flag:
        raise UsageError(f"{name}: given twice (as an argument and as {name})")
    if not (positional or flag):
        raise UsageError(f"{name}: missing (the {name[2:]} file, as an argument or {name})")
    return str(positional or flag)


@COMMANDS.register
class SymmetryPoint(Command):
    name = "symmetry-point"
    help = "per-device symmetry points of a symmetry-point measurement -> YAML/JSON"
    description = ("Read a measurement of rpuhw characterize --protocol symmetry-point and "
                   "write each device's symmetry point (mean of its settled reads) with its "
                   "standard error, in weight units and in conductance, for the training "
                   "algorithms (rpuhw.symmetry.load_symmetry_points).")
    epilog = """example:
  rpuhw characterize --array bench:bench.yaml --rows 8 --cols 8 --devices all \\
                     --protocol symmetry-point -o sp.csv
  rpuhw symmetry-point sp.csv -o sp.yaml

exit status: 0 written (every device settled); 1 written, but some devices did not settle
within --max-pulses (listed); 2 bad input.
"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        p = parser
        p.add_argument("measurements", help="measurement CSV of --protocol symmetry-point")
        p.add_argument("-o", "--output", required=True,
                       help="file to write: .yaml/.yml (YAML) or .json (JSON)")
        p.add_argument("--window", type=int, default=None, metavar="K",
                       help="cycles per settle window (default: the sidecar's)")
        p.add_argument("--settle-tol-weight", type=float, default=None, metavar="TOL",
                       help="settle tolerance in weight units (default: the sidecar's)")

    def run(self, args: argparse.Namespace) -> int:
        from rpuhw.calibration.measurements import load_measurements
        from rpuhw.calibration.protocols import symmetry_points_of
        from rpuhw.symmetry import save_symmetry_points

        out = Path(args.output)
        if out.suffix.lower() not in (".yaml", ".yml", ".json"):
            raise ConfigError(f"expected a .yaml, .yml or .json file name, got {out.name!r}",
                              key="--output")
        if out.is_dir() or not out.resolve().parent.is_dir():
            raise ConfigError(f"{out} is a directory or its folder does not exist",
                              key="--output")
        if args.window is not None and args.window < 1:
            raise ConfigError(f"expected a positive integer, got {args.window}", key="--window")
        if args.settle_tol_weight is not None and not args.settle_tol_weight > 0:
            raise ConfigError(f"expected a positive number, got {args.settle_tol_weight}",
                              key="--settle-tol-weight")
        m = load_measurements(args.measurements, partial=True)
        if (m.meta.get("settings") or {}).get("protocol", "symmetry-point") != "symmetry-point":
            raise ConfigError(f"a {m.meta['settings']['protocol']} measurement, not a "
                              "symmetry-point one", source=args.measurements)
        data = symmetry_points_of(m, args.window, args.settle_tol_weight)
        try:
            save_symmetry_points(data, out)
        except OSError as exc:
            raise ConfigError(exc.strerror or str(exc), source=str(out)) from None
        devs = data["devices"]
        unsettled = [f"{e['row']}:{e['col']}" for e in devs if not e["settled"]]
        unit = "uS" if data["conductance_unit"] == "S" else "weight units"
        scale = 1e6 if unit == "uS" else 1.0
        print(f"{'device':>8} {'w*':>10} {'+-':>8} {'g*':>10} {'+-':>8} {'cycles':>7} settled")
        for e in devs:
            print(f"{e['row']:>4}:{e['col']:<3} {e['symmetry_point']:>+10.4f} "
                  f"{e['stderr']:>8.4f} {e['symmetry_point_conductance'] * scale:>10.4f} "
                  f"{e['stderr_conductance'] * scale:>8.4f} {e['cycles']:>7} "
                  f"{'yes' if e['settled'] else 'NO'}")
        print(f"(w* in weight units, g* in {unit}) wrote {out}")
        if unsettled:
            print(f"{self.prog}: {len(unsettled)} device(s) did not settle: "
                  f"{', '.join(unsettled[:10])}; their values are the last window's mean "
                  "(measure longer: --max-pulses)", file=sys.stderr)
            return 1
        return 0
