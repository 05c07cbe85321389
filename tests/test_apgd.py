"""APGD (default variant, Croce & Hein): checkpoint schedule, per-sample step-size control (vs
per_sample=False, one batch-mean value), best-iterate return. The DGBA authors' loop, variant
"official", is tested in test_apgd_official.py."""
from __future__ import annotations

import pytest
import torch

from mtl.attacks import attack
from mtl.attacks.apgd import APGD, apgd_checkpoints
from mtl.attacks.objectives import AttackContext
from mtl.attacks.registry import OBJECTIVES
from mtl.models import Layout, build_model
from random_batches import CHANNELS, TASKS, random_batch



@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Layout.branch_point(2, len(TASKS)), list(TASKS), CHANNELS,
                       width=8).eval()


def make_batch(B: int = 6, H: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    return random_batch(B, H, seed)


def test_checkpoints_follow_the_paper_schedule():
    # p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert apgd_checkpoints(1) == []


def run_apgd(model, batch, objective="dgba", steps=20, **options) -> tuple[APGD, torch.Tensor]:
    obj = OBJECTIVES[objective]
    ctx = AttackContext(model, batch, TASKS, batch["image"], 8 / 255,
                        {**obj.defaults}).prepare()
    runner = APGD(obj, 8 / 255, steps, **options)
    with torch.enable_grad():
        adv = runner(ctx)
    return runner, adv


def test_step_size_is_tracked_per_sample(model):
    """Within one batch some samples halve their step size more often than others; with
    per_sample=False (one batch-mean value) all samples halve together."""
    batch = make_batch()
    per_sample, _ = run_apgd(model, batch)
    eta = per_sample.eta
    assert bool((eta < 2 * 8 / 255).any())  # someone halved
    assert len(set(eta.tolist())) > 1, eta  # ... but not everyone equally
    scalar, _ = run_apgd(model, batch, per_sample=False)
    assert len(set(scalar.eta.tolist())) == 1
    assert not torch.equal(scalar.history_, per_sample.history_)


def test_per_sample_result_does_not_depend_on_the_batch(model):
    """Per-sample tracking makes each sample's trajectory independent of its batch-mates: the
    batch result equals running the samples one by one (up to float noise)."""
    batch = {k: v.double() if v.is_floating_point() else v for k, v in make_batch(B=3).items()}
    model = model.double()
    try:
        _, together = run_apgd(model, batch, steps=10)
        alone = [run_apgd(model, {k: v[i:i + 1] for k, v in batch.items()}, steps=10)[1]
                 for i in range(3)]
    finally:
        model.float()
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-9, rtol=0)


def test_returns_the_per_sample_best_iterate(model):
    batch = make_batch(seed=1)
    runner, adv = run_apgd(model, batch, steps=12)
    history = runner.history_
    assert history.shape == (13, 6)
    ctx = AttackContext(model, batch, TASKS, batch["image"], 8 / 255).prepare()
    value = OBJECTIVES["dgba"].evaluate(ctx, adv)
    torch.testing.assert_close(value, history.amax(0), atol=1e-5, rtol=1e-5)
    assert bool((history.amax(0) >= history[-1]).all())


def test_apgd_reaches_at_least_the_first_step(model):
    """The first APGD step is a 2*eps sign step clipped to the ball, i.e. FGSM; returning the
    best iterate can only do better on the tracked objective."""
    batch = make_batch(seed=2)
    ctx = AttackContext(model, batch, TASKS, batch["image"], 8 / 255).prepare()
    apgd = attack(model, batch, method="apgd", objective="dgba", eps=8, steps=10)
    fgsm = attack(model, batch, method="fgsm", objective="dgba", eps=8)
    v_apgd = OBJECTIVES["dgba"].evaluate(ctx, apgd)
    v_fgsm = OBJECTIVES["dgba"].evaluate(ctx, fgsm)
    assert bool((v_apgd >= v_fgsm - 1e-5).all())
