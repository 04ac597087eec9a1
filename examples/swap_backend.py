"""Move a layer from the simulator to a test chip by changing one string.

The training function below is an ordinary PyTorch loop: the paper's LeNet on the
embedded mnist5k digits, batch size 10, learning rate 0.1, pulsed updates sent once
per batch (``granularity="batch"``, what a bench can afford). Every layer lives on
simulated resistive arrays; conv1 (16 x 26 devices with its bias column) lives
wherever ``SPEC`` says. The script runs it twice:

    SPEC = "sim"                 conv1 on rpuhw's device simulator
    SPEC = f"bench:{bench}"      conv1 on a chip behind lab instruments

and prints both test errors. Nothing else changes between the two runs.

Run it:

    python examples/swap_backend.py                       # starts an emulated bench itself
    python examples/swap_backend.py --bench bench.yaml    # a real or already-running bench

(``rpuhw emulate --rows 32 --cols 32 --bench-out bench.yaml`` serves an emulated one;
docs/hardware.md explains how to write bench.yaml for real instruments.)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

from rpuhw.data import load_dataset
from rpuhw.drivers.emulators.launch import bench_or_emulator
from rpuhw.models import LeNet
from rpuhw.nn import AnalogSGD, analog_layers, convert
from rpuhw.schedule import LayerPlan


def train_lenet(SPEC: str, train_limit: int, test_limit: int) -> dict:
    """Train LeNet with conv1 on the array ``SPEC``; return its test error and stats."""
    torch.manual_seed(0)  # the same initial weights in both runs
    data = load_dataset("mnist5k", train_limit=train_limit, test_limit=test_limit)

    # conv1 on SPEC, every other layer on the simulator ("sim"); on a bench this
    # programs the initial weights into the chip (write-verify), which takes a while
    t0 = time.perf_counter()
    model = convert(LeNet(), {
        "conv1": LayerPlan(SPEC, granularity="batch"),
        "default": LayerPlan("sim", granularity="batch"),
    }, seed=0)
    opt = AnalogSGD(model.parameters(), lr=0.1)  # digital SGD + pulsed array updates
    print(f"   arrays ready ({time.perf_counter() - t0:.0f} s), training...")

    try:
        for i in range(0, len(data.x_train), 10):           # batches of 10 images
            x, y = data.x_train[i:i + 10], data.y_train[i:i + 10]
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)              # forward on the arrays
            loss.backward()                                  # backward on the arrays
            opt.step()                                       # pulses sent to the arrays
        print(f"   trained on {len(data.x_train)} images, last batch loss {loss.item():.3f}")

        model.eval()                                         # test: no updates
        wrong = 0
        with torch.no_grad():
            for i in range(0, len(data.x_test), 100):
                predicted = model(data.x_test[i:i + 100]).argmax(1)
                wrong += int((predicted != data.y_test[i:i + 100]).sum())
        error = wrong / len(data.x_test)

        # hardware arrays count the messages they exchanged with the instruments
        conv1 = analog_layers(model)["conv1"].grid.arrays[0]
        messages = conv1.stats().get("messages")  # instrument messages; None on a simulator
    finally:
        # a hardware array holds instrument sessions: close it (outputs off, relays open)
        for layer in analog_layers(model).values():
            for array in layer.grid.arrays:
                array.close()
    return {"error": error, "messages": messages, "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog=__doc__.split("Run it:")[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench", metavar="FILE.yaml",
                    help="bench YAML of a real or running bench (default: start an emulator)")
    ap.add_argument("--train-limit", type=int, default=200, help="training images (200)")
    ap.add_argument("--test-limit", type=int, default=200, help="test images (200)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # one thread is as fast for these small matrices

    with bench_or_emulator(args.bench) as bench:
        results = {}
        # ------------------------------------------------------------------------------
        # The ONLY difference between the two runs is this one string:
        for SPEC in ("sim",                 # conv1 on the simulator
                     f"bench:{bench}"):     # conv1 on the chip
            # --------------------------------------------------------------------------
            print(f'== conv1 on "{SPEC}"')
            results[SPEC] = r = train_lenet(SPEC, args.train_limit, args.test_limit)
            msgs = f", {r['messages']} instrument messages" if r["messages"] else ""
            print(f"   test error {100 * r['error']:.2f} % ({r['seconds']:.0f} s{msgs})")

    print(f"\nsummary ({args.train_limit} training / {args.test_limit} test images; a short "
          "run, far from converged: compare the two numbers):")
    for SPEC, r in results.items():
        quoted = f'"{SPEC}"'
        print(f"  SPEC = {quoted:44s} test error {100 * r['error']:6.2f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())
