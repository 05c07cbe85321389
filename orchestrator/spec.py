"""Sweep YAML -> validated, frozen `SweepSpec`.

A sweep is the cartesian grid of its axes (layouts x adversarial training x optimiser x rho x
seed), or a Tune search over rho / epochs. Every malformed input stops the run before any work
with ONE `SpecError` (a ValueError) naming the YAML path and the allowed values, e.g.
``attacks.objectives[2]: unknown objective 'dgbaa'; allowed: ...``. The format is documented
key by key in sweeps/demo.yaml. Sections parsed next to the code that uses them: `search`
(orchestrator.sweep.parse_search) and `transfer` (orchestrator.store.parse_targets); the
checks against the live cluster are orchestrator.sweep.check_cluster, run after ``ray.init``
and before any trial. The typed readers (`Node`, `as_int`, ...) are in orchestrator/yamlpath.py.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from mtl.models import Layout, enumerate_layouts
from mtl.tasks import TASK_NAMES
from mtl.data import DATASETS
from orchestrator.yamlpath import (Node, SpecError, as_bool, as_choice, as_float, as_int,
                                   as_list, check_unique, fail)

NUM_BLOCKS = 5
OPTIMIZERS = ("sgd", "adam")
METHODS = ("fgsm", "pgd", "ifgsm", "mifgsm", "apgd")
OBJECTIVES = ("single", "single:<task>", "total", "signsum", "dgba", "minmax")
ADV_METHODS = ("fgsm", "pgd")
ADV_MIX = ("alternate", "weighted")
# Final metrics a trial reports (means over its kept epochs; see orchestrator/trial.py).
FINAL_METRICS = ("transfer_success", "transfer_delta", "whitebox_delta", "cross_task_delta",
                 "train_loss")


# --- the frozen spec ------------------------------------------------------------------------------
@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep. Plain, JSON-able values only (tuples, dicts of scalars)."""

    name: str
    storage: str | None
    dataset: dict
    tasks: tuple[str, ...]
    width: int
    layouts: tuple[str, ...]            # canonical Layout strings
    training: dict                      # TrainConfig fields shared by every trial
    optimizers: tuple[str, ...]
    rhos: tuple[float, ...]
    seeds: tuple[int, ...]
    adv_train: tuple[dict | None, ...]  # None = standard training
    sharpness: dict | None
    attacks: dict                       # {"specs": [...], "eval_samples", "batch_size"}
    cross_task: dict | None             # {"method", "eps", "steps"} or None
    targets: tuple[dict, ...]           # {"id", "label", "config"}: full zoo model configs
    resources: dict                     # {"cpu", "gpu", "custom": {...}}
    search: dict                        # {"mode", ...}
    max_concurrent: int
    max_failures: int
    reuse_surrogates: bool
    store_path: str | None

    def resource_request(self) -> dict[str, float]:
        """One trial's request in Tune's spelling (``cpu``, ``gpu``, custom names)."""
        return {"cpu": self.resources["cpu"], "gpu": self.resources["gpu"],
                **self.resources["custom"]}

    def num_grid_trials(self) -> int:
        return (len(self.layouts) * len(self.adv_train) * len(self.optimizers) * len(self.rhos)
                * len(self.seeds))


