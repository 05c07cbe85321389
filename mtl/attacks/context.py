"""What an objective sees for one batch (`AttackContext`) and the per-sample losses it is made of.

Losses come from `task_outputs`, so any model whose `forward(x)` returns a mapping task -> tensor
can be attacked; a model that accepts `task=` / `tasks=` runs only the paths the attacked tasks
need. Losses are floored at LOSS_FLOOR wherever they divide, so a zero loss never makes NaN.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from mtl.models.outputs import task_outputs
from mtl.tasks import task_loss

LOSS_FLOOR = 1e-8  # losses are floored here so a zero loss never yields NaN or inf


@dataclass
class AttackContext:
    """Everything an objective needs for one batch.

    `tasks` are the tasks the objective attacks (one for `single:<task>`); `clean_losses` [T, B]
    are the floored per-sample losses of the clean images (filled once by `prepare`); `lo`/`hi`
    are the feasible perturbation bounds around `x0` (eps-ball intersected with [0, 1]).
    """

    model: nn.Module
    batch: Mapping[str, Tensor]
    tasks: tuple[str, ...]
    x0: Tensor
    eps: float
    options: Mapping[str, Any] = field(default_factory=dict)
    clean_losses: Tensor | None = None

    def prepare(self) -> "AttackContext":
        """Compute the clean losses once (no graph)."""
        with torch.no_grad():
            self.clean_losses = forward_losses(self.model, self.x0, self.batch,
                                               self.tasks).clamp_min(LOSS_FLOOR)
        return self

    @property
    def lo(self) -> Tensor:
        """Lower bound of the perturbation delta = x - x0."""
        return (self.x0 - self.eps).clamp(0.0, 1.0) - self.x0

    @property
    def hi(self) -> Tensor:
        """Upper bound of the perturbation delta = x - x0."""
        return (self.x0 + self.eps).clamp(0.0, 1.0) - self.x0


def forward_losses(model: nn.Module, x: Tensor, batch: Mapping[str, Tensor],
                   tasks: Sequence[str]) -> Tensor:
    """Per-sample losses [T, B] of `tasks`, running only the paths those tasks need when the
    model allows it (see `task_outputs`)."""
    tasks = tuple(tasks)
    out = task_outputs(model, x, tasks)
    return torch.stack([task_loss(t, out[t], batch) for t in tasks])


def relative_changes(losses: Tensor, clean_losses: Tensor) -> Tensor:
    """(L_t - L_t^0) / L_t^0 per task and sample, [T, B]; clean losses are already floored."""
    return (losses - clean_losses) / clean_losses


def mean_relative_change(losses: Tensor, clean_losses: Tensor) -> Tensor:
    """The DGBA objective: averaged relative loss change over tasks, per sample [B]."""
    return relative_changes(losses, clean_losses).mean(0)
