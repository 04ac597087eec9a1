"""``search:`` sweeps and ``rpuhw tune``: Ray Tune with its Optuna searcher (TPE).

Each Tune trial runs :func:`rpuhw.sweep.trial.run_trial` in a Tune worker with the
point Optuna proposes, and reports the trial's metric (``test_error`` after the last
epoch; a failed trial reports the worst value, 1.0 test error or 1e9 loss, so the search
moves away from it). The driver records each trial as it finishes, exactly like a grid
sweep (ids ``s`` + Tune's trial id); a Tune worker that dies is retried once
(``FailureConfig(max_failures=1)``). ``--resume`` hands the finished trials to Optuna
(``points_to_evaluate`` + ``evaluated_rewards``) and runs only the rest of the budget.

``rpuhw tune`` builds such a search over an algorithm's main hyper-parameters
(:data:`SPACES`, restricted to the keys the algorithm has) with the algorithm's defaults as
the first point, and writes the best trial's training config as ``DIR/best.yaml``
(``rpuhw train --config DIR/best.yaml``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from rpuhw.sweep.engine import Progress, RayOptions, error_record
from rpuhw.sweep.results import SweepDir
from rpuhw.sweep.spec import Dimension, SweepSpec, parse_spec

BEST_YAML = "best.yaml"
TT_FAMILY = ("tt", "ttv2", "cttv2", "agad")
SPACES: dict[str, dict[str, dict[str, Any]]] = {
    "lr": {"lr": {"low": 0.001, "high": 0.1, "log": True}},
    "mp": {"algorithm.transfer_every": {"low": 1, "high": 8, "int": True}},
    "tt_family": {"algorithm.fast_lr": {"low": 0.1, "high": 10.0, "log": True},
                  "algorithm.transfer_every": {"low": 0.5, "high": 8.0, "log": True}},
    "chopped": {"algorithm.in_chop_prob": {"low": 0.01, "high": 0.5, "log": True}},
}
"""Search ranges of ``rpuhw tune``: the SGD learning rate for every algorithm, plus
``mp``'s transfer period, the TT family's A learning rate and transfer period, and the
chopped variants' chopper probability. A default outside a range widens it."""


def worst(metric: str, mode: str) -> float:
    """What a failed trial reports."""
    bad = 1.0 if metric == "test_error" else 1e9
    return bad if mode == "min" else -bad


def _tune_domain(d: Dimension):
    from ray import tune

    if d.values is not None:
        return tune.choice(list(d.values))
    if d.integer:
        return (tune.lograndint if d.log else tune.randint)(int(d.low), int(d.high) + 1)
    return (tune.loguniform if d.log else tune.uniform)(d.low, d.high)


