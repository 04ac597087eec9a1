"""Hardware in the loop: one layer of a network on a test chip, the rest simulated.

The paper's LeNet on the embedded mnist5k digits, trained with ``rpuhw.train``:
conv1 (16 x 26 devices with its bias column) runs its forward, backward and pulsed
updates on a chip behind lab instruments (``bench:FILE.yaml``); conv2, fc1 and fc2 run
on rpuhw's device simulator (``sim``, or ``sim:my_device.yaml`` with ``--device``,
e.g. the file examples/calibrate_my_device.py writes). The run writes checkpoints,
so a lost instrument connection costs at most ``--checkpoint-every`` images: run the
same command again with ``--resume``. It prints the test error after every epoch and
how many messages went to the instruments.

Run it:

    python examples/hil_training.py                        # starts an emulated bench itself
    python examples/hil_training.py --bench bench.yaml     # a real or already-running bench
    python examples/hil_training.py --bench bench.yaml --checkpoint run1
    python examples/hil_training.py --bench bench.yaml --checkpoint run1 --resume

Without ``--checkpoint`` the checkpoints go to a temporary folder that is removed at
the end. With ``--checkpoint DIR`` and no ``--bench``, the emulated bench's YAML is
written into DIR, so that a resumed run names the same bench.

``--resume`` first reads the chip and compares it with the checkpoint: a chip that came
back in another state (power-cycled, a reseated probe card, or a freshly started
emulator: without ``--bench`` a resumed run starts a new one) is refused with the
measured jump; ``--accept-jump`` continues anyway (the checkpoint's weights are
programmed onto the devices as they are).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rpuhw.drivers.emulators.launch import bench_or_emulator
from rpuhw.errors import ConfigError, HardwareError
from rpuhw.train import CHECKPOINT, load_config, train


def run(args: argparse.Namespace, ckpt: Path) -> int:
    with bench_or_emulator(args.bench, ckpt) as bench:
        cfg = load_config(None, {
            "backend": f"sim:{args.device}" if args.device else "sim",   # every layer...
            "layers": {"conv1": f"bench:{bench}"},                       # ...but conv1
            "epochs": args.epochs, "batch_size": 10, "lr": 0.1,
            "update_granularity": "batch",   # one pulse program per batch: bench-friendly
            "train_limit": args.train_limit, "test_limit": args.test_limit,
            "checkpoint": str(ckpt),          # whole state, atomically, every epoch...
            "checkpoint_every": args.checkpoint_every,   # ...and every N images
            "out": str(ckpt / "results.json"),           # results, after every epoch
            "progress": sys.stderr.isatty(),
        })
        for name, spec in {"conv1": cfg.layers["conv1"], "others": cfg.backend}.items():
            print(f"{name:7s}-> {spec}")
        try:
            results = train(cfg, resume=args.resume, accept_jump=args.accept_jump,
                            log=lambda msg: print(f"   {msg}"))
        except HardwareError as exc:   # the arrays were closed (outputs off) by train()
            print(f"hardware error: {exc}\nthe last checkpoint in {ckpt} is intact: run the "
                  "same command with --checkpoint DIR --resume once the bench is back",
                  file=sys.stderr)
            return 1

    print("\nepoch  test error")
    for epoch, err in enumerate(results["test_error"], 1):
        print(f"{epoch:5d}  {100 * err:8.2f} %")
    for layer, n in results["instrument_messages"].items():
        print(f"instrument messages ({layer} on the bench): {n}")
    if args.checkpoint:
        print(f"checkpoint and results.json in {ckpt}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("Run it:")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", metavar="FILE.yaml",
                    help="bench YAML of a real or running bench (default: start an emulator)")
    ap.add_argument("--device", metavar="FILE.yaml",
                    help="device YAML for the simulated layers (default: the built-in one)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs (2)")
    ap.add_argument("--train-limit", type=int, default=100,
                    help="training images per epoch (100)")
    ap.add_argument("--test-limit", type=int, default=200, help="test images (200)")
    ap.add_argument("--checkpoint", metavar="DIR",
                    help="checkpoint folder to keep (default: a temporary one)")
    ap.add_argument("--checkpoint-every", type=int, default=50, metavar="N",
                    help="also checkpoint every N training images (50)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run whose checkpoint is in --checkpoint DIR")
    ap.add_argument("--accept-jump", action="store_true",
                    help="with --resume: continue even though the chip's devices moved since "
                         "the checkpoint")
    args = ap.parse_args(argv)
    if args.resume and not args.checkpoint:
        ap.error("--resume needs --checkpoint DIR")
    if args.resume and not (Path(args.checkpoint) / CHECKPOINT).is_file():
        # before the folder is created or a bench started: a mistyped DIR is not a new run
        ap.error(f"--checkpoint {args.checkpoint}: nothing to resume (no {CHECKPOINT} there); "
                 "check the folder, or leave out --resume to start a new run")
    if args.accept_jump and not args.resume:
        ap.error("--accept-jump applies to --resume only")
    if args.checkpoint and not args.resume and (Path(args.checkpoint) / CHECKPOINT).exists():
        # train() would say so too, but only after programming the chip: say it now
        ap.error(f"{args.checkpoint} holds a checkpoint already: add --resume to continue "
                 "it, or choose another folder")

    try:
        if args.checkpoint:
            Path(args.checkpoint).mkdir(parents=True, exist_ok=True)
            return run(args, Path(args.checkpoint))
        with tempfile.TemporaryDirectory() as tmp:
            return run(args, Path(tmp))
    except ConfigError as exc:   # e.g. a checkpoint already there without --resume
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
