"""DGBA: exact box-LP / sign-ILP solvers (closed form == CBC), the one-backward direction vs the
T-backward reference, optimality of the DGBA step on the linearised objective, NaN safety."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtl.attacks import attack
from mtl.attacks.dgba import (dgba_direction, dgba_direction_reference, solve_box_lp,
                              solve_sign_ilp)
from mtl.attacks.objectives import LOSS_FLOOR, AttackContext, forward_losses
from mtl.models import Layout, build_model
from random_batches import CHANNELS, TASKS, random_batch



def make_model(seed: int = 0, k: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(Layout.branch_point(k, len(TASKS)), list(TASKS), CHANNELS, width=8)


def make_batch(B: int = 4, H: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(B, H, seed)


coef = st.sampled_from([-2.0, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 3.0])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(coef, st.floats(-1, 1), st.floats(0, 1)), min_size=1, max_size=12))
def test_box_lp_closed_form_equals_pulp(items):
    c = torch.tensor([i[0] for i in items], dtype=torch.float64)
    lo = torch.tensor([i[1] for i in items], dtype=torch.float64)
    hi = lo + torch.tensor([i[2] for i in items], dtype=torch.float64)  # includes lo == hi
    closed, oracle = solve_box_lp(c, lo, hi), solve_box_lp(c, lo, hi, solver="pulp")
    for d in (closed, oracle):
        assert bool(((d >= lo - 1e-6) & (d <= hi + 1e-6)).all())  # CBC prints ~1e-6
    assert float(c @ closed) == pytest.approx(float(c @ oracle), abs=1e-5)
    # the tie rule: a zero coefficient stays as close to 0 as the box allows
    zero = c == 0
    assert torch.equal(closed[zero], torch.zeros_like(lo[zero]).clamp(lo[zero], hi[zero]))


@settings(max_examples=20, deadline=None)
@given(st.lists(coef, min_size=1, max_size=12))
def test_sign_ilp_closed_form_equals_pulp(cs):
    c = torch.tensor(cs, dtype=torch.float64)
    closed, oracle = solve_sign_ilp(c), solve_sign_ilp(c, solver="pulp")
    assert set(closed.tolist()) <= {-1.0, 1.0} and set(oracle.tolist()) <= {-1.0, 1.0}
    assert float(c @ closed) == pytest.approx(float(c @ oracle), abs=1e-9)
    assert float(c @ closed) == pytest.approx(float(c.abs().sum()))


def test_box_lp_bad_input_raises():
    c = torch.zeros(3)
    with pytest.raises(ValueError, match="solver"):
        solve_box_lp(c, c, c, solver="cplex")
    with pytest.raises(ValueError, match="shapes"):
        solve_box_lp(c, torch.zeros(2), c)
    with pytest.raises(ValueError, match="lo <= hi"):
        solve_box_lp(c, torch.ones(3), torch.zeros(3))


def _per_task_grads(model, batch, x):
    x = x.detach().requires_grad_(True)
    losses = forward_losses(model, x, batch, TASKS)
    grads = [torch.autograd.grad(losses[t].sum(), x, retain_graph=True)[0]
             for t in range(len(TASKS))]
    return torch.stack(grads), losses.detach()


def test_dgba_step_never_worse_on_linearised_objective_than_baselines():
    """Under the same box, the DGBA step maximises sum_t g_t . delta / L_t: it beats (or ties)
    the TOTAL, SignSum and every SINGLE step on that linearised objective, per sample."""
    model = make_model().eval()
    batch = make_batch(B=6)
    x0 = batch["image"]
    grads, losses = _per_task_grads(model, batch, x0)
    view = (len(TASKS), -1, 1, 1, 1)
    c_dgba = (grads / losses.clamp_min(LOSS_FLOOR).reshape(view)).sum(0)
    eps = 4 / 255
    lo, hi = (x0 - eps).clamp(0, 1) - x0, (x0 + eps).clamp(0, 1) - x0
    competitors = {"total": grads.sum(0), "signsum": grads.sign().sum(0),
                   **{f"single:{t}": grads[i] for i, t in enumerate(TASKS)}}

    def linearised(delta):
        return (c_dgba * delta).flatten(1).sum(1)

    best = linearised(solve_box_lp(c_dgba, lo, hi))
    for name, c in competitors.items():
        other = linearised(solve_box_lp(c, lo, hi))
        assert bool((best >= other - 1e-6 * best.abs().clamp_min(1)).all()), name
    assert bool((best > 0).all())


@pytest.mark.parametrize("denominator", ["current", "clean"])
def test_one_backward_direction_matches_reference_in_sign(denominator):
    model = make_model(seed=1).eval()
    batch = make_batch(B=4, seed=1)
    x = (batch["image"] + 0.01 * torch.randn_like(batch["image"])).clamp(0, 1)
    ctx = AttackContext(model, batch, TASKS, batch["image"], 8 / 255,
                        {"denominator": denominator}).prepare()
    c, value = dgba_direction(ctx, x)
    ref = dgba_direction_reference(model, x, batch, TASKS, denominator, ctx.clean_losses)
    assert c.shape == x.shape and value.shape == (4,)
    big = ref.abs() > 1e-6 * ref.abs().max()
    agree = (torch.sign(c) == torch.sign(ref))[big].double().mean().item()
    assert agree > 0.999
    torch.testing.assert_close(c, ref, rtol=1e-3, atol=1e-6 * ref.abs().max().item())


def test_dgba_value_is_averaged_relative_loss_change():
    model = make_model(seed=2).eval()
    batch = make_batch(B=3, seed=2)
    ctx = AttackContext(model, batch, TASKS, batch["image"], 8 / 255).prepare()
    _, at_clean = dgba_direction(ctx, batch["image"])
    assert torch.allclose(at_clean, torch.zeros(3), atol=1e-6)
    x = (batch["image"] + 0.05).clamp(0, 1)
    _, value = dgba_direction(ctx, x)
    with torch.no_grad():
        losses = forward_losses(model, x, batch, TASKS)
    expected = ((losses - ctx.clean_losses) / ctx.clean_losses).mean(0)
    torch.testing.assert_close(value, expected)


def test_zero_loss_and_no_valid_pixels_give_finite_directions():
    """A sample whose segmentation is all 'ignore' and depth all masked has zero loss on those
    tasks: the floored DGBA weights must keep every direction and the attack finite."""
    model = make_model(seed=3).eval()
    batch = make_batch(B=3, seed=3)
    batch["segment_semantic"][0] = 255
    batch["depth_zbuffer_mask"] = torch.ones_like(batch["depth_zbuffer"], dtype=torch.bool)
    batch["depth_zbuffer_mask"][1] = False
    for denominator in ("current", "clean"):
        ctx = AttackContext(model, batch, TASKS, batch["image"], 8 / 255,
                            {"denominator": denominator}).prepare()
        assert float(ctx.clean_losses[0, 0]) == pytest.approx(LOSS_FLOOR)  # zero loss, floored
        c, value = dgba_direction(ctx, batch["image"])
        assert bool(torch.isfinite(c).all()) and bool(torch.isfinite(value).all())
        ref = dgba_direction_reference(model, batch["image"], batch, TASKS, denominator,
                                       ctx.clean_losses)
        assert bool(torch.isfinite(ref).all())
    for objective in ("dgba", "minmax", "signsum", "total", "single:segment_semantic"):
        adv = attack(model, batch, method="pgd", objective=objective, eps=8, steps=2)
        assert bool(torch.isfinite(adv).all()), objective


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), T=st.integers(1, 5), n=st.integers(1, 30),
       zero_loss=st.booleans())
def test_dgba_step_dominates_on_random_linearisations(seed, T, n, zero_loss):
    g = torch.Generator().manual_seed(seed)
    grads = torch.randn(T, n, generator=g, dtype=torch.float64)
    grads[:, : n // 4] = 0.0  # ties: coordinates no task cares about
    losses = torch.rand(T, generator=g, dtype=torch.float64) * 3
    if zero_loss:
        losses[0] = 0.0
    x0 = torch.rand(n, generator=g, dtype=torch.float64)
    lo, hi = (x0 - 0.05).clamp(0, 1) - x0, (x0 + 0.05).clamp(0, 1) - x0
    keep = (losses >= LOSS_FLOOR).to(grads.dtype)
    c_dgba = (grads * (keep / losses.clamp_min(LOSS_FLOOR))[:, None]).sum(0)
    best = float(c_dgba @ solve_box_lp(c_dgba, lo, hi))
    for c in [grads.sum(0), grads.sign().sum(0), *grads]:
        assert best >= float(c_dgba @ solve_box_lp(c, lo, hi)) - 1e-9 * max(1.0, abs(best))
