"""An emulated bench in its own process, for scripts that run on real instruments or
without: :func:`emulated_bench` starts ``rpuhw emulate`` and stops it on every exit path;
:func:`bench_or_emulator` uses a given bench YAML, or starts one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CHIP = 32
"""The emulated chip has CHIP x CHIP devices (the paper's conv1, 16 x 26, fits)."""


@contextmanager
def emulated_bench(folder: Path, seed: int = 0, rows: int = CHIP, cols: int = CHIP,
                   log: Callable[[str], None] = print) -> Iterator[Path]:
    """``rpuhw emulate`` in a subprocess (the packaged hidden device on a ``rows x cols``
    chip); yields its bench YAML, written to ``folder``; always stops it."""
    bench = Path(folder) / "bench.yaml"
    cmd = [sys.executable, "-m", "rpuhw.cli", "emulate", "--rows", str(rows), "--cols",
           str(cols), "--seed", str(seed), "--bench-out", str(bench)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    old = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # a terminated caller still stops its emulator (finally)
        raise SystemExit(143)
    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        old = None
    try:
        line = proc.stdout.readline().strip()
        if line != f"ready {bench}":
            raise RuntimeError(f"rpuhw emulate did not start: {line!r} "
                               f"{proc.stderr.read() if proc.poll() is not None else ''}")
        log(f"emulated bench serving ({rows} x {cols} chip, hidden device), {bench}")
        yield bench
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if old is not None:
            signal.signal(signal.SIGTERM, old)


@contextmanager
def bench_or_emulator(path: str | Path | None, folder: Path | None = None) -> Iterator[Path]:
    """Yield the bench YAML ``path``, or, when it is None, the YAML of an emulated bench
    (:func:`emulated_bench`, its files in ``folder`` or a temporary folder) that is
    stopped again on every exit path. Lets a script run on real instruments or without."""
    if path:
        yield Path(path)
        return
    if folder is not None:
        with emulated_bench(Path(folder)) as bench:
            yield bench
        return
    with tempfile.TemporaryDirectory() as tmp, emulated_bench(Path(tmp)) as bench:
        yield bench
