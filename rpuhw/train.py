"""Training runs: ``rpuhw train`` and :func:`train` (config, loop, checkpoints, results).

A run trains a model from :mod:`rpuhw.models` on a dataset from :mod:`rpuhw.data`,
with each layer on the backend its plan names (``float`` = plain torch, no arrays).
Results go to a JSON file written atomically after every epoch; with a checkpoint
directory the full state (weights, device parameters, every random generator, the
position in the epoch) is written atomically every epoch and every
``checkpoint_every`` images, and ``resume`` continues exactly where it stopped: a run
killed at any point and resumed ends with the same numbers as an uninterrupted one.

Resuming needs a checkpoint: ``resume`` without ``checkpoint``, or with a folder that
does not exist or holds none, is a :class:`ConfigError` before anything is opened.
Layers on physical devices (a bench, a chip: arrays whose checkpoint state is their
weights as read, restored by write-verify) are read before the checkpoint is written
back and compared with the weights the checkpoint recorded (:func:`check_devices`): a
chip that came back in another state (restarted, power-cycled, a reseated probe card)
refuses the resume with the measured jump, unless ``accept_jump``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rpuhw import __version__
from rpuhw._io import atomic_write, remove_stale_temps
from rpuhw._jit import HAVE_NUMBA
from rpuhw.array import CrossPointArray
from rpuhw.config import from_mapping, load_yaml, require
from rpuhw.data import epoch_order, load_dataset
from rpuhw.errors import ConfigError
from rpuhw.models import NETWORKS, build_model, layer_names
from rpuhw.nn import analog_layers
from rpuhw.periphery import PeripheryConfig
from rpuhw.schedule import MANAGEMENT, LayerPlan, check_omega

CHECKPOINT = "checkpoint.pt"
# keys that may change between a run and its resumption
_RESUMABLE_CHANGES = {"epochs", "out", "checkpoint", "checkpoint_every", "progress",
                      "threads"}
# keys added after checkpoints existed: a checkpoint without them had their defaults
_ADDED_KEYS = {"algorithm", "layer_algorithms"}


@dataclass
class TrainConfig:
    """One training run (YAML keys of ``--config``; every key also has a flag)."""

    model: str = "lenet"
    """Network name (``lenet``: the paper's CNN)."""
    data: str = "mnist5k"
    """``mnist5k`` (embedded, 4,000 train / 1,000 test) or a folder of MNIST IDX files."""
    epochs: int = 1
    """Passes over the training set."""
    batch_size: int = 1
    """Images per optimizer step (the paper: 1)."""
    lr: float = 0.01
    """Learning rate eta (the paper: 0.01)."""
    backend: str = "sim"
    """Array spec of every layer not named in ``layers`` (``float`` = plain torch)."""
    layers: dict[str, str] = field(default_factory=dict)
    """Per-layer array specs, e.g. ``{conv1: "sim:chip.yaml"}``; ``conv1.A`` places one
    array of the layer's algorithm (``{conv1.A: "sim:fast.yaml"}``)."""
    algorithm: Any = "sgd"
    """Training algorithm of every analog layer (:mod:`rpuhw.algorithms`): a name
    (``sgd``, ``mp``, ``tt``) or ``{name: tt, gamma: 0.1, ...}`` with hyper-parameters."""
    layer_algorithms: dict[str, Any] = field(default_factory=dict)
    """Per-layer algorithms, e.g. ``{conv1: mp, fc2: {name: tt, gamma: 0.1}}``."""
    management: str = "nm+bm+um"
    """Periphery techniques: none, nm, nm+bm, nm+bm+um."""
    devices_per_weight: dict[str, int] = field(default_factory=dict)
    """Devices per weight by layer name, e.g. ``{conv1: 4}`` (variability reduction)."""
    update_granularity: str = "position"
    """``position`` (paper), ``sample`` or ``batch`` (aggregated pulse counts)."""
    bl: int = 10
    """Pulse-train length BL."""
    weight_scaling_omega: float = 0.0
    """> 0: the analog layers' weights are mapped onto the devices' range, torch's
    initial weight bound onto about ``omega`` (aihwkit's key; ``LayerPlan.
    weight_scaling_omega``). 0: weights are device weights."""
    train_limit: int | None = None
    """Use only the first N training images."""
    test_limit: int | None = None
    """Use only the first N test images."""
    seed: int = 0
    """Seeds initial weights, device draws, noise and the per-epoch shuffle."""
    out: str | None = None
    """Results JSON path."""
    checkpoint: str | None = None
    """Checkpoint directory (enables checkpoints)."""
    checkpoint_every: int | None = None
    """Also checkpoint every N training images."""
    progress: bool = True
    """Show a progress bar."""
    threads: int | None = 1
    """torch intra-op and numba threads during training (null: the libraries' defaults).
    One thread is as fast for these small per-image matrices and does not stall when
    other processes share the cores (a 2-thread op then waits milliseconds for its
    second thread); with two or more CPUs the simulator's pulsed updates run on a
    background thread anyway (:mod:`rpuhw.sim.background`)."""

    def validate(self) -> None:
        require(self.model in NETWORKS, "model",
                f"must be one of {', '.join(NETWORKS.names())}; got {self.model!r}")
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.threads is None or self.threads >= 1, "threads",
                f"must be >= 1 or null, got {self.threads}")
        require(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.management in MANAGEMENT, "management",
                f"must be one of {', '.join(MANAGEMENT)}; got {self.management!r}")
        require(self.update_granularity in ("position", "sample", "batch"),
                "update_granularity", "must be one of position, sample, batch; got "
                f"{self.update_granularity!r}")
        require(self.bl >= 1, "bl", f"must be >= 1, got {self.bl}")
        check_omega(self.weight_scaling_omega)
        for key in ("train_limit", "test_limit", "checkpoint_every"):
            v = getattr(self, key)
            require(v is None or v >= 1, key, f"must be >= 1 or null, got {v}")
        names = layer_names(build_model(self.model))
        for key in ("layers", "devices_per_weight"):
            unknown = sorted(k for k in set(getattr(self, key)) - set(names) if "." not in k)
            require(not unknown, key, f"model {self.model} has no layer "
                    f"{', '.join(unknown)} (layers: {', '.join(names)})")
        for name, k in self.devices_per_weight.items():
            require(isinstance(k, int) and k >= 1, f"devices_per_weight.{name}",
                    f"must be an integer >= 1, got {k!r}")
        self.layer_algorithm_choices()  # every algorithm choice and array placement

    def layer_algorithm_choices(self) -> dict[str, tuple[str, dict[str, Any]]]:
        """Analog layer name -> ``(algorithm, hyper-parameters given)``, checked: unknown
        algorithms, hyper-parameters, layers and arrays are one ConfigError each."""
        from rpuhw.algorithms import algorithm_class, parse_algorithm

        names = layer_names(build_model(self.model))
        require(isinstance(self.layer_algorithms, dict), "layer_algorithms",
                f"expected a mapping of layer names to algorithms, got "
                f"{self.layer_algorithms!r}")
        unknown = sorted(set(self.layer_algorithms) - set(names))
        require(not unknown, "layer_algorithms", f"model {self.model} has no layer "
                f"{', '.join(unknown)} (layers: {', '.join(names)})")
        default = parse_algorithm(self.algorithm, key="algorithm")
        backends = layer_backends(self)
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        for name in names:
            if name in self.layer_algorithms:
                choice = parse_algorithm(self.layer_algorithms[name],
                                         key=f"layer_algorithms.{name}")
                require(backends[name] != "float", f"layer_algorithms.{name}",
                        f"layer {name} is in floating point (backend float): no array "
                        "algorithm applies")
            else:
                choice = default
            if backends[name] != "float":
                out[name] = choice
        for key, spec in self.layers.items():
            if "." not in key:
                continue
            layer, _, arr = key.partition(".")
            require(layer in names, "layers", f"model {self.model} has no layer {layer} "
                    f"(layers: {', '.join(names)})")
            require(layer in out, f"layers.{key}", f"layer {layer} is in floating point "
                    "(backend float): it has no arrays to place")
            arrays = algorithm_class(out[layer][0]).array_names
            require(arr in arrays, "layers", f"{key}: algorithm {out[layer][0]} of layer "
                    f"{layer} has no array {arr} (arrays: {', '.join(arrays)})")
            require(isinstance(spec, str) and spec not in ("", "float"), f"layers.{key}",
                    f"expected an array spec (ideal, sim, sim:FILE.yaml, bench:FILE.yaml, "
                    f"...), got {spec!r}")
        return out


