"""Run a sweep's trials on Ray: a local Ray by default, a cluster with ``--address``.

Each trial is one Ray task (:func:`rpuhw.sweep.trial.run_trial`) with ``num_cpus =
--cpus-per-trial`` and ``max_retries=1`` (a worker that dies is retried once; a second
death is recorded as the trial's error). Trials on an instrument (``bench:``/``arc2:``
specs) also need one unit of a custom resource named after the instrument
(:func:`resource_name`), which a local Ray offers once per instrument and a cluster node
offers when started with ``ray start --resources '{"NAME": 1}'`` on the host wired to the
instrument; the driver moreover never submits two trials of one instrument at once. So
no two trials ever drive one chip together.

The driver writes every record as its trial finishes (:class:`~rpuhw.sweep.results.SweepDir`)
and shows a progress line on stderr (:class:`Progress`). Ray is imported here only,
inside the functions.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from rpuhw.errors import ConfigError
from rpuhw.sweep.results import SweepDir
from rpuhw.sweep.trials import Trial


@dataclass
class RayOptions:
    """Where and how trials run."""

    address: str | None = None
    """An existing Ray cluster (``HOST:PORT``, ``ray://HOST:PORT`` or ``auto``); None:
    start a local Ray with ``num_cpus``."""
    num_cpus: int | None = None
    """CPUs of the local Ray (None: the machine's)."""
    cpus_per_trial: int = 1
    """CPUs (and torch/numba threads) of each trial."""
    max_concurrent: int | None = None
    """Trials at once (None: as many as the cluster's CPUs allow)."""


def resource_name(instrument: str) -> str:
    """The Ray resource of one instrument spec (``bench:lab/bench.yaml`` ->
    ``rpuhw_instrument_bench_yaml_1a2b3c4d``): one unit per instrument."""
    stem = re.sub(r"[^A-Za-z0-9]+", "_", os.path.basename(instrument.partition(":")[2]))
    digest = hashlib.sha256(instrument.encode()).hexdigest()[:8]
    return f"rpuhw_instrument_{stem.strip('_')}_{digest}"


def task_options(trial: Trial, cpus: int) -> dict[str, Any]:
    """Ray task options of a trial: its CPUs, one retry, its instruments' resources."""
    opts: dict[str, Any] = {"num_cpus": cpus, "max_retries": 1, "retry_exceptions": False}
    if trial.instruments:
        opts["resources"] = {resource_name(i): 1 for i in trial.instruments}
    return opts


def check_address(address: str, timeout: float = 3.0) -> None:
    """Refuse an unreachable ``--address`` before Ray is touched (one ConfigError)."""
    if address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"expected HOST:PORT, ray://HOST:PORT or auto, got {address!r}",
                          key="--address")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                          "start one with `ray start --head` there, or leave out --address "
                          "for a local Ray", key="--address") from None


def start_ray(opts: RayOptions, instruments: list[str]) -> bool:
    """Connect to the cluster or start a local Ray; returns whether this call started
    (and so must shut down) the connection. A Ray already running in this process (a
    notebook's, a test's) is used as it is."""
    import logging

    import ray

    if ray.is_initialized():
        _check_resources(instruments, "the Ray of this process")
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune: quiet with verbose=0
    common = {"include_dashboard": False, "log_to_driver": False,
              "logging_level": logging.WARNING, "configure_logging": True}
    if opts.address:
        ray.init(address=opts.address, **{k: v for k, v in common.items()
                                         if k != "include_dashboard"})
        _check_resources(instruments, f"the cluster at {opts.address}")
    else:
        ray.init(num_cpus=opts.num_cpus or os.cpu_count() or 1,
                 resources={resource_name(i): 1 for i in instruments}, **common)
    return True


