"""Calling any multi-task model the same way.

The contract for a model is small: ``model(x)`` returns a mapping task -> prediction. A model
whose ``forward`` names a ``tasks`` (or ``task``) parameter can compute only what the requested
tasks need (the built-in network does); any other model runs its full forward and the extra
outputs are ignored. Every caller in mtl (attacks, training, evaluation, sharpness) goes through
`task_outputs`, so a user's model plugs in without an adapter.
"""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

_SELECTORS = ("task", "tasks")
_CACHE: dict[type, frozenset[str]] = {}


def forward_selectors(model: nn.Module) -> frozenset[str]:
    """Which of ``task`` / ``tasks`` the model's ``forward`` takes by name (cached per class);
    a bare ``**kwargs`` does not count: nothing says the model understands them."""
    cls = type(model)
    if cls not in _CACHE:
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):  # builtins / C extensions without a signature
            params = {}
        _CACHE[cls] = frozenset(
            name for name in _SELECTORS if name in params
            and params[name].kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                      inspect.Parameter.KEYWORD_ONLY))
    return _CACHE[cls]


def task_outputs(model: nn.Module, x: Tensor, tasks: Sequence[str]) -> Mapping[str, Tensor]:
    """The model's predictions for ``tasks`` on images ``x``, running only their paths when
    the model allows it. Raises one ValueError when the output is not a mapping or lacks a
    requested task, naming the keys it did return."""
    tasks = tuple(tasks)
    selectors = forward_selectors(model)
    if len(tasks) == 1 and "task" in selectors:
        out = model(x, task=tasks[0])
    elif "tasks" in selectors:
        out = model(x, tasks=list(tasks))
    else:
        out = model(x)
    if not isinstance(out, Mapping):
        raise ValueError(f"model output: forward(x) must return a mapping task -> tensor, got "
                         f"{type(out).__name__}; wrap the model so it returns e.g. "
                         f"{{{', '.join(repr(t) for t in tasks[:2])}: ...}}")
    missing = [t for t in tasks if t not in out]
    if missing:
        raise ValueError(f"model output: missing task(s) {missing}; the model returned keys "
                         f"{sorted(map(str, out))}; its forward(x) must return every task in "
                         f"{list(tasks)}")
    return out
