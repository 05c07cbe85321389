"""Relative-change values with a clean loss of exactly 0: float32 cross-entropy is exactly 0 once
the logit margin exceeds ~17. Such a task has no relative change for that sample and drops out
of its value (DGBA, SignSum, MINMAX) instead of contributing (L - 1e-8) / 1e-8 ~ 1e8 * L."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mtl.attacks import attack
from mtl.attacks.context import (LOSS_FLOOR, AttackContext, forward_losses, mean_relative_change,
                                 relative_changes)
from mtl.attacks.registry import get_objective

SEG, DEPTH = "segment_semantic", "depth_zbuffer"
TASKS = (SEG, DEPTH)


class SteepNet(nn.Module):
    """Class-0 logit 3000 * (x_red - 1) + 100: margin 100 (CE exactly 0) on a red pixel of 1.0,
    about 6 (CE > 0) once the attack lowers red by 8/255; depth follows green linearly."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        zero = torch.zeros_like(x[:, :1])
        seg = torch.cat([3000.0 * (x[:, :1] - 1.0) + 100.0, zero, zero], 1)
        return {SEG: seg, DEPTH: 2.0 * x[:, 1:2] + 0.1 * x[:, 2:3]}


def batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 3, 4, 4, generator=g) * 0.5
    image[0, 0] = 1.0  # sample 0: margin 100 everywhere, clean CE exactly 0
    return {"image": image, SEG: torch.zeros(3, 4, 4, dtype=torch.long),
            DEPTH: torch.rand(3, 1, 4, 4, generator=g) + 1.0}


def test_clean_cross_entropy_is_exactly_zero_and_drops_out_of_the_value():
    b, model = batch(), SteepNet()
    with torch.no_grad():
        clean = forward_losses(model, b["image"], b, TASKS)
    assert clean.dtype == torch.float32 and float(clean[0, 0]) == 0.0
    assert bool((clean[0, 1:] > 0).all())  # the other samples' CE is positive
    ctx = AttackContext(model, b, TASKS, b["image"], 8 / 255).prepare()
    x = b["image"].clone()
    x[0, 0] -= 8 / 255  # margin ~6: the CE of sample 0 becomes positive
    x[:, 1] += 8 / 255  # depth rises for every sample
    with torch.no_grad():
        losses = forward_losses(model, x, b, TASKS)
    assert float(losses[0, 0]) > 1e-4
    # what the floored formula gave: (L - 1e-8) / 1e-8, i.e. millions
    assert float((losses[0, 0] - LOSS_FLOOR) / LOSS_FLOOR) > 1e4
    depth_change = (losses[1, 0] - ctx.clean_losses[1, 0]) / ctx.clean_losses[1, 0]
    assert abs(float(depth_change)) > 1e-3
    assert float(relative_changes(losses, ctx.clean_losses)[0, 0]) == 0.0
    for name in ("dgba", "signsum", "minmax"):
        value = get_objective(name).evaluate(ctx, x)
        torch.testing.assert_close(value[0], depth_change)  # seg dropped: depth alone
        both = (losses[:, 1:] - ctx.clean_losses[:, 1:]) / ctx.clean_losses[:, 1:]
        expected = both.mean(0) if name != "minmax" else both.amin(0)
        torch.testing.assert_close(value[1:], expected)  # other samples: unchanged


def test_no_defined_task_gives_zero():
    clean = torch.tensor([[LOSS_FLOOR, 0.5], [LOSS_FLOOR, 1.0]])
    losses = torch.tensor([[3.0, 1.0], [2.0, 1.0]])
    value = mean_relative_change(losses, clean)
    assert value.tolist() == [0.0, pytest.approx((1.0 + 0.0) / 2)]
    assert get_objective("minmax").value(losses, clean).tolist() == [0.0, 0.0]


@pytest.mark.parametrize("variant", [{}, {"per_sample": False}, {"variant": "official"}])
def test_apgd_batch_objective_is_not_dominated_by_the_zero_clean_task(variant):
    """With one batch value (the batch mean, or the authors' scalar) a 1e7-sized term would
    decide every step-size check and best iterate; the attack's values stay O(1)."""
    from mtl.attacks.apgd import APGD

    b, model = batch(), SteepNet()
    ctx = AttackContext(model, b, TASKS, b["image"], 8 / 255, {"denominator": "current"})
    ctx.prepare()
    runner = APGD(get_objective("dgba"), 8 / 255, 5, **variant)
    with torch.enable_grad():
        adv = runner(ctx)
    assert bool(torch.isfinite(adv).all())
    assert float(runner.history_.abs().max()) < 100.0
    adv_api = attack(model, b, method="apgd", objective="dgba", eps=8, steps=5, **variant)
    assert bool(torch.isfinite(adv_api).all())
