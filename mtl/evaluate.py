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

One pass per checkpoint: `evaluate_checkpoint` crafts each spec once per batch and scores the
adversarial batch on the model (white-box), on every transfer target and for the cross-task
specs it shares, with one clean forward per batch; the targets' clean scores
(`TargetReference`) are computed once per trial. `evaluate_attacks`, `cross_task_rows` and
`evaluate_transfer` are its one-phase forms (the rows are the same).

Models: the built-in network or any module whose `forward(x)` returns {task: tensor}; one
without a `tasks` attribute needs `tasks=` (its task names) and is wrapped by `as_task_model`
(metrics whose class count it does not declare read it from the first prediction).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtl.attacks import AttackSpec, attack, with_dataset_clean_losses
from mtl.attacks.modes import eval_mode, held_eval
from mtl.models.task_model import as_task_model
from mtl.scoring import (SUCCESS_TASK, PhaseClock, RngStream, Scorer, TargetReference,
                         correct_mask, device_of, eval_tasks, progress_line, rng_state,
                         task_model, to_device)
from mtl.tasks import get_task, metric_relative_change, relative_change

Rows = list[dict[str, Any]]


def _score_clean(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                 tasks: Sequence[str] | None, progress: bool) -> Scorer:
    model = task_model(model, tasks)
    scorer = None
    with eval_mode(model):  # modes saved once for the pass
        for i, batch in enumerate(loader):
            batch = to_device(batch, device_of(model))
            scorer = scorer or Scorer(model, eval_tasks(model, batch, tasks))
            scorer.update(batch["image"], batch)
            progress_line(progress, "clean", i)
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
    return _clean_rows(scorer.compute(), scorer.count)


def _clean_rows(clean: Mapping[str, Mapping[str, float]], n: int) -> Rows:
    return [{"attack_method": "none", "objective": "none", "eps": 0.0, "steps": 0,
             "task": task, "metric": metric, "clean": value, "adv": None, "rel_change": None,
             "n": n, "numerator": None, "denominator": None, "attack_options": None}
            for task, metrics in clean.items() for metric, value in metrics.items()]


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


def _craft(model: nn.Module, batch: Mapping[str, Any], spec: AttackSpec,
           clean_outputs: Mapping[str, Tensor] | None = None) -> Tensor:
    """The spec's adversarial batch; `clean_outputs`: the model's outputs on the clean batch
    (spares the relative-change objectives their own clean forward, same numbers)."""
    return attack(model, batch, method=spec.method, objective=spec.objective, eps=spec.eps,
                  steps=spec.steps, clean_outputs=clean_outputs, **dict(spec.options))


def _with_clean_losses(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                       specs: list[AttackSpec]) -> list[AttackSpec]:
    """The specs to craft with: the DGBA authors' APGD needs each task's clean loss over the
    whole evaluation set (C_t), computed once here; rows keep the options the user gave."""
    if not any(s.options.get("variant") == "official" for s in specs):
        return specs  # nothing to compute: no extra pass over the loader
    first = next(iter(loader), None)
    if first is None:
        return specs
    tasks = eval_tasks(model, to_device(first, device_of(model)), None)
    return with_dataset_clean_losses(specs, model, loader, tasks)


@dataclass
class CheckpointRows:
    """What `evaluate_checkpoint` measured: rows per kind, `seconds` per phase (`clean`: the
    model's clean forwards; `whitebox`: crafting the specs + scoring them on the model;
    `cross_task`: crafting the cross-task specs that are not among the specs + scoring them;
    `transfer`: scoring the crafted batches on the targets) and `crafted`, the attacks crafted
    per batch."""

    clean: Rows
    whitebox: Rows
    cross_task: Rows
    transfer: Rows
    seconds: dict[str, float]
    crafted: int


def cross_task_specs(tasks: Sequence[str], method: str, eps: float, steps: int = 10,
                     **options: Any) -> list[AttackSpec]:
    """The cross-task matrix's specs: `single:<t>` for every task t."""
    return [AttackSpec(method, f"single:{t}", eps, steps, options) for t in tasks]


