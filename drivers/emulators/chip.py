"""EmulatedChip: a simulated device array behind a switch matrix, with a nodal solver.

The chip is ``rows x cols`` devices of a :class:`~rpuhw.sim.array.SimulatedArray`
(the truth device); device (i, j) sits between row line i and column line j and
has conductance ``g = spec.w_to_g(w)`` (siemens). Every chip line is wired to
one switch-matrix column; every card row A-H may carry an instrument terminal
(a source) or ground. Closing relay ``"1A09"`` joins the chip line on slot 1,
column 9 with card row A.

Electrical model (DC, ideal wires and relays):

* a closed relay merges a chip line with a card-row node;
* a source with its output on fixes its node at its level; the ground row fixes
  0 V; a source with its output off floats (high impedance);
* floating nodes follow Kirchhoff's current law over the device conductances
  (1e-12 S to ground keeps isolated nodes solvable);
* the current a source reports is what it delivers into the network (positive
  out of HI), plus read noise, clamped to its compliance.

Pulses: a burst of n pulses at level V on source ``s`` gives every device the
voltage ``v_ij = V(row i) - V(col j)`` (solved with ``s`` at V) and
``k_ij ~ Binomial(n, p(|v_ij|))`` effective pulses of sign ``v_ij``, where
``p`` is :class:`PulsePhysics` (1 at or above the nominal amplitude,
exponentially smaller below it, 0 under a threshold).
"""

from __future__ import annotations

import functools
import re
import threading
from dataclasses import dataclass

import numpy as np
import torch

from rpuhw.device_spec import DeviceSpec
from rpuhw.sim.array import SimulatedArray

GROUND = "ground"
"""Key of the ground terminal in :attr:`EmulatedChip.card_rows`."""
CARD_ROWS = "ABCDEFGH"
CHANNEL_RE = re.compile(r"^([1-6])([A-H])(0[1-9]|1[0-2])$")
"""A 707B channel specifier: slot 1-6, card row A-H, column 01-12."""
G_LEAK = 1e-12
"""Conductance (S) from every floating node to ground (keeps isolated nodes solvable)."""


@dataclass
class PulsePhysics:
    """Probability that one applied pulse of magnitude v moves a device."""

    v_nom: float = 1.2
    """Nominal pulse amplitude (V): at or above it every pulse is effective."""
    v0: float = 0.1
    """Below ``v_nom`` the probability falls as ``exp((v - v_nom) / v0)`` (V)."""
    v_min: float = 0.3
    """Below this magnitude (V) nothing happens (reads never disturb)."""

    def probability(self, v: np.ndarray) -> np.ndarray:
        """Effective-pulse probability for voltage magnitudes ``v`` (V)."""
        v = np.abs(np.asarray(v, dtype=np.float64))
        p = np.exp(np.minimum(v - self.v_nom, 0.0) / self.v0)
        return np.where(v < self.v_min, 0.0, p)


@dataclass
class Source:
    """One source output wired (or not) to a card row."""

    level_v: float = 0.0
    """Programmed DC level (V)."""
    output: bool = False
    """Output relay state."""
    compliance_a: float = 0.1
    """Current limit (A); reported currents are clamped to it."""


@functools.lru_cache(maxsize=4096)
def parse_channel(channel: str) -> tuple[int, str, int]:
    """``"1A09"`` -> (slot 1, card row "A", column 9); ValueError when malformed."""
    m = CHANNEL_RE.match(channel)
    if m is None:
        raise ValueError(f"bad channel {channel!r} (expected e.g. 1A09)")
    return int(m.group(1)), m.group(2), int(m.group(3))


