"""Training really learns: a 3-task model beats the trivial predictors on the val split.

Trivial predictors (fitted on the training split, scored with the registry's accumulators):
the majority class for segmentation, the mean training depth, the mean training normal.
"""
from __future__ import annotations

import pytest
import torch

from mtl.data import make_loader
from mtl.data.scenes import SyntheticScenes
from mtl.models import Layout, build_model
from mtl.tasks import get_task
from mtl.train import TrainConfig, train

TASKS = ("segment_semantic", "depth_zbuffer", "normal")



def _trivial_metrics(train_set, val_set) -> dict[str, dict[str, float]]:
    classes = train_set.task_channels["segment_semantic"]
    counts = torch.zeros(classes, dtype=torch.float64)
    depth_sum = depth_n = 0.0
    normal_sum = torch.zeros(3, dtype=torch.float64)
    for b in make_loader(train_set, 64):
        seg = b["segment_semantic"]
        counts += torch.bincount(seg[seg != 255], minlength=classes)[:classes].double()
        mask = b.get("depth_zbuffer_mask", torch.ones_like(b["depth_zbuffer"], dtype=torch.bool))
        depth_sum += float(b["depth_zbuffer"][mask].double().sum())
        depth_n += float(mask.sum())
        normal_sum += b["normal"].double().sum(dim=(0, 2, 3))  # invalid normals are zero
    majority = int(counts.argmax())
    mean_depth = depth_sum / depth_n
    mean_normal = (normal_sum / normal_sum.norm()).float()
    metrics = {t: get_task(t).new_metric(val_set.task_channels[t]) for t in TASKS}
    for b in make_loader(val_set, 64):
        n, _, h, w = b["image"].shape
        seg = torch.zeros(n, classes, h, w)
        seg[:, majority] = 1.0
        preds = {"segment_semantic": seg,
                 "depth_zbuffer": torch.full((n, 1, h, w), mean_depth),
                 "normal": mean_normal.view(1, 3, 1, 1).expand(n, 3, h, w).contiguous()}
        for t, m in metrics.items():
            m.update(preds[t], b[t], b.get(f"{t}_mask"))
    return {t: m.compute() for t, m in metrics.items()}


def _check_beats_trivial(train_len: int, epochs: int, width: int, margin: float) -> None:
    train_set = SyntheticScenes("train", size=32, length=train_len, tasks=TASKS)
    val_set = SyntheticScenes("val", size=32, length=64, tasks=TASKS)
    torch.manual_seed(0)
    model = build_model(Layout.branch_point(2, len(TASKS)), list(TASKS),
                        {t: train_set.task_channels[t] for t in TASKS}, width=width)
    cfg = TrainConfig(epochs=epochs, batch_size=16, optimizer="adam", lr=5e-3,
                      milestones=(epochs,), gamma=0.3, seed=0)
    last = train(model, train_set, cfg, val_set=val_set, progress=False).history[-1]
    trivial = _trivial_metrics(train_set, val_set)
    rows = [("segment_semantic", "pixel_acc", True), ("segment_semantic", "miou", True),
            ("depth_zbuffer", "abs_err", False), ("normal", "angle_mean", False)]
    print(f"\ntrain_len={train_len} epochs={epochs} width={width}")
    for task, metric, higher in rows:
        model_v, base_v = last[f"val/{task}/{metric}"], trivial[task][metric]
        gain = (model_v - base_v) / base_v if higher else (base_v - model_v) / base_v
        print(f"{task:<17} {metric:<10} trained {model_v:8.4f}  trivial {base_v:8.4f}  "
              f"relative improvement {gain:+.1%}")
        assert gain >= margin, f"{task}/{metric}: {model_v:.4f} vs trivial {base_v:.4f}"


def test_three_task_model_beats_trivial_predictors() -> None:
    _check_beats_trivial(train_len=256, epochs=6, width=8, margin=0.3)


@pytest.mark.slow
def test_longer_training_beats_trivial_predictors_by_more() -> None:
    _check_beats_trivial(train_len=1000, epochs=12, width=16, margin=0.4)
