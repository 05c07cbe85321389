"""The public attack API: any nn.Module returning a mapping task -> tensor can be attacked, bad
inputs raise one clear ValueError before any work, the `Attack` object equals `attack()`, and a
new objective / method is one module with one register call."""
from __future__ import annotations

import importlib
import sys

import pytest
import torch
from torch import nn

import mtl.attacks.registry as registry
from mtl.attacks import (Attack, attack, method_names, objective_names, register_method,
                         register_objective, validate_attack)
from mtl.attacks.context import AttackContext
from mtl.attacks.pgd import PGD
from mtl.attacks.registry import get_objective
from random_batches import random_batch

SEG, DEPTH = "segment_semantic", "depth_zbuffer"


class PlainNet(nn.Module):
    """forward(x) only: no task selector, no `tasks` attribute."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.seg, self.depth = nn.Conv2d(8, 5, 1), nn.Conv2d(8, 1, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x)
        return {SEG: self.seg(h), DEPTH: self.depth(h)}


class TaskAwareNet(PlainNet):
    """Accepts `task=` and records what it was called with."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str | None] = []

    def forward(self, x: torch.Tensor, task: str | None = None) -> dict[str, torch.Tensor]:
        self.calls.append(task)
        out = super().forward(x)
        return out if task is None else {task: out[task]}


