"""Sweep YAML -> validated, frozen `SweepSpec`: a base run configuration + axes + search +
resources + storage.

The run configuration (what one trial is) belongs to mtl: `mtl.config.run.parse_run_config`
holds every rule about data, model, tasks, training and attacks. This module adds only what
many trials need: the axes (any config field by its dotted path, plus the legacy list spellings
``layouts``, ``adv_train: [...]``, ``training.optimizer/rho/seeds: [...]``), the search, the
transfer zoo (orchestrator/store.py), resources and storage. Every malformed input stops the run
before any work with ONE `SpecError` naming the YAML path and the allowed values: the file is
read by `mtl.config.yaml_io.load_yaml` (size, depth, alias, duplicate-key limits), the name by
the one name rule (`mtl.config.names`), storage and the model store's path by
`mtl.config.locations` (writable, or a URI scheme pyarrow opens; no network call), and the
number of trials is counted from the axes' lengths, without listing them, and capped at
``max_trials`` before any trial is checked. The format is documented key by key in
sweeps/demo.yaml.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from mtl.config.limits import DEFAULT_MAX_TRIALS, MAX_FAILURES, MAX_TRIALS
from mtl.config.locations import check_storage, check_writable_dir, local_path
from mtl.config.names import check_name
from mtl.config.paths import get_path
from mtl.config.reading import ConfigError, Node, as_bool, as_float, as_int, brief, clip, fail
from mtl.config.run import RUN_KEYS, RunConfig
from mtl.config.sections import (count_layout_values, expand_layouts, parse_tasks,
                                 task_names_of)
from mtl.config.yaml_io import load_yaml
from mtl.plugins import add_import_paths
from orchestrator.axes import Axis, check_trial_count, legacy_axes, parse_axes, validate_axes
from orchestrator.search import FINAL_METRICS, parse_search
from orchestrator.store import parse_targets

SpecError = ConfigError
"""A malformed sweep spec (mtl's ConfigError): the message starts with the YAML path."""

SWEEP_KEYS = ("name", "storage", "layouts", "axes", "transfer", "resources", "search",
              "max_concurrent", "max_failures", "max_trials", "store")
DEFAULT_STORAGE = "runs"  # where results go when neither the file nor --storage says
RAISE_CAP = (f"raise it with the top-level key max_trials: N, up to {MAX_TRIALS}, or sweep "
             "fewer values")
TOP_KEYS = SWEEP_KEYS + RUN_KEYS
__all__ = ["SpecError", "SweepSpec", "load_spec", "parse_spec", "describe", "FINAL_METRICS"]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep: ``base`` (the run-config mapping without axis values), its axes,
    ``run`` (the base with every axis at its first value, validated) and the orchestration."""

    name: str
    storage: str | None
    raw: dict = field(repr=False)       # the YAML mapping as given (what sweep.json keeps)
    base: dict = field(repr=False)
    run: RunConfig = field(repr=False)
    axes: tuple[Axis, ...]
    targets: tuple[dict, ...]           # {"id", "label", "config"}: full zoo model configs
    resources: dict                     # {"cpu", "gpu", "custom": {...}}
    search: dict                        # {"mode", ...}
    max_concurrent: int
    max_failures: int
    reuse_surrogates: bool
    store_path: str | None
    import_paths: tuple[str, ...] = ()  # where users' packages import from
    max_trials: int = DEFAULT_MAX_TRIALS

    def resource_request(self) -> dict[str, float]:
        """One trial's request in Tune's spelling (``cpu``, ``gpu``, custom names)."""
        return {"cpu": self.resources["cpu"], "gpu": self.resources["gpu"],
                **self.resources["custom"]}

    def num_grid_trials(self) -> int:
        return math.prod(len(axis.values) for axis in self.axes)

    def axis(self, path: str) -> Axis | None:
        return next((a for a in self.axes if a.path == path), None)

    def _values(self, path: str) -> tuple:
        axis = self.axis(path)
        return axis.values if axis else (get_path(self.base, path, None),)

    # -- views of the legacy axes (the analysis and older callers read these) ---------------
    @property
    def tasks(self) -> tuple[str, ...]:
        return self.run.task_names

    @property
    def layouts(self) -> tuple[str | None, ...]:
        axis = self.axis("model.layout")
        return axis.values if axis else (self.run.model["layout"],)

    @property
    def adv_train(self) -> tuple[dict | None, ...]:
        from mtl.config.training import parse_adv
        return tuple(parse_adv(v, "adv_train", self.tasks) for v in self._values("adv_train"))

    @property
    def optimizers(self) -> tuple[str, ...]:
        axis = self.axis("training.optimizer")
        return axis.values if axis else (self.run.training["optimizer"],)

    @property
    def rhos(self) -> tuple[float, ...]:
        axis = self.axis("training.rho")
        return tuple(float(v) for v in axis.values) if axis else (self.run.training["rho"],)

    @property
    def seeds(self) -> tuple[int, ...]:
        axis = self.axis("training.seed")
        return axis.values if axis else (self.run.training["seed"],)

    @property
    def dataset(self) -> dict:
        return self.run.dataset

    @property
    def training(self) -> dict:
        return self.run.training

    @property
    def sharpness(self) -> dict | None:
        return self.run.training.get("sharpness")

    @property
    def attacks(self) -> dict:
        return self.run.attacks

    @property
    def cross_task(self) -> dict | None:
        return self.run.cross_task


def load_spec(path: str | Path, *, name: str | None = None, storage: str | None = None
              ) -> SweepSpec:
    """Read and validate a sweep YAML; ``name`` defaults to the file stem, ``storage``
    (the CLI's --storage) overrides the file's ``storage``. A user package beside the file
    or in the working directory is importable by the sweep's plugins."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {str(path)!r} does not exist")
    raw = load_yaml(path)
    paths = tuple(dict.fromkeys([str(path.resolve().parent), str(Path.cwd())]))
    return parse_spec(raw if raw is not None else {}, name=name or path.stem, storage=storage,
                      import_paths=paths)


def parse_spec(raw: Mapping, *, name: str | None = None, storage: str | None = None,
               import_paths: tuple[str, ...] = ()) -> SweepSpec:
    """Validate a parsed YAML mapping into a `SweepSpec` (see module docstring); a message
    is one line of bounded length, whichever rule wrote it."""
    try:
        return _parse_spec(raw, name, storage, import_paths)
    except ConfigError as err:
        text = str(err)
        if "\n" not in text and clip(text) == text:
            raise
        raise ConfigError(clip(" ".join(text.split()))) from None


def _parse_spec(raw: Mapping, name: str | None, storage: str | None,
                import_paths: tuple[str, ...]) -> SweepSpec:
    add_import_paths(import_paths)
    top = Node(raw, "", TOP_KEYS)
    sweep_name = _name(top.get("name", name), from_file="name" not in raw)
    store_raw = storage if storage is not None else top.get("storage")
    _check_storage(store_raw, sweep_name, "storage" if storage is None else "storage (--storage)")
    store = Node(top.get("store", {}), "store", ("reuse_surrogates", "path"))
    store_path = _store_path(store.get("path"))
    max_trials = as_int(top.get("max_trials", DEFAULT_MAX_TRIALS), "max_trials", 1, MAX_TRIALS)
    tasks = task_names_of(parse_tasks(top.require("tasks")))
    layouts = (_layouts(raw["layouts"], raw.get("model"), len(tasks), max_trials)
               if "layouts" in raw else None)
    base, axes = legacy_axes(dict(raw), layouts)
    axes += parse_axes(top.get("axes", {}), base, axes)
    search = parse_search(top.get("search", {"mode": "grid"}), base, axes, tasks)
    axes = [a for a in axes if a.path not in search.get("space", {})]
    check_trial_count(axes, search, max_trials, RAISE_CAP)
    run = validate_axes(base, axes, search)
    resources = _resources(top.get("resources", {}))
    spec = SweepSpec(
        name=sweep_name, storage=store_raw, raw=dict(raw), base=base, run=run,
        axes=tuple(axes), targets=(), resources=resources, search=search,
        max_concurrent=as_int(top.get("max_concurrent", 0), "max_concurrent", 0),
        max_failures=as_int(top.get("max_failures", 2), "max_failures", 0, MAX_FAILURES),
        reuse_surrogates=as_bool(store.get("reuse_surrogates", False), "store.reuse_surrogates"),
        store_path=store_path, import_paths=tuple(import_paths), max_trials=max_trials)
    spec = dataclasses.replace(spec, targets=parse_targets(top.get("transfer"), spec))
    if search["mode"] != "grid" and search["metric"].startswith("transfer") and not spec.targets:
        fail("search.metric", f"{search['metric']!r} needs transfer targets "
             "(transfer.targets is empty)")
    if search["mode"] != "grid" and search["metric"] == "cross_task_delta" and not run.cross_task:
        fail("search.metric", "'cross_task_delta' needs cross_task: true")
    return spec


def _name(value: Any, from_file: bool) -> str:
    """The sweep's name by the one name rule (it names directories and files)."""
    try:
        return check_name(value, "name")
    except ConfigError as err:
        hint = " (the sweep file's name; set name: or --name)" if from_file else ""
        raise ConfigError(f"{err}{hint}") from None


def _check_storage(value: Any, sweep_name: str, where: str) -> None:
    """``storage`` (or the default) is a writable directory or a URI pyarrow opens, and
    ``<storage>/<name>`` is not a file."""
    value = DEFAULT_STORAGE if value is None else value
    check_storage(value, where)
    local = local_path(value)
    if local is not None and (Path(local) / sweep_name).is_file():
        fail("name", f"{brief(str(Path(local) / sweep_name))} is a file, so the sweep's "
             f"directory cannot be made there; allowed: a name not taken by a file in {where}")


def _store_path(value: Any) -> str | None:
    """``store.path``: a local (or shared-filesystem) directory that is or can be written."""
    if value is None:
        return None
    if isinstance(value, str) and "://" in value:
        fail("store.path", f"expected a local (or shared-filesystem) directory, got "
             f"{brief(value)}; the model store needs file locks, which object stores lack")
    return check_writable_dir(value, "store.path", "model store directory")


def _layouts(raw: Any, model: Any, num_tasks: int, max_trials: int) -> list:
    """The legacy ``layouts`` list, counted before it is listed (``all`` grows fast)."""
    count, exact = count_layout_values(raw, model, num_tasks, max_trials)
    if count > max_trials:
        fail("layouts", f"{'' if exact else 'at least '}{count} layouts of {num_tasks} tasks, "
             f"so more than max_trials = {max_trials} trials; allowed: at most {max_trials} "
             f"({RAISE_CAP})")
    return expand_layouts(raw, model, num_tasks)


def _resources(raw: Any) -> dict:
    node = Node(raw, "resources", ("cpu", "gpu", "custom"))
    cpu = as_float(node.get("cpu", 1), node.at("cpu"), 0.0, lo_open=True)
    gpu = as_float(node.get("gpu", 0), node.at("gpu"), 0.0)
    if gpu > 1 and not gpu.is_integer():
        fail(node.at("gpu"), f"{gpu:g}: a share of one GPU must be <= 1; above 1, whole GPUs")
    custom = node.get("custom", {}) or {}
    if not isinstance(custom, dict):
        fail(node.at("custom"), f"expected a mapping resource -> amount, got {brief(custom)}")
    for key, amount in custom.items():
        if not isinstance(key, str) or key.upper() in ("CPU", "GPU"):
            fail(f"resources.custom.{key}", "use resources.cpu / resources.gpu for CPU and GPU")
        as_float(amount, f"resources.custom.{key}", 0.0, lo_open=True)
    return {"cpu": cpu, "gpu": gpu, "custom": {k: float(v) for k, v in custom.items()}}


def describe(spec: SweepSpec) -> str:
    """A one-line summary printed before a sweep starts."""
    n = spec.num_grid_trials()
    s = spec.search
    mode = (f"grid of {n} trials" if s["mode"] == "grid" else
            f"{s['mode']} search: {s['num_samples']} samples x {n} grid points, "
            f"{s['goal']} {s['metric']}")
    axes = " x ".join(f"{len(a.values)} {a.path}" for a in spec.axes) or "no axes"
    return (f"sweep {spec.name!r}: {mode} ({axes}); {len(spec.attacks['specs'])} attacks; "
            f"{len(spec.targets)} transfer targets; per trial "
            f"{json.dumps(spec.resource_request())}")