def load_config(path: str | None, overrides: dict[str, Any]) -> TrainConfig:
    """Config from an optional YAML file, then command-line overrides (not None)."""
    data = load_yaml(path) if path else {}
    data.update({k: v for k, v in overrides.items() if v is not None})
    return from_mapping(TrainConfig, data, source=path or "command line")


# ---------------------------------------------------------------------------------------
def layer_backends(cfg: TrainConfig) -> dict[str, str]:
    """Layer name -> backend spec."""
    return {n: cfg.layers.get(n, cfg.backend) for n in layer_names(build_model(cfg.model))}


def make_model(cfg: TrainConfig, write: bool = True) -> nn.Module:
    """The model with each layer on its backend, initialised from ``cfg.seed``
    (``write=False``: the arrays are left as they opened, see :func:`~rpuhw.nn.convert`)."""
    from rpuhw.nn import convert

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model)
    nm, bm, um = MANAGEMENT[cfg.management]
    per = PeripheryConfig(noise_management=nm, bound_management=bm, update_management=um,
                          bl=cfg.bl, lr=cfg.lr)
    plan: dict[str, Any] = {}
    algorithms = cfg.layer_algorithm_choices()
    for name, spec in layer_backends(cfg).items():
        if spec == "float":
            plan[name] = "float"
            continue
        alg, params = algorithms[name]
        arrays = {k.partition(".")[2]: v for k, v in cfg.layers.items()
                  if k.partition(".")[0] == name and "." in k}
        plan[name] = LayerPlan(backend=spec, devices_per_weight=cfg.devices_per_weight.get(
            name, 1), granularity=cfg.update_granularity, periphery=per, algorithm=alg,
            algorithm_params=params, arrays=arrays,
            weight_scaling_omega=cfg.weight_scaling_omega)
    convert(model, {"layers": plan, "default": "float"}, seed=cfg.seed, write=write)
    return model


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 100) -> float:
    """Test error (fraction misclassified)."""
    model.eval()
    wrong = 0
    with torch.no_grad():
        for i in range(0, len(x), batch):
            wrong += int((model(x[i:i + batch]).argmax(1) != y[i:i + batch]).sum())
    model.train()
    return wrong / max(len(x), 1)


