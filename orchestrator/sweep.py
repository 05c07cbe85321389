"""Run, resume and describe a sweep with Ray Tune.

`run_sweep` validates the spec against the live cluster (before any trial: a GPU request on a
GPU-less cluster would otherwise stay PENDING forever), then runs a `Tuner` over
`param_space(spec)` with ``tune.with_resources`` (fractional CPU/GPU), ``reuse_actors``,
``max_concurrent_trials`` and ``FailureConfig(max_failures)``. The experiment directory is
``<storage>/<sweep>/``: Tune's own state plus ``sweep.json`` (the validated spec, so `resume`
needs only the directory) and ``results/`` (the parquet record; Tune's result.json is not).
`resume_sweep` restores with ``Tuner.restore(..., resume_errored=True)``: finished trials are
not rerun, interrupted ones continue from their last epoch checkpoint.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.spec import FINAL_METRICS, SweepSpec
from orchestrator.yamlpath import Node, SpecError, as_choice, as_float, as_int, as_list, fail, show
from orchestrator.store import filesystem, model_store_dir

SPEC_FILE = "sweep.json"
SEARCH_MODES = ("grid", "random")
SEARCH_PARAMS = {"rho": ("uniform", "loguniform", "choice"), "epochs": ("randint", "choice")}
SCHEDULERS = ("none", "asha")


def parse_search(raw: Any, epochs: int) -> dict:
    """The `search` section: `grid` (default), or `random` sampling of rho / epochs with
    Tune's BasicVariantGenerator (optionally ASHA), scored by a final trial metric."""
    node = Node(raw, "search", ("mode", "num_samples", "metric", "goal", "space", "scheduler",
                                 "seed"))
    mode = as_choice(node.get("mode", "grid"), node.at("mode"), SEARCH_MODES, "search mode")
    if mode == "grid":
        extra = sorted(set(node.value) - {"mode"})
        if extra:
            fail(node.at(extra[0]), "only used with search.mode: random")
        return {"mode": "grid"}
    space_node = Node(node.require("space"), node.at("space"), tuple(SEARCH_PARAMS))
    if not space_node.value:
        fail(node.at("space"), f"expected at least one of {show(SEARCH_PARAMS)}")
    space = {}
    for param, dist_raw in space_node.value.items():
        path = space_node.at(param)
        dist = Node(dist_raw, path, SEARCH_PARAMS[param])
        if len(dist.value) != 1:
            fail(path, f"expected exactly one distribution; allowed: "
                 f"{show(SEARCH_PARAMS[param])}")
        (kind, args), = dist.value.items()
        args = as_list(args, dist.at(kind))
        lo = 1 if param == "epochs" else 0.0
        check = ((lambda v, p: as_int(v, p, lo, 10_000)) if param == "epochs"
                 else (lambda v, p: as_float(v, p, lo, lo_open=(kind == "loguniform"))))
        values = [check(v, f"{dist.at(kind)}[{i}]") for i, v in enumerate(args)]
        if kind != "choice" and (len(values) != 2 or values[0] > values[1]):
            fail(dist.at(kind), f"expected [low, high] with low <= high, got {args!r}")
        space[param] = {"kind": kind, "values": values}
    sched_node = Node(node.get("scheduler", {"name": "none"}), node.at("scheduler"),
                       ("name", "metric", "goal", "grace_period", "reduction_factor"))
    scheduler = {"name": as_choice(sched_node.get("name", "none"), sched_node.at("name"),
                                   SCHEDULERS, "scheduler")}
    if scheduler["name"] == "asha":
        scheduler.update(
            metric=as_choice(sched_node.get("metric", "train_loss"), sched_node.at("metric"),
                             ("train_loss",), "per-epoch metric"),
            goal=as_choice(sched_node.get("goal", "min"), sched_node.at("goal"), ("min", "max"),
                           "goal"),
            grace_period=as_int(sched_node.get("grace_period", 1), sched_node.at("grace_period"),
                                1, epochs),
            reduction_factor=as_float(sched_node.get("reduction_factor", 2),
                                      sched_node.at("reduction_factor"), 1.0, lo_open=True))
    return {"mode": mode,
            "num_samples": as_int(node.get("num_samples", 4), node.at("num_samples"), 1),
            "metric": as_choice(node.require("metric"), node.at("metric"), FINAL_METRICS,
                                "metric"),
            "goal": as_choice(node.get("goal", "max"), node.at("goal"), ("min", "max"), "goal"),
            "space": space, "scheduler": scheduler,
            "seed": as_int(node.get("seed", 0), node.at("seed"), 0)}


