"""Whole runs: images/s from process start to results file, ``rpuhw train`` vs aihwkit.

    python -m benchmarks.train --whole-run [--sizes 500,2000,4000] [--repeats 1]
                               [--test-images 200] [--aihwkit-python PYTHON]

Each run is a fresh process, timed by this one from just before it starts until its
results file exists (polled every 2 ms; the process's exit is reported too):

* **rpuhw**: the real command line at its defaults, ``rpuhw train --model lenet
  --backend sim --management nm+bm+um --bl 10 --update-granularity position
  --batch-size 1 --epochs 1 --train-limit N --test-limit T --out results.json`` (the
  paper's device and periphery; one torch and numba thread and background updates, as
  ``rpuhw train`` sets them; the progress bar on, as on a terminal: ``RPUHW_PROGRESS=bar``,
  since into a pipe rpuhw writes only a line every few seconds);
* **aihwkit** (1.2, at its best setting: one thread, ``OMP_NUM_THREADS`` and
  ``OPENBLAS_NUM_THREADS`` 1): ``_aihwkit_train.py --whole-run`` in the interpreter
  ``--aihwkit-python``: the same N training images in the order rpuhw's epoch takes
  them, the same initial weights, the same T test images, results JSON at the end.

images/s = N / (seconds from process start to results file): start-up, imports, data,
model, training, test evaluation and the results file all count. **Time to first
image**: process start to the first trained image, read off a line each side writes:
rpuhw's progress bar (the first ``n/N`` with n >= 1 on stderr; ``first_image_n`` says
which n, 1 unless the bar skipped lines), aihwkit's ``first image trained`` on stdout;
``training_start_s`` likewise to the start of the training loop (rpuhw's bar at
``0/N``, aihwkit's ``training starts``): imports, data and model before it.
``python -c "import torch"`` in each interpreter is timed in every repetition as the
baseline of start-up. Before the timed runs, one short untimed run of each side (20
images) warms the disk caches and numba's on-disk kernel cache; its times are reported.
Sizes run interleaved (rpuhw then aihwkit per size) in every repetition.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numba
import numpy as np
import torch

import rpuhw
from benchmarks._common import aihwkit_unavailable
from rpuhw.data import epoch_order, load_dataset
from rpuhw.models import LeNet

SIZES = (500, 2000, 4000)
TEST_IMAGES = 200
WARMUP_IMAGES = 20
SEED = 0
POLL_S = 0.002
ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("conv1", "conv2", "fc1", "fc2")
_BAR = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")  # tqdm: "...| 17/500 [00:01<..."


@dataclass
class Timed:
    """One process, timed from just before its start (seconds)."""

    to_results_s: float | None
    """Until the results file existed (None: it never did)."""
    to_exit_s: float
    """Until the process had exited."""
    training_start_s: float | None
    """Until the line saying the training loop starts was read (None: none seen)."""
    first_image_s: float | None
    """Until the first-image line was read (None: none seen)."""
    first_image_n: int | None
    """Images trained according to that line (rpuhw's progress bar; 1 for aihwkit)."""
    returncode: int
    stderr_tail: str


Mark = Callable[[str], "int | None"]
"""Recognises a line in a process's output so far: a count >= 0, or None."""


def timed_process(cmd: list[str], results: Path, start: Mark, first: Mark,
                  env: dict[str, str] | None = None, cwd: Path | None = None) -> Timed:
    """Run ``cmd``; time the results file and the lines ``start`` and ``first`` recognise."""
    seen: dict[str, tuple[float, int]] = {}
    marks = {"start": start, "first": first}
    tails = {"stdout": "", "stderr": ""}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            cwd=cwd)

    def pump(stream, name: str) -> None:
        fd = stream.fileno()
        while chunk := os.read(fd, 65536):
            now = time.perf_counter() - t0
            tail = (tails[name] + chunk.decode(errors="replace"))[-20000:]
            tails[name] = tail
            for key, mark in marks.items():
                n = None if key in seen else mark(tail)
                if n is not None:
                    seen[key] = (now, n)

    pumps = [threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
             threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True)]
    for p in pumps:
        p.start()
    to_results = None
    while proc.poll() is None:
        if to_results is None and results.exists():
            to_results = time.perf_counter() - t0
        time.sleep(POLL_S)
    to_exit = time.perf_counter() - t0
    if to_results is None and results.exists():  # written in the last poll interval
        to_results = to_exit
    for p in pumps:
        p.join()
    fs, fn = seen.get("first", (None, None))
    return Timed(to_results, to_exit, seen.get("start", (None,))[0], fs, fn,
                 proc.returncode, tails["stderr"][-1500:])


