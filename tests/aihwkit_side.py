"""aihwkit's side of the parity tests (tests/test_parity_aihwkit.py).

Run by aihwkit's own interpreter (``RPUHW_AIHWKIT_PYTHON``, default
/opt/aihwkit-venv/bin/python), never imported by rpuhw: it reads one JSON request on stdin
and prints one JSON answer on stdout. Requests (``kind``):

* ``pulses``: a ``rows x cols`` AnalogTile of ``device`` (an aihwkit device class name
  with ``params``), weights set to 0, then ``up`` steps of one up pulse per device followed
  by ``down`` steps of one down pulse (aihwkit's fitting recipe: BL 1, update and BL
  management off, lr 1, x = 1, d = -+1 so that every device gets exactly one coincidence
  per step), or the steps of ``schedule`` (+1 up, -1 down, 0 an update with x = 0: no
  pulse). Each step is one mini-batch: ``tile.update`` then ``tile.post_update_step()``
  (what aihwkit's analog optimizer calls: the decay of a device with ``lifetime``).
  Answer: ``{"checkpoints": {"k": moments of the weights after k steps},
  "persistent": {"k": moments of the hidden persistent weights (write noise only)},
  "hidden": {name: moments of each per-device parameter}}``.
* ``forward``: an AnalogTile (ConstantStepDevice with bounds +-10) with weights
  ``weights`` [out, in] and forward
  ``io`` (IOParameters fields; enums by name) runs ``x`` [n, in] ``repeats`` times.
  Answer: ``{"mean": [n][out], "var": [n][out], "m4": [n][out]}`` over the repeats.
* ``update``: an AnalogTile of ``device`` with weights ``w0``, one pulsed update of
  ``(x, d)`` with learning rate ``lr`` and ``update`` (UpdateParameters fields), repeated
  ``repeats`` times from ``w0``. Answer: mean, variance and 4th central moment of the weight
  change per device.

Moments are ``{"n", "mean", "var", "m4"}`` (``var`` with ddof 1, ``m4`` the 4th central
moment) so that the test can derive its tolerances from the sample size.
"""

from __future__ import annotations

import json
import sys


def moments(t) -> dict:
    """n, mean, var (ddof 1) and 4th central moment of a tensor's values."""
    v = t.double().flatten()
    c = v - v.mean()
    return {"n": int(v.numel()), "mean": float(v.mean()), "var": float(v.var()),
            "m4": float((c ** 4).mean())}


def _device(req: dict):
    from aihwkit.simulator.configs import devices

    return getattr(devices, req["device"])(**req.get("params", {}))


def _config(device, update: dict | None = None, io: dict | None = None):
    from aihwkit.simulator.configs import SingleRPUConfig
    from aihwkit.simulator.parameters import enums

    cfg = SingleRPUConfig(device=device)
    for key, value in (update or {}).items():
        if key == "pulse_type":
            value = getattr(enums.PulseType, value)
        setattr(cfg.update, key, value)
    for key, value in (io or {}).items():
        if key == "noise_management":
            value = getattr(enums.NoiseManagementType, value)
        elif key == "bound_management":
            value = getattr(enums.BoundManagementType, value)
        setattr(cfg.forward, key, value)
    return cfg


def pulses(req: dict) -> dict:
    import torch
    from aihwkit.simulator.tiles import AnalogTile

    rows, cols = req["rows"], req["cols"]
    cfg = _config(_device(req), update={"desired_bl": 1, "update_bl_management": False,
                                        "update_management": False, "fixed_bl": True})
    tile = AnalogTile(rows, cols, cfg)
    tile.set_learning_rate(1.0)
    tile.set_weights(torch.zeros(rows, cols))
    hidden = {k: moments(v) for k, v in tile.get_hidden_parameters().items()}
    schedule = req.get("schedule") or [1] * req["up"] + [-1] * req["down"]
    checkpoints, out, persistent = set(req["checkpoints"]), {}, {}
    for k, step in enumerate(schedule, start=1):
        x = torch.ones(1, cols) if step else torch.zeros(1, cols)
        d = -torch.ones(1, rows) if step >= 0 else torch.ones(1, rows)  # W -= lr d x
        tile.update(x, d)
        tile.post_update_step()
        if k in checkpoints:
            out[str(k)] = moments(tile.get_weights()[0])
            hp = tile.get_hidden_parameters()
            if "persistent_weights" in hp:
                persistent[str(k)] = moments(hp["persistent_weights"])
    return {"checkpoints": out, "persistent": persistent, "hidden": hidden}


def forward(req: dict) -> dict:
    import torch
    from aihwkit.simulator.configs import ConstantStepDevice
    from aihwkit.simulator.tiles import AnalogTile

    w = torch.tensor(req["weights"], dtype=torch.float32)
    x = torch.tensor(req["x"], dtype=torch.float32)
    wide = ConstantStepDevice(w_min=-10.0, w_max=10.0, w_min_dtod=0.0, w_max_dtod=0.0)
    tile = AnalogTile(w.shape[0], w.shape[1], _config(wide, io=req["io"]))
    tile.set_weights(w)
    reps = req["repeats"]
    y = tile.forward(x.repeat(reps, 1)).reshape(reps, x.shape[0], w.shape[0]).double()
    return _per_entry(y)


def update(req: dict) -> dict:
    import torch
    from aihwkit.simulator.tiles import AnalogTile

    w0 = torch.tensor(req["w0"], dtype=torch.float32)
    x = torch.tensor(req["x"], dtype=torch.float32).reshape(1, -1)
    d = torch.tensor(req["d"], dtype=torch.float32).reshape(1, -1)
    tile = AnalogTile(w0.shape[0], w0.shape[1], _config(_device(req), update=req["update"]))
    tile.set_learning_rate(req["lr"])
    changes = []
    for _ in range(req["repeats"]):
        tile.set_weights(w0)
        tile.update(x, d)
        changes.append(tile.get_weights()[0] - w0)
    return _per_entry(torch.stack(changes).double())


def _per_entry(t) -> dict:
    """Mean, variance (ddof 1) and 4th central moment over the first axis, per entry."""
    c = t - t.mean(0)
    return {"mean": t.mean(0).tolist(), "var": t.var(0).tolist(),
            "m4": (c ** 4).mean(0).tolist()}


def main() -> None:
    import torch

    req = json.load(sys.stdin)
    torch.manual_seed(int(req.get("seed", 0)))
    kinds = {"pulses": pulses, "forward": forward, "update": update}
    out = kinds[req["kind"]](req)
    import aihwkit

    out["aihwkit"] = aihwkit.__version__
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
