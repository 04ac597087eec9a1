"""Every CLI fault a user can cause or meet is one line naming the resource and what to
check, with the exit status of ``rpuhw --help``, and no traceback (``--debug`` shows it).

Instrument faults run against real sockets on 127.0.0.1: a port nobody listens on
(refused), a server that accepts and never answers (timeout), and the shipped emulator
stopped while ``rpuhw characterize`` measures (the bench lost mid-run: its connections
close, as when the process is killed). The mid-run fault and the closed output pipe run
``rpuhw`` as a real process: only there does the instrument layer's shutdown log reach
stderr (under pytest a root handler swallows it) and only there is stdout a real pipe.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from bench_yaml import bench_mapping

from rpuhw.calibration.measurements import load_measurements
from rpuhw.cli import COMMANDS, Command, main
from rpuhw.cli.faults import EXIT_BROKEN_PIPE
from rpuhw.drivers.emulators import Emulator
from rpuhw.drivers.errors import (
    InstrumentCommandError,
    InstrumentConnectionError,
    InstrumentTimeout,
    SafetyError,
)
from rpuhw.errors import HardwareError

ROOT = Path(__file__).resolve().parents[1]
DEVICE_YAML = ROOT / "drivers" / "emulators" / "hidden_device.yaml"


def rpuhw(*args: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rpuhw.cli", *args], capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})}, **kw)


def one_line(err: str) -> str:
    """The single line of ``err`` (fails when there are more, or a traceback)."""
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def free_port() -> int:
    """A port on 127.0.0.1 that nobody listens on (bound once, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def mute_port():
    """A server on 127.0.0.1 that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    clients: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                clients.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join(timeout=5)
    for c in clients:
        c.close()
    srv.close()


def write_bench(path: Path, rows: int, cols: int, port: int, timeout_s: float = 0.5) -> str:
    """A bench YAML whose instruments are all at ``port``; returns their resource."""
    m = bench_mapping(rows, cols, ports=(port, port, port))
    lines = [f"{k // 12 + 1}:{k % 12 + 1}" for k in range(rows + cols)]  # 12 per card
    m["wiring"] = {"rows": lines[:rows], "cols": lines[rows:]}
    for inst in m["instruments"].values():
        inst["timeout_s"] = timeout_s
    path.write_text(yaml.safe_dump(m))
    return f"TCPIP::127.0.0.1::{port}::SOCKET"


# ---- instruments unreachable or silent, through every command that opens a bench -----------

def _commands(bench: Path, tmp: Path) -> dict[str, list[str]]:
    return {
        "bench": ["bench", str(bench)],
        "characterize": ["characterize", "--array", f"bench:{bench}", "--rows", "16",
                         "--cols", "26", "--devices", "2", "--pulses", "3", "--no-progress",
                         "-o", str(tmp / "m.csv")],
        "train": ["train", "--backend", "sim", "--layer", f"conv1=bench:{bench}",
                  "--train-limit", "4", "--test-limit", "4", "--epochs", "1",
                  "--no-progress"],
    }


@pytest.mark.parametrize("command", ["bench", "characterize", "train"])
@pytest.mark.parametrize("fault", ["refused", "timeout"])
def test_unreachable_or_silent_instrument_is_one_line(command, fault, tmp_path, mute_port,
                                                      capsys):
    port = free_port() if fault == "refused" else mute_port
    bench = tmp_path / "bench.yaml"
    resource = write_bench(bench, 16, 26, port)  # conv1 of the network is 16 x 26
    status = main(_commands(bench, tmp_path)[command])
    err = one_line(capsys.readouterr().err)
    assert status == 1, err
    assert err.startswith(f"rpuhw {command}: hardware error: {resource}"), err
    hint = (InstrumentConnectionError if fault == "refused" else InstrumentTimeout).hint
    assert err.endswith(hint) or hint in err, err  # what to check
    assert ("refused" if fault == "refused" else "no reply") in err, err
    assert not (tmp_path / "m.csv").exists()  # nothing written


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    bench = tmp_path / "bench.yaml"
    resource = write_bench(bench, 2, 3, free_port())
    for args, env in ((["--debug", "bench", str(bench)], "0"),
                      (["bench", "--debug", str(bench)], "0"),
                      (["bench", str(bench)], "1")):
        monkeypatch.setenv("RPUHW_DEBUG", env)
        assert main(args) == 1
        err = capsys.readouterr().err
        assert "Traceback" in err and "InstrumentConnectionError" in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith(f"rpuhw bench: hardware error: {resource}"), err
    monkeypatch.setenv("RPUHW_DEBUG", "0")
    assert main(["bench", str(bench)]) == 1
    one_line(capsys.readouterr().err)


# ---- the bench lost mid-run --------------------------------------------------------------

def _fast_timeouts(bench: Path, timeout_s: float = 0.5) -> None:
    m = yaml.safe_load(bench.read_text())
    for inst in m["instruments"].values():
        inst["timeout_s"] = timeout_s
    bench.write_text(yaml.safe_dump(m))


@pytest.mark.parametrize("fault", ["lost", "silent"])
def test_bench_lost_mid_characterize_is_one_line_and_keeps_the_rows(fault, tmp_path):
    """``lost``: the emulator stops (connections closed, nobody listens: a killed
    process, an instrument switched off); ``silent``: it stops answering (every reply
    later than the timeout: a hung instrument)."""
    out_csv = tmp_path / "meas.csv"
    with Emulator(rows=2, cols=2, seed=0) as emu:
        bench = emu.write_bench(tmp_path / "bench.yaml")
        _fast_timeouts(bench)
        resources = set(emu.resources.values())
        proc = subprocess.Popen(
            [sys.executable, "-m", "rpuhw.cli", "characterize", "--array", f"bench:{bench}",
             "--rows", "2", "--cols", "2", "--devices", "all", "--pulses", "2000",
             "-o", str(out_csv)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 120
            while not (out_csv.exists() and out_csv.read_bytes().count(b"\n") > 40):
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "no rows measured"
                time.sleep(0.02)
            if fault == "lost":
                emu.stop()
            else:
                for srv in emu.servers.values():
                    srv.latency_ms = 10_000.0
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
            for srv in emu.servers.values():
                srv.latency_ms = 0.0
    line = one_line(err)
    assert proc.returncode == 1, err
    head = "rpuhw characterize: hardware error: "
    assert line.startswith(head) and line[len(head):].split(": ")[0] in resources, line
    hint = (InstrumentConnectionError if fault == "lost" else InstrumentTimeout).hint
    assert hint in line  # what to check
    kept = load_measurements(out_csv, partial=True)
    assert f"{len(kept)} rows of this run kept in {out_csv}" in line, line
    assert "continue with --resume" in line
    # the shutdown could not reach the instruments: said once, in the same line
    assert "could not make the bench safe" in line and "check by hand" in line


# ---- files: missing, a directory, unwritable ------------------------------------------

@pytest.mark.parametrize("args", [
    ["fit", "{d}", "-o", "{t}/x.yaml"],
    ["device", "{d}"],
    ["validate", "--device", "{d}", "--measurements", "{t}/m.csv"],
    ["train", "--config", "{d}"],
    ["bench", "{d}"],
    ["characterize", "--array", "sim", "--rows", "2", "--cols", "2", "-o", "{d}"],
    ["fit", "{t}/m.csv", "-o", "{d}"],
    ["fit", "{t}/m.csv", "-o", "{t}/x.yaml", "--report", "{d}"],
])
def test_a_directory_where_a_file_was_expected(args, tmp_path, capsys):
    d = tmp_path / "adir"
    d.mkdir()
    argv = [a.format(d=d, t=tmp_path) for a in args]
    status = main(argv)
    err = one_line(capsys.readouterr().err)
    assert status == 2, err
    assert err.startswith(f"rpuhw {args[0]}: error: ") and str(d) in err, err
    assert "is a directory" in err and "not found" not in err, err


def test_a_file_where_a_folder_was_expected(tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("")
    assert main(["demo", "--quick", "--out", str(f)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"rpuhw demo: error: --out: {f} exists and is not a folder"), err
    assert main(["train", "--backend", "float", "--epochs", "1", "--train-limit", "4",
                 "--test-limit", "4", "--no-progress", "--checkpoint", str(f)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err == f"rpuhw train: error: {f}: exists and is not a folder", err


def test_a_missing_file_is_named(tmp_path, capsys):
    missing = tmp_path / "nothere.csv"
    assert main(["fit", str(missing), "-o", str(tmp_path / "x.yaml")]) == 2
    err = one_line(capsys.readouterr().err)
    assert err == f"rpuhw fit: error: {missing}: file not found"


# ---- the reader of the output went away ------------------------------------------------

@pytest.mark.parametrize("args", [["device", str(DEVICE_YAML)],
                                  ["device", "--json", str(DEVICE_YAML)]])
def test_a_closed_output_pipe_ends_quietly(args):
    """``rpuhw device x.yaml | head -0``: the reader closed the pipe before rpuhw wrote."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run([sys.executable, "-m", "rpuhw.cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write_end)
    assert proc.stderr == "", proc.stderr
    assert proc.returncode == EXIT_BROKEN_PIPE