def load_spec(path: str | Path, *, name: str | None = None, storage: str | None = None
              ) -> SweepSpec:
    """Read and validate a sweep YAML; ``name`` defaults to the file stem, ``storage``
    (the CLI's --storage) overrides the file's ``storage``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sweep file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: not valid YAML ({err})") from None
    return parse_spec(raw if raw is not None else {}, name=name or path.stem, storage=storage)


TOP_KEYS = ("name", "storage", "dataset", "tasks", "model", "layouts", "training", "adv_train",
            "sharpness", "attacks", "cross_task", "transfer", "resources", "search",
            "max_concurrent", "max_failures", "store")


def parse_spec(raw: Mapping, *, name: str | None = None, storage: str | None = None
               ) -> SweepSpec:
    """Validate a parsed YAML mapping into a `SweepSpec` (see module docstring)."""
    top = Node(raw, "", TOP_KEYS)
    sweep_name = top.get("name", name)
    if not isinstance(sweep_name, str) or not sweep_name or not all(
            c.isalnum() or c in "_.-=+" for c in sweep_name) or sweep_name[0] in ".-":
        fail("name", f"expected a name of letters, digits and _ . - = + (not starting with a "
             f"dot or dash), got {sweep_name!r}")
    store_raw = storage if storage is not None else top.get("storage")
    if store_raw is not None and (not isinstance(store_raw, str) or not store_raw):
        fail("storage", f"expected a directory or URI string, got {store_raw!r}")
    tasks = _tasks(top.require("tasks"))
    dataset = _dataset(top.require("dataset"), tasks)
    model = Node(top.get("model", {}), "model", ("width",))
    width = as_int(model.get("width", 16), model.at("width"), 1, 512)
    layouts = _layouts(top.get("layouts", [NUM_BLOCKS]), "layouts", len(tasks))
    training, optimizers, rhos, seeds = _training(top.require("training"), tasks)
    adv = tuple(parse_adv(a, f"adv_train[{i}]", tasks)
                for i, a in enumerate(as_list(top.get("adv_train", ["none"]), "adv_train")))
    check_unique(list(adv), "adv_train")
    sharpness = _sharpness(top.get("sharpness"))
    attacks = _attacks(top.require("attacks"), tasks)
    cross = _cross_task(top.get("cross_task", False))
    resources = _resources(top.get("resources", {}))
    from orchestrator.sweep import parse_search  # the search section is the Tuner's business
    search = parse_search(top.get("search", {"mode": "grid"}), training["epochs"])
    store = Node(top.get("store", {}), "store", ("reuse_surrogates", "path"))
    store_path = store.get("path")
    if store_path is not None and (not isinstance(store_path, str) or "://" in store_path):
        fail("store.path", f"expected a local (or shared-filesystem) directory, got "
             f"{store_path!r}; the model store needs file locks, which object stores lack")
    spec = SweepSpec(
        name=sweep_name, storage=store_raw, dataset=dataset, tasks=tasks, width=width,
        layouts=layouts, training=training, optimizers=optimizers, rhos=rhos, seeds=seeds,
        adv_train=adv, sharpness=sharpness, attacks=attacks, cross_task=cross,
        targets=(), resources=resources, search=search,
        max_concurrent=as_int(top.get("max_concurrent", 0), "max_concurrent", 0),
        max_failures=as_int(top.get("max_failures", 2), "max_failures", -1),
        reuse_surrogates=as_bool(store.get("reuse_surrogates", False), "store.reuse_surrogates"),
        store_path=store_path)
    from orchestrator.store import parse_targets  # the transfer zoo is the store's business
    targets = parse_targets(top.get("transfer"), spec)
    spec = dataclasses.replace(spec, targets=targets)
    if search["mode"] != "grid" and search["metric"].startswith("transfer") and not targets:
        fail("search.metric", f"{search['metric']!r} needs transfer targets "
             "(transfer.targets is empty)")
    if search["mode"] != "grid" and search["metric"] == "cross_task_delta" and not cross:
        fail("search.metric", "'cross_task_delta' needs cross_task: true")
    _check_trainer_accepts(spec)
    return spec


def _check_trainer_accepts(spec: SweepSpec) -> None:
    """Run mtl.train's own TrainConfig checks on every combination the sweep can produce."""
    import itertools
    from orchestrator.trial import trial_train_config
    epochs = [spec.training["epochs"]]
    rhos = list(spec.rhos)
    for param, dist in spec.search.get("space", {}).items():
        (epochs if param == "epochs" else rhos).extend(dist["values"])
    for adv, opt, rho, seed, e in itertools.product(spec.adv_train, spec.optimizers, rhos,
                                                    spec.seeds, epochs):
        check_train_config(trial_train_config(spec.training, spec.sharpness, epochs=e,
                                              optimizer=opt, rho=rho, seed=seed, adv=adv),
                            "training")


def _tasks(raw: Any) -> tuple[str, ...]:
    items = as_list(raw, "tasks")
    for i, t in enumerate(items):
        as_choice(t, f"tasks[{i}]", TASK_NAMES, "task")
    check_unique(items, "tasks")
    return tuple(items)


