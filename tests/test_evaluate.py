"""Evaluation rows (white-box, cross-task, transfer with the RFN success rate) and the
`mtlsweep attack` command."""
from __future__ import annotations

import math

import pytest
import torch

from mtl.attacks import AttackSpec, attack
from mtl.evaluate import (clean_rows, cross_task_rows, delta_matrix, evaluate_attacks,
                          evaluate_clean, evaluate_transfer)
from mtl.models import Layout, build_model
from mtl.tasks import get_task, relative_change

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "scene_class")
CHANNELS = {"segment_semantic": 5, "scene_class": 4}
KEYS = {"attack_method", "objective", "eps", "steps", "task", "metric", "clean", "adv",
        "rel_change", "n", "numerator", "denominator", "attack_options"}


def make_model(seed: int, k: int = 2) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(Layout.branch_point(k, len(TASKS)), list(TASKS), CHANNELS, width=8)


def make_loader(n_batches: int = 2, B: int = 4, H: int = 12) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"image": torch.rand(B, 3, H, H, generator=g),
             "segment_semantic": torch.randint(0, 5, (B, H, H), generator=g),
             "depth_zbuffer": torch.rand(B, 1, H, H, generator=g) + 1.0,
             "normal": torch.nn.functional.normalize(torch.randn(B, 3, H, H, generator=g), 1),
             "scene_class": torch.randint(0, 4, (B,), generator=g)} for _ in range(n_batches)]


def n_metrics() -> int:
    return sum(len(get_task(t).higher_is_better) for t in TASKS)


def test_evaluate_clean_scores_every_task():
    model = make_model(0).train()
    clean = evaluate_clean(model, make_loader())
    assert set(clean) == set(TASKS) and model.training
    for task, metrics in clean.items():
        assert set(metrics) == set(get_task(task).higher_is_better)
    assert set(evaluate_clean(model, make_loader(), tasks=["normal"])) == {"normal"}
    with pytest.raises(ValueError, match="tasks"):
        evaluate_clean(model, make_loader(), tasks=["keypoints2d"])


def test_whitebox_rows():
    model = make_model(0)
    specs = [AttackSpec("pgd", "dgba", 8, 2), AttackSpec("fgsm", "total", 0, 1)]
    rows = evaluate_attacks(model, make_loader(), specs)
    assert len(rows) == len(specs) * (n_metrics() + len(TASKS) + 1)
    assert all(set(r) == KEYS for r in rows)
    dgba = [r for r in rows if r["objective"] == "dgba"]
    clean = {t: {r["metric"]: r["clean"] for r in dgba if r["task"] == t and r["clean"] is not None}
             for t in TASKS}
    adv = {t: {r["metric"]: r["adv"] for r in dgba if r["task"] == t and r["adv"] is not None}
           for t in TASKS}
    per_task, mean = relative_change(clean, adv)
    deltas = {r["task"]: r["rel_change"] for r in dgba if r["metric"] == "delta"}
    assert deltas == pytest.approx({**per_task, "mean": mean})
    assert mean < 0  # eight 1/255 steps of DGBA hurt the model on average
    assert clean == evaluate_clean(model, make_loader())
    zero = [r for r in rows if r["eps"] == 0.0]  # no budget: nothing changes
    assert all(r["rel_change"] == 0.0 or math.isnan(r["rel_change"]) for r in zero)
    with pytest.raises(ValueError, match="objective"):
        evaluate_attacks(model, make_loader(), [AttackSpec("pgd", "single:edge_texture", 8)])


def test_cross_task_matrix():
    model = make_model(1)
    rows = cross_task_rows(model, make_loader(n_batches=1), "fgsm", 8, 1)
    assert {r["objective"] for r in rows} == {f"single:{t}" for t in TASKS}
    matrix = delta_matrix(rows)
    assert set(matrix) == set(TASKS) and all(set(v) == set(TASKS) for v in matrix.values())
    for t in TASKS[:3]:  # a single-task attack hurts its own dense task
        assert matrix[t][t] < 0
    with pytest.raises(ValueError, match="groups"):
        delta_matrix(rows + cross_task_rows(model, make_loader(n_batches=1), "fgsm", 4, 1))


