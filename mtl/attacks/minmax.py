"""MINMAX objective (beyond the DGBA paper): raise the *worst* task's relative loss change.

Linearised at the current iterate, with G_t = grad L_t / L_t (per sample, denominators floored),
the step solves the LP

    max_{delta in [lo, hi]} min_t G_t . delta      (variables delta, z: max z s.t. z <= G_t . delta)

where [lo, hi] is the feasible set around the current iterate (eps-ball around the clean image
intersected with the [0, 1] pixel box, so asymmetric). Two solvers:

* 'pulp': the LP above, per sample, with CBC (exact; for small problems and as a test oracle).
* 'fast': batched in torch through the dual over the task simplex (minimax theorem, the box is
  compact): min_{w in simplex} g(w), g(w) = sum_i max(hi_i v_i, lo_i v_i), v = sum_t w_t G_t.
  For the symmetric box +-eps this is eps * min_w ||sum_t w_t G_t||_1; the asymmetric form is
  just as cheap, so the fast path solves the same clipped box as the LP path. T = 2 is solved
  exactly (weighted median over the breakpoints); T >= 3 by exponentiated subgradient descent
  followed by an active-set polish (solve for the vertex where T-1 coordinates of v vanish),
  which tests show reaches the CBC optimum on random problems. The step is the primal point
  delta = hi where v > 0, lo where v < 0.

The direction returned to the method is that LP solution delta (its sign is the step).
Registers the objective `minmax` (options: denominator, solver, dual_iters).
"""
from __future__ import annotations

import itertools

import torch
from torch import Tensor

from mtl.attacks.context import (LOSS_FLOOR, AttackContext, defined_changes, forward_losses,
                                 relative_changes)
from mtl.attacks.dgba import DENOMINATOR
from mtl.attacks.lp import cbc, require_optimal
from mtl.attacks.objective import Objective
from mtl.attacks.options import choice, integer
from mtl.attacks.registry import register_objective

MINMAX_SOLVERS = ("auto", "fast", "pulp")
AUTO_PULP_MAX_DIM = 256  # 'auto' uses CBC only when a sample has at most this many coordinates


