"""The shared attack loop (a TransferAttack-style template).

`AttackMethod.__call__` is fixed: init delta (optional random start) -> for each step: objective
direction at x0 + delta -> `observe` hook -> `update` (the step) -> project onto the eps-ball and
the [0, 1] box. Methods override small hooks only (`init_delta`, `start`, `observe`, `update`,
`finish`), so every method x objective pair shares one projection and one stopping rule. A new
method is one file: a subclass declaring `name` and `option_specs`, and `register_method(cls)`.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

from mtl.attacks.context import AttackContext
from mtl.attacks.lp import box_argmax
from mtl.attacks.objective import Objective
from mtl.attacks.options import Option, defaults_of, flag, integer, number, option_problems

# Options the shared hooks below read; methods that offer them list them in `option_specs`.
ALPHA = number(None, positive=True, none_ok=True, unit=" (1/255 units)")  # step size
RANDOM_START = flag(False)  # uniform start in the eps-ball (Madry et al.)
SEED = integer(0)  # seed of the random start


class AttackMethod:
    """Base class of the methods. `eps` is in pixel units here (the public API takes 1/255).

    Subclasses declare `name`, `option_specs` (option name -> `Option`: default and check) and
    override hooks; `defaults` (option name -> default) is derived from `option_specs`.
    """

    name: ClassVar[str] = "base"
    option_specs: ClassVar[Mapping[str, Option]] = {}
    defaults: ClassVar[Mapping[str, Any]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.defaults = defaults_of(cls.option_specs)

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        """Problems with the values of this method's options in `options` (override to add
        rules that tie several options together)."""
        return option_problems(cls.option_specs, options)

    def __init__(self, objective: Objective, eps: float, steps: int = 10, **options: Any) -> None:
        unknown = sorted(set(options) - set(self.option_specs))
        problems = self.check_options(options)
        if unknown:
            problems.insert(0, f"options: unknown key(s) {unknown} for method {self.name!r}; "
                               f"allowed: {sorted(self.option_specs)}")
        if problems:
            raise ValueError("; ".join(problems))
        self.objective = objective
        self.eps = float(eps)
        self.steps = int(steps)
        self.options = {**self.defaults, **options}

    @property
    def num_steps(self) -> int:
        """Number of direction evaluations (gradient steps)."""
        return self.steps

    def __call__(self, ctx: AttackContext) -> Tensor:
        """Run the attack on one batch; returns adversarial images in [0, 1]."""
        delta = self.project(ctx, self.init_delta(ctx))
        self.start(ctx, delta)
        for k in range(self.num_steps):
            c, value = self.objective.direction(ctx, ctx.x0 + delta)
            delta, c = self.observe(ctx, k, delta, c, value)
            delta = self.project(ctx, self.update(ctx, k, delta, c))
        delta = self.finish(ctx, delta)
        return (ctx.x0 + delta).clamp(0.0, 1.0).detach()

    # ---- hooks ---------------------------------------------------------------------------
    def init_delta(self, ctx: AttackContext) -> Tensor:
        """Zero, or uniform in [-eps, eps] when the option random_start is true (seeded)."""
        if not self.options.get("random_start", False):
            return torch.zeros_like(ctx.x0)
        gen = torch.Generator().manual_seed(int(self.options.get("seed", 0)))
        noise = torch.rand(ctx.x0.shape, generator=gen, dtype=ctx.x0.dtype)
        return ((2.0 * noise - 1.0) * self.eps).to(ctx.x0.device)

    def start(self, ctx: AttackContext, delta: Tensor) -> None:
        """Called once before the first step (methods set up their state here)."""

    def observe(self, ctx: AttackContext, k: int, delta: Tensor, c: Tensor, value: Tensor
                ) -> tuple[Tensor, Tensor]:
        """Sees the objective value at the current iterate; may replace iterate and direction."""
        return delta, c

    def update(self, ctx: AttackContext, k: int, delta: Tensor, c: Tensor) -> Tensor:
        """One step; the default is the exact LP step of size alpha (see `lp_step`)."""
        return self.lp_step(ctx, delta, c, self.step_size(k))

    def step_size(self, k: int) -> float:
        """Step size alpha in pixel units: option `alpha` (1/255 units) or eps / steps."""
        alpha = self.options.get("alpha")
        return self.eps / self.num_steps if alpha is None else float(alpha) / 255.0

    def finish(self, ctx: AttackContext, delta: Tensor) -> Tensor:
        """Chooses the perturbation to return (the last iterate by default)."""
        return delta

    # ---- shared pieces -------------------------------------------------------------------
    def project(self, ctx: AttackContext, delta: Tensor) -> Tensor:
        """Projection onto the eps-ball around x0 intersected with the [0, 1] box."""
        return torch.maximum(torch.minimum(delta, ctx.hi), ctx.lo)

    def lp_step(self, ctx: AttackContext, delta: Tensor, c: Tensor, alpha: float | Tensor
                ) -> Tensor:
        """delta + the exact maximiser of c . step over the box |step| <= alpha intersected with
        the feasible set (= sign step then projection; see dgba.solve_box_lp)."""
        if isinstance(alpha, Tensor):
            alpha = alpha.reshape((-1,) + (1,) * (delta.dim() - 1))
            lo = torch.maximum(ctx.lo - delta, -alpha).clamp_max(0.0)
            hi = torch.minimum(ctx.hi - delta, alpha).clamp_min(0.0)
        else:  # a float step: clamp with the scalar (same values, no ones-tensor per step)
            lo = (ctx.lo - delta).clamp(-alpha, 0.0)
            hi = (ctx.hi - delta).clamp(0.0, alpha)
        return delta + box_argmax(c, lo, hi)  # lo <= 0 <= hi by construction: no check
