"""Run the README's "A short tour" as written and put its real outputs into README.md.

    python tools/readme_tour.py            # full size (a few minutes): run, rewrite README.md
    python tools/readme_tour.py --check    # full size: run, compare each output's shape only
    python tools/readme_tour.py --quick    # reduced size (QUICK_FLAGS appended): run + compare

The commands are parsed from the tour's code block in README.md (lines beginning with
``$ ``, ``\\`` continuations, comments), not copied here, and run in order by ``bash -c``
in a temporary folder with the ``rpuhw`` of this interpreter first on PATH. A command
ending in ``&`` runs in the background until ``$ kill %N`` (or the end of the tour);
the lines it prints before the next step are what the README shows after it. Shape:
each output line the README shows (``...`` marks omitted lines) must appear, in order,
in what the command printed to stdout, numbers and fit-model names replaced by patterns,
runs of blanks by any blanks; added lines are allowed. A full run without ``--check``
rewrites the outputs in the tour's block (trimmed by :data:`TRIM`) and the line after
it that names the machine, the date and the wall times.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECTION = "## A short tour"
MACHINE_PREFIX = "Outputs from a run on "
"""The line after the tour's code block that this script rewrites starts so."""

QUICK_FLAGS: dict[str, list[str]] = {
    "characterize": ["--devices", "8", "--max-pulses", "300"],
    "train": ["--train-limit", "20", "--test-limit", "20"],
}
"""``--quick``: flags appended to ``rpuhw SUBCOMMAND`` (argparse: the last value wins).
8 devices x 300 pulses is demo --quick's characterisation; the fit is trustworthy there."""

STEP_TIMEOUT_S = {"full": 3600.0, "quick": 600.0}
"""Limit of one command's wall time (s)."""

NUMBER = r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?|[-+]?\.\d+(?:[eE][-+]?\d+)?"
"""A number as the CLI prints it (integers, 1,000, decimals, 3.5e-05)."""

ELLIPSIS = "..."
"""An output line of only this marks lines the README leaves out."""


@dataclass
class Step:
    """One ``$ `` command of the tour and the output lines the README shows after it."""

    source: list[str]
    """The command's lines as the README writes them (``$ `` prefix, continuations)."""
    expected: list[str] = field(default_factory=list)
    """Output lines shown in the README after the command (blank lines dropped)."""

    @property
    def text(self) -> str:
        """The command as one shell line: ``$ `` removed, continuations joined, no comment."""
        joined = " ".join(line.rstrip().removesuffix("\\").strip() for line in self.source)
        return _strip_comment(joined.removeprefix("$").strip())

    @property
    def background(self) -> bool:
        """True for ``cmd &``."""
        return self.text.endswith("&") and not self.text.endswith("&&")

    @property
    def kill_job(self) -> int | None:
        """N for ``kill %N`` (stop background job N), else None."""
        m = re.fullmatch(r"kill\s+%(\d+)", self.text)
        return int(m.group(1)) if m else None

    @property
    def subcommand(self) -> str | None:
        """SUB of ``rpuhw SUB ...``."""
        words = shlex.split(self.text.rstrip("&"))
        return words[1] if len(words) > 1 and words[0] == "rpuhw" else None

    def shell(self, quick: bool) -> str:
        """What ``bash -c`` runs: the command, with --quick's flags appended."""
        cmd = self.text.rstrip("&").rstrip()
        flags = QUICK_FLAGS.get(self.subcommand or "", []) if quick else []
        return f"{cmd} {shlex.join(flags)}".rstrip()


@dataclass
class Result:
    """What one step printed and how it ended."""

    step: Step
    returncode: int | None
    stdout: list[str]
    stderr: str
    wall_s: float


def _strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a ``#`` starting a word outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _clean(text: str) -> list[str]:
    """Printed text as the lines a terminal leaves (what follows the last ``\\r``)."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.splitlines()]


# ---- the README ------------------------------------------------------------------------


def tour_block(readme: str) -> tuple[int, int]:
    """Line indices (first, last) of the tour's code block's contents, fences excluded."""
    lines = readme.splitlines()
    try:
        start = lines.index(SECTION)
    except ValueError:
        raise SystemExit(f"README.md: no line {SECTION!r}") from None
    fences = [i for i in range(start + 1, len(lines)) if lines[i].startswith("```")]
    nxt = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")),
               len(lines))
    if len(fences) < 2 or fences[1] > nxt:
        raise SystemExit(f"README.md: no ``` code block in {SECTION!r}")
    return fences[0] + 1, fences[1] - 1


def parse_tour(readme: str) -> list[Step]:
    """The tour's steps in order, parsed from the README's text."""
    first, last = tour_block(readme)
    lines = readme.splitlines()[first:last + 1]
    steps: list[Step] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("$ "):
            source = [line]
            while source[-1].rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                source.append(lines[i])
            steps.append(Step(source))
        elif line.strip():
            if not steps:
                raise SystemExit(f"README.md: output line before any command: {line!r}")
            steps[-1].expected.append(line.rstrip())
        i += 1
    if not steps:
        raise SystemExit(f"README.md: no '$ ' command in {SECTION!r}")
    return steps


def render_block(steps: list[Step], outputs: list[list[str]]) -> list[str]:
    """The code block's lines: each command as written, its output, a blank line between."""
    out: list[str] = []
    for step, lines in zip(steps, outputs, strict=True):
        if out:
            out.append("")
        out += step.source + lines
    return out