@dataclass
class SweepOutcome:
    """What a finished (or resumed) sweep left behind."""

    experiment_dir: str
    results_dir: str
    trials: int
    errored: int
    best: dict[str, Any] | None = None  # search sweeps: the best trial's config and metric


def param_space(spec: SweepSpec, storage: str, store_dir: str) -> dict:
    """Tune's param space: ``base`` (what no axis changes), one grid axis per sweep axis (a
    search sweep's searched parameters become Tune distributions) and the ``run`` paths."""
    from ray import tune
    from orchestrator.trial import sweep_base
    space: dict[str, Any] = {"base": sweep_base(spec)}
    axes = {"layout": spec.layouts, "adv": spec.adv_train, "optimizer": spec.optimizers,
            "rho": spec.rhos, "seed": spec.seeds}
    for axis, values in axes.items():
        space[axis] = tune.grid_search(list(values))
    space["epochs"] = spec.training["epochs"]
    for param, dist in spec.search.get("space", {}).items():
        kind, v = dist["kind"], dist["values"]
        space[param] = (tune.uniform(*v) if kind == "uniform" else
                        tune.loguniform(*v) if kind == "loguniform" else
                        tune.randint(v[0], v[1] + 1) if kind == "randint" else  # inclusive
                        tune.choice(v))
    space["run"] = {"storage": storage, "store_dir": store_dir}
    return space


def init_ray(address: str | None = None) -> bool:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, which Ray sets inside a Ray job) or start a
    local Ray with every core; False if Ray was already up."""
    import ray
    if ray.is_initialized():
        return False
    # Joining an existing cluster forbids num_cpus, so a driver run by `ray job submit` without
    # --address must connect rather than start a local instance.
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=True)
    return True


def check_cluster(spec: SweepSpec) -> None:
    """Fail before any trial when one trial's request cannot be met: more than the cluster
    has in total (e.g. ``gpu: 0.25`` without GPUs) or more than any single alive node has."""
    import ray
    from orchestrator.devices import check_resources
    request = spec.resource_request()
    try:
        check_resources(request, ray.cluster_resources())
    except ValueError as err:
        raise SpecError(f"resources.{err}") from None
    need = {{"cpu": "CPU", "gpu": "GPU"}.get(k, k): v for k, v in request.items() if v > 0}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if nodes and not any(all(n.get(k, 0.0) + 1e-9 >= v for k, v in need.items())
                         for n in nodes):
        have = "; ".join(", ".join(f"{k}={n.get(k, 0):g}" for k in need) for n in nodes)
        raise SpecError(f"resources: one trial needs {need} on a single node, but no node has "
                        f"that (alive nodes: {have})")


def _trial_dirname(trial: Any) -> str:
    return f"trial-{trial.trial_id}"


def _tuner_parts(spec: SweepSpec) -> tuple[Any, Any, Any]:
    """(trainable with resources, TuneConfig, RunConfig) for ``spec``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from orchestrator.trial import tune_trainable
    trainable = tune.with_resources(tune_trainable, spec.resource_request())
    search = spec.search
    kwargs: dict[str, Any] = {"reuse_actors": True, "trial_dirname_creator": _trial_dirname,
                              "max_concurrent_trials": spec.max_concurrent or None}
    if search["mode"] == "random":
        kwargs["num_samples"] = search["num_samples"]
        # Tune applies max_concurrent_trials only to Searchers; the generator limits itself.
        kwargs["search_alg"] = BasicVariantGenerator(
            random_state=search["seed"], max_concurrent=kwargs.pop("max_concurrent_trials") or 0)
        sched = search["scheduler"]
        if sched["name"] == "asha":
            epochs = max([spec.training["epochs"]]
                         + search["space"].get("epochs", {}).get("values", []))
            kwargs["scheduler"] = ASHAScheduler(
                metric=sched["metric"], mode=sched["goal"], max_t=epochs + 1,
                grace_period=sched["grace_period"], reduction_factor=sched["reduction_factor"])
    # One compact status table (the axes and a few metrics) instead of Tune's default dump of
    # every config key per trial; RAY_AIR_NEW_OUTPUT=1 in the environment brings that back.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch forces frequent experiment snapshots by design (they are what
    # makes `resume` continue mid-trial); Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    reporter = tune.CLIReporter(
        parameter_columns={"layout": "layout", "adv/objective": "AT", "rho": "rho",
                           "optimizer": "opt", "seed": "seed", "epochs": "epochs"},
        metric_columns={"training_iteration": "iter", "train_loss": "train loss",
                        "whitebox_delta": "white-box Δ", "transfer_success": "transfer"},
        max_report_frequency=30)
    run_config = tune.RunConfig(
        name=spec.name, storage_path=_storage_uri(spec.storage),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1,
        progress_reporter=reporter)
    return trainable, tune.TuneConfig(**kwargs), run_config


