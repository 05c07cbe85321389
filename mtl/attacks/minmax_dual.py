"""Batched exact solver of the MINMAX dual: min over the task simplex of a convex piecewise-linear g.

    g(w) = sum_i max(hi_i v_i, lo_i v_i),   v = sum_t w_t G_t,   w in the simplex (T <= ~6 tasks)

g is the LP value of max_{delta in [lo, hi]} (sum_t w_t G_t) . delta, so min_w g(w) is the
optimum of the worst-task LP (minimax theorem). Its kinks are the n hyperplanes {v_i = 0}.

Method (an active-set descent, every sample of the batch at once, in the dtype of G), after a
warm start of a few Newton steps on a smoothed g (`_warm_start`, no kinks to walk):
1. around the current w, keep the m coordinates whose hyperplanes are nearest (|v_i| / |G_i|)
   and freeze the others at the bound their sign picks: the model g_A(w') = c . w' +
   sum_{i in A} max(hi_i v_i, lo_i v_i) is a minorant of g (max(hi v, lo v) >= b v for either
   bound b) that equals g near w;
2. minimise g_A exactly: its minimum lies at a vertex, the intersection of T-1 of the kink or
   face hyperplanes {v_i = 0, i in A} u {w_t = 0} with the simplex: all C(m+T, T-1) vertices are
   one batched LU solve (LAPACK's batched LU beats hand-vectorised elimination on CPU);
3. move from w towards that vertex with an exact line search on the full g (its breakpoints
   sorted, `line_min`), which never increases g and strictly decreases it unless w is optimal
   (g_A = g near w, so a direction that descends g_A descends g).
Rounds stop when no sample's g decreases by more than round-off (at most `max_rounds`); a sample
whose g did not decrease at all would only repeat its round, so it leaves the batch the later
rounds work on (`_descend`). T = 2 is one exact line search. With n <= m the model is g itself
and one round is exact.
"""
from __future__ import annotations

import itertools
from functools import lru_cache

import torch
from torch import Tensor