def evaluate_checkpoint(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                        specs: Sequence[AttackSpec],
                        targets: TargetReference | Mapping[str, nn.Module] | None = None, *,
                        cross: Sequence[AttackSpec] = (), tasks: Sequence[str] | None = None,
                        whitebox: bool = True, craft: Callable[..., Tensor] | None = None,
                        progress: bool = False) -> CheckpointRows:
    """Craft once, score everywhere: per batch, one clean forward of `model` (clean rows and
    every spec's clean metrics), each spec crafted once and its adversarial batch scored on
    `model` (white-box) and on every target (transfer), each `cross` spec scored on `model`
    (crafted only when it is not one of `specs` or its crafting drew random numbers).
    Rows equal `clean_rows`, `evaluate_attacks`, `evaluate_attacks(cross)` and
    `evaluate_transfer` run one by one after the same seed. `targets`: a `TargetReference`
    (reuse it across checkpoints) or models; `whitebox=False` skips scoring `model`; `craft`
    replaces `_craft` (e.g. the precision options' wrapper) and is called as
    `craft(model, batch, spec, clean_outputs=...)` with the model's outputs from the batch's
    clean forward (None when that forward did not run), which the attacks may use in place of
    their own clean forward; a wrapper that changes the crafting forward (autocast, memory
    format, compiling) must not pass them on."""
    model = task_model(model, tasks)
    specs, cross = _validated(specs, model.tasks), _validated(cross, model.tasks)
    if targets is not None and not isinstance(targets, TargetReference):
        targets = TargetReference(targets, loader, tasks)
    craft = craft or _craft
    own = [c for c in cross if c not in specs]  # cross specs crafted on their own stream
    shared = {c: specs.index(s) for c, s in enumerate(cross) if s in specs}
    clock = PhaseClock(device_of(model))
    with clock("whitebox"):
        crafted = _with_clean_losses(model, loader, specs + own)
    crafted, own_crafted = crafted[:len(specs)], dict(zip(own, crafted[len(specs):]))
    main, side = RngStream(), RngStream()
    clean = None
    n_batches = 0
    models = [model] + ([s.model for s in targets.clean.values()] if targets is not None else [])
    with held_eval(models):  # every model's modes saved once for the pass
        for i, batch in enumerate(loader):
            batch = to_device(batch, device_of(model))
            if clean is None:
                scored = eval_tasks(model, batch, None)
                clean = Scorer(model, scored)
                advs = [Scorer(model, scored) for _ in specs]
                cross_advs = [Scorer(model, scored) for _ in cross]
                moved = {}
                if targets is not None:
                    tr = {tid: [Scorer(s.model, s.tasks) for _ in specs]
                          for tid, s in targets.clean.items()}
                    fooled = {tid: [0] * len(specs) for tid in targets.clean}
            if targets is not None:
                if i >= len(targets.correct):
                    raise ValueError("targets: the TargetReference saw fewer batches than loader")
                moved = {tid: to_device(batch, device_of(s.model))
                         for tid, s in targets.clean.items()}
            outputs = None  # the clean forward's outputs, shared with every spec's crafting
            if whitebox or cross:
                with clock("clean"):
                    outputs = clean.update(batch["image"], batch)
            reusable: dict[int, Tensor] = {}
            with main:
                for s, spec in enumerate(crafted):
                    before = rng_state()
                    with clock("whitebox"):
                        adv = craft(model, batch, spec, clean_outputs=outputs)
                        if whitebox:
                            advs[s].update(adv, batch)
                    if all(torch.equal(a, b) for a, b in zip(before, rng_state())):
                        reusable[s] = adv
                    if targets is None:
                        continue
                    with clock("transfer"):
                        for tid, scorers in tr.items():
                            preds = scorers[s].update(adv, moved[tid])
                            correct = targets.correct[i]
                            if correct is not None and SUCCESS_TASK in scorers[s].tasks:
                                wrong = ~correct_mask(preds, batch) & correct
                                fooled[tid][s] += int(wrong.sum())
            with side:
                for c, spec in enumerate(cross):
                    with clock("cross_task"):
                        adv = reusable.get(shared.get(c, -1))
                        if adv is None:
                            adv = craft(model, batch, own_crafted[spec] if spec in own_crafted
                                        else crafted[shared[c]], clean_outputs=outputs)
                        cross_advs[c].update(adv, batch)
            n_batches += 1
            progress_line(progress, "evaluate", i)
    if clean is None:
        raise ValueError("loader: yielded no batch")
    if targets is not None and n_batches != len(targets.correct):
        raise ValueError("targets: the TargetReference saw more batches than loader")
    metrics = clean.compute()
    clean_out = _clean_rows(metrics, clean.count) if (whitebox or cross) else []
    rows = {"whitebox": [], "cross_task": [], "transfer": []}
    if whitebox:
        rows["whitebox"] = [r for spec, scorer in zip(specs, advs)
                            for r in _rows(spec, metrics, scorer.compute(), clean.count)]
    rows["cross_task"] = [r for spec, scorer in zip(cross, cross_advs)
                          for r in _rows(spec, metrics, scorer.compute(), clean.count)]
    if targets is not None:
        rows["transfer"] = _transfer_rows(specs, targets, tr, fooled)
    return CheckpointRows(clean_out, **rows, seconds=clock.seconds,
                          crafted=len(specs) + len(own))