def _atomic_write(path: Path, write) -> None:
    atomic_write(path, write)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _comparable(cfg: TrainConfig) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUMABLE_CHANGES}


def _check_config(st: dict[str, Any], cfg: TrainConfig, source: str) -> None:
    mine = _comparable(cfg)
    # keys added since the checkpoint was written count as their defaults
    saved = {**{k: v for k, v in _comparable(TrainConfig()).items()
                if k in _ADDED_KEYS}, **st.get("config", {})}
    if saved != mine:
        diff = sorted(k for k in set(mine) | set(saved) if mine.get(k) != saved.get(k))
        raise ConfigError(f"checkpoint is from another model or config (differs in: "
                          f"{', '.join(diff)}); refusing to resume", source=source)


def physical_arrays(model: nn.Module) -> dict[str, list[tuple[int, CrossPointArray]]]:
    """Layer name -> ``[(index in the layer's arrays, array)]`` of the arrays on physical
    devices: those whose state lives outside this process, so that a checkpoint holds
    their weights as read and restores them by write-verify (the contract's default
    ``state_dict``/``load_state_dict``: a bench, an ArC TWO)."""
    out: dict[str, list[tuple[int, CrossPointArray]]] = {}
    for name, layer in analog_layers(model).items():
        found = [(k, a) for k, a in enumerate(layer.arrays)
                 if type(a).load_state_dict is CrossPointArray.load_state_dict]
        if found:
            out[name] = found
    return out


