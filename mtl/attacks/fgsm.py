"""FGSM — Goodfellow, Shlens, Szegedy, "Explaining and Harnessing Adversarial Examples" (ICLR 2015).

One step of size eps along the objective's direction, then projection to [0, 1]:
x' = clip(x + eps * sign(c)). Distance: L-inf. `steps` is ignored (always one step).

Arguments (via `mtl.attacks.attack`): eps (1/255 units). Options: none.
"""
from __future__ import annotations

from typing import ClassVar, Mapping

from mtl.attacks.base import AttackMethod
from mtl.attacks.options import Option
from mtl.attacks.registry import register_method


class FGSM(AttackMethod):
    """Fast Gradient Sign Method: one exact LP step of size eps."""

    name: ClassVar[str] = "fgsm"
    option_specs: ClassVar[Mapping[str, Option]] = {}

    @property
    def num_steps(self) -> int:
        return 1

    def step_size(self, k: int) -> float:
        return self.eps


register_method(FGSM)
