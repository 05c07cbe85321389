"""Every Ray import of the sweep runner lives here: the Tune trainable, the param space, the
Tuner's parts (search algorithm, scheduler, reporter), joining a cluster and checking it.

A trial's Tune config is ``{"axis": {dotted.path: value}, "run": {storage, store_dir}}``; what
every trial shares (the base run config, the axes, the transfer zoo) is passed once with
``tune.with_parameters`` as the sweep context (orchestrator/trial.py `sweep_context`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

from orchestrator.devices import check_resources
from orchestrator.spec import SpecError, SweepSpec
from orchestrator.trial import execute_trial, resolve_trial, sweep_context


def tune_trainable(config: dict, context: dict) -> None:
    """The Ray Tune function trainable: resolve the trial from its axis values, continue from
    Tune's checkpoint when retried, report per epoch and at the end."""
    from ray import tune
    # Tune logs every persisted checkpoint at INFO; one per epoch per trial drowns the table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial = resolve_trial(context, config.get("axis", {}))
    if trial["search"]:  # sampled trials may coincide: the Tune index keeps their files apart
        trial["trial_id"] += "-" + tune.get_context().get_trial_id().rsplit("_", 1)[-1]
    checkpoint = tune.get_checkpoint()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)

    with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as restore:
        execute_trial(trial, storage=config["run"]["storage"],
                      store_dir=config["run"]["store_dir"], report=report, restore_dir=restore)


def _sampler(dist: dict) -> Any:
    from ray import tune
    kind, v = dist["kind"], dist["values"]
    return (tune.uniform(*v) if kind == "uniform" else
            tune.loguniform(*v) if kind == "loguniform" else
            tune.randint(v[0], v[1] + 1) if kind == "randint" else  # inclusive high
            tune.choice(v))


def param_space(spec: SweepSpec, storage: str, store_dir: str) -> dict:
    """Tune's param space: one entry per axis under ``axis`` (a grid axis of several values is
    ``tune.grid_search``; a searched field is a Tune sampler) and the ``run`` paths."""
    from ray import tune
    axes: dict[str, Any] = {}
    for axis in spec.axes:
        values = list(axis.values)
        axes[axis.path] = tune.grid_search(values) if len(values) > 1 else values[0]
    for path, dist in spec.search.get("space", {}).items():
        axes[path] = _sampler(dist)
    return {"axis": axes, "run": {"storage": storage, "store_dir": store_dir}}


def init_ray(address: str | None = None) -> bool:
    """Connect to ``address`` (or ``$RAY_ADDRESS``, which Ray sets inside a Ray job) or start a
    local Ray with every core; False if Ray was already up. User packages found on the
    driver's import path reach the workers through ``PYTHONPATH``."""
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


def shutdown() -> None:
    """Stop the Ray this process started."""
    import ray
    ray.shutdown()


def check_cluster(spec: SweepSpec) -> None:
    """Fail before any trial when one trial's request cannot be met: more than the cluster
    has in total (e.g. ``gpu: 0.25`` without GPUs) or more than any single alive node has."""
    import ray
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


def _search_alg(spec: SweepSpec, limit: int) -> Any:
    """Tune's search algorithm for ``search.mode`` (random: BasicVariantGenerator; optuna:
    OptunaSearch behind a ConcurrencyLimiter)."""
    search = spec.search
    if search["mode"] == "optuna":
        from ray.tune.search import ConcurrencyLimiter
        from ray.tune.search.optuna import OptunaSearch

        class FinalMetricOptuna(OptunaSearch):
            """Optuna scored on the trial's final metric: per-epoch reports (which carry
            training metrics only) are not intermediate values of it."""

            def on_trial_result(self, trial_id: str, result: dict) -> None:
                if self.metric in result:
                    super().on_trial_result(trial_id, result)

        # the per-epoch reports lack the final metric by design; Tune's check would refuse them
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        alg = FinalMetricOptuna(metric=search["metric"], mode=search["goal"],
                                seed=search["seed"])
        return ConcurrencyLimiter(alg, max_concurrent=limit) if limit else alg
    from ray.tune.search.basic_variant import BasicVariantGenerator
    # Tune applies max_concurrent_trials only to Searchers; the generator limits itself.
    return BasicVariantGenerator(random_state=search["seed"], max_concurrent=limit)


def tuner_parts(spec: SweepSpec) -> tuple[Any, Any, Any]:
    """(trainable with resources and the sweep context, TuneConfig, RunConfig) for ``spec``."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, context=sweep_context(spec)),
        spec.resource_request())
    search = spec.search
    kwargs: dict[str, Any] = {"reuse_actors": True, "trial_dirname_creator": _trial_dirname,
                              "max_concurrent_trials": spec.max_concurrent or None}
    if search["mode"] != "grid":
        kwargs["num_samples"] = search["num_samples"]
        kwargs["search_alg"] = _search_alg(spec, kwargs.pop("max_concurrent_trials") or 0)
        sched = search["scheduler"]
        if sched["name"] == "asha":
            epochs = max([spec.training["epochs"]]
                         + search["space"].get("training.epochs", {}).get("values", []))
            kwargs["scheduler"] = ASHAScheduler(
                metric=sched["metric"], mode=sched["goal"], max_t=epochs + 1,
                grace_period=min(sched["grace_period"], epochs),
                reduction_factor=sched["reduction_factor"])
    # One compact status table (the axes and a few metrics) instead of Tune's default dump of
    # every config key per trial; RAY_AIR_NEW_OUTPUT=1 in the environment brings that back.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Checkpointing every epoch forces frequent experiment snapshots by design (they are what
    # makes `resume` continue mid-trial); Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    columns = [a.path for a in spec.axes if len(a.values) > 1] + list(search.get("space", {}))
    reporter = tune.CLIReporter(
        parameter_columns={f"axis/{p}": p.rsplit(".", 1)[-1] for p in columns},
        metric_columns={"training_iteration": "iter", "train_loss": "train loss",
                        "whitebox_delta": "white-box Δ", "transfer_success": "transfer"},
        max_report_frequency=30)
    run_config = tune.RunConfig(
        name=spec.name, storage_path=storage_uri(spec.storage),
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1,
        progress_reporter=reporter)
    return trainable, tune.TuneConfig(**kwargs), run_config


def storage_uri(storage: str) -> str:
    return storage if "://" in storage else os.path.abspath(storage)


def fit(spec: SweepSpec, storage: str, store_dir: str, exp_dir: str, resume: bool) -> Any:
    """Run the Tuner (restored from ``exp_dir`` when resuming) and return its ResultGrid."""
    from ray import tune
    if resume and tune.Tuner.can_restore(exp_dir):
        trainable, _, _ = tuner_parts(spec)
        tuner = tune.Tuner.restore(exp_dir, trainable, resume_errored=True)
        print(f"mtlsweep: resuming {exp_dir}", file=sys.stderr)
    else:
        if resume:  # killed before Tune saved any state: nothing to keep, start over
            print(f"mtlsweep: no saved Tune state in {exp_dir}; starting the sweep",
                  file=sys.stderr)
        trainable, tune_config, run_config = tuner_parts(spec)
        tuner = tune.Tuner(trainable, param_space=param_space(spec, storage, store_dir),
                           tune_config=tune_config, run_config=run_config)
    return tuner.fit()
