"""DGBA: Dynamic Gradient Balancing Attack (Zhang, Liu, Mahmood, Ding, Guan 2023, arXiv 2305.12066).

DGBA maximises the *averaged relative loss change* (1/T) sum_t (L_t(x+delta) - L_t^0) / L_t^0 of a
multi-task model under an L-inf budget and the [0, 1] pixel box. Linearised at the current iterate
with the current losses as denominators, the ascent direction is

    c = sum_t grad_x L_t / L_t = grad_x sum_t log L_t          (per sample, ONE backward pass)

and the step is a linear program max c . delta s.t. lo <= delta <= hi, solved exactly by the
methods' shared step (lp.py; `solve_box_lp` / `solve_sign_ilp` are re-exported here).

This module holds the one-backward DGBA direction used by the attack loop, a T-backward reference
of the same direction for tests and benchmarks, and registers the objective `dgba`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtl.attacks.context import (LOSS_FLOOR, AttackContext, defined_changes, forward_losses,
                                 mean_relative_change)
from mtl.attacks.lp import LP_SOLVERS, solve_box_lp, solve_sign_ilp
from mtl.attacks.objective import Objective
from mtl.attacks.options import choice
from mtl.attacks.registry import register_objective

__all__ = ["DENOMINATORS", "DENOMINATOR", "LP_SOLVERS", "dgba_direction",
           "dgba_direction_reference", "solve_box_lp", "solve_sign_ilp"]

DENOMINATORS = ("current", "clean")
DENOMINATOR = choice("current", DENOMINATORS)  # which losses divide; shared with MINMAX


def dgba_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """The DGBA ascent direction with ONE backward pass, and the per-sample objective value.

    denominator 'current' (default, the official code's "dynamic" weighting): c = grad sum_t log L_t;
    'clean': c = grad sum_t L_t / L_t^0 with the clean losses computed once. Losses are floored at
    1e-8, so a task with zero loss (or no valid pixel) contributes nothing instead of NaN/inf;
    with 'clean', a task whose clean loss is zero contributes nothing to that sample's direction.
    Value: the averaged relative loss change (1/T) sum_t (L_t - L_t^0) / L_t^0 per sample, over
    the tasks whose clean loss is not zero (`mean_relative_change`).
    """
    x = x.detach().requires_grad_(True)
    losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks)
    if ctx.options.get("denominator", "current") == "clean":
        ratios = losses / ctx.clean_losses
        objective = torch.where(defined_changes(ctx.clean_losses), ratios,
                                torch.zeros_like(ratios)).sum()
    else:
        objective = torch.log(losses.clamp_min(LOSS_FLOOR)).sum()
    (c,) = torch.autograd.grad(objective, x)
    return c, mean_relative_change(losses.detach(), ctx.clean_losses)


def dgba_direction_reference(model: nn.Module, x: Tensor, batch: Mapping[str, Tensor],
                             tasks: Sequence[str], denominator: str = "current",
                             clean_losses: Tensor | None = None) -> Tensor:
    """Reference DGBA direction with T backward passes: sum_t grad L_t / L_t (per sample).

    Mirrors the flooring of `dgba_direction`: a task whose loss is below 1e-8 contributes 0 (for
    denominator='clean': whose clean loss is). `clean_losses` [T, B] is required for
    denominator='clean'. Used by tests and bench only.
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator: unknown value {denominator!r}; allowed: {list(DENOMINATORS)}")
    x = x.detach().requires_grad_(True)
    losses = forward_losses(model, x, batch, tuple(tasks))
    if denominator == "clean":
        if clean_losses is None:
            raise ValueError("clean_losses: required when denominator='clean'")
        denom = clean_losses.clamp_min(LOSS_FLOOR)
        keep = defined_changes(denom).to(x.dtype)
    else:
        denom = losses.detach().clamp_min(LOSS_FLOOR)
        keep = (losses.detach() >= LOSS_FLOOR).to(x.dtype)
    c = torch.zeros_like(x)
    view = (-1,) + (1,) * (x.dim() - 1)
    for t in range(len(tasks)):
        (g,) = torch.autograd.grad(losses[t].sum(), x, retain_graph=t + 1 < len(tasks))
        c = c + g * (keep[t] / denom[t]).reshape(view)
    return c


register_objective(Objective("dgba", dgba_direction, mean_relative_change,
                             option_specs={"denominator": DENOMINATOR}))
