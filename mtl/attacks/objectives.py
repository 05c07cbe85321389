"""Attack objectives: which direction to step in (DESIGN.md section 3).

An objective is a small function `direction(ctx, x) -> (c, value)`: the ascent direction `c`
(same shape as `x`) for the batch at the current adversarial images `x`, and the per-sample
objective value `value` [B] at `x` (APGD tracks it per sample). Gradients are taken with
`torch.autograd.grad` w.r.t. the input only, so parameters' `.grad` and `requires_grad` are never
touched. Every sample's direction depends on that sample only (the model is in eval mode).

This file holds the shared context and the baseline objectives (SINGLE, TOTAL, SignSum); DGBA
lives in dgba.py, the worst-task objective in minmax.py, the name registry in registry.py.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

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
    """Per-sample losses [T, B] of `tasks`, running only the paths those tasks need."""
    from mtl.tasks import task_loss

    tasks = tuple(tasks)
    if len(tasks) == 1:
        out = model(x, task=tasks[0])
    elif set(tasks) == set(getattr(model, "tasks", ())):
        out = model(x)
    else:
        out = model(x, tasks=list(tasks))
    return torch.stack([task_loss(t, out[t], batch) for t in tasks])


def relative_changes(losses: Tensor, clean_losses: Tensor) -> Tensor:
    """(L_t - L_t^0) / L_t^0 per task and sample, [T, B]; clean losses are already floored."""
    return (losses - clean_losses) / clean_losses


def mean_relative_change(losses: Tensor, clean_losses: Tensor) -> Tensor:
    """The DGBA objective: averaged relative loss change over tasks, per sample [B]."""
    return relative_changes(losses, clean_losses).mean(0)


def _input_grad(scalar: Tensor, x: Tensor, retain: bool = False) -> Tensor:
    (g,) = torch.autograd.grad(scalar, x, retain_graph=retain)
    return g


def single_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """SINGLE: c = grad L_t for the one task in ctx.tasks (only its path runs); value L_t."""
    x = x.detach().requires_grad_(True)
    losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks)
    return _input_grad(losses.sum(), x), losses[0].detach()


def total_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """TOTAL: c = grad sum_t L_t (one backward); value sum_t L_t."""
    x = x.detach().requires_grad_(True)
    losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks)
    return _input_grad(losses.sum(), x), losses.detach().sum(0)


def signsum_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """SignSum: c = sum_t sign(grad L_t) (T backward passes on one forward).

    SignSum weighs tasks equally whatever their loss scale, so its tracked value is the
    scale-free averaged relative loss change (as for DGBA).
    """
    x = x.detach().requires_grad_(True)
    losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks)
    c = torch.zeros_like(x)
    for t in range(len(ctx.tasks)):
        c = c + torch.sign(_input_grad(losses[t].sum(), x, retain=t + 1 < len(ctx.tasks)))
    return c, mean_relative_change(losses.detach(), ctx.clean_losses)


DirectionFn = Callable[[AttackContext, Tensor], tuple[Tensor, Tensor]]
ValueFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Objective:
    """A registered objective: its direction function, how its value follows from the losses
    [T, B] and clean losses (for forward-only evaluation), and the options it accepts."""

    name: str
    direction: DirectionFn
    value: ValueFn
    options: Mapping[str, Any] = field(default_factory=dict)  # option name -> default
    backward_passes: str = "1"
    needs_clean: bool = True  # whether direction/value use the clean losses

    def evaluate(self, ctx: AttackContext, x: Tensor) -> Tensor:
        """Per-sample objective value at `x` (forward only)."""
        with torch.no_grad():
            return self.value(forward_losses(ctx.model, x, ctx.batch, ctx.tasks),
                              ctx.clean_losses)
