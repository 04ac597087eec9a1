"""A valid bench mapping for tests (the shape ``rpuhw emulate --bench-out`` writes)."""

from __future__ import annotations

import copy


def bench_mapping(rows: int = 2, cols: int = 3, ports=(1, 2, 3)) -> dict:
    """A 2600B (sense = smua, bias = smub), a TSP-linked 707B and a 33500B."""
    lines = [f"1:{k + 1}" for k in range(rows + cols)]
    return copy.deepcopy({
        "rows": rows, "cols": cols,
        "instruments": {
            "smu": {"driver": "keithley2600b",
                    "resource": f"TCPIP::127.0.0.1::{ports[0]}::SOCKET", "timeout_s": 1.0},
            "matrix": {"driver": "keithley707b",
                       "resource": f"TCPIP::127.0.0.1::{ports[1]}::SOCKET",
                       "tsp_link": {"via": "smu", "node": 2}},
            "pulser": {"driver": "keysight33500b",
                       "resource": f"TCPIP::127.0.0.1::{ports[2]}::SOCKET"},
        },
        "terminals": {
            "sense": {"instrument": "smu", "channel": "a", "matrix_row": "A"},
            "bias": {"instrument": "smu", "channel": "b", "matrix_row": "B"},
            "pulse": {"instrument": "pulser", "channel": 1, "matrix_row": "C"},
            "ground": {"matrix_row": "D"},
        },
        "wiring": {"rows": lines[:rows], "cols": lines[rows:]},
        "bias_scheme": "v/2",
        "read": {"voltage": 0.2, "compliance_a": 1e-3},
        "pulse": {"potentiation": {"amplitude": 1.2, "width_s": 1e-6},
                  "depression": {"amplitude": 1.2, "width_s": 1e-6},
                  "period_s": 2e-6, "compliance_a": 1e-3},
        "weights": {"g_min": 1e-6, "g_max": 1e-4, "w_min": -0.6, "w_max": 0.6,
                    "dw_min": 0.001},
        "limits": {"v_max": 2.0, "compliance_max_a": 1e-2},
    })


def smu_pulse_mapping(rows: int = 2, cols: int = 3, ports=(1, 2)) -> dict:
    """The same bench with the 2600B's sense channel (smua, card row A) as pulse source:
    no 33500B, v/2, pulses of 100 us (the 2600B's minimum) every 200 us."""
    m = bench_mapping(rows, cols, ports=(*ports, 3))
    del m["instruments"]["pulser"]
    m["terminals"]["pulse"] = {"instrument": "smu", "channel": "a", "matrix_row": "A"}
    m["pulse"] = {"potentiation": {"amplitude": 1.2, "width_s": 1e-4},
                  "depression": {"amplitude": 1.2, "width_s": 1e-4},
                  "period_s": 2e-4, "compliance_a": 1e-3}
    return m
