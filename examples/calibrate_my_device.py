"""From your device measurements to a network trained on a simulator of your device.

Three steps:

1. a measurement CSV: pulse-response traces of a few devices (n up pulses, then n
   down pulses, a read after each). Bring your own with ``--csv my.csv``; without
   it, the script characterises an emulated test chip through the instrument
   drivers and writes such a file in a temporary folder;
2. fit a device model to it (``model="auto"``: every model rpuhw knows, the best by
   BIC), print the parameter table and write the device YAML;
3. train the paper's LeNet on the embedded mnist5k with every layer on the
   simulator of that device, ``backend="sim:<yaml>"``, and print the test error.

Your CSV needs a header line and one row per read; the columns may come in any
order and extra columns are ignored:

    device,pulse,polarity,conductance        required
    cycle,row,col,time_s,read_voltage        optional

``device`` an integer id; ``pulse`` the number of pulses applied in this half-cycle
before the read (0 = the read before the first pulse); ``polarity`` +1/-1 (or
up/down, set/reset); ``conductance`` in siemens; ``cycle`` numbers repeated up/down
sweeps. For example:

    polarity,device,pulse,conductance
    up,0,0,2.1e-05
    up,0,1,2.3e-05
    ...
    down,0,0,8.9e-05

Run it:

    python examples/calibrate_my_device.py                    # measure an emulated chip
    python examples/calibrate_my_device.py --csv my.csv       # your measurements
    python examples/calibrate_my_device.py --yaml chip.yaml   # where the YAML goes
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from rpuhw import open_array
from rpuhw.calibration.fit import fit
from rpuhw.calibration.fit_report import parameter_table
from rpuhw.calibration.measurements import MeasurementWriter, load_measurements
from rpuhw.calibration.protocols import parse_devices, protocol_meta, pulse_response
from rpuhw.device_spec import save_device
from rpuhw.drivers.emulators.launch import bench_or_emulator
from rpuhw.errors import ConfigError
from rpuhw.train import load_config, train


def measure_chip(bench: Path, csv: Path, devices: int, pulses: int, cycles: int) -> None:
    """Pulse response of ``devices`` devices of the bench's chip -> ``csv`` (+ sidecar)."""
    from rpuhw.drivers.bench_config import load_bench

    conf = load_bench(bench)                       # checks the YAML; contacts nothing
    rows, cols = conf.rows, conf.cols              # the chip lines the bench has wired
    with open_array(f"bench:{bench}", rows, cols) as chip:       # outputs off on exit
        chosen = parse_devices(str(devices), rows, cols)         # spread over the chip
        meta = protocol_meta(chip, chosen, {"protocol": "pulse-response", "pulses": pulses,
                                            "cycles": cycles})
        with MeasurementWriter(csv, meta) as writer:   # streams rows, writes meas.json
            pulse_response(chip, chosen, pulses, cycles, writer,
                           progress=sys.stderr.isatty())
            writer.finish()
        print(f"measured {len(chosen)} devices x {cycles} cycle(s) x {2 * pulses} pulses "
              f"({chip.stats()['messages']} instrument messages) -> {csv}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("Three steps:")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--csv", help="your measurement CSV (default: measure an emulated chip)")
    ap.add_argument("--bench", metavar="FILE.yaml",
                    help="without --csv: measure this bench instead of an emulated one")
    ap.add_argument("--devices", type=int, default=8, help="devices to measure (8)")
    ap.add_argument("--pulses", type=int, default=120, help="pulses per direction (120)")
    ap.add_argument("--cycles", type=int, default=2, help="up/down cycles (2)")
    ap.add_argument("--yaml", default="my_device.yaml",
                    help="fitted device YAML to write (default ./my_device.yaml)")
    ap.add_argument("--train-limit", type=int, default=300, help="training images (300)")
    ap.add_argument("--test-limit", type=int, default=200, help="test images (200)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        # ---- 1. the measurement CSV ------------------------------------------------------
        if args.csv:
            csv = Path(args.csv)
        else:
            csv = Path(tmp) / "meas.csv"
            with bench_or_emulator(args.bench, Path(tmp)) as bench:
                measure_chip(bench, csv, args.devices, args.pulses, args.cycles)
            print("first lines of the CSV (what a file of yours looks like):")
            for line in csv.read_text().splitlines()[:4]:
                print(f"   {line}")

        # ---- 2. fit a device model and write the YAML -------------------------------------
        try:
            m = load_measurements(csv)   # bad files: one error naming the line and column
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"\nloaded {len(m)} reads of {len(set(m.device.tolist()))} devices from {csv}")
        t0 = time.perf_counter()
        result = fit(m, model="auto")
        print(f"fitted in {time.perf_counter() - t0:.1f} s:")
        print(parameter_table(result))
        if not result.ok:  # still usable, but check the notes before trusting it
            print(f"warning: not a confident fit ({result.reason})")
        save_device(result.to_device_spec(), args.yaml)
        print(f"\nwrote {args.yaml} (model {result.model}); use it as "
              f"open_array(\"sim:{args.yaml}\", rows, cols) or --backend sim:{args.yaml}")

    # ---- 3. train on the simulator of the fitted device -----------------------------------
    cfg = load_config(None, {
        "backend": f"sim:{args.yaml}",     # every layer on arrays of the fitted device
        "batch_size": 10, "lr": 0.1, "update_granularity": "batch",
        "train_limit": args.train_limit, "test_limit": args.test_limit,
        "progress": sys.stderr.isatty(),
    })
    print(f"\ntraining lenet on sim:{args.yaml} ({args.train_limit} images, batch size 10)")
    results = train(cfg, log=lambda msg: print(f"   {msg}"))
    print(f"test error with the fitted device: {100 * results['test_error'][-1]:.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