def bar_count(text: str, least: int) -> int | None:
    """The first count >= ``least`` of a tqdm bar in ``text`` (rpuhw's progress bar on
    stderr: ``0/N`` when the epoch starts, then the images trained)."""
    for m in _BAR.finditer(text):
        if int(m.group(1)) >= least:
            return int(m.group(1))
    return None


def line(text: str, words: str) -> int | None:
    """0 once ``words`` appear (aihwkit's script says ``training starts`` and ``first
    image trained``)."""
    return 0 if words in text else None


def rpuhw_command(images: int | str, test_images: int, out: Path) -> list[str]:
    """``rpuhw train`` (the installed console script beside this interpreter)."""
    script = Path(sys.executable).with_name("rpuhw")
    prog = [str(script)] if script.exists() else [sys.executable, "-m", "rpuhw.cli"]
    return [*prog, "train", "--model", "lenet", "--backend", "sim", "--management",
            "nm+bm+um", "--bl", "10", "--update-granularity", "position", "--batch-size",
            "1", "--epochs", "1", "--train-limit", str(images), "--test-limit",
            str(test_images), "--out", str(out)]


def write_aihwkit_inputs(folder: Path, images: int, test_images: int) -> None:
    """The images rpuhw's run trains on, in its epoch order, its initial weights and
    test set, as ``.npy`` files (written before the timed process starts)."""
    data = load_dataset("mnist5k", train_limit=images, test_limit=test_images)
    order = epoch_order(len(data.x_train), 0, SEED)
    np.save(folder / "images.npy", data.x_train[order].numpy().astype(np.float32))
    np.save(folder / "labels.npy", data.y_train[order].numpy().astype(np.int64))
    np.save(folder / "test_images.npy", data.x_test.numpy().astype(np.float32))
    np.save(folder / "test_labels.npy", data.y_test.numpy().astype(np.int64))
    torch.manual_seed(SEED)  # rpuhw train: torch.manual_seed(seed), then the model
    model = LeNet()
    for name in LAYERS:
        layer = getattr(model, name)
        np.save(folder / f"{name}.weight.npy", layer.weight.detach().numpy())
        np.save(folder / f"{name}.bias.npy", layer.bias.detach().numpy())


def aihwkit_command(python: str, data: Path, out: Path) -> list[str]:
    script = Path(__file__).with_name("_aihwkit_train.py")
    return [python, str(script), "--whole-run", "--data", str(data), "--out", str(out),
            "--threads", "1", "--seed", str(SEED)]


AIHWKIT_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
RPUHW_ENV = {"RPUHW_PROGRESS": "bar"}
"""rpuhw's progress bar into the pipe (only a line every few seconds by default there), as
a user sees it on a terminal: its 0/N and 1/N mark the loop's start and first image."""


def run_rpuhw(images: int, test_images: int, tmp: Path) -> dict:
    out = tmp / f"rpuhw-{images}.json"
    out.unlink(missing_ok=True)
    t = timed_process(rpuhw_command(images, test_images, out), out,
                      lambda text: bar_count(text, 0), lambda text: bar_count(text, 1),
                      env={**os.environ, **RPUHW_ENV}, cwd=tmp)
    return _report(t, images, out)


def run_aihwkit(python: str, images: int, test_images: int, tmp: Path) -> dict:
    data = tmp / f"aihwkit-data-{images}"
    data.mkdir(exist_ok=True)
    write_aihwkit_inputs(data, images, test_images)
    out = tmp / f"aihwkit-{images}.json"
    out.unlink(missing_ok=True)
    t = timed_process(aihwkit_command(python, data, out), out,
                      lambda text: line(text, "training starts"),
                      lambda text: 1 if line(text, "first image trained") == 0 else None,
                      env={**os.environ, **AIHWKIT_ENV}, cwd=tmp)
    return _report(t, images, out)


def _report(t: Timed, images: int, out: Path) -> dict:
    """Figures of one timed run, with what its results file says."""
    rep = asdict(t)
    if t.returncode or t.to_results_s is None:
        rep["failed"] = True
        return rep
    del rep["stderr_tail"]
    rep["images"] = images
    rep["images_per_s"] = images / t.to_results_s
    res = json.loads(out.read_text())
    rep["training_loop_images_per_s"] = res.get("images_per_s")  # the side's own figure
    err = res.get("test_error")
    rep["test_error"] = err[-1] if isinstance(err, list) else err
    for key in ("aihwkit_version", "torch_version", "torch_threads", "env_threads"):
        if key in res:
            rep[key] = res[key]
    return rep


def import_torch_s(python: str) -> float:
    """Seconds of ``python -c "import torch"`` (process start to exit)."""
    t0 = time.perf_counter()
    subprocess.run([python, "-c", "import torch"], check=True)
    return time.perf_counter() - t0


