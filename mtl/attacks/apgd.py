"""APGD — Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (ICML 2020), L-inf version, on any objective.

Default variant ("croce_hein"): step size eta starts at 2 * eps; momentum 0.75 (the first step
has none): z = Proj(x_k + eta * sign(c)), x_{k+1} = Proj(x_k + a (z - x_k) + (1 - a)(x_k -
x_{k-1})). At checkpoints w_j = ceil-free integer version of p_0 = 0, p_1 = 0.22,
p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06) (times the number of steps) eta is halved for a
sample when (1) fewer than rho = 0.75 of the steps since the last checkpoint increased its
objective, or (2) its step size did not change at the last checkpoint and its best value has not
improved since; a halved sample restarts from its best point. Everything is tracked PER SAMPLE;
option per_sample=False tracks the batch mean of the per-sample values instead (a batch-level
simplification of this loop, NOT the DGBA authors' code). The per-sample best iterate is
returned. For DGBA the tracked value is the averaged relative loss change.

variant="official": the DGBA authors' loop (Zhang et al. 2023, MTLAttack-DGBA
main_r/autoattack.py; rules in apgd_official.py): eta_0 = eps / K, checkpoints ceil(p_j K)
including 0, no box clip before the momentum mix, no restart from the best, ties to the newer
iterate, and one scalar f per batch; for DGBA f = sum_t (mean_b L_tb - C_t) / C_t with C_t the
clean loss of task t over the evaluation set. C_t comes from the option clean_losses={task:
value}; whoever attacks a whole evaluation set computes it once with
`apgd_official.dataset_clean_losses` and passes it; when it is not given (the per-batch
`attack()` API) C_t is the attacked batch's clean loss averaged over its valid pixels.

Options: variant ("croce_hein" default, or "official"), momentum (default 0.75), rho (default
0.75), per_sample (default True; croce_hein only), random_start (default False; croce_hein
only), seed (default 0), clean_losses (default None; official only: {task: C_t}).
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
from torch import Tensor

from mtl.attacks.apgd_official import official_apgd
from mtl.attacks.base import RANDOM_START, SEED, AttackMethod
from mtl.attacks.context import AttackContext
from mtl.attacks.options import Option, choice, flag, number, number_mapping
from mtl.attacks.registry import register_method

VARIANTS = ("croce_hein", "official")


def apgd_checkpoints(steps: int) -> list[int]:
    """Iteration counts at which APGD checks its conditions (Croce & Hein's integer rounding;
    the DGBA authors' ceil rounding with 0 is `apgd_official.official_checkpoints`)."""
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
    """Auto-PGD with per-sample step-size control and best-iterate return (variant
    "croce_hein"), or the DGBA authors' batch-level loop (variant "official")."""

    name: ClassVar[str] = "apgd"
    option_specs: ClassVar[Mapping[str, Option]] = {
        "variant": choice("croce_hein", VARIANTS), "momentum": number(0.75, 0, 1),
        "rho": number(0.75, 0, 1), "per_sample": flag(True), "random_start": RANDOM_START,
        "seed": SEED, "clean_losses": number_mapping(0.0)}

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[str]:
        problems = super().check_options(options)
        official = options.get("variant") == "official"
        if official:
            problems += [f"option {k}: not used by variant 'official' (one value per batch, "
                         f"clean start), leave it out" for k in ("per_sample", "random_start")
                         if k in options]
        elif options.get("clean_losses") is not None:
            problems.append("option clean_losses: only used by variant 'official' (DGBA's C_t)")
        return problems

    def __call__(self, ctx: AttackContext) -> Tensor:
        if self.options["variant"] != "official":
            return super().__call__(ctx)
        run = official_apgd(self.objective, ctx, self.steps, momentum=self.options["momentum"],
                            rho=self.options["rho"], clean_losses=self.options["clean_losses"])
        B, dtype = ctx.x0.shape[0], ctx.x0.dtype
        self.history = [torch.full((B,), v, dtype=dtype, device=ctx.x0.device)
                        for v in run.values]
        self.eta = torch.full((B,), run.etas[-1], dtype=dtype, device=ctx.x0.device)
        return run.best

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
        """Objective values of every iterate, [steps + 1, B] (after a call; for variant
        "official" the batch scalar f, repeated per sample)."""
        return torch.stack(self.history)


register_method(APGD)
