"""`Attack`: a configured attack on one model, called on batches (torchattacks style).

`Attack(model, method="pgd", objective="dgba", eps=8)` validates everything it can before seeing
data (method, objective, eps in 1/255 units, steps, options, tasks); `atk(batch)` checks the
batch, then crafts adversarial images in pixel space [0, 1] within eps/255 in L-inf.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from mtl.attacks.context import AttackContext
from mtl.attacks.inputs import (attacked_tasks, check_batch, check_clean_outputs, declared_tasks,
                                model_device)
from mtl.attacks.modes import eval_mode
from mtl.attacks.registry import get_method, get_objective, validate_attack


class Attack:
    """A method x objective attack on `model` (any `nn.Module` whose `forward(x)` returns a
    mapping task -> tensor). `eps` is in 1/255 units; `tasks` (optional) are the tasks to attack,
    else the model's `tasks` attribute, else the labelled tasks of each batch. Raises one
    ValueError for a bad request, before any work."""

    def __init__(self, model: nn.Module, *, method: str, objective: str, eps: float,
                 steps: int = 10, tasks: Iterable[str] | None = None, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: must be a torch.nn.Module whose forward(x) returns a "
                             f"mapping task -> tensor, got {type(model).__name__}")
        self.tasks = None if tasks is None else declared_tasks(model, tasks)
        validate_attack(method, objective, eps, steps, options, declared_tasks(model, self.tasks))
        self.model, self.method, self.objective = model, method, objective
        self.eps, self.steps, self.options = eps, steps, dict(options)

    def __repr__(self) -> str:
        fields = [f"method={self.method!r}", f"objective={self.objective!r}", f"eps={self.eps!r}",
                  f"steps={self.steps!r}"]
        fields += [] if self.tasks is None else [f"tasks={list(self.tasks)!r}"]
        fields += [f"{k}={v!r}" for k, v in self.options.items()]
        return f"Attack({type(self.model).__name__}, {', '.join(fields)})"

    def __call__(self, batch: Mapping[str, Tensor],
                 clean_outputs: Mapping[str, Tensor] | None = None) -> Tensor:
        """Adversarial images for `batch["image"]` (same shape, dtype and device, in [0, 1],
        within eps/255 in L-inf).

        `clean_outputs` (optional): task -> the model's output on the clean batch (no grad, eval
        mode, e.g. kept from an evaluation's clean forward); the relative-change objectives
        (DGBA, SignSum, MINMAX) then take their clean losses from it instead of running their
        own clean forward, with the same result when it is the same model's forward on these
        images. It must hold every attacked task, one row per image.

        The model is put in eval mode for crafting and every module's mode is restored after
        (saved once when the call runs inside `with eval_mode(model):`, see modes.py);
        gradients are taken w.r.t. the input only (parameters' grads and flags are untouched).
        """
        check_batch(batch)
        tasks = attacked_tasks(self.model, batch, self.objective, self.tasks)
        image = batch["image"]
        if clean_outputs is not None:
            check_clean_outputs(clean_outputs, tasks, int(image.shape[0]))
        device = model_device(self.model, image.device)
        moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}
        objective, method_cls = get_objective(self.objective), get_method(self.method)
        eps = float(self.eps) / 255.0
        runner = method_cls(objective, eps, self.steps, **{
            k: v for k, v in self.options.items() if k in method_cls.option_specs})
        obj_options = {k: v for k, v in self.options.items() if k in objective.option_specs}
        with eval_mode(self.model), torch.enable_grad():  # free inside an outer eval_mode
            ctx = AttackContext(self.model, moved, tasks, moved["image"].detach(), eps,
                                {**objective.defaults, **obj_options})
            if objective.needs_clean:  # the relative-change objectives: clean losses once
                ctx.prepare(None if clean_outputs is None
                            else {t: clean_outputs[t].to(device) for t in tasks})
            adv = runner(ctx)
        return adv.to(device=image.device, dtype=image.dtype)
