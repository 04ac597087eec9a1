"""``rpuhw fit meas.csv [--model NAME|auto] -o device.yaml [--plot] [--report] [--force]``."""

from __future__ import annotations

import argparse
import sys

from rpuhw.errors import ConfigError

EPILOG = """examples:
  rpuhw fit meas.csv -o device.yaml                      # every model, chosen by BIC
  rpuhw fit meas.csv --model soft_bounds -o device.yaml --plot fit.png --report fit.json
  rpuhw train --backend sim:device.yaml                  # then train on the fitted device

exit status: 0 written; 1 the fit is not trustworthy (nothing written, see the reason;
--force writes anyway); 2 bad input.
"""


def build_parser(prog: str = "rpuhw fit") -> argparse.ArgumentParser:
    from rpuhw.calibration.fit_models import FIT_MODELS

    p = argparse.ArgumentParser(prog=prog, epilog=EPILOG,
                                description="Fit device models to a measurement CSV and "
                                            "write a device YAML for sim:device.yaml.",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("measurements", help="measurement CSV (rpuhw characterize or your own)")
    p.add_argument("--model", default="auto",
                   help=f"auto (default) or one of: {', '.join(sorted(FIT_MODELS))}")
    p.add_argument("-o", "--output", required=True, help="device YAML to write")
    p.add_argument("--plot", help="PNG with traces, step vs conductance and device maps")
    p.add_argument("--report", help="JSON with scores, per-device parameters and the choice")
    p.add_argument("--criterion", default="bic", choices=("bic", "aic"),
                   help="information criterion of --model auto (default bic)")
    p.add_argument("--force", action="store_true",
                   help="write even when the fit is flagged as not trustworthy")
    return p


def main(argv: list[str] | None = None, prog: str = "rpuhw fit") -> int:
    """Run ``rpuhw fit``; returns the exit status."""
    from rpuhw.calibration.fit import FitConfig, fit
    from rpuhw.calibration.fit_report import parameter_table, write_report
    from rpuhw.calibration.measurements import load_measurements
    from rpuhw.device_spec import save_device

    parser = build_parser(prog)
    parser.error = lambda message: _fail(message)  # type: ignore[method-assign]
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    except _BadArgs as exc:
        print(f"rpuhw fit: error: {exc}", file=sys.stderr)
        return 2
    try:
        m = load_measurements(args.measurements)
        res = fit(m, args.model, FitConfig(criterion=args.criterion))
        print(parameter_table(res))
        if not res.ok and not args.force:
            print(f"rpuhw fit: not written: {res.reason} (use --force to write anyway)",
                  file=sys.stderr)
            return 1
        spec = res.to_device_spec()
        if args.plot:
            from rpuhw.calibration.plots import plot_fit

            plot_fit(res, args.plot)
        if args.report:
            write_report(res, args.report)
        save_device(spec, args.output)
    except ConfigError as exc:
        print(f"rpuhw fit: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rpuhw fit: error: {exc.filename or ''}: {exc.strerror or exc}",
              file=sys.stderr)
        return 2
    if not res.ok:
        print(f"rpuhw fit: warning: written despite: {res.reason} (--force)", file=sys.stderr)
    print(f"wrote {args.output}" + (f", {args.plot}" if args.plot else "")
          + (f", {args.report}" if args.report else ""))
    return 0


class _BadArgs(Exception):
    pass


def _fail(message: str):
    raise _BadArgs(message)


if __name__ == "__main__":
    sys.exit(main())
