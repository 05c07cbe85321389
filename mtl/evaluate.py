"""Evaluation: clean metrics, white-box attacks, cross-task and cross-model transfer -> rows.

Rows are plain dicts with keys `attack_method, objective, eps, steps, task, metric, clean, adv,
rel_change, n, numerator, denominator, attack_options` (+ `target_id` for transfer), see
docs/internals.md. Per task, a row with `metric="delta"` carries Delta_t (clean/adv None) and
`task="mean", metric="delta"` the mean over tasks; the RFN transfer success rate is
`task="scene_class", metric="success_rate"` (value in `adv`). Metrics accumulate over the whole
loader (LibMTL style), then Delta follows from them.

What a confidence interval needs rides along: `n` is the number of samples (images) behind a
value — the evaluated images for metric and Delta rows, the qualifying examples for the
success rate, whose counts are `numerator` / `denominator` (`adv = numerator / denominator`;
both None on rows that are not rates). `attack_options` is the attack's method/objective
options as canonical JSON (`{}` when none; None on clean rows).

Models: the built-in network or any module whose `forward(x)` returns {task: tensor}; one
without a `tasks` attribute needs `tasks=` (its task names) and is wrapped by `as_task_model`
(metrics whose class count it does not declare read it from the first prediction).
"""
from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl.attacks import AttackSpec, attack, with_dataset_clean_losses
from mtl.models.outputs import task_outputs
from mtl.models.task_model import as_task_model
from mtl.tasks import get_task, metric_relative_change, new_metrics, relative_change

