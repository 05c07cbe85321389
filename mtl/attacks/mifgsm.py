"""MI-FGSM — Dong et al., "Boosting Adversarial Attacks with Momentum" (CVPR 2018).

g_{k+1} = decay * g_k + c / ||c||_1 (per sample); x_{k+1} = Proj(x_k + alpha * sign(g_{k+1})).
Distance: L-inf.

Options: decay (mu, default 1.0), alpha (1/255 units; default eps / steps), random_start
(default False), seed (default 0).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from mtl.attacks.base import Attack
from mtl.attacks.objectives import AttackContext


class MIFGSM(Attack):
    """Momentum iterative FGSM on L1-normalised directions."""

    name: ClassVar[str] = "mifgsm"
    defaults: ClassVar[Mapping[str, Any]] = {"decay": 1.0, "alpha": None, "random_start": False,
                                             "seed": 0}

    def start(self, ctx: AttackContext, delta: Tensor) -> None:
        self.momentum = torch.zeros_like(delta)

    def update(self, ctx: AttackContext, k: int, delta: Tensor, c: Tensor) -> Tensor:
        norm = c.abs().flatten(1).sum(1).clamp_min(1e-30)
        self.momentum = float(self.options["decay"]) * self.momentum + c / norm.reshape(
            (-1,) + (1,) * (c.dim() - 1))
        return self.lp_step(ctx, delta, self.momentum, self.step_size(k))
