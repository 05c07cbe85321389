"""A toy attack objective, registered by one call as a user's would be: raise the sum of squared
task losses, scaled by the option `scale` (> 0)."""
from __future__ import annotations

import torch
from torch import Tensor

from mtl.attacks import Objective, register_objective
from mtl.attacks.context import AttackContext, forward_losses
from mtl.attacks.options import number


def _squares(losses: Tensor, clean_losses: Tensor | None) -> Tensor:
    return (losses ** 2).sum(0)


def squares_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """c = grad scale * sum_t L_t^2; value sum_t L_t^2 per sample."""
    x = x.detach().requires_grad_(True)
    losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks)
    (c,) = torch.autograd.grad(float(ctx.options["scale"]) * _squares(losses, None).sum(), x)
    return c, _squares(losses.detach(), None)


TOY_OBJECTIVE = register_objective(Objective(
    "toy_squares", squares_direction, _squares, needs_clean=False,
    option_specs={"scale": number(1.0, positive=True)}))
