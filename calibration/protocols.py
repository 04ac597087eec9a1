"""Characterisation protocols on any CrossPointArray that can pulse and read.

Pulse response (``pulse_response``; ``survey`` runs it on every device): for each cycle
``c`` the chosen devices go through an up half and a down half in lockstep::

    read                                   -> rows (c, +1, pulse 0)
    n times: pulse +1 all chosen, read     -> rows (c, +1, pulse k)
    read                                   -> rows (c, -1, pulse 0)
    n times: pulse -1 all chosen, read     -> rows (c, -1, pulse k)

One ``array.pulse(counts)`` per pulse for all chosen devices, then one read of the
chosen devices (``array.read_devices(indices)`` when the array has it, else
``array.read()`` and pick).

With ``reads`` (K, ``--reads-per-step``) each read above is K reads, rows ``read`` 0..K-1;
with ``noise_reads`` (``--read-noise-first``) the run starts with that many reads of the
chosen devices at their start state, rows ``(cycle 0, polarity 0, pulse = repeat)`` as the
read-noise protocol writes them.

Pulse response until saturation (``pulse_response_auto``, ``--pulses auto``): the same
rows, but each half-cycle goes on per device until
:func:`~rpuhw.calibration.saturation.saturation_test` says it saturated, or ``max_pulses``;
devices that stopped are no longer pulsed or read; where each stopped goes into the
sidecar's ``stops``.

Read noise (``read_noise``): ``states`` levels, level 0 reached from the start by
``start_pulses`` signed pulses (default ``-(pulses * (states - 1)) // 2``: the levels
are centred on the starting state), each further level by ``pulses`` up pulses; at each
level ``repeats`` reads, written as rows ``(cycle = level, polarity 0, pulse = repeat)``.

Conductance: reads return weights; they are written in siemens through the
``conductance`` map (see :func:`conductance_of`). An array without a map (``ideal``,
``sim`` without a ``conductance:`` block) writes the weight itself, and the sidecar
says ``conductance_unit: weight``.

Resume: the protocol is a fixed list of steps (an optional pulse, then a read of every
chosen device). Given the rows already in the file, a step whose devices were all read
is skipped; a step read for some devices only (the run stopped between reads) reads the
missing devices without pulsing again; the rest run as usual. So the finished file has
every ``(device, cycle, polarity, pulse)`` exactly once. A physical array keeps its
state across the interruption; a simulator re-opened from its spec starts afresh (the
rows are then complete but the traces jump at the resume point). A run killed inside a
pulse call, before any read of that step, repeats that pulse on resume (no way to know
which devices a serial pulse call reached).

Resume check (:func:`check_resume_state`): before anything is pulsed or written, every
device still to be measured that has rows is read twice and compared with its last row.
A device that moved beyond the read noise (estimated from the rows and the two reads,
see :mod:`rpuhw.resume_check`) plus one pulse step (a run killed between a pulse and its
read) means the array came back in another state (a restarted bench or emulator, a
power-cycled chip, a reseated probe card, a re-opened simulator): the resume is refused
with the measured jump, unless ``accept_jump`` (``--accept-jump``), which continues and
records the jumps in the sidecar's ``resumed`` entry.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from rpuhw.array import CrossPointArray
from rpuhw.device_spec import ConductanceMap
from rpuhw.errors import ConfigError

from .measurements import COLUMNS, Measurements, MeasurementWriter
from .saturation import SaturationRule, saturation_test

Device = tuple[int, int]
"""Array position ``(row, col)``."""


# ---- arguments -----------------------------------------------------------------------


def parse_devices(spec: str, rows: int, cols: int, key: str = "--devices") -> list[Device]:
    """Devices chosen by ``spec``: ``all``, ``N`` or ``r:c,r:c,...`` (row-major for all).

    ``N`` picks N devices spread evenly over the array, deterministically. When N is at
    most the smaller of ``rows`` and ``cols``, no two of them share a row or a column
    (:func:`_line_disjoint`), so pulsing one never half-selects another: under the V/2
    scheme a half-selected device takes an extra step now and then (on the emulated
    chip with probability e^-6 per pulse), which a fit would read as cycle-to-cycle
    noise. More devices than that are the points of a near-square ``nr x nc`` grid at
    the centres of equal blocks (row ``floor((a + 1/2) rows / nr)``, column
    ``floor((b + 1/2) cols / nc)``), N of them at evenly spaced grid indices when the
    grid has more; those share lines. Errors name ``key``.
    """
    text = str(spec).strip().lower()
    total = rows * cols
    if text == "all":
        return [(i, j) for i in range(rows) for j in range(cols)]
    if text.isdigit():
        n = int(text)
        if not 1 <= n <= total:
            raise ConfigError(f"expected 1 to {total} devices on a {rows} x {cols} array, "
                              f"got {n}", key=key)
        return _spread(n, rows, cols)
    out: list[Device] = []
    for item in text.split(","):
        r, sep, c = item.strip().partition(":")
        try:
            i, j = int(r), int(c)
        except ValueError:
            i = j = -1
            sep = ""
        if not sep:
            raise ConfigError(f"expected 'all', a count N or a list 'row:col,row:col,...', "
                              f"got {item.strip()!r} in {spec!r}", key=key)
        if not (0 <= i < rows and 0 <= j < cols):
            raise ConfigError(f"device {i}:{j} is outside the {rows} x {cols} array "
                              f"(rows 0-{rows - 1}, cols 0-{cols - 1})", key=key)
        if (i, j) in out:
            raise ConfigError(f"device {i}:{j} is listed twice", key=key)
        out.append((i, j))
    return out


def _line_disjoint(n: int, rows: int, cols: int) -> list[Device]:
    """N devices in N distinct rows and N distinct columns, spread over the array: device
    k in row ``floor((k + 1/2) rows / n)`` and column ``floor((k s mod n + 1/2) cols / n)``,
    with the stride ``s`` coprime to n nearest sqrt(n) (a lattice, not a diagonal)."""
    strides = [s for s in range(1, n + 1) if math.gcd(s, n) == 1]
    s = min(strides, key=lambda v: (abs(v - math.sqrt(n)), -v))
    return [((2 * k + 1) * rows // (2 * n), (2 * (k * s % n) + 1) * cols // (2 * n))
            for k in range(n)]


def _spread(n: int, rows: int, cols: int) -> list[Device]:
    if n <= min(rows, cols):
        return _line_disjoint(n, rows, cols)
    nr = min(rows, max(1, round(math.sqrt(n * rows / cols))))
    nc = min(cols, math.ceil(n / nr))
    while nr * nc < n:
        nr = min(rows, nr + 1)
        nc = min(cols, math.ceil(n / nr))
    grid = [((2 * a + 1) * rows // (2 * nr), (2 * b + 1) * cols // (2 * nc))
            for a in range(nr) for b in range(nc)]
    pick = [k * len(grid) // n for k in range(n)]
    return [grid[k] for k in pick]


def check_array(array: CrossPointArray) -> None:
    """Refuse an array that cannot program devices or cannot read them, saying why.

    Programming needs a native ``pulse`` or ``update`` (the base class emulates either
    from the other); reading needs a native ``read`` or ``forward`` (or
    ``read_devices``).
    """
    caps = array.capabilities
    problems = []
    if not (caps.pulse or caps.update):
        problems.append("it cannot pulse devices (neither a native pulse nor a native update)")
    if not (caps.read or caps.forward or array.serial_reads):
        problems.append("it cannot read devices (neither a native read nor a native forward)")
    if problems:
        raise ConfigError(f"{array!r} cannot be characterised: {'; '.join(problems)}",
                          key="--array")


# ---- weight -> conductance -------------------------------------------------------------


@dataclass
class ConductanceOf:
    """Affine weight -> conductance map used for the rows (``None`` bounds: identity)."""

    g_min: float | None
    """Conductance (S) at ``w_min``; None: conductance = weight."""
    g_max: float | None
    """Conductance (S) at ``w_max``."""
    w_min: float = -1.0
    """Weight at ``g_min``."""
    w_max: float = 1.0
    """Weight at ``g_max``."""

    @property
    def unit(self) -> str:
        """``"S"`` or ``"weight"`` (identity)."""
        return "weight" if self.g_min is None else "S"

    def __call__(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        if self.g_min is None or self.g_max is None:
            return w
        return self.g_min + (w - self.w_min) * (self.g_max - self.g_min) / (self.w_max
                                                                            - self.w_min)

    def inverse(self, g: np.ndarray) -> np.ndarray:
        """Weights of conductances ``g`` (the inverse map; identity for ``weight``)."""
        g = np.asarray(g, dtype=np.float64)
        if self.g_min is None or self.g_max is None:
            return g
        return self.w_min + (g - self.g_min) * (self.w_max - self.w_min) / (self.g_max
                                                                            - self.g_min)

    def to_meta(self) -> dict[str, Any] | None:
        if self.g_min is None:
            return None
        return {"g_min": self.g_min, "g_max": self.g_max, "w_min": self.w_min,
                "w_max": self.w_max}


def conductance_of(array: CrossPointArray, conductance: ConductanceMap | None = None
                   ) -> ConductanceOf:
    """The map from the array's weights to siemens.

    ``g = g_min + (w - w_min) (g_max - g_min) / (w_max - w_min)`` where ``[w_min, w_max]``
    is the array's mean weight range (``array.info()``: a SimulatedArray's model bounds,
    a bench's or ArC TWO's ``weights:`` map), else ``[-1, 1]``; ``g_min, g_max`` come
    from ``conductance`` when given, else from ``array.info()`` (a device YAML's
    ``conductance:`` block, the hardware's ``weights:`` map); without any, g = w
    (``unit == "weight"``).
    """
    info = array.info()
    w_range = (-1.0, 1.0)
    if info.w_min is not None and info.w_max is not None:
        w_range = (float(info.w_min), float(info.w_max))
    if conductance is not None:
        conductance.validate()
        return ConductanceOf(float(conductance.g_min), float(conductance.g_max), *w_range)
    if info.g_min is not None and info.g_max is not None:
        return ConductanceOf(float(info.g_min), float(info.g_max), *w_range)
    return ConductanceOf(None, None)


def read_voltage_of(array: CrossPointArray) -> float | None:
    """The array's read voltage (V) when it has one (``array.info().read_voltage``)."""
    v = array.info().read_voltage
    return None if v is None else float(v)


def read_chosen(array: CrossPointArray, devices: list[Device]) -> np.ndarray:
    """Weights of ``devices`` (float64 [n]): one read each where the backend addresses
    devices serially, else picked from a whole-array read (``array.read_devices``)."""
    w = array.read_devices(list(devices))
    return w.detach().cpu().double().numpy().reshape(-1)


# ---- the step engine -------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One protocol step: ``pulses`` signed pulses to every chosen device, then a read."""

    cycle: int
    """Cycle (pulse response) or state index (read noise) of the rows."""
    polarity: int
    """+1, -1, or 0 for read-noise rows."""
    pulse: int
    """Pulse index (or repeat index) of the rows."""
    pulses: int
    """Signed pulse count applied before the read (0: read only)."""
    read: int = 0
    """Read index after the same pulse (0..K-1 with K reads per pulse)."""


def noise_first_plan(noise_reads: int) -> list[Step]:
    """The read-noise block run before a pulse response: ``noise_reads`` reads at the start
    state, rows ``(cycle 0, polarity 0, pulse = repeat)`` as in :func:`read_noise`."""
    return [Step(0, 0, r, 0) for r in range(noise_reads)]


def pulse_response_plan(pulses: int, cycles: int, reads: int = 1,
                        noise_reads: int = 0) -> list[Step]:
    """Steps of the pulse-response protocol (see the module docstring): ``reads`` (K)
    reads after each pulse (rows ``read`` 0..K-1), after :func:`noise_first_plan` of
    ``noise_reads``."""
    plan = noise_first_plan(noise_reads)
    for c in range(cycles):
        for pol in (1, -1):
            for k in range(pulses + 1):
                plan.extend(Step(c, pol, k, pol if k and not r else 0, r)
                            for r in range(reads))
    return plan


def read_noise_plan(repeats: int, states: int, pulses: int,
                    start_pulses: int | None = None) -> list[Step]:
    """Steps of the read-noise protocol (see the module docstring)."""
    if start_pulses is None:
        start_pulses = -(pulses * (states - 1)) // 2
    plan = []
    for s in range(states):
        move = start_pulses if s == 0 else pulses
        plan.extend(Step(s, 0, r, move if r == 0 else 0) for r in range(repeats))
    return plan


def _positive(value: Any, name: str, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or \
            value < (0 if zero else 1):
        raise ConfigError(f"expected a {'non-negative' if zero else 'positive'} integer, "
                          f"got {value!r}", key=name)
    return int(value)


def _done_rows(existing: Measurements | None, devices: list[Device], cols: int
               ) -> dict[tuple[int, int, int, int], set[int]]:
    """(cycle, polarity, pulse, read) -> device ids (``row * cols + col``) already
    measured; refuses foreign devices."""
    done: dict[tuple[int, int, int, int], set[int]] = {}
    if existing is None or not len(existing):
        return done
    ids = {i * cols + j for i, j in devices}
    file_ids = existing.ids()
    foreign = set(np.unique(file_ids).tolist()) - ids
    if foreign:
        raise ConfigError(f"the file has rows of device(s) {sorted(foreign)[:5]} that are not "
                          "among the chosen devices; resume with the original --devices",
                          source=existing.source)
    cyc = existing.cycles()
    for d, c, p, k, r in zip(file_ids.tolist(), cyc.tolist(), existing.polarity.tolist(),
                             existing.pulse.tolist(), existing.reads().tolist(), strict=True):
        done.setdefault((c, p, k, r), set()).add(d)
    return done


def _segments(m: Measurements) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of ``m`` sorted by (device, cycle, polarity, pulse) and, for each
    sorted position, whether the next row is the next read of the same half-cycle
    (read-noise level) of the same device. Only the first read after each pulse
    (``read == 0``) takes part (the others are not in ``order``)."""
    cyc = m.cycles()
    first = np.flatnonzero(m.reads() == 0)
    order = first[np.lexsort((m.pulse[first], m.polarity[first], cyc[first],
                              m.device[first]))]
    d, c, p, k = m.device[order], cyc[order], m.polarity[order], m.pulse[order]
    nxt = (d[1:] == d[:-1]) & (c[1:] == c[:-1]) & (p[1:] == p[:-1]) & (k[1:] == k[:-1] + 1)
    return order, nxt


def check_resume_state(array: CrossPointArray, devices: list[Device], plan: list[Step],
                       existing: Measurements, to_g: ConductanceOf,
                       accept_jump: bool = False) -> dict[str, float]:
    """Before a resume: are the devices still where the file's last rows left them?

    Reads every device that has rows and a plan step still to measure twice, and compares
    the mean with its last row (:func:`rpuhw.resume_check.check_jumps`). The read noise
    comes from the rows (second differences of successive reads of a half-cycle or
    read-noise level, plus the two reads); the allowance is ``|pulses|`` of the device's
    first missing step times twice its median one-pulse change (twice the array's
    nominal ``dw_min`` where it has fewer than three): a run killed between that
    step's pulse and its read left the device moved by that much. Returns the jumps of
    the devices beyond the limit (device id -> jump, conductance unit of the rows; empty
    when none); raises :class:`ConfigError` (one line with the largest jump, in the
    unit and in read-noise sigmas) when there are any and not ``accept_jump``.
    """
    from rpuhw.resume_check import JUMP_OF_TWO_READS, check_jumps

    cols = array.cols
    ids = [i * cols + j for i, j in devices]
    if not len(existing):
        return {}
    file_ids = existing.ids()
    last_row: dict[int, int] = {}
    for n, d in enumerate(file_ids.tolist()):  # the file is in time order
        last_row[d] = n
    done = _done_rows(existing, devices, cols)
    first_missing: dict[int, Step] = {}
    for s in plan:
        have = done.get((s.cycle, s.polarity, s.pulse, s.read), ())
        for d in ids:
            if d not in first_missing and d not in have:
                first_missing[d] = s
        if len(first_missing) == len(ids):
            break
    check = [n for n, d in enumerate(ids) if d in last_row and d in first_missing]
    if not check:
        return {}
    chosen = [devices[n] for n in check]
    now_a, now_b = to_g(read_chosen(array, chosen)), to_g(read_chosen(array, chosen))
    g = existing.conductance
    recorded = np.array([g[last_row[ids[n]]] for n in check])
    order, nxt = _segments(existing)
    gs = g[order]
    second = nxt[1:] & nxt[:-1]  # three successive reads: g[k+1] - 2 g[k] + g[k-1]
    dd = (gs[2:] - 2 * gs[1:-1] + gs[:-2])[second]
    pulsed = nxt & (existing.polarity[order][:-1] != 0)
    step = np.abs(np.diff(gs))[pulsed]
    step_dev = file_ids[order][:-1][pulsed]
    nominal = abs(float(array.info().dw_min) * float(to_g(1.0) - to_g(0.0)))
    allowance = []
    for n in check:
        d = ids[n]
        own = step[step_dev == d]
        one = 2 * float(np.median(own)) if len(own) >= 3 else 2 * nominal
        allowance.append(abs(first_missing[d].pulses) * one)
    # noiseless arrays: float32 reads resolve ~1e-7 of the values
    floor = 1e-6 * float(np.max(np.abs(recorded)) + nominal)
    res = check_jumps(now_a, now_b, recorded, np.array(allowance), dd, np.sqrt(6.0), floor)
    moved = res.moved
    jumps = {str(ids[check[q]]): float(res.jump[q]) for q in np.flatnonzero(moved)}
    if jumps and not accept_jump:
        w = res.worst()
        i, j = chosen[w]
        unit, scale = ("uS", 1e6) if to_g.unit == "S" else ("weight units", 1.0)

        def fmt(v: float) -> str:
            return f"{v * scale:.4g} {unit}"

        raise ConfigError(
            f"the devices are not where the interrupted run left them: device {ids[check[w]]} "
            f"({i}:{j}) reads {fmt((now_a[w] + now_b[w]) / 2)}, its last row "
            f"{fmt(recorded[w])}: a jump of {fmt(res.jump[w])} = "
            f"{res.describe(res.jump[w], fmt)}; {int(moved.sum())} of {len(check)} devices "
            f"moved beyond {res.sigmas * JUMP_OF_TWO_READS:.1f} x the read noise plus one "
            "pulse step (was the "
            "bench restarted, the chip power-cycled or the probe card reseated?); continue "
            "with --accept-jump (the jumps are recorded in the sidecar's 'resumed') or "
            "measure into a new file", source=existing.source)
    return jumps


def _check_site(array: CrossPointArray, devices: list[Device]) -> None:
    """:func:`check_array`, then refuse an empty or out-of-range device list."""
    check_array(array)
    if not devices:
        raise ConfigError("no devices chosen", key="--devices")
    for i, j in devices:
        if not (0 <= i < array.rows and 0 <= j < array.cols):
            raise ConfigError(f"device {i}:{j} is outside the {array.rows} x {array.cols} "
                              "array", key="--devices")


def run_plan(array: CrossPointArray, devices: list[Device], plan: list[Step],
             writer: MeasurementWriter, conductance: ConductanceMap | None = None,
             progress: bool = True, desc: str = "measuring",
             on_step: Callable[[int], None] | None = None,
             settings: dict[str, Any] | None = None, accept_jump: bool = False) -> int:
    """Execute ``plan`` on ``devices``, streaming one row per read to ``writer``.

    Skips what ``writer.existing`` already holds (see the module docstring), after
    :func:`check_resume_state` (``accept_jump``: continue past a jump, recording it).
    When the writer's sidecar has no ``settings`` yet, :func:`protocol_meta` of
    ``settings`` is stored first. ``on_step(k)`` is called after plan step ``k``.
    Returns the number of rows written.
    """
    _check_site(array, devices)
    to_g = conductance_of(array, conductance)
    v_read = read_voltage_of(array)
    cols = array.cols
    ids = [i * cols + j for i, j in devices]
    done = _done_rows(writer.existing, devices, cols)
    if writer.existing is not None and len(writer.existing):  # before any pulse or write
        jumps = check_resume_state(array, devices, plan, writer.existing, to_g, accept_jump)
        if jumps:
            writer.record_jumps(jumps)
    if "settings" not in writer.meta:
        writer.update_meta(**protocol_meta(array, devices, settings or {}, conductance))
    t_offset = 0.0
    if writer.existing is not None and writer.existing.time_s is not None and \
            len(writer.existing):
        finite = writer.existing.time_s[np.isfinite(writer.existing.time_s)]
        t_offset = float(finite.max()) if len(finite) else 0.0
    todo = [(k, s) for k, s in enumerate(plan)
            if len(done.get((s.cycle, s.polarity, s.pulse, s.read), ())) < len(devices)]
    from rpuhw.progress import progress_bar  # a bar on a terminal, lines in a log

    bar = progress_bar(len(plan), initial=len(plan) - len(todo), desc=desc, unit="step",
                       leave=True, enabled=progress)
    t0 = time.monotonic()
    written = 0
    try:
        for k, s in todo:
            have = done.get((s.cycle, s.polarity, s.pulse, s.read), set())
            sel = [n for n, d in enumerate(ids) if d not in have]
            if len(sel) == len(devices) and s.pulses:
                counts = torch.zeros(array.rows, array.cols, dtype=torch.int32)
                for i, j in devices:
                    counts[i, j] = s.pulses
                array.pulse(counts)
            chosen = devices if len(sel) == len(devices) else [devices[n] for n in sel]
            g = to_g(read_chosen(array, chosen))
            t = t_offset + time.monotonic() - t0
            rows = [(ids[n], devices[n][0], devices[n][1], s.cycle, s.pulse, s.polarity,
                     float(g[q]), round(t, 6), v_read, s.read) for q, n in enumerate(sel)]
            written += writer.write(rows)
            if bar is not None:
                bar.update(1)
            if on_step is not None:
                on_step(k)
    finally:
        if bar is not None:
            bar.close()
    return written


def protocol_meta(array: CrossPointArray, devices: list[Device], settings: dict[str, Any],
                  conductance: ConductanceMap | None = None) -> dict[str, Any]:
    """Sidecar content for a measurement of ``devices`` on ``array`` with ``settings``."""
    to_g = conductance_of(array, conductance)
    try:
        instrument = array.snapshot()
    except Exception as exc:  # noqa: BLE001 - the snapshot is informative only
        instrument = f"{array!r} (snapshot failed: {exc})"
    return {"settings": {**settings, "rows": array.rows, "cols": array.cols,
                         "devices": [list(d) for d in devices],
                         "conductance_unit": to_g.unit, "conductance_map": to_g.to_meta(),
                         "read_voltage": read_voltage_of(array)},
            "instrument": instrument, "columns": list(COLUMNS)}


# ---- the protocols ---------------------------------------------------------------------


def pulse_response(array: CrossPointArray, devices: list[Device], pulses: int, cycles: int,
                   writer: MeasurementWriter, conductance: ConductanceMap | None = None,
                   progress: bool = True, accept_jump: bool = False, reads: int = 1,
                   noise_reads: int = 0) -> int:
    """``pulses`` per direction per cycle: n up pulses then n down pulses, ``reads`` (K)
    reads after each, on ``devices`` (sidecar key ``pulses_per_direction``), after
    ``noise_reads`` reads at the start state (:func:`noise_first_plan`).

    Rows as in the module docstring; returns the number of rows written (resumes from
    ``writer.existing``, see :func:`check_resume_state` for ``accept_jump``).
    """
    pulses = _positive(pulses, "pulses")
    cycles = _positive(cycles, "cycles")
    reads = _positive(reads, "--reads-per-step")
    noise_reads = _positive(noise_reads, "--read-noise-reads", zero=True)
    return run_plan(array, devices, pulse_response_plan(pulses, cycles, reads, noise_reads),
                    writer, conductance, progress, desc="pulse response",
                    settings={"protocol": "pulse-response", "pulses_per_direction": pulses,
                              "cycles": cycles, "reads_per_step": reads,
                              "read_noise_reads": noise_reads},
                    accept_jump=accept_jump)


DEFAULT_MAX_PULSES = 5000
"""Default pulse budget per half-cycle of ``--pulses auto`` (``--max-pulses``)."""

DEFAULT_NOISE_READS = 50
"""Reads of the read-noise block run first (``--read-noise-first``): the standard error
of the measured read noise is ``1 / sqrt(2 (50 - 1)) = 10 %`` of it."""


def pulse_response_auto(array: CrossPointArray, devices: list[Device],
                        writer: MeasurementWriter, max_pulses: int = DEFAULT_MAX_PULSES,
                        cycles: int = 1, reads: int = 1, noise_reads: int = 0,
                        rule: SaturationRule | None = None,
                        conductance: ConductanceMap | None = None, progress: bool = True,
                        accept_jump: bool = False) -> int:
    """Pulse each half-cycle until every device saturates (``--pulses auto``).

    Per cycle ``c``, polarity ``p`` = +1 then -1, the chosen devices in lockstep: ``reads``
    (K) reads -> rows ``(c, p, pulse 0, read 0..K-1)``; then, while any device is still
    active, one ``p`` pulse to every active device and K reads of each -> rows ``(c, p,
    k, read)``. A device stops when :func:`~rpuhw.calibration.saturation.saturation_test`
    says its last ``rule.window`` pulses saturated, or after ``max_pulses`` pulses of the
    half-cycle (not saturated); the others go on. Before the first cycle, with
    ``noise_reads`` > 0, that many reads of every device at its start state -> rows
    ``(cycle 0, polarity 0, pulse = repeat)``; their standard deviation is the measured
    read noise of the rule.

    Where each device stopped goes into the sidecar after each half-cycle: ``stops``, a
    list of ``{"device", "row", "col", "cycle", "polarity", "pulses", "saturated"}``.
    Resume (``writer.existing``): after :func:`check_resume_state` (allowance one pulse),
    the rows already there are replayed through the same rule (the rule and its constants
    come from the sidecar), a pulse whose reads were cut short is read again without
    pulsing, and the run goes on. Returns the rows written.
    """
    from rpuhw.progress import progress_bar

    _check_site(array, devices)
    max_pulses = _positive(max_pulses, "--max-pulses")
    cycles = _positive(cycles, "--cycles")
    reads = _positive(reads, "--reads-per-step")
    noise_reads = _positive(noise_reads, "--read-noise-reads", zero=True)
    existing = writer.existing
    side = existing.meta if existing is not None and existing.meta else writer.meta
    old_settings = side.get("settings") if isinstance(side.get("settings"), dict) else None
    if rule is None:
        rule = SaturationRule.from_dict((old_settings or {}).get("saturation"))
    to_g = conductance_of(array, conductance)
    v_read = read_voltage_of(array)
    cols = array.cols
    ids = [i * cols + j for i, j in devices]
    pos = {d: n for n, d in enumerate(ids)}
    have: dict[tuple[int, int, int], dict[int, dict[int, float]]] = {}
    noise: list[list[float]] = [[] for _ in ids]
    t_offset = 0.0
    if existing is not None and len(existing):  # before any pulse or write
        _done_rows(existing, devices, cols)  # refuses foreign devices
        jumps = check_resume_state(array, devices, [Step(-1, 1, 0, 1)], existing, to_g,
                                   accept_jump)
        if jumps:
            writer.record_jumps(jumps)
        for d, c, p, k, r, g in zip(existing.ids().tolist(), existing.cycles().tolist(),
                                    existing.polarity.tolist(), existing.pulse.tolist(),
                                    existing.reads().tolist(), existing.conductance.tolist(),
                                    strict=True):
            if p == 0:
                if c == 0:
                    noise[pos[d]].append(g)
                continue
            have.setdefault((pos[d], c, p), {}).setdefault(k, {}).setdefault(r, g)
        if existing.time_s is not None:
            finite = existing.time_s[np.isfinite(existing.time_s)]
            t_offset = float(finite.max()) if len(finite) else 0.0
    settings = {"protocol": "pulse-response", "pulses_per_direction": "auto",
                "max_pulses": max_pulses, "cycles": cycles, "reads_per_step": reads,
                "read_noise_reads": noise_reads, "saturation": rule.to_dict()}
    if not isinstance(writer.meta.get("settings"), dict):
        writer.update_meta(**protocol_meta(array, devices, settings, conductance))
    elif writer.meta["settings"].get("saturation") != rule.to_dict():
        writer.update_meta(settings={**writer.meta["settings"], "saturation": rule.to_dict()})
    t0 = time.monotonic()
    written = 0

    def read_write(sel: list[int], c: int, p: int, ks: list[int], r: int) -> np.ndarray:
        nonlocal written
        g = to_g(read_chosen(array, [devices[n] for n in sel]))
        t = round(t_offset + time.monotonic() - t0, 6)
        written += writer.write([(ids[n], devices[n][0], devices[n][1], c, k, p,
                                  float(g[q]), t, v_read, r)
                                 for q, (n, k) in enumerate(zip(sel, ks, strict=True))])
        return g

    for r in range(noise_reads):  # the read-noise block, at the start state
        sel = [n for n in range(len(ids)) if len(noise[n]) <= r]
        if sel:
            g = read_write(sel, 0, 0, [r] * len(sel), 0)
            for q, n in enumerate(sel):
                noise[n].append(float(g[q]))
    sigma_read = np.array([np.std(v[:noise_reads], ddof=1) if noise_reads >= 3
                           and len(v) >= 3 else np.nan for v in noise])
    stops: list[dict[str, Any]] = list(side.get("stops") or []) if existing else []
    done_halves = {(e["cycle"], e["polarity"]) for e in stops if isinstance(e, dict)}
    bar = progress_bar(2 * cycles * max_pulses, desc="pulse response (auto)", unit="pulse",
                       leave=True, enabled=progress)
    try:
        for c in range(cycles):
            for p in (1, -1):
                half = _run_half(c, p, len(ids), max_pulses, reads, rule, have, sigma_read,
                                 read_write, array, devices, saturation_test, bar)
                if (c, p) in done_halves:
                    continue
                stops.extend({"device": ids[n], "row": devices[n][0], "col": devices[n][1],
                              "cycle": c, "polarity": p, "pulses": int(half[0][n]),
                              "saturated": bool(half[1][n])} for n in range(len(ids)))
                writer.update_meta(stops=stops)
    finally:
        if bar is not None:
            bar.close()
    return written


def _run_half(c: int, p: int, n_dev: int, max_pulses: int, reads: int, rule: Any,
              have: dict[tuple[int, int, int], dict[int, dict[int, float]]],
              sigma_read: np.ndarray, read_write: Callable[..., np.ndarray],
              array: CrossPointArray, devices: list[Device], test: Callable[..., Any],
              bar: Any) -> tuple[np.ndarray, np.ndarray]:
    """One half-cycle of :func:`pulse_response_auto`: returns (pulses, saturated) per
    device."""
    trace = np.full((n_dev, max_pulses + 1, reads), np.nan)
    n_k = np.zeros(n_dev, dtype=np.int64)  # last pulse index with reads
    for n in range(n_dev):  # replay the rows of a resumed run
        for k, rr in have.get((n, c, p), {}).items():
            if k <= max_pulses:
                for r, g in rr.items():
                    if r < reads:
                        trace[n, k, r] = g
                n_k[n] = max(n_k[n], k)
    window = rule.window
    saturated = np.zeros(n_dev, dtype=bool)

    def evaluate(sel: np.ndarray) -> None:
        ok = sel[(n_k[sel] >= window)]
        ok = ok[np.isfinite(trace[ok, n_k[ok]]).all(axis=1)] if len(ok) else ok
        if not len(ok):
            return
        idx = n_k[ok][:, None] - window + 1 + np.arange(window)
        res = test(trace[ok[:, None], idx], p, sigma_read[ok], rule)
        saturated[ok] = res.saturated

    def complete(sel: list[int]) -> None:
        """Read what is missing at each device's current pulse (no pulse)."""
        for r in range(reads):
            miss = [n for n in sel if not np.isfinite(trace[n, n_k[n], r])]
            if miss:
                g = read_write(miss, c, p, [int(n_k[n]) for n in miss], r)
                trace[miss, n_k[miss], r] = g

    everyone = np.arange(n_dev)
    complete(list(everyone))  # pulse 0, or the reads a kill cut short
    # devices that were pulsed at the last step but not read yet (a kill between reads)
    kmax = int(n_k.max())
    earlier = everyone[n_k == kmax - 1]
    if len(earlier) and kmax >= 1:
        evaluate(earlier)
        pending = [int(n) for n in earlier if not saturated[n] and n_k[n] < max_pulses]
        n_k[pending] = kmax
        complete(pending)
    evaluate(everyone)
    if bar is not None:
        bar.update(int(n_k.max()))
    active = everyone[~saturated & (n_k < max_pulses)]
    while len(active):
        counts = torch.zeros(array.rows, array.cols, dtype=torch.int32)
        for n in active.tolist():
            counts[devices[n][0], devices[n][1]] = p
        array.pulse(counts)
        n_k[active] += 1
        complete(active.tolist())
        evaluate(active)
        if bar is not None:
            bar.update(1)
        active = active[~saturated[active] & (n_k[active] < max_pulses)]
    if bar is not None:
        bar.update(max(0, max_pulses - int(n_k.max())))
    return n_k.copy(), saturated.copy()


def read_noise(array: CrossPointArray, devices: list[Device], repeats: int, states: int,
               writer: MeasurementWriter, pulses: int = 100, start_pulses: int | None = None,
               conductance: ConductanceMap | None = None, progress: bool = True,
               accept_jump: bool = False) -> int:
    """``repeats`` reads at each of ``states`` levels ``pulses`` up pulses apart.

    Rows have polarity 0, ``cycle`` = level index, ``pulse`` = repeat index. Level 0 is
    reached by ``start_pulses`` signed pulses (default ``-(pulses * (states - 1)) // 2``).
    """
    repeats = _positive(repeats, "repeats")
    states = _positive(states, "states")
    pulses = _positive(pulses, "pulses", zero=True)
    if start_pulses is not None and (isinstance(start_pulses, bool)
                                     or not isinstance(start_pulses, (int, np.integer))):
        raise ConfigError(f"expected an integer, got {start_pulses!r}", key="start_pulses")
    plan = read_noise_plan(repeats, states, pulses, start_pulses)
    return run_plan(array, devices, plan, writer, conductance, progress, desc="read noise",
                    settings={"protocol": "read-noise", "repeats": repeats, "states": states,
                              "pulses_between_levels": pulses, "start_pulses": start_pulses},
                    accept_jump=accept_jump)


def survey(array: CrossPointArray, pulses: int, cycles: int, writer: MeasurementWriter,
           conductance: ConductanceMap | None = None, progress: bool = True) -> int:
    """Pulse response of every device of the array (for device-to-device maps)."""
    devices = [(i, j) for i in range(array.rows) for j in range(array.cols)]
    return pulse_response(array, devices, pulses, cycles, writer, conductance, progress)


# ---- symmetry points ---------------------------------------------------------------------


def symmetry_point(array: CrossPointArray, devices: list[Device], writer: MeasurementWriter,
                   pulses: int = 1, window: int | None = None, tolerance: float | None = None,
                   max_pulses: int | None = None, conductance: ConductanceMap | None = None,
                   progress: bool = True, accept_jump: bool = False) -> Any:
    """Alternating up/down pulses on ``devices`` until each settles at its symmetry point.

    The search is :func:`rpuhw.symmetry.centre_on_symmetry_point`'s (one implementation,
    :class:`~rpuhw.symmetry.SymmetryPointSearch`): per cycle ``c``, ``pulses`` (n) up
    pulses then n down pulses to every device not yet settled, a read after each. Rows:
    the initial read ``(cycle 0, polarity +1, pulse 0)``, then ``(c, +1, k)`` after the
    k-th up pulse and ``(c, -1, k)`` after the k-th down pulse of cycle c (the half-cycles
    have no ``pulse 0`` read: each starts where the previous one ended, as the loader
    bridges it). A device's rows end when it settles (or after ``max_pulses``).

    ``window`` (K, cycles), ``tolerance`` (units of ``dw_min``; default
    :data:`rpuhw.symmetry.DEFAULT_TOLERANCE`) and ``max_pulses`` default from the device
    (:func:`rpuhw.symmetry.resolve_settings`); the resolved values go into the sidecar's
    settings (``pulses_per_half``, ``window_cycles``, ``settle_tolerance_weight``,
    ``max_pulses_per_device``, ``dw_min``). Resumes from ``writer.existing`` after
    :func:`check_resume_state` (devices whose jump ``accept_jump`` lets through start
    their settle windows afresh). Returns the :class:`~rpuhw.symmetry.SymmetryPointResult`
    (cost of this run; :func:`symmetry_points_of` reads the same numbers from the file).
    """
    from rpuhw.symmetry import (
        DEFAULT_TOLERANCE,
        SymmetryPointSearch,
        resolve_settings,
    )

    _check_site(array, devices)
    s = resolve_settings(array, pulses, window,
                         DEFAULT_TOLERANCE if tolerance is None else tolerance, max_pulses)
    to_g = conductance_of(array, conductance)
    v_read = read_voltage_of(array)
    cols = array.cols
    ids = [i * cols + j for i, j in devices]
    t0 = time.monotonic()
    t_offset = 0.0

    def on_read(c: int, p: int, k: int, idx: list[int], w: np.ndarray) -> None:
        g = to_g(w)
        t = round(t_offset + time.monotonic() - t0, 6)
        writer.write([(ids[d], devices[d][0], devices[d][1], c, k, p, float(g[q]), t, v_read)
                      for q, d in enumerate(idx)])

    search = SymmetryPointSearch(array, devices, s, on_read)
    existing = writer.existing
    if existing is not None and len(existing):  # before any pulse or write
        _done_rows(existing, devices, cols)  # refuses foreign devices
        plan = [Step(c, p, k, sign) for c, p, k, sign in search.plan_keys()]
        jumps = check_resume_state(array, devices, plan, existing, to_g, accept_jump)
        if jumps:
            writer.record_jumps(jumps)
        w_old = to_g.inverse(existing.conductance)
        reads: dict[int, list[tuple[int, int, int, float]]] = {d: [] for d in ids}
        for d, c, p, k, w in zip(existing.ids().tolist(), existing.cycles().tolist(),
                                 existing.polarity.tolist(), existing.pulse.tolist(),
                                 w_old.tolist(), strict=True):
            reads[d].append((c, p, k, w))
        for n, d in enumerate(ids):
            search.restore(n, reads[d])
            if str(d) in jumps:
                search.forget_history(n)
        finite = existing.time_s[np.isfinite(existing.time_s)] \
            if existing.time_s is not None else np.zeros(0)
        t_offset = float(finite.max()) if len(finite) else 0.0
    base = {"protocol": "symmetry-point"}
    if "settings" not in writer.meta:
        writer.update_meta(**protocol_meta(array, devices, {**base, **s.to_dict()},
                                           conductance))
    else:
        writer.update_meta(settings={**writer.meta["settings"], **s.to_dict()})
    before = _stats(array)
    search.run(progress=progress, desc="symmetry point")
    after = _stats(array)
    return search.result(time.monotonic() - t0,
                         {k: int(after[k]) - int(before.get(k, 0)) for k in after})


def _stats(array: CrossPointArray) -> dict[str, int]:
    try:
        return dict(array.stats())
    except Exception:  # noqa: BLE001 - counters are informative only
        return {}


def symmetry_points_of(m: Measurements, window: int | None = None,
                       tolerance_weight: float | None = None) -> dict[str, Any]:
    """Per-device symmetry points of a symmetry-point measurement (``rpuhw symmetry-point``).

    For each device: its reads after pulses (``pulse >= 1``) grouped into cycles, a cycle's
    mean taken when it has all its ``2 n`` reads; after a resume whose jump was accepted
    (sidecar ``resumed[].jumps``) the device's cycles start afresh there. The symmetry point
    and its standard error are :func:`rpuhw.symmetry.settled_estimate` of those cycle means
    (the mean of the last ``K`` of them), ``settled`` is the settle criterion
    (:func:`rpuhw.symmetry.settled_at`), both with the sidecar's ``window_cycles`` and
    ``settle_tolerance_weight`` unless given. Values in weight units (through the
    sidecar's ``conductance_map``) and in the rows' conductance unit.

    Returns the mapping written by ``rpuhw symmetry-point`` (docs/calibration.md).
    """
    from rpuhw.symmetry import settled_at, settled_estimate

    from .measurements import resume_points

    st = dict(m.meta.get("settings") or {})
    n = int(st.get("pulses_per_half") or 1)
    window = window if window is not None else st.get("window_cycles")
    tol = tolerance_weight if tolerance_weight is not None else \
        st.get("settle_tolerance_weight")
    if window is None or tol is None:
        raise ConfigError("the sidecar has no window_cycles / settle_tolerance_weight (not a "
                          "symmetry-point measurement of rpuhw characterize?); give --window "
                          "and --settle-tol-weight", source=m.source)
    window, tol = int(window), float(tol)
    cmap = st.get("conductance_map")
    to_g = ConductanceOf(None, None) if not cmap else ConductanceOf(
        float(cmap["g_min"]), float(cmap["g_max"]), float(cmap["w_min"]), float(cmap["w_max"]))
    slope = float(to_g(1.0) - to_g(0.0))
    w_all = to_g.inverse(m.conductance)
    restarts: dict[str, int] = {}  # device id -> first row after an accepted jump
    for point in resume_points(m.meta, m.source):
        for d in (point.jumps or {}):
            restarts[str(d)] = max(restarts.get(str(d), 0), int(point.row or 0))
    cyc = m.cycles()
    out = []
    rows_col = m.row if m.row is not None else np.full(len(m), -1)
    cols_col = m.col if m.col is not None else np.full(len(m), -1)
    names = [m.device_name(c) for c in range(len(m.device_ids))]
    numeric = all(t.isdigit() for t in names)
    for d in sorted(set(m.device.tolist()), key=lambda c: int(names[c]) if numeric else c):
        name = int(names[d]) if numeric else names[d]
        sel = np.flatnonzero((m.device == d) & (m.pulse >= 1)
                             & (np.arange(len(m)) >= restarts.get(str(name), 0)))
        sums: dict[int, list[float]] = {}
        for q in sel.tolist():
            sums.setdefault(int(cyc[q]), []).append(float(w_all[q]))
        means = [float(np.mean(v)) for c, v in sorted(sums.items()) if len(v) == 2 * n]
        sp, se = settled_estimate(means, window)
        first = int(np.flatnonzero(m.device == d)[0])
        out.append({"device": name, "row": int(rows_col[first]), "col": int(cols_col[first]),
                    "symmetry_point": sp, "stderr": se,
                    "symmetry_point_conductance": float(to_g(sp)),
                    "stderr_conductance": abs(slope) * se,
                    "settled": settled_at(means, window, tol) is not None,
                    "cycles": len(means), "pulses": int(np.sum((m.device == d)
                                                               & (m.pulse >= 1)))})
    shape = (st.get("rows"), st.get("cols"))
    matrix = None
    if shape[0] and shape[1]:
        matrix = [[None] * int(shape[1]) for _ in range(int(shape[0]))]
        for e in out:
            if 0 <= e["row"] < shape[0] and 0 <= e["col"] < shape[1] and \
                    math.isfinite(e["symmetry_point"]):
                matrix[e["row"]][e["col"]] = e["symmetry_point"]
    return {"kind": "symmetry_points", "source": m.source, "rows": shape[0],
            "cols": shape[1], "conductance_unit": to_g.unit,
            "settings": {"pulses_per_half": n, "window_cycles": window,
                         "settle_tolerance_weight": tol},
            "devices": out, "symmetry_point": matrix}
