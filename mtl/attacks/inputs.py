"""Checks of what an attack is given, and which tasks it attacks, before any work.

Each bad input raises ONE ValueError that names the value and the fix. The model is any
`nn.Module` whose `forward(x)` returns a mapping task -> tensor: its tasks are the `tasks` the
caller passes, else its `tasks` attribute when it has one, else the labelled tasks of the batch.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl.attacks.registry import get_objective, split_objective
from mtl.tasks import task_names


def declared_tasks(model: nn.Module, tasks: Iterable[str] | None = None
                   ) -> tuple[str, ...] | None:
    """The tasks known before seeing a batch: `tasks`, else `model.tasks`, else None.

    Raises ValueError for a task the task registry does not know.
    """
    source = "tasks"
    if tasks is None:
        tasks, source = getattr(model, "tasks", None), "model.tasks"
        if tasks is None:
            return None
    if isinstance(tasks, str):
        raise ValueError(f"{source}: must be a list of task names, got the string {tasks!r}; "
                         f"write [{tasks!r}]")
    tasks = tuple(tasks)
    known = task_names()
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"{source}: unknown task(s) {unknown or '(none given)'}; allowed: "
                         f"{list(known)}")
    return tasks


def check_batch(batch: Any) -> None:
    """Raise for a batch without a float "image" with finite values in [0, 1]."""
    if not isinstance(batch, Mapping) or "image" not in batch:
        keys = sorted(map(str, batch)) if isinstance(batch, Mapping) else type(batch).__name__
        raise ValueError(f"batch: needs key 'image' (float images [B,3,H,W] in [0, 1]) next to "
                         f"one label per task; got {keys}")
    image = batch["image"]
    if not isinstance(image, Tensor) or not image.is_floating_point():
        kind = image.dtype if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"batch['image']: must be a floating tensor with values in [0, 1], got "
                         f"{kind}; convert it, e.g. image.float() / 255 for uint8 pixels")
    if not bool(torch.isfinite(image).all()):
        raise ValueError("batch['image']: contains NaN or inf; attacks need finite pixel values "
                         "in [0, 1]; check the data pipeline")
    lo, hi = (float(image.min()), float(image.max())) if image.numel() else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"batch['image']: values must lie in [0, 1], found min {lo:.4g} and max "
                         f"{hi:.4g}; mtlsweep attacks work in pixel space [0, 1], normalisation "
                         f"(mean/std) belongs in the model's first layer: pass unnormalised images")


def check_clean_outputs(clean_outputs: Any, tasks: Iterable[str], batch_size: int) -> None:
    """Raise unless `clean_outputs` maps every attacked task to a tensor with one row per image
    (the model's outputs on the clean batch, e.g. from an evaluation's clean forward)."""
    if not isinstance(clean_outputs, Mapping):
        raise ValueError(f"clean_outputs: must be a mapping task -> the model's output tensor on "
                         f"the clean batch, got {type(clean_outputs).__name__}")
    missing = [t for t in tasks if t not in clean_outputs]
    if missing:
        raise ValueError(f"clean_outputs: no output for attacked task(s) {missing}; got keys "
                         f"{sorted(map(str, clean_outputs))}; pass the model's output of every "
                         f"attacked task on the clean batch")
    bad = {t: (tuple(clean_outputs[t].shape) if isinstance(clean_outputs[t], Tensor)
               else type(clean_outputs[t]).__name__) for t in tasks
           if not isinstance(clean_outputs[t], Tensor) or clean_outputs[t].dim() == 0
           or clean_outputs[t].shape[0] != batch_size}
    if bad:
        raise ValueError(f"clean_outputs: need tensors with one row per image of the batch "
                         f"({batch_size}), got {bad}; pass the outputs on this batch's clean "
                         f"images")


def attacked_tasks(model: nn.Module, batch: Mapping[str, Tensor], objective: str,
                   tasks: Iterable[str] | None = None) -> tuple[str, ...]:
    """Tasks an objective attacks on this batch: its one task for a per-task objective
    (`single:<task>`); else every requested task (`tasks`), or the model's tasks that have
    labels in the batch, or (a model without `tasks`) the batch's labelled registered tasks.

    Raises ValueError when a requested task has no label in the batch.
    """
    declared = declared_tasks(model, tasks)
    _, task = split_objective(objective)
    if get_objective(objective).per_task:
        chosen, requested = (task,), True
    elif tasks is not None:
        chosen, requested = declared, True
    else:
        pool = declared if declared is not None else task_names()
        chosen, requested = tuple(t for t in pool if t in batch), False
    missing = [t for t in chosen if t not in batch]
    if missing:
        raise ValueError(f"batch: no label for task(s) {missing} that objective {objective!r} "
                         f"attacks; add batch[{missing[0]!r}] or attack other tasks")
    if not chosen and not requested:
        pool = list(declared) if declared is not None else list(task_names())
        raise ValueError(f"batch: no task labels; objective {objective!r} needs a label for at "
                         f"least one of {pool}; got keys {sorted(map(str, batch))}")
    return chosen


def model_device(model: nn.Module, default: torch.device) -> torch.device:
    """The device of the model's first parameter or buffer (`default` when it has none)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return default if tensor is None else tensor.device