def test_transfer_rows_and_success_rate():
    import copy

    surrogate = make_model(0).eval()
    near = copy.deepcopy(surrogate)  # a target that mostly agrees with the surrogate
    with torch.no_grad():
        for p in near.parameters():
            p.add_(0.02 * torch.randn_like(p))
    targets = {"a": copy.deepcopy(surrogate), "b": near}
    loader = make_loader()
    for batch in loader:  # labels = the surrogate's clean classes: many examples qualify
        with torch.no_grad():
            batch["scene_class"] = surrogate(batch["image"])["scene_class"].argmax(1)
    spec = AttackSpec("pgd", "dgba", 16, 3)
    rows = evaluate_transfer(surrogate, targets, loader, [spec])
    assert {r["target_id"] for r in rows} == {"a", "b"}
    assert len(rows) == 2 * (n_metrics() + len(TASKS) + 2)
    # the success rate by hand: examples every target gets right on clean input ...
    correct, fooled = [], {tid: [] for tid in targets}
    for batch in loader:
        adv = attack(surrogate, batch, method="pgd", objective="dgba", eps=16, steps=3)
        with torch.no_grad():
            ok = torch.stack([m.eval()(batch["image"])["scene_class"].argmax(1)
                              == batch["scene_class"] for m in targets.values()]).all(0)
            correct.append(ok)
            for tid, m in targets.items():
                fooled[tid].append(ok & (m(adv)["scene_class"].argmax(1) != batch["scene_class"]))
    n_correct = int(torch.cat(correct).sum())
    assert n_correct > 0
    for tid in targets:
        (row,) = [r for r in rows if r["target_id"] == tid and r["metric"] == "success_rate"]
        expected = int(torch.cat(fooled[tid]).sum()) / n_correct if n_correct else None
        assert row["adv"] == pytest.approx(expected)
        assert row["task"] == "scene_class" and row["clean"] is None
    no_budget = evaluate_transfer(surrogate, targets, loader, [AttackSpec("fgsm", "dgba", 0)])
    rates = [r["adv"] for r in no_budget if r["metric"] == "success_rate"]
    assert rates == [0.0, 0.0]


def test_attack_command_prints_table(tmp_path, capsys):
    from mtl.data.scenes import SyntheticScenes
    from mtl.train.checkpoints import save_checkpoint
    from orchestrator.cli import main

    tasks = ["segment_semantic", "depth_zbuffer", "scene_class"]
    channels = SyntheticScenes(split="val", size=16, length=4, tasks=tasks).task_channels
    torch.manual_seed(0)
    model = build_model(Layout.branch_point(2, 3), tasks, channels, width=8)
    path = save_checkpoint(model, tmp_path, 3)
    code = main(["attack", "--checkpoint", str(path), "--method", "pgd", "--objective", "dgba",
                 "--eps", "2", "8", "--steps", "2", "--size", "16", "--n", "6",
                 "--option", "denominator=clean"])
    out = capsys.readouterr().out
    assert code == 0
    assert "eps = 2/255" in out and "eps = 8/255" in out
    assert out.count("mean") == 2 and "depth_zbuffer" in out and "abs_err" in out
    assert main(["attack", "--checkpoint", str(path), "--method", "cw"]) == 2
    assert "method" in capsys.readouterr().err
    assert main(["attack", "--checkpoint", str(tmp_path / "missing.pt")]) == 2


def test_rows_carry_n_and_canonical_attack_options():
    model = make_model(0)
    loader = make_loader(n_batches=2, B=3)  # 6 images
    specs = [AttackSpec("pgd", "dgba", 8, 2, {"denominator": "clean"}),
             AttackSpec("fgsm", "total", 4, 1)]
    rows = evaluate_attacks(model, loader, specs)
    assert {r["n"] for r in rows} == {6}
    assert all(r["numerator"] is None and r["denominator"] is None for r in rows)
    options = {r["objective"]: r["attack_options"] for r in rows}
    assert options == {"dgba": '{"denominator":"clean"}', "total": "{}"}
    clean = clean_rows(model, loader)
    assert all(set(r) == KEYS for r in clean)
    assert {r["n"] for r in clean} == {6} and {r["attack_options"] for r in clean} == {None}
    assert {(r["task"], r["metric"]): r["clean"] for r in clean} == {
        (t, m): v for t, metrics in evaluate_clean(model, loader).items()
        for m, v in metrics.items()}
    cross = cross_task_rows(model, loader, "fgsm", 8, 1, reduction="pixel")
    assert {r["attack_options"] for r in cross} == {'{"reduction":"pixel"}'}