class _Recorder:
    """Turns Tune's events into records of the sweep folder (driver side)."""

    def __init__(self, sdir: SweepDir, spec: SweepSpec, names: dict[str, str],
                 progress: Progress):
        self.sdir, self.spec, self.names, self.progress = sdir, spec, names, progress
        self.seen: set[str] = set()

    def callback(self):
        from ray import tune

        rec = self

        class _Callback(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                rec.progress.running = sum(t.status == "RUNNING" for t in trials)
                rec.progress.show(force=False)

            def on_trial_result(self, iteration, trials, trial, result, **info):
                if "record_json" not in result or trial.trial_id in rec.seen:
                    return
                rec.seen.add(trial.trial_id)
                rec.progress.running = sum(t.status == "RUNNING" for t in trials) - 1
                rec.add(json.loads(result["record_json"]))

            def on_trial_error(self, iteration, trials, trial, **info):
                if trial.trial_id in rec.seen:
                    return
                rec.seen.add(trial.trial_id)
                params = {k: trial.config.get(v) for k, v in rec.names.items()}
                from rpuhw.sweep.trials import build

                t = build(rec.spec, trial.trial_id, params, prefix="s")
                rec.progress.running = sum(t.status == "RUNNING" for t in trials)
                rec.add(error_record(t, f"worker failed (retried once): "
                                        f"{_last_line(trial.error_file)}"))

        return _Callback()

    def add(self, record: dict[str, Any]) -> None:
        self.sdir.add(record)
        self.progress.done += 1
        self.progress.running = max(0, self.progress.running)
        self.progress.failed += record["status"] != "ok"
        self.progress.show()


def _last_line(path: str | None) -> str:
    """The last line of Tune's error file of a trial (the exception), else the path."""
    try:
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        return lines[-1] if lines else str(path)
    except (OSError, TypeError):
        return str(path)


def run_search(spec: SweepSpec, out: str | None, opts: RayOptions, resume: bool = False,
               dry_run: bool = False, prog: str = "rpuhw sweep",
               stdout: TextIO | None = None, first: dict[str, Any] | None = None) -> int:
    """Run the ``search:`` of ``spec`` into folder ``out``; ``first``: a point (axis ->
    value) to evaluate before Optuna proposes any (``rpuhw tune``: the defaults)."""
    from rpuhw.sweep.trials import build, sample

    stdout = stdout or sys.stdout
    assert spec.search is not None
    s = spec.search
    # every key of the space checked on one point before anything starts
    probe = first or sample(spec.search_space, 1, s["seed"])[0]
    build(spec, 0, probe, prefix="s")
    if dry_run:
        goal = "minimising" if s["mode"] == "min" else "maximising"
        print(f"search ({s['method']}): {s['trials']} trials {goal} {s['metric']}",
              file=stdout)
        for d in spec.search_space:
            rng = (f"values {list(d.values)}" if d.values is not None else
                   f"[{d.low}, {d.high}]" + (" log" if d.log else "") +
                   (" int" if d.integer else ""))
            print(f"  {d.key}: {rng}", file=stdout)
        if first:
            print("  first point: " + ", ".join(f"{k}={v}" for k, v in first.items()),
                  file=stdout)
        return 0
    assert out is not None
    from rpuhw.sweep.run import open_sweep_dir

    sdir = open_sweep_dir(spec, out, resume, opts.address)
    from rpuhw.sweep.engine import start_ray

    instruments = build(spec, 0, probe, prefix="s").instruments
    if not (resume and len(sdir.load()) >= s["trials"]):  # else: nothing left to run
        started = start_ray(opts, instruments)
        try:
            sdir.start(spec)
            _tune(spec, sdir, opts, instruments, first)
        finally:
            if started:
                import ray

                ray.shutdown()
    sdir.write_tables()
    best = write_best(spec, sdir)
    n_err = sum(r["status"] != "ok" for r in sdir.records.values())
    print(f"{len(sdir.records)} trials ({len(sdir.records) - n_err} ok, {n_err} failed); "
          f"results in {sdir.path / 'results.csv'}", file=stdout)
    if best is not None:
        print(f"best: {s['metric']} {best[1]:.4g} ({best[0]['id']}: " + ", ".join(
            f"{k}={v}" for k, v in best[0]["params"].items()) +
            f"); its training config: {sdir.path / BEST_YAML}", file=stdout)
    return 0


def _tune(spec: SweepSpec, sdir: SweepDir, opts: RayOptions, instruments: list[str],
          first: dict[str, Any] | None) -> None:
    import logging

    import optuna
    import ray
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    from rpuhw.sweep.engine import resource_name
    from rpuhw.sweep.trial import run_trial
    from rpuhw.sweep.trials import Trial, build

    optuna.logging.set_verbosity(logging.WARNING)
    s = spec.search
    assert s is not None
    names = {d.key: f"p{i}" for i, d in enumerate(spec.search_space)}
    done = sorted(sdir.records.values(), key=lambda r: r["id"])
    remaining = s["trials"] - len(done)
    progress = Progress(s["trials"], done=len(done),
                        failed=sum(r["status"] != "ok" for r in done))
    progress.show()
    if remaining <= 0:
        return
    bad = worst(s["metric"], s["mode"])
    points = [{names[k]: r["params"][k] for k in names} for r in done]
    rewards = [r.get(s["metric"]) if r["status"] == "ok" and r.get(s["metric"]) is not None
               else bad for r in done]
    if first and not done:
        points, rewards = [{names[k]: v for k, v in first.items()}], None
    elif not points:
        points, rewards = None, None
    # resumed: the finished trials are told to Optuna, and its random start continues
    # from another seed (the same seed would propose the finished points again)
    searcher = OptunaSearch(metric="objective", mode=s["mode"], seed=s["seed"] + len(done),
                            points_to_evaluate=points, evaluated_rewards=rewards)
    cpus = opts.cpus_per_trial
    limit = opts.max_concurrent or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    if instruments:
        limit = 1  # one instrument: one trial at a time
    cwd, folder = os.getcwd(), str(sdir.path.resolve())
    metric = s["metric"]

    def trainable(config: dict[str, Any]) -> None:
        os.chdir(cwd)  # Tune starts trials in their own folder: the sweep file's paths
        params = {k: config[v] for k, v in names.items()}
        tid = tune.get_context().get_trial_id()
        try:
            trial = build(spec, tid, params, prefix="s")
            payload = {"id": trial.id, "params": trial.params, "config": trial.config,
                       "device": trial.device}
            rec = run_trial(payload, os.path.join(folder, "trials", trial.id), cpus, cwd)
        except Exception as exc:  # recorded like a failing training
            rec = error_record(Trial(f"s{tid}", params, {}), str(exc))
        value = rec.get(metric) if rec["status"] == "ok" else None
        tune.report({"objective": bad if value is None else value,
                     "record_json": json.dumps(rec, default=str)})

    resources = {"cpu": cpus, **{resource_name(i): 1 for i in instruments}}
    recorder = _Recorder(sdir, spec, names, progress)
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space={names[d.key]: _tune_domain(d) for d in spec.search_space},
        tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, limit),
                                    num_samples=remaining),
        run_config=tune.RunConfig(name=f"tune_{len(done):04d}",
                                  storage_path=str(sdir.path.resolve() / "tune"),
                                  failure_config=tune.FailureConfig(max_failures=1),
                                  verbose=0, callbacks=[recorder.callback()]))
    tuner.fit()
    progress.close()


