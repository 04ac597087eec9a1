"""numba is optional: the torch paths (encoder, MVM, im2col, update) pass the same tests.

Runs the layer, periphery, scheduler and simulator tests in a subprocess with
``RPUHW_NO_NUMBA=1`` (rpuhw then behaves as if numba were not installed); tests that
need the compiled kernels skip themselves there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(600)
def test_the_torch_paths_pass_without_numba():
    files = ["tests/test_nn.py", "tests/test_periphery.py", "tests/test_schedule.py",
             "tests/test_simulated_array.py",
             # the chopped algorithms' torch transfer (their compiled one with numba)
             "tests/test_algorithms.py::test_buffered_algorithms_match_numpy_reference"]
    env = {**os.environ, "RPUHW_NO_NUMBA": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           *files], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