def rewrite(readme: str, steps: list[Step], outputs: list[list[str]], machine: str) -> str:
    """``readme`` with the tour's outputs replaced and the machine paragraph (``machine``,
    which may hold newlines) set."""
    first, last = tour_block(readme)
    lines = readme.splitlines()
    block = render_block(steps, outputs)
    after = lines[last + 2:]  # past the closing fence
    # the machine line: replace it where it is in the section, else put it after the block
    section_end = next((i for i, line in enumerate(after) if line.startswith("## ")),
                       len(after))
    at = next((i for i in range(section_end) if after[i].startswith(MACHINE_PREFIX)), None)
    if at is None:
        after = ["", *machine.splitlines()] + after
    else:  # the machine line is one paragraph line, possibly wrapped: replace to its end
        end = at + 1
        while end < section_end and after[end].strip():
            end += 1
        after = after[:at] + machine.splitlines() + after[end:]
    new = lines[:first] + block + lines[last + 1:last + 2] + after
    return "\n".join(new) + ("\n" if readme.endswith("\n") else "")


# ---- what each output is trimmed to ----------------------------------------------------

FIT_PARAMETERS = ("g_min", "g_max", "dw_min", "up_down", "read_noise")
"""Parameter rows of ``rpuhw fit``'s table that the README shows (every model has them)."""


def _trim_fit(lines: list[str]) -> list[str]:
    """The lines up to the parameter table's header, the rows of FIT_PARAMETERS, ``...``,
    the ``wrote`` line."""
    head = next((i for i, line in enumerate(lines) if line.split()[:1] == ["parameter"]),
                None)
    if head is None:
        keep = lines[:2]
        rest = lines[2:]
    else:
        keep = lines[:head + 1]
        rest = lines[head + 1:]
        keep += [line for line in rest if line.split()[:1] and
                 line.split()[0] in FIT_PARAMETERS]
    if len(keep) > 1:
        # the choice's explanation up to its margin ("... over N devices);"): the clauses
        # after it (a thin margin, the devices' vote) come and go with the data
        first, sep, _ = keep[1].partition(" devices); ")
        if sep:
            keep[1] = f"{first} devices); {ELLIPSIS}"
    wrote = [line for line in rest if line.startswith("wrote ")]
    if len(keep) + len(wrote) < len(lines):
        keep.append("  " + ELLIPSIS)
    return keep + wrote


def _first(n: int) -> Callable[[list[str]], list[str]]:
    def trim(lines: list[str]) -> list[str]:
        return lines[:n] + (["  " + ELLIPSIS] if len(lines) > n else [])
    return trim


TRIM: dict[str, Callable[[list[str]], list[str]]] = {
    "fit": _trim_fit,
    "validate": _first(1),  # the verdict (each check's worst bin and direction vary by data)
    "characterize": _first(1),  # the rows written; the per-device bounds table varies
}
"""How the README trims the output of ``rpuhw SUBCOMMAND`` (others: every line)."""


def trimmed(result: Result) -> list[str]:
    """The output lines the README shows for ``result``."""
    lines = [line for line in result.stdout if line.strip()]
    trim = TRIM.get(result.step.subcommand or "")
    return trim(lines) if trim else lines


# ---- shape -----------------------------------------------------------------------------


def _model_names() -> list[str]:
    try:
        from rpuhw.calibration.fit_models import FIT_MODELS
        return sorted(FIT_MODELS, key=len, reverse=True)
    except Exception:  # noqa: BLE001 - the check still works, models then match literally
        return []


