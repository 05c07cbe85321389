"""The attack loop after its per-step overhead was removed gives the same images as the plain
loop it replaced (bit for bit), and `eval_mode` saves module modes once per pass."""
from __future__ import annotations

import torch
from torch import nn

from mtl.attacks import attack, eval_mode
from mtl.attacks.context import LOSS_FLOOR, forward_losses
from mtl.models import Layout, build_model

TASKS = ("segment_semantic", "depth_zbuffer", "normal")


def _setup():
    torch.manual_seed(0)
    model = build_model(Layout.branch_point(2, len(TASKS)), list(TASKS),
                        {"segment_semantic": 5}, width=8).eval()
    g = torch.Generator().manual_seed(1)
    B, H = 3, 12
    image = torch.rand(B, 3, H, H, generator=g)
    image[:, :, :3] = torch.where(image[:, :, :3] < 0.5, 0.0, 1.0)  # pixels on the [0, 1] clip
    batch = {"image": image,
             "segment_semantic": torch.randint(0, 5, (B, H, H), generator=g),
             "depth_zbuffer": torch.rand(B, 1, H, H, generator=g) + 0.5,
             "normal": nn.functional.normalize(torch.randn(B, 3, H, H, generator=g), dim=1)}
    return model, batch


def reference_pgd_dgba(model, batch, eps: float, steps: int, seed: int) -> torch.Tensor:
    """The loop as the old code ran it, written out: seeded uniform start, projection, then per
    step the one-backward DGBA direction, the box LP step (ones-tensor bounds) and projection."""
    x0 = batch["image"]
    lo, hi = (x0 - eps).clamp(0.0, 1.0) - x0, (x0 + eps).clamp(0.0, 1.0) - x0
    noise = torch.rand(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    delta = torch.maximum(torch.minimum((2.0 * noise - 1.0) * eps, hi), lo)
    alpha = eps / steps
    for _ in range(steps):
        x = (x0 + delta).detach().requires_grad_(True)
        losses = forward_losses(model, x, batch, TASKS)
        (c,) = torch.autograd.grad(torch.log(losses.clamp_min(LOSS_FLOOR)).sum(), x)
        step_lo = torch.maximum(lo - delta, -alpha * torch.ones_like(delta)).clamp_max(0.0)
        step_hi = torch.minimum(hi - delta, alpha * torch.ones_like(delta)).clamp_min(0.0)
        tie = torch.zeros_like(c).clamp(step_lo, step_hi)
        step = torch.where(c > 0, step_hi, torch.where(c < 0, step_lo, tie))
        delta = torch.maximum(torch.minimum(delta + step, hi), lo)
    return (x0 + delta).clamp(0.0, 1.0).detach()


def test_pgd_dgba_image_is_bit_identical_to_the_reference_loop():
    model, batch = _setup()
    adv = attack(model, batch, method="pgd", objective="dgba", eps=8, steps=5,
                 random_start=True, seed=3)
    ref = reference_pgd_dgba(model, batch, 8 / 255, 5, 3)
    assert torch.equal(adv, ref)
    assert not torch.equal(adv, batch["image"])  # the attack moved


def test_eval_mode_saves_modes_once_and_restores_them():
    model, batch = _setup()
    model.train()
    list(model.modules())[1].eval()  # a mixed tree: one submodule in eval mode
    before = [m.training for m in model.modules()]
    calls = []
    original = nn.Module.train

    def counting_train(self, mode=True):
        calls.append(self)
        return original(self, mode)

    nn.Module.train = counting_train
    try:
        with eval_mode(model):
            assert not any(m.training for m in model.modules())
            outer = len(calls)
            for _ in range(3):
                attack(model, batch, method="fgsm", objective="total", eps=4)
            assert len(calls) == outer  # nested: no per-call mode changes
            assert not any(m.training for m in model.modules())
        attack(model, batch, method="fgsm", objective="total", eps=4)  # alone: saves/restores
    finally:
        nn.Module.train = original
    assert [m.training for m in model.modules()] == before