def two_task_batch(B: int = 4, H: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    full = random_batch(B, H, seed)
    return {k: full[k] for k in ("image", SEG, DEPTH)}


def objective_value(model, batch, objective, tasks, x):
    ctx = AttackContext(model, batch, tasks, batch["image"], 8 / 255).prepare()
    return get_objective(objective).evaluate(ctx, x)


@pytest.mark.parametrize("objective", ["total", "dgba", f"single:{DEPTH}"])
def test_plain_module_is_attacked(objective):
    model, batch = PlainNet(), two_task_batch()
    model.train()
    adv = attack(model, batch, method="pgd", objective=objective, eps=8, steps=5)
    assert adv.shape == batch["image"].shape and adv.dtype == batch["image"].dtype
    assert float((adv - batch["image"]).abs().max()) <= 8 / 255 + 1e-6
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    assert model.training and all(p.grad is None for p in model.parameters())
    model.eval()
    tasks = (DEPTH,) if objective.startswith("single:") else (SEG, DEPTH)
    before = objective_value(model, batch, objective, tasks, batch["image"])
    after = objective_value(model, batch, objective, tasks, adv)
    assert float(after.mean()) > float(before.mean())


def test_model_that_accepts_task_gets_it():
    model, batch = TaskAwareNet(), two_task_batch()
    attack(model, batch, method="pgd", objective=f"single:{DEPTH}", eps=4, steps=3)
    assert model.calls == [DEPTH] * 3  # one forward per step, only the attacked head
    model.calls.clear()
    attack(model, batch, method="pgd", objective="total", eps=4, steps=3)
    assert model.calls == [None] * 3  # two tasks: the full forward


def test_explicit_tasks_restrict_the_attack():
    model, batch = PlainNet(), random_batch(3, 10)  # labels for four tasks, model has two
    adv = attack(model, batch, method="fgsm", objective="dgba", eps=4, tasks=[SEG, DEPTH])
    assert adv.shape == batch["image"].shape
    with pytest.raises(ValueError, match="missing task"):  # batch labels decide: 4 tasks
        attack(model, batch, method="fgsm", objective="dgba", eps=4)


def test_eps_zero_returns_input():
    batch = two_task_batch()
    adv = attack(PlainNet(), batch, method="pgd", objective="dgba", eps=0, steps=2)
    torch.testing.assert_close(adv, batch["image"])


def _without(batch, key):
    return {k: v for k, v in batch.items() if k != key}


def _with_image(batch, image):
    return {**batch, "image": image}


B = two_task_batch()
BAD_INPUTS = [
    ("no image", _without(B, "image"), {}, ["'image'", SEG]),
    ("uint8", _with_image(B, (B["image"] * 255).to(torch.uint8)), {},
     ["floating", "uint8", "/ 255"]),
    ("normalised", _with_image(B, (B["image"] - 0.5) / 0.25), {},
     ["[0, 1]", "min -2", "max 1.99", "pixel space", "normalisation", "model"]),
    ("nan", _with_image(B, B["image"].masked_fill(B["image"] > 0.9, float("nan"))), {},
     ["NaN", "finite"]),
    ("no label single", _without(B, DEPTH), {"objective": f"single:{DEPTH}"},
     [DEPTH, "no label"]),
    ("no label tasks", _without(B, SEG), {"tasks": [SEG, DEPTH]}, [SEG, "no label"]),
    ("no labels at all", {"image": B["image"]}, {}, ["no task labels", SEG]),
    ("eps in [0,1] units", B, {"eps": 0.031},
     ["1/255 units", "eps=8 means 8/255", "0.031", "already divided by 255"]),
    ("unknown task", B, {"tasks": [SEG, "depth"]}, ["'depth'", "unknown task", DEPTH]),
    ("single not a task", B, {"tasks": [SEG], "objective": f"single:{DEPTH}"},
     ["objective", f"single:{SEG}"]),
]


@pytest.mark.parametrize("name,batch,kwargs,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs_raise_one_clear_error_before_any_work(name, batch, kwargs, words):
    model = PlainNet()
    calls = []
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    with pytest.raises(ValueError) as err:
        attack(model, batch, **{"method": "pgd", "objective": "dgba", "eps": 8, "steps": 2,
                                **kwargs})
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert not calls


def test_model_output_missing_a_task():
    class OneHead(PlainNet):
        def forward(self, x):
            return {SEG: super().forward(x)[SEG]}

    model = OneHead()
    model.train()
    with pytest.raises(ValueError, match=rf"missing task\(s\) \['{DEPTH}'\]"):
        attack(model, two_task_batch(), method="pgd", objective="dgba", eps=8, steps=2)
    assert model.training  # mode restored even on the error


def test_attack_object_equals_attack_function():
    model, batch = PlainNet(), two_task_batch()
    atk = Attack(model, method="apgd", objective="dgba", eps=6, steps=4, rho=0.5)
    expected = attack(model, batch, method="apgd", objective="dgba", eps=6, steps=4, rho=0.5)
    assert torch.equal(atk(batch), expected)
    assert torch.equal(atk(batch), expected)  # reusable
    text = repr(atk)
    for word in ("Attack(PlainNet", "method='apgd'", "objective='dgba'", "eps=6", "steps=4",
                 "rho=0.5"):
        assert word in text, text


def test_attack_object_validates_on_construction():
    with pytest.raises(ValueError, match="method: unknown 'cw'"):
        Attack(PlainNet(), method="cw", objective="dgba", eps=8)
    with pytest.raises(ValueError, match="1/255 units"):
        Attack(PlainNet(), method="pgd", objective="dgba", eps=8 / 255)
    with pytest.raises(ValueError, match="option rho"):
        Attack(PlainNet(), method="apgd", objective="dgba", eps=8, rho=3)
    with pytest.raises(ValueError, match="nn.Module"):
        Attack(lambda x: x, method="pgd", objective="dgba", eps=8)


# ---- registration ------------------------------------------------------------------------
@pytest.fixture
def toys():
    """Import the toy objective and method modules (each registers itself with one call) and
    restore the registries afterwards, so other tests see the built-ins only."""
    saved = [(d, dict(d)) for d in (registry._OBJECTIVES, registry._METHODS, registry._ALIASES)]
    for name in ("toy_objective", "toy_method"):
        sys.modules.pop(name, None)
    try:
        yield importlib.import_module("toy_objective"), importlib.import_module("toy_method")
    finally:
        for name in ("toy_objective", "toy_method"):
            sys.modules.pop(name, None)
        for d, items in saved:
            d.clear()
            d.update(items)


def test_toy_objective_and_method_run_through_attack(toys):
    model, batch = PlainNet(), two_task_batch()
    assert "toy_squares" in objective_names([SEG]) and {"toy_fraction",
                                                         "toy_frac"} <= set(method_names())
    adv = attack(model, batch, method="toy_fraction", objective="toy_squares", eps=8, steps=3,
                 fraction=0.25, scale=2.0)
    assert float((adv - batch["image"]).abs().max()) <= 8 / 255 + 1e-6
    model.eval()
    before = objective_value(model, batch, "toy_squares", (SEG, DEPTH), batch["image"])
    after = objective_value(model, batch, "toy_squares", (SEG, DEPTH), adv)
    assert float(after.mean()) > float(before.mean())
    alias = attack(model, batch, method="toy_frac", objective="toy_squares", eps=8, steps=3,
                   fraction=0.25, scale=2.0)
    assert torch.equal(alias, adv)
    # with the toy method, a built-in objective; with the toy objective, a built-in method
    attack(model, batch, method="toy_fraction", objective="dgba", eps=8, steps=2)
    attack(model, batch, method="pgd", objective="toy_squares", eps=8, steps=2, scale=0.5)


def test_toy_options_are_validated_by_their_declarations(toys):
    validate_attack("toy_fraction", "toy_squares", 8, 3, {"fraction": 1.0, "scale": 3})
    for options, words in [({"fraction": 1.5}, "option fraction: must be a number in [0, 1]"),
                           ({"scale": 0}, "option scale: must be a number > 0"),
                           ({"scale": "big"}, "option scale"),
                           ({"alpha": 1}, "unknown key(s) ['alpha']")]:
        with pytest.raises(ValueError) as err:
            validate_attack("toy_fraction", "toy_squares", 8, 3, options)
        assert words in str(err.value)
    with pytest.raises(ValueError, match="option fraction"):
        Attack(PlainNet(), method="toy_fraction", objective="total", eps=8, fraction=-1)


def test_registering_a_name_twice_raises_unless_replace(toys):
    toy_objective, toy_method = toys
    with pytest.raises(ValueError, match="already registered"):
        register_objective(toy_objective.TOY_OBJECTIVE)
    with pytest.raises(ValueError, match="already registered"):
        register_method(PGD)
    with pytest.raises(ValueError, match="already registered"):
        register_method(toy_method.FractionStep, name="toy_other", aliases=("ifgsm",))
    register_objective(toy_objective.TOY_OBJECTIVE, replace=True)
    register_method(toy_method.FractionStep, name="pgd", replace=True)
    assert registry.get_method("pgd") is toy_method.FractionStep
    with pytest.raises(TypeError):
        register_method(object)
    with pytest.raises(ValueError, match="without ':'"):
        register_method(toy_method.FractionStep, name="a:b")


def test_registries_restored_after_toys():
    assert "toy_squares" not in objective_names() and "toy_fraction" not in method_names()
    assert registry.get_method("pgd") is PGD