def line_pattern(line: str, models: list[str] | None = None) -> re.Pattern[str]:
    """A README output line as a regex: numbers and fit-model names are patterns, runs of
    blanks match any blanks, everything else is literal; a line ending in ``; ...``
    matches any line that begins as it does."""
    models = _model_names() if models is None else models
    rest = ""
    if line.rstrip().endswith("; " + ELLIPSIS) and line.strip() != ELLIPSIS:
        line, rest = line.rstrip()[:-len(ELLIPSIS)], ".*"
    one = "|".join(re.escape(m) for m in models)
    # a name, or a comma-separated list of names (a thin margin's tied models: their
    # number varies with the data as much as the names do)
    model = rf"(?:{one})\b(?:,\s+(?:{one})\b)*" if one else ""
    token = re.compile(rf"(?P<ws>\s+)|(?P<num>{NUMBER})" +
                       (rf"|(?P<model>\b{model})" if model else ""))
    out, pos = [], 0
    for m in token.finditer(line):
        out.append(re.escape(line[pos:m.start()]))
        if m.lastgroup == "ws":
            out.append(r"\s+" if m.start() else r"\s*")
        elif m.lastgroup == "num":
            out.append(f"(?:{NUMBER})")
        else:
            out.append(rf"(?:{model})")
        pos = m.end()
    out.append(re.escape(line[pos:]))
    return re.compile("".join(out) + (rest or r"\s*"))


def shape_errors(step: Step, printed: list[str]) -> list[str]:
    """Why ``printed`` does not have the shape of ``step.expected`` (empty: it has)."""
    models = _model_names()
    errors, pos = [], 0
    lines = [line for line in printed if line.strip()]
    for want in step.expected:
        if want.strip() == ELLIPSIS:
            continue
        pat = line_pattern(want, models)
        hit = next((i for i in range(pos, len(lines)) if pat.fullmatch(lines[i])), None)
        if hit is None:
            errors.append(f"README line {want.strip()!r} has no counterpart in what "
                          f"`{step.text}` printed (after line {pos})")
        else:
            pos = hit + 1
    if errors:
        errors.append("  it printed:\n" + "\n".join(f"    {line}" for line in lines))
    return errors


# ---- running ---------------------------------------------------------------------------


def _environment(folder: Path) -> dict[str, str]:
    """PATH with this interpreter's ``rpuhw`` first (a shim running ``-m rpuhw.cli`` where
    the entry point is not next to the interpreter)."""
    bindir = Path(sys.executable).parent
    if not (bindir / "rpuhw").exists():
        bindir = folder / ".bin"
        bindir.mkdir(exist_ok=True)
        shim = bindir / "rpuhw"
        shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m rpuhw.cli "$@"\n')
        shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1"}


def _shell() -> str:
    return shutil.which("bash") or "/bin/sh"


def _read_lines(proc: subprocess.Popen, n: int, timeout: float) -> list[str]:
    """The first ``n`` lines ``proc`` prints to stdout, waiting at most ``timeout`` s."""
    got: list[str] = []

    def reader() -> None:
        while len(got) < n:
            line = proc.stdout.readline()
            if not line:
                return
            got.append(line.rstrip("\n"))
    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    return list(got)


def _stop(proc: subprocess.Popen, timeout: float = 20.0) -> int:
    """SIGTERM ``proc`` (as ``kill %N`` does), wait; SIGKILL after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def run_tour(steps: list[Step], folder: Path, quick: bool,
             log: Callable[[str], None] = print) -> list[Result]:
    """Run ``steps`` in ``folder``, in order; stops after the first step that fails.
    Background jobs are stopped on every exit path."""
    env = _environment(folder)
    limit = STEP_TIMEOUT_S["quick" if quick else "full"]
    jobs: list[subprocess.Popen] = []
    results: list[Result] = []
    try:
        for k, step in enumerate(steps):
            log(f"[{k + 1}/{len(steps)}] $ {step.shell(quick)}")
            t0 = time.perf_counter()
            err_path = folder / f".step{k + 1}.stderr"
            if step.kill_job is not None:
                n = step.kill_job
                if not 1 <= n <= len(jobs):
                    raise SystemExit(f"README.md: `{step.text}`: no background job {n}")
                rc = _stop(jobs[n - 1])
                res = Result(step, rc, [], "", time.perf_counter() - t0)
            elif step.background:
                with open(err_path, "w") as err:
                    proc = subprocess.Popen([_shell(), "-c", f"exec {step.shell(quick)}"],
                                            cwd=folder, env=env, stdout=subprocess.PIPE,
                                            stderr=err, text=True)
                jobs.append(proc)
                out = _read_lines(proc, max(1, len(step.expected)), timeout=120)
                rc = proc.poll()  # None: still serving, as it should be
                res = Result(step, rc, out, "", time.perf_counter() - t0)
                if rc is not None or not out:
                    res.returncode = rc if rc else -1
            else:
                try:
                    proc = subprocess.run([_shell(), "-c", step.shell(quick)], cwd=folder,
                                          env=env, capture_output=True, text=True,
                                          timeout=limit)
                    rc, out, errtext = proc.returncode, proc.stdout, proc.stderr
                except subprocess.TimeoutExpired as exc:
                    rc, out = -1, exc.stdout or ""
                    errtext = f"timed out after {limit:.0f} s"
                    out = out.decode() if isinstance(out, bytes) else out
                err_path.write_text(errtext)
                res = Result(step, rc, _clean(out), errtext, time.perf_counter() - t0)
            if not res.stderr and err_path.exists():
                res.stderr = err_path.read_text(errors="replace")
            (folder / f".step{k + 1}.stdout").write_text("".join(
                line + "\n" for line in res.stdout))
            results.append(res)
            log(f"    exit {res.returncode if res.returncode is not None else '- (serving)'}"
                f", {res.wall_s:.1f} s")
            if res.returncode not in (0, None) or (step.background and not res.stdout):
                break
    finally:
        for proc in jobs:
            _stop(proc)
    return results


def failures(steps: list[Step], results: list[Result]) -> list[str]:
    """Every way the run differs from the README: a step not run, an exit status other
    than 0, an output without the README's shape."""
    errors: list[str] = []
    for res in results:
        bad_rc = res.returncode not in (0, None) or (res.step.background and
                                                     res.returncode is not None)
        if bad_rc:
            tail = "\n".join(f"    {line}" for line in _clean(res.stderr)[-15:] if line)
            errors.append(f"`{res.step.text}` exited {res.returncode}; stderr ends:\n{tail}")
        errors += shape_errors(res.step, res.stdout)
    for step in steps[len(results):]:
        errors.append(f"`{step.text}` did not run (an earlier step failed)")
    return errors