class Run:
    """State of one training run (what a checkpoint holds)."""

    def __init__(self, cfg: TrainConfig, write: bool = True):
        """``write=False`` (a resume) leaves the arrays as they opened: the checkpoint's
        state is loaded into them after :func:`check_devices`."""
        from rpuhw.nn import AnalogSGD

        self.cfg = cfg
        self.model = make_model(cfg, write=write)
        self.opt = AnalogSGD(self.model.parameters(), lr=cfg.lr)
        self.epoch = 0          # completed epochs
        self.done = 0           # images done in the current epoch
        self.loss_sum = 0.0
        self.results: dict[str, Any] = {"test_error": [], "train_loss": [], "epoch_wall_s": []}
        self.train_s = 0.0
        self.images = 0
        self.resumed: list[dict[str, Any]] = []
        """One entry per resume: ``{"at", "epoch", "image", "jumps"}`` (see
        :func:`check_devices`)."""
        # physical arrays: weights at the last checkpoint (or the start) and the image
        # count then, for the "moved" record of the next checkpoint
        self._reference: dict[str, list[torch.Tensor]] = {}
        self._reference_images = 0

    def note_reference(self, weights: dict[str, list[torch.Tensor]] | None = None,
                       images: int | None = None) -> None:
        """Remember the physical arrays' weights now (read them when not given)."""
        if weights is None:
            weights = {name: [a.read() for _, a in arrays]
                       for name, arrays in physical_arrays(self.model).items()}
        self._reference = weights
        self._reference_images = self.images if images is None else images

    def state(self) -> dict[str, Any]:
        # the model's state_dict holds the arrays (weights, device parameters, RNGs)
        # and the peripheries' pulse-train generators; physical arrays: weights as read
        model = self.model.state_dict()
        return {"config": _comparable(self.cfg), "model": model,
                "opt": self.opt.state_dict(), "epoch": self.epoch, "done": self.done,
                "loss_sum": self.loss_sum, "results": self.results, "train_s": self.train_s,
                "images": self.images, "torch_rng": torch.get_rng_state(),
                "hardware": self._hardware_record(model), "resumed": self.resumed,
                "planned_epochs": self.cfg.epochs,
                "rpuhw_version": __version__}

    def _hardware_record(self, model_state: dict[str, Any]) -> dict[str, Any]:
        """Per layer on physical devices: ``moved`` (per array, the largest change of a
        device's weight since the previous checkpoint or the start, as read) and
        ``images`` (trained in between); the reference moves to this checkpoint."""
        record: dict[str, Any] = {}
        now: dict[str, list[torch.Tensor]] = {}
        for name, arrays in physical_arrays(self.model).items():
            saved = model_state[f"{name}._extra_state"]["arrays"]
            now[name] = [saved[k]["weights"] for k, _ in arrays]
            ref = self._reference.get(name)
            if ref is None or len(ref) != len(now[name]):
                continue
            record[name] = {"moved": [float((w - r).abs().max()) for w, r in
                                      zip(now[name], ref, strict=True)],
                            "images": self.images - self._reference_images}
        self.note_reference(now)
        return record

    def load(self, st: dict[str, Any], source: str) -> None:
        _check_config(st, self.cfg, source)
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["opt"])
        torch.set_rng_state(st["torch_rng"])
        for key in ("epoch", "done", "loss_sum", "results", "train_s", "images"):
            setattr(self, key, st[key])
        self.resumed = list(st.get("resumed", []))
        self.note_reference({name: [st["model"][f"{name}._extra_state"]["arrays"][k]["weights"]
                                    for k, _ in arrays]
                             for name, arrays in physical_arrays(self.model).items()})


