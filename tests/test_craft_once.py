"""Craft once, score everywhere (issue 12, item 1): `evaluate_checkpoint` gives the rows of the
per-phase passes (clean, white-box, cross-task, transfer, each after the trial's phase seed),
crafting each spec once per batch.

The old passes are transcribed here from the code before the change (each crafts its own
attacks), so the comparison does not run through the new function. Random starts: the
built-in ones use their own seeded generator (option `seed`), and a test method below draws
its start from the GLOBAL RNG, so the phase seeds matter and are arranged as the trial does.
"""
from __future__ import annotations

import copy
import math
from typing import ClassVar

import pytest
import torch

import mtl.evaluate as evaluate
from mtl.attacks import AttackMethod, AttackSpec, attack, register_method
from mtl.attacks import registry
from mtl.evaluate import (TargetReference, _rows, _with_clean_losses, clean_rows,
                          cross_task_specs, evaluate_checkpoint)
from mtl.scoring import SUCCESS_TASK, Scorer, eval_tasks
from test_evaluate import TASKS, make_loader, make_model

SEED = 7 * 100_003 + 2  # the trial's phase seed for seed 7, epoch 2


class GlobalNoiseStart(AttackMethod):
    """PGD-like steps from a start drawn from the global RNG (as a user's method might)."""

    name: ClassVar[str] = "test_global_noise"

    def init_delta(self, ctx):
        return (2.0 * torch.rand(ctx.x0.shape) - 1.0) * self.eps


@pytest.fixture
def noisy_method():
    saved = [(d, dict(d)) for d in (registry._OBJECTIVES, registry._METHODS, registry._ALIASES)]
    register_method(GlobalNoiseStart)
    try:
        yield GlobalNoiseStart.name
    finally:
        for d, items in saved:
            d.clear()
            d.update(items)


def _craft(model, batch, spec):
    return attack(model, batch, method=spec.method, objective=spec.objective, eps=spec.eps,
                  steps=spec.steps, **dict(spec.options))


def old_whitebox(model, loader, specs):
    """evaluate_attacks before the change: its own clean pass, each spec crafted here."""
    crafted = _with_clean_losses(model, loader, specs)
    clean = advs = None
    for batch in loader:
        if clean is None:
            tasks = eval_tasks(model, batch, None)
            clean, advs = Scorer(model, tasks), [Scorer(model, tasks) for _ in specs]
        clean.update(batch["image"], batch)
        for spec, scorer in zip(crafted, advs):
            scorer.update(_craft(model, batch, spec), batch)
    metrics = clean.compute()
    return [r for spec, s in zip(specs, advs) for r in _rows(spec, metrics, s.compute(),
                                                             clean.count)]


def old_transfer(surrogate, targets, loader, specs):
    """evaluate_transfer before the change: targets' clean pass and crafting of its own."""
    crafted = _with_clean_losses(surrogate, loader, specs)
    clean, advs = {}, {}
    counted, fooled = 0, {tid: [0] * len(specs) for tid in targets}
    for batch in loader:
        if not clean:
            for tid, m in targets.items():
                tasks = eval_tasks(m, batch, None)
                clean[tid], advs[tid] = Scorer(m, tasks), [Scorer(m, tasks) for _ in specs]
        correct = None
        for tid in targets:
            ok = clean[tid].update(batch["image"], batch)[SUCCESS_TASK].argmax(1) \
                == batch[SUCCESS_TASK]
            correct = ok if correct is None else correct & ok
        counted += int(correct.sum())
        for s, spec in enumerate(crafted):
            adv = _craft(surrogate, batch, spec)
            for tid in targets:
                wrong = advs[tid][s].update(adv, batch)[SUCCESS_TASK].argmax(1) \
                    != batch[SUCCESS_TASK]
                fooled[tid][s] += int((wrong & correct).sum())
    rows = []
    for tid in targets:
        metrics = clean[tid].compute()
        for s, spec in enumerate(specs):
            rows += _rows(spec, metrics, advs[tid][s].compute(), clean[tid].count,
                          {"target_id": tid})
            rows.append({"attack_method": spec.method, "objective": spec.objective,
                         "eps": float(spec.eps), "steps": int(spec.steps), "target_id": tid,
                         "task": SUCCESS_TASK, "metric": "success_rate", "clean": None,
                         "adv": fooled[tid][s] / counted if counted else None,
                         "rel_change": None, "n": counted, "numerator": fooled[tid][s],
                         "denominator": counted,
                         "attack_options": evaluate.attack_options(spec)})
    return rows


