"""Emulator: a whole emulated bench (chip + instruments + servers) and its bench YAML."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from rpuhw._io import atomic_write
from rpuhw.device_spec import DeviceSpec, load_device
from rpuhw.drivers.emulators.base import Personality
from rpuhw.drivers.emulators.chip import GROUND, EmulatedChip, PulsePhysics, default_wiring
from rpuhw.drivers.emulators.scpi import Keithley2450, Keysight33500B
from rpuhw.drivers.emulators.server import InstrumentServer, parse_faults
from rpuhw.drivers.emulators.tsp import Keithley707B, Keithley2600B

HIDDEN_DEVICE = Path(__file__).with_name("hidden_device.yaml")
"""The packaged default truth device."""
MAX_LINES = 72
"""Chip lines a 707B can wire (6 slots x 12 columns)."""
READ_VOLTAGE = 0.2
"""Read voltage (V) written into the bench YAML (below the disturb threshold)."""
PULSE_SOURCES = ("generator", "smu")
"""Who pulses on the emulated bench: the 33500B, or the 2600B's sense channel (smua)."""
SMU_PULSE_WIDTH_S = 1.0e-4
"""Pulse width (s) in the bench YAML of an SMU-pulsed bench (the 2600B's minimum; the
chip's pulse physics does not depend on the width)."""


def resolve_device(device: str | Path | DeviceSpec | None) -> DeviceSpec:
    """A DeviceSpec from a path, a spec, or None (the packaged hidden device)."""
    if device is None:
        return load_device(HIDDEN_DEVICE)
    if isinstance(device, DeviceSpec):
        return device
    return load_device(device)


