"""MI-FGSM — Dong et al., "Boosting Adversarial Attacks with Momentum" (CVPR 2018).

g_{k+1} = decay * g_k + c / ||c||_1 (per sample); x_{k+1} = Proj(x_k + alpha * sign(g_{k+1})).
Distance: L-inf.

Options: decay (mu, default 1.0), alpha (1/255 units; default eps / steps), random_start
(default False), seed (default 0).
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import Tensor

from mtl.attacks.base import ALPHA, RANDOM_START, SEED, AttackMethod
from mtl.attacks.context import AttackContext
from mtl.attacks.options import Option, number
from mtl.attacks.registry import register_method


class MIFGSM(AttackMethod):
    """Momentum iterative FGSM on L1-normalised directions."""

    name: ClassVar[str] = "mifgsm"
    option_specs: ClassVar[Mapping[str, Option]] = {
        "decay": number(1.0, minimum=0), "alpha": ALPHA, "random_start": RANDOM_START,
        "seed": SEED}

    def start(self, ctx: AttackContext, delta: Tensor) -> None:
        self.momentum = torch.zeros_like(delta)

    def update(self, ctx: AttackContext, k: int, delta: Tensor, c: Tensor) -> Tensor:
        norm = c.abs().flatten(1).sum(1).clamp_min(1e-30)
        self.momentum = float(self.options["decay"]) * self.momentum + c / norm.reshape(
            (-1,) + (1,) * (c.dim() - 1))
        return self.lp_step(ctx, delta, self.momentum, self.step_size(k))


register_method(MIFGSM)