def _dataset(raw: Any, tasks: tuple[str, ...]) -> dict:
    node = Node(raw, "dataset", ("name", "size", "train", "val", "test", "seed", "root"))
    name = as_choice(node.require("name"), node.at("name"), tuple(DATASETS), "dataset")
    root = node.get("root")
    if name != "scenes" and not isinstance(root, str):
        fail(node.at("root"), f"dataset {name!r} reads files: give the directory it lives in")
    out = {"name": name, "size": as_int(node.get("size", 32), node.at("size"), 8, 1024),
           "seed": as_int(node.get("seed", 0), node.at("seed"), 0), "root": root,
           "tasks": list(tasks)}
    for split, default in (("train", 512), ("val", 128), ("test", 128)):
        out[split] = as_int(node.get(split, default), node.at(split), 1)
    return out


def _layouts(raw: Any, path: str, num_tasks: int) -> tuple[str, ...]:
    if raw == "all":
        return tuple(str(lay) for lay in enumerate_layouts(num_tasks, NUM_BLOCKS))
    items = as_list(raw, path)
    out = [parse_layout(item, f"{path}[{i}]", num_tasks) for i, item in enumerate(items)]
    check_unique(out, path)
    return tuple(out)


def parse_layout(item: Any, path: str, num_tasks: int) -> str:
    """An int is a branch point k (share blocks < k); a string is a canonical Layout."""
    if isinstance(item, int) and not isinstance(item, bool):
        as_int(item, path, 0, NUM_BLOCKS)
        return str(Layout.branch_point(item, num_tasks, NUM_BLOCKS))
    if not isinstance(item, str):
        fail(path, f"expected a branch point 0..{NUM_BLOCKS}, a layout string like "
             f"'0+1+2|0+1+2|0,1+2|0,1,2|0,1,2' or 'all', got {item!r}")
    try:
        layout = Layout.parse(item)
    except ValueError as err:
        raise SpecError(f"{path}: {err}") from None
    if layout.num_tasks != num_tasks or layout.num_blocks != NUM_BLOCKS:
        fail(path, f"layout {item!r} has {layout.num_tasks} tasks and {layout.num_blocks} "
             f"blocks; allowed: {num_tasks} tasks (as in `tasks`) and {NUM_BLOCKS} blocks")
    return str(layout)


TRAIN_KEYS = ("epochs", "keep_epochs", "batch_size", "optimizer", "lr", "momentum",
              "weight_decay", "milestones", "gamma", "rho", "sam_shared_only", "seeds",
              "loss_weights")


def _training(raw: Any, tasks: tuple[str, ...]
              ) -> tuple[dict, tuple[str, ...], tuple[float, ...], tuple[int, ...]]:
    node = Node(raw, "training", TRAIN_KEYS)
    epochs = as_int(node.require("epochs"), node.at("epochs"), 1, 10_000)
    keep = as_list(node.get("keep_epochs", [epochs]), node.at("keep_epochs"))
    for i, k in enumerate(keep):
        as_int(k, f"training.keep_epochs[{i}]", 1, epochs)
    check_unique(keep, node.at("keep_epochs"))
    milestones = as_list(node.get("milestones", []), node.at("milestones"), nonempty=False)
    for i, m in enumerate(milestones):  # decays at the start of an epoch; epoch 1 has no prior
        as_int(m, f"training.milestones[{i}]", 2, epochs)
    optimizers = as_list(node.get("optimizer", "sgd"), node.at("optimizer"))
    for i, o in enumerate(optimizers):
        as_choice(o, f"training.optimizer[{i}]", OPTIMIZERS, "optimizer")
    check_unique(optimizers, node.at("optimizer"))
    rhos = [as_float(r, f"training.rho[{i}]", 0.0)
            for i, r in enumerate(as_list(node.get("rho", 0.0), node.at("rho")))]
    check_unique(rhos, node.at("rho"))
    seeds = [as_int(s, f"training.seeds[{i}]", 0)
             for i, s in enumerate(as_list(node.get("seeds", 0), node.at("seeds")))]
    check_unique(seeds, node.at("seeds"))
    weights = node.get("loss_weights", {}) or {}
    if not isinstance(weights, dict):
        fail(node.at("loss_weights"), f"expected a mapping task -> weight, got {weights!r}")
    for task, w in weights.items():
        as_choice(task, f"training.loss_weights.{task}", tasks, "task")
        as_float(w, f"training.loss_weights.{task}", 0.0)
    training = {
        "epochs": epochs, "keep_epochs": sorted(keep),
        "batch_size": as_int(node.get("batch_size", 32), node.at("batch_size"), 1),
        "lr": as_float(node.get("lr", 0.05), node.at("lr"), 0.0, lo_open=True),
        "momentum": as_float(node.get("momentum", 0.9), node.at("momentum"), 0.0, 0.999),
        "weight_decay": as_float(node.get("weight_decay", 5e-4), node.at("weight_decay"), 0.0),
        "milestones": sorted(milestones),
        "gamma": as_float(node.get("gamma", 0.1), node.at("gamma"), 0.0, 1.0, lo_open=True),
        "sam_shared_only": as_bool(node.get("sam_shared_only", False), node.at("sam_shared_only")),
        "loss_weights": {str(k): float(v) for k, v in weights.items()},
    }
    return training, tuple(optimizers), tuple(rhos), tuple(seeds)