# ---- the machine line --------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(results: list[Result], load: float | None, total_s: float) -> str:
    """One paragraph line: date, cores, CPU, Python, OS, load, each step's wall time."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 0
    walls = ", ".join(f"{res.step.subcommand or res.step.text.split()[0]} "
                      f"{res.wall_s:.0f} s" for res in results
                      if res.step.kill_job is None)
    load_s = f", load average {load:.1f} at the start" if load is not None else ""
    return (f"{MACHINE_PREFIX}{datetime.date.today().isoformat()}: {cores} cores "
            f"({_cpu_model()}), Python {platform.python_version()}, {platform.system()}"
            f"{load_s}; wall times {walls}; {total_s:.0f} s in all.")


# ---- main ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="reduced size (QUICK_FLAGS appended); implies --check")
    p.add_argument("--check", action="store_true",
                   help="compare the outputs' shape with the README; rewrite nothing")
    p.add_argument("--readme", type=Path, default=README, help="README to read (and rewrite)")
    p.add_argument("--keep", type=Path, metavar="DIR",
                   help="run in DIR (kept) instead of a temporary folder")
    args = p.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        # a terminated tour still stops its background jobs (run_tour's finally)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    check = args.check or args.quick
    text = args.readme.read_text()
    steps = parse_tour(text)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    t0 = time.perf_counter()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        results = run_tour(steps, args.keep.resolve(), args.quick)
    else:
        with tempfile.TemporaryDirectory(prefix="readme_tour_") as tmp:
            results = run_tour(steps, Path(tmp), args.quick)
    total = time.perf_counter() - t0
    errors = failures(steps, results)
    ran_all = len(results) == len(steps) and not any(
        res.returncode not in (0, None) for res in results)
    if check or not ran_all:
        for e in errors:
            print(e, file=sys.stderr)
        print(f"{'OK' if not errors else 'FAILED'}: {len(results)} of {len(steps)} "
              f"commands run{', shape as in the README' if not errors else ''} "
              f"({total:.0f} s)")
        return 0 if not errors else 1
    if errors:  # the output changed shape: this run's outputs replace the README's
        print("the README's outputs change shape:", file=sys.stderr)
        for e in errors:
            print(e, file=sys.stderr)
    outputs = [trimmed(res) for res in results]
    # others may have edited the README while the tour ran: rewrite today's text, and
    # only if its tour still has the commands that ran
    text = args.readme.read_text()
    if [s.source for s in parse_tour(text)] != [s.source for s in steps]:
        print(f"{args.readme}: the tour's commands changed while they ran; not rewritten",
              file=sys.stderr)
        return 1
    # a number and its unit stay on one line (textwrap breaks at ASCII blanks only)
    line = re.sub(r"(\d) (s\b)", "\\1\u00a0\\2", machine_line(results, load, total))
    machine = textwrap.fill(line, width=90, break_on_hyphens=False).replace("\u00a0", " ")
    new = rewrite(text, steps, outputs, machine)
    tmp = args.readme.with_name(args.readme.name + ".tmp")
    tmp.write_text(new)
    os.replace(tmp, args.readme)
    print(f"rewrote the tour's outputs in {args.readme} ({total:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
