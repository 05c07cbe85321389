"""The baseline objectives SINGLE, TOTAL and SignSum (docs/design.md section 3), registered here.

SINGLE and TOTAL take the option `reduction`: 'sample' (default; each sample's loss is the mean
over its valid pixels) or 'pixel' (the DGBA authors' batch mean over all valid pixels of the
batch, `mtl.attacks.context.forward_losses`); the two give the same steps when every pixel is
valid. Gradients are taken with `torch.autograd.grad` w.r.t. the input only, so parameters'
`.grad` and `requires_grad` are never touched. Every sample's direction depends on that sample
only (the model is in eval mode; with 'pixel' the batch's valid-pixel counts scale it). DGBA lives in dgba.py, the worst-task objective in minmax.py; the
context and losses they share in context.py (re-exported here, where they used to live).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mtl.attacks.context import (LOSS_FLOOR, REDUCTION, AttackContext, forward_losses,
                                 mean_relative_change, relative_changes)
from mtl.attacks.objective import DirectionFn, Objective, ValueFn
from mtl.attacks.registry import register_objective

__all__ = ["LOSS_FLOOR", "AttackContext", "DirectionFn", "Objective", "ValueFn",
           "forward_losses", "mean_relative_change", "relative_changes", "signsum_direction",
           "single_direction", "total_direction"]


def _input_grad(scalar: Tensor, x: Tensor, retain: bool = False) -> Tensor:
    (g,) = torch.autograd.grad(scalar, x, retain_graph=retain)
    return g


def _reduced_losses(ctx: AttackContext, x: Tensor) -> Tensor:
    return forward_losses(ctx.model, x, ctx.batch, ctx.tasks,
                          ctx.options.get("reduction", "sample"))


def single_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """SINGLE: c = grad L_t for the one task in ctx.tasks (only its path runs); value L_t
    (with reduction='pixel': the sample's share of the batch mean over valid pixels)."""
    x = x.detach().requires_grad_(True)
    losses = _reduced_losses(ctx, x)
    return _input_grad(losses.sum(), x), losses[0].detach()


def total_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """TOTAL: c = grad sum_t L_t (one backward); value sum_t L_t (with reduction='pixel': the
    sample's share of sum_t of the batch means over valid pixels)."""
    x = x.detach().requires_grad_(True)
    losses = _reduced_losses(ctx, x)
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


def _first_task_loss(losses: Tensor, clean_losses: Tensor) -> Tensor:
    return losses[0]


def _total_loss(losses: Tensor, clean_losses: Tensor) -> Tensor:
    return losses.sum(0)


register_objective(Objective("single", single_direction, _first_task_loss, needs_clean=False,
                             per_task=True, option_specs={"reduction": REDUCTION}))
register_objective(Objective("total", total_direction, _total_loss, needs_clean=False,
                             option_specs={"reduction": REDUCTION}))
register_objective(Objective("signsum", signsum_direction, mean_relative_change,
                             backward_passes="T"))