def _checkpoint_to_resume(cfg: TrainConfig) -> dict[str, Any]:
    """The checkpoint ``resume`` continues, loaded and checked against ``cfg`` before
    anything is opened; one :class:`ConfigError` naming the folder otherwise."""
    if cfg.checkpoint is None:
        raise ConfigError("--resume needs --checkpoint DIR (the folder of the run to "
                          "continue)", key="resume")
    folder = Path(cfg.checkpoint)
    what = ("the folder does not exist" if not folder.exists() else
            "not a folder" if not folder.is_dir() else None)
    if what is None:
        ckpt = folder / CHECKPOINT
        remove_stale_temps(ckpt)  # a killed run may have died in the middle of a write
        if not ckpt.is_file():
            what = f"the folder holds no {CHECKPOINT}"
    if what is not None:
        raise ConfigError(f"nothing to resume: {what}; check --checkpoint DIR, or leave out "
                          "--resume to start a new run", source=str(folder))
    try:
        st = torch.load(ckpt, weights_only=False)
    except Exception as exc:  # a corrupt file is bad input, not a crash
        raise ConfigError(f"cannot read checkpoint ({exc})", source=str(ckpt)) from None
    if not isinstance(st, dict) or "model" not in st:
        raise ConfigError("not an rpuhw training checkpoint", source=str(ckpt))
    _check_config(st, cfg, str(ckpt))
    return st


# The training a stopped run did after its last checkpoint moved the physical devices
# too: by at most about what they moved between the last two checkpoints, scaled to
# the images it may have trained since (the next checkpoint comes within
# checkpoint_every images, or at the end of the epoch). Linear scaling over-estimates a
# random walk's growth; the factor 2 covers the largest change of one interval
# exceeding that of the previous one (about half the time for equal intervals, rarely
# by more than a factor 2).
_TRAINING_MARGIN = 2.0


def check_devices(run: Run, st: dict[str, Any], n_train: int, source: str,
                  accept_jump: bool = False, log=print) -> dict[str, float]:
    """Before a resume: are the physical devices where the checkpoint left them?

    Each array on physical devices (:func:`physical_arrays`) is read twice and compared
    with the weights the checkpoint recorded (:func:`rpuhw.resume_check.check_jumps`;
    the read noise from the two reads). The allowance is the training the stopped run
    may have done since the checkpoint (see ``_TRAINING_MARGIN``; none after its last
    epoch). Returns layer name -> largest jump (weight units) of the layers with
    devices beyond the limit; raises :class:`ConfigError` (one line with the jump) when
    there are any and not ``accept_jump`` (then logs a warning). A checkpoint without
    the record of earlier checkpoints (rpuhw before 0.x) only warns.
    """
    from rpuhw.resume_check import JUMP_OF_TWO_READS, check_jumps

    arrays = physical_arrays(run.model)
    if not arrays:
        return {}
    cfg = run.cfg
    record = st.get("hardware")
    finished = st["epoch"] >= st.get("planned_epochs", cfg.epochs)  # nothing trained since
    since = 0 if finished else min((cfg.checkpoint_every or n_train) + cfg.batch_size - 1,
                                   n_train - st["done"])
    jumps: dict[str, float] = {}
    reports = []
    for name, found in arrays.items():
        saved = st["model"][f"{name}._extra_state"]["arrays"]
        rec = (record or {}).get(name)
        for q, (k, arr) in enumerate(found):
            ckpt_w = saved[k]["weights"].double().numpy()
            a, b = arr.read().double().numpy(), arr.read().double().numpy()
            allowance = 0.0
            if rec is not None and since:
                allowance = _TRAINING_MARGIN * rec["moved"][q] * max(
                    1.0, since / max(rec["images"], 1))
            floor = 1e-6 * (float(abs(ckpt_w).max()) + float(arr.info().dw_min))
            res = check_jumps(a, b, ckpt_w, allowance, floor=floor)
            w = res.worst()
            where = divmod(w, arr.cols)
            info = arr.info()
            per_s = None
            if None not in (info.g_min, info.g_max, info.w_min, info.w_max):
                per_s = (info.g_max - info.g_min) / (info.w_max - info.w_min)
            jump = float(res.jump.reshape(-1)[w])

            def fmt(v: float, per_s=per_s) -> str:  # a change of weight (and conductance)
                return f"{v:.4g} weight units" + (
                    f" ({v * per_s * 1e6:.4g} uS)" if per_s is not None else "")

            def fmt_w(v: float, per_s=per_s, info=info) -> str:  # a weight (conductance)
                return f"{v:.4g}" + (
                    f" ({(info.g_min + (v - info.w_min) * per_s) * 1e6:.4g} uS)"
                    if per_s is not None else "")

            where_txt = f" (array {k})" if len(found) > 1 else ""
            if res.moved.any():
                jumps[name] = jump if abs(jump) >= abs(jumps.get(name, 0.0)) else jumps[name]
                reports.append(
                    f"{name}{where_txt} ({run.cfg.layers.get(name, cfg.backend)}): "
                    f"{int(res.moved.sum())} of {res.moved.size} devices moved beyond "
                    f"{res.sigmas * JUMP_OF_TWO_READS:.1f} x the read noise"
                    + (f" plus {allowance:.3g} weight units of training since the "
                       "checkpoint" if allowance else "")
                    + f"; largest: device {where} reads {fmt_w(float((a + b).reshape(-1)[w]) / 2)}"
                    f", the checkpoint {fmt_w(float(ckpt_w.reshape(-1)[w]))}: a jump of "
                    f"{fmt(jump)} = {res.describe(jump, fmt)}")
            else:
                log(f"{name}{where_txt}: the devices are where the checkpoint left them "
                    f"(largest change {fmt(float(abs(res.jump).max()))}, limit "
                    f"{fmt(float(res.limit.min()))})")
    if reports:
        text = "; ".join(reports)
        if record is None:
            log(f"warning: {source}: {text} (the checkpoint predates the record of the "
                "training between checkpoints, so this may be training: not refused)")
            return {}
        if not accept_jump:
            raise ConfigError(
                f"the devices are not where the checkpoint left them: {text}; was the bench "
                "restarted, the chip power-cycled or the probe card reseated? Continue with "
                "--accept-jump (the checkpoint's weights are then programmed onto the devices "
                "as they are) or start a new run", source=source)
        log(f"warning: {source}: the devices moved since the checkpoint (accepted): {text}")
    return jumps


