"""DGBA: Dynamic Gradient Balancing Attack (Zhang, Liu, Mahmood, Ding, Guan 2023, arXiv 2305.12066).

DGBA maximises the *averaged relative loss change* (1/T) sum_t (L_t(x+delta) - L_t^0) / L_t^0 of a
multi-task model under an L-inf budget and the [0, 1] pixel box. Linearised at the current iterate
with the current losses as denominators, the ascent direction is

    c = sum_t grad_x L_t / L_t = grad_x sum_t log L_t          (per sample, ONE backward pass)

and the step is a linear program max c . delta s.t. lo <= delta <= hi. Its constraints are only a
box, so it separates per coordinate and the closed form below is its exact optimum; the ILP view
(delta = eps * s, s in {-1, +1}^n) is solved by s = sign(c). Both have a pulp (CBC) path that the
tests use as an oracle.

This module holds the solvers, the one-backward DGBA direction used by the attack loop, and a
T-backward reference of the same direction for tests and benchmarks.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtl.attacks.objectives import (LOSS_FLOOR, AttackContext, forward_losses,
                                    mean_relative_change)

LP_SOLVERS = ("closed_form", "pulp")
DENOMINATORS = ("current", "clean")


def _check_solver(solver: str) -> None:
    if solver not in LP_SOLVERS:
        raise ValueError(f"solver: unknown value {solver!r}; allowed: {list(LP_SOLVERS)}")


def _cbc() -> "pulp.PULP_CBC_CMD":  # noqa: F821
    """PuLP's bundled CBC, quiet. PuLP 3.3 marks PULP_CBC_CMD deprecated in favour of a separately
    installed CBC (COIN_CMD), which this environment does not have, so the warning is muted."""
    import pulp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False)


def _pulp_optimal(problem: "pulp.LpProblem") -> None:  # noqa: F821 - pulp imported lazily
    """Raise unless CBC proved optimality (PuLP may say 'Optimal' after a time limit: read
    `sol_status`, see DESIGN.md section 8)."""
    import pulp

    if problem.status != pulp.LpStatusOptimal or problem.sol_status != pulp.LpSolutionOptimal:
        raise RuntimeError(f"pulp/CBC did not prove optimality: status="
                           f"{pulp.LpStatus[problem.status]!r}, "
                           f"sol_status={pulp.LpSolution[problem.sol_status]!r}")


def solve_box_lp(c: Tensor, lo: Tensor, hi: Tensor, solver: str = "closed_form") -> Tensor:
    """Exact maximiser of c . delta subject to lo <= delta <= hi (element-wise, any shape).

    closed_form: delta = hi where c > 0, lo where c < 0, and for c == 0 (every value is optimal)
    the point of [lo, hi] closest to 0, i.e. "do not move" when the box contains 0.
    pulp: the same LP written for CBC (an oracle for tests; slow on large tensors; CBC reports
    values to about 1e-6).
    """
    _check_solver(solver)
    if not (c.shape == lo.shape == hi.shape):
        raise ValueError(f"c, lo, hi: shapes must match, got {tuple(c.shape)}, "
                         f"{tuple(lo.shape)}, {tuple(hi.shape)}")
    if bool((lo > hi).any()):
        raise ValueError("lo, hi: need lo <= hi element-wise")
    tie = torch.zeros_like(c).clamp(lo, hi)
    if solver == "closed_form":
        return torch.where(c > 0, hi, torch.where(c < 0, lo, tie))
    import pulp

    cf, lf, hf = (t.detach().reshape(-1).double().cpu().tolist() for t in (c, lo, hi))
    problem = pulp.LpProblem("box_lp", pulp.LpMaximize)
    xs = [problem.add_variable(f"d{i}", lf[i], hf[i]) for i in range(len(cf))]
    problem += pulp.LpAffineExpression(list(zip(xs, cf)))
    problem.solve(_cbc())
    _pulp_optimal(problem)
    out = [v.varValue if v.varValue is not None else t for v, t in
           zip(xs, tie.reshape(-1).tolist())]
    return torch.tensor(out, dtype=c.dtype, device=c.device).reshape(c.shape)


def solve_sign_ilp(c: Tensor, solver: str = "closed_form") -> Tensor:
    """Exact maximiser of c . s over s in {-1, +1}^n (the ILP view of one eps-step, delta = eps*s).

    closed_form: s = +1 where c >= 0 else -1 (for c == 0 both signs are optimal).
    pulp: binary variables b with s = 2b - 1, solved by CBC.
    """
    _check_solver(solver)
    if solver == "closed_form":
        return torch.where(c >= 0, torch.ones_like(c), -torch.ones_like(c))
    import pulp

    cf = c.detach().reshape(-1).double().cpu().tolist()
    problem = pulp.LpProblem("sign_ilp", pulp.LpMaximize)
    bs = [problem.add_variable(f"b{i}", cat=pulp.LpBinary) for i in range(len(cf))]
    problem += pulp.LpAffineExpression([(b, 2.0 * ci) for b, ci in zip(bs, cf)]) - sum(cf)
    problem.solve(_cbc())
    _pulp_optimal(problem)
    out = [2.0 * (b.varValue if b.varValue is not None else 1.0) - 1.0 for b in bs]
    return torch.tensor(out, dtype=c.dtype, device=c.device).reshape(c.shape)


def dgba_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """The DGBA ascent direction with ONE backward pass, and the per-sample objective value.

    denominator 'current' (default, the official code's "dynamic" weighting): c = grad sum_t log L_t;
    'clean': c = grad sum_t L_t / L_t^0 with the clean losses computed once. Losses are floored at
    1e-8, so a task with zero loss (or no valid pixel) contributes nothing instead of NaN/inf.
    Value: the averaged relative loss change (1/T) sum_t (L_t - L_t^0) / L_t^0 per sample.
    """
    x = x.detach().requires_grad_(True)
    losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks)
    if ctx.options.get("denominator", "current") == "clean":
        objective = (losses / ctx.clean_losses).sum()
    else:
        objective = torch.log(losses.clamp_min(LOSS_FLOOR)).sum()
    (c,) = torch.autograd.grad(objective, x)
    return c, mean_relative_change(losses.detach(), ctx.clean_losses)


def dgba_direction_reference(model: nn.Module, x: Tensor, batch: Mapping[str, Tensor],
                             tasks: Sequence[str], denominator: str = "current",
                             clean_losses: Tensor | None = None) -> Tensor:
    """Reference DGBA direction with T backward passes: sum_t grad L_t / L_t (per sample).

    Mirrors the flooring of `dgba_direction`: a task whose loss is below 1e-8 contributes 0.
    `clean_losses` [T, B] is required for denominator='clean'. Used by tests and bench only.
    """
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator: unknown value {denominator!r}; allowed: {list(DENOMINATORS)}")
    x = x.detach().requires_grad_(True)
    losses = forward_losses(model, x, batch, tuple(tasks))
    if denominator == "clean":
        if clean_losses is None:
            raise ValueError("clean_losses: required when denominator='clean'")
        denom = clean_losses.clamp_min(LOSS_FLOOR)
        keep = torch.ones_like(denom)
    else:
        denom = losses.detach().clamp_min(LOSS_FLOOR)
        keep = (losses.detach() >= LOSS_FLOOR).to(x.dtype)
    c = torch.zeros_like(x)
    view = (-1,) + (1,) * (x.dim() - 1)
    for t in range(len(tasks)):
        (g,) = torch.autograd.grad(losses[t].sum(), x, retain_graph=t + 1 < len(tasks))
        c = c + g * (keep[t] / denom[t]).reshape(view)
    return c
