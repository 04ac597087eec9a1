"""The asymmetric-devices study: every training algorithm on every shipped device.

    python examples/asymmetric_devices/run.py --epochs 10 --out asymmetric/
    python examples/asymmetric_devices/run.py --epochs 10 --out asymmetric/ --docs

Trains lenet on mnist5k (4,000 training / 1,000 test images), batch 1, ``nm+bm+um``,
for each algorithm registered in :mod:`rpuhw.algorithms` (``sgd``, ``mp``, ``tt``, and
whatever else is registered when the script runs) x each device (``paper``: the paper's
device ``sim``; ``hidden_device``: ``sim:drivers/emulators/hidden_device.yaml``, the
demo's chip; every aihwkit preset that loads as ``sim:preset:NAME``) x each seed, with
each algorithm's defaults (its device-dependent hyper-parameters derived from the device).

Writes into OUT:

* ``runs/DEVICE/ALGORITHM/seedS.json``: each run's results (``rpuhw train``'s JSON), and
  ``seedS.ckpt/`` its checkpoint (every epoch and every 1,000 images);
* ``results.md``: final test error (mean +- sample std over the seeds, %) and images/s,
  device x algorithm; ``results.csv``: the same, one row per (device, algorithm);
* ``curves.png``: test error after each epoch (mean over the seeds, band +- std), one
  panel per device, one line per algorithm.

The study is resumable: a run whose JSON has the requested epochs is not repeated (a
longer run's first epochs are used), an interrupted run continues from its checkpoint,
and a run that diverged is recorded (``seedS.failed.json``) and shown as such.
``--jobs N`` runs N trainings at once in separate processes (images/s then shares the
cores: compare speeds from ``--jobs 1`` runs only). ``--docs`` also writes the table and
the figure into docs/algorithms.md, between :data:`BEGIN` and :data:`END`.

``--device NAME=SPEC`` adds a device of one's own (repeatable; with no ``--devices``
only the added ones run), e.g. a calibrated simulator beside the chip it was fitted to::

    python examples/asymmetric_devices/run.py --algorithms mp --seeds 0,1,2 \
        --devices hidden_device --device fitted=sim:out/device.yaml --out calib/

Bad input (an unknown algorithm or device, a bad seed list) is one line on stderr and
exit status 2, before anything is written.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DOCS = ROOT / "docs" / "algorithms.md"
FIGURE_IN_DOCS = "results_asymmetric_devices.png"
"""The figure's file name beside the docs file (``--docs``)."""
BEGIN = "<!-- study: run.py writes from here -->"
END = "<!-- study: to here -->"
HIDDEN_DEVICE = ROOT / "drivers" / "emulators" / "hidden_device.yaml"
ORDER = ("sgd", "mp", "tt", "ttv2", "cttv2", "agad")
"""Algorithms in this order first (the rest of the registry after them, by name)."""
LONG_NAMES = {"sgd": "sgd (pulsed SGD)", "mp": "mp (mixed precision)",
              "tt": "tt (Tiki-Taka)", "ttv2": "ttv2 (Tiki-Taka v2, buffered)",
              "cttv2": "cttv2 (chopped TTv2)", "agad": "agad (chopped, dynamic reference)"}
"""Legend names of the algorithms (a newly registered one shows its own name)."""
CHECKPOINT_EVERY = 1000
"""Images between checkpoints within an epoch (and one after every epoch)."""


class BadInput(Exception):
    """A bad argument: one line, exit 2."""


@dataclass(frozen=True)
class Device:
    """One device of the study: its short name (directory, table row), its array spec
    and the name a reader sees in the figure."""

    name: str
    spec: str
    label: str


@dataclass(frozen=True)
class Job:
    device: Device
    algorithm: str
    seed: int
    result: Path
    epochs: int
    train_limit: int | None
    test_limit: int | None
    weight_scaling_omega: float = 0.0


def algorithm_names() -> list[str]:
    """Every registered algorithm: :data:`ORDER` first, then the others by name."""
    from rpuhw.algorithms import ALGORITHMS

    names = ALGORITHMS.names()
    return [a for a in ORDER if a in names] + sorted(a for a in names if a not in ORDER)


