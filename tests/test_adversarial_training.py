"""Adversarial training: crafted batches, mixing rules, mode restoration, a short AT run."""
from __future__ import annotations

import pytest
import torch

import mtl.attacks
from mtl.data.scenes import SyntheticScenes
from mtl.models import Layout, build_model
from mtl.train import AdvTrainConfig, TrainConfig, train, training_batches
from mtl.train.adversarial import craft_adversarial

TASKS = ("segment_semantic", "depth_zbuffer", "normal")



@pytest.fixture(scope="module")
def train_set() -> SyntheticScenes:
    return SyntheticScenes("train", size=16, length=16, tasks=TASKS)


def _model(ds: SyntheticScenes, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(Layout.branch_point(2, len(TASKS)), list(TASKS),
                       {t: ds.task_channels[t] for t in TASKS}, width=4)


def _batch(ds: SyntheticScenes, n: int = 4) -> dict[str, torch.Tensor]:
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


@pytest.mark.parametrize("kwargs, field", [
    ({"objective": "signsum"}, "adv.objective"), ({"objective": "single:nope"}, "adv.objective"),
    ({"method": "apgd"}, "adv.method"), ({"eps": 0.0}, "adv.eps"), ({"eps": 300}, "adv.eps"),
    ({"steps": 0}, "adv.steps"), ({"mix": "random"}, "adv.mix"),
    ({"clean_weight": 1.5}, "adv.clean_weight"), ({"options": {"bogus": 1}}, "adv.options")])
def test_config_validation(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        AdvTrainConfig(**kwargs)


def test_config_round_trip() -> None:
    cfg = AdvTrainConfig(objective="single:normal", method="pgd", eps=4, mix="weighted",
                         clean_weight=0.25, options={"random_start": True})
    assert AdvTrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key"):
        AdvTrainConfig.from_dict({"epsilon": 8})


@pytest.mark.parametrize("objective, method", [("total", "pgd"), ("dgba", "fgsm"),
                                               ("single:depth_zbuffer", "pgd")])
def test_crafted_batch_within_eps_and_train_mode_restored(train_set, objective: str,
                                                          method: str) -> None:
    model = _model(train_set)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = _batch(train_set)
    cfg = AdvTrainConfig(objective=objective, method=method, eps=8, steps=3)
    adv = craft_adversarial(model, batch, cfg)
    delta = adv["image"] - batch["image"]
    assert model.training and all(m.training for m in model.modules())
    assert delta.abs().max() <= 8 / 255 + 1e-6
    assert delta.abs().max() > 1 / 255  # the attack really moved the pixels
    assert adv["image"].min() >= 0 and adv["image"].max() <= 1
    assert not adv["image"].requires_grad
    for t in TASKS:
        assert adv[t] is batch[t]
    state = model.state_dict()  # crafting in eval mode leaves weights and BN stats alone
    assert all(torch.equal(state[k], v) for k, v in before.items())
    assert all(p.grad is None for p in model.parameters())


def test_eval_mode_is_kept_too(train_set) -> None:
    model = _model(train_set).eval()
    craft_adversarial(model, _batch(train_set), AdvTrainConfig(method="fgsm"))
    assert not model.training


def test_mixing_rules(train_set, monkeypatch) -> None:
    model = _model(train_set)
    batch = _batch(train_set)
    assert training_batches(model, batch, None, 1) == [(batch, 1.0)]
    alt = AdvTrainConfig(method="fgsm", mix="alternate")
    assert training_batches(model, batch, alt, 0) == [(batch, 1.0)]
    (adv, w), = training_batches(model, batch, alt, 1)
    assert w == 1.0 and not torch.equal(adv["image"], batch["image"])
    pairs = training_batches(model, batch, AdvTrainConfig(method="fgsm", mix="weighted",
                                                          clean_weight=0.3), 0)
    assert [w for _, w in pairs] == pytest.approx([0.3, 0.7]) and pairs[0][0] is batch
    only_adv = training_batches(model, batch, AdvTrainConfig(method="fgsm", mix="weighted",
                                                             clean_weight=0.0), 0)
    assert len(only_adv) == 1 and only_adv[0][1] == 1.0 and only_adv[0][0] is not batch

    def no_attack(*args, **kwargs):
        raise AssertionError("no adversarial batch should be crafted for clean_weight=1")

    monkeypatch.setattr(mtl.attacks, "attack", no_attack)
    assert training_batches(model, batch, AdvTrainConfig(mix="weighted", clean_weight=1.0),
                            3) == [(batch, 1.0)]


@pytest.mark.parametrize("adv", [
    AdvTrainConfig(objective="dgba", method="pgd", eps=8, steps=2, mix="alternate"),
    AdvTrainConfig(objective="total", method="fgsm", eps=4, mix="weighted")])
def test_a_few_epochs_of_adversarial_training(train_set, adv: AdvTrainConfig) -> None:
    cfg = TrainConfig(epochs=2, batch_size=8, optimizer="adam", lr=1e-3, seed=1, adv=adv)
    at_model, clean_model = _model(train_set), _model(train_set)
    calls = []
    real = mtl.attacks.attack

    def counting(*args, **kwargs):
        calls.append(kwargs["objective"])
        return real(*args, **kwargs)

    mp = pytest.MonkeyPatch()
    mp.setattr(mtl.attacks, "attack", counting)
    try:
        hist = train(at_model, train_set, cfg, progress=False).history
    finally:
        mp.undo()
    steps = 2 * 2  # epochs x batches per epoch
    assert len(calls) == (steps // 2 if adv.mix == "alternate" else steps)
    assert set(calls) == {adv.objective}
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in hist)
    assert at_model.training
    train(clean_model, train_set, TrainConfig(epochs=2, batch_size=8, optimizer="adam",
                                              lr=1e-3, seed=1), progress=False)
    differs = any(not torch.equal(a, b) for a, b in
                  zip(at_model.state_dict().values(), clean_model.state_dict().values()))
    assert differs


def test_random_starts_are_fresh_per_step_and_reproducible(train_set) -> None:
    model = _model(train_set)
    batch = _batch(train_set)
    cfg = AdvTrainConfig(method="pgd", steps=1, options={"random_start": True})
    torch.manual_seed(5)
    a, b = craft_adversarial(model, batch, cfg), craft_adversarial(model, batch, cfg)
    torch.manual_seed(5)
    a2 = craft_adversarial(model, batch, cfg)
    assert torch.equal(a["image"], a2["image"])
    assert not torch.equal(a["image"], b["image"])
    fixed = AdvTrainConfig(method="pgd", steps=1, options={"random_start": True, "seed": 3})
    assert torch.equal(craft_adversarial(model, batch, fixed)["image"],
                       craft_adversarial(model, batch, fixed)["image"])
