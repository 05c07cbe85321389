"""Name registries of objectives and methods, and validation of their options.

Objective names: `single:<task>`, `total`, `signsum`, `dgba`, `minmax`. Method names: `fgsm`,
`pgd` (alias `ifgsm`), `mifgsm`, `apgd`. `validate_attack` checks a full request and raises ONE
ValueError listing every problem with the allowed values, before any work.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mtl.attacks.apgd import APGD
from mtl.attacks.base import Attack
from mtl.attacks.dgba import DENOMINATORS, dgba_direction
from mtl.attacks.fgsm import FGSM
from mtl.attacks.mifgsm import MIFGSM
from mtl.attacks.minmax import MINMAX_SOLVERS, minmax_direction
from mtl.attacks.objectives import (Objective, mean_relative_change, relative_changes,
                                    signsum_direction, single_direction, total_direction)
from mtl.attacks.pgd import PGD

OBJECTIVES: dict[str, Objective] = {
    "single": Objective("single", single_direction, lambda losses, clean: losses[0],
                        needs_clean=False),
    "total": Objective("total", total_direction, lambda losses, clean: losses.sum(0),
                       needs_clean=False),
    "signsum": Objective("signsum", signsum_direction, mean_relative_change, backward_passes="T"),
    "dgba": Objective("dgba", dgba_direction, mean_relative_change,
                      options={"denominator": "current"}),
    "minmax": Objective("minmax", minmax_direction,
                        lambda losses, clean: relative_changes(losses, clean).amin(0),
                        options={"denominator": "current", "solver": "auto", "dual_iters": 100},
                        backward_passes="T"),
}
METHODS: dict[str, type[Attack]] = {"fgsm": FGSM, "pgd": PGD, "mifgsm": MIFGSM, "apgd": APGD}
METHOD_ALIASES = {"ifgsm": "pgd"}


def available_objectives(tasks: Iterable[str]) -> list[str]:
    """Every objective name valid for a model with these tasks."""
    return [f"single:{t}" for t in tasks] + [k for k in OBJECTIVES if k != "single"]


def canonical_method(method: str) -> str:
    """Resolve aliases ('ifgsm' -> 'pgd')."""
    return METHOD_ALIASES.get(method, method)


def split_objective(objective: str) -> tuple[str, str | None]:
    """'single:depth_zbuffer' -> ('single', 'depth_zbuffer'); 'dgba' -> ('dgba', None)."""
    kind, _, task = objective.partition(":")
    return kind, (task or None) if kind == "single" else None


def _check_value(key: str, value: Any) -> str | None:
    """Problem with one option value, or None."""
    def number(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if key == "alpha" and value is not None and not (number(value) and value > 0):
        return f"option alpha: must be a number > 0 (1/255 units) or None, got {value!r}"
    if key in ("random_start", "per_sample") and not isinstance(value, bool):
        return f"option {key}: must be true or false, got {value!r}"
    if key == "seed" and not (isinstance(value, int) and not isinstance(value, bool)):
        return f"option seed: must be an int, got {value!r}"
    if key == "decay" and not (number(value) and value >= 0):
        return f"option decay: must be a number >= 0, got {value!r}"
    if key in ("momentum", "rho") and not (number(value) and 0 <= value <= 1):
        return f"option {key}: must be a number in [0, 1], got {value!r}"
    if key == "denominator" and value not in DENOMINATORS:
        return f"option denominator: got {value!r}; allowed: {list(DENOMINATORS)}"
    if key == "solver" and value not in MINMAX_SOLVERS:
        return f"option solver: got {value!r}; allowed: {list(MINMAX_SOLVERS)}"
    if key == "dual_iters" and not (isinstance(value, int) and not isinstance(value, bool)
                                    and value >= 1):
        return f"option dual_iters: must be an int >= 1, got {value!r}"
    return None


def validate_attack(method: Any, objective: Any, eps: Any, steps: Any,
                    options: Mapping[str, Any], tasks: Sequence[str] | None = None) -> None:
    """Raise one ValueError naming every bad field with its allowed values.

    `tasks`: the model's tasks (for `single:<task>`); None checks against the task registry.
    """
    if tasks is None:
        from mtl.tasks import TASK_NAMES as tasks
    problems = []
    allowed_methods = sorted(METHODS) + sorted(METHOD_ALIASES)
    method_cls = METHODS.get(canonical_method(method)) if isinstance(method, str) else None
    if method_cls is None:
        problems.append(f"method: unknown {method!r}; allowed: {allowed_methods}")
    kind, task = split_objective(objective) if isinstance(objective, str) else (None, None)
    obj = OBJECTIVES.get(kind) if kind is not None else None
    if obj is None or (kind == "single" and task not in tasks):
        problems.append(f"objective: unknown {objective!r}; allowed: "
                        f"{available_objectives(tasks)}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps < 0:
        problems.append(f"eps: must be a finite number >= 0 (1/255 units), got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        problems.append(f"steps: must be an int >= 1, got {steps!r}")
    if not isinstance(options, Mapping):
        problems.append(f"options: must be a mapping, got {type(options).__name__}")
        options = {}
    allowed = {**(method_cls.defaults if method_cls else {}), **(obj.options if obj else {})}
    unknown = sorted(set(options) - set(allowed))
    if unknown and method_cls is not None and obj is not None:
        problems.append(f"options: unknown key(s) {unknown} for method {method!r} with "
                        f"objective {objective!r}; allowed: {sorted(allowed)}")
    for key, value in options.items():
        problem = _check_value(key, value) if key in allowed else None
        if problem:
            problems.append(problem)
    if problems:
        raise ValueError("invalid attack: " + "; ".join(problems))
