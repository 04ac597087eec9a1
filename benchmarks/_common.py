"""Helpers shared by the benchmarks."""

from __future__ import annotations

import subprocess
from pathlib import Path

DEFAULT_AIHWKIT_PYTHON = "/opt/aihwkit-venv/bin/python"


def aihwkit_unavailable(python: str) -> str | None:
    """Why aihwkit cannot run in interpreter ``python``, or None when ``import aihwkit`` works."""
    if not python:
        return "no --aihwkit-python given"
    if not Path(python).exists():
        return f"{python} not found"
    probe = subprocess.run([python, "-c", "import aihwkit"], capture_output=True, text=True)
    if probe.returncode:
        return f"import aihwkit fails in {python}: {probe.stderr.strip().splitlines()[-1:]}"
    return None
