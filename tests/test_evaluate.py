"""Evaluation rows (white-box, cross-task, transfer with the RFN success rate) and the
`mtlsweep attack` command."""
from __future__ import annotations

import math

import pytest
import torch

from mtl.attacks import AttackSpec, attack
from mtl.evaluate import (cross_task_rows, delta_matrix, evaluate_attacks, evaluate_clean,
                          evaluate_transfer)
from mtl.models import Layout, build_model
from mtl.tasks import get_task, relative_change

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "scene_class")
CHANNELS = {"segment_semantic": 5, "scene_class": 4}
KEYS = {"attack_method", "objective", "eps", "steps", "task", "metric", "clean", "adv",
        "rel_change"}


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
