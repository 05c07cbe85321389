"""The attack entry point: budget and box for every method x objective, mode and parameter
flags untouched, one clear ValueError before any work, AttackSpec, method identities."""
from __future__ import annotations

import pytest
import torch

from mtl.attacks import METHODS, OBJECTIVES, AttackSpec, attack, available_objectives
from mtl.attacks.objectives import AttackContext
from mtl.attacks.registry import OBJECTIVES as REGISTRY
from mtl.models import Layout, build_model
from random_batches import CHANNELS, TASKS, random_batch

ALL_OBJECTIVES = available_objectives(TASKS)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Layout.branch_point(2, len(TASKS)), list(TASKS), CHANNELS, width=8)


def make_batch(B: int = 3, H: int = 12, seed: int = 0) -> dict[str, torch.Tensor]:
    batch = random_batch(B, H, seed)
    batch["image"][0, :, :4] = 0.0  # pixels on the box boundary: clipping must keep them in [0, 1]
    batch["image"][1, :, :4] = 1.0
    return batch


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("objective", ALL_OBJECTIVES)
def test_output_within_budget_and_box(model, method, objective):
    batch = make_batch()
    model.train()
    flags = [p.requires_grad for p in model.parameters()]
    adv = attack(model, batch, method=method, objective=objective, eps=8, steps=3,
                 **({"random_start": True} if method != "fgsm" else {}))
    assert adv.shape == batch["image"].shape and adv.dtype == batch["image"].dtype
    assert float((adv - batch["image"]).abs().max()) <= 8 / 255 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert not adv.requires_grad
    assert float((adv - batch["image"]).abs().max()) > 0  # it did move
    assert model.training  # mode restored
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


def test_every_module_mode_restored(model):
    model.train()
    frozen = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    frozen.eval()  # a frozen BN inside a training model must stay frozen
    seen = []
    hook = model.register_forward_pre_hook(lambda m, a: seen.append(m.training))
    try:
        attack(model, make_batch(), method="pgd", objective="dgba", eps=4, steps=2)
    finally:
        hook.remove()
    assert seen and not any(seen)  # crafted in eval mode
    assert model.training and not frozen.training
    frozen.train()
    model.eval()
    attack(model, make_batch(), method="fgsm", objective="total", eps=4)
    assert not model.training


BAD = [
    (dict(method="cw"), "method"),
    (dict(objective="sum"), "objective"),
    (dict(objective="single:keypoints2d"), "objective"),  # not a task of this model
    (dict(objective="single"), "objective"),
    (dict(eps=-1), "eps"),
    (dict(eps=float("nan")), "eps"),
    (dict(steps=0), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(alpha=1, momentum=0.5), "unknown key"),
    (dict(method="fgsm", alpha=1), "unknown key"),
    (dict(objective="total", denominator="clean"), "unknown key"),
    (dict(denominator="mean"), "denominator"),
    (dict(objective="minmax", solver="gurobi"), "solver"),
    (dict(method="apgd", rho=2.0), "rho"),
    (dict(random_start="yes"), "random_start"),
]


@pytest.mark.parametrize("bad,field", BAD)
def test_invalid_options_raise_before_any_work(model, bad, field):
    calls = []
    hook = model.register_forward_pre_hook(lambda m, a: calls.append(1))
    kwargs = {"method": "pgd", "objective": "dgba", "eps": 8, "steps": 2, **bad}
    try:
        with pytest.raises(ValueError, match=field) as err:
            attack(model, make_batch(), **kwargs)
    finally:
        hook.remove()
    assert not calls
    assert "allowed" in str(err.value) or "must be" in str(err.value)


def test_unknown_method_lists_allowed_values(model):
    with pytest.raises(ValueError) as err:
        attack(model, make_batch(), method="cw", objective="dgba", eps=8)
    for name in ("fgsm", "pgd", "ifgsm", "mifgsm", "apgd"):
        assert name in str(err.value)


def test_missing_label_raises(model):
    batch = make_batch()
    del batch["normal"]
    with pytest.raises(ValueError, match="normal"):
        attack(model, batch, method="pgd", objective="single:normal", eps=8)
    adv = attack(model, batch, method="fgsm", objective="dgba", eps=8)  # attacks labelled tasks
    assert adv.shape == batch["image"].shape


def test_fgsm_is_one_sign_step(model):
    batch = make_batch()
    model.eval()
    x = batch["image"].clone().requires_grad_(True)
    out = model(x)
    from mtl.tasks import task_loss
    loss = sum(task_loss(t, out[t], batch).sum() for t in TASKS)
    (g,) = torch.autograd.grad(loss, x)
    expected = (batch["image"] + 8 / 255 * g.sign()).clamp(0, 1)
    adv = attack(model, batch, method="fgsm", objective="total", eps=8, steps=7)
    torch.testing.assert_close(adv, expected)


def test_ifgsm_alias_and_mifgsm_without_momentum_equal_pgd(model):
    batch = make_batch()
    pgd = attack(model, batch, method="pgd", objective="dgba", eps=6, steps=4)
    assert torch.equal(pgd, attack(model, batch, method="ifgsm", objective="dgba", eps=6,
                                   steps=4))
    # decay 0: each step is sign(c / ||c||_1) = sign(c), exactly I-FGSM
    mi = attack(model, batch, method="mifgsm", objective="dgba", eps=6, steps=4, decay=0.0)
    torch.testing.assert_close(mi, pgd)


def test_eps_zero_returns_input(model):
    batch = make_batch()
    for method in METHODS:
        adv = attack(model, batch, method=method, objective="dgba", eps=0, steps=2)
        torch.testing.assert_close(adv, batch["image"])


@pytest.mark.parametrize("objective", ["dgba", "total", "signsum", "minmax"])
def test_pgd_raises_its_objective(model, objective):
    batch = make_batch(B=4, seed=1)
    model.eval()
    adv = attack(model, batch, method="pgd", objective=objective, eps=8, steps=5)
    ctx = AttackContext(model, batch, TASKS, batch["image"], 8 / 255).prepare()
    before = REGISTRY[objective].evaluate(ctx, batch["image"])
    after = REGISTRY[objective].evaluate(ctx, adv)
    assert float(after.mean()) > float(before.mean())


def test_attack_spec():
    spec = AttackSpec("pgd", "dgba", 8, options={"denominator": "clean"})
    assert spec.validate(TASKS) is spec and spec.steps == 10
    assert AttackSpec.from_dict(spec.to_dict()) == spec
    assert hash(spec) == hash(AttackSpec("pgd", "dgba", 8, 10, {"denominator": "clean"}))
    with pytest.raises(TypeError):
        spec.options["denominator"] = "current"  # read-only
    with pytest.raises(ValueError, match="objective"):
        AttackSpec("pgd", "single:depth", 8).validate(TASKS)
    with pytest.raises(ValueError, match="unknown key"):
        AttackSpec.from_dict({**spec.to_dict(), "budget": 1})
    assert AttackSpec("ifgsm", "total", 2).canonical_method == "pgd"


def test_registries():
    assert set(METHODS) == {"fgsm", "pgd", "mifgsm", "apgd"}
    assert set(OBJECTIVES) == {"single", "total", "signsum", "dgba", "minmax"}
    assert ALL_OBJECTIVES == [f"single:{t}" for t in TASKS] + ["total", "signsum", "dgba",
                                                               "minmax"]