def dual_value(w: Tensor, G: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """g(w) [B] and v = sum_t w_t G_t [B, n] for weights w [B, T], G [B, T, n], bounds [B, n]."""
    v = torch.bmm(w.unsqueeze(1), G).squeeze(1)
    return torch.maximum(hi * v, lo * v).sum(-1), v


def line_min(v: Tensor, d: Tensor, lo: Tensor, hi: Tensor, tmax: Tensor,
             nearest: int | None = None) -> Tensor:
    """Exact argmin over tau in [0, tmax] of sum_i max(hi_i u_i, lo_i u_i), u = v + tau d.

    The function is convex piecewise linear in tau; walk its sorted breakpoints until the slope
    turns non-negative (a weighted median), batched over rows. `nearest`: walk only that many
    nearest breakpoints (a partial sort); where the minimum lies beyond them the result is the
    last one walked, a point of lower value than tau = 0 but not the minimum.
    """
    pos = (v > 0) | ((v == 0) & (d > 0))
    slope0 = (d * torch.where(pos, hi, lo)).sum(-1)
    kink = -v / d  # +-inf or nan where d = 0
    # only breakpoints ahead (tau > 0) count; the others sort last (at inf), where the walk
    # ends anyway, so their slope increments need no masking
    kink = torch.where(kink > 0, kink, torch.full_like(kink, float("inf")))
    inc = d.abs() * (hi - lo)
    if nearest is None or nearest >= kink.shape[-1]:
        sorted_kinks, order = kink.sort(-1)
        last = tmax
    else:  # the nearest breakpoints only: past the last one g still descends, stop there
        sorted_kinks, order = kink.topk(nearest, -1, largest=False)
        last = torch.minimum(sorted_kinks[:, -1], tmax)
    reached = (slope0[:, None] + inc.gather(-1, order).cumsum(-1)) >= 0
    first = reached.to(torch.int64).argmax(-1)
    tau = sorted_kinks.gather(-1, first[:, None]).squeeze(-1)
    tau = torch.where(reached.any(-1), tau, last).clamp_max(tmax)
    return torch.where(slope0 >= 0, torch.zeros_like(tau), tau)


LINE_KINKS = 64  # breakpoints a round's line search walks (the model's vertex is near)


@lru_cache(maxsize=None)
def _vertex_choices(planes: int, T: int) -> Tensor:
    """Every choice of T-1 of `planes` hyperplanes, [K, T-1] (int64; cached per shape)."""
    return torch.tensor(list(itertools.combinations(range(planes), T - 1)),
                        dtype=torch.int64).reshape(-1, T - 1)


def batched_solve(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Solutions of many tiny systems A x = b (A [..., T, T], b [..., T]) by one batched LU with
    partial pivoting. Returns (x, ok): ok is False where a pivot vanishes (|pivot| at most
    64 eps times the largest |A_ij|: singular to working precision)."""
    LU, pivots, _ = torch.linalg.lu_factor_ex(A)
    scale = A.abs().amax((-2, -1)).clamp_min(torch.finfo(A.dtype).tiny)
    ok = (LU.diagonal(dim1=-2, dim2=-1).abs()
          > 64 * torch.finfo(A.dtype).eps * scale[..., None]).all(-1)
    x = torch.linalg.lu_solve(LU, pivots, b.unsqueeze(-1)).squeeze(-1)
    return torch.where(ok[..., None], x, torch.zeros_like(x)), ok


def model_size(T: int, n: int) -> int:
    """How many kink hyperplanes the local model keeps: enough to hold the T-1 active ones with
    a margin, few enough that the C(m+T, T-1) vertices stay a small batched solve."""
    return min(n, {3: 12, 4: 6, 5: 4}.get(T, 3))


def _model_minimiser(w: Tensor, G: Tensor, lo: Tensor, hi: Tensor, v: Tensor, gnorm: Tensor
                     ) -> Tensor:
    """The vertex minimising the local minorant g_A around w (step 1-2 of the module doc);
    `gnorm` [B, n] are the norms |G_i| of the kink normals."""
    B, T, n = G.shape
    m = model_size(T, n)
    near = (v.abs() / gnorm).topk(m, dim=-1, largest=False).indices  # [B, m]
    bound = torch.where(v > 0, hi, lo)
    GA = G.gather(2, near[:, None, :].expand(B, T, m))  # [B, T, m]
    loA, hiA = lo.gather(1, near), hi.gather(1, near)
    c = torch.bmm(G, bound.unsqueeze(-1)).squeeze(-1) \
        - torch.bmm(GA, bound.gather(1, near).unsqueeze(-1)).squeeze(-1)  # [B, T]
    eye = torch.eye(T, dtype=G.dtype, device=G.device).expand(B, T, T)
    planes = torch.cat([GA.transpose(1, 2), eye], 1)  # [B, m + T, T] normals, rhs 0
    choice = _vertex_choices(m + T, T).to(G.device)  # [K, T-1]
    K = choice.shape[0]
    rows = planes[:, choice]  # [B, K, T-1, T]
    ones = torch.ones(B, K, 1, T, dtype=G.dtype, device=G.device)
    A = torch.cat([rows, ones], 2)
    rhs = torch.zeros(B, K, T, dtype=G.dtype, device=G.device)
    rhs[..., -1] = 1.0
    cand, ok = batched_solve(A, rhs)  # [B, K, T]
    tol = 1e3 * torch.finfo(G.dtype).eps
    ok = ok & torch.isfinite(cand).all(-1) & (cand >= -tol).all(-1)
    cand = torch.where(ok[..., None], cand.clamp_min(0.0), torch.zeros_like(cand))
    cand = cand / cand.sum(-1, keepdim=True).clamp_min(torch.finfo(G.dtype).tiny)
    vA = torch.bmm(cand, GA)  # [B, K, m]
    value = (cand * c[:, None, :]).sum(-1) \
        + torch.maximum(hiA[:, None, :] * vA, loA[:, None, :] * vA).sum(-1)
    value = torch.where(ok, value, torch.full_like(value, float("inf")))
    best = value.argmin(-1)
    found = ok.any(-1)
    target = cand.gather(1, best[:, None, None].expand(B, 1, T)).squeeze(1)
    return torch.where(found[:, None], target, w)


def _warm_start(G: Tensor, lo: Tensor, hi: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Newton steps on a smoothed, barrier-kept g from the uniform weights, so that the first
    active-set round starts next to the optimum's kinks (a warm start only: the exact rounds
    accept nothing that raises g). With max(hi u, lo u) = m u + r |u| (m, r the box's centre
    and half-width), |u| is smoothed to sqrt(u^2 + mu^2) and w > 0 kept by -beta sum log w;
    mu and beta shrink 3x per step. Returns the best (w, g(w), v) seen."""
    B, T, _ = G.shape
    w = torch.full((B, T), 1.0 / T, dtype=G.dtype, device=G.device)
    best, best_v = dual_value(w, G, lo, hi)
    best_w, v = w, best_v
    mid, half = 0.5 * (hi + lo), 0.5 * (hi - lo)
    c = torch.bmm(G, mid.unsqueeze(-1)).squeeze(-1)  # [B, T]
    tiny = torch.finfo(G.dtype).tiny
    mu = v.abs().mean(-1, keepdim=True).clamp_min(tiny)  # [B, 1]
    beta = 0.1 * best.abs().clamp_min(tiny) / T  # [B]
    kkt = torch.zeros(B, T + 1, T + 1, dtype=G.dtype, device=G.device)
    kkt[:, :T, T] = 1.0
    kkt[:, T, :T] = 1.0
    rhs = torch.zeros(B, T + 1, dtype=G.dtype, device=G.device)
    for _ in range(steps):
        root = (v * v + mu * mu).sqrt()
        grad = c + torch.bmm(G, (half * v / root).unsqueeze(-1)).squeeze(-1) - beta[:, None] / w
        curv = half * mu * mu / root ** 3  # [B, n]
        hess = torch.bmm(G * curv[:, None, :], G.transpose(1, 2))
        kkt[:, :T, :T] = hess + torch.diag_embed(beta[:, None] / (w * w))
        rhs[:, :T] = -grad
        sol, info = torch.linalg.solve_ex(kkt, rhs)
        dw = torch.where((info == 0)[:, None] & torch.isfinite(sol[:, :T]), sol[:, :T],
                         torch.zeros_like(w))
        shrink = torch.where(dw < 0, -0.9 * w / dw.clamp_max(-tiny), torch.ones_like(w))
        w = (w + shrink.amin(-1, keepdim=True).clamp_max(1.0) * dw).clamp_min(tiny)
        w = w / w.sum(-1, keepdim=True)
        value, v = dual_value(w, G, lo, hi)
        better = value < best
        best = torch.where(better, value, best)
        best_v = torch.where(better[:, None], v, best_v)
        best_w = torch.where(better[:, None], w, best_w)
        mu, beta = mu / 3.0, beta / 3.0
    return best_w, best, best_v


def solve_minmax_dual(G: Tensor, lo: Tensor, hi: Tensor, max_rounds: int = 50,
                      warm_steps: int = 10) -> tuple[Tensor, Tensor]:
    """min over the task simplex of g(w); returns (w [B, T], g(w) [B]), g(w) >= the LP optimum
    (weak duality) and equal to it at the exact solution. Bounds need lo <= hi. Works in G's
    dtype; stops when a round lowers no sample's g by more than round-off (at most
    `max_rounds` rounds, see `_descend`)."""
    B, T, n = G.shape
    if T == 1:
        w = torch.ones(B, 1, dtype=G.dtype, device=G.device)
        return w, dual_value(w, G, lo, hi)[0]
    if T == 2:
        ones = torch.ones(B, dtype=G.dtype, device=G.device)
        tau = line_min(G[:, 1], G[:, 0] - G[:, 1], lo, hi, ones)
        w = torch.stack([tau, 1.0 - tau], -1)
        return w, dual_value(w, G, lo, hi)[0]
    w, value, v = _warm_start(G, lo, hi, warm_steps)
    return _descend(w, value, v, G, lo, hi, max_rounds)


def _descend(w: Tensor, value: Tensor, v: Tensor, G: Tensor, lo: Tensor, hi: Tensor,
             max_rounds: int) -> tuple[Tensor, Tensor]:
    """Active-set rounds (steps 1-3 of the module doc) from w until no sample's g decreases by
    more than round-off. A round that does not lower a sample's g leaves its w as it was, so the
    next would repeat it: that sample leaves, and later rounds work on the others only (the same
    result as running every sample, at the cost of the batch's stragglers)."""
    w_out, value_out = w.clone(), value.clone()
    idx = torch.arange(G.shape[0], device=G.device)  # the samples still descending
    ones = torch.ones(G.shape[0], dtype=G.dtype, device=G.device)
    gnorm = (G * G).sum(1).sqrt().clamp_min(torch.finfo(G.dtype).tiny)
    for _ in range(max_rounds):
        target = _model_minimiser(w, G, lo, hi, v, gnorm)
        d = target - w
        tau = line_min(v, torch.bmm(d.unsqueeze(1), G).squeeze(1), lo, hi, ones, LINE_KINKS)
        w_new = (w + tau[:, None] * d).clamp_min(0.0)
        w_new = w_new / w_new.sum(-1, keepdim=True)
        new_value, new_v = dual_value(w_new, G, lo, hi)
        better = new_value < value
        progress = value - new_value > 16 * torch.finfo(G.dtype).eps * value.abs()
        w = torch.where(better[:, None], w_new, w)
        value = torch.where(better, new_value, value)
        w_out.index_copy_(0, idx, w)
        value_out.index_copy_(0, idx, value)
        moved, gained = torch.stack([better.sum(), progress.sum()]).tolist()  # one host sync
        if gained == 0:
            break
        v = torch.where(better[:, None], new_v, v)
        if moved < idx.shape[0]:  # a sample whose w stayed would repeat this round: drop it
            keep = better.nonzero().squeeze(1)
            idx, w, value, v, G, lo, hi, gnorm, ones = (
                t.index_select(0, keep) for t in (idx, w, value, v, G, lo, hi, gnorm, ones))
    return w_out, value_out