ADV_KEYS = ("objective", "method", "eps", "steps", "mix", "clean_weight", "options")


def parse_adv(raw: Any, path: str, tasks: tuple[str, ...]) -> dict | None:
    if raw == "none" or raw is None:
        return None
    node = Node(raw, path, ADV_KEYS)
    objective = node.get("objective", "total")
    if not (isinstance(objective, str) and objective.startswith("single:")):
        as_choice(objective, node.at("objective"), ("total", "dgba"), "objective")
    else:
        as_choice(objective[len("single:"):], node.at("objective"), tasks, "task")
    method = as_choice(node.get("method", "pgd"), node.at("method"), ADV_METHODS, "method")
    steps = as_int(node.get("steps", 1 if method == "fgsm" else 10), node.at("steps"), 1, 1000)
    if method == "fgsm" and steps != 1:
        fail(node.at("steps"), f"fgsm takes exactly 1 step, got {steps}; allowed: 1")
    return {"objective": objective, "method": method,
            "eps": as_float(node.get("eps", 8.0), node.at("eps"), 0.0, 255.0, lo_open=True),
            "steps": steps,
            "mix": as_choice(node.get("mix", "alternate"), node.at("mix"), ADV_MIX, "mix"),
            "clean_weight": as_float(node.get("clean_weight", 0.5), node.at("clean_weight"),
                                     0.0, 1.0),
            "options": parse_options(node.get("options", {}), node.at("options"))}


def parse_options(raw: Any, path: str) -> dict:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        fail(path, f"expected a mapping of attack options (name -> value), got {raw!r}")
    return dict(raw)


def adv_label(adv: dict | None) -> str:
    """The results' ``adv_train`` value: ``none`` or e.g. ``dgba-pgd-eps8-k10-alternate``."""
    if adv is None:
        return "none"
    mix = adv["mix"] if adv["mix"] == "alternate" else f"weighted{adv['clean_weight']:g}"
    return (f"{adv['objective'].replace(':', '=')}-{adv['method']}-eps{adv['eps']:g}"
            f"-k{adv['steps']}-{mix}")


def _sharpness(raw: Any) -> dict | None:
    """`sharpness`: SharpnessConfig fields (mtl.train.sharpness); null = not measured."""
    if raw is None or raw is False:
        return None
    from mtl.train import SharpnessConfig
    keys = tuple(f.name for f in dataclasses.fields(SharpnessConfig))
    node = Node(raw, "sharpness", keys)
    try:
        return SharpnessConfig.from_dict(node.value).to_dict()
    except (TypeError, ValueError) as err:
        text = str(err)
        raise SpecError(text if text.startswith("sharpness") else f"sharpness: {text}") from None


ATTACK_KEYS = ("methods", "objectives", "eps", "steps", "eval_samples", "batch_size", "options")