def best_record(spec: SweepSpec, sdir: SweepDir) -> tuple[dict[str, Any], float] | None:
    """The finished trial with the best metric, and the metric (None: no trial ok)."""
    s = spec.search or {"metric": "test_error", "mode": "min"}
    ok = [r for r in sdir.records.values()
          if r["status"] == "ok" and r.get(s["metric"]) is not None]
    if not ok:
        return None
    pick = min if s["mode"] == "min" else max
    best = pick(ok, key=lambda r: (r[s["metric"]], r["id"]))
    return best, best[s["metric"]]


def write_best(spec: SweepSpec, sdir: SweepDir) -> tuple[dict[str, Any], float] | None:
    """Write the best trial's training config as ``DIR/best.yaml`` (``rpuhw train
    --config`` takes it; a ``device.KEY`` search points at the trial's device YAML)."""
    import yaml

    from rpuhw._io import atomic_write
    from rpuhw.sweep.trials import build

    found = best_record(spec, sdir)
    if found is None:
        return None
    rec, value = found
    trial = build(spec, rec["id"][1:], rec["params"], prefix="s")
    config = dict(trial.config)
    if trial.device is not None:
        config["backend"] = f"sim:{(sdir.trial_dir(trial.id) / 'device.yaml').resolve()}"
    metric = spec.search["metric"] if spec.search else "test_error"
    head = (f"# best of {len(sdir.records)} trials of {spec.source}: {metric} {value:.4g} "
            f"(trial {rec['id']})\n")
    atomic_write(sdir.path / BEST_YAML, head + yaml.safe_dump(config, sort_keys=False))
    return found


# ---------------------------------------------------------------------------------------
def tune_space(algorithm: str) -> dict[str, dict[str, Any]]:
    """``rpuhw tune``'s search space for ``algorithm`` (:data:`SPACES`, keys it has)."""
    from rpuhw.algorithms import algorithm_class

    cls = algorithm_class(algorithm)
    params = getattr(cls, "Params", None)
    have = {f.name for f in dataclasses.fields(params)} if params and \
        dataclasses.is_dataclass(params) else set()
    space = dict(SPACES["lr"])
    if algorithm == "mp":
        space.update(SPACES["mp"])
    if algorithm in TT_FAMILY or "fast_lr" in have:
        space.update(SPACES["tt_family"])
    if "in_chop_prob" in have:
        space.update(SPACES["chopped"])
    return {k: v for k, v in space.items()
            if not k.startswith("algorithm.") or k.partition(".")[2] in have}


def default_point(base: dict[str, Any], algorithm: str,
                  space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The algorithm's defaults (and the base's lr) on the space's keys; a range that
    does not hold its default is widened to hold it."""
    from rpuhw.algorithms import make_params
    from rpuhw.train import TrainConfig

    params = make_params(algorithm, {})
    point: dict[str, Any] = {}
    for key, dim in space.items():
        if key.startswith("algorithm."):
            value = getattr(params, key.partition(".")[2])
        else:
            value = base.get(key, getattr(TrainConfig(), key))
        if value is None:
            continue
        dim["low"], dim["high"] = min(dim["low"], value), max(dim["high"], value)
        point[key] = int(value) if dim.get("int") else float(value)
    return point


def tune_command(args, opts: RayOptions, prog: str, out: TextIO) -> int:
    """``rpuhw tune``: a search over ``--algorithm``'s hyper-parameters on ``--backend``."""
    from rpuhw.algorithms import algorithm_class
    from rpuhw.config import load_yaml

    base: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for key in ("out", "checkpoint", "progress", "threads"):
        base.pop(key, None)
    algorithm_class(args.algorithm)  # unknown: one line naming the known ones
    base.update(backend=args.backend, algorithm=args.algorithm)
    for key in ("epochs", "train_limit", "test_limit"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    base.setdefault("epochs", 1)
    base["seed"] = args.seed
    space = tune_space(args.algorithm)
    first = default_point(base, args.algorithm, space)
    data = {"base": base, "search": {"method": "optuna", "trials": args.trials,
                                     "metric": "test_error", "seed": args.seed,
                                     "space": space}}
    spec = parse_spec(data, source="rpuhw tune")
    return run_search(spec, args.out, opts, resume=args.resume, prog=prog, stdout=out,
                      first=first)