# ---- the table, for every kind of exception a command may raise ------------------------

class Raiser(Command):
    name = "raiser"
    help = "raise on purpose"

    def add_arguments(self, parser):
        parser.add_argument("which")

    def run(self, args):
        raise FAULTS[args.which]


FAULTS = {
    "safety": SafetyError("v_pulse = 3.0 V exceeds v_limit = 2.0 V; nothing sent", "SMU::1"),
    "timeout": InstrumentTimeout("no reply to 'x' within 1.0 s", "SMU::1"),
    "command": InstrumentCommandError(-113, "Undefined header", ["FOO"], "SMU::1"),
    "hardware": HardwareError("the board went away"),
    "isdir": IsADirectoryError(errno.EISDIR, "Is a directory", "out.json"),
    "denied": PermissionError(errno.EACCES, "Permission denied", "/root/x.csv"),
    "nospace": OSError(errno.ENOSPC, "No space left on device", "big.csv"),
    "replace": IsADirectoryError(errno.EISDIR, "Is a directory", ".r.json.tmp", None, "runs"),
    "package": ModuleNotFoundError("No module named 'pyarc2'", name="pyarc2"),
}

EXPECTED = {
    "safety": (2, "rpuhw raiser: refused: SMU::1: v_pulse = 3.0 V exceeds v_limit = 2.0 V; "
                  "nothing sent; " + SafetyError.hint),
    "timeout": (1, "rpuhw raiser: hardware error: SMU::1: no reply to 'x' within 1.0 s; "
                   + InstrumentTimeout.hint),
    "command": (1, "rpuhw raiser: hardware error: SMU::1: instrument error -113: "
                   "'Undefined header'; recent commands: FOO; " + InstrumentCommandError.hint),
    "hardware": (1, "rpuhw raiser: hardware error: the board went away; " + HardwareError.hint),
    "isdir": (2, "rpuhw raiser: error: out.json: is a directory where a file was expected"),
    "denied": (2, "rpuhw raiser: error: /root/x.csv: permission denied"),
    "nospace": (1, "rpuhw raiser: error: big.csv: no space left on the device"),
    "replace": (2, "rpuhw raiser: error: runs: is a directory where a file was expected"),
    "package": (1, "rpuhw raiser: error: the Python package 'pyarc2' is not installed; "
                   "install it (pip install) or choose another backend"),
}


@pytest.mark.parametrize("which", list(FAULTS))
def test_each_kind_of_fault_is_one_line_with_its_exit_status(which, capsys):
    COMMANDS.register(Raiser)
    try:
        status = main(["raiser", which])
    finally:
        COMMANDS.remove("raiser")
    err = one_line(capsys.readouterr().err)
    assert (status, err) == EXPECTED[which]


def test_a_bug_keeps_its_traceback():
    """An exception no user can cause (a bug) is not turned into a line."""
    FAULTS["bug"] = RuntimeError("a bug")
    COMMANDS.register(Raiser)
    try:
        with pytest.raises(RuntimeError, match="a bug"):
            main(["raiser", "bug"])
    finally:
        COMMANDS.remove("raiser")
        del FAULTS["bug"]


def test_help_documents_the_exit_statuses_and_debug():
    out = rpuhw("--help")
    assert out.returncode == 0
    for words in ("exit status:", "130", "141", "bad input", "instrument fault", "--debug",
                  "RPUHW_DEBUG=1"):
        assert words in out.stdout, words
    doc = (ROOT / "docs" / "hardware.md").read_text()
    assert "Faults and exit codes" in doc and "RPUHW_PROGRESS" in doc
