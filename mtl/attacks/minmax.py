"""MINMAX objective (beyond the DGBA paper): raise the *worst* task's relative loss change.

Linearised at the current iterate, with G_t = grad L_t / L_t (per sample, denominators floored),
the step solves the LP

    max_{delta in [lo, hi]} min_t G_t . delta      (variables delta, z: max z s.t. z <= G_t . delta)

where [lo, hi] is the feasible set around the current iterate (eps-ball around the clean image
intersected with the [0, 1] pixel box, so asymmetric). Two solvers:

* 'pulp': the LP above, per sample, with CBC (exact; for small problems and as a test oracle).
* 'fast': batched in torch, in the working dtype, through the dual over the task simplex
  (minimax theorem, the box is compact): min_{w in simplex} g(w), g(w) = sum_i max(hi_i v_i,
  lo_i v_i), v = sum_t w_t G_t (`minmax_dual.solve_minmax_dual`: T = 2 one exact line search,
  T >= 3 a few active-set rounds, each a batched vertex enumeration of a local model plus an
  exact line search; tests show it reaches the CBC optimum). For the symmetric box +-eps g is
  eps * ||sum_t w_t G_t||_1; the fast path solves the same clipped box as the LP path. The step
  is the primal point delta = hi where v > 0, lo where v < 0.

The direction returned to the method is that LP solution delta (its sign is the step).
Registers the objective `minmax` (options: denominator, solver, dual_iters = the most
active-set rounds of the fast solver, which stops earlier once converged).
"""
from __future__ import annotations

import torch
from torch import Tensor

from mtl.attacks.context import (LOSS_FLOOR, AttackContext, defined_changes, forward_losses,
                                 relative_changes)
from mtl.attacks.dgba import DENOMINATOR
from mtl.attacks.lp import cbc, require_optimal
from mtl.attacks.minmax_dual import dual_value, line_min, solve_minmax_dual
from mtl.attacks.objective import Objective
from mtl.attacks.options import choice, integer
from mtl.attacks.registry import register_objective

__all__ = ["MINMAX_SOLVERS", "dual_value", "line_min", "minmax_direction", "primal_from_dual",
           "solve_minmax_dual", "solve_minmax_lp"]

MINMAX_SOLVERS = ("auto", "fast", "pulp")
AUTO_PULP_MAX_DIM = 256  # 'auto' uses CBC only when a sample has at most this many coordinates


def primal_from_dual(w: Tensor, G: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The box point maximising (sum_t w_t G_t) . delta: hi where v > 0, lo where v < 0."""
    v = torch.bmm(w.unsqueeze(1), G).squeeze(1)
    return torch.where(v > 0, hi, torch.where(v < 0, lo, torch.zeros_like(v).clamp(lo, hi)))


def solve_minmax_lp(G: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Exact LP per sample with pulp + CBC: returns (delta [B, n], optimum value [B])."""
    import pulp

    deltas, values = [], []
    for b in range(G.shape[0]):
        Gb = G[b].double().cpu().tolist()
        lb, hb = lo[b].double().cpu().tolist(), hi[b].double().cpu().tolist()
        problem = pulp.LpProblem("minmax", pulp.LpMaximize)
        xs = [problem.add_variable(f"d{i}", lb[i], hb[i]) for i in range(len(lb))]
        z = problem.add_variable("z")
        problem += z
        for t, row in enumerate(Gb):
            problem += (pulp.LpAffineExpression(list(zip(xs, row))) - z >= 0, f"task{t}")
        problem.solve(cbc())
        require_optimal(problem)
        deltas.append([x.varValue if x.varValue is not None else min(max(0.0, l), h)
                       for x, l, h in zip(xs, lb, hb)])
        values.append(z.varValue)
    return (torch.tensor(deltas, dtype=G.dtype, device=G.device),
            torch.tensor(values, dtype=G.dtype, device=G.device))


def minmax_direction(ctx: AttackContext, x: Tensor) -> tuple[Tensor, Tensor]:
    """Worst-task direction (T backward passes + one LP per sample); value = min_t of the
    relative loss change per sample."""
    x = x.detach().requires_grad_(True)
    losses = forward_losses(ctx.model, x, ctx.batch, ctx.tasks)
    if ctx.options.get("denominator", "current") == "clean":
        denom = ctx.clean_losses
    else:
        denom = losses.detach().clamp_min(LOSS_FLOOR)
    B, T = x.shape[0], len(ctx.tasks)
    solver = ctx.options.get("solver", "auto")
    exact = solver == "pulp" or (solver == "auto" and x[0].numel() <= AUTO_PULP_MAX_DIM)
    dtype = torch.float64 if exact else x.dtype  # CBC reads doubles; 'fast' the working dtype
    inv = 1.0 / denom.to(dtype)
    G = torch.empty(B, T, x[0].numel(), dtype=dtype, device=x.device)
    for t in range(T):
        (g,) = torch.autograd.grad(losses[t].sum(), x, retain_graph=t + 1 < T)
        torch.mul(g.reshape(B, -1).to(dtype), inv[t][:, None], out=G[:, t])
    delta_now = (x.detach() - ctx.x0).reshape(B, -1).to(dtype)
    lo = (ctx.lo.reshape(B, -1).to(dtype) - delta_now).clamp_max(0.0)
    hi = (ctx.hi.reshape(B, -1).to(dtype) - delta_now).clamp_min(0.0)  # round-off keeps "stay"
    if exact:
        step, _ = solve_minmax_lp(G, lo, hi)
    else:
        w, _ = solve_minmax_dual(G, lo, hi, int(ctx.options.get("dual_iters", 50)))
        step = primal_from_dual(w, G, lo, hi)
    value = _worst_relative_change(losses.detach(), ctx.clean_losses)
    return step.to(x.dtype).reshape(x.shape), value


def _worst_relative_change(losses: Tensor, clean_losses: Tensor) -> Tensor:
    """The MINMAX value: the worst (smallest) task's relative loss change, per sample [B], over
    the tasks where it is defined (a zero clean loss drops out; 0 when none is defined)."""
    defined = defined_changes(clean_losses)
    changes = relative_changes(losses, clean_losses)
    worst = torch.where(defined, changes, torch.full_like(changes, float("inf"))).amin(0)
    return torch.where(defined.any(0), worst, torch.zeros_like(worst))


register_objective(Objective(
    "minmax", minmax_direction, _worst_relative_change, backward_passes="T",
    option_specs={"denominator": DENOMINATOR, "solver": choice("auto", MINMAX_SOLVERS),
                  "dual_iters": integer(50, minimum=1)}))
