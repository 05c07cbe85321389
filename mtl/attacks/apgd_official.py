"""The DGBA authors' APGD loop ("AA" in Zhang, Liu, Mahmood, Ding, Guan 2023, arXiv 2305.12066;
their code MTLAttack-DGBA, main_r/autoattack.py), reached as `method="apgd"` with the option
`variant="official"` (see apgd.py; written from their rules, not copied).

Rules, where they differ from Croce & Hein's per-sample APGD (apgd.py's default):

* one step size for the whole batch, starting at eta_0 = eps / K (not 2 eps);
* checkpoints w_j = ceil(p_j * K), p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
  0.06) while p_j < 1, in Python floats, duplicates removed, 0 included (K = 10: 0 3 5 6 8 9 10);
* first step x_1 = clip(P(x_0 + eta_0 sign c)); later z = P(x_k + eta_k sign c) is NOT clipped
  to the [0, 1] box before the momentum mix x_{k+1} = clip(P(x_k + a (z - x_k) + (1 - a)
  (x_k - x_{k-1}))), a = 0.75 (P: projection onto the eps-ball, clip: onto [0, 1]);
* at a checkpoint w_j = k (1 <= k < K) the NEXT step size is eta_{k+1} = eta_k / 2 when
  (1) fewer than rho * (w_j - w_{j-1}) of f[i+1] > f[i], i in [w_{j-1}, w_j), or (2) eta and f
  are exactly equal at w_{j-1} and w_j; else eta_k. A halving does not restart from the best;
* the best iterate is returned: x_1 replaces x_0 only when f is strictly larger (their torch.max
  keeps the first of ties); later iterates replace the best when f >= best (ties to the newer);
* f is ONE scalar per batch (one forward per iterate, as in their loop; m_t is task t's batch
  mean: of the per-sample losses, or over valid pixels for reduction='pixel'):
  total / single:<task>: sum_t m_t; signsum: sum_t m_t (per-sample means); dgba: sum_t
  (m_t - C_t) / C_t with C_t the model's clean loss of task t on the whole evaluation set (see
  `dataset_clean_losses`), a task with C_t = 0 dropping out; any other objective: the batch
  mean of its per-sample value (not in their code). Each term is formed in float64 and added in
  the images' dtype, as their float32 `f` tensor accumulates Python floats.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mtl.attacks.context import LOSS_FLOOR, AttackContext, forward_losses
from mtl.attacks.inputs import model_device
from mtl.attacks.objective import Objective
from mtl.attacks.spec import AttackSpec

TASK_MEAN_OBJECTIVES = ("total", "single", "signsum")  # f = sum_t of the batch-mean losses


def official_checkpoints(steps: int) -> list[int]:
    """The authors' checkpoints ceil(p_j * steps), 0 included, duplicates removed."""
    ps = [0.0, 0.22]
    while (nxt := ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06)) < 1.0:
        ps.append(nxt)
    points: list[int] = []
    for p in ps:
        if (w := math.ceil(p * steps)) not in points:
            points.append(w)
    return points


def dataset_clean_losses(model: nn.Module, batches: Iterable[Mapping[str, Tensor]],
                         tasks: Sequence[str]) -> dict[str, float]:
    """DGBA's C_t as the authors compute it (main_r/no_attack.py): over the evaluation set, the
    mean over batches of each batch's clean loss averaged over its valid pixels (eval mode, no
    grad; every module's mode is restored after). Pass it as the option `clean_losses`."""
    tasks = tuple(tasks)
    totals, count = torch.zeros(len(tasks), dtype=torch.float64), 0
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                device = model_device(model, batch["image"].device)
                moved = {k: (v.to(device) if isinstance(v, Tensor) else v)
                         for k, v in batch.items()}
                losses = forward_losses(model, moved["image"], moved, tasks, "pixel")
                totals += losses.sum(1).double().cpu()
                count += 1
    finally:
        for module, mode in modes.items():
            module.training = mode
    if count == 0:
        raise ValueError("batches: yielded no batch; C_t needs the evaluation set")
    return {t: float(v) / count for t, v in zip(tasks, totals)}


def with_dataset_clean_losses(specs: Sequence[AttackSpec], model: nn.Module,
                              batches: Iterable[Mapping[str, Tensor]], tasks: Sequence[str]
                              ) -> list[AttackSpec]:
    """`specs` where each official-APGD DGBA spec without `clean_losses` gets C_t computed once
    over `batches` (the evaluation set, iterated once more) with `dataset_clean_losses`."""
    def wants(spec: AttackSpec) -> bool:
        return (spec.canonical_method == "apgd" and spec.objective == "dgba"
                and spec.options.get("variant") == "official"
                and spec.options.get("clean_losses") is None)

    if not any(wants(s) for s in specs):
        return list(specs)
    clean = dataset_clean_losses(model, batches, tasks)
    return [AttackSpec(s.method, s.objective, s.eps, s.steps,
                       {**s.options, "clean_losses": clean}) if wants(s) else s for s in specs]


