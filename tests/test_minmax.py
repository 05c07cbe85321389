"""MINMAX: the fast batched dual solver reaches the CBC optimum of the worst-task LP, its primal
step is feasible, and on a real network the step beats other objectives' steps on the
linearised worst-task objective."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl.attacks.minmax import (dual_value, minmax_direction, primal_from_dual,
                                solve_minmax_dual, solve_minmax_lp)
from mtl.attacks.objectives import LOSS_FLOOR, AttackContext, forward_losses
from mtl.models import Layout, build_model

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "scene_class")
CHANNELS = {"segment_semantic": 5, "scene_class": 4}


def random_problem(seed: int, B: int, T: int, n: int, clipped: bool):
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(B, T, n, generator=g, dtype=torch.float64)
    G += 0.5 * torch.randn(B, 1, n, generator=g, dtype=torch.float64)  # tasks partly agree
    eps = 0.1
    if clipped:  # asymmetric boxes from the [0, 1] pixel clip
        x0 = torch.rand(B, n, generator=g, dtype=torch.float64)
        x0[:, : n // 3] = torch.where(x0[:, : n // 3] < 0.5, 0.0, 1.0)
        lo, hi = (x0 - eps).clamp(0, 1) - x0, (x0 + eps).clamp(0, 1) - x0
    else:
        lo, hi = torch.full((B, n), -eps, dtype=torch.float64), torch.full(
            (B, n), eps, dtype=torch.float64)
    return G, lo, hi


def worst(G, delta):
    return torch.einsum("btn,bn->bt", G, delta).amin(-1)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.sampled_from([2, 3, 5]), n=st.integers(4, 40),
       clipped=st.booleans())
def test_fast_dual_reaches_pulp_optimum(seed, T, n, clipped):
    G, lo, hi = random_problem(seed, 4, T, n, clipped)
    delta_lp, opt = solve_minmax_lp(G, lo, hi)
    w, value = solve_minmax_dual(G, lo, hi)
    scale = 0.1 * G.abs().sum(-1).amax(-1)  # the size of any task's best possible gain
    assert torch.allclose(w.sum(-1), torch.ones(4, dtype=w.dtype)) and bool((w >= 0).all())
    # weak duality: the dual value never undercuts the optimum; the solver reaches it
    assert bool((value >= opt - 1e-5 * scale).all())
    tol = 1e-9 if T == 2 else 1e-3  # T = 2 is solved exactly
    assert bool((value - opt <= tol * scale + 1e-5).all()), ((value - opt) / scale).tolist()
    # the LP's own solution is feasible and attains its optimum
    assert bool(((delta_lp >= lo - 1e-6) & (delta_lp <= hi + 1e-6)).all())
    torch.testing.assert_close(worst(G, delta_lp), opt, atol=1e-4 * float(scale.max()), rtol=0)
    # the fast primal step is feasible and never beats the optimum
    delta = primal_from_dual(w, G, lo, hi)
    assert bool(((delta >= lo) & (delta <= hi)).all())
    assert bool((worst(G, delta) <= opt + 1e-5 * scale).all())


def test_fast_primal_step_is_near_optimal_in_high_dimension():
    """For image-sized problems only T-1 coordinates are fractional at the LP optimum, so the
    sign-type primal step loses almost nothing."""
    G, lo, hi = random_problem(7, 2, 3, 600, clipped=True)
    _, opt = solve_minmax_lp(G, lo, hi)
    w, value = solve_minmax_dual(G, lo, hi)
    delta = primal_from_dual(w, G, lo, hi)
    assert bool((worst(G, delta) >= opt - 0.02 * opt.abs()).all())
    assert bool((value - opt <= 1e-6 * opt.abs() + 1e-9).all())


def test_dual_value_matches_l1_form_on_symmetric_box():
    G, lo, hi = random_problem(3, 3, 4, 20, clipped=False)
    w = torch.softmax(torch.randn(3, 4, dtype=torch.float64), -1)
    value, v = dual_value(w, G, lo, hi)
    torch.testing.assert_close(value, 0.1 * v.abs().sum(-1))


@pytest.mark.parametrize("solver", ["pulp", "fast"])
def test_minmax_step_beats_other_steps_on_worst_task(solver):
    torch.manual_seed(0)
    model = build_model(Layout.branch_point(2, len(TASKS)), list(TASKS), CHANNELS,
                        width=8).eval()
    g = torch.Generator().manual_seed(0)
    H, B = 8 if solver == "pulp" else 16, 2
    batch = {"image": torch.rand(B, 3, H, H, generator=g),
             "segment_semantic": torch.randint(0, 5, (B, H, H), generator=g),
             "depth_zbuffer": torch.rand(B, 1, H, H, generator=g) + 1.0,
             "normal": torch.nn.functional.normalize(torch.randn(B, 3, H, H, generator=g), 1),
             "scene_class": torch.randint(0, 4, (B,), generator=g)}
    ctx = AttackContext(model, batch, TASKS, batch["image"], 4 / 255,
                        {"solver": solver}).prepare()
    step, value = minmax_direction(ctx, batch["image"])
    assert torch.allclose(value, torch.zeros(B), atol=1e-6)
    x = batch["image"].clone().requires_grad_(True)
    losses = forward_losses(model, x, batch, TASKS)
    G = torch.stack([torch.autograd.grad(losses[t].sum(), x, retain_graph=True)[0].flatten(1)
                     / losses[t].detach().clamp_min(LOSS_FLOOR)[:, None]
                     for t in range(len(TASKS))], 1).double()
    lo, hi = ctx.lo.flatten(1).double(), ctx.hi.flatten(1).double()
    ours = worst(G, step.flatten(1).double())
    total = torch.einsum("btn,bt->bn", G, losses.detach().T.double())  # sum_t grad L_t
    others = {"dgba": G.sum(1), "total": total, **{t: G[:, i] for i, t in enumerate(TASKS)}}
    for name, c in others.items():
        theirs = worst(G, torch.where(c > 0, hi, torch.where(c < 0, lo, torch.zeros_like(c))))
        assert bool((ours >= theirs - 1e-4 * ours.abs()).all()), name


def test_batched_solve_matches_lapack():
    from mtl.attacks.minmax_dual import batched_solve

    g = torch.Generator().manual_seed(5)
    A = torch.randn(40, 6, 6, generator=g, dtype=torch.float64)
    A[0] = torch.eye(6, dtype=torch.float64)[[3, 1, 0, 5, 2, 4]]  # needs row swaps
    A[1, 2] = A[1, 4]  # singular
    b = torch.randn(40, 6, generator=g, dtype=torch.float64)
    x, ok = batched_solve(A, b)
    assert not bool(ok[1]) and bool(ok[0]) and int(ok.sum()) >= 35
    torch.testing.assert_close(x[ok], torch.linalg.solve(A[ok], b[ok]))


@pytest.mark.parametrize("T", [3, 6])
def test_fast_dual_in_float32_reaches_the_float64_optimum(T):
    """The attack solves in the working dtype: float32 lands within float32 round-off of the
    exact optimum (CBC), and never below it by more than that."""
    G, lo, hi = random_problem(11 + T, 3, T, 30, clipped=True)
    _, opt = solve_minmax_lp(G, lo, hi)
    w, value = solve_minmax_dual(G.float(), lo.float(), hi.float())
    assert w.dtype == torch.float32 and bool((w >= 0).all())
    exact, _ = dual_value(w.double(), G, lo, hi)  # the float32 weights, valued exactly
    scale = 0.1 * G.abs().sum(-1).amax(-1)
    assert bool((exact >= opt - 1e-5 * scale).all())
    assert bool((exact - opt <= 1e-3 * scale).all()), ((exact - opt) / scale).tolist()


def test_dropping_samples_that_stopped_keeps_the_whole_batch_result():
    """`_descend` stops working on a sample once a round leaves its w unchanged; the result is
    the one of running every sample through every round (the loop before the change)."""
    from mtl.attacks.minmax_dual import LINE_KINKS, _descend, _model_minimiser, _warm_start
    from mtl.attacks.minmax_dual import line_min

    G, lo, hi = random_problem(3, 16, 5, 300, clipped=True)
    G = G.float()
    lo, hi = lo.float(), hi.float()
    w, value, v = _warm_start(G, lo, hi, 10)
    got_w, got_value = _descend(w, value, v, G, lo, hi, 50)
    ones = torch.ones(G.shape[0])
    gnorm = (G * G).sum(1).sqrt()
    rounds = 0
    for rounds in range(1, 51):
        d = _model_minimiser(w, G, lo, hi, v, gnorm) - w
        tau = line_min(v, torch.bmm(d.unsqueeze(1), G).squeeze(1), lo, hi, ones, LINE_KINKS)
        w_new = (w + tau[:, None] * d).clamp_min(0.0)
        w_new = w_new / w_new.sum(-1, keepdim=True)
        new_value, new_v = dual_value(w_new, G, lo, hi)
        better = new_value < value
        progress = value - new_value > 16 * torch.finfo(G.dtype).eps * value.abs()
        w = torch.where(better[:, None], w_new, w)
        v = torch.where(better[:, None], new_v, v)
        value = torch.where(better, new_value, value)
        if not bool(progress.any()):
            break
    assert rounds > 2  # samples stopped at different rounds: some were dropped
    torch.testing.assert_close(got_w, w, rtol=0, atol=0)
    torch.testing.assert_close(got_value, value, rtol=0, atol=0)
