"""Commands import only what they use (issue 15): ``rpuhw models`` and ``rpuhw device``
load neither torch nor numba (listing and validating models needs neither), and the
calibration fitter loads no numba (it evaluates the step rules with numpy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numba", "scipy", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    """Heavy modules loaded in a fresh interpreter after running ``code``."""
    probe = (f"import contextlib, io, json, sys\n{code}\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_models_and_device_load_neither_torch_nor_numba():
    device = ROOT / "drivers" / "emulators" / "hidden_device.yaml"
    code = ("from rpuhw.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['models']) == 0\n"
            f"    assert main(['device', {str(device)!r}]) == 0")
    assert _loaded_after(code) == []


def test_the_fitter_loads_no_numba():
    code = "import rpuhw.calibration.fit, rpuhw.calibration.fit_report, rpuhw.device_spec"
    assert "numba" not in _loaded_after(code)