def all_devices() -> list[Device]:
    """The paper's device, the demo's hidden device and every preset that loads."""
    from rpuhw.interop.presets import preset_names, preset_status

    out = [Device("paper", "sim", "the paper's device (sim)"),
           Device("hidden_device", f"sim:{HIDDEN_DEVICE}", "hidden_device.yaml (demo chip)")]
    for name in preset_names():
        if preset_status(name) is None:
            out.append(Device(name, f"sim:preset:{name}", f"preset {name}"))
    return out


def _choose(given: str | None, allowed: Sequence[str], what: str, flag: str) -> list[str]:
    if not given:
        return list(allowed)
    chosen = [s.strip() for s in given.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in allowed]
    if unknown or not chosen:
        raise BadInput(f"{flag}: unknown {what} {', '.join(unknown) or repr(given)} "
                       f"(allowed: {', '.join(allowed)})")
    return list(dict.fromkeys(chosen))


def parse_device(text: str, known: dict[str, Device]) -> Device:
    """``NAME=SPEC`` of ``--device``: a new short name (letters, digits, ``_``, ``-``)
    and an array spec (``sim:PATH.yaml``, whose file must exist)."""
    name, eq, spec = text.partition("=")
    if not eq or not name or not spec:
        raise BadInput(f"--device: expected NAME=SPEC (e.g. fitted=sim:device.yaml), "
                       f"got {text!r}")
    if not name.replace("_", "").replace("-", "").isalnum() or name in known:
        raise BadInput(f"--device: {name!r} must be a new name of letters, digits, _ "
                       f"and - (taken: {', '.join(known)})")
    path = spec.partition(":")[2]
    if spec.startswith("sim:") and path.endswith((".yaml", ".yml")) and not Path(path).exists():
        raise BadInput(f"--device: {name}: {path}: no such file")
    return Device(name, spec, f"{name} ({spec})")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BadInput(f"--seeds: expected comma-separated integers >= 0, got {text!r}") \
            from None
    if not seeds or any(s < 0 for s in seeds):
        raise BadInput(f"--seeds: expected comma-separated integers >= 0, got {text!r}")
    return list(dict.fromkeys(seeds))


def _first_epochs(res: dict[str, Any], n: int) -> dict[str, Any]:
    """The results of the first ``n`` epochs of a longer run (same seed, same data order
    per epoch, constant learning rate: exactly the shorter run)."""
    out = dict(res, epochs=n)
    for key in ("test_error", "train_loss", "epoch_wall_s"):
        if key in res:
            out[key] = res[key][:n]
    return out


def finished(job: Job) -> dict[str, Any] | None:
    """The run's results for ``job.epochs`` epochs if they exist, else None."""
    failed = job.result.with_suffix(".failed.json")
    if failed.exists():
        return json.loads(failed.read_text())
    if not job.result.exists():
        return None
    res = json.loads(job.result.read_text())
    cfg = res.get("config") or {}
    given = {"backend": job.device.spec, "algorithm": job.algorithm, "seed": job.seed,
             "train_limit": job.train_limit, "test_limit": job.test_limit,
             "weight_scaling_omega": job.weight_scaling_omega}
    differ = [f"{k} {cfg.get(k)!r} (asked {v!r})" for k, v in given.items()
              if cfg.get(k) != v]
    if differ:
        raise BadInput(f"{job.result}: a run of another study is there ({', '.join(differ)}); "
                       "use another --out or the same sizes")
    if res.get("epochs", 0) < job.epochs:
        return None
    return _first_epochs(res, job.epochs) if res["epochs"] > job.epochs else res


