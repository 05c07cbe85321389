"""`Objective`: one registered attack objective (which direction to step in, docs/design.md section 3).

An objective is a small function `direction(ctx, x) -> (c, value)`: the ascent direction `c`
(same shape as `x`) for the batch at the current adversarial images `x`, and the per-sample
objective value `value` [B] at `x` (APGD tracks it per sample). Its options are declared here
with their defaults and checks (`option_specs`); register it with `register_objective`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from mtl.attacks.context import AttackContext, forward_losses
from mtl.attacks.options import Option, defaults_of, option_problems

DirectionFn = Callable[[AttackContext, Tensor], tuple[Tensor, Tensor]]
ValueFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Objective:
    """A direction function, how its value follows from the losses [T, B] and clean losses (for
    forward-only evaluation), and the options it accepts.

    `per_task`: the objective attacks one task named in its spelling, `<name>:<task>` (like
    `single:depth_zbuffer`); otherwise it attacks every labelled task of the model.
    """

    name: str
    direction: DirectionFn
    value: ValueFn
    option_specs: Mapping[str, Option] = field(default_factory=dict)
    backward_passes: str = "1"
    needs_clean: bool = True  # whether direction/value use the clean losses
    per_task: bool = False

    @property
    def defaults(self) -> dict[str, Any]:
        """Option name -> default value."""
        return defaults_of(self.option_specs)

    def check_options(self, options: Mapping[str, Any]) -> list[str]:
        """Problems with the values of this objective's options in `options`."""
        return option_problems(self.option_specs, options)

    def evaluate(self, ctx: AttackContext, x: Tensor) -> Tensor:
        """Per-sample objective value at `x` (forward only; losses reduced as the option
        `reduction` says, 'sample' when the objective has none)."""
        with torch.no_grad():
            losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks,
                                    ctx.options.get("reduction", "sample"))
            return self.value(losses, ctx.clean_losses)