def train(cfg: TrainConfig, resume: bool = False, log=print,
          on_model: Callable[[nn.Module], None] | None = None,
          accept_jump: bool = False) -> dict[str, Any]:
    """Run (or resume) training; returns the results dict (also written to ``cfg.out``).

    ``on_model(model)`` is called with the trained model before its arrays are closed
    (to read its weights). Hardware arrays report their instrument messages in the
    results (``instrument_messages``: layer -> messages). ``resume`` needs the
    checkpoint in ``cfg.checkpoint``; layers on physical devices are checked first
    (:func:`check_devices`; ``accept_jump``: continue past a jump, recording it in the
    results' ``resumed``).
    """
    cfg.validate()
    ckpt = Path(cfg.checkpoint) / CHECKPOINT if cfg.checkpoint else None
    st = _checkpoint_to_resume(cfg) if resume else None  # before any array is opened
    if not resume and ckpt is not None and ckpt.exists():  # before any array is written
        raise ConfigError("a checkpoint exists already; use --resume to continue it or "
                          "another --checkpoint directory", source=str(ckpt))
    data = load_dataset(cfg.data, train_limit=cfg.train_limit, test_limit=cfg.test_limit)
    threads = _threads()
    if cfg.threads:
        _set_threads((cfg.threads, cfg.threads))
    run = Run(cfg, write=st is None)
    try:
        if st is not None:
            jumps = check_devices(run, st, len(data.x_train), str(ckpt), accept_jump, log)
            run.load(st, str(ckpt))
            run.resumed.append({"at": _now(), "epoch": run.epoch, "image": run.done,
                                "jumps": jumps})
            log(f"resumed from {ckpt}: epoch {run.epoch + 1}, image {run.done}")
        elif ckpt is not None and physical_arrays(run.model):
            run.note_reference()  # what the first checkpoint's record is measured from
        results = _run(cfg, run, data, log)
        msgs = {}  # instrument traffic of the layers on hardware
        for name, layer in analog_layers(run.model).items():
            counts = [a.stats() for a in layer.arrays]
            if all("messages" in c for c in counts):
                msgs[name] = sum(c["messages"] for c in counts)
        if msgs:
            results["instrument_messages"] = msgs
        if on_model is not None:
            on_model(run.model)
        return results
    finally:  # hardware arrays: outputs off and sessions closed on every exit path
        _set_threads(threads)
        for arr in _arrays(run.model):
            arr.close()


