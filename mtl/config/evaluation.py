"""The evaluation sections of a run configuration: ``attacks`` and ``cross_task``.

Method and objective names, option names and option values are the attack registry's
(mtl.attacks); this module expands the grid (methods x objectives x eps) and names paths.
Every attack here (and adversarial training's) is capped at `MAX_STEPS` steps, the one limit
in mtl.config.limits; a method given twice under two names (``pgd`` and its alias ``ifgsm``)
is refused, as is a step count for fgsm (one step, always).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtl.attacks import AttackSpec, available_objectives, method_names
from mtl.attacks.registry import accepted_options, canonical_method
from mtl.config.limits import MAX_ATTACKS, MAX_EVAL_SAMPLES, MAX_STEPS
from mtl.config.reading import (ConfigError, Node, as_choice, as_float, as_int, as_list, brief,
                                check_unique, fail)

ATTACK_KEYS = ("methods", "objectives", "eps", "steps", "eval_samples", "batch_size", "options")
DEFAULT_EVAL_SAMPLES = 64  # or the whole test split, when it is smaller


def parse_steps(raw: Any, path: str, method: str, default: int = 10) -> int:
    """Steps of one attack method: 1..`MAX_STEPS`; fgsm takes exactly one (a different
    number given for it is refused rather than ignored)."""
    if isinstance(method, str) and canonical_method(method) == "fgsm":
        if raw is not None and (raw != 1 or isinstance(raw, bool)):
            fail(path, f"fgsm takes exactly 1 step, got {brief(raw)}; allowed: 1 (or leave "
                 "steps out)")
        return 1
    return as_int(default if raw is None else raw, path, 1, MAX_STEPS)


def _check_methods(methods: list, path: str) -> None:
    """No method twice, also not under an alias (``pgd`` and ``ifgsm``)."""
    first: dict[str, int] = {}
    for i, name in enumerate(methods):
        j = first.setdefault(canonical_method(name), i)
        if j != i:
            fail(f"{path}[{i}]", f"{brief(name)} is the same attack as {brief(methods[j])} "
                 f"({path}[{j}]); allowed: each method once, under one of its names")


def _pair_options(method: str, objective: str, options: dict) -> dict:
    """The shared options one method x objective pair takes (all of them when the pair is
    unknown: its own check then names the bad method or objective)."""
    try:
        return accepted_options(method, objective, options)
    except KeyError:
        return dict(options)


def _options(raw: Any, path: str) -> dict:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        fail(path, f"expected a mapping of attack options (name -> value), got {brief(raw)}")
    return dict(raw)


def _check_specs(specs: list[dict], path: str, tasks: Sequence[str]) -> None:
    """Let mtl.attacks veto what only it knows (option names and values per method)."""
    for spec in specs:
        try:
            AttackSpec(**spec).validate(tasks)
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None


def parse_attacks(raw: Any, tasks: Sequence[str], test_samples: int | None = None) -> dict:
    """``attacks``: methods x objectives x eps (1/255 units) on ``eval_samples`` test images
    (default 64; at most ``test_samples``, the test split, when given, which is also the
    default when smaller); ``single`` means ``single:<task>`` for every task."""
    node = Node(raw, "attacks", ATTACK_KEYS)
    methods = as_list(node.require("methods"), node.at("methods"))
    for i, m in enumerate(methods):
        as_choice(m, f"attacks.methods[{i}]", tuple(method_names()), "method")
    _check_methods(methods, node.at("methods"))
    allowed = ("single", *available_objectives(tasks))
    objectives: list[str] = []
    for i, o in enumerate(as_list(node.require("objectives"), node.at("objectives"))):
        as_choice(o, f"attacks.objectives[{i}]", allowed, "objective")
        objectives += [f"single:{t}" for t in tasks] if o == "single" else [o]
    check_unique(objectives, node.at("objectives"))
    eps = [as_float(e, f"attacks.eps[{i}]", 0.0, 255.0, lo_open=True)
           for i, e in enumerate(as_list(node.require("eps"), node.at("eps")))]
    check_unique(eps, node.at("eps"))
    count = len(methods) * len(objectives) * len(eps)
    if count > MAX_ATTACKS:
        fail("attacks", f"{len(methods)} methods x {len(objectives)} objectives x {len(eps)} "
             f"eps = {count} attacks per checkpoint; allowed: at most {MAX_ATTACKS}")
    steps = as_int(node.get("steps", 10), node.at("steps"), 1, MAX_STEPS)
    options = _options(node.get("options", {}), node.at("options"))
    specs = [{"method": m, "objective": o, "eps": e,
              "steps": 1 if canonical_method(m) == "fgsm" else steps,
              "options": _pair_options(m, o, options)}
             for m in methods for o in objectives for e in eps]
    _check_specs(specs, "attacks", tasks)
    unused = sorted(set(options) - {k for spec in specs for k in spec["options"]})
    if unused:
        fail(node.at("options"), f"option(s) {unused} are taken by none of the methods "
             f"{methods} with objectives {objectives}; allowed: options that some pair "
             "declares (each option reaches the pairs that take it)")
    default = DEFAULT_EVAL_SAMPLES if test_samples is None else min(DEFAULT_EVAL_SAMPLES,
                                                                     test_samples)
    eval_samples = as_int(node.get("eval_samples", default), node.at("eval_samples"), 1,
                          MAX_EVAL_SAMPLES)
    if test_samples is not None and eval_samples > test_samples:
        fail(node.at("eval_samples"), f"{eval_samples} test images to attack, but the test "
             f"split has {test_samples} (dataset.test); allowed: 1..{test_samples}")
    return {"specs": specs, "steps": steps, "eval_samples": eval_samples,
            "batch_size": as_int(node.get("batch_size", 32), node.at("batch_size"), 1)}


def parse_cross_task(raw: Any, tasks: Sequence[str]) -> dict | None:
    """``cross_task``: true, false or {method, eps, steps}: attack each task alone and score
    every task (the T x T matrix)."""
    if raw is False or raw is None:
        return None
    if raw is True:
        raw = {}
    node = Node(raw, "cross_task", ("method", "eps", "steps"))
    method = as_choice(node.get("method", "fgsm"), node.at("method"), tuple(method_names()),
                       "method")
    out = {"method": method,
           "eps": as_float(node.get("eps", 8.0), node.at("eps"), 0.0, 255.0, lo_open=True),
           "steps": parse_steps(node.get("steps"), node.at("steps"), method)}
    _check_specs([{"method": method, "objective": "total", "eps": out["eps"],
                   "steps": out["steps"], "options": {}}], "cross_task", tasks)
    return out
