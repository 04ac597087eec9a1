"""Compiled kernels are cached on disk across processes, keyed by every source they reach.

* A second process loads the simulator's per-model update kernel (and the kernels it
  calls) from the cache and compiles nothing; its results are bit for bit those of the
  fresh compile; the cold cache is announced exactly once, the warm one not at all.
* A changed rule, or a changed helper in another file that the rule calls (numba's own
  cache misses that one), gives another key, and the next process recompiles and computes
  with the new rule.
* Concurrent saves into one index keep every entry, each with its own data.

Each subprocess test uses its own ``RPUHW_CACHE_DIR``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rpuhw._jit import HAVE_NUMBA

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba disabled or not installed")

ROOT = Path(__file__).resolve().parents[1]

STATS = """
def kernel_stats():
    import gc
    from numba.core.dispatcher import Dispatcher
    hits = misses = 0
    for d in gc.get_objects():
        if isinstance(d, Dispatcher) and d.py_func.__module__.startswith("rpuhw"):
            hits += sum(d.stats.cache_hits.values())
            misses += sum(d.stats.cache_misses.values())
    return hits, misses
"""

UPDATE = STATS + """
import json, sys
import numpy as np, torch
from rpuhw import _compile_notice
from rpuhw.devices import get_model
from rpuhw.periphery.bits import PackedBits
from rpuhw.sim import kernels

_compile_notice.announce_to(sys.stderr)
model = get_model("exp_step")()
rows, cols, P, bl = 6, 7, 5, 10
gen = torch.Generator().manual_seed(1)
state = model.draw(rows, cols, gen)
bits = lambda n: torch.randint(-1, 2, (P, bl, n), generator=gen, dtype=torch.int8)
pk = PackedBits.from_bits(bits(cols), bits(rows))
w = np.zeros((rows, cols), np.float32)
kernels.update_kernel_for(model.nb_pulse)(pk.x_nz, pk.x_pos, pk.d_nz, pk.d_pos, w,
    model.packed_state(state), np.asarray(model.constants()), 7, True)
hits, misses = kernel_stats()
print(json.dumps({"w": w.tobytes().hex(), "hits": hits, "misses": misses}))
"""


def _run(script: str, cache: Path, *args: str) -> tuple[dict, str]:
    env = {**os.environ, "RPUHW_CACHE_DIR": str(cache)}
    env.pop("NUMBA_DISABLE_JIT", None)
    proc = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


@pytest.fixture(scope="module")
def update_runs(tmp_path_factory):
    """The update script run twice on one empty cache folder: (cold, warm) results."""
    cache = tmp_path_factory.mktemp("kernel_cache")
    return _run(UPDATE, cache), _run(UPDATE, cache), cache


def test_a_second_process_compiles_nothing(update_runs):
    (cold, _), (warm, _), cache = update_runs
    assert cold["misses"] > 0
    assert warm["misses"] == 0
    assert warm["hits"] >= 1
    assert list(cache.glob("numba/*/model_kernels.update_kernel-*.nbi"))


def test_results_are_bit_identical_with_a_cache_hit(update_runs):
    (cold, _), (warm, _), _ = update_runs
    assert warm["w"] == cold["w"]
    assert len(set(bytes.fromhex(cold["w"]))) > 1  # the update did move the weights


def test_the_cold_cache_is_announced_once(update_runs):
    (_, cold_err), (_, warm_err), _ = update_runs
    line = "rpuhw: compiling simulator kernels, once"
    assert cold_err.count(line) == 1, cold_err
    assert line not in warm_err


# ---- a changed rule, or a helper it calls, recompiles --------------------------------

RULE = """
import numpy as np
from user_helper import factor

def mean_step(w, up, prm, i, j, c):
    return factor(prm[i, j, 0]) if up else factor(prm[i, j, 1])
"""

HELPER = """
from rpuhw._jit import njit

@njit(inline="always")
def factor(x):
    return {scale} * x
"""

PULSES = STATS + """
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
from user_rule import mean_step
from rpuhw.devices import DeviceModel
from rpuhw.sim import kernels

class UserModel(DeviceModel):
    mean_step = mean_step

model = UserModel()
state = model.draw(3, 4, torch.Generator().manual_seed(0))
w = np.zeros((3, 4), np.float32)
kernels.pulse_kernel_for(model.nb_pulse)(np.full((3, 4), 2, np.int32), w,
    model.packed_state(state), np.asarray(model.constants()), 1, False)
expect = 2 * model.step(torch.zeros(3, 4), torch.ones(3, 4, dtype=torch.bool), state)
hits, misses = kernel_stats()
print(json.dumps({"w": w.ravel().tolist(), "expect": expect.flatten().tolist(), "hits": hits,
                  "misses": misses}))
