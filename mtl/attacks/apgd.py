"""APGD — Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML 2020), L-inf version, on any objective.

Step size eta starts at 2 * eps; momentum 0.75 (the first step has none):
z = Proj(x_k + eta * sign(c)), x_{k+1} = Proj(x_k + a (z - x_k) + (1 - a)(x_k - x_{k-1})).
At checkpoints w_j = ceil-free integer version of p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (times the number of steps) eta is halved for a
sample when (1) fewer than rho = 0.75 of the steps since the last checkpoint increased its
objective, or (2) its step size did not change at the last checkpoint and its best value has not
improved since; a halved sample restarts from its best point. Everything is tracked PER SAMPLE
(option per_sample=False reproduces the official DGBA code, which tracks one scalar per batch:
the batch mean). The per-sample best iterate is returned. For DGBA the tracked value is the
averaged relative loss change.

Options: momentum (default 0.75), rho (default 0.75), per_sample (default True), random_start
(default False), seed (default 0).
"""
from __future__ import annotations

from typing import ClassVar, Mapping

import torch
from torch import Tensor

from mtl.attacks.base import RANDOM_START, SEED, AttackMethod
from mtl.attacks.context import AttackContext
from mtl.attacks.options import Option, flag, number
from mtl.attacks.registry import register_method


def apgd_checkpoints(steps: int) -> list[int]:
    """Iteration counts at which APGD checks its conditions (official integer rounding)."""
    first = max(int(0.22 * steps), 1)
    decrement, minimum = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, gap, at = [], first, first
    while at < steps:
        points.append(at)
        gap = max(gap - decrement, minimum)
        at += gap
    return points


def _rows(mask: Tensor, like: Tensor) -> Tensor:
    return mask.reshape((-1,) + (1,) * (like.dim() - 1))


class APGD(AttackMethod):
    """Auto-PGD with per-sample step-size control and best-iterate return."""

    name: ClassVar[str] = "apgd"
    option_specs: ClassVar[Mapping[str, Option]] = {
        "momentum": number(0.75, 0, 1), "rho": number(0.75, 0, 1), "per_sample": flag(True),
        "random_start": RANDOM_START, "seed": SEED}

    def start(self, ctx: AttackContext, delta: Tensor) -> None:
        B = delta.shape[0]
        self.eta = torch.full((B,), 2.0 * self.eps, dtype=delta.dtype, device=delta.device)
        self.prev = delta.clone()
        self.best_delta, self.best_c = delta.clone(), None
        self.best_value = torch.full((B,), float("-inf"), dtype=delta.dtype, device=delta.device)
        self.history: list[Tensor] = []
        self.checks = set(apgd_checkpoints(self.steps))
        self.last_check, self.best_at_last_check = 0, None
        self.reduced_last = torch.zeros(B, dtype=torch.bool, device=delta.device)

    def _track(self, value: Tensor) -> Tensor:
        """The value the conditions look at: per sample, or the batch mean broadcast."""
        return value if self.options["per_sample"] else value.mean().expand_as(value)

    def _remember(self, delta: Tensor, c: Tensor | None, value: Tensor) -> None:
        value = value.to(self.best_value.dtype)
        better = value > self.best_value
        if not self.options["per_sample"]:
            better = (value.mean() > self.best_value.mean()).expand_as(better)
        self.best_value = torch.where(better, value, self.best_value)
        self.best_delta = torch.where(_rows(better, delta), delta, self.best_delta)
        if c is not None:
            self.best_c = c.clone() if self.best_c is None else torch.where(
                _rows(better, c), c, self.best_c)

    def observe(self, ctx: AttackContext, k: int, delta: Tensor, c: Tensor, value: Tensor
                ) -> tuple[Tensor, Tensor]:
        self.history.append(value.detach())
        self._remember(delta, c, value)
        if self.best_at_last_check is None:
            self.best_at_last_check = self._track(self.best_value).clone()
        if k in self.checks:
            tracked = [self._track(v) for v in self.history[self.last_check:k + 1]]
            increases = sum((b > a).to(torch.float64) for a, b in zip(tracked, tracked[1:]))
            oscillating = increases < float(self.options["rho"]) * (k - self.last_check)
            best_now = self._track(self.best_value)
            stalled = ~self.reduced_last & (self.best_at_last_check >= best_now)
            halve = oscillating | stalled
            self.eta = torch.where(halve, self.eta / 2.0, self.eta)
            delta = torch.where(_rows(halve, delta), self.best_delta, delta)
            c = torch.where(_rows(halve, c), self.best_c, c)
            self.prev = torch.where(_rows(halve, delta), delta, self.prev)
            self.reduced_last, self.best_at_last_check = halve, best_now.clone()
            self.last_check = k
        return delta, c

    def update(self, ctx: AttackContext, k: int, delta: Tensor, c: Tensor) -> Tensor:
        z = self.lp_step(ctx, delta, c, self.eta)
        a = 1.0 if k == 0 else float(self.options["momentum"])
        new = delta + a * (z - delta) + (1.0 - a) * (delta - self.prev)
        self.prev = delta
        return new

    def finish(self, ctx: AttackContext, delta: Tensor) -> Tensor:
        value = self.objective.evaluate(ctx, ctx.x0 + delta)
        self.history.append(value.detach())
        self._remember(delta, None, value)
        return self.best_delta

    @property
    def history_(self) -> Tensor:
        """Objective values of every iterate, [steps + 1, B] (after a call)."""
        return torch.stack(self.history)


register_method(APGD)