def _check_resources(instruments: list[str], where: str) -> None:
    import ray

    have = ray.cluster_resources()
    for i in instruments:
        name = resource_name(i)
        if have.get(name, 0) < 1:
            raise ConfigError(f"{where} offers no resource {name} for instrument {i}: start "
                              f"the node wired to it with `ray start --address ... "
                              f"--resources '{{\"{name}\": 1}}'`", key="backend")


class Progress:
    """The progress line on stderr: trials done / running / failed and the ETA (from the
    pace of the trials finished in this session)."""

    def __init__(self, total: int, done: int = 0, failed: int = 0,
                 stream: TextIO | None = None, every_s: float = 30.0):
        self.total, self.done, self.failed, self.running = total, done, failed, 0
        self.start_done = done
        self.t0 = time.monotonic()
        self._stream = stream  # None: sys.stderr when printing (Ray Tune pickles this)
        self.every_s = every_s
        self._last = 0.0

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    @property
    def _tty(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def line(self) -> str:
        new = self.done - self.start_done
        left = self.total - self.done
        if new and left:
            eta = _duration((time.monotonic() - self.t0) / new * left)
        else:
            eta = "0s" if not left else "?"
        return (f"sweep: {self.done}/{self.total} done, {self.running} running, "
                f"{self.failed} failed, ETA {eta}")

    def show(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        if self._tty:
            print("\r" + self.line().ljust(70), end="", file=self.stream, flush=True)
        else:
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if self._tty:
            print(file=self.stream, flush=True)


def _duration(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def trial_payload(trial: Trial) -> dict[str, Any]:
    """What a worker needs of a trial (:func:`~rpuhw.sweep.trial.run_trial`'s input)."""
    return {"id": trial.id, "params": trial.params, "config": trial.config,
            "device": trial.device}


def error_record(trial: Trial, message: str) -> dict[str, Any]:
    """The record of a trial whose worker failed (died twice)."""
    return {"id": trial.id, "params": trial.params, "status": "error",
            "error": " ".join(message.split())[:2000], "test_error": None,
            "test_error_epochs": [], "train_loss": None, "images_per_s": None,
            "wall_s": None, "host": None, "results": None}


def run_trials(trials: list[Trial], sdir: SweepDir, opts: RayOptions,
               progress: Progress | None = None,
               trial_fn: Callable[..., dict[str, Any]] | None = None) -> dict[str, int]:
    """Run ``trials`` on the Ray this process is connected to, recording each as it
    finishes; returns ``{"ok": n, "error": n}`` of the trials run now. ``trial_fn``
    replaces :func:`~rpuhw.sweep.trial.run_trial` (tests)."""
    import ray

    from rpuhw.sweep.trial import run_trial

    fn = ray.remote(trial_fn or run_trial)
    cpus = opts.cpus_per_trial
    limit = opts.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    cwd = os.getcwd()
    pending = list(trials)
    running: dict[Any, Trial] = {}
    busy: set[str] = set()
    counts = {"ok": 0, "error": 0}
    changed = True
    while pending or running:
        while pending and len(running) < limit:
            k = next((k for k, t in enumerate(pending) if not busy & set(t.instruments)), None)
            if k is None:
                break
            t = pending.pop(k)
            ref = fn.options(**task_options(t, cpus)).remote(
                trial_payload(t), str(sdir.trial_dir(t.id).resolve()), cpus, cwd)
            running[ref] = t
            busy |= set(t.instruments)
        if progress:  # after the refill: the counts of this moment
            progress.running = len(running)
            progress.show(force=changed)
        changed = False
        ready, _ = ray.wait(list(running), num_returns=1, timeout=5.0)
        for ref in ready:
            t = running.pop(ref)
            busy -= set(t.instruments)
            try:
                rec = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died twice
                rec = error_record(t, f"worker failed (retried once): {exc}")
            sdir.add(rec)
            counts[rec["status"]] = counts.get(rec["status"], 0) + 1
            changed = True
            if progress:
                progress.done += 1
                progress.failed += rec["status"] != "ok"
    if progress:
        progress.running = 0
        progress.show()
    return counts