def _transfer_rows(specs: list[AttackSpec], targets: TargetReference,
                   scorers: Mapping[str, list[Scorer]], fooled: Mapping[str, list[int]]
                   ) -> Rows:
    """Per target and spec: the metric/Delta rows and (for a scene classifier) the RFN success
    rate (see `evaluate_transfer`)."""
    rows: Rows = []
    counted = targets.counted
    for tid, clean in targets.clean.items():
        for s, spec in enumerate(specs):
            rows += _rows(spec, targets.metrics[tid], scorers[tid][s].compute(), clean.count,
                          {"target_id": tid})
            if SUCCESS_TASK in clean.tasks:
                rows.append({"attack_method": spec.method, "objective": spec.objective,
                             "eps": float(spec.eps), "steps": int(spec.steps),
                             "target_id": tid, "task": SUCCESS_TASK, "metric": "success_rate",
                             "clean": None, "adv": fooled[tid][s] / counted if counted else None,
                             "rel_change": None, "n": counted, "numerator": fooled[tid][s],
                             "denominator": counted, "attack_options": attack_options(spec)})
    return rows


def evaluate_attacks(model: nn.Module, loader: Iterable[Mapping[str, Tensor]],
                     specs: Sequence[AttackSpec], *, tasks: Sequence[str] | None = None,
                     progress: bool = False) -> Rows:
    """White-box rows: every spec attacks `model` and is scored on `model`'s labelled tasks.

    `tasks` names the tasks of a model without a `tasks` attribute."""
    return evaluate_checkpoint(as_task_model(model, tasks), loader, specs,
                               progress=progress).whitebox


def cross_task_rows(model: nn.Module, loader: Iterable[Mapping[str, Tensor]], method: str,
                    eps: float, steps: int = 10, *, tasks: Sequence[str] | None = None,
                    progress: bool = False, **options: Any) -> Rows:
    """Cross-task transfer: attack with `single:<i>` for every task i, score every task j.

    `delta_matrix(rows)` turns the result into the T x T matrix of Delta_j under attack i.
    `tasks` names the tasks of a model without a `tasks` attribute.
    """
    model = as_task_model(model, tasks)
    specs = cross_task_specs(model.tasks, method, eps, steps, **options)
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
    reference = TargetReference(targets, loader, tasks)
    return evaluate_checkpoint(task_model(surrogate, tasks), loader, specs, reference,
                               whitebox=False, progress=progress).transfer
