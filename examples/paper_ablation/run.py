"""The paper's ablation on mnist5k: one training run per rung, a table and a figure.

    python examples/paper_ablation/run.py --epochs 3 --out ablation/

Runs every ``N_*.yaml`` beside this file (TrainConfig keys) with the common
``--epochs``, ``--seed``, ``--train-limit``, ``--test-limit``, writes
``OUT/N_name.json`` per rung, ``OUT/results.md`` (markdown table) and
``OUT/curves.png`` (test error vs epoch). Runs whose JSON already has the requested
epochs are not repeated, and each rung checkpoints every epoch into
``OUT/N_name.ckpt/``, so an interrupted ablation continues where it stopped.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rpuhw.plots import plot_runs
from rpuhw.train import CHECKPOINT, load_config, train

HERE = Path(__file__).parent


def _first_epochs(res: dict, n: int) -> dict:
    """The results of the first ``n`` epochs of a longer run."""
    out = dict(res, epochs=n)
    for key in ("test_error", "train_loss", "epoch_wall_s"):
        if key in res:
            out[key] = res[key][:n]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int)
    ap.add_argument("--test-limit", type=int)
    ap.add_argument("--out", default="ablation")
    ap.add_argument("--rungs", help="comma-separated rung numbers to run (default all)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    configs = sorted(HERE.glob("[0-9]_*.yaml"))
    if args.rungs:
        keep = set(args.rungs.split(","))
        configs = [c for c in configs if c.name.split("_")[0] in keep]
    rows, paths, names, finals = [], [], [], []
    for cfg_path in configs:
        res_path = out / f"{cfg_path.stem}.json"
        done = json.loads(res_path.read_text()) if res_path.exists() else None
        if done and done.get("epochs", 0) > args.epochs:
            # a longer run of this rung exists: its first epochs are exactly this run
            # (same seed, same data order per epoch, constant learning rate)
            done = _first_epochs(done, args.epochs)
        if not done or done.get("epochs") != args.epochs:
            ckpt = out / f"{cfg_path.stem}.ckpt"
            cfg = load_config(str(cfg_path), {
                "epochs": args.epochs, "seed": args.seed, "train_limit": args.train_limit,
                "test_limit": args.test_limit, "out": str(res_path), "progress": False,
                "checkpoint": str(ckpt)})
            print(f"== {cfg_path.stem}", flush=True)
            t0 = time.perf_counter()
            resume = (ckpt / CHECKPOINT).exists()
            train(cfg, resume=resume, log=lambda m: print("   " + m, flush=True))
            print(f"   {time.perf_counter() - t0:.0f} s", flush=True)
            done = json.loads(res_path.read_text())
        paths.append(str(res_path))
        rung, _, what = cfg_path.stem.partition("_")
        names.append(f"{rung}: {what.replace('_', ' ')}")  # "1: floating point"
        finals.append(100 * done["test_error"][-1])
        c = done["config"]
        dpw = ", ".join(f"{k}={v}" for k, v in c["devices_per_weight"].items()) or "1"
        errs = " / ".join(f"{100 * e:.2f}" for e in done["test_error"])
        rows.append(f"| {cfg_path.stem} | {c['backend']} | {c['management']} | {dpw} | "
                    f"{errs} | **{100 * done['test_error'][-1]:.2f}** | "
                    f"{done['images_per_s']:.0f} |")
    table = ("| rung | backend | management | devices per weight | test error per epoch (%) "
             "| final (%) | images/s |\n|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    (out / "results.md").write_text(table + "\n")
    # beside the full range, a zoom from 0 to twice the best final error: the rungs that
    # end within a few tenths of a percent of each other stay apart
    plot_runs(paths, str(out / "curves.png"), epochs=args.epochs, labels=names,
              zoom=(0.0, min(100.0, max(1.0, 2.0 * min(finals, default=50.0)))),
              title="The paper's ablation: test error after each epoch")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
