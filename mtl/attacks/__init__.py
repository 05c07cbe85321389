"""Attack library: objectives (SINGLE / TOTAL / SignSum / DGBA / MINMAX) x methods (FGSM /
PGD (I-FGSM) / MI-FGSM / APGD) on one shared loop. Entry point: `attack(...)`.

Attacks run in pixel space ([0, 1], the model normalises), L-inf budget `eps` in 1/255 units.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl.attacks.objectives import AttackContext
from mtl.attacks.registry import (METHODS, OBJECTIVES, available_objectives, canonical_method,
                                  split_objective, validate_attack)
from mtl.attacks.spec import AttackSpec

__all__ = ["attack", "AttackSpec", "METHODS", "OBJECTIVES", "available_objectives",
           "attack_tasks"]


def attack_tasks(model: nn.Module, batch: Mapping[str, Tensor], objective: str) -> tuple[str, ...]:
    """Tasks an objective attacks: its one task for `single:<task>`, else the model's tasks
    that have labels in the batch (in model order)."""
    kind, task = split_objective(objective)
    if kind == "single":
        return (task,)
    return tuple(t for t in model.tasks if t in batch)


def attack(model: nn.Module, batch: Mapping[str, Tensor], *, method: str, objective: str,
           eps: float, steps: int = 10, **options: Any) -> Tensor:
    """Adversarial images for `batch["image"]` (same shape, in [0, 1], within eps/255 in L-inf).

    The model is put in eval mode for crafting and every module's mode is restored after;
    gradients are taken w.r.t. the input only (parameters' grads and flags are untouched).
    Raises one ValueError for an unknown method / objective / task, eps < 0, steps < 1 or an
    unknown option, before any work.
    """
    model_tasks = tuple(getattr(model, "tasks", ()))
    validate_attack(method, objective, eps, steps, options, model_tasks)
    if "image" not in batch:
        raise ValueError(f"batch: needs key 'image'; got keys {sorted(batch)}")
    tasks = attack_tasks(model, batch, objective)
    missing = [t for t in tasks if t not in batch]
    if missing or not tasks:
        raise ValueError(f"batch: no labels for task(s) {missing or list(model_tasks)}; "
                         f"objective {objective!r} needs labels for {list(tasks or model_tasks)}")
    device = next(model.parameters()).device
    image = batch["image"]
    moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
    kind, _ = split_objective(objective)
    obj = OBJECTIVES[kind]
    runner = METHODS[canonical_method(method)](obj, float(eps) / 255.0, steps, **{
        k: v for k, v in options.items() if k in METHODS[canonical_method(method)].defaults})
    obj_options = {k: v for k, v in options.items() if k in obj.options}
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.enable_grad():
            ctx = AttackContext(model, moved, tasks, moved["image"].detach(),
                                float(eps) / 255.0, {**obj.options, **obj_options})
            if obj.needs_clean:
                ctx.prepare()  # one clean forward for the relative-change objectives
            adv = runner(ctx)
    finally:
        for module, mode in modes.items():
            module.training = mode
    return adv.to(device=image.device, dtype=image.dtype)
