"""Every Ray import of the sweep runner lives here: the Tune trainable, the param space, the
Tuner's parts (search algorithm, scheduler, reporter), joining a cluster and checking it.

A grid trial's Tune config is ``{"point": {trial_id, axis: {dotted.path: value}, show},
"run": {storage, store_dir, exp_dir}}`` (a search trial's has ``axis`` instead of ``point``);
what every trial shares (the base run config, the axes, the transfer zoo) is passed once with
``tune.with_parameters`` as the sweep context (orchestrator/trial.py `sweep_context`). Tune is
the scheduler only: trials keep their state and status in the sweep record.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import traceback
from typing import Any

from mtl.train import NonFiniteLossError
from orchestrator import record, trial_state
from orchestrator.devices import check_resources
from orchestrator.exits import StopRequest
from orchestrator.spec import SpecError, SweepSpec
from orchestrator.trial import execute_trial, resolve_trial, sweep_context


def tune_trainable(config: dict, context: dict) -> None:
    """The Ray Tune function trainable: resolve the trial, record it, continue from its saved
    state when one verifies (a retry or a resume), report per epoch and at the end, and leave
    its status in the sweep record (orchestrator/record.py)."""
    from ray import tune
    run = config["run"]
    exp_dir = run["exp_dir"]
    point = config.get("point")
    values = point["axis"] if point else config.get("axis", {})
    trial = resolve_trial(context, values)
    trial["trial_id"] = tune.get_context().get_trial_name()  # = trial_name() on the driver
    trial_id = trial["trial_id"]
    record.write_trial_info(exp_dir, trial_id, {"trial_id": trial_id, "axis": values,
                                                "run": trial["run"].to_dict()})

    def keep_state(local_dir: str) -> None:
        trial_state.save_state(exp_dir, trial_id, local_dir)

    with tempfile.TemporaryDirectory(prefix="mtlsweep-restore-") as restore:
        found = trial_state.load_state(exp_dir, trial_id, restore)
        try:
            execute_trial(trial, storage=run["storage"], store_dir=run["store_dir"],
                          report=tune.report, checkpoint=keep_state,
                          restore_dir=restore if found else None)
        except NonFiniteLossError as err:  # deterministic: a retry would diverge again
            record.set_status(exp_dir, trial_id, "failed", str(err))
            tune.report({"failed": 1})
            return
        except Exception as err:
            record.set_status(exp_dir, trial_id, "failed", f"{type(err).__name__}: {err}",
                              traceback.format_exc())
            raise
    record.set_status(exp_dir, trial_id, "finished")
    record.delete_dir(trial_state.state_dir(exp_dir, trial_id))  # the rows are the record


def trial_name(context: dict, config: dict, tune_trial_id: str) -> str:
    """Tune's name (and directory) of a trial = our ``trial_id``: a grid point carries it; a
    sampled trial gets the hash of its values plus Tune's id (sampled values may coincide)."""
    point = config.get("point")
    if point:
        return point["trial_id"]
    return f"{resolve_trial(context, config.get('axis', {}))['trial_id']}-{tune_trial_id}"


def _sampler(dist: dict) -> Any:
    from ray import tune
    kind, v = dist["kind"], dist["values"]
    return (tune.uniform(*v) if kind == "uniform" else
            tune.loguniform(*v) if kind == "loguniform" else
            tune.randint(v[0], v[1] + 1) if kind == "randint" else  # inclusive high
            tune.choice(v))


def param_space(spec: SweepSpec, run: dict, points: list[dict] | None) -> dict:
    """Tune's param space. A grid sweep: ``point``, a ``tune.grid_search`` over the trials
    still to run (each ``{"trial_id", "axis": {path: value}, "show": {column: text}}``); a
    search: one entry per axis under ``axis`` (a grid axis of several values is
    ``tune.grid_search``, a searched field a Tune sampler). ``run``: where results go."""
    from ray import tune
    if points is not None:
        return {"point": tune.grid_search(points), "run": run}
    axes: dict[str, Any] = {}
    for axis in spec.axes:
        values = list(axis.values)
        axes[axis.path] = tune.grid_search(values) if len(values) > 1 else values[0]
    for path, dist in spec.search.get("space", {}).items():
        axes[path] = _sampler(dist)
    return {"axis": axes, "run": run}


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