def dual_value(w: Tensor, G: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """g(w) [B] and v = sum_t w_t G_t [B, n] for weights w [B, T], G [B, T, n], bounds [B, n]."""
    v = torch.einsum("bt,btn->bn", w, G)
    return torch.maximum(hi * v, lo * v).sum(-1), v


def _line_min(v: Tensor, d: Tensor, lo: Tensor, hi: Tensor, tmax: Tensor) -> Tensor:
    """Exact argmin over tau in [0, tmax] of sum_i max(hi_i u_i, lo_i u_i), u = v + tau d.

    The function is convex piecewise linear in tau; walk its sorted breakpoints until the slope
    turns non-negative (a weighted median), batched over rows.
    """
    pos = (v > 0) | ((v == 0) & (d > 0))
    slope0 = (d * torch.where(pos, hi, lo)).sum(-1)
    kink = -v / torch.where(d == 0, torch.ones_like(d), d)
    valid = (d != 0) & (kink > 0)
    kink = torch.where(valid, kink, torch.full_like(kink, float("inf")))
    inc = torch.where(valid, d.abs() * (hi - lo), torch.zeros_like(d))
    sorted_kinks, order = kink.sort(-1)
    reached = (slope0[:, None] + inc.gather(-1, order).cumsum(-1)) >= 0
    first = reached.to(torch.int64).argmax(-1)
    tau = sorted_kinks.gather(-1, first[:, None]).squeeze(-1)
    tau = torch.where(reached.any(-1), tau, tmax).clamp_max(tmax)
    return torch.where(slope0 >= 0, torch.zeros_like(tau), tau)


def _polish(w: Tensor, G: Tensor, lo: Tensor, hi: Tensor, extra: int = 3) -> Tensor:
    """Active-set polish: try the vertices of g near w — for every subset of tasks with positive
    weight, the point where |subset|-1 of the coordinates with the smallest |v| vanish — and keep
    any that lowers g."""
    B, T, n = G.shape
    best, v = dual_value(w, G, lo, hi)
    order = (v.abs() / G.abs().sum(1).clamp_min(1e-30)).argsort(-1)
    for t in range(T):  # the simplex vertices (one task alone)
        cand = torch.zeros_like(w)
        cand[:, t] = 1.0
        value, _ = dual_value(cand, G, lo, hi)
        better = value < best
        best = torch.where(better, value, best)
        w = torch.where(better[:, None], cand, w)
    for free_count in range(T, 1, -1):
        for subset in itertools.combinations(range(T), free_count):
            free = torch.tensor(subset, device=G.device).expand(B, free_count)
            Gf = G[:, list(subset)]
            rhs = torch.zeros(B, free_count, dtype=G.dtype, device=G.device)
            rhs[:, -1] = 1.0
            for zeros in itertools.combinations(range(min(n, free_count - 1 + extra)),
                                                free_count - 1):
                idx = order[:, list(zeros)]
                A = Gf.gather(2, idx[:, None, :].expand(B, free_count, free_count - 1))
                A = torch.cat([A.transpose(1, 2), torch.ones_like(rhs[:, None, :])], 1)
                sol, info = torch.linalg.solve_ex(A, rhs)
                ok = (info == 0) & torch.isfinite(sol).all(-1) & (sol >= -1e-9).all(-1)
                sol = torch.nan_to_num(sol).clamp_min(0)
                sol = sol / sol.sum(-1, keepdim=True).clamp_min(1e-30)
                cand = torch.zeros_like(w).scatter(1, free, sol)
                value, _ = dual_value(cand, G, lo, hi)
                better = ok & (value < best)
                best = torch.where(better, value, best)
                w = torch.where(better[:, None], cand, w)
    return w


def solve_minmax_dual(G: Tensor, lo: Tensor, hi: Tensor, iters: int = 100
                      ) -> tuple[Tensor, Tensor]:
    """min over the task simplex of g(w); returns (w [B, T], g(w) [B]), g(w) >= the LP optimum
    (weak duality) and equal to it at the exact solution. Bounds need lo <= hi."""
    B, T, _ = G.shape
    if T == 1:
        w = torch.ones(B, 1, dtype=G.dtype, device=G.device)
    elif T == 2:
        w = torch.zeros(B, 2, dtype=G.dtype, device=G.device)
        w[:, 1] = 1.0
        tau = _line_min(G[:, 1], G[:, 0] - G[:, 1], lo, hi, torch.ones_like(w[:, 0]))
        w = torch.stack([tau, 1.0 - tau], -1)
    else:
        w = torch.full((B, T), 1.0 / T, dtype=G.dtype, device=G.device)
        best_w, best = w, dual_value(w, G, lo, hi)[0]
        for k in range(iters):
            value, v = dual_value(w, G, lo, hi)
            better = value < best
            best = torch.where(better, value, best)
            best_w = torch.where(better[:, None], w, best_w)
            sub = torch.einsum("btn,bn->bt", G, torch.where(v > 0, hi, lo))
            scale = sub.abs().amax(-1, keepdim=True).clamp_min(1e-30)
            w = w * torch.exp(-(2.0 / (k + 1) ** 0.5) * sub / scale)
            w = w / w.sum(-1, keepdim=True)
        w = _polish(best_w, G, lo, hi)
    return w, dual_value(w, G, lo, hi)[0]


def primal_from_dual(w: Tensor, G: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """The box point maximising (sum_t w_t G_t) . delta: hi where v > 0, lo where v < 0."""
    v = torch.einsum("bt,btn->bn", w, G)
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
    grads = []
    for t in range(T):
        (g,) = torch.autograd.grad(losses[t].sum(), x, retain_graph=t + 1 < T)
        grads.append(g.reshape(B, -1).double() / denom[t].double()[:, None])
    G = torch.stack(grads, 1)
    delta_now = (x.detach() - ctx.x0).reshape(B, -1).double()
    lo = ctx.lo.reshape(B, -1).double() - delta_now
    hi = ctx.hi.reshape(B, -1).double() - delta_now
    lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)  # float round-off must not exclude "stay"
    solver = ctx.options.get("solver", "auto")
    if solver == "pulp" or (solver == "auto" and G.shape[-1] <= AUTO_PULP_MAX_DIM):
        step, _ = solve_minmax_lp(G, lo, hi)
    else:
        w, _ = solve_minmax_dual(G, lo, hi, iters=int(ctx.options.get("dual_iters", 100)))
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
                  "dual_iters": integer(100, minimum=1)}))