def run_job(job: Job) -> tuple[Job, float, str]:
    """Train (or resume) one run; returns (job, seconds, '' or why it failed)."""
    from rpuhw.errors import ConfigError
    from rpuhw.train import CHECKPOINT, load_config, train

    ckpt = job.result.with_suffix(".ckpt")
    job.result.parent.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, {
        "model": "lenet", "data": "mnist5k", "batch_size": 1, "management": "nm+bm+um",
        "backend": job.device.spec, "algorithm": job.algorithm, "seed": job.seed,
        "epochs": job.epochs, "train_limit": job.train_limit, "test_limit": job.test_limit,
        "weight_scaling_omega": job.weight_scaling_omega,
        "out": str(job.result), "checkpoint": str(ckpt),
        "checkpoint_every": CHECKPOINT_EVERY, "progress": False, "threads": 1})
    t0 = time.perf_counter()
    try:
        train(cfg, resume=(ckpt / CHECKPOINT).exists(), log=lambda m: None)
    except FloatingPointError as exc:  # deterministic: recorded, not retried
        failed = {"config": {"backend": job.device.spec, "algorithm": job.algorithm,
                             "seed": job.seed}, "epochs": job.epochs, "failed": str(exc)}
        tmp = job.result.with_suffix(".failed.json.tmp")
        tmp.write_text(json.dumps(failed, indent=1))
        os.replace(tmp, job.result.with_suffix(".failed.json"))
        return job, time.perf_counter() - t0, f"diverged: {exc}"
    except ConfigError as exc:  # retried next time (a device or algorithm fixed meanwhile)
        return job, time.perf_counter() - t0, str(exc)
    return job, time.perf_counter() - t0, ""


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for one value)."""
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def summarize(results: dict[tuple[str, str], list[dict[str, Any]]],
              devices: Sequence[Device], algorithms: Sequence[str],
              seeds: Sequence[int]) -> list[dict[str, Any]]:
    """One row per (device, algorithm): error mean/std over the seeds (%), images/s."""
    rows = []
    for dev in devices:
        for alg in algorithms:
            runs = results.get((dev.name, alg), [])
            ok = [r for r in runs if "failed" not in r and r.get("test_error")]
            row: dict[str, Any] = {"device": dev.name, "spec": dev.spec, "algorithm": alg,
                                   "seeds": len(seeds), "runs": len(ok),
                                   "diverged": len(runs) - len(ok)}
            if ok:
                err = [100.0 * r["test_error"][-1] for r in ok]
                speed = [float(r["images_per_s"]) for r in ok if r.get("images_per_s")]
                row["test_error_mean_pct"], row["test_error_std_pct"] = _mean_std(err)
                row["images_per_s_mean"] = _mean_std(speed)[0] if speed else None
            rows.append(row)
    return rows


CSV_COLUMNS = ("device", "spec", "algorithm", "seeds", "runs", "diverged",
               "test_error_mean_pct", "test_error_std_pct", "images_per_s_mean")


def table_csv(rows: Sequence[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: ("" if row.get(k) is None else
                        f"{row[k]:.4f}" if isinstance(row.get(k), float) else row[k])
                    for k in CSV_COLUMNS})
    return buf.getvalue()


def _error_cell(row: dict[str, Any]) -> str:
    if "test_error_mean_pct" not in row:
        return "diverged" if row["diverged"] else "-"
    text = f"{row['test_error_mean_pct']:.2f}"
    if row["test_error_std_pct"] is not None:
        text += f" ± {row['test_error_std_pct']:.2f}"
    if row["diverged"]:
        text += f" ({row['diverged']} diverged)"
    return text


def table_markdown(rows: Sequence[dict[str, Any]], devices: Sequence[Device],
                   algorithms: Sequence[str], epochs: int) -> str:
    """Two markdown tables, device x algorithm: final test error and images/s."""
    by = {(r["device"], r["algorithm"]): r for r in rows}
    head = "| device | " + " | ".join(f"`{a}`" for a in algorithms) + " |\n" \
        + "|---|" + "---|" * len(algorithms) + "\n"
    err_lines, speed_lines = [], []
    for dev in devices:
        cells = [by[(dev.name, a)] for a in algorithms]
        best = min((c["test_error_mean_pct"] for c in cells if "test_error_mean_pct" in c),
                   default=None)
        errs = [f"**{_error_cell(c)}**" if best is not None
                and c.get("test_error_mean_pct") == best else _error_cell(c) for c in cells]
        speeds = [f"{c['images_per_s_mean']:.0f}" if c.get("images_per_s_mean") else "-"
                  for c in cells]
        err_lines.append(f"| {dev.name} | " + " | ".join(errs) + " |")
        speed_lines.append(f"| {dev.name} | " + " | ".join(speeds) + " |")
    return (f"Final test error after {epochs} epoch{'s' * (epochs != 1)} (%, mean ± sample "
            f"std over the seeds; best per device in bold):\n\n" + head
            + "\n".join(err_lines) + "\n\nTraining speed (images/s, mean over the seeds):\n\n"
            + head + "\n".join(speed_lines) + "\n")


def study_figure(results: dict[tuple[str, str], list[dict[str, Any]]],
                 devices: Sequence[Device], algorithms: Sequence[str], epochs: int,
                 subtitle: str = ""):
    """Test error (%) after each epoch, one panel per device, one line per algorithm
    (mean over the seeds; a band +- the sample std where there are several)."""
    from matplotlib.ticker import MaxNLocator

    from rpuhw.plots import new_figure

    ncols = min(3, len(devices)) or 1
    nrows = math.ceil(len(devices) / ncols) or 1
    fig = new_figure(3.6 * ncols + 0.4, 2.9 * nrows + 1.3)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, dev in zip(axes, devices, strict=False):
        top = 0.0
        for k, alg in enumerate(algorithms):
            curves = [[100.0 * e for e in r["test_error"][:epochs]]
                      for r in results.get((dev.name, alg), [])
                      if "failed" not in r and r.get("test_error")]
            n = min((len(c) for c in curves), default=0)
            if not n:
                continue
            stats = [_mean_std([c[i] for c in curves]) for i in range(n)]
            mean = [m for m, _ in stats]
            x = list(range(1, n + 1))
            ax.plot(x, mean, marker="o", ms=3, color=f"C{k}", label=LONG_NAMES.get(alg, alg))
            if len(curves) > 1:
                lo = [m - (s or 0.0) for m, s in stats]
                hi = [m + (s or 0.0) for m, s in stats]
                ax.fill_between(x, lo, hi, color=f"C{k}", alpha=0.2, lw=0)
                top = max(top, *hi)
            top = max(top, *mean)
        ax.set_title(dev.label, fontsize=10)
        ax.set_xlim(0.5, epochs + 0.5)
        if epochs <= 12:
            ax.set_xticks(range(1, epochs + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0.0, min(100.0, 1.1 * top + 1.0))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test error (%)")
        ax.grid(True, alpha=0.3)
    for ax in axes[len(devices):]:
        ax.set_axis_off()
    fig.suptitle("Training algorithms on asymmetric devices: test error after each epoch"
                 + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    handles = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(lab, h)
    names = [LONG_NAMES.get(a, a) for a in algorithms]
    fig.legend([handles[a] for a in names if a in handles],
               [a for a in names if a in handles], loc="outside lower center",
               ncol=min(3, max(1, len(handles))), fontsize=9, frameon=False,
               title="algorithm (mean over seeds, band ± std)", title_fontsize=9)
    return fig


def docs_block(table: str, command: str, figure_name: str, n_runs: int,
               subtitle: str) -> str:
    """The docs text between the markers."""
    import datetime

    return "\n".join([
        BEGIN, "", f"Written by `{command}` on {datetime.date.today().isoformat()} "
        f"({n_runs} runs; {subtitle}).", "", table,
        f"![test error per epoch, one panel per device]({figure_name})", "", END])


def rewrite(text: str, block: str, source: str) -> str:
    """``text`` with the marked block (markers included) replaced by ``block``."""
    a, b = text.find(BEGIN), text.find(END)
    if a < 0 or b < a:
        raise BadInput(f"{source}: no {BEGIN!r} ... {END!r} block to replace")
    return text[:a] + block + text[b + len(END):]


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algorithms", help="comma-separated (default: every registered one)")
    ap.add_argument("--devices", help="comma-separated short names (default: all; "
                    "paper, hidden_device, the loadable preset names)")
    ap.add_argument("--device", action="append", default=[], metavar="NAME=SPEC",
                    help="an extra device (repeatable), e.g. fitted=sim:out/device.yaml: "
                    "a calibrated simulator beside the chip it was fitted to")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated (default 0,1,2)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-limit", type=int, help="first N training images (quick runs)")
    ap.add_argument("--test-limit", type=int, help="first N test images (quick runs)")
    ap.add_argument("--weight-scaling-omega", type=float, default=0.0, metavar="OMEGA",
                    help="map every run's weights onto the devices' range (rpuhw train "
                    "--weight-scaling-omega; default 0: off)")
    ap.add_argument("--out", default="asymmetric_devices")
    ap.add_argument("--jobs", type=int, default=1, help="trainings at once (processes)")
    ap.add_argument("--docs", action="store_true",
                    help="also write the table and figure into docs/algorithms.md")
    ap.add_argument("--docs-file", type=Path, default=DOCS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        if not (math.isfinite(args.weight_scaling_omega) and args.weight_scaling_omega >= 0):
            raise BadInput("--weight-scaling-omega: must be a number >= 0, got "
                           f"{args.weight_scaling_omega}")
        for flag, v in (("--epochs", args.epochs), ("--jobs", args.jobs),
                        ("--train-limit", args.train_limit or 1),
                        ("--test-limit", args.test_limit or 1)):
            if v < 1:
                raise BadInput(f"{flag}: must be >= 1, got {v}")
        algorithms = _choose(args.algorithms, algorithm_names(), "algorithm", "--algorithms")
        known = {d.name: d for d in all_devices()}
        extra = [parse_device(text, known) for text in args.device]
        devices = [] if extra and args.devices is None else \
            [known[n] for n in _choose(args.devices, list(known), "device", "--devices")]
        devices += extra
        seeds = parse_seeds(args.seeds)
        if args.docs and BEGIN not in args.docs_file.read_text():
            raise BadInput(f"{args.docs_file}: no {BEGIN!r} marker to write the study at")
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: {exc.filename}: {exc.strerror} (check --docs-file)", file=sys.stderr)
        return 2
    out = Path(args.out)
    jobs = [Job(d, a, s, out / "runs" / d.name / a / f"seed{s}.json", args.epochs,
                args.train_limit, args.test_limit, args.weight_scaling_omega)
            for d in devices for a in algorithms for s in seeds]
    try:
        todo = [j for j in jobs if finished(j) is None]
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    log(f"{len(jobs)} runs, {len(jobs) - len(todo)} done already, {len(todo)} to train "
        f"({args.jobs} at once)")
    problems = []

    def report(job: Job, secs: float, why: str) -> None:
        tag = f"{job.device.name} / {job.algorithm} / seed {job.seed}"
        log(f"  {tag}: {why or 'done'} ({secs:.0f} s)")
        if why and not why.startswith("diverged"):
            problems.append(f"{tag}: {why}")

    if args.jobs == 1:
        for job in todo:
            report(*run_job(job))
    elif todo:
        import multiprocessing

        # spawn: a fresh interpreter per worker (fork after torch's threads can deadlock)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=ctx) as pool:
            for fut in as_completed([pool.submit(run_job, j) for j in todo]):
                report(*fut.result())
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for job in jobs:
        res = finished(job)
        if res is not None:
            results.setdefault((job.device.name, job.algorithm), []).append(res)
    rows = summarize(results, devices, algorithms, seeds)
    table = table_markdown(rows, devices, algorithms, args.epochs)
    n_train = args.train_limit or 4000
    n_test = args.test_limit or 1000
    subtitle = (f"lenet on mnist5k, {n_train} training / {n_test} test images, batch 1, "
                f"nm+bm+um, {len(seeds)} seed{'s' * (len(seeds) != 1)}")
    from rpuhw.plots import save_figure

    out.mkdir(parents=True, exist_ok=True)
    _atomic_text(out / "results.md", table)
    _atomic_text(out / "results.csv", table_csv(rows))
    fig = study_figure(results, devices, algorithms, args.epochs, subtitle)
    save_figure(fig, out / "curves.png", dpi=130)
    log(table)
    log(f"wrote {out / 'results.md'}, {out / 'results.csv'}, {out / 'curves.png'}")
    if args.docs:
        cmd = ["python", "examples/asymmetric_devices/run.py"] + [
            a for a in (argv if argv is not None else sys.argv[1:]) if a != "--docs"]
        block = docs_block(table, shlex.join(cmd), FIGURE_IN_DOCS, len(jobs), subtitle)
        save_figure(fig, args.docs_file.parent / FIGURE_IN_DOCS, dpi=130)
        _atomic_text(args.docs_file,
                     rewrite(args.docs_file.read_text(), block, str(args.docs_file)))
        log(f"wrote the study into {args.docs_file} and {FIGURE_IN_DOCS} beside it")
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
