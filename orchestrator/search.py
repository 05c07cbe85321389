"""The ``search`` section: how Ray Tune chooses trials and prunes them.

``mode: grid`` (default) runs every combination of the axes. ``mode: random`` samples
``num_samples`` points of ``space`` (per grid point) with Tune's BasicVariantGenerator;
``mode: optuna`` lets Optuna's TPE (through ``ray.tune.search.optuna``) choose them. A space
entry is any run-config field by dotted path with one of Tune's samplers
(``{training.lr: {loguniform: [1e-4, 1e-1]}}``); the legacy names ``rho`` and ``epochs`` mean
``training.rho`` and ``training.epochs``. ``scheduler: {name: asha, metric, goal}`` prunes on
any metric a trial reports every epoch: ``train_loss``, ``train_loss/<task>`` or
``val/<task>/<metric>``. The final trial metrics a search scores are `FINAL_METRICS`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mtl.config.limits import MAX_CHOICES
from mtl.config.paths import get_path
from mtl.config.reading import Node, as_choice, as_float, as_int, as_list, brief, fail, show
from mtl.config.run import RUN_KEYS
from mtl.tasks import get_task
from mtl.train.config import TrainConfig

SEARCH_MODES = ("grid", "random", "optuna")
SCHEDULERS = ("none", "asha")
# Final metrics a trial reports (means over its kept epochs; see orchestrator/trial.py).
FINAL_METRICS = ("transfer_success", "transfer_delta", "whitebox_delta", "cross_task_delta",
                 "train_loss")
LEGACY_PARAMS = {"rho": ("training.rho", ("uniform", "loguniform", "choice")),
                 "epochs": ("training.epochs", ("randint", "choice"))}
INT_SAMPLERS = ("randint", "choice")
FLOAT_SAMPLERS = ("uniform", "loguniform", "choice")
ALL_SAMPLERS = ("uniform", "loguniform", "randint", "choice")


def _field_default(path: str) -> Any:
    """The default of a TrainConfig field (``training.<name>``), else None."""
    parts = path.split(".")
    if len(parts) == 2 and parts[0] == "training":
        for f in dataclasses.fields(TrainConfig):
            if f.name == parts[1] and f.default is not dataclasses.MISSING:
                return f.default
    return None


def _samplers(path: str, base: Mapping) -> tuple[str, ...]:
    """Tune samplers that fit the field: by the type of its value in the base config."""
    value = get_path(base, path, None)
    value = _field_default(path) if value is None else value
    if isinstance(value, bool) or isinstance(value, str):
        return ("choice",)
    if isinstance(value, int):
        return INT_SAMPLERS
    if isinstance(value, float):
        return FLOAT_SAMPLERS
    return ALL_SAMPLERS


def _space(raw: Any, path: str, base: Mapping, grid_paths: Sequence[str]) -> dict:
    if not isinstance(raw, Mapping) or not raw:
        fail(path, "expected a mapping dotted.path -> {sampler: args}, e.g. "
             "{training.lr: {loguniform: [0.0001, 0.1]}}")
    space = {}
    for name, dist_raw in raw.items():
        where = f"{path}.{brief(name, plain=True)}"
        if name in LEGACY_PARAMS:
            field, samplers = LEGACY_PARAMS[name]
        elif isinstance(name, str) and "." in name and name.split(".")[0] in RUN_KEYS:
            field, samplers = name, _samplers(name, base)
        else:
            fail(where, f"not a config field; give a dotted path starting with one of "
                 f"{show(RUN_KEYS)} (e.g. training.lr), or the legacy rho / epochs")
        if field in grid_paths:
            fail(where, f"{field} is also a grid axis; sweep it one way")
        dist = Node(dist_raw, where, samplers)
        if len(dist.value) != 1:
            fail(where, f"expected exactly one sampler; allowed: {show(samplers)}")
        (kind, args), = dist.value.items()
        values = as_list(args, dist.at(kind))
        if kind != "choice":
            check = as_int if kind == "randint" else as_float
            values = [check(v, f"{dist.at(kind)}[{i}]") for i, v in enumerate(values)]
            if len(values) != 2 or values[0] > values[1]:
                fail(dist.at(kind), f"expected [low, high] with low <= high, got {brief(args)}")
            if kind == "loguniform" and values[0] <= 0:
                fail(dist.at(kind), f"loguniform needs low > 0, got {brief(values[0])}")
        elif len(values) > MAX_CHOICES:
            fail(dist.at(kind), f"{len(values)} values; allowed: at most {MAX_CHOICES} (each "
                 "is checked like an axis value)")
        space[field] = {"kind": kind, "values": values}
    return space


def _scheduler(raw: Any, path: str, tasks: Sequence[str]) -> dict:
    node = Node(raw, path, ("name", "metric", "goal", "grace_period", "reduction_factor"))
    out = {"name": as_choice(node.get("name", "none"), node.at("name"), SCHEDULERS,
                             "scheduler")}
    if out["name"] == "asha":
        metrics = ("train_loss", *(f"train_loss/{t}" for t in tasks),
                   *(f"val/{t}/{m}" for t in tasks for m in get_task(t).higher_is_better))
        out.update(
            metric=as_choice(node.get("metric", "train_loss"), node.at("metric"), metrics,
                             "per-epoch metric"),
            goal=as_choice(node.get("goal", "min"), node.at("goal"), ("min", "max"), "goal"),
            grace_period=as_int(node.get("grace_period", 1), node.at("grace_period"), 1),
            reduction_factor=as_float(node.get("reduction_factor", 2),
                                      node.at("reduction_factor"), 1.0, lo_open=True))
    return out


def parse_search(raw: Any, base: Mapping, axes: Sequence, tasks: Sequence[str]) -> dict:
    """The ``search`` section (see module docstring); ``tasks`` name the per-epoch
    validation metrics ASHA may prune on."""
    node = Node(raw, "search", ("mode", "num_samples", "metric", "goal", "space", "scheduler",
                                 "seed"))
    mode = as_choice(node.get("mode", "grid"), node.at("mode"), SEARCH_MODES, "search mode")
    if mode == "grid":
        extra = sorted(set(node.value) - {"mode"})
        if extra:
            fail(node.at(extra[0]), "only used with search.mode: random or optuna")
        return {"mode": "grid"}
    # a searched field replaces a legacy list of the same field; an `axes:` entry is an error
    grid = [a.path for a in axes if a.source.startswith("axes.")]
    space = _space(node.require("space"), node.at("space"), base, grid)
    if mode == "optuna":
        import importlib.util
        if importlib.util.find_spec("optuna") is None:
            fail(node.at("mode"), "optuna needs the optuna package: pip install "
                 "'mtlsweep[search]' (or optuna); allowed without it: grid, random")
        many = [a.source for a in axes if len(a.values) > 1 and a.path not in space]
        if many:
            fail(node.at("mode"), f"optuna chooses every trial itself and cannot also run "
                 f"the grid of {', '.join(many)}; move them into search.space as "
                 "{choice: [...]} or use mode: random")
    return {"mode": mode,
            "num_samples": as_int(node.get("num_samples", 4), node.at("num_samples"), 1,
                                  1_000_000),
            "metric": as_choice(node.require("metric"), node.at("metric"), FINAL_METRICS,
                                "metric"),
            "goal": as_choice(node.get("goal", "max"), node.at("goal"), ("min", "max"), "goal"),
            "space": space,
            "scheduler": _scheduler(node.get("scheduler", {"name": "none"}), node.at("scheduler"),
                                    tasks),
            "seed": as_int(node.get("seed", 0), node.at("seed"), 0, 2**32 - 1)}