def canonical(rows):
    """Rows as a sorted list of hashable tuples (NaN compares equal to NaN)."""
    def value(v):
        return "nan" if isinstance(v, float) and math.isnan(v) else v
    return sorted((tuple(sorted((k, value(v)) for k, v in r.items())) for r in rows), key=repr)


def setting(seed: int = 0):
    surrogate = make_model(seed).eval()
    near = copy.deepcopy(surrogate)
    with torch.no_grad():
        for p in near.parameters():
            p.add_(0.02 * torch.randn_like(p))
    targets = {"same": copy.deepcopy(surrogate), "near": near, "other": make_model(seed + 5)}
    loader = make_loader(n_batches=2)
    for batch in loader:  # labels = the surrogate's clean classes: many examples qualify
        with torch.no_grad():
            batch[SUCCESS_TASK] = surrogate(batch["image"])[SUCCESS_TASK].argmax(1)
    return surrogate, targets, loader


def old_way(model, targets, loader, specs, cross):
    """The trial before the change: one pass per phase, each after the phase seed."""
    out = {"clean": clean_rows(model, loader)}
    for kind, job in (("whitebox", lambda: old_whitebox(model, loader, specs)),
                      ("cross_task", lambda: old_whitebox(model, loader, cross)),
                      ("transfer", lambda: old_transfer(model, targets, loader, specs))):
        torch.manual_seed(SEED)
        out[kind] = job()
    return out


@pytest.mark.parametrize("cross_method", ["pgd", "noisy"])
def test_rows_equal_the_per_phase_passes_on_a_fixed_seed(noisy_method, cross_method):
    model, targets, loader = setting()
    specs = [AttackSpec("pgd", "dgba", 8, 2, {"random_start": True, "seed": 3}),
             AttackSpec("fgsm", "total", 4, 1),
             AttackSpec("apgd", "dgba", 8, 3, {"variant": "official"}),
             AttackSpec("pgd", "single:segment_semantic", 8, 2),  # = a pgd cross spec
             AttackSpec(noisy_method, "single:depth_zbuffer", 8, 2),  # = a noisy cross spec
             AttackSpec(noisy_method, "signsum", 8, 2),
             AttackSpec("apgd", "minmax", 8, 2, {"solver": "fast"})]
    method = "pgd" if cross_method == "pgd" else noisy_method
    cross = cross_task_specs(TASKS, method, 8, 2)
    want = old_way(model, targets, loader, specs, cross)
    torch.manual_seed(SEED)
    got = evaluate_checkpoint(model, loader, specs, TargetReference(targets, loader),
                              cross=cross)
    for kind, rows in want.items():
        assert rows, kind
        assert canonical(getattr(got, kind)) == canonical(rows), kind
    # the global-noise method really drew: another seed changes its rows
    torch.manual_seed(SEED + 1)
    other = evaluate_checkpoint(model, loader, specs[-1:])
    assert canonical(other.whitebox) != canonical(
        [r for r in want["whitebox"] if r["attack_method"] == noisy_method
         and r["objective"] == "signsum"])


def test_each_spec_is_crafted_once_per_batch(monkeypatch):
    model, targets, loader = setting(1)
    calls = []
    real = evaluate._craft
    monkeypatch.setattr(evaluate, "_craft",
                        lambda m, b, s, **kw: calls.append(s) or real(m, b, s, **kw))
    specs = [AttackSpec("pgd", "dgba", 8, 2), AttackSpec("fgsm", "total", 4, 1),
             AttackSpec("fgsm", "single:normal", 8, 1)]
    cross = cross_task_specs(TASKS, "fgsm", 8, 1)  # single:normal coincides: crafted once
    result = evaluate_checkpoint(model, loader, specs, targets, cross=cross)
    shared = len(specs) + len(cross) - 1
    assert len(calls) == len(loader) * shared and result.crafted == shared
    assert result.whitebox and result.transfer and result.cross_task and result.clean
    calls.clear()  # the same specs, white-box and transfer only: once each, not twice
    result = evaluate_checkpoint(model, loader, specs, TargetReference(targets, loader))
    assert len(calls) == len(loader) * len(specs) == len(loader) * result.crafted
    assert set(result.seconds) == {"clean", "whitebox", "transfer"}


def test_target_reference_must_see_the_same_batches():
    model, targets, loader = setting(2)
    reference = TargetReference(targets, loader[:1])
    with pytest.raises(ValueError, match="TargetReference saw fewer batches"):
        evaluate_checkpoint(model, loader, [AttackSpec("fgsm", "total", 4, 1)], reference)
    with pytest.raises(ValueError, match="targets: need at least one"):
        TargetReference({}, loader)
