"""Task registry: per-sample losses, channel defaults, relative change."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mtl.metrics import DepthMetric, NormalMetric, SegmentationMetric
from mtl.tasks import (TASK_NAMES, default_channels, get_task, metric_relative_change,
                       relative_change, task_loss)

B, H, W = 3, 4, 5


def _batch_and_preds(g: torch.Generator) -> tuple[dict, dict]:
    seg = torch.randint(0, 4, (B, H, W), generator=g)
    seg[2] = 255  # a sample without any labelled pixel
    batch = {
        "segment_semantic": seg,
        "depth_zbuffer": torch.rand(B, 1, H, W, generator=g) + 0.5,
        "depth_zbuffer_mask": torch.ones(B, 1, H, W, dtype=torch.bool),
        "normal": F.normalize(torch.randn(B, 3, H, W, generator=g), dim=1),
        "edge_texture": torch.rand(B, 1, H, W, generator=g),
        "keypoints2d": torch.rand(B, 1, H, W, generator=g),
        "scene_class": torch.tensor([0, 255, 2]),
    }
    batch["depth_zbuffer_mask"][2] = False
    batch["normal"][2] = 0.0  # invalid normals everywhere in sample 2
    batch["edge_texture_mask"] = torch.ones(B, H, W, dtype=torch.bool)
    batch["edge_texture_mask"][2] = False
    batch["keypoints2d_mask"] = batch["edge_texture_mask"][:, None].clone()
    preds = {
        "segment_semantic": torch.randn(B, 4, H, W, generator=g),
        "depth_zbuffer": torch.randn(B, 1, H, W, generator=g),
        "normal": torch.randn(B, 3, H, W, generator=g),
        "edge_texture": torch.randn(B, 1, H, W, generator=g),
        "keypoints2d": torch.randn(B, 1, H, W, generator=g),
        "scene_class": torch.randn(B, 3, generator=g),
    }
    return batch, {k: v.requires_grad_() for k, v in preds.items()}


@pytest.mark.parametrize("name", TASK_NAMES)
def test_loss_is_per_sample_and_all_invalid_sample_gives_zero(name: str) -> None:
    batch, preds = _batch_and_preds(torch.Generator().manual_seed(0))
    loss = task_loss(name, preds[name], batch)
    assert loss.shape == (B,)
    assert torch.isfinite(loss).all()
    empty = 1 if name == "scene_class" else 2
    assert loss[empty] == 0.0
    assert (loss[0] > 0)
    loss.sum().backward()
    grad = preds[name].grad
    assert torch.isfinite(grad).all()
    assert grad[empty].abs().sum() == 0.0  # nothing valid -> no gradient, not NaN
    assert grad[0].abs().sum() > 0


def test_segmentation_loss_ignores_ignored_pixels_exactly() -> None:
    pred = torch.randn(1, 3, 2, 2)
    target = torch.tensor([[[0, 1], [255, 2]]])
    mask = torch.tensor([[[True, True], [True, False]]])
    ce = F.cross_entropy(pred, torch.tensor([[[0, 1], [0, 2]]]), reduction="none")[0]
    expected = (ce[0, 0] + ce[0, 1]) / 2  # 255 ignored, masked pixel ignored
    got = get_task("segment_semantic").loss(pred, target, mask)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_normal_loss_is_one_minus_cosine_and_scale_invariant() -> None:
    target = torch.tensor([0.0, 0.0, -1.0]).reshape(1, 3, 1, 1)
    pred = torch.tensor([0.0, 5.0, -5.0]).reshape(1, 3, 1, 1)  # 45 degrees away
    loss = get_task("normal").loss(pred, target)
    assert loss.item() == pytest.approx(1 - math.cos(math.pi / 4), rel=1e-6)
    # a non-finite target pixel is invalid: no NaN in the loss or the gradient
    pred2 = torch.cat([pred, pred], dim=3).requires_grad_()
    target2 = torch.cat([target, torch.full_like(target, float("nan"))], dim=3)
    loss2 = get_task("normal").loss(pred2, target2)
    assert loss2.item() == pytest.approx(loss.item(), rel=1e-6)
    loss2.sum().backward()
    assert torch.isfinite(pred2.grad).all() and pred2.grad[..., 1].abs().sum() == 0


def test_depth_loss_masked_l1_and_unmasked_everywhere() -> None:
    pred = torch.tensor([[[[1.0, 2.0, 3.0]]]], requires_grad=True)
    target = torch.tensor([[[[1.5, 2.0, float("nan")]]]])
    mask = torch.tensor([[[[True, True, False]]]])
    loss = get_task("depth_zbuffer").loss(pred, target, mask)
    assert loss.item() == pytest.approx(0.25)  # NaN under mask False never leaks
    loss.sum().backward()
    assert pred.grad.tolist() == [[[[-0.5, 0.0, 0.0]]]]
    assert get_task("depth_zbuffer").loss(pred[..., :2], target[..., :2]).item() \
        == pytest.approx(0.25)


def test_registry_contract() -> None:
    assert TASK_NAMES == ("segment_semantic", "depth_zbuffer", "normal", "edge_texture",
                          "keypoints2d", "scene_class")
    for name in TASK_NAMES:
        task = get_task(name)
        assert task.name == name and task.kind == ("image" if name == "scene_class" else "dense")
        metric = task.new_metric(5) if name in ("segment_semantic", "scene_class") \
            else task.new_metric()
        assert dict(metric.higher_is_better) == dict(task.higher_is_better)
    with pytest.raises(ValueError, match="segment_semantic.*scene_class"):
        get_task("depth")
    assert isinstance(get_task("segment_semantic").new_metric(13), SegmentationMetric)
    assert isinstance(get_task("normal").new_metric(3), NormalMetric)
    assert isinstance(get_task("depth_zbuffer").new_metric(), DepthMetric)
    assert get_task("depth_zbuffer").higher_is_better["delta_1.25"] is True
    assert get_task("normal").higher_is_better["angle_median"] is False


def test_default_channels() -> None:
    assert default_channels("depth_zbuffer") == 1
    assert default_channels("edge_texture") == 1
    assert default_channels("keypoints2d") == 1
    assert default_channels("normal") == 3
    assert default_channels("segment_semantic", 13) == 13
    with pytest.raises(ValueError, match="task_channels"):
        default_channels("segment_semantic")
    with pytest.raises(ValueError, match="task_channels"):
        get_task("scene_class").new_metric()
    with pytest.raises(ValueError, match="channels must be 3"):
        default_channels("normal", 4)


def test_task_loss_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="keys"):
        task_loss("normal", torch.zeros(1, 3, 2, 2), {"image": torch.zeros(1, 3, 2, 2)})
    with pytest.raises(ValueError, match="normal"):
        task_loss("normal", torch.zeros(1, 3, 2, 2), {"normal": torch.zeros(1, 3, 2, 3)})


def test_relative_change_hand_example() -> None:
    clean = {"segment_semantic": {"miou": 0.5, "pixel_acc": 0.8},
             "depth_zbuffer": {"abs_err": 0.4, "rel_err": 0.2}}
    adv = {"segment_semantic": {"miou": 0.25, "pixel_acc": 0.6},
           "depth_zbuffer": {"abs_err": 0.6, "rel_err": 0.2}}
    per_task, mean = relative_change(clean, adv)
    # seg: (-0.5 + -0.25)/2 = -0.375; depth (lower is better): (-(0.2/0.4) + 0)/2 = -0.25
    assert per_task == pytest.approx({"segment_semantic": -0.375, "depth_zbuffer": -0.25})
    assert mean == pytest.approx(-0.3125)
    assert metric_relative_change(0.4, 0.2, False) == pytest.approx(0.5)
    assert math.isnan(metric_relative_change(0.0, 1.0, True))  # undefined from 0, not 1e12
    assert math.isnan(metric_relative_change(float("nan"), 1.0, True))


def test_relative_change_overrides_and_errors() -> None:
    clean, adv = {"custom": {"score": 2.0}}, {"custom": {"score": 1.0}}
    with pytest.raises(ValueError, match="higher_is_better.*score"):
        relative_change(clean, adv)
    assert relative_change(clean, adv, {"score": True})[1] == pytest.approx(-0.5)
    assert relative_change(clean, adv, {"custom": {"score": False}})[1] == pytest.approx(0.5)
    flipped = relative_change({"depth_zbuffer": {"abs_err": 1.0}},
                              {"depth_zbuffer": {"abs_err": 2.0}},
                              {"depth_zbuffer": {"abs_err": True}})
    assert flipped[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="tasks"):
        relative_change({"normal": {"angle_mean": 1.0}}, {})
    with pytest.raises(ValueError, match="metrics"):
        relative_change({"normal": {"angle_mean": 1.0}}, {"normal": {"angle_median": 1.0}})


def test_relative_change_skips_undefined_metrics_and_tasks() -> None:
    clean = {"scene_class": {"accuracy": 0.0},
             "segment_semantic": {"miou": 0.5, "pixel_acc": 0.0}}
    adv = {"scene_class": {"accuracy": 0.0},
           "segment_semantic": {"miou": 0.25, "pixel_acc": 0.1}}
    per_task, mean = relative_change(clean, adv)
    assert math.isnan(per_task["scene_class"])
    assert per_task["segment_semantic"] == pytest.approx(-0.5)
    assert mean == pytest.approx(-0.5)
