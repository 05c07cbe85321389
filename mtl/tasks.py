"""Task registry: per-sample losses, metric factories, higher-is-better flags, relative change.

Every loss returns a per-sample `Tensor[B]`: the mean over that sample's valid pixels, and 0
(never NaN, with finite gradients) for a sample without any valid pixel. Attacks (DGBA divides
by per-sample losses) and training both rely on that shape. A task may also give `loss_sums`
(per sample: the loss summed over valid pixels, and their count) for batch means over valid
pixels; the built-in losses and both reductions live in `mtl.task_losses`.

Users add their own tasks with `register_task` (or `task_from_paths` for import paths); the
six built-in tasks are registered through the same call. `task_names()` lists them all.
"""
from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from torch import Tensor

from mtl.metrics import (AccuracyMetric, DeferredMetric, DepthMetric, L1Metric, Metric,
                         NormalMetric, SegmentationMetric)
from mtl.plugins import load_object
from mtl.task_losses import (LossSums, classification_loss, classification_pixels, l1_loss,
                             l1_pixels, normal_loss, normal_pixels, segmentation_loss,
                             segmentation_pixels, summed)


@dataclass(frozen=True)
class Task:
    """One task: its loss, its metric accumulator and the direction of each metric."""

    name: str
    kind: str  # "dense" (per-pixel label) or "image" (one label per image)
    default_channels: int | None  # None: the dataset's task_channels decide (class count)
    _loss: Callable[..., Tensor] = field(repr=False, compare=False)
    _metric: Callable[..., Metric] = field(repr=False, compare=False)
    higher_is_better: Mapping[str, bool] = field(compare=False)
    source: tuple[Any, ...] | None = field(default=None, repr=False, compare=False)
    _loss_sums: LossSums | None = field(default=None, repr=False, compare=False)

    def loss(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Per-sample loss `Tensor[B]` (mean over valid pixels; 0 when none is valid)."""
        return self._loss(pred, target, mask)

    def loss_sums(self, pred: Tensor, target: Tensor, mask: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
        """Per sample, (loss summed over valid pixels, valid-pixel count), `Tensor[B]` each: the
        parts of a batch mean over valid pixels. A task registered without `loss_sums` counts
        each sample as one pixel: (per-sample loss, 1)."""
        if self._loss_sums is None:
            loss = self._loss(pred, target, mask)
            return loss, torch.ones_like(loss)
        return self._loss_sums(pred, target, mask)

    def new_metric(self, num_channels: int | None = None, *, infer: bool = False) -> Metric:
        """A fresh accumulator; `num_channels` is the class count for classification tasks.

        A metric whose constructor takes an argument gets the channel count. With
        `infer=True` and no count known (a user's model with unknown head channels) the metric
        is built from the first prediction's channel count (`DeferredMetric`).
        """
        if not _takes_count(self._metric):
            if num_channels is not None:
                _channels(self.name, num_channels)  # a count that contradicts the task's
            return _checked_metric(self.name, self._metric())
        if infer and num_channels is None and self.default_channels is None:
            return DeferredMetric(lambda c: self.new_metric(c), self.higher_is_better)
        return _checked_metric(self.name, self._metric(_channels(self.name, num_channels)))

    def compute(self, metric: Any) -> dict[str, float]:
        """`metric.compute()` as floats; every metric name must have a higher-is-better flag."""
        values = {str(k): float(v) for k, v in metric.compute().items()}
        unflagged = sorted(set(values) - set(self.higher_is_better))
        if unflagged:
            raise ValueError(f"{self.name}: metric(s) {unflagged} have no higher_is_better flag; "
                             f"flags: {sorted(self.higher_is_better)} (register_task("
                             "higher_is_better=...) must cover every metric compute() returns)")
        return values


_METHODS = ("update", "compute", "reset")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
RESERVED_NAMES = ("image", "mean")
"""Batch key of the images and the row name of the mean Δ: never task names."""

_REGISTRY: dict[str, Task] = {}


def _takes_count(factory: Callable[..., Any]) -> bool:
    """True when `factory` (a metric class or function) has a required positional parameter."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
               for p in params)


def _checked_metric(name: str, metric: Any) -> Any:
    missing = [m for m in _METHODS if not callable(getattr(metric, m, None))]
    if missing:
        raise ValueError(f"{name}: the metric factory made a {type(metric).__name__} without "
                         f"{missing}; a metric needs update / compute / reset")
    return metric


def _check_definition(name: Any, loss: Any, metric: Any, channels: Any, kind: Any,
                      flags: Any) -> dict[str, bool]:
    """One ValueError naming the first bad argument of `register_task`; the flags as a dict."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith("_mask") \
            or name in RESERVED_NAMES:
        raise ValueError(f"register_task: name must be an identifier-like string (letters, "
                         f"digits, _), not ending in '_mask' and not one of {RESERVED_NAMES}; "
                         f"got {name!r}")
    if not callable(loss):
        raise ValueError(f"register_task({name!r}): loss must be callable "
                         f"(pred, target, mask=None) -> Tensor[B], got {type(loss).__name__}")
    if not callable(metric) or (isinstance(metric, type) and any(
            not callable(getattr(metric, m, None)) for m in _METHODS)):
        raise ValueError(f"register_task({name!r}): metric must be a class (or factory) whose "
                         f"instances have update / compute / reset, got {metric!r}")
    if channels is not None and (isinstance(channels, bool) or not isinstance(channels, int)
                                 or channels < 1):
        raise ValueError(f"register_task({name!r}): channels must be None or an int >= 1, "
                         f"got {channels!r}")
    if kind not in ("dense", "image"):
        raise ValueError(f"register_task({name!r}): kind must be 'dense' or 'image', got {kind!r}")
    flags = getattr(metric, "higher_is_better", None) if flags is None else flags
    if not isinstance(flags, Mapping) or not flags or not all(
            isinstance(k, str) and isinstance(v, bool) for k, v in flags.items()):
        raise ValueError(f"register_task({name!r}): higher_is_better must be a non-empty mapping "
                         f"metric name -> bool (pass it, or set it on the metric class); "
                         f"got {flags!r}")
    return dict(flags)


def register_task(name: str, loss: Callable[..., Tensor], metric: Callable[..., Any], *,
                  channels: int | None = None, kind: str = "dense",
                  higher_is_better: Mapping[str, bool] | None = None,
                  replace: bool = False, loss_sums: LossSums | None = None) -> Task:
    """Register a task and return it; the built-in six go through here too.

    `loss(pred, target, mask=None) -> Tensor[B]` is per-sample. `metric` is a class or factory
    of accumulators (update / compute / reset: checked on a class now, on a factory's first
    instance), called with the channel count when it has a required positional parameter,
    else with none. `higher_is_better` (metric name -> bool, default: the metric's class
    attribute) must cover every metric `compute()` returns (checked when metrics are
    computed: only then are the names known). `kind`: "dense" (label per pixel) or "image"
    (per image); `channels`: the head's output channels, None when the dataset decides (a
    class count). Registering the same definition again returns the registered task; a
    different one under a taken name needs `replace=True` (built-in tasks cannot be replaced).
    `loss_sums(pred, target, mask=None) -> (sum [B], count [B])` (optional) gives the loss
    summed over each sample's valid pixels and their count, for the attacks' batch mean over
    valid pixels (objective option `reduction="pixel"`); without it a sample counts once.
    """
    flags = _check_definition(name, loss, metric, channels, kind, higher_is_better)
    if loss_sums is not None and not callable(loss_sums):
        raise ValueError(f"register_task({name!r}): loss_sums must be None or callable "
                         f"(pred, target, mask=None) -> (Tensor[B], Tensor[B])")
    return _register(Task(name, kind, channels, loss, metric, MappingProxyType(flags),
                          _loss_sums=loss_sums), replace)


def _register(task: Task, replace: bool) -> Task:
    old = _REGISTRY.get(task.name)
    if old is not None and _same(old, task):
        return old
    if old is not None and (not replace or task.name in TASK_NAMES):
        why = "a built-in task cannot be replaced" if task.name in TASK_NAMES \
            else "pass replace=True to redefine it"
        raise ValueError(f"register_task: {task.name!r} is already registered with a "
                         f"different definition; {why}")
    _REGISTRY[task.name] = task
    return task


def _same(a: Task, b: Task) -> bool:
    if (a.kind, a.default_channels, dict(a.higher_is_better)) != \
            (b.kind, b.default_channels, dict(b.higher_is_better)):
        return False
    if a.source is not None and a.source == b.source:
        return True
    return a._loss is b._loss and a._metric is b._metric and a._loss_sums is b._loss_sums


def task_from_paths(name: str, loss: str, metric: str, *, channels: int | None = None,
                    kind: str = "dense", higher_is_better: Mapping[str, bool] | None = None,
                    replace: bool = False) -> Task:
    """`register_task` with the loss and metric named by import paths
    ``"package.module:attribute"``.

    Idempotent: the same paths under the same name return the registered task (trials in one
    worker register repeatedly); a different definition is an error unless `replace=True`.
    """
    source = ("paths", loss, metric)
    old = _REGISTRY.get(name)
    if old is not None and old.source == source and not replace:
        loss_fn, metric_cls = old._loss, old._metric  # no re-import for the same paths
    else:
        loss_fn = load_object(loss, f"task {name!r} loss")
        metric_cls = load_object(metric, f"task {name!r} metric")
    flags = _check_definition(name, loss_fn, metric_cls, channels, kind, higher_is_better)
    return _register(Task(name, kind, channels, loss_fn, metric_cls, MappingProxyType(flags),
                          source), replace)


def task_names() -> tuple[str, ...]:
    """Every registered task name, the built-in ones first."""
    return tuple(_REGISTRY)


def get_task(name: str) -> Task:
    """The registered task `name`."""
    if name not in _REGISTRY:
        raise ValueError(f"task: unknown name {name!r}; allowed: {', '.join(_REGISTRY)} "
                         "(register your own with mtl.tasks.register_task)")
    return _REGISTRY[name]


def _seg_metric(num_classes: int) -> Metric:
    return SegmentationMetric(num_classes)


def _accuracy_metric(num_classes: int) -> Metric:
    return AccuracyMetric(num_classes)


TASK_NAMES: tuple[str, ...] = ()  # set right below, once the built-ins are registered
register_task("segment_semantic", segmentation_loss, _seg_metric,
              higher_is_better=SegmentationMetric.higher_is_better,
              loss_sums=summed(segmentation_pixels))
register_task("depth_zbuffer", l1_loss("depth_zbuffer"), DepthMetric, channels=1,
              loss_sums=summed(l1_pixels("depth_zbuffer")))
register_task("normal", normal_loss, NormalMetric, channels=3, loss_sums=summed(normal_pixels))
for _name in ("edge_texture", "keypoints2d"):
    register_task(_name, l1_loss(_name), partial(L1Metric, _name), channels=1,
                  higher_is_better=L1Metric.higher_is_better, loss_sums=summed(l1_pixels(_name)))
register_task("scene_class", classification_loss, _accuracy_metric, kind="image",
              higher_is_better=AccuracyMetric.higher_is_better,
              loss_sums=summed(classification_pixels))
TASK_NAMES = task_names()
"""The six BUILT-IN task names only (for code written before `register_task`); use
`task_names()` for every registered task."""


def _channels(name: str, num_channels: int | None = None) -> int:
    """Output channels for `name`: the task's fixed count, or the given (class) count.

    Tasks whose dataset decides (segmentation, scene classes, custom tasks with channels=None)
    need `num_channels` (take it from the dataset's `task_channels`); for the others it must be
    None or agree.
    """
    task = get_task(name)
    if task.default_channels is None:
        if num_channels is None:
            raise ValueError(f"{name}: has no default channel count (the dataset decides, e.g. "
                             "the number of classes); pass it from the dataset's task_channels")
        if not isinstance(num_channels, int) or isinstance(num_channels, bool) or num_channels < 1:
            raise ValueError(f"{name}: channels must be an int >= 1, got {num_channels!r}")
        return num_channels
    if num_channels is not None and num_channels != task.default_channels:
        raise ValueError(f"{name}: channels must be {task.default_channels}, got {num_channels!r}")
    return task.default_channels


def default_channels(name: str, num_classes: int | None = None) -> int:
    """1 for depth/edges/keypoints, 3 for normals; the given class count for classification."""
    return _channels(name, num_classes)


def new_metrics(tasks: Sequence[str], out_channels: Mapping[str, int | None]
                ) -> dict[str, Metric]:
    """Fresh accumulators for `tasks`; a count missing from `out_channels` (a user's model
    without declared head channels) is read from the first prediction."""
    return {t: get_task(t).new_metric(out_channels.get(t), infer=True) for t in tasks}


def _task_and_label(name: str, batch: Mapping[str, Tensor]) -> tuple[Task, Tensor]:
    task = get_task(name)
    if name not in batch:
        raise ValueError(f"batch: has no label for task {name!r}; keys: {sorted(batch)}")
    return task, batch[name]


def task_loss(name: str, pred: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """Per-sample loss of task `name` using `batch[name]` and `batch.get(name + "_mask")`."""
    task, label = _task_and_label(name, batch)
    return task.loss(pred, label, batch.get(name + "_mask"))


def task_loss_sums(name: str, pred: Tensor, batch: Mapping[str, Tensor]
                   ) -> tuple[Tensor, Tensor]:
    """Per-sample (loss sum over valid pixels, valid count) of task `name` (`Task.loss_sums`)."""
    task, label = _task_and_label(name, batch)
    return task.loss_sums(pred, label, batch.get(name + "_mask"))


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
    flags = _REGISTRY[task].higher_is_better if task in _REGISTRY else {}  # registered tasks
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
