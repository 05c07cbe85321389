"""Objective option reduction="pixel" for `total` and `single:<task>`: the DGBA authors' batch mean
over all valid pixels of the batch (data/pixel2pixel_loss.py with reduction='mean'). Identical
steps to the default "sample" when every pixel is valid; with ignore labels / masks its value is
the hand-computed batch mean over valid pixels, and its steps differ."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtl.attacks import AttackSpec, accepted_options, attack, validate_attack
from mtl.attacks.context import AttackContext, forward_losses
from mtl.attacks.registry import get_objective
from mtl.models import Layout, build_model
from mtl.tasks import get_task, task_loss_sums
from random_batches import CHANNELS, random_batch

SEG, DEPTH, NORMAL = "segment_semantic", "depth_zbuffer", "normal"
DENSE = (SEG, DEPTH, NORMAL)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Layout.branch_point(2, len(DENSE)), list(DENSE), CHANNELS,
                       width=8).eval()


def dense_batch(B: int = 4, H: int = 8, seed: int = 0, holes: bool = False
                ) -> dict[str, torch.Tensor]:
    full = random_batch(B, H, seed)
    batch = {k: full[k] for k in ("image", *DENSE)}
    if holes:  # uneven valid-pixel counts across samples, as on NYUv2 / Taskonomy
        g = torch.Generator().manual_seed(seed + 1)
        seg = batch[SEG].clone()
        seg[torch.rand(seg.shape, generator=g) < 0.4] = 255
        seg[0] = 255
        seg[0, H - 1] = batch[SEG][0, H - 1]  # sample 0: one labelled row only
        batch[SEG] = seg
        mask = torch.rand(B, 1, H, H, generator=g) < 0.6
        mask[1] = False
        mask[1, 0, 0, 0] = True  # sample 1: a single valid depth pixel
        batch[DEPTH + "_mask"] = mask
        normal = batch[NORMAL].clone()
        normal[2, :, : H // 2] = 0.0  # half of sample 2's normals invalid
        batch[NORMAL] = normal
    return batch


def hand_pixel_means(model, batch, x) -> dict[str, torch.Tensor]:
    """The authors' batch means over valid pixels, written with torch's own reductions."""
    out = model(x)
    seg = F.cross_entropy(out[SEG], batch[SEG], ignore_index=255)  # mean over non-255 pixels
    mask = batch.get(DEPTH + "_mask", torch.ones_like(batch[DEPTH], dtype=torch.bool))
    depth = (out[DEPTH] - batch[DEPTH])[mask].abs().mean()
    valid = batch[NORMAL].abs().sum(1) > 0
    cos = F.cosine_similarity(F.normalize(out[NORMAL], dim=1), batch[NORMAL], dim=1)
    normal = (1 - cos)[valid].mean()
    return {SEG: seg, DEPTH: depth, NORMAL: normal}


def _ctx(model, batch, objective, reduction):
    tasks = (objective.split(":")[1],) if ":" in objective else DENSE
    return AttackContext(model, batch, tasks, batch["image"], 8 / 255, {"reduction": reduction})


@pytest.mark.parametrize("method", ["fgsm", "pgd", "apgd"])
@pytest.mark.parametrize("objective", ["total", f"single:{SEG}"])
def test_pixel_equals_sample_when_every_pixel_is_valid(model, method, objective):
    """All samples have the same valid count n, so 'pixel' is 'sample' / B: the same signs and
    the same APGD decisions (B = 4, a power of two, makes the scaling exact)."""
    batch = dense_batch()
    steps = 1 if method == "fgsm" else 5
    ours = {r: attack(model, batch, method=method, objective=objective, eps=8, steps=steps,
                      tasks=None if ":" in objective else list(DENSE), reduction=r)
            for r in ("sample", "pixel")}
    assert torch.equal(ours["sample"], ours["pixel"])
    ctx = _ctx(model, batch, objective, "pixel")
    sample = get_objective(objective).evaluate(_ctx(model, batch, objective, "sample"),
                                               ours["pixel"])
    torch.testing.assert_close(get_objective(objective).evaluate(ctx, ours["pixel"]),
                               sample / 4, rtol=1e-6, atol=0)


def test_pixel_value_and_direction_are_the_hand_computed_batch_means(model):
    batch = dense_batch(holes=True)
    x = batch["image"]
    ctx = _ctx(model, batch, "total", "pixel")
    c, value = get_objective("total").direction(ctx, x)
    xr = x.clone().requires_grad_(True)
    hand = hand_pixel_means(model, batch, xr)
    total = sum(hand.values())
    (expected_c,) = torch.autograd.grad(total, xr)
    # the per-sample values are each sample's share: they sum to the authors' TOTAL
    torch.testing.assert_close(value.sum(), total.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(c, expected_c, rtol=1e-4, atol=1e-7 * expected_c.abs().max())
    # ... which is NOT the default: the sum over samples of per-sample means, over B
    sample_value = get_objective("total").evaluate(_ctx(model, batch, "total", "sample"), x)
    assert abs(float(sample_value.sum()) / 4 - float(total.detach())) > 1e-3
    for task in DENSE:
        single = _ctx(model, batch, f"single:{task}", "pixel")
        value = get_objective(f"single:{task}").evaluate(single, x)
        torch.testing.assert_close(value.sum(), hand[task].detach(), rtol=1e-5, atol=0)


def test_pixel_and_sample_steps_differ_with_ignore_labels(model):
    batch = dense_batch(holes=True)
    kw = dict(method="pgd", objective="total", eps=8, steps=3, tasks=list(DENSE))
    sample = attack(model, batch, **kw)
    pixel = attack(model, batch, reduction="pixel", **kw)
    assert not torch.equal(sample, pixel)
    assert torch.equal(attack(model, batch, reduction="sample", **kw), sample)  # the default


def test_loss_sums_are_sum_and_count_of_valid_pixels(model):
    batch = dense_batch(holes=True)
    with torch.no_grad():
        out = model(batch["image"])
    sums, counts = task_loss_sums(SEG, out[SEG], batch)
    ce = F.cross_entropy(out[SEG], batch[SEG].clamp_max(4), reduction="none")
    valid = batch[SEG] != 255
    torch.testing.assert_close(sums, (ce * valid).flatten(1).sum(1))
    assert counts.tolist() == valid.flatten(1).sum(1).float().tolist()
    assert counts[0] == 8  # one labelled row
    _, depth_counts = task_loss_sums(DEPTH, out[DEPTH], batch)
    assert depth_counts[1] == 1
    # the per-sample loss is sum / count, unchanged
    torch.testing.assert_close(get_task(SEG).loss(out[SEG], batch[SEG]), sums / counts)


class FirstChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"plain_l1": x[:, :1]}


def test_a_task_without_loss_sums_counts_each_sample_once():
    """A user task registered with a per-sample loss only: 'pixel' is then the mean over the
    batch's samples, each sample's share being its loss / B."""
    from mtl.metrics import L1Metric
    from mtl.tasks import register_task

    def per_sample(pred, target, mask=None):
        return (pred - target).abs().flatten(1).mean(1)

    register_task("plain_l1", per_sample, lambda: L1Metric("plain_l1"), channels=1,
                  higher_is_better={"plain_l1_err": False})
    x, target = torch.rand(4, 3, 2, 2), torch.rand(4, 1, 2, 2)
    sums, counts = get_task("plain_l1").loss_sums(x[:, :1], target)
    torch.testing.assert_close(sums, per_sample(x[:, :1], target))
    assert counts.tolist() == [1.0] * 4
    losses = forward_losses(FirstChannel(), x, {"plain_l1": target}, ["plain_l1"], "pixel")
    torch.testing.assert_close(losses[0], per_sample(x[:, :1], target) / 4)


def test_reduction_is_an_option_of_total_and_single_only():
    for objective in ("total", f"single:{SEG}"):
        validate_attack("pgd", objective, 8, 3, {"reduction": "pixel"}, DENSE)
        with pytest.raises(ValueError, match="option reduction"):
            validate_attack("pgd", objective, 8, 3, {"reduction": "batch"}, DENSE)
    for objective in ("dgba", "signsum", "minmax"):
        with pytest.raises(ValueError, match="unknown key"):
            validate_attack("pgd", objective, 8, 3, {"reduction": "pixel"}, DENSE)
    spec = AttackSpec("apgd", "total", 8, 10, {"reduction": "pixel"}).validate(DENSE)
    assert AttackSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="reduction"):
        forward_losses(torch.nn.Identity(), torch.zeros(1), {}, (), "mean")


def test_shared_sweep_options_reach_the_pairs_that_take_them():
    shared = {"reduction": "pixel", "variant": "official", "denominator": "current"}
    assert accepted_options("apgd", "total", shared) == {"reduction": "pixel",
                                                         "variant": "official"}
    assert accepted_options("pgd", f"single:{SEG}", shared) == {"reduction": "pixel"}
    assert accepted_options("ifgsm", "dgba", shared) == {"denominator": "current"}
    assert accepted_options("fgsm", "signsum", shared) == {}