def _storage_uri(storage: str) -> str:
    return storage if "://" in storage else os.path.abspath(storage)


def _experiment_dir(storage: str, name: str) -> str:
    return f"{_storage_uri(storage).rstrip('/')}/{name}"


def run_sweep(spec: SweepSpec, *, storage: str | None = None, address: str | None = None,
              resume: bool = False) -> SweepOutcome:
    """Run ``spec`` to the end (``resume``: continue an interrupted run of it instead)."""
    from ray import tune
    # Absolute before it reaches a trial: Ray runs each trial in its own working directory,
    # where a relative path would silently scatter the results.
    storage = _storage_uri(storage or spec.storage or "runs")
    spec = dataclasses.replace(spec, storage=storage)
    needs_store = bool(spec.targets) or spec.reuse_surrogates
    store_dir = model_store_dir(storage, spec.store_path) if needs_store else ""
    started = init_ray(address)
    try:
        check_cluster(spec)
        exp_dir = _experiment_dir(storage, spec.name)
        if resume and tune.Tuner.can_restore(exp_dir):
            trainable, _, _ = _tuner_parts(spec)
            tuner = tune.Tuner.restore(exp_dir, trainable, resume_errored=True)
            print(f"mtlsweep: resuming {exp_dir}", file=sys.stderr)
        else:
            if resume:  # killed before Tune saved any state: nothing to keep, start over
                print(f"mtlsweep: no saved Tune state in {exp_dir}; starting the sweep",
                      file=sys.stderr)
            save_spec(spec, exp_dir)
            trainable, tune_config, run_config = _tuner_parts(spec)
            tuner = tune.Tuner(trainable, param_space=param_space(spec, storage, store_dir),
                               tune_config=tune_config, run_config=run_config)
        grid = tuner.fit()
    finally:
        if started:
            import ray
            ray.shutdown()
    return _outcome(spec, exp_dir, grid)


def resume_sweep(experiment_dir: str, *, address: str | None = None) -> SweepOutcome:
    """Resume the sweep whose experiment directory (``<storage>/<sweep>``) is given."""
    spec = load_saved_spec(experiment_dir)
    storage = _parent(experiment_dir)
    return run_sweep(spec, storage=storage, address=address, resume=True)


def _parent(path: str) -> str:
    path = path.rstrip("/")
    return path.rsplit("/", 1)[0] if "://" in path else str(Path(path).resolve().parent)


def save_spec(spec: SweepSpec, exp_dir: str) -> None:
    """Keep the validated spec with the experiment, so `resume` needs only the directory."""
    fs, root = filesystem(exp_dir)
    fs.create_dir(root, recursive=True)
    with fs.open_output_stream(f"{root.rstrip('/')}/{SPEC_FILE}") as out:
        out.write(json.dumps(dataclasses.asdict(spec), indent=2, sort_keys=True).encode())


def load_saved_spec(experiment_dir: str) -> SweepSpec:
    """The spec a sweep was started with (``<experiment_dir>/sweep.json``)."""
    fs, root = filesystem(experiment_dir)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{SPEC_FILE}") as src:
            data = json.loads(src.read().decode())
    except FileNotFoundError:
        raise FileNotFoundError(f"{experiment_dir!r} is not a sweep directory (no {SPEC_FILE}); "
                                "give <storage>/<sweep> of a sweep started by `mtlsweep run`"
                                ) from None
    fields = {f.name for f in dataclasses.fields(SweepSpec)}
    tuples = {f.name for f in dataclasses.fields(SweepSpec) if "tuple" in str(f.type)}
    return SweepSpec(**{k: tuple(v) if k in tuples else v for k, v in data.items()
                        if k in fields})


def _outcome(spec: SweepSpec, exp_dir: str, grid: Any) -> SweepOutcome:
    errored = [r for r in grid if r.error is not None]
    for result in errored:
        print(f"mtlsweep: trial failed after {spec.max_failures} retries: {result.error}",
              file=sys.stderr)
    best = None
    if spec.search["mode"] != "grid":
        metric, goal = spec.search["metric"], spec.search["goal"]
        scored = [r for r in grid if r.metrics and r.metrics.get(metric) is not None]
        if scored:
            pick = (max if goal == "max" else min)(scored, key=lambda r: r.metrics[metric])
            best = {"metric": metric, "value": pick.metrics[metric],
                    "rho": pick.config.get("rho"), "epochs": pick.config.get("epochs"),
                    "layout": pick.config.get("layout"), "seed": pick.config.get("seed")}
    return SweepOutcome(experiment_dir=exp_dir, results_dir=f"{exp_dir}/results",
                        trials=len(grid), errored=len(errored), best=best)
