"""Helper of the kill/resume tests: SIGKILL a training process once it has written a
given number of checkpoints (not a test module)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path


def kill_after_checkpoints(proc: subprocess.Popen, checkpoint: Path, count: int = 2,
                           timeout: float = 240.0) -> None:
    """Wait until ``checkpoint`` has been (re)written ``count`` times, then SIGKILL
    ``proc`` (nothing in it can clean up) and reap it. Fails when the run ended first."""
    deadline = time.time() + timeout
    seen, last = 0, None
    while time.time() < deadline and proc.poll() is None and seen < count:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != last:
            last, seen = checkpoint.stat().st_mtime_ns, seen + 1
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