def _baseline(ctx: AttackContext, clean_losses: Mapping[str, float] | None) -> Tensor:
    """C_t [T] in float64: the option's values, else this batch's clean loss averaged over its
    valid pixels (the per-batch API has no evaluation set)."""
    if clean_losses is None:
        with torch.no_grad():
            return forward_losses(ctx.model, ctx.x0, ctx.batch, ctx.tasks, "pixel").sum(1).double()
    missing = [t for t in ctx.tasks if t not in clean_losses]
    if missing:
        raise ValueError(f"clean_losses: no value for attacked task(s) {missing}; give the "
                         f"model's clean loss of every task (e.g. dataset_clean_losses(...))")
    return torch.tensor([float(clean_losses[t]) for t in ctx.tasks], dtype=torch.float64)


def batch_value(objective: Objective, ctx: AttackContext,
                clean_losses: Mapping[str, float] | None = None) -> Callable[[Tensor], float]:
    """The authors' one-scalar-per-batch objective f(x) for `objective` (module docstring)."""
    if objective.name not in (*TASK_MEAN_OBJECTIVES, "dgba"):
        return lambda x: float(objective.evaluate(ctx, x).mean())
    reduction = ctx.options.get("reduction", "sample")
    base = _baseline(ctx, clean_losses) if objective.name == "dgba" else None

    def value(x: Tensor) -> float:
        with torch.no_grad():
            losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks, reduction)
        terms = (losses.sum(1) if reduction == "pixel" else losses.mean(1)).double()
        if base is not None:
            change = (terms - base) / base.clamp_min(LOSS_FLOOR)
            terms = torch.where(base > LOSS_FLOOR, change, torch.zeros_like(change))
        f = torch.zeros((), dtype=x.dtype, device=x.device)
        for term in terms:
            f = f + term.to(x.dtype)
        return float(f)
    return value


@dataclass
class OfficialRun:
    """What one run of the loop leaves: the best iterate, f of every iterate [K + 1] and the
    step size used at every step (with the one that would follow, [K + 1])."""

    best: Tensor
    values: list[float]
    etas: list[float]


def _halve(j: int, points: Sequence[int], f: Sequence[float], etas: Sequence[Tensor],
           rho: float) -> bool:
    """Conditions 1 or 2 at checkpoint points[j] (their CheckConditionOne / Two)."""
    before, now = points[j - 1], points[j]
    increases = sum(f[i + 1] > f[i] for i in range(before, now))
    oscillating = increases < rho * (now - before)
    stalled = float(etas[before]) == float(etas[now]) and f[before] == f[now]
    return oscillating or stalled


def official_apgd(objective: Objective, ctx: AttackContext, steps: int, *, momentum: float = 0.75,
                  rho: float = 0.75, clean_losses: Mapping[str, float] | None = None
                  ) -> OfficialRun:
    """Run the authors' APGD loop on one batch (module docstring); returns an `OfficialRun`
    whose `best` holds the adversarial images."""
    f_of = batch_value(objective, ctx, clean_losses)
    x0 = ctx.x0.detach()
    upper, lower = x0 + ctx.eps, x0 - ctx.eps

    def ball(v: Tensor) -> Tensor:
        return torch.max(torch.min(v, upper), lower)

    points = official_checkpoints(steps)
    check_at = {w: j for j, w in enumerate(points) if 0 < w < steps}
    etas = [torch.tensor(ctx.eps / steps, dtype=x0.dtype, device=x0.device)]
    f = [f_of(x0)]
    best, best_f = x0, f[0]
    prev, x = x0, x0
    for k in range(steps):
        c, _ = objective.direction(ctx, x)
        z = ball(x + etas[k] * torch.sign(c))
        if k == 0:
            new = z.clamp(0.0, 1.0)
        else:
            new = ball(x + momentum * (z - x) + (1.0 - momentum) * (x - prev)).clamp(0.0, 1.0)
        f.append(f_of(new))
        if f[k + 1] > best_f or (k > 0 and f[k + 1] == best_f):
            best, best_f = new, f[k + 1]
        halve = k in check_at and _halve(check_at[k], points, f, etas, rho)
        etas.append(etas[k] / 2.0 if halve else etas[k])
        prev, x = x, new
    return OfficialRun(best.detach(), f, [float(e) for e in etas])
