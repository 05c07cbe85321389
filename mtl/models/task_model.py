"""`TaskModel`: a user's model seen through the interface the trainer and evaluator use.

mtl's training and evaluation ask a model for ``tasks`` (the task names, in order),
``out_channels`` (task -> head channels, the class count for classification tasks) and
``forward(x, task=None, tasks=None) -> {task: prediction}``. The built-in network has all of
these; any other ``nn.Module`` whose ``forward(x)`` returns a mapping is wrapped by
`as_task_model` (its own ``forward`` is called as `mtl.models.outputs.task_outputs` does).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mtl.models.outputs import forward_selectors, task_outputs
from mtl.tasks import default_channels, get_task


class TaskModel(nn.Module):
    """Wraps ``net`` (any model returning a mapping task -> tensor) with ``tasks`` and
    ``out_channels``. Its parameters are ``net``'s (state_dict keys carry the ``net.`` prefix;
    checkpoints store ``net``'s own keys, see `unwrap`).

    Every task must be registered (`mtl.tasks.register_task`). ``out_channels`` missing a task
    falls back to the registry's channels, else None: metrics then read the count from the
    first prediction."""

    def __init__(self, net: nn.Module, tasks: Sequence[str],
                 out_channels: Mapping[str, int | None] | None = None) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ValueError(f"model: expected a torch.nn.Module, got {type(net).__name__}")
        if isinstance(tasks, str) or not tasks:
            raise ValueError(f"tasks: expected a non-empty list of task names, got {tasks!r}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks: duplicate task names in {list(tasks)}")
        self.net = net
        self.tasks = tuple(tasks)
        channels = dict(out_channels or {})
        self.out_channels = {t: _declared(t, channels.get(t)) for t in self.tasks}

    def forward(self, x: Tensor, task: str | None = None,
                tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Predictions for all tasks, or only ``task`` / ``tasks``."""
        if task is not None and tasks is not None:
            raise ValueError("task, tasks: pass at most one of them")
        names = (task,) if task is not None else (
            self.tasks if tasks is None else ((tasks,) if isinstance(tasks, str) else tuple(tasks)))
        unknown = [t for t in names if t not in self.tasks]
        if unknown:
            raise ValueError(f"task: {unknown} not tasks of this model; allowed: "
                             f"{list(self.tasks)}")
        out = task_outputs(self.net, x, names)
        return {t: out[t] for t in names}

    def shared_parameters(self) -> list[nn.Parameter]:
        """The wrapped model's `shared_parameters()` (for SAM on shared blocks only)."""
        if not hasattr(self.net, "shared_parameters"):
            raise AttributeError("the wrapped model has no shared_parameters()")
        return list(self.net.shared_parameters())

    def extra_repr(self) -> str:
        return f"tasks={list(self.tasks)}"


def _declared(task: str, channels: int | None) -> int | None:
    """`channels` checked against the registry, or the registry's own count (None if none)."""
    registered = get_task(task)  # unknown task: one ValueError naming the registered ones
    if channels is None:
        return registered.default_channels
    return default_channels(task, channels)


def unwrap(model: nn.Module) -> nn.Module:
    """The user's own model inside a `TaskModel`, else ``model`` itself."""
    return model.net if isinstance(model, TaskModel) else model


def as_task_model(model: nn.Module, tasks: Sequence[str] | None = None,
                  out_channels: Mapping[str, int | None] | None = None) -> nn.Module:
    """``model`` itself when it already has ``tasks``, ``out_channels`` and a ``tasks=``
    selector (the built-in network), else a `TaskModel` around it. ``tasks`` is required for a
    model without a ``tasks`` attribute; ``out_channels`` defaults to the model's own (if any);
    extra keys (a dataset's whole `task_channels`) are ignored."""
    own = getattr(model, "tasks", None)
    if own is not None and hasattr(model, "out_channels") and "tasks" in forward_selectors(model):
        if tasks is not None and tuple(tasks) != tuple(own):
            raise ValueError(f"tasks: {list(tasks)} differ from the model's {list(own)}")
        return model
    names = tuple(tasks) if tasks is not None else (tuple(own) if own is not None else None)
    if names is None:
        raise ValueError("tasks: the model has no `tasks` attribute; pass the task names")
    if out_channels is None:
        out_channels = getattr(model, "out_channels", None)
    return TaskModel(model, names, out_channels)


def describe_model(model: nn.Module) -> dict[str, Any]:
    """A small JSON-able description (class, parameter count) for records and dry runs."""
    inner = unwrap(model)
    return {"class": f"{type(inner).__module__}.{type(inner).__qualname__}",
            "parameters": sum(p.numel() for p in model.parameters())}
