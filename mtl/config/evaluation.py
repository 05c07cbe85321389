"""The evaluation sections of a run configuration: ``attacks`` and ``cross_task``.

Method and objective names, option names and option values are the attack registry's
(mtl.attacks); this module expands the grid (methods x objectives x eps) and names paths.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mtl.attacks import AttackSpec, available_objectives, method_names
from mtl.config.reading import (ConfigError, Node, as_choice, as_float, as_int, as_list,
                                check_unique, fail)

ATTACK_KEYS = ("methods", "objectives", "eps", "steps", "eval_samples", "batch_size", "options")
MAX_STEPS = 10_000
MAX_EVAL_SAMPLES = 10**7


def _options(raw: Any, path: str) -> dict:
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        fail(path, f"expected a mapping of attack options (name -> value), got {raw!r}")
    return dict(raw)


def _check_specs(specs: list[dict], path: str, tasks: Sequence[str]) -> None:
    """Let mtl.attacks veto what only it knows (option names and values per method)."""
    for spec in specs:
        try:
            AttackSpec(**spec).validate(tasks)
        except ValueError as err:
            raise ConfigError(f"{path}: {err}") from None


def parse_attacks(raw: Any, tasks: Sequence[str]) -> dict:
    """``attacks``: methods x objectives x eps (1/255 units) on ``eval_samples`` test images;
    ``single`` means ``single:<task>`` for every task."""
    node = Node(raw, "attacks", ATTACK_KEYS)
    methods = as_list(node.require("methods"), node.at("methods"))
    for i, m in enumerate(methods):
        as_choice(m, f"attacks.methods[{i}]", tuple(method_names()), "method")
    check_unique(methods, node.at("methods"))
    allowed = ("single", *available_objectives(tasks))
    objectives: list[str] = []
    for i, o in enumerate(as_list(node.require("objectives"), node.at("objectives"))):
        as_choice(o, f"attacks.objectives[{i}]", allowed, "objective")
        objectives += [f"single:{t}" for t in tasks] if o == "single" else [o]
    check_unique(objectives, node.at("objectives"))
    eps = [as_float(e, f"attacks.eps[{i}]", 0.0, 255.0, lo_open=True)
           for i, e in enumerate(as_list(node.require("eps"), node.at("eps")))]
    check_unique(eps, node.at("eps"))
    steps = as_int(node.get("steps", 10), node.at("steps"), 1, MAX_STEPS)
    options = _options(node.get("options", {}), node.at("options"))
    specs = [{"method": m, "objective": o, "eps": e, "steps": 1 if m == "fgsm" else steps,
              "options": dict(options)} for m in methods for o in objectives for e in eps]
    _check_specs(specs, "attacks", tasks)
    return {"specs": specs, "steps": steps,
            "eval_samples": as_int(node.get("eval_samples", 64), node.at("eval_samples"), 1,
                                   MAX_EVAL_SAMPLES),
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
           "steps": 1 if method == "fgsm" else as_int(node.get("steps", 10), node.at("steps"),
                                                      1, MAX_STEPS)}
    _check_specs([{"method": method, "objective": "total", "eps": out["eps"],
                   "steps": out["steps"], "options": {}}], "cross_task", tasks)
    return out