Rows = list[dict[str, Any]]
SUCCESS_TASK = "scene_class"


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _to(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def _task_model(model: nn.Module, tasks: Sequence[str] | None) -> nn.Module:
    """`model` with `tasks` / `out_channels`; `tasks` names a plain model's tasks only (for a
    model that has them, `tasks` selects what to score, see `_eval_tasks`)."""
    return as_task_model(model, None if getattr(model, "tasks", None) is not None else tasks)


def _eval_tasks(model: nn.Module, batch: Mapping[str, Any], tasks: Sequence[str] | None
                ) -> tuple[str, ...]:
    """Tasks to score: `tasks` (checked) or the model's tasks that have labels in the batch."""
    model_tasks = tuple(model.tasks)
    if tasks is None:
        return tuple(t for t in model_tasks if t in batch)
    bad = [t for t in tasks if t not in model_tasks or t not in batch]
    if bad:
        raise ValueError(f"tasks: {bad} not predicted by the model or not labelled in the batch; "
                         f"allowed: {[t for t in model_tasks if t in batch]}")
    return tuple(tasks)


class _Scorer:
    """Metric accumulators of one model on its tasks."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]) -> None:
        self.model, self.tasks = model, tuple(tasks)
        self.metrics = new_metrics(self.tasks, model.out_channels)
        self.count = 0  # images scored: the n behind every metric

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        modes = {m: m.training for m in self.model.modules()}
        self.model.eval()
        try:
            return task_outputs(self.model, images.to(_device(self.model)), self.tasks)
        finally:
            for module, mode in modes.items():
                module.training = mode

    def update(self, images: Tensor, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        preds = self.predict(images)
        self.count += int(images.shape[0])
        for t in self.tasks:
            self.metrics[t].update(preds[t], batch[t], batch.get(t + "_mask"))
        return preds

    def compute(self) -> dict[str, dict[str, float]]:
        return {t: get_task(t).compute(m) for t, m in self.metrics.items()}


def _progress(enabled: bool, what: str, i: int) -> None:
    if enabled:
        print(f"\r{what}: batch {i + 1}", end="", file=sys.stderr, flush=True)


def _score_clean(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                 tasks: Sequence[str] | None, progress: bool) -> _Scorer:
    model = _task_model(model, tasks)
    scorer = None
    for i, batch in enumerate(loader):
        batch = _to(batch, _device(model))
        scorer = scorer or _Scorer(model, _eval_tasks(model, batch, tasks))
        scorer.update(batch["image"], batch)
        _progress(progress, "clean", i)
    if scorer is None:
        raise ValueError("loader: yielded no batch")
    return scorer


def evaluate_clean(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                   tasks: Sequence[str] | None = None, *, progress: bool = False
                   ) -> dict[str, dict[str, float]]:
    """Clean metrics {task: {metric: value}} over the loader (eval mode, no grad).

    `tasks`: the tasks to score (default: the model's labelled ones); for a model without a
    `tasks` attribute also its task names."""
    return _score_clean(model, loader, tasks, progress).compute()


def clean_rows(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
               tasks: Sequence[str] | None = None, *, progress: bool = False) -> Rows:
    """`evaluate_clean` as rows (one per task x metric, `clean` holds the value, `n` the
    images scored; attack columns read `none`/0 and `attack_options` None)."""
    scorer = _score_clean(model, loader, tasks, progress)
    return [{"attack_method": "none", "objective": "none", "eps": 0.0, "steps": 0,
             "task": task, "metric": metric, "clean": value, "adv": None, "rel_change": None,
             "n": scorer.count, "numerator": None, "denominator": None, "attack_options": None}
            for task, metrics in scorer.compute().items() for metric, value in metrics.items()]


def attack_options(spec: AttackSpec) -> str:
    """The spec's method/objective options as canonical JSON (sorted keys, no spaces)."""
    return json.dumps(dict(spec.options), sort_keys=True, separators=(",", ":"), default=str)


def _rows(spec: AttackSpec, clean: Mapping[str, Mapping[str, float]],
          adv: Mapping[str, Mapping[str, float]], n: int,
          extra: Mapping[str, Any] | None = None) -> Rows:
    """Per task x metric rows, per-task Delta rows and the mean Delta row for one spec, each
    measured on `n` images."""
    base = {"attack_method": spec.method, "objective": spec.objective, "eps": float(spec.eps),
            "steps": int(spec.steps), "n": n, "numerator": None, "denominator": None,
            "attack_options": attack_options(spec), **(extra or {})}
    rows: Rows = []
    for task, metrics in clean.items():
        flags = get_task(task).higher_is_better
        for metric, value in metrics.items():
            rows.append({**base, "task": task, "metric": metric, "clean": value,
                         "adv": adv[task][metric],
                         "rel_change": metric_relative_change(value, adv[task][metric],
                                                              flags[metric])})
    per_task, mean = relative_change(clean, adv)
    for task, delta in per_task.items():
        rows.append({**base, "task": task, "metric": "delta", "clean": None, "adv": None,
                     "rel_change": delta})
    rows.append({**base, "task": "mean", "metric": "delta", "clean": None, "adv": None,
                 "rel_change": mean})
    return rows


def _validated(specs: Sequence[AttackSpec], tasks: Sequence[str]) -> list[AttackSpec]:
    specs = list(specs)
    for spec in specs:
        if not isinstance(spec, AttackSpec):
            raise ValueError(f"specs: expected AttackSpec items, got {type(spec).__name__}")
        spec.validate(tasks)
    return specs


def _craft(model: nn.Module, batch: Mapping[str, Any], spec: AttackSpec) -> Tensor:
    return attack(model, batch, method=spec.method, objective=spec.objective, eps=spec.eps,
                  steps=spec.steps, **dict(spec.options))


def _with_clean_losses(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                       specs: list[AttackSpec]) -> list[AttackSpec]:
    """The specs to craft with: the DGBA authors' APGD needs each task's clean loss over the
    whole evaluation set (C_t), computed once here; rows keep the options the user gave."""
    if not any(s.options.get("variant") == "official" for s in specs):
        return specs  # nothing to compute: no extra pass over the loader
    first = next(iter(loader), None)
    if first is None:
        return specs
    tasks = _eval_tasks(model, _to(first, _device(model)), None)
    return with_dataset_clean_losses(specs, model, loader, tasks)


def evaluate_attacks(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                     specs: Sequence[AttackSpec], *, tasks: Sequence[str] | None = None,
                     progress: bool = False) -> Rows:
    """White-box rows: every spec attacks `model` and is scored on `model`'s labelled tasks.

    `tasks` names the tasks of a model without a `tasks` attribute."""
    model = as_task_model(model, tasks)
    specs = _validated(specs, model.tasks)
    crafted = _with_clean_losses(model, loader, specs)
    clean, advs = None, None
    for i, batch in enumerate(loader):
        batch = _to(batch, _device(model))
        if clean is None:
            tasks = _eval_tasks(model, batch, None)
            clean, advs = _Scorer(model, tasks), [_Scorer(model, tasks) for _ in specs]
        clean.update(batch["image"], batch)
        for spec, scorer in zip(crafted, advs):
            scorer.update(_craft(model, batch, spec), batch)
        _progress(progress, "attacks", i)
    if clean is None:
        raise ValueError("loader: yielded no batch")
    clean_metrics = clean.compute()
    return [row for spec, scorer in zip(specs, advs)
            for row in _rows(spec, clean_metrics, scorer.compute(), clean.count)]


def cross_task_rows(model: nn.Module, loader: Iterable[Mapping[str, Tensor]], method: str,
                    eps: float, steps: int = 10, *, tasks: Sequence[str] | None = None,
                    progress: bool = False, **options: Any) -> Rows:
    """Cross-task transfer: attack with `single:<i>` for every task i, score every task j.

    `delta_matrix(rows)` turns the result into the T x T matrix of Delta_j under attack i.
    `tasks` names the tasks of a model without a `tasks` attribute.
    """
    model = as_task_model(model, tasks)
    specs = [AttackSpec(method, f"single:{t}", eps, steps, options) for t in model.tasks]
    return evaluate_attacks(model, loader, specs, progress=progress)


def delta_matrix(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """{attacked task i: {scored task j: Delta_j}} from cross-task rows (`single:<i>` specs).

    If the rows hold several (method, eps, steps) groups, pass one group only.
    """
    matrix: dict[str, dict[str, float]] = {}
    seen: set[tuple[Any, ...]] = set()
    for row in rows:
        if row["metric"] != "delta" or row["task"] == "mean" \
                or not str(row["objective"]).startswith("single:"):
            continue
        source = str(row["objective"]).split(":", 1)[1]
        seen.add((row["attack_method"], row["eps"], row["steps"], row.get("target_id")))
        matrix.setdefault(source, {})[row["task"]] = float(row["rel_change"])
    if len(seen) > 1:
        raise ValueError(f"rows: hold {len(seen)} (method, eps, steps, target) groups "
                         f"{sorted(map(str, seen))}; filter to one first")
    return matrix


def evaluate_transfer(surrogate: nn.Module, targets: Mapping[str, nn.Module],
                      loader: Iterable[Mapping[str, Tensor]], specs: Sequence[AttackSpec], *,
                      tasks: Sequence[str] | None = None, progress: bool = False) -> Rows:
    """Cross-model transfer: craft on `surrogate`, score every target (rows carry target_id).

    For scene_class, the RFN success rate counts the examples that EVERY target (that predicts
    scene_class) classifies correctly on the clean input (`denominator`, also `n`), and reports
    the share of those that this target misclassifies after the attack (`numerator`; the rate
    is None when no example qualifies).
    `tasks` names the tasks of the models (surrogate or targets) without a `tasks` attribute.
    """
    if not targets:
        raise ValueError("targets: need at least one target model")
    surrogate = _task_model(surrogate, tasks)
    targets = {tid: _task_model(target, tasks) for tid, target in targets.items()}
    specs = _validated(specs, surrogate.tasks)
    crafted = _with_clean_losses(surrogate, loader, specs)
    ids = list(targets)
    clean: dict[str, _Scorer] = {}
    advs: dict[str, list[_Scorer]] = {}
    counted, fooled = 0, {tid: [0] * len(specs) for tid in ids}
    for i, batch in enumerate(loader):
        batch = _to(batch, _device(surrogate))
        if not clean:
            for tid in ids:
                tasks = _eval_tasks(targets[tid], batch, None)
                clean[tid] = _Scorer(targets[tid], tasks)
                advs[tid] = [_Scorer(targets[tid], tasks) for _ in specs]
        classifiers = [tid for tid in ids if SUCCESS_TASK in clean[tid].tasks]
        correct = None
        for tid in ids:
            preds = clean[tid].update(batch["image"], _to(batch, _device(targets[tid])))
            if tid in classifiers:
                label = batch[SUCCESS_TASK].to(preds[SUCCESS_TASK].device)
                ok = (preds[SUCCESS_TASK].argmax(1) == label).cpu()
                correct = ok if correct is None else correct & ok
        if correct is not None:
            counted += int(correct.sum())
        for s, spec in enumerate(crafted):
            adv = _craft(surrogate, batch, spec)
            for tid in ids:
                preds = advs[tid][s].update(adv, _to(batch, _device(targets[tid])))
                if tid in classifiers:
                    label = batch[SUCCESS_TASK].to(preds[SUCCESS_TASK].device)
                    wrong = (preds[SUCCESS_TASK].argmax(1) != label).cpu()
                    fooled[tid][s] += int((wrong & correct).sum())
        _progress(progress, "transfer", i)
    if not clean:
        raise ValueError("loader: yielded no batch")
    rows: Rows = []
    for tid in ids:
        clean_metrics = clean[tid].compute()
        for s, spec in enumerate(specs):
            rows += _rows(spec, clean_metrics, advs[tid][s].compute(), clean[tid].count,
                          {"target_id": tid})
            if SUCCESS_TASK in clean[tid].tasks:
                rows.append({"attack_method": spec.method, "objective": spec.objective,
                             "eps": float(spec.eps), "steps": int(spec.steps),
                             "target_id": tid, "task": SUCCESS_TASK, "metric": "success_rate",
                             "clean": None, "adv": fooled[tid][s] / counted if counted else None,
                             "rel_change": None, "n": counted, "numerator": fooled[tid][s],
                             "denominator": counted, "attack_options": attack_options(spec)})
    return rows
