"""Metric accumulators for every task (LibMTL-style `update / compute / reset`).

Each accumulator sums over the *whole* evaluation set (pixel-weighted for dense tasks), on the
device of the tensors it is given, in float64 (counts in int64, exact), with no Python loop over
pixels and no host sync in `update` beyond input validation. `compute()` returns plain floats;
a metric that saw no valid pixel/sample is `nan` (the truthful value of an empty mean).

Ratios (`miou`, `pixel_acc`, `within_*`, `delta_*`, `accuracy`) are shares in [0, 1]; multiply
by 100 for the percentages papers print. Relative change is scale-free, so Δ is unaffected.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255


def broadcast_mask(mask: Tensor | None, shape: tuple[int, ...], device: torch.device,
                   field: str = "mask") -> Tensor:
    """A bool validity mask of exactly `shape` ([B,H,W] or [B]) from None, `shape` or [B,1,H,W]."""
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    if mask.dim() == len(shape) + 1 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{field}: shape {tuple(mask.shape)} does not match the label's "
                         f"spatial shape {tuple(shape)} (allowed: that shape, or with a channel "
                         "dim of 1)")
    return mask.to(device=device, dtype=torch.bool)


def _with_channel(x: Tensor) -> Tensor:
    """[B,H,W] -> [B,1,H,W]; other shapes unchanged (single-channel maps may come either way)."""
    return x[:, None] if x.dim() == 3 else x


def check_dense(field: str, pred: Tensor, target: Tensor, channels: int | None) -> None:
    """Dense maps: pred and target both [B,C,H,W] of equal shape (and C = ``channels``)."""
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"{field}: pred {tuple(pred.shape)} and target {tuple(target.shape)} "
                         "must both be [B,C,H,W] with equal shapes")
    if channels is not None and pred.shape[1] != channels:
        raise ValueError(f"{field}: expected {channels} channels, got {pred.shape[1]}")


class Metric(ABC):
    """Accumulates one task's metrics over batches; `higher_is_better` flags each metric name."""

    higher_is_better: Mapping[str, bool] = MappingProxyType({})

    def __init__(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._sums = {}

    def _add(self, key: str, value: Tensor) -> None:
        value = value.detach()
        value = value.to(torch.int64 if not value.is_floating_point() else torch.float64)
        if key in self._sums:
            self._sums[key] = self._sums[key] + value.to(self._sums[key].device)
        else:
            self._sums[key] = value.clone()

    def _get(self, key: str) -> float:
        value = self._sums.get(key)
        return 0.0 if value is None else float(value.item())

    def _ratio(self, num: str, den: str) -> float:
        d = self._get(den)
        return self._get(num) / d if d > 0 else math.nan

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add one batch (pred and target as in the batch contract)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over everything seen since the last reset."""


class SegmentationMetric(Metric):
    """mIoU and pixel accuracy from one confusion matrix accumulated over the whole set.

    mIoU averages IoU over the classes *present in the target or the prediction* anywhere in
    the set (union > 0); a class absent from both has IoU 0/0 and is skipped rather than
    counted as 0 or 1. Pixels with target 255 or mask False are ignored.
    `pred` is logits [B,C,H,W] (argmax is taken) or labels [B,H,W].
    """

    higher_is_better = MappingProxyType({"miou": True, "pixel_acc": True})

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes: must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        c = self.num_classes
        if target.dim() != 3:
            raise ValueError(f"segment_semantic target: expected [B,H,W], "
                             f"got {tuple(target.shape)}")
        if pred.dim() == 4:
            if pred.shape[1] != c or pred.shape[0] != target.shape[0] \
                    or pred.shape[2:] != target.shape[1:]:
                raise ValueError(f"segment_semantic pred: expected [B,{c},H,W] matching target "
                                 f"{tuple(target.shape)}, got {tuple(pred.shape)}")
            labels = pred.argmax(dim=1)
        elif pred.shape == target.shape:
            labels = pred.long()
        else:
            raise ValueError(f"segment_semantic pred: expected logits [B,{c},H,W] or labels "
                             f"[B,H,W] matching target {tuple(target.shape)}, "
                             f"got {tuple(pred.shape)}")
        target = target.to(labels.device).long()
        valid = (target != self.ignore_index) & broadcast_mask(
            mask, tuple(target.shape), labels.device, "segment_semantic_mask")
        t, p = target[valid], labels[valid]
        if bool(((t < 0) | (t >= c)).any()) or bool(((p < 0) | (p >= c)).any()):
            raise ValueError(f"segment_semantic: class ids must be in [0, {c - 1}] "
                             f"(or {self.ignore_index} = ignore)")
        conf = torch.bincount(t * c + p, minlength=c * c).reshape(c, c)
        self._add("confusion", conf)

    def confusion_matrix(self) -> Tensor:
        """[C, C] int64 counts, rows = target class, columns = predicted class."""
        conf = self._sums.get("confusion")
        if conf is None:
            return torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        return conf.cpu()

    def per_class_iou(self) -> Tensor:
        """IoU per class (float64, nan for classes absent from target and prediction)."""
        conf = self.confusion_matrix().double()
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))

    def compute(self) -> dict[str, float]:
        conf = self.confusion_matrix().double()
        total = conf.sum()
        if total == 0:
            return {"miou": math.nan, "pixel_acc": math.nan}
        iou = self.per_class_iou()
        return {"miou": float(iou[~iou.isnan()].mean()),
                "pixel_acc": float(conf.diag().sum() / total)}


class NormalMetric(Metric):
    """Angular error (degrees) between normalised pred and target normals over valid pixels.

    Valid: target not the zero vector, finite, and mask True. The median is exact while at most
    `max_exact` angles have been seen (they are kept); beyond that it is read from a 0.01-degree
    histogram (kept always), so it is then within one bin (0.01 degrees) of the exact value.
    """

    higher_is_better = MappingProxyType({"angle_mean": False, "angle_median": False,
                                         "within_11.25": True, "within_22.5": True,
                                         "within_30": True})
    THRESHOLDS = (11.25, 22.5, 30.0)
    BINS = 18000  # 180 degrees / 0.01

    def __init__(self, max_exact: int = 1 << 22) -> None:
        self.max_exact = max_exact
        super().__init__()

    def reset(self) -> None:
        super().reset()
        self._angles: list[Tensor] | None = []
        self._kept = 0

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        check_dense("normal", pred, target, 3)
        target = target.to(pred.device)
        t = target.double()
        valid = (t.norm(dim=1) > 1e-6) & torch.isfinite(t).all(dim=1)
        valid &= broadcast_mask(mask, (t.shape[0], *t.shape[2:]), pred.device, "normal_mask")
        cos = (F.normalize(pred.double(), dim=1) * F.normalize(t, dim=1)).sum(dim=1)
        angles = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))[valid]
        self._add("count", valid.sum())
        self._add("sum", angles.sum())
        for th in self.THRESHOLDS:
            self._add(f"within_{th:g}", (angles < th).sum())
        bins = (angles * (self.BINS / 180.0)).long().clamp(0, self.BINS - 1)
        self._add("hist", torch.bincount(bins, minlength=self.BINS))
        if self._angles is not None:
            self._kept += angles.numel()
            if self._kept > self.max_exact:
                self._angles = None  # too many to keep: fall back to the histogram
            else:
                self._angles.append(angles)

    def _median(self) -> float:
        n = int(self._get("count"))
        if n == 0:
            return math.nan
        if self._angles is not None:
            s = torch.cat(self._angles).sort().values
            return float(s[n // 2]) if n % 2 else float((s[n // 2 - 1] + s[n // 2]) / 2)
        hist = self._sums["hist"].cpu().double()
        cum = hist.cumsum(0)
        width = 180.0 / self.BINS

        def order_statistic(rank: int) -> float:  # 0-based; placed uniformly inside its bin
            b = int(torch.searchsorted(cum, torch.tensor([rank], dtype=torch.float64),
                                       right=True).item())
            before = float(cum[b - 1]) if b > 0 else 0.0
            return width * (b + (rank - before + 0.5) / float(hist[b]))

        if n % 2:
            return order_statistic(n // 2)
        return (order_statistic(n // 2 - 1) + order_statistic(n // 2)) / 2

    def compute(self) -> dict[str, float]:
        out = {"angle_mean": self._ratio("sum", "count"), "angle_median": self._median()}
        for th in self.THRESHOLDS:
            out[f"within_{th:g}"] = self._ratio(f"within_{th:g}", "count")
        return out


class DepthMetric(Metric):
    """Absolute / relative error and δ-thresholds over valid depth pixels (pixel-weighted).

    `abs_err` = mean |p - t| over pixels with mask True and a finite target (raw predictions);
    `rel_err` = mean |p - t| / t and `delta_1.25^k` = share of max(p/t, t/p) < 1.25^k over the
    valid pixels with t > 0, where p is clamped to >= `min_depth` so the ratio is defined.
    """

    higher_is_better = MappingProxyType({"abs_err": False, "rel_err": False, "delta_1.25": True,
                                         "delta_1.25^2": True, "delta_1.25^3": True})

    def __init__(self, min_depth: float = 1e-6) -> None:
        if not min_depth > 0:
            raise ValueError(f"min_depth: must be > 0, got {min_depth}")
        self.min_depth = min_depth
        super().__init__()

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        pred, target = _with_channel(pred), _with_channel(target)
        check_dense("depth_zbuffer", pred, target, 1)
        p, t = pred[:, 0].double(), target[:, 0].to(pred.device).double()
        valid = broadcast_mask(mask, tuple(t.shape), pred.device, "depth_zbuffer_mask")
        valid &= torch.isfinite(t)
        err = (p - t).abs()
        zero = torch.zeros((), dtype=torch.float64, device=p.device)
        self._add("count", valid.sum())
        self._add("abs", torch.where(valid, err, zero).sum())
        pos = valid & (t > 0)
        t_safe = torch.where(pos, t, torch.ones_like(t))
        self._add("pos", pos.sum())
        self._add("rel", torch.where(pos, err / t_safe, zero).sum())
        pc = p.clamp_min(self.min_depth)
        ratio = torch.maximum(pc / t_safe, t_safe / pc)
        for k in (1, 2, 3):
            self._add(f"delta{k}", (pos & (ratio < 1.25 ** k)).sum())

    def compute(self) -> dict[str, float]:
        return {"abs_err": self._ratio("abs", "count"), "rel_err": self._ratio("rel", "pos"),
                "delta_1.25": self._ratio("delta1", "pos"),
                "delta_1.25^2": self._ratio("delta2", "pos"),
                "delta_1.25^3": self._ratio("delta3", "pos")}


class L1Metric(Metric):
    """Masked mean absolute error over all valid elements of the set (edges, keypoints)."""

    higher_is_better = MappingProxyType({"l1": False})

    def __init__(self, task: str = "l1") -> None:
        self.task = task
        super().__init__()

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        pred, target = _with_channel(pred), _with_channel(target)
        check_dense(self.task, pred, target, None)
        t = target.to(pred.device).double()
        valid = broadcast_mask(mask, (t.shape[0], *t.shape[2:]), pred.device, f"{self.task}_mask")
        valid = valid[:, None].expand_as(t) & torch.isfinite(t)
        err = torch.where(valid, (pred.double() - t).abs(), torch.zeros((), dtype=torch.float64,
                                                                         device=pred.device))
        self._add("count", valid.sum())
        self._add("abs", err.sum())

    def compute(self) -> dict[str, float]:
        return {"l1": self._ratio("abs", "count")}


class AccuracyMetric(Metric):
    """Top-1 accuracy for image-level classification; target 255 or mask False is skipped."""

    higher_is_better = MappingProxyType({"accuracy": True})

    def __init__(self, num_classes: int | None = None, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        super().__init__()

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if target.dim() != 1:
            raise ValueError(f"scene_class target: expected [B], got {tuple(target.shape)}")
        if pred.dim() == 2 and pred.shape[0] == target.shape[0]:
            if self.num_classes is not None and pred.shape[1] != self.num_classes:
                raise ValueError(f"scene_class pred: expected {self.num_classes} logits, "
                                 f"got {pred.shape[1]}")
            labels = pred.argmax(dim=1)
        elif pred.shape == target.shape:
            labels = pred.long()
        else:
            raise ValueError(f"scene_class pred: expected logits [B,K] or labels [B] matching "
                             f"target {tuple(target.shape)}, got {tuple(pred.shape)}")
        target = target.to(labels.device).long()
        valid = (target != self.ignore_index) & broadcast_mask(mask, tuple(target.shape),
                                                               labels.device, "scene_class_mask")
        self._add("count", valid.sum())
        self._add("correct", (valid & (labels == target)).sum())

    def compute(self) -> dict[str, float]:
        return {"accuracy": self._ratio("correct", "count")}


class DeferredMetric:
    """A metric built on the first `update` from the prediction's channel count (dim 1).

    For a user's model whose head channels were not declared: the class count a segmentation
    or classification metric needs is then read from the logits it is given.
    """

    def __init__(self, factory: Callable[[int], Metric], higher_is_better: Mapping[str, bool]
                 ) -> None:
        self.factory = factory
        self.higher_is_better = higher_is_better
        self.metric: Metric | None = None

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        if self.metric is None:
            if pred.dim() < 2:
                raise ValueError(f"pred: cannot read a channel count from shape "
                                 f"{tuple(pred.shape)}; declare the model's out_channels")
            self.metric = self.factory(int(pred.shape[1]))
        self.metric.update(pred, target, mask)

    def compute(self) -> dict[str, float]:
        """The built metric's values; nan for each flagged metric before any update."""
        if self.metric is None:
            return {name: math.nan for name in self.higher_is_better}
        return self.metric.compute()

    def reset(self) -> None:
        if self.metric is not None:
            self.metric.reset()
