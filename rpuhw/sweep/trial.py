"""Run one trial: the same code path as ``rpuhw train --config`` (:func:`rpuhw.train.train`),
in the calling process (a Ray worker), with torch and numba on ``cpus`` threads (and with
one CPU, no background update thread: :mod:`rpuhw.sim.background`).

The trial's folder holds its device YAML (``device.KEY`` axes), its training results
(``train.json``, written after every epoch) and its checkpoint (``ckpt/``, every epoch):
a trial interrupted by a dying worker or driver continues from there when it runs
again. Whatever the training raises (a bad device value, a diverging run, an
instrument fault) becomes the record's ``status: error`` and ``error`` message: one
trial's failure never stops the sweep.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

TRAIN_JSON = "train.json"
CHECKPOINT_DIR = "ckpt"


def _message(exc: BaseException) -> str:
    from rpuhw.errors import ConfigError

    text = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line


def run_trial(trial: dict[str, Any], folder: str, cpus: int = 1,
              cwd: str | None = None) -> dict[str, Any]:
    """Train trial ``trial`` (``id``, ``params``, ``config``, ``device``) with its files
    in ``folder``; returns its record: ``status`` ``ok``/``error``, ``error``,
    ``test_error`` (after the last epoch, fraction), ``test_error_epochs``,
    ``train_loss``, ``images_per_s``, ``wall_s``, ``host``, ``results`` (the training
    results JSON)."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"id": trial["id"], "params": trial["params"], "status": "ok",
                              "error": "", "test_error": None, "test_error_epochs": [],
                              "train_loss": None, "images_per_s": None,
                              "host": socket.gethostname(), "results": None}
    try:
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths of the sweep file (device YAMLs, data)
        results = _train(trial, Path(folder), cpus)
        errors = results.get("test_error") or []
        losses = results.get("train_loss") or []
        record.update(test_error=errors[-1] if errors else None, test_error_epochs=errors,
                      train_loss=losses[-1] if losses else None,
                      images_per_s=results.get("images_per_s"), results=results)
    except Exception as exc:  # recorded; the sweep goes on
        record.update(status="error", error=_message(exc))
    record["wall_s"] = time.perf_counter() - t0
    return record


def _train(trial: dict[str, Any], folder: Path, cpus: int) -> dict[str, Any]:
    from rpuhw.config import from_mapping
    from rpuhw.sim import background
    from rpuhw.sweep import device
    from rpuhw.train import CHECKPOINT, TrainConfig, train

    # one CPU: strictly one core (no background update thread beside torch's, which
    # would take a core from the trial next to it); more: the simulator's automatic
    # choice (on while torch's threads leave a CPU of the machine free)
    background.set_enabled(False if cpus == 1 else None)
    folder.mkdir(parents=True, exist_ok=True)
    config = dict(trial["config"])
    if trial.get("device") is not None:
        config["backend"] = f"sim:{device.write(trial['device'], folder)}"
    ckpt = folder / CHECKPOINT_DIR
    config.update(out=str(folder / TRAIN_JSON), checkpoint=str(ckpt), progress=False,
                  threads=cpus)
    cfg = from_mapping(TrainConfig, config, source=f"trial {trial['id']}")
    return train(cfg, resume=(ckpt / CHECKPOINT).exists(), log=lambda msg: None)
