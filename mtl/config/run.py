"""`RunConfig`: one trial's whole configuration, parsed and validated in one place.

A run configuration is the YAML mapping a sweep file holds without its orchestration keys::

    dataset:  {name: scenes | factory: pkg.mod:fn, train: 512, val: 128, test: 128, ...}
    tasks:    [segment_semantic, {name: saliency, loss: pkg:fn, metric: pkg:Cls, ...}]
    model:    {factory: pkg.mod:build (default: the built-in network), layout: 3, width: 16}
    training: {epochs, lr, optimizer, rho, seed, ...}       # mtl.train.TrainConfig
    adv_train: none | {objective, method, eps, steps, mix}  # mtl.train.AdvTrainConfig
    sharpness: null | {...}                                 # mtl.train.SharpnessConfig
    attacks:  {methods, objectives, eps, steps, eval_samples, batch_size, options}
    cross_task: false | true | {method, eps, steps}
    compute:  {autocast: none | bf16, channels_last: false, compile: false}  # mtl.config.compute

`parse_run_config` reads it into a frozen `RunConfig` of plain JSON-able values (so it crosses
process boundaries and hashes stably) or raises one `ConfigError` starting with the path of the
first bad value. Every sweep trial is such a mapping with its axis values written in by path;
a sweep checks one such mapping per axis value, so a ``memo`` may carry each section's result
from one call to the next (a section is parsed again only when it or what it depends on
changed).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from mtl.config.compute import DEFAULTS as COMPUTE_DEFAULTS
from mtl.config.compute import parse_compute
from mtl.config.evaluation import parse_attacks, parse_cross_task
from mtl.config.reading import Node
from mtl.config.sections import parse_dataset, parse_model, parse_tasks, task_names_of
from mtl.config.training import adv_label, parse_adv, parse_sharpness, parse_training

RUN_KEYS = ("dataset", "tasks", "model", "training", "adv_train", "sharpness", "attacks",
            "cross_task", "compute")


@dataclass(frozen=True)
class RunConfig:
    """A validated trial configuration (JSON-able values; see the module docstring)."""

    dataset: dict
    tasks: tuple[dict, ...]
    model: dict
    training: dict
    attacks: dict
    cross_task: dict | None
    compute: dict = dataclasses.field(default_factory=lambda: dict(COMPUTE_DEFAULTS))

    @property
    def task_names(self) -> tuple[str, ...]:
        return task_names_of(self.tasks)

    @property
    def adv_label(self) -> str:
        """``none`` or the adversarial-training label (a results column)."""
        return adv_label(self.training.get("adv"))

    def model_key(self) -> dict:
        """Everything that decides the trained weights (what the model store hashes):
        validation/test sizes and the attacks do not change the model, so they are left out."""
        data = {k: v for k, v in self.dataset.items() if k not in ("val", "test")}
        key = {"dataset": data, "tasks": [dict(t) for t in self.tasks],
               "model": dict(self.model), "train": dict(self.training)}
        if self.compute["autocast"] != "none":  # bf16 training changes the weights
            key["autocast"] = self.compute["autocast"]
        return key

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values; ``compute`` only when it is not the defaults (so a
        config without the section keeps its trial id)."""
        out = dataclasses.asdict(self)
        if out["compute"] == COMPUTE_DEFAULTS:
            del out["compute"]
        return out


def _section(memo: dict | None, parse: Callable[..., Any], *args: Any) -> Any:
    """``parse(*args)``, or its earlier result for equal arguments (compared by repr, so
    1, 1.0 and True stay apart) when a ``memo`` is kept; failures are not kept."""
    if memo is None:
        return parse(*args)
    key = (parse.__qualname__, repr(args))
    if key not in memo:
        memo[key] = parse(*args)
    return memo[key]


def parse_run_config(raw: Mapping, memo: dict | None = None) -> RunConfig:
    """Validate a run-configuration mapping (module docstring) into a `RunConfig`; ``memo``
    (an empty dict the caller keeps across calls) skips re-parsing unchanged sections. The
    results share the memo's section values: treat them as read-only."""
    top = Node(raw, "", RUN_KEYS)
    tasks = _section(memo, parse_tasks, top.require("tasks"))
    names = task_names_of(tasks)
    dataset = _section(memo, parse_dataset, top.require("dataset"), tasks)
    model = _section(memo, parse_model, top.get("model"), tasks)
    adv = _section(memo, parse_adv, top.get("adv_train"), "adv_train", names)
    sharpness = _section(memo, parse_sharpness, top.get("sharpness"))
    training = _section(memo, parse_training, top.require("training"), names, adv, sharpness)
    attacks = _section(memo, parse_attacks, top.require("attacks"), names, dataset["test"])
    cross = _section(memo, parse_cross_task, top.get("cross_task", False), names)
    compute = _section(memo, parse_compute, top.get("compute"))
    return RunConfig(dataset=dataset, tasks=tasks, model=model, training=training,
                     attacks=attacks, cross_task=cross, compute=compute)