def tuner_parts(spec: SweepSpec, tune_dir: str, num_samples: int | None = None,
                seed_offset: int = 0, stop: StopRequest | None = None
                ) -> tuple[Any, Any, Any]:
    """(trainable with resources and the sweep context, TuneConfig, RunConfig) for ``spec``;
    Tune keeps its own files in ``tune_dir`` (scratch: the sweep's record is elsewhere).
    ``stop``: once set, Tune stops every trial and returns (Ctrl-C, orchestrator/sweep.py).
    ``num_samples``/``seed_offset``: what a resumed search still has to sample."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    context = sweep_context(spec)
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, context=context), spec.resource_request())

    def name(trial: Any) -> str:
        return trial_name(context, trial.config, trial.trial_id)

    search = dict(spec.search, seed=spec.search.get("seed", 0) + seed_offset)
    kwargs: dict[str, Any] = {"reuse_actors": True, "trial_name_creator": name,
                              "trial_dirname_creator": name,
                              "max_concurrent_trials": spec.max_concurrent or None}
    if search["mode"] != "grid":
        kwargs["num_samples"] = search["num_samples"] if num_samples is None else num_samples
        kwargs["search_alg"] = _search_alg(dataclasses.replace(spec, search=search),
                                           kwargs.pop("max_concurrent_trials") or 0)
        sched = search["scheduler"]
        if sched["name"] == "asha":
            epochs = max([spec.training["epochs"]]
                         + search["space"].get("training.epochs", {}).get("values", []))
            kwargs["scheduler"] = ASHAScheduler(
                metric=sched["metric"], mode=sched["goal"], max_t=epochs + 1,
                grace_period=min(sched["grace_period"], epochs),
                reduction_factor=sched["reduction_factor"])
    # One compact status table (readable axis values and a few metrics) instead of Tune's
    # default dump of every config key per trial; RAY_AIR_NEW_OUTPUT=1 brings that back.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Ctrl-C is the sweep's to handle (a Stopper ends the run; the record keeps every finished
    # epoch); Tune's own handler would end fit() quietly and point at Tuner.restore.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    if search["mode"] == "grid":
        columns = {f"point/show/{p}": p.rsplit(".", 1)[-1] for p in show_columns(spec)}
    else:
        paths = [a.path for a in spec.axes if len(a.values) > 1] + list(search.get("space", {}))
        columns = {f"axis/{p}": p.rsplit(".", 1)[-1] for p in paths}
    reporter = tune.CLIReporter(
        parameter_columns=columns,
        metric_columns={"training_iteration": "iter", "train_loss": "train loss",
                        "whitebox_delta": "white-box Δ", "transfer_success": "transfer"},
        max_report_frequency=30, max_column_length=32)
    run_config = tune.RunConfig(
        name="tune", storage_path=tune_dir,
        failure_config=tune.FailureConfig(max_failures=spec.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1,
        stop=_stopper(stop) if stop is not None else None,
        progress_reporter=reporter)
    return trainable, tune.TuneConfig(**kwargs), run_config


def show_columns(spec: SweepSpec) -> list[str]:
    """The progress table's parameter columns of a grid: the paths of the axes that vary."""
    return [a.path for a in spec.axes if len(a.values) > 1]


def storage_uri(storage: str) -> str:
    return storage if "://" in storage else os.path.abspath(storage)


class OneLineTrialErrors(logging.Filter):
    """Tune logs each failed trial attempt with its whole traceback; the console gets one line
    (the reason) and the traceback is kept in the trial's ``status.json``."""

    def filter(self, entry: logging.LogRecord) -> bool:
        if entry.exc_info and entry.getMessage().startswith("Trial task failed"):
            err = entry.exc_info[1]
            cause = getattr(err, "cause", None) or err
            first = (str(cause).strip().splitlines() or [""])[0][:300]
            entry.msg = (f"{entry.getMessage()}: {type(cause).__name__}: {first} (traceback "
                         "in the trial's status.json)")
            entry.args, entry.exc_info, entry.exc_text = (), None, None
        return True


_TRIAL_ERRORS = OneLineTrialErrors()


def _stopper(request: StopRequest) -> Any:
    """A Tune Stopper that ends the whole run once ``request`` is set."""
    from ray.tune.stopper import Stopper

    class StopWhenSet(Stopper):
        def __call__(self, trial_id: str, result: dict) -> bool:
            return request.is_set()

        def stop_all(self) -> bool:
            return request.is_set()

    return StopWhenSet()


def fit(spec: SweepSpec, run: dict, points: list[dict] | None, num_samples: int | None = None,
        seed_offset: int = 0, stop: StopRequest | None = None) -> Any:
    """Run a fresh Tuner over ``points`` (a grid's remaining trials) or ``num_samples``
    samples of a search, and return its ResultGrid. Tune's state goes to a temporary
    directory that is removed afterwards: the sweep's record is mtlsweep's own."""
    from ray import tune
    tune_dir = tempfile.mkdtemp(prefix="mtlsweep-tune-")
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(_TRIAL_ERRORS)
    try:
        trainable, tune_config, run_config = tuner_parts(spec, tune_dir, num_samples,
                                                         seed_offset, stop)
        tuner = tune.Tuner(trainable, param_space=param_space(spec, run, points),
                           tune_config=tune_config, run_config=run_config)
        return tuner.fit()
    finally:
        shutil.rmtree(tune_dir, ignore_errors=True)
