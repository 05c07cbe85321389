"""A toy attack method, registered by one call as a user's would be: sign steps of a fixed
fraction of eps (option `fraction` in [0, 1])."""
from __future__ import annotations

from typing import ClassVar, Mapping

from mtl.attacks import AttackMethod, Option, register_method
from mtl.attacks.options import number


class FractionStep(AttackMethod):
    """Every step moves `fraction * eps` along sign(c), then projects."""

    name: ClassVar[str] = "toy_fraction"
    option_specs: ClassVar[Mapping[str, Option]] = {"fraction": number(0.5, 0, 1)}

    def step_size(self, k: int) -> float:
        return float(self.options["fraction"]) * self.eps


register_method(FractionStep, aliases=("toy_frac",))