def _attacks(raw: Any, tasks: tuple[str, ...]) -> dict:
    node = Node(raw, "attacks", ATTACK_KEYS)
    methods = as_list(node.require("methods"), node.at("methods"))
    for i, m in enumerate(methods):
        as_choice(m, f"attacks.methods[{i}]", METHODS, "method")
    check_unique(methods, node.at("methods"))
    objectives: list[str] = []
    for i, o in enumerate(as_list(node.require("objectives"), node.at("objectives"))):
        path = f"attacks.objectives[{i}]"
        if o == "single":
            objectives += [f"single:{t}" for t in tasks]
        elif isinstance(o, str) and o.startswith("single:"):
            as_choice(o[len("single:"):], path, tasks, "task")
            objectives.append(o)
        else:
            as_choice(o, path, OBJECTIVES, "objective")
            objectives.append(o)
    check_unique(objectives, node.at("objectives"))
    eps = [as_float(e, f"attacks.eps[{i}]", 0.0, 255.0, lo_open=True)
           for i, e in enumerate(as_list(node.require("eps"), node.at("eps")))]
    check_unique(eps, node.at("eps"))
    steps = as_int(node.get("steps", 10), node.at("steps"), 1, 10_000)
    options = parse_options(node.get("options", {}), node.at("options"))
    specs = [{"method": m, "objective": o, "eps": e, "steps": 1 if m == "fgsm" else steps,
              "options": dict(options)} for m in methods for o in objectives for e in eps]
    _check_attack_specs(specs, "attacks")
    return {"specs": specs,
            "eval_samples": as_int(node.get("eval_samples", 64), node.at("eval_samples"), 1),
            "batch_size": as_int(node.get("batch_size", 32), node.at("batch_size"), 1)}


def _check_attack_specs(specs: list[dict], path: str) -> None:
    """Let mtl.attacks veto what this module cannot know (e.g. unknown option keys)."""
    from mtl.attacks import AttackSpec
    for spec in specs:
        try:
            AttackSpec(**spec).validate()
        except ValueError as err:
            raise SpecError(f"{path}: {err}") from None


def _cross_task(raw: Any) -> dict | None:
    if raw is False or raw is None:
        return None
    if raw is True:
        raw = {}
    node = Node(raw, "cross_task", ("method", "eps", "steps"))
    method = as_choice(node.get("method", "fgsm"), node.at("method"), METHODS, "method")
    out = {"method": method, "eps": as_float(node.get("eps", 8.0), node.at("eps"), 0.0, 255.0,
                                             lo_open=True),
           "steps": 1 if method == "fgsm" else as_int(node.get("steps", 10), node.at("steps"), 1)}
    _check_attack_specs([{"method": method, "objective": "total", "eps": out["eps"],
                          "steps": out["steps"], "options": {}}], "cross_task")
    return out


def check_train_config(train: dict, path: str) -> None:
    """mtl.train's own checks (``field: problem``), reported under the YAML ``path``."""
    from mtl.train import TrainConfig
    try:
        TrainConfig.from_dict(train).validate()
    except (ValueError, TypeError) as err:
        field, sep, rest = str(err).partition(": ")
        named = sep and field.replace(".", "").replace("_", "").isalnum()
        raise SpecError(f"{path}.{field}: {rest}" if named else f"{path}: {err}") from None


def _resources(raw: Any) -> dict:
    node = Node(raw, "resources", ("cpu", "gpu", "custom"))
    cpu = as_float(node.get("cpu", 1), node.at("cpu"), 0.0, lo_open=True)
    gpu = as_float(node.get("gpu", 0), node.at("gpu"), 0.0)
    if gpu > 1 and not gpu.is_integer():
        fail(node.at("gpu"), f"{gpu:g}: a share of one GPU must be <= 1; above 1, whole GPUs")
    custom = node.get("custom", {}) or {}
    if not isinstance(custom, dict):
        fail(node.at("custom"), f"expected a mapping resource -> amount, got {custom!r}")
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
    return (f"sweep {spec.name!r}: {mode} ({len(spec.layouts)} layouts x {len(spec.adv_train)} "
            f"AT x {len(spec.optimizers)} optimisers x {len(spec.rhos)} rho x {len(spec.seeds)} "
            f"seeds); {len(spec.attacks['specs'])} attacks; {len(spec.targets)} transfer "
            f"targets; per trial {json.dumps(spec.resource_request())}")
