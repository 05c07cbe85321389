"""Registries of attack objectives and methods, their lookup, and validation of a request.

Built-ins register themselves through the same doors as users' code: `register_objective` (an
`Objective`) and `register_method` (an `AttackMethod` subclass, with aliases). Each declares its
own options with defaults and checks, so `validate_attack` asks the registered entries and raises
ONE ValueError listing every problem with the allowed values, before any work.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from mtl.attacks.base import AttackMethod
from mtl.attacks.objective import Objective
from mtl.tasks import task_names

_OBJECTIVES: dict[str, Objective] = {}
_METHODS: dict[str, type[AttackMethod]] = {}
_ALIASES: dict[str, str] = {}  # alias -> canonical method name

OBJECTIVES: Mapping[str, Objective] = MappingProxyType(_OBJECTIVES)  # read-only views
METHODS: Mapping[str, type[AttackMethod]] = MappingProxyType(_METHODS)


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"{what} name: must be a non-empty string without ':', got {name!r}")
    return name


def register_objective(objective: Objective, *, replace: bool = False) -> Objective:
    """Make `objective` available by its name (`<name>:<task>` when it is per-task).

    Raises ValueError when the name is taken, unless `replace=True`.
    """
    if not isinstance(objective, Objective):
        raise TypeError(f"register_objective: needs an Objective, got {type(objective).__name__}")
    name = _check_name(objective.name, "objective")
    if name in _OBJECTIVES and not replace:
        raise ValueError(f"objective {name!r}: already registered; pass replace=True to "
                         f"replace it")
    _OBJECTIVES[name] = objective
    return objective


def register_method(method_cls: type[AttackMethod], name: str | None = None,
                    aliases: Iterable[str] = (), *, replace: bool = False
                    ) -> type[AttackMethod]:
    """Make an `AttackMethod` subclass available by `name` (default: its `name` attribute) and
    by each alias. Raises ValueError when a name is taken, unless `replace=True`."""
    if not (isinstance(method_cls, type) and issubclass(method_cls, AttackMethod)):
        raise TypeError(f"register_method: needs an AttackMethod subclass, got {method_cls!r}")
    name = _check_name(method_cls.name if name is None else name, "method")
    aliases = tuple(_check_name(a, "method alias") for a in aliases)
    taken = [n for n in (name, *aliases) if n in _METHODS or n in _ALIASES]
    if taken and not replace:
        raise ValueError(f"method name(s) {taken}: already registered; pass replace=True to "
                         f"replace them")
    for n in taken:
        _METHODS.pop(n, None)
        _ALIASES.pop(n, None)
    _METHODS[name] = method_cls
    _ALIASES.update({a: name for a in aliases})
    return method_cls


def method_names() -> list[str]:
    """Every accepted method name: canonical names, then aliases (each sorted)."""
    return sorted(_METHODS) + sorted(_ALIASES)


def objective_names(tasks: Iterable[str] | None = None) -> list[str]:
    """Every objective name valid for a model with these tasks (default: every registered
    task): `<name>:<task>` for per-task objectives, then the others, in registration order."""
    tasks = task_names() if tasks is None else tuple(tasks)
    return ([f"{o.name}:{t}" for o in _OBJECTIVES.values() if o.per_task for t in tasks]
            + [o.name for o in _OBJECTIVES.values() if not o.per_task])


available_objectives = objective_names  # the earlier name


def canonical_method(method: str) -> str:
    """Resolve aliases ('ifgsm' -> 'pgd')."""
    return _ALIASES.get(method, method)


def get_method(method: str) -> type[AttackMethod]:
    """The registered method class for a name or alias (KeyError when unknown)."""
    return _METHODS[canonical_method(method)]


def split_objective(objective: str) -> tuple[str, str | None]:
    """'single:depth_zbuffer' -> ('single', 'depth_zbuffer'); 'dgba' -> ('dgba', None)."""
    kind, _, task = objective.partition(":")
    return kind, task or None


def get_objective(objective: str) -> Objective:
    """The registered objective of a spelling ('single:depth_zbuffer' -> single)."""
    return _OBJECTIVES[split_objective(objective)[0]]


def accepted_options(method: str, objective: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `options` that `method` with `objective` declares: a sweep's shared attack
    options reach every method x objective pair that takes them (e.g. `variant` only `apgd`,
    `reduction` only `total` / `single:<task>`). KeyError for an unknown method or objective."""
    allowed = {**get_method(method).option_specs, **get_objective(objective).option_specs}
    return {k: v for k, v in options.items() if k in allowed}


def _objective_problem(objective: Any, tasks: Sequence[str]) -> str | None:
    kind, task = split_objective(objective) if isinstance(objective, str) else (None, None)
    obj = _OBJECTIVES.get(kind) if kind is not None else None
    if obj is not None and (task in tasks if obj.per_task else ":" not in objective):
        return None
    return f"objective: unknown {objective!r}; allowed: {objective_names(tasks)}"


def eps_problem(eps: Any) -> str | None:
    """Problem with an eps in 1/255 units (a finite number, 0 or >= 1), or None."""
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) \
            or eps < 0:
        return f"eps: must be a finite number >= 0 (1/255 units), got {eps!r}"
    if 0 < eps < 1:
        return (f"eps: is in 1/255 units, e.g. eps=8 means 8/255; got {eps!r} which looks like "
                f"a value already divided by 255 (did you mean eps={eps * 255:.3g}?)")
    return None


def validate_attack(method: Any, objective: Any, eps: Any, steps: Any,
                    options: Mapping[str, Any], tasks: Sequence[str] | None = None) -> None:
    """Raise one ValueError naming every bad field with its allowed values.

    `tasks`: the model's tasks (for `<name>:<task>` objectives); None: every registered task.
    """
    tasks = task_names() if tasks is None else tuple(tasks)
    problems = []
    method_cls = _METHODS.get(canonical_method(method)) if isinstance(method, str) else None
    if method_cls is None:
        problems.append(f"method: unknown {method!r}; allowed: {method_names()}")
    objective_problem = _objective_problem(objective, tasks)
    obj = None if objective_problem else get_objective(objective)
    problems += [p for p in (objective_problem, eps_problem(eps)) if p]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        problems.append(f"steps: must be an int >= 1, got {steps!r}")
    if not isinstance(options, Mapping):
        problems.append(f"options: must be a mapping, got {type(options).__name__}")
        options = {}
    if method_cls is not None and obj is not None:
        allowed = {**method_cls.option_specs, **obj.option_specs}
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            problems.append(f"options: unknown key(s) {unknown} for method {method!r} with "
                            f"objective {objective!r}; allowed: {sorted(allowed)}")
    if method_cls is not None:
        problems += method_cls.check_options(options)
    if obj is not None:
        problems += obj.check_options(options)
    if problems:
        raise ValueError("invalid attack: " + "; ".join(problems))