"""


def test_a_changed_helper_of_a_rule_recompiles(tmp_path):
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    (src / "user_rule.py").write_text(RULE)
    (src / "user_helper.py").write_text(HELPER.format(scale=1.0))
    first, _ = _run(PULSES, cache, str(src))
    again, _ = _run(PULSES, cache, str(src))
    assert first["misses"] > 0 and again["misses"] == 0
    assert again["w"] == first["w"]
    # only the helper's file changes: numba's own cache would load the old kernel
    (src / "user_helper.py").write_text(HELPER.format(scale=2.0))
    changed, _ = _run(PULSES, cache, str(src))
    assert changed["misses"] > 0
    assert changed["w"] == pytest.approx(changed["expect"], rel=1e-6)
    assert changed["w"] == pytest.approx([2 * v for v in first["w"]], rel=1e-6)


# ---- the key ---------------------------------------------------------------------------

def _import_file(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_key_follows_the_rule_source_and_the_constants_it_reads(tmp_path):
    from rpuhw._kernel_key import source_digest
    from rpuhw.devices.rule import compiled_pulse, multiplicative

    rule = textwrap.dedent("""
        SCALE = {scale}

        def mean_step(w, up, prm, i, j, c):
            return SCALE * prm[i, j, 0] if up else prm[i, j, 1]  # {comment}
    """)
    path = tmp_path / "rule_a.py"
    keys = []
    for scale, comment in ((1.0, ""), (1.0, ""), (1.0, "edited"), (2.0, "edited")):
        path.write_text(rule.format(scale=scale, comment=comment))
        module = _import_file(path, "rule_a")
        keys.append(source_digest(compiled_pulse(module.mean_step, multiplicative)))
    assert keys[0] == keys[1]  # same source, same key (in any process)
    assert keys[2] != keys[1]  # any edit of the rule's file
    assert keys[3] != keys[2]  # another constant
    module.SCALE = 3.0  # a constant changed at run time: numba would freeze the new one
    assert source_digest(compiled_pulse(module.mean_step, multiplicative)) != keys[3]


def test_every_built_in_model_has_its_own_key():
    from rpuhw._kernel_key import source_digest
    from rpuhw.devices import get_model, model_names

    keys = {source_digest(get_model(name).nb_pulse) for name in model_names()}
    assert len(keys) == len(model_names())


def test_what_cannot_be_described_is_not_keyed(tmp_path):
    from rpuhw._kernel_key import Unkeyable, source_digest

    path = tmp_path / "rule_b.py"
    path.write_text("THING = object()\n\ndef rule(w):\n    return THING\n")
    with pytest.raises(Unkeyable, match="object"):
        source_digest(_import_file(path, "rule_b").rule)
    namespace: dict = {}
    exec("def rule(w):\n    return w", namespace)  # no source file
    with pytest.raises(Unkeyable, match="no source file"):
        source_digest(namespace["rule"])


def test_the_folder(monkeypatch, tmp_path):
    from rpuhw._kernel_cache import cache_dir

    monkeypatch.delenv("RPUHW_CACHE_DIR", raising=False)
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "rpuhw"
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "nb"))
    assert cache_dir() == tmp_path / "nb" / "rpuhw"
    monkeypatch.setenv("RPUHW_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


# ---- concurrent processes ---------------------------------------------------------------

def _save_many(folder: str, worker: int, n: int) -> None:
    from rpuhw._kernel_cache import _IndexFile

    index = _IndexFile(folder, "kernel-1.py311", "stamp")
    for k in range(n):
        index.save(("key", worker, k), {"worker": worker, "k": k, "pad": b"x" * 4096})


@pytest.mark.skipif(sys.platform != "linux", reason="fork")
def test_concurrent_saves_keep_every_entry_with_its_own_data(tmp_path):
    from rpuhw._kernel_cache import _IndexFile

    workers, n = 4, 15
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_save_many, args=(str(tmp_path), w, n)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    index = _IndexFile(str(tmp_path), "kernel-1.py311", "stamp")
    for w in range(workers):
        for k in range(n):
            data = index.load(("key", w, k))
            assert data is not None and (data["worker"], data["k"]) == (w, k)
    assert len(list(tmp_path.glob("*.nbc"))) == workers * n  # nothing left unreferenced


def test_a_closed_announcement_stream_does_not_fail_the_compile(caplog):
    """A CLI call in a process that lives on (pytest's capture, a notebook) leaves its
    closed stderr as the announcement stream: a later first compile logs the line
    instead of raising from numba's compile event (it once failed a training run)."""
    import io
    import logging

    from rpuhw import _compile_notice

    stream = io.StringIO()
    old = (_compile_notice._stream, _compile_notice._estimate_s)
    _compile_notice.announce_to(stream)
    stream.close()
    try:
        with caplog.at_level(logging.INFO, logger=_compile_notice.log.name):
            _compile_notice._announce()
    finally:
        _compile_notice.announce_to(*old)
    assert _compile_notice.message() in caplog.text
