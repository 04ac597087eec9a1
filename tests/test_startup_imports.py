"""Commands import only what they use (issue 15): ``rpuhw models`` and ``rpuhw device``
load neither torch nor numba (listing and validating models needs neither), and the
calibration fitter loads no numba (it evaluates the step rules with numpy)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "numba", "scipy", "matplotlib")


def _loaded_after(code: str) -> list[str]:
    """Heavy modules loaded in a fresh interpreter after running ``code``."""
    probe = (f"import contextlib, io, json, sys\n{code}\n"
             f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_models_and_device_load_neither_torch_nor_numba():
    device = ROOT / "drivers" / "emulators" / "hidden_device.yaml"
    code = ("from rpuhw.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert main(['models']) == 0\n"
            f"    assert main(['device', {str(device)!r}]) == 0")
    assert _loaded_after(code) == []


def test_the_fitter_loads_no_numba():
    code = "import rpuhw.calibration.fit, rpuhw.calibration.fit_report, rpuhw.device_spec"
    assert "numba" not in _loaded_after(code)


def test_training_steps_do_not_import_dynamo():
    """torch.optim imports torch._dynamo (about as long as torch itself) when an optimizer
    is built and on every SGD step; AnalogSGD defers it (rpuhw/_dynamo_deferred.py)."""
    code = ("import torch\n"
            "from rpuhw.nn import AnalogSGD, convert\n"
            "m = convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)),\n"
            "            {'layers': {'0': 'sim', 'default': 'float'}}, seed=0)\n"
            "opt = AnalogSGD(m.parameters(), lr=0.1, momentum=0.5)\n"
            "for _ in range(2):\n"
            "    opt.zero_grad(); m(torch.ones(2, 4)).sum().backward(); opt.step()\n"
            "print(json.dumps('torch._dynamo' in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", "import json, sys\n" + code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) is False


def test_deferred_steps_equal_torch_sgd_and_hand_over_to_dynamo():
    """Bit for bit torch's SGD (momentum, weight decay, nesterov, a float layer beside an
    analog one is stepped this way); once torch._dynamo is imported, the methods get
    torch's own disabled variants."""
    code = """
import json, sys, torch
from rpuhw.nn import AnalogSGD
KW = ({}, {"momentum": 0.9, "weight_decay": 0.01}, {"momentum": 0.9, "nesterov": True})
def run(opt_class, kw):
    torch.manual_seed(0)
    m = torch.nn.Linear(5, 3)
    o = opt_class(m.parameters(), lr=0.1, **kw)
    for k in range(3):
        o.zero_grad()
        m(torch.randn(4, 5)).pow(2).sum().backward()
        o.step()
    return m
ours = [run(AnalogSGD, kw) for kw in KW]
before = "torch._dynamo" in sys.modules
theirs = [run(torch.optim.SGD, kw) for kw in KW]  # imports torch._dynamo
same = [torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
        for a, b in zip(ours, theirs)]
AnalogSGD(ours[0].parameters(), lr=0.1).zero_grad()
cached = getattr(torch.optim.Optimizer.zero_grad.__wrapped__, "__dynamo_disable")
print(json.dumps([same, before, "torch._dynamo" in sys.modules, cached.__module__]))
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    same, before, after, module = json.loads(proc.stdout.strip().splitlines()[-1])
    assert same == [True, True, True]
    assert before is False and after is True
    assert module.startswith("torch._dynamo")  # torch's own disabled variant from now on
