"""The training-side sections of a run configuration: ``training``, ``adv_train``, ``sharpness``.

They build mtl.train's own configs (`TrainConfig`, `AdvTrainConfig`, `SharpnessConfig`), whose
``validate`` methods hold the rules; this module adds only the YAML conveniences (defaults that
depend on other keys, sorting epoch lists) and the paths in the messages.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from mtl.config.evaluation import parse_steps
from mtl.config.paths import reroot
from mtl.config.reading import ConfigError, Node, as_choice, as_int, brief, fail
from mtl.train.adversarial import AdvTrainConfig
from mtl.train.config import TrainConfig
from mtl.train.sharpness import SharpnessConfig

TRAIN_KEYS = tuple(f.name for f in dataclasses.fields(TrainConfig)
                   if f.name not in ("adv", "sharpness"))
ADV_KEYS = tuple(f.name for f in dataclasses.fields(AdvTrainConfig))


def parse_adv(raw: Any, path: str, tasks: Sequence[str]) -> dict | None:
    """``adv_train``: ``none`` or an `AdvTrainConfig` mapping (FGSM takes one step)."""
    if raw == "none" or raw is None:
        return None
    node = Node(raw, path, ADV_KEYS)
    objective = node.get("objective", "total")
    if isinstance(objective, str) and objective.startswith("single:"):
        as_choice(objective[len("single:"):], node.at("objective"), tuple(tasks), "task")
    method = node.get("method", "pgd")
    steps = parse_steps(node.get("steps"), node.at("steps"), method)
    options = node.get("options", {})
    if not isinstance(options, dict) or not all(isinstance(k, str) for k in options):
        fail(node.at("options"), f"expected a mapping of attack options, got {brief(options)}")
    try:
        adv = AdvTrainConfig(**{**node.value, "method": method, "steps": steps})
    except ConfigError as err:
        raise reroot(err, "adv", path) from None
    except (TypeError, ValueError) as err:
        raise reroot(ConfigError(str(err)), "adv", path) from None
    return adv.to_dict()


def adv_label(adv: Mapping | None) -> str:
    """The results' ``adv_train`` value: ``none`` or e.g. ``dgba-pgd-eps8-k10-alternate``."""
    if adv is None:
        return "none"
    mix = adv["mix"] if adv["mix"] == "alternate" else f"weighted{adv['clean_weight']:g}"
    return (f"{adv['objective'].replace(':', '=')}-{adv['method']}-eps{adv['eps']:g}"
            f"-k{adv['steps']}-{mix}")


def parse_sharpness(raw: Any) -> dict | None:
    """``sharpness``: `SharpnessConfig` fields; null/false = not measured."""
    if raw is None or raw is False:
        return None
    keys = tuple(f.name for f in dataclasses.fields(SharpnessConfig))
    node = Node(raw, "sharpness", keys)
    try:
        return SharpnessConfig.from_dict(node.value).to_dict()
    except (TypeError, ValueError) as err:
        text = str(err)
        raise ConfigError(text if text.startswith("sharpness") else f"sharpness: {text}"
                          ) from None


def parse_training(raw: Any, tasks: Sequence[str], adv: dict | None,
                   sharpness: dict | None) -> dict:
    """``training`` -> ``TrainConfig.to_dict()``, validated by `TrainConfig.validate` under the
    path ``training``. Unlisted keys take TrainConfig's defaults except those set here."""
    node = Node(raw, "training", TRAIN_KEYS)
    epochs = as_int(node.require("epochs"), node.at("epochs"), 1)
    values = {"batch_size": 32, "optimizer": "sgd", "lr": 0.05, "weight_decay": 5e-4,
              **node.value}
    for key in ("keep_epochs", "milestones"):
        value = values.get(key, [epochs] if key == "keep_epochs" else [])
        if not isinstance(value, list):
            value = [value]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            value = sorted(value)
        values[key] = tuple(value)
    weights = values.get("loss_weights") or {}
    if not isinstance(weights, dict):
        fail(node.at("loss_weights"), f"expected a mapping task -> weight, got {brief(weights)}")
    for task in weights:
        as_choice(task, f"training.loss_weights.{task}", tuple(tasks), "task")
    values["loss_weights"] = weights
    values["adv"], values["sharpness"] = adv, sharpness
    try:
        config = TrainConfig(**values)
    except ConfigError as err:  # TrainConfig.validate names the field: put it under training.
        raise ConfigError(f"training.{err}") from None
    return config.to_dict()
