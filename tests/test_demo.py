"""``rpuhw demo --quick``: the whole job end to end, from a fresh emulated chip to the report."""

from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest
import yaml

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def test_quick_demo_writes_the_report_and_stops_the_emulator(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "rpuhw.cli", "demo", "--quick", "--out",
                           str(out)], capture_output=True, text=True, timeout=540)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the table is printed: one row per run, a test error in each
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    names = [r.split("|")[1].strip() for r in rows]
    assert names == ["run", "floating point", "calibrated simulator", "conv1 on the chip"]
    report = (out / "report.md").read_text()
    for run in ("floating point", "calibrated simulator", "conv1 on the chip"):
        m = re.search(rf"\| {run} \|.*\*\*([0-9.]+)\*\*", report)
        assert m and 0 <= float(m.group(1)) <= 100, run
    assert "hidden (emulated chip)" in report and "fitted" in report
    assert re.search(r"\| conv1 on the chip \|.*\| (\d+) \|$", report, re.M), \
        "instrument messages of the hardware run"
    for png in ("curves.png", "weights.png", "fit.png"):
        assert (out / png).stat().st_size > 1000, png
        assert f"]({png})" in report
    # every instrument port of the emulated bench is closed again
    bench = yaml.safe_load((out / "bench.yaml").read_text())
    for inst in bench["instruments"].values():
        if "tsp_link" in inst:
            continue
        port = int(inst["resource"].split("::")[2])
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