def default_wiring(rows: int, cols: int) -> list[tuple[int, int]]:
    """Rows then columns over consecutive matrix columns, 12 per slot: [(slot, column)]."""
    n = rows + cols
    if n > 72:
        raise ValueError(f"rows + cols = {n} chip lines do not fit a 707B "
                         "(6 slots x 12 columns = 72 lines)")
    return [(k // 12 + 1, k % 12 + 1) for k in range(n)]


class EmulatedChip:
    """``rows x cols`` devices of ``device`` behind a switch matrix (see the module doc).

    Args:
        device: the truth device; needs a ``conductance:`` block.
        rows, cols: chip size (rows = array outputs i, columns = inputs j).
        seed: seeds the device draws, the initial state, read noise and pulse statistics.
        wiring: (slot, column) of each chip line, rows first (default: :func:`default_wiring`).
        physics: pulse-effectiveness model.
    """

    def __init__(self, device: DeviceSpec, rows: int, cols: int, seed: int = 0,
                 wiring: list[tuple[int, int]] | None = None,
                 physics: PulsePhysics | None = None):
        if device.conductance is None:
            raise ValueError(f"device {device.source}: the emulated chip needs a "
                             "'conductance:' block (g_min, g_max in siemens)")
        if rows < 1 or cols < 1:
            raise ValueError(f"rows and cols must be >= 1, got {rows} x {cols}")
        self.spec = device
        self.rows, self.cols = rows, cols
        self.physics = physics or PulsePhysics()
        self.lock = threading.RLock()
        # the simulator's compiled (numba) engine: a burst costs ~0.1 ms instead of ~0.6 ms
        # (an instrument's reply time is the emulator's budget); its pulse kernel is
        # compiled here, once per model and process, so no reply waits seconds for it
        self.array = SimulatedArray(rows, cols, device, seed=seed)
        warm = SimulatedArray(1, 1, device, seed=0)
        warm.pulse(torch.ones(1, 1, dtype=torch.int32))
        self.rng = np.random.default_rng(seed)
        p = device.model.params
        lo, hi = p.w_min, p.w_max  # start in the middle half of the range, device by device
        w0 = lo + (hi - lo) * (0.25 + 0.5 * self.rng.random((rows, cols)))
        self.array.set_weights(torch.as_tensor(w0, dtype=torch.float32))
        c = device.conductance
        self.read_noise_s = device.io.read_noise * (c.g_max - c.g_min) / (hi - lo)
        """Std (S) of the conductance noise of one measurement (read_noise in siemens)."""
        wiring = default_wiring(rows, cols) if wiring is None else list(wiring)
        if len(wiring) != rows + cols or len(set(wiring)) != len(wiring):
            raise ValueError("wiring: need rows + cols distinct (slot, column) pairs")
        self.wiring = wiring
        self._line_at = {sc: k for k, sc in enumerate(wiring)}
        self.sources: dict[str, Source] = {}
        self.card_rows: dict[str, str] = {}
        """Card row letter -> source key or :data:`GROUND`."""
        self.closed: frozenset[str] = frozenset()
        self.stuck: set[tuple[int, int]] = set()
        self.hot_switches = 0
        self.selected_pulses = np.zeros((rows, cols), dtype=np.int64)
        """Pulses applied per device at the full burst level (the selected device of a
        V/2 or V/3 scheme; half-selected devices are not counted): where pulses went."""

    # ---- configuration ---------------------------------------------------------------
    def add_source(self, key: str, row: str | None = None) -> Source:
        """Register a source output (optionally on card row ``row``) and return it."""
        src = self.sources.setdefault(key, Source())
        if row is not None:
            self.connect_row(row, key)
        return src

    def connect_row(self, row: str, key: str) -> None:
        """Put source ``key`` (or :data:`GROUND`) on card row ``row``."""
        if row not in CARD_ROWS:
            raise ValueError(f"card row must be one of A-H, got {row!r}")
        if key != GROUND and key not in self.sources:
            raise ValueError(f"unknown source {key!r}")
        self.card_rows[row] = key

    # ---- relays ----------------------------------------------------------------------
    def any_output_on(self) -> bool:
        return any(s.output for s in self.sources.values())

    def set_relays(self, closed) -> None:
        """Replace the set of closed channels; counts a hot switch if any output is on."""
        closed = frozenset(closed)
        for ch in closed:
            parse_channel(ch)
        if closed != self.closed and self.any_output_on():
            self.hot_switches += 1
        self.closed = closed

    # ---- state -----------------------------------------------------------------------
    def weights(self) -> np.ndarray:
        """Device weights [rows, cols] (truth, no noise)."""
        return self.array.weights.numpy().astype(np.float64)

    def conductances(self) -> np.ndarray:
        """Device conductances [rows, cols] in siemens (truth, no noise, >= 0)."""
        return np.maximum(self.spec.w_to_g(self.weights()), 0.0)

    # ---- nodal solve -----------------------------------------------------------------
    def _groups(self) -> tuple[np.ndarray, int, dict[str, int]]:
        """Union the nodes joined by closed relays: (group of every node, #groups, key->group).

        Nodes are the chip lines (rows then columns) followed by the card rows A-H.
        """
        n_lines = self.rows + self.cols
        parent = list(range(n_lines + len(CARD_ROWS)))

        def find(a: int) -> int:
            while parent[a] != a:
                parent[a] = parent[parent[a]]
                a = parent[a]
            return a

        for ch in self.closed:
            slot, row, col = parse_channel(ch)
            line = self._line_at.get((slot, col))
            if line is not None:
                parent[find(line)] = find(n_lines + CARD_ROWS.index(row))
        roots = [find(a) for a in range(len(parent))]
        ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
        grp = np.array([ids[r] for r in roots])
        where = {key: int(grp[n_lines + CARD_ROWS.index(row)])
                 for row, key in self.card_rows.items()}
        return grp, len(ids), where

    def solve(self, override: dict[str, float] | None = None):
        """Node voltages with ``override`` sources forced on at the given levels.

        Returns ``(grp, v, owner)``: the group of every node, the voltage (V) of every
        group, and group -> the key of the terminal that fixes it (first card row wins).
        """
        override = override or {}
        grp, ng, _ = self._groups()
        n_lines = self.rows + self.cols
        v = np.zeros(ng)
        owner: dict[int, str] = {}
        for k, row in enumerate(CARD_ROWS):
            key = self.card_rows.get(row)
            if key is None:
                continue
            g = int(grp[n_lines + k])
            if g in owner:
                continue
            if key == GROUND:
                owner[g], v[g] = key, 0.0
            elif key in override or self.sources[key].output:
                owner[g], v[g] = key, override.get(key, self.sources[key].level_v)
        free = [g for g in range(ng) if g not in owner]
        if free:
            gr = grp[: self.rows][:, None].repeat(self.cols, 1).ravel()
            gc = grp[self.rows: n_lines][None, :].repeat(self.rows, 0).ravel()
            cond = self.conductances().ravel()
            lap = np.zeros((ng, ng))
            np.add.at(lap, (gr, gr), cond)
            np.add.at(lap, (gc, gc), cond)
            np.add.at(lap, (gr, gc), -cond)
            np.add.at(lap, (gc, gr), -cond)
            fixed = sorted(owner)
            a = lap[np.ix_(free, free)] + G_LEAK * np.eye(len(free))
            b = -lap[np.ix_(free, fixed)] @ v[fixed] if fixed else np.zeros(len(free))
            v[free] = np.linalg.solve(a, b)
        return grp, v, owner

    def device_voltages(self, override: dict[str, float] | None = None) -> np.ndarray:
        """``V(row i) - V(col j)`` [rows, cols] in volts."""
        grp, v, _ = self.solve(override)
        vr = v[grp[: self.rows]]
        vc = v[grp[self.rows: self.rows + self.cols]]
        return vr[:, None] - vc[None, :]

    def measure_current(self, key: str, noisy: bool = True) -> float:
        """Current (A) source ``key`` delivers into the network, clamped to its compliance."""
        src = self.sources[key]
        if not src.output:
            return 0.0
        row = next((r for r, k in self.card_rows.items() if k == key), None)
        if row is None:
            return 0.0
        grp, v, owner = self.solve()
        g = int(grp[self.rows + self.cols + CARD_ROWS.index(row)])
        if owner.get(g) != key:  # shorted to another fixed terminal: it fights at its limit
            diff = src.level_v - v[g]
            return float(np.sign(diff) * src.compliance_a) if abs(diff) > 1e-9 else 0.0
        cond = self.conductances()
        if noisy and self.read_noise_s > 0:
            cond = cond + self.read_noise_s * self.rng.standard_normal(cond.shape)
        gr = grp[: self.rows][:, None]
        gc = grp[self.rows: self.rows + self.cols][None, :]
        vr, vc = v[gr], v[gc]
        at_row = (gr == g) & (gc != g)
        at_col = (gc == g) & (gr != g)
        cur = float((cond * (vr - vc) * at_row).sum() + (cond * (vc - vr) * at_col).sum())
        return float(np.clip(cur, -src.compliance_a, src.compliance_a))

    # ---- pulses ----------------------------------------------------------------------
    def fire(self, key: str, level_v: float, n: int) -> np.ndarray:
        """A burst of ``n`` pulses at ``level_v`` on source ``key``; returns the signed
        effective pulse counts [rows, cols] applied to the devices."""
        counts = np.zeros((self.rows, self.cols), dtype=np.int64)
        if n <= 0:
            return counts
        v = self.device_voltages({key: level_v})
        self.selected_pulses += np.where(np.abs(v) >= 0.999 * abs(level_v), int(n), 0)
        k = self.rng.binomial(int(n), self.physics.probability(v))
        counts = (np.sign(v) * k).astype(np.int64)
        for i, j in self.stuck:
            counts[i, j] = 0
        if counts.any():
            lim = np.iinfo(np.int32).max
            self.array.pulse(torch.from_numpy(np.clip(counts, -lim, lim).astype(np.int32)))
        return counts