def _threads() -> tuple[int, int | None]:
    """(torch threads, numba threads or None without numba)."""
    if not HAVE_NUMBA:
        return torch.get_num_threads(), None
    import numba

    return torch.get_num_threads(), numba.get_num_threads()


def _set_threads(threads: tuple[int, int | None]) -> None:
    torch.set_num_threads(threads[0])
    if HAVE_NUMBA and threads[1]:
        import numba

        numba.set_num_threads(min(threads[1], numba.config.NUMBA_NUM_THREADS))


def _arrays(model: nn.Module) -> list:
    return [a for layer in analog_layers(model).values() for a in layer.arrays]


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds")


def _run(cfg: TrainConfig, run: Run, data, log) -> dict[str, Any]:
    ckpt = Path(cfg.checkpoint) / CHECKPOINT if cfg.checkpoint else None

    def save_ckpt():
        if ckpt is not None:
            _atomic_write(ckpt, lambda tmp: torch.save(run.state(), tmp))

    n = len(data.x_train)
    loss_fn = nn.CrossEntropyLoss()
    wall0 = time.perf_counter()
    while run.epoch < cfg.epochs:
        order = epoch_order(n, run.epoch, cfg.seed)
        bar = _progress(cfg, n, run)
        t0 = time.perf_counter()
        while run.done < n:
            idx = order[run.done:run.done + cfg.batch_size]
            run.opt.zero_grad()
            loss = loss_fn(run.model(data.x_train[idx]), data.y_train[idx])
            loss.backward()
            run.opt.step()
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"training diverged (loss {loss.item()}) at epoch "
                                         f"{run.epoch + 1}, image {run.done}")
            run.loss_sum += loss.item() * len(idx)
            run.done += len(idx)
            run.images += len(idx)
            elapsed = run.train_s + time.perf_counter() - t0
            if bar is not None:
                bar.update(len(idx))
                bar.set_postfix(loss=f"{run.loss_sum / run.done:.3f}",
                                img_s=f"{run.images / max(elapsed, 1e-9):.0f}")
            if cfg.checkpoint_every and run.done % cfg.checkpoint_every < len(idx) \
                    and run.done < n:
                run.train_s = elapsed
                t0 = time.perf_counter()
                save_ckpt()
        run.train_s += time.perf_counter() - t0
        if bar is not None:
            bar.close()
        err = evaluate(run.model, data.x_test, data.y_test)
        run.results["test_error"].append(err)
        run.results["train_loss"].append(run.loss_sum / n)
        run.results["epoch_wall_s"].append(time.perf_counter() - wall0)
        log(f"epoch {run.epoch + 1}/{cfg.epochs}: train loss {run.loss_sum / n:.4f}, "
            f"test error {100 * err:.2f} %")
        run.epoch += 1
        run.done = 0
        run.loss_sum = 0.0
        save_ckpt()
        if cfg.out:
            _write_json(Path(cfg.out), _results(cfg, run, time.perf_counter() - wall0))
    return _results(cfg, run, time.perf_counter() - wall0)


def _results(cfg: TrainConfig, run: Run, wall: float) -> dict[str, Any]:
    out = {"config": dataclasses.asdict(cfg), "epochs": run.epoch,
           "test_error": run.results["test_error"], "train_loss": run.results["train_loss"],
           "images_per_s": run.images / run.train_s if run.train_s > 0 else None,
           "wall_s": wall, "seed": cfg.seed, "backends": layer_backends(cfg),
           "algorithms": {n: a for n, (a, _) in cfg.layer_algorithm_choices().items()},
           "rpuhw_version": __version__}
    if run.resumed:
        out["resumed"] = run.resumed
    return out


def _progress(cfg: TrainConfig, n: int, run: Run):
    """The epoch's progress display: a bar on a terminal, a line now and then in a log,
    None without ``cfg.progress`` (:func:`rpuhw.progress.progress_bar`)."""
    from rpuhw.progress import progress_bar

    return progress_bar(n, initial=run.done, desc=f"epoch {run.epoch + 1}/{cfg.epochs}",
                        unit="img", leave=False, enabled=cfg.progress)
