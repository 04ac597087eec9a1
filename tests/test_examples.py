"""Examples run as shipped (at a tiny size)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_paper_ablation_script_runs_and_resumes(tmp_path):
    cmd = [sys.executable, str(ROOT / "examples/paper_ablation/run.py"), "--epochs", "1",
           "--train-limit", "20", "--test-limit", "20", "--rungs", "1,2", "--out",
           str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    table = (tmp_path / "results.md").read_text()
    assert "1_floating_point" in table and "2_rpu_baseline" in table
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "== " not in again.stdout  # finished rungs are reused
