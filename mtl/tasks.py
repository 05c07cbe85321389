"""Task registry: per-sample losses, metric factories, higher-is-better flags, relative change.

Every loss returns a per-sample `Tensor[B]`: the mean over that sample's valid pixels, and 0
(never NaN, with finite gradients) for a sample without any valid pixel. Attacks (DGBA divides
by per-sample losses) and training both rely on that shape.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.metrics import (IGNORE_INDEX, AccuracyMetric, DepthMetric, L1Metric, Metric,
                         NormalMetric, SegmentationMetric, broadcast_mask)

TASK_NAMES = ("segment_semantic", "depth_zbuffer", "normal", "edge_texture", "keypoints2d",
              "scene_class")
CLASSIFICATION_TASKS = ("segment_semantic", "scene_class")


def _masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """Per-sample mean of `per_pixel` [B,...] over `valid`; 0 where a sample has none valid."""
    zero = torch.zeros((), dtype=per_pixel.dtype, device=per_pixel.device)
    total = torch.where(valid, per_pixel, zero).flatten(1).sum(dim=1)
    count = valid.flatten(1).sum(dim=1).clamp_min(1).to(per_pixel.dtype)
    return total / count


def _check_pair(task: str, pred: Tensor, target: Tensor, channels: int | None) -> None:
    if pred.dim() != 4 or pred.shape != target.shape:
        raise ValueError(f"{task}: pred {tuple(pred.shape)} and target {tuple(target.shape)} must "
                         "both be [B,C,H,W] with equal shapes")
    if channels is not None and pred.shape[1] != channels:
        raise ValueError(f"{task}: expected {channels} channels, got {pred.shape[1]}")


def segmentation_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample cross-entropy over pixels whose label is not 255 and whose mask is True."""
    if pred.dim() != 4 or target.dim() != 3 or pred.shape[0] != target.shape[0] \
            or pred.shape[2:] != target.shape[1:]:
        raise ValueError(f"segment_semantic: pred must be [B,C,H,W] and target [B,H,W] with the "
                         f"same B,H,W; got {tuple(pred.shape)} and {tuple(target.shape)}")
    target = target.long()
    valid = (target != IGNORE_INDEX) & broadcast_mask(mask, tuple(target.shape), pred.device,
                                                      "segment_semantic_mask")
    ce = F.cross_entropy(pred, torch.where(valid, target, 0), reduction="none")
    return _masked_mean(ce, valid)