def _git() -> dict:
    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                  check=True).stdout.rstrip("\n")
        except (OSError, subprocess.CalledProcessError):
            return ""

    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no")
               .splitlines()]
    return {"commit": git("rev-parse", "HEAD") or None, "uncommitted_changes": changed}


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _load() -> dict[str, float]:
    one, five, fifteen = os.getloadavg()
    return {"1min": one, "5min": five, "15min": fifteen}


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _say(msg: str) -> None:
    print(f"benchmarks.train --whole-run: {msg}", file=sys.stderr, flush=True)


def whole_run(sizes: list[int], repeats: int, test_images: int, aihwkit_python: str,
              command: str) -> dict:
    """All runs and their summary (see the module docstring)."""
    reason = aihwkit_unavailable(aihwkit_python)
    result: dict = {
        "benchmark": "train", "mode": "whole_run", "command": command, "git": _git(),
        "machine": {"node": platform.node(), "cpu": _cpu(), "cpu_count": os.cpu_count(),
                    "platform": platform.platform()},
        "versions": {"rpuhw": rpuhw.__version__, "python": platform.python_version(),
                     "torch": torch.__version__, "numba": numba.__version__},
        "settings": {
            "network": "lenet", "dataset": "mnist5k", "batch_size": 1, "lr": 0.01, "bl": 10,
            "test_images": test_images, "sizes": sizes, "repeats": repeats,
            "rpuhw_command": rpuhw_command("N", test_images, Path("results.json")),
            "aihwkit_command": (None if reason else
                                aihwkit_command(aihwkit_python, Path("DATA"), Path("OUT"))),
            "aihwkit_env": AIHWKIT_ENV, "poll_s": POLL_S,
            "environment": {k: v for k, v in os.environ.items()
                            if k == "PYTHONPATH" or k.startswith(("RPUHW_", "NUMBA_", "OMP_"))}},
        "loadavg_before": _load(), "warmup": {}, "import_torch_s": {"rpuhw_python": [],
                                                                    "aihwkit_python": []},
        "runs": [],
    }
    if reason:
        result["aihwkit_skipped"] = reason
    with tempfile.TemporaryDirectory(prefix="rpuhw-whole-run-") as name:
        tmp = Path(name)
        _say(f"warm-up runs ({WARMUP_IMAGES} images)")
        result["warmup"]["rpuhw"] = run_rpuhw(WARMUP_IMAGES, WARMUP_IMAGES, tmp)
        if not reason:
            result["warmup"]["aihwkit"] = run_aihwkit(aihwkit_python, WARMUP_IMAGES,
                                                      WARMUP_IMAGES, tmp)
        for rep in range(repeats):
            result["import_torch_s"]["rpuhw_python"].append(import_torch_s(sys.executable))
            if not reason:
                result["import_torch_s"]["aihwkit_python"].append(
                    import_torch_s(aihwkit_python))
            for n in sizes:
                _say(f"repeat {rep + 1}/{repeats}: {n} images")
                run = {"repeat": rep + 1, "images": n,
                       "rpuhw": run_rpuhw(n, test_images, tmp)}
                if not reason:
                    run["aihwkit"] = run_aihwkit(aihwkit_python, n, test_images, tmp)
                    a, b = run["rpuhw"].get("images_per_s"), run["aihwkit"].get("images_per_s")
                    run["ratio_rpuhw_over_aihwkit"] = a / b if a and b else None
                result["runs"].append(run)
    result["loadavg_after"] = _load()
    aihw = result["warmup"].get("aihwkit", {})
    if "aihwkit_version" in aihw:
        result["versions"]["aihwkit"] = aihw["aihwkit_version"]
        result["versions"]["aihwkit_torch"] = aihw.get("torch_version")
    result["summary"] = summarize(result["runs"], sizes)
    return result


def summarize(runs: list[dict], sizes: list[int]) -> dict:
    """Per size: the values of every repetition and their medians."""
    out = {}
    for n in sizes:
        mine = [r for r in runs if r["images"] == n]
        row: dict = {}
        for side in ("rpuhw", "aihwkit"):
            for key in ("images_per_s", "to_results_s", "training_start_s", "first_image_s"):
                vals = [r[side].get(key) for r in mine if side in r]
                if vals:
                    row[f"{side}_{key}"] = vals
                    row[f"{side}_{key}_median"] = _median(vals)
        ratios = [r.get("ratio_rpuhw_over_aihwkit") for r in mine]
        if any(v is not None for v in ratios):
            row["ratio_rpuhw_over_aihwkit"] = ratios
            row["ratio_median"] = _median(ratios)
        out[str(n)] = row
    return out
