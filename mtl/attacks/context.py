"""What an objective sees for one batch (`AttackContext`) and the per-sample losses it is made of.

Losses come from `task_outputs`, so any model whose `forward(x)` returns a mapping task -> tensor
can be attacked; a model that accepts `task=` / `tasks=` runs only the paths the attacked tasks
need. Losses are floored at LOSS_FLOOR wherever they divide, so a zero loss never makes NaN; a
task whose clean loss is at the floor (e.g. a cross-entropy that is exactly 0 in float32 once the
logit margin exceeds ~17) has no relative change and drops out of that sample's value.

Reductions (`forward_losses`): 'sample' (default) gives each sample's mean over its valid pixels;
'pixel' gives each sample's share of the batch mean over ALL valid pixels of the batch,
S_tb / sum_b n_tb, which sums over the batch to the DGBA authors' TOTAL / SINGLE loss.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.outputs import task_outputs
from mtl.attacks.options import choice
from mtl.tasks import task_loss, task_loss_sums

LOSS_FLOOR = 1e-8  # losses are floored here so a zero loss never yields NaN or inf
REDUCTIONS = ("sample", "pixel")
REDUCTION = choice("sample", REDUCTIONS)  # objective option of `total` and `single:<task>`


@dataclass
class AttackContext:
    """Everything an objective needs for one batch.

    `tasks` are the tasks the objective attacks (one for `single:<task>`); `clean_losses` [T, B]
    are the floored per-sample losses of the clean images (filled once by `prepare`); `lo`/`hi`
    are the feasible perturbation bounds around `x0` (eps-ball intersected with [0, 1]), computed
    on first use and kept: `x0` and `eps` are fixed for the context's life.
    """

    model: nn.Module
    batch: Mapping[str, Tensor]
    tasks: tuple[str, ...]
    x0: Tensor
    eps: float
    options: Mapping[str, Any] = field(default_factory=dict)
    clean_losses: Tensor | None = None

    def prepare(self, clean_outputs: Mapping[str, Tensor] | None = None) -> "AttackContext":
        """Compute the clean losses once (no graph): from `clean_outputs` (task -> the model's
        output on `x0`, e.g. kept from an evaluation's clean forward) when given, else from a
        forward of the model (the same numbers when they come from the same forward;
        `inputs.check_clean_outputs` checks their tasks and batch size)."""
        with torch.no_grad():
            if clean_outputs is None:
                losses = forward_losses(self.model, self.x0, self.batch, self.tasks)
            else:
                losses = output_losses(clean_outputs, self.batch, self.tasks)
            self.clean_losses = losses.clamp_min(LOSS_FLOOR)
        return self

    @cached_property
    def lo(self) -> Tensor:
        """Lower bound of the perturbation delta = x - x0 (computed once per batch)."""
        return (self.x0 - self.eps).clamp(0.0, 1.0) - self.x0

    @cached_property
    def hi(self) -> Tensor:
        """Upper bound of the perturbation delta = x - x0 (computed once per batch)."""
        return (self.x0 + self.eps).clamp(0.0, 1.0) - self.x0


def forward_losses(model: nn.Module, x: Tensor, batch: Mapping[str, Tensor],
                   tasks: Sequence[str], reduction: str = "sample") -> Tensor:
    """Losses [T, B] of `tasks`, running only the paths those tasks need when the model allows
    it (see `task_outputs`). reduction 'sample': each sample's mean over its valid pixels;
    'pixel': S_tb / N_t with S_tb the loss summed over sample b's valid pixels and N_t the
    batch's valid-pixel count (0 where the batch has none), so row t sums to the batch mean."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown value {reduction!r}; allowed: {list(REDUCTIONS)}")
    tasks = tuple(tasks)
    return output_losses(task_outputs(model, x, tasks), batch, tasks, reduction)


def output_losses(out: Mapping[str, Tensor], batch: Mapping[str, Tensor],
                  tasks: Sequence[str], reduction: str = "sample") -> Tensor:
    """Losses [T, B] of `tasks` from the model's outputs `out` (task -> tensor), reduced as in
    `forward_losses` (which is this after one forward)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction: unknown value {reduction!r}; allowed: {list(REDUCTIONS)}")
    if reduction == "sample":
        return torch.stack([task_loss(t, out[t], batch) for t in tasks])
    sums, counts = zip(*(task_loss_sums(t, out[t], batch) for t in tasks))
    total = torch.stack(counts).sum(1, keepdim=True)
    return torch.stack(sums) / torch.where(total > 0, total, torch.ones_like(total))


def defined_changes(clean_losses: Tensor) -> Tensor:
    """Where a relative change is defined, [T, B] bool: the clean loss is above LOSS_FLOOR."""
    return clean_losses > LOSS_FLOOR


def relative_changes(losses: Tensor, clean_losses: Tensor) -> Tensor:
    """(L_t - L_t^0) / L_t^0 per task and sample, [T, B]; clean losses are already floored.
    0 where it is undefined (`defined_changes`), instead of (L - 1e-8) / 1e-8 ~ 1e8 * L."""
    changes = (losses - clean_losses) / clean_losses
    return torch.where(defined_changes(clean_losses), changes, torch.zeros_like(changes))


def mean_relative_change(losses: Tensor, clean_losses: Tensor) -> Tensor:
    """The DGBA objective: averaged relative loss change per sample [B], over the tasks where it
    is defined (a task with a zero clean loss drops out; 0 when none is defined)."""
    defined = defined_changes(clean_losses).sum(0).clamp_min(1).to(losses.dtype)
    return relative_changes(losses, clean_losses).sum(0) / defined