def normal_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample mean of 1 - cos(normalise(pred), target) over non-zero, finite targets."""
    _check_pair("normal", pred, target, 3)
    valid = (target.abs().sum(dim=1) > 0) & torch.isfinite(target).all(dim=1) & broadcast_mask(
        mask, (target.shape[0], *target.shape[2:]), pred.device, "normal_mask")
    target = torch.where(valid[:, None], target.to(pred.dtype), 0.0)  # no NaN into gradients
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1)
    return _masked_mean(1.0 - cos, valid)


def _l1_loss(task: str) -> Callable[[Tensor, Tensor, Tensor | None], Tensor]:
    def loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        _check_pair(task, pred, target, 1)
        valid = broadcast_mask(mask, (target.shape[0], *target.shape[2:]), pred.device,
                               f"{task}_mask")
        safe = torch.where(valid[:, None], target.to(pred.dtype), 0.0)  # no NaN into gradients
        return _masked_mean((pred - safe).abs().mean(dim=1), valid)
    loss.__doc__ = f"Per-sample masked L1 for {task} (everywhere valid without a mask)."
    return loss


def classification_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample cross-entropy for image-level classes; target 255 / mask False gives 0."""
    if pred.dim() != 2 or target.shape != (pred.shape[0],):
        raise ValueError(f"scene_class: pred must be [B,K] and target [B]; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    target = target.long()
    valid = (target != IGNORE_INDEX) & broadcast_mask(mask, tuple(target.shape), pred.device,
                                                      "scene_class_mask")
    ce = F.cross_entropy(pred, torch.where(valid, target, 0), reduction="none")
    return torch.where(valid, ce, torch.zeros((), dtype=ce.dtype, device=ce.device))


@dataclass(frozen=True)
class Task:
    """One task: its loss, its metric accumulator and the direction of each metric."""

    name: str
    kind: str  # "dense" (per-pixel label) or "image" (one label per image)
    default_channels: int | None  # None: the dataset's task_channels decide (class count)
    _loss: Callable[..., Tensor] = field(repr=False, compare=False)
    _metric: Callable[[int], Metric] = field(repr=False, compare=False)
    higher_is_better: Mapping[str, bool] = field(compare=False)

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-sample loss `Tensor[B]` (mean over valid pixels; 0 when none is valid)."""
        return self._loss(pred, target, mask)

    def new_metric(self, num_channels: int | None = None) -> Metric:
        """A fresh accumulator; `num_channels` is the class count for classification tasks."""
        return self._metric(_channels(self.name, num_channels))


def _new_seg(c: int) -> Metric:
    return SegmentationMetric(c)


_REGISTRY: dict[str, Task] = {
    "segment_semantic": Task("segment_semantic", "dense", None, segmentation_loss, _new_seg,
                             SegmentationMetric.higher_is_better),
    "depth_zbuffer": Task("depth_zbuffer", "dense", 1, _l1_loss("depth_zbuffer"),
                          lambda c: DepthMetric(), DepthMetric.higher_is_better),
    "normal": Task("normal", "dense", 3, normal_loss, lambda c: NormalMetric(),
                   NormalMetric.higher_is_better),
    "edge_texture": Task("edge_texture", "dense", 1, _l1_loss("edge_texture"),
                         lambda c: L1Metric("edge_texture"), L1Metric.higher_is_better),
    "keypoints2d": Task("keypoints2d", "dense", 1, _l1_loss("keypoints2d"),
                        lambda c: L1Metric("keypoints2d"), L1Metric.higher_is_better),
    "scene_class": Task("scene_class", "image", None, classification_loss,
                        lambda c: AccuracyMetric(c), AccuracyMetric.higher_is_better),
}


def get_task(name: str) -> Task:
    """The registered task `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"task: unknown name {name!r}; allowed: {', '.join(TASK_NAMES)}")
    return _REGISTRY[name]


def _channels(name: str, num_channels: int | None = None) -> int:
    """Output channels for `name`: the fixed count of a regression task, or the given class count.

    Classification tasks have no universal class count, so `num_channels` is required for them
    (take it from the dataset's `task_channels`); for the others it must be None or agree.
    """
    task = get_task(name)
    if task.default_channels is None:
        if num_channels is None:
            raise ValueError(f"{name}: has no default channel count (it is the number of classes); "
                             "pass it from the dataset's task_channels")
        if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 2:
            raise ValueError(f"{name}: number of classes must be an int >= 2, got {num_channels!r}")
        return num_channels
    if num_channels is not None and num_channels != task.default_channels:
        raise ValueError(f"{name}: channels must be {task.default_channels}, got {num_channels!r}")
    return task.default_channels


def default_channels(name: str, num_classes: int | None = None) -> int:
    """1 for depth/edges/keypoints, 3 for normals; the given class count for classification."""
    return _channels(name, num_classes)


def task_loss(name: str, pred: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """Per-sample loss of task `name` using `batch[name]` and `batch.get(name + "_mask")`."""
    task = get_task(name)
    if name not in batch:
        raise ValueError(f"batch: has no label for task {name!r}; keys: {sorted(batch)}")
    return task.loss(pred, batch[name], batch.get(name + "_mask"))


UNDEFINED_BELOW = 1e-12
"""|clean| under this makes a relative change undefined (e.g. an untrained model's accuracy 0)."""


def metric_relative_change(clean: float, adv: float, higher_is_better: bool) -> float:
    """σ (adv − clean) / |clean|, σ = +1 if higher is better else −1.

    NaN where it is undefined — a clean value of (almost) 0 or a non-finite input — rather than a
    huge number from a floored denominator, so that means over tasks can skip it honestly.
    """
    clean, adv = float(clean), float(adv)
    if not (math.isfinite(clean) and math.isfinite(adv)) or abs(clean) < UNDEFINED_BELOW:
        return math.nan
    sigma = 1.0 if higher_is_better else -1.0
    return sigma * (adv - clean) / abs(clean)


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if math.isfinite(v)]
    return sum(defined) / len(defined) if defined else math.nan


def _flag(task: str, metric: str,
          override: Mapping[str, bool | Mapping[str, bool]] | None) -> bool:
    if override is not None:
        per_task = override.get(task)
        if isinstance(per_task, Mapping) and metric in per_task:
            return bool(per_task[metric])
        flat = override.get(metric)
        if isinstance(flat, bool):
            return flat
    flags = _REGISTRY[task].higher_is_better if task in _REGISTRY else {}
    if metric not in flags:
        known = sorted(flags) if flags else "none (unknown task)"
        raise ValueError(f"higher_is_better: no flag for metric {metric!r} of task {task!r}; "
                         f"registry metrics: {known}; pass higher_is_better={{task: {{metric: "
                         "bool}}}} or {metric: bool}")
    return flags[metric]


def relative_change(clean: Mapping[str, Mapping[str, float]],
                    adv: Mapping[str, Mapping[str, float]],
                    higher_is_better: Mapping[str, bool | Mapping[str, bool]] | None = None,
                    ) -> tuple[dict[str, float], float]:
    """Δ per task (mean over its metrics of σ(adv − clean)/|clean|) and the mean over tasks.

    Flags come from the registry; `higher_is_better` overrides them, either per task
    (`{task: {metric: bool}}`) or per metric name for every task (`{metric: bool}`).
    Negative Δ means the attack hurt. Undefined metric changes (NaN, see
    `metric_relative_change`) are skipped; a task with none defined is NaN and skipped too.
    """
    if not clean:
        raise ValueError("clean: needs at least one task with metrics")
    if set(clean) != set(adv):
        raise ValueError(f"adv: tasks {sorted(adv)} differ from clean tasks {sorted(clean)}")
    per_task: dict[str, float] = {}
    for task, metrics in clean.items():
        if not metrics:
            raise ValueError(f"clean[{task!r}]: has no metrics")
        if set(metrics) != set(adv[task]):
            raise ValueError(f"adv[{task!r}]: metrics {sorted(adv[task])} differ from clean "
                             f"metrics {sorted(metrics)}")
        changes = [metric_relative_change(v, adv[task][m], _flag(task, m, higher_is_better))
                   for m, v in metrics.items()]
        per_task[task] = _nanmean(changes)
    return per_task, _nanmean(list(per_task.values()))