class Emulator:
    """An emulated bench: SMU, 707B switch matrix and a pulse source around one chip.

    Args:
        device: truth device (YAML path or DeviceSpec; None = packaged hidden device);
            needs a ``conductance:`` block.
        rows, cols: chip size; rows + cols <= 72 (the matrix's columns).
        seed: seeds the chip (device draws, initial state, noise, pulse statistics).
        latency_ms: delay (ms) before every message.
        faults: fault strings (``latency[:MS]``, ``drop-after:N``, ``no-terminator[:N]``,
            ``error-after:N``, ``stuck:R,C``), see :mod:`.server`.
        bias_scheme: ``v/2`` or ``v/3``, written into the bench YAML.
        smu: ``2600b`` (one two-channel SMU, sense = smua, bias = smub) or ``2450``
            (two 2450s: ``smu`` = sense, ``smu_bias`` = bias; no TSP-Link).
        tsp_link: with a 2600B, the 707B is also reachable as ``node[2].`` through it
            (and the bench YAML says so).
        pulse_source: ``generator`` (a 33500B on card row C pulses) or ``smu`` (the
            2600B's sense channel smua pulses with ``PulseVMeasureI`` on its own card row
            A; no 33500B is served; needs smu 2600b and bias scheme v/2).
        serve: start TCP servers in :meth:`start` (False: in-process ``handle`` only).
        physics: pulse-effectiveness model (default :class:`PulsePhysics`).
    """

    def __init__(self, device: str | Path | DeviceSpec | None = None, rows: int = 8,
                 cols: int = 8, seed: int = 0, latency_ms: float = 0.0, faults=(),
                 bias_scheme: str = "v/2", smu: str = "2600b", tsp_link: bool = True,
                 serve: bool = True, physics: PulsePhysics | None = None,
                 pulse_source: str = "generator"):
        if int(rows) < 1 or int(cols) < 1:
            raise ValueError(f"rows and cols must be >= 1, got {rows} x {cols}")
        if rows + cols > MAX_LINES:
            raise ValueError(f"rows + cols = {rows + cols} chip lines do not fit the switch "
                             f"matrix (at most {MAX_LINES}: 6 slots x 12 columns)")
        if bias_scheme not in ("v/2", "v/3"):
            raise ValueError(f"bias_scheme must be 'v/2' or 'v/3', got {bias_scheme!r}")
        if smu not in ("2600b", "2450"):
            raise ValueError(f"smu must be '2600b' or '2450', got {smu!r}")
        if latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
        if pulse_source not in PULSE_SOURCES:
            raise ValueError(f"pulse_source must be 'generator' or 'smu', got {pulse_source!r}")
        if pulse_source == "smu" and (smu != "2600b" or bias_scheme != "v/2"):
            raise ValueError("pulse_source 'smu' needs smu '2600b' and bias_scheme 'v/2' (the "
                             "sense channel pulses while the bias channel holds V/2), got "
                             f"smu {smu!r}, bias_scheme {bias_scheme!r}")
        self.faults = parse_faults(faults)
        for r, c in self.faults.stuck:
            if r >= rows or c >= cols:
                raise ValueError(f"fault stuck:{r},{c}: no such device on a {rows} x {cols} "
                                 "chip")
        self.spec = resolve_device(device)
        self.rows, self.cols, self.seed = int(rows), int(cols), int(seed)
        self.latency_ms = float(latency_ms)
        self.bias_scheme, self.smu, self.pulse_source = bias_scheme, smu, pulse_source
        self.tsp_link = tsp_link and smu == "2600b"
        self.serve = serve
        self.chip = EmulatedChip(self.spec, self.rows, self.cols, self.seed,
                                 default_wiring(self.rows, self.cols), physics)
        self.chip.stuck.update(self.faults.stuck)
        self.instruments: dict[str, Personality] = {}
        matrix = Keithley707B(self.chip)
        if smu == "2600b":
            self.instruments["smu"] = Keithley2600B(
                self.chip, link={2: matrix} if self.tsp_link else None)
            sense, bias = "smu.a", "smu.b"
        else:
            self.instruments["smu"] = Keithley2450(self.chip, key="smu")
            self.instruments["smu_bias"] = Keithley2450(self.chip, key="smu_bias")
            sense, bias = "smu", "smu_bias"
        self.instruments["matrix"] = matrix
        self.chip.connect_row("A", sense)
        self.chip.connect_row("B", bias)
        if pulse_source == "generator":
            self.instruments["pulser"] = Keysight33500B(self.chip)
            self.chip.connect_row("C", "pulser.1")
        self.chip.connect_row("D", GROUND)
        self.servers: dict[str, InstrumentServer] = {}

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> Emulator:
        """Start one TCP server per instrument (no-op with serve=False or when running)."""
        if self.serve and not self.servers:
            try:
                for name, inst in self.instruments.items():
                    self.servers[name] = InstrumentServer(name, inst, self.latency_ms,
                                                          self.faults).start()
            except BaseException:
                self.stop()
                raise
        return self

    def stop(self) -> None:
        """Stop every server and close their connections (idempotent)."""
        servers, self.servers = self.servers, {}
        for srv in servers.values():
            srv.stop()

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- information ---------------------------------------------------------------------
    @property
    def resources(self) -> dict[str, str]:
        """Bench name -> VISA resource (``loopback::NAME`` when not serving)."""
        if self.servers:
            return {name: srv.resource for name, srv in self.servers.items()}
        return {name: f"loopback::{name}" for name in self.instruments}

    def stats(self) -> dict[str, Any]:
        """Messages handled per instrument and hot switches so far."""
        return {"messages": {n: i.messages for n, i in self.instruments.items()},
                "hot_switches": self.chip.hot_switches}

    def bench_config(self) -> dict[str, Any]:
        """The bench YAML mapping for this emulator (see docs/instrument_commands.md)."""
        res = self.resources
        p, c = self.spec.model.params, self.spec.conductance
        v_pulse = self.chip.physics.v_nom

        def inst(driver: str, name: str) -> dict[str, Any]:
            return {"driver": driver, "resource": res[name], "backend": "@py",
                    "timeout_s": 2.0}

        instruments: dict[str, Any] = {}
        if self.smu == "2600b":
            instruments["smu"] = inst("keithley2600b", "smu")
            terminals: dict[str, Any] = {
                "sense": {"instrument": "smu", "channel": "a", "matrix_row": "A"},
                "bias": {"instrument": "smu", "channel": "b", "matrix_row": "B"}}
        else:
            instruments["smu"] = inst("keithley2450", "smu")
            instruments["smu_bias"] = inst("keithley2450", "smu_bias")
            terminals = {"sense": {"instrument": "smu", "matrix_row": "A"},
                         "bias": {"instrument": "smu_bias", "matrix_row": "B"}}
        instruments["matrix"] = inst("keithley707b", "matrix")
        if self.tsp_link:
            instruments["matrix"]["tsp_link"] = {"via": "smu", "node": 2}
        if self.pulse_source == "generator":
            instruments["pulser"] = inst("keysight33500b", "pulser")
            terminals["pulse"] = {"instrument": "pulser", "channel": 1, "matrix_row": "C"}
            width_s = 1.0e-6
        else:  # the sense channel itself, on its own card row
            terminals["pulse"] = {"instrument": "smu", "channel": "a", "matrix_row": "A"}
            width_s = SMU_PULSE_WIDTH_S
        terminals["ground"] = {"matrix_row": "D"}
        lines = [f"{s}:{col}" for s, col in self.chip.wiring]
        return {
            "rows": self.rows,
            "cols": self.cols,
            "instruments": instruments,
            "terminals": terminals,
            "wiring": {"rows": lines[: self.rows], "cols": lines[self.rows:]},
            "bias_scheme": self.bias_scheme,
            "read": {"voltage": READ_VOLTAGE, "compliance_a": 1.0e-3},
            "pulse": {"potentiation": {"amplitude": v_pulse, "width_s": width_s},
                      "depression": {"amplitude": v_pulse, "width_s": width_s},
                      "period_s": 2 * width_s, "compliance_a": 1.0e-3},
            "weights": {"g_min": float(c.g_min), "g_max": float(c.g_max),
                        "w_min": float(p.w_min), "w_max": float(p.w_max),
                        "dw_min": float(p.dw_min)},
            "limits": {"v_max": 2.0, "compliance_max_a": 1.0e-2},
        }

    def write_bench(self, path: str | Path) -> Path:
        """Write :meth:`bench_config` as YAML atomically (temporary file + os.replace)."""
        path = Path(path)
        text = yaml.safe_dump(self.bench_config(), sort_keys=False, default_flow_style=None)
        return atomic_write(path, text)

    def __repr__(self) -> str:
        state = "serving" if self.servers else "idle"
        return (f"Emulator({self.rows}x{self.cols}, smu={self.smu!r}, "
                f"pulse_source={self.pulse_source!r}, seed={self.seed}, {state})")
