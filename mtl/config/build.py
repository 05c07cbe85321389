"""From a validated configuration to the objects a trial runs: datasets, tasks, model.

Works on the JSON-able dicts of `mtl.config.run.RunConfig` (and its `model_key()`, what the
model store keeps), so a worker process rebuilds exactly what the driver validated.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from mtl.config.sections import SPLITS
from mtl.data import build_split as build
from mtl.models import build_task_model
from mtl.tasks import get_task, task_from_paths


def register_tasks(tasks: Sequence[Mapping[str, Any]]) -> None:
    """Register the user's own tasks of a config in this process (idempotent)."""
    for task in tasks:
        if "loss" in task:
            task_from_paths(task["name"], task["loss"], task["metric"],
                            channels=task.get("channels"), kind=task.get("kind", "dense"))


def build_split(dataset: Mapping[str, Any], split: str, length: int | None = None) -> Dataset:
    """The first ``length`` samples (default: the config's size of that split) of ``split``."""
    return build(dataset["source"], split, options=dict(dataset["options"]),
                 tasks=list(dataset["tasks"]),
                 length=dataset[split] if length is None else length,
                 split_sizes={s: dataset[s] for s in SPLITS if s in dataset})


def task_channels(tasks: Sequence[Mapping[str, Any]], dataset: Any) -> dict[str, int | None]:
    """Head channels per task: the config's ``channels``, else the dataset's
    ``task_channels``, else the task registry's default (None when nobody knows)."""
    given = getattr(dataset, "task_channels", None) or {}
    out: dict[str, int | None] = {}
    for task in tasks:
        name = task["name"]
        out[name] = task.get("channels") or given.get(name) or \
            get_task(name).default_channels
    return out


def build_model(key: Mapping[str, Any], dataset: Any) -> nn.Module:
    """A freshly initialised model for a `RunConfig.model_key()`: torch is seeded with the
    training seed first, so the initial weights depend on the config only."""
    register_tasks(key["tasks"])
    torch.manual_seed(int(key["train"].get("seed", 0)))
    model = key["model"]
    names = [t["name"] for t in key["tasks"]]
    return build_task_model(model["source"], tasks=names,
                            task_channels=task_channels(key["tasks"], dataset),
                            options=dict(model["options"]), layout=model.get("layout"))
