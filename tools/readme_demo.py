"""Run ``rpuhw demo`` (what ``make run`` does) and put its real results into README.md.

    python tools/readme_demo.py            # default size (a few minutes): run, rewrite
    python tools/readme_demo.py --quick    # demo --quick: run, print the block only

The README's text between :data:`BEGIN` and :data:`END` (in "What `make run` does") is
generated here from what the demo printed: its table, its characterisation, fit and
validation lines, the machine and wall time of the run, and the report's fitted-vs-hidden
device table. Nothing else is touched;
the README is re-read just before the atomic rewrite, so edits made elsewhere while the
demo ran are kept.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN = "<!-- demo results: tools/readme_demo.py writes from here -->"
END = "<!-- demo results: to here -->"


def run_demo(out: Path, quick: bool) -> tuple[str, float]:
    """``rpuhw demo --out OUT`` with this interpreter's rpuhw; (stdout, wall seconds)."""
    cmd = [sys.executable, "-m", "rpuhw.cli", "demo", "--out", str(out)]
    if quick:
        cmd.append("--quick")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "RPUHW_PROGRESS": "off"})
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"rpuhw demo failed (exit {proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return proc.stdout, wall


def _line(text: str, prefix: str) -> str:
    """The first line of ``text`` starting with ``prefix`` (stripped)."""
    for line in text.splitlines():
        if line.strip().startswith(prefix):
            return line.strip()
    raise ValueError(f"the demo printed no line starting with {prefix!r}")


def device_table(report: str) -> list[str]:
    """The fitted-vs-hidden device table of the demo's ``report.md`` (its first table
    whose header starts with ``| parameter``); empty if there is none."""
    lines = report.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("| parameter")), None)
    if start is None:
        return []
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return lines[start:end]


def block(stdout: str, wall_s: float, machine: str, report: str = "") -> str:
    """The README text between the markers, from the demo's output (and its
    ``report.md``, whose fitted-vs-hidden device table is shown too)."""
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    if len(table) < 3:
        raise ValueError("the demo printed no results table")
    chars = _line(stdout, "characterised ")
    m = re.match(r"characterised (.+?): (\d+) instrument messages, ([\d.]+) s", chars)
    if not m:
        raise ValueError(f"unexpected characterisation line: {chars!r}")
    what, messages, char_s = m.groups()
    fit = _line(stdout, "fit: ").removeprefix("fit: ")
    model = fit.split(":", 1)[0]
    validate = _line(stdout, "validate: ").removeprefix("validate: ")
    intro = (f"A default run (`rpuhw demo`, {wall_s:.0f} s in all; {machine}; "
             f"`demo_out/report.md` holds this table, the plots and the fitted vs hidden "
             f"device parameters):")
    after = (f"The characterisation of {what} took {int(messages):,} instrument messages "
             f"and {float(char_s):.0f} s; `auto` chose `{model}` for the hidden "
             f"`soft_bounds` device ({fit.split(':', 1)[1].strip()}); validation: "
             f"{validate}. The report's \"Why the far values are far\" says which device "
             f"parameters the measurements could not pin down, and why.")
    wrap = lambda s: textwrap.fill(s, width=90, break_on_hyphens=False,  # noqa: E731
                                   break_long_words=False)
    device = device_table(report)
    if device:
        verdicts = [ln.strip() for ln in report.splitlines()
                    if ln.startswith(("No fitted value is far", "Every hidden value with"))]
        device = ["", wrap("The hidden device of the emulated chip against the fitted one "
                           "(`demo_out/report.md`; *far* means more than 10 % off, 20 % "
                           "for a spread; *hidden inside*: the hidden value lies in the "
                           "fit's 95 % interval, from its parametric bootstrap):"),
                  "", *device]
        if verdicts:
            device += ["", wrap(" ".join(verdicts))]
    return "\n".join([BEGIN, wrap(intro), "", *table, "", wrap(after), *device, END])


def machine() -> str:
    """Date, cores, CPU, Python, OS and load average, in one phrase."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = " ".join(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (f"{datetime.date.today().isoformat()}, {os.cpu_count()} cores ({cpu}), "
            f"Python {platform.python_version()}, load average {load:.1f} at the end")


def rewrite(readme: str, new_block: str) -> str:
    """``readme`` with the text between the markers (inclusive) replaced."""
    a, b = readme.find(BEGIN), readme.find(END)
    if a < 0 or b < a:
        raise ValueError(f"README has no {BEGIN!r} ... {END!r} block")
    return readme[:a] + new_block + readme[b + len(END):]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="demo --quick; print the block, rewrite nothing")
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="readme_demo_") as tmp:
        stdout, wall = run_demo(Path(tmp) / "demo_out", args.quick)
        report = Path(tmp) / "demo_out" / "report.md"
        report_text = report.read_text() if report.exists() else ""
    new_block = block(stdout, wall, machine(), report_text)
    if args.quick:
        print(new_block)
        return 0
    from rpuhw._io import atomic_write

    atomic_write(args.readme, rewrite(args.readme.read_text(), new_block))
    print(f"rewrote the demo results in {args.readme} ({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
