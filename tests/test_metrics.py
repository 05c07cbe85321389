"""Metric accumulators against values computed by hand on tiny cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtl.metrics import (AccuracyMetric, DepthMetric, L1Metric, NormalMetric,
                         SegmentationMetric, broadcast_mask)


def _onehot_logits(labels: torch.Tensor, c: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels, c).permute(0, 3, 1, 2).float()


def test_segmentation_known_confusion_matrix() -> None:
    # target [[0,0],[1,2]], pred [[0,1],[1,1]] -> class 0: tp1 fp0 fn1 -> 1/2;
    # class 1: tp1 fp2 fn0 -> 1/3; class 2: tp0 fp0 fn1 -> 0.  mIoU = (1/2+1/3+0)/3.
    target = torch.tensor([[[0, 0], [1, 2]]])
    pred = torch.tensor([[[0, 1], [1, 1]]])
    m = SegmentationMetric(4)  # class 3 absent from target and prediction: skipped
    m.update(_onehot_logits(pred, 4), target)
    out = m.compute()
    assert out["miou"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3, abs=1e-12)
    assert out["pixel_acc"] == pytest.approx(2 / 4)
    assert m.confusion_matrix().tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [0, 1, 0, 0],
                                             [0, 0, 0, 0]]
    assert math.isnan(float(m.per_class_iou()[3]))


def test_segmentation_accumulates_over_the_set_not_per_batch() -> None:
    m = SegmentationMetric(2)
    m.update(torch.tensor([[[0, 0]]]), torch.tensor([[[0, 0]]]))    # batch mIoU would be 1
    m.update(torch.tensor([[[0, 1]]]), torch.tensor([[[1, 1]]]))    # batch mIoU would be 0.25
    # set confusion: t0->p0: 2, t1->p0: 1, t1->p1: 1; IoU0 = 2/3, IoU1 = 1/2
    assert m.compute()["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    m.reset()
    assert math.isnan(m.compute()["miou"])


def test_segmentation_ignore_and_mask() -> None:
    target = torch.tensor([[[0, 255], [1, 1]]])
    pred = torch.tensor([[[0, 1], [1, 0]]])
    mask = torch.tensor([[[True, True], [True, False]]])
    m = SegmentationMetric(2)
    m.update(pred, target, mask)
    assert m.compute() == {"miou": 1.0, "pixel_acc": 1.0}
    with pytest.raises(ValueError, match="class ids"):
        m.update(torch.tensor([[[0]]]), torch.tensor([[[7]]]))
    with pytest.raises(ValueError, match=r"\[B,2,H,W\]"):
        m.update(torch.zeros(1, 3, 2, 2), target)


def test_normal_angles_mean_median_within() -> None:
    # target z; predictions at 0, 10, 20, 45, 90 degrees in the x-z plane (unnormalised scale).
    degs = torch.tensor([0.0, 10.0, 20.0, 45.0, 90.0], dtype=torch.float64)
    rad = torch.deg2rad(degs)
    pred = torch.stack([torch.sin(rad), torch.zeros(5, dtype=torch.float64), torch.cos(rad)])
    pred = (3.0 * pred).float().reshape(1, 3, 1, 5)
    target = torch.tensor([0.0, 0.0, 1.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 5).clone()
    m = NormalMetric()
    m.update(pred, target)
    out = m.compute()
    assert out["angle_mean"] == pytest.approx(float(degs.mean()), abs=1e-4)
    assert out["angle_median"] == pytest.approx(20.0, abs=1e-4)
    assert out["within_11.25"] == pytest.approx(2 / 5)
    assert out["within_22.5"] == pytest.approx(3 / 5)
    assert out["within_30"] == pytest.approx(3 / 5)


def test_normal_invalid_pixels_and_even_median() -> None:
    pred = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 0]]).T.reshape(1, 3, 1, 3)
    m = NormalMetric()
    m.update(pred, target)  # third pixel: zero target -> invalid; angles 0 and 90
    out = m.compute()
    assert out["angle_mean"] == pytest.approx(45.0)
    assert out["angle_median"] == pytest.approx(45.0)  # even count: mean of the two middle
    m.update(pred, target, mask=torch.tensor([[[False, True, True]]]))  # adds only the 90
    assert m.compute()["angle_median"] == pytest.approx(90.0)


def test_normal_histogram_median_matches_exact() -> None:
    g = torch.Generator().manual_seed(0)
    for shape in ((2, 3, 8, 8), (1, 3, 5, 5)):  # even and odd number of angles
        pred = torch.randn(*shape, generator=g)
        target = torch.nn.functional.normalize(torch.randn(*shape, generator=g), dim=1)
        exact, approx = NormalMetric(), NormalMetric(max_exact=10)
        for m in (exact, approx):
            m.update(pred, target)
        assert approx._angles is None  # fell back to the histogram
        assert approx.compute()["angle_median"] == pytest.approx(
            exact.compute()["angle_median"], abs=0.01)
        assert approx.compute()["angle_mean"] == pytest.approx(exact.compute()["angle_mean"])


def test_depth_known_ratios() -> None:
    target = torch.tensor([2.0, 1.0, 4.0, 0.0, 5.0]).reshape(1, 1, 1, 5)
    pred = torch.tensor([2.0, 1.2, 6.0, 1.0, -1.0]).reshape(1, 1, 1, 5)
    mask = torch.tensor([True, True, True, True, False]).reshape(1, 1, 1, 5)
    m = DepthMetric()
    m.update(pred, target, mask)
    out = m.compute()
    # abs over masked pixels (incl. t=0): |0|+0.2+2+1 over 4
    assert out["abs_err"] == pytest.approx((0 + 0.2 + 2 + 1) / 4)
    # rel/delta over t>0: ratios 1, 1.2, 1.5
    assert out["rel_err"] == pytest.approx((0 + 0.2 + 0.5) / 3)
    assert out["delta_1.25"] == pytest.approx(2 / 3)
    assert out["delta_1.25^2"] == pytest.approx(3 / 3)
    assert out["delta_1.25^3"] == pytest.approx(1.0)


def test_depth_negative_prediction_is_clamped_for_delta() -> None:
    m = DepthMetric()
    m.update(torch.tensor([[[[-1.0, 1.0]]]]), torch.tensor([[[[1.0, 1.0]]]]))
    out = m.compute()
    assert out["delta_1.25^3"] == pytest.approx(0.5)  # clamped -> huge ratio, not a NaN
    assert out["abs_err"] == pytest.approx(1.0)
    assert all(np.isfinite(v) for v in out.values())


def test_l1_masked_mean_and_channels() -> None:
    m = L1Metric("edge_texture")
    m.update(torch.tensor([[[[0.5, 1.0], [0.0, 0.0]]]]), torch.zeros(1, 1, 2, 2),
             torch.tensor([[[True, True], [True, False]]]))
    m.update(torch.full((1, 1, 1, 1), 0.25), torch.zeros(1, 1, 1, 1))
    assert m.compute()["l1"] == pytest.approx((0.5 + 1.0 + 0.0 + 0.25) / 4)


def test_accuracy_ignore_and_logits() -> None:
    m = AccuracyMetric(3)
    logits = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [5.0, 0, 0]])
    m.update(logits, torch.tensor([0, 2, 2, 255]))
    assert m.compute()["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 logits"):
        m.update(torch.zeros(4, 5), torch.zeros(4, dtype=torch.long))


def test_float64_accumulation_and_device_agnostic_mask() -> None:
    m = L1Metric()
    for _ in range(3):
        m.update(torch.full((1, 1, 1, 1), 0.1), torch.zeros(1, 1, 1, 1))
    assert m._sums["abs"].dtype == torch.float64
    assert broadcast_mask(None, (2, 3), torch.device("cpu")).all()
    with pytest.raises(ValueError, match="mask"):
        broadcast_mask(torch.ones(2, 2, 3, dtype=torch.bool), (2, 4, 3), torch.device("cpu"))


def test_random_batches_match_a_numpy_reference_over_the_whole_set() -> None:
    """Accumulating 3 uneven batches equals the metric of the concatenated set (numpy)."""
    g = torch.Generator().manual_seed(3)
    c, n = 5, 7
    seg_p, seg_t = torch.randn(n, c, 6, 6, generator=g), torch.randint(0, c, (n, 6, 6), generator=g)
    seg_t[seg_t == 4] = 255
    dep_p, dep_t = torch.rand(n, 1, 6, 6, generator=g) * 3, torch.rand(n, 1, 6, 6, generator=g) * 3
    dep_m = torch.rand(n, 1, 6, 6, generator=g) > 0.3
    nor_p, nor_t = torch.randn(n, 3, 6, 6, generator=g), torch.randn(n, 3, 6, 6, generator=g)
    seg, dep, nor = SegmentationMetric(c), DepthMetric(), NormalMetric()
    for sl in (slice(0, 2), slice(2, 3), slice(3, n)):
        seg.update(seg_p[sl], seg_t[sl])
        dep.update(dep_p[sl], dep_t[sl], dep_m[sl])
        nor.update(nor_p[sl], nor_t[sl])
    p, t = seg_p.argmax(1).numpy().ravel(), seg_t.numpy().ravel()
    p, t = p[t != 255], t[t != 255]
    ious = [((p == k) & (t == k)).sum() / ((p == k) | (t == k)).sum()
            for k in range(c) if ((p == k) | (t == k)).any()]
    assert seg.compute()["miou"] == pytest.approx(float(np.mean(ious)))
    assert seg.compute()["pixel_acc"] == pytest.approx(float((p == t).mean()))
    m = dep_m.numpy()
    dp, dt = dep_p.numpy()[m].astype(np.float64), dep_t.numpy()[m].astype(np.float64)
    ratio = np.maximum(dp / dt, dt / dp)
    assert dep.compute() == pytest.approx({
        "abs_err": np.abs(dp - dt).mean(), "rel_err": (np.abs(dp - dt) / dt).mean(),
        "delta_1.25": (ratio < 1.25).mean(), "delta_1.25^2": (ratio < 1.25 ** 2).mean(),
        "delta_1.25^3": (ratio < 1.25 ** 3).mean()})
    a = nor_p.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    b = nor_t.double().numpy().transpose(0, 2, 3, 1).reshape(-1, 3)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    assert nor.compute() == pytest.approx({
        "angle_mean": ang.mean(), "angle_median": float(np.median(ang)),
        "within_11.25": (ang < 11.25).mean(), "within_22.5": (ang < 22.5).mean(),
        "within_30": (ang < 30).mean()})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_metrics_on_gpu_match_cpu() -> None:
    g = torch.Generator().manual_seed(1)
    pred, target = torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g)
    cpu, gpu = NormalMetric(), NormalMetric()
    cpu.update(pred, target)
    gpu.update(pred.cuda(), target.cuda())
    assert gpu.compute() == pytest.approx(cpu.compute())