class _Linear(torch.nn.Module):
    """scene_class logits [s, -s, 0] with s the image mean: every pixel has a gradient, so FGSM
    moves every pixel by ε."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.scale * x.mean((1, 2, 3))
        return {"scene_class": torch.stack([s, -s, torch.zeros_like(s)], 1)}


class _Lookup(torch.nn.Module):
    """A target whose answers are fixed by hand: image k (channel 2 = k/8) gets class
    ``clean[k]`` while unperturbed (channel 0 exactly 0.5), ``adv[k]`` once perturbed."""

    def __init__(self, clean: list[int], adv: list[int]) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer("clean", torch.tensor(clean))
        self.register_buffer("adv", torch.tensor(adv))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        k = (x[:, 2].mean((1, 2)) * 8).round().long()
        perturbed = (x[:, 0] - 0.5).abs().amax((1, 2)) > 1e-3
        cls = torch.where(perturbed, self.adv[k], self.clean[k])
        return {"scene_class": torch.nn.functional.one_hot(cls, 3).float() + 0 * self.unused}


def test_success_rate_counts_on_five_images_by_hand():
    labels = [0, 1, 2, 0, 1]
    images = torch.full((5, 3, 4, 4), 0.5)
    for k in range(5):
        images[k, 2] = k / 8
    loader = [{"image": images[:3], "scene_class": torch.tensor(labels[:3])},
              {"image": images[3:], "scene_class": torch.tensor(labels[3:])}]
    targets = {  # clean: a is wrong on image 4, b on image 3 -> images 0, 1, 2 qualify
        "a": _Lookup(clean=[0, 1, 2, 0, 2], adv=[1, 1, 0, 2, 0]),  # fooled on 0 and 2
        "b": _Lookup(clean=[0, 1, 2, 1, 1], adv=[0, 2, 2, 1, 0]),  # fooled on 1
    }
    rows = evaluate_transfer(_Linear(), targets, loader, [AttackSpec("fgsm", "total", 8, 1)],
                             tasks=["scene_class"])
    rates = {r["target_id"]: r for r in rows if r["metric"] == "success_rate"}
    assert (rates["a"]["numerator"], rates["a"]["denominator"], rates["a"]["n"]) == (2, 3, 3)
    assert (rates["b"]["numerator"], rates["b"]["denominator"], rates["b"]["n"]) == (1, 3, 3)
    assert rates["a"]["adv"] == pytest.approx(2 / 3) and rates["b"]["adv"] == pytest.approx(1 / 3)
    accuracy = {r["target_id"]: r for r in rows if r["metric"] == "accuracy"}
    assert accuracy["a"]["clean"] == pytest.approx(4 / 5) and accuracy["a"]["n"] == 5
    assert accuracy["b"]["adv"] == pytest.approx(2 / 5) and accuracy["b"]["n"] == 5
    assert all(r["numerator"] is None for r in rows if r["metric"] != "success_rate")
    none = evaluate_transfer(_Linear(), {"a": _Lookup([1, 2, 0, 1, 2], [1] * 5)}, loader,
                             [AttackSpec("fgsm", "total", 8, 1)], tasks=["scene_class"])
    (rate,) = [r for r in none if r["metric"] == "success_rate"]
    assert (rate["adv"], rate["numerator"], rate["denominator"], rate["n"]) == (None, 0, 0, 0)


def test_official_apgd_dgba_is_crafted_with_the_evaluation_sets_clean_losses():
    """The DGBA authors' APGD scores DGBA against C_t, each task's clean loss over the whole
    evaluation set: evaluate_attacks computes it once and crafts every batch with it (the
    same images as giving clean_losses by hand); the rows keep the options the user gave."""
    from mtl.attacks import dataset_clean_losses
    model, loader = make_model(1).eval(), make_loader(n_batches=2)
    spec = AttackSpec("apgd", "dgba", 8.0, 10, {"variant": "official"})
    rows = evaluate_attacks(model, loader, [spec])
    assert {r["attack_options"] for r in rows} == {'{"variant":"official"}'}
    c_t = dataset_clean_losses(model, loader, list(TASKS))
    by_hand = AttackSpec("apgd", "dgba", 8.0, 10, {"variant": "official", "clean_losses": c_t})
    want = {(r["task"], r["metric"]): r["adv"] for r in evaluate_attacks(model, loader, [by_hand])}
    assert {(r["task"], r["metric"]): r["adv"] for r in rows} == want
    skewed = {t: (1e-4 if t == "scene_class" else 1e4) for t in TASKS}  # C_t moves f
    batch_only = AttackSpec("apgd", "dgba", 8.0, 10, {"variant": "official",
                                                     "clean_losses": skewed})
    other = {(r["task"], r["metric"]): r["adv"] for r in evaluate_attacks(model, loader,
                                                                           [batch_only])}
    assert other != want  # C_t matters, so the equality above is not vacuous
