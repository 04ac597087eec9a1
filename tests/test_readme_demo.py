"""tools/readme_demo.py: the README's demo results are generated from a real demo run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("readme_demo", ROOT / "tools" / "readme_demo.py")
readme_demo = importlib.util.module_from_spec(spec)
sys.modules["readme_demo"] = readme_demo
spec.loader.exec_module(readme_demo)

# the shape of `rpuhw demo`'s stdout (lines the script reads; numbers are placeholders)
DEMO_STDOUT = "\n".join([
    "characterised 16 devices x 1 cycle(s) x 500 pulses per direction: 54047 instrument "
    "messages, 24.3 s -> out/meas.csv",
    "fit: exp_step: BIC -1.0 lower than soft_bounds by 2.0 (of 6 models; BIC = k ln N - "
    "2 ln L over 3 steps of 4 devices)",
    "validate: PASS: 16 devices, 2 half-cycles, 1000 pulses replayed on 32 simulated "
    "replicas each (seed 0)",
    "| run | where the layers live | algorithm | test error per epoch (%) | final (%) | "
    "images/s | wall (s) | instrument messages |",
    "|---|---|---|---|---|---|---|---|",
    "| floating point | conv1, conv2, fc1, fc2: float | sgd | 1.0 / 2.0 | **2.0** | 3 | 4 | - |",
    "report: out/report.md",
])


def test_block_is_built_from_the_demo_output():
    text = readme_demo.block(DEMO_STDOUT, 123.4, "MACHINE")
    lines = text.splitlines()
    assert lines[0] == readme_demo.BEGIN and lines[-1] == readme_demo.END
    assert [ln for ln in lines if ln.startswith("|")] == \
        [ln for ln in DEMO_STDOUT.splitlines() if ln.startswith("|")]
    flat = " ".join(lines)
    assert "123 s in all" in flat and "MACHINE" in flat and "54,047 instrument" in flat
    assert "`exp_step`" in flat and "PASS: 16 devices" in flat


REPORT = "\n".join([
    "# rpuhw demo (default)", "", "| run | x |", "|---|---|", "| a | 1 |", "",
    "## Calibration", "", "| parameter | hidden (emulated chip) | fitted |", "|---|---|---|",
    "| g_min (S) | 2e-05 | 1.9e-05 |", "", "Far means ..."])


def test_block_shows_the_reports_device_table():
    text = readme_demo.block(DEMO_STDOUT, 1.0, "M", REPORT)
    lines = text.splitlines()
    i = lines.index("| parameter | hidden (emulated chip) | fitted |")
    assert lines[i:i + 3] == REPORT.splitlines()[8:11]
    assert lines[i + 3] == readme_demo.END
    assert readme_demo.device_table("no table here") == []
    # the report's verdict lines follow the table
    verdict = ("No fitted value is far from the hidden one.\n\nEvery hidden value with an "
               "interval (3) is inside the fit's 95 % interval.")
    text = readme_demo.block(DEMO_STDOUT, 1.0, "M", REPORT + "\n\n" + verdict)
    last = text.split("\n\n")[-1].removesuffix(readme_demo.END).strip()
    assert " ".join(last.split()) == ("No fitted value is far from the hidden one. Every "
                                      "hidden value with an interval (3) is inside the "
                                      "fit's 95 % interval.")


def test_rewrite_touches_only_the_block():
    readme = f"before\n{readme_demo.BEGIN}\nold\n{readme_demo.END}\nafter\n"
    new = readme_demo.rewrite(readme, f"{readme_demo.BEGIN}\nNEW\n{readme_demo.END}")
    assert new == f"before\n{readme_demo.BEGIN}\nNEW\n{readme_demo.END}\nafter\n"
    with pytest.raises(ValueError, match="no"):
        readme_demo.rewrite("no markers", "x")
    with pytest.raises(ValueError, match="results table"):
        readme_demo.block("characterised nothing\n", 1.0, "M")


def test_readme_holds_a_generated_demo_table():
    """The README's demo results come from tools/readme_demo.py (make readme), not by hand:
    the block is there, with the demo's three runs."""
    text = (ROOT / "README.md").read_text()
    a, b = text.index(readme_demo.BEGIN), text.index(readme_demo.END)
    lines = text[a:b].splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("| run "))
    rows = [ln for ln in lines[first:] if ln.startswith("| ")]
    runs = rows[1:1 + next((i for i, r in enumerate(rows[1:]) if r.startswith("| parameter")),
                           len(rows) - 1)]
    assert [r.split("|")[1].strip() for r in runs] == \
        ["floating point", "calibrated simulator", "conv1 on the chip"]
