"""The multi-task network built from a sharing `Layout`.

Every (block, group) of the layout owns one backbone module, so parameters are shared exactly
as the layout says: tasks in the same group at block b run the very same module instance.
`model(x, task=t)` walks only t's root-to-leaf path; within one forward each (block, group)
module runs once however many requested tasks pass through it (memoised), so BatchNorm
statistics and autograd see one application per shared module.
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from mtl import tasks as task_registry
from mtl.models.blocks import NUM_BLOCKS, DenseHead, Normalize, PooledHead, init_weights, \
    make_block
from mtl.models.layout import Group, Layout


def module_key(block: int, group: Group) -> str:
    """Name of the (block, group) module in `MultiTaskNet.backbone`, e.g. ``b2_t0-1``."""
    return f"b{block}_t{'-'.join(str(t) for t in group)}"


def _check_int(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int (numpy integers accepted) if it is an integer >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_tasks(tasks: Any) -> tuple[str, ...]:
    allowed = task_registry.task_names()
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise ValueError(f"tasks: expected a non-empty list of task names from {list(allowed)}, "
                         f"got {tasks!r}")
    for name in tasks:
        if name not in allowed:
            raise ValueError(f"tasks: unknown task {name!r}; allowed: {list(allowed)}")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks: duplicate task names in {list(tasks)}")
    return tuple(tasks)


def resolve_out_channels(tasks: Sequence[str], out_channels: Mapping[str, int] | None
                         ) -> dict[str, int]:
    """Head output channels per task: explicit values (checked by the task registry), else
    the registry defaults (tasks registered with channels=None, e.g. classification, have
    none: their count must be given).

    `out_channels` may hold more tasks than the model uses (e.g. a dataset's `task_channels`),
    but every key must be a known task name and every value a positive integer.
    """
    given = {} if out_channels is None else out_channels
    if not isinstance(given, Mapping):
        raise ValueError(f"out_channels: expected a mapping task -> channels or None, "
                         f"got {type(given).__name__}")
    allowed = task_registry.task_names()
    for name in given:
        if name not in allowed:
            raise ValueError(f"out_channels: unknown task {name!r}; allowed: {list(allowed)}")
    given = {name: _check_int(f"out_channels[{name!r}]", channels)
             for name, channels in given.items()}
    resolved = {}
    for name in tasks:
        try:  # validates explicit counts too: e.g. normal must have 3, classes need >= 2
            resolved[name] = int(task_registry.default_channels(name, given.get(name)))
        except ValueError as err:
            hint = " (e.g. out_channels=dataset.task_channels)" if name not in given else ""
            raise ValueError(f"out_channels: {err}{hint}") from None
    return resolved


class MultiTaskNet(nn.Module):
    """Normalisation, a 5-block ResNet-style backbone shared per `layout`, one head per task.

    Any registered task works: its head is dense or pooled after the registry's `kind`.
    Outputs: dense tasks `[B, C, H, W]` at input resolution, `scene_class` `[B, K]` logits;
    `normal` is not normalised (its loss and metric normalise).
    """

    def __init__(self, layout: Layout | str, tasks: Sequence[str],
                 out_channels: Mapping[str, int] | None = None, *, width: int = 16,
                 stage_depth: int = 1, skip: bool = True) -> None:
        super().__init__()
        layout = Layout.coerce(layout)
        task_names = _check_tasks(tasks)
        if layout.num_tasks != len(task_names):
            raise ValueError(f"tasks: layout {layout} has {layout.num_tasks} tasks but "
                             f"{len(task_names)} task names were given: {list(task_names)}")
        if layout.num_blocks != NUM_BLOCKS:
            raise ValueError(f"layout: must have {NUM_BLOCKS} blocks (the backbone's), "
                             f"got {layout.num_blocks} in {layout}")
        width, stage_depth = _check_int("width", width), _check_int("stage_depth", stage_depth)
        if not isinstance(skip, bool):
            raise ValueError(f"skip: must be True or False, got {skip!r}")
        self.layout = layout
        self.tasks = task_names
        self.out_channels = resolve_out_channels(task_names, out_channels)
        self.width, self.stage_depth, self.skip = width, stage_depth, skip
        self.normalize = Normalize()
        self.backbone = nn.ModuleDict({
            module_key(b, g): make_block(b, width, stage_depth)
            for b in range(NUM_BLOCKS) for g in layout.groups(b)})
        heads: dict[str, nn.Module] = {}
        for name in task_names:
            kind = task_registry.get_task(name).kind
            channels = self.out_channels[name]
            heads[name] = (DenseHead(width, channels, skip) if kind == "dense"
                           else PooledHead(width, channels))
        self.heads = nn.ModuleDict(heads)
        self._index = {name: i for i, name in enumerate(task_names)}
        self._paths = {name: tuple(module_key(b, g) for b, g in enumerate(layout.path(i)))
                       for name, i in self._index.items()}
        init_weights(self)

    # --- forward ------------------------------------------------------------------------------
    def forward(self, x: Tensor, task: str | None = None,
                tasks: Iterable[str] | None = None) -> dict[str, Tensor]:
        """Predictions for all tasks, or only `task` / `tasks` (running only their paths)."""
        names = self._select(task, tasks)
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x: expected images [B, 3, H, W], got shape {tuple(x.shape)}")
        size = (int(x.shape[-2]), int(x.shape[-1]))
        stem_input = self.normalize(x)
        memo: dict[str, Tensor] = {}
        outputs: dict[str, Tensor] = {}
        for name in names:
            features, h = [], stem_input
            for key in self._paths[name]:
                if key not in memo:
                    memo[key] = self.backbone[key](h)
                h = memo[key]
                features.append(h)
            outputs[name] = self.heads[name](features, size)
        return outputs

    def _select(self, task: str | None, tasks: Iterable[str] | None) -> tuple[str, ...]:
        if task is not None and tasks is not None:
            raise ValueError("task, tasks: pass at most one of them")
        if task is None and tasks is None:
            return self.tasks
        if task is not None:
            names: tuple[str, ...] = (task,)
        else:
            names = (tasks,) if isinstance(tasks, str) else tuple(tasks)  # type: ignore[arg-type]
        if not names:
            raise ValueError(f"tasks: empty selection; allowed: {list(self.tasks)}")
        for name in names:
            if name not in self._index:
                raise ValueError(f"task: {name!r} is not a task of this model; "
                                 f"allowed: {list(self.tasks)}")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks: duplicate task names in {list(names)}")
        return names

    # --- introspection ------------------------------------------------------------------------
    def task_index(self, task: str | int) -> int:
        """Index of `task` (a name of this model or an index 0..T-1)."""
        if isinstance(task, str):
            if task not in self._index:
                raise ValueError(f"task: {task!r} is not a task of this model; "
                                 f"allowed: {list(self.tasks)}")
            return self._index[task]
        if isinstance(task, bool) or not isinstance(task, int) or \
                not 0 <= task < len(self.tasks):
            raise ValueError(f"task: expected a name in {list(self.tasks)} or an index in "
                             f"0..{len(self.tasks) - 1}, got {task!r}")
        return task

    def block_module(self, block: int, task: str | int) -> nn.Module:
        """The module that computes backbone block `block` for `task` (name or index)."""
        index = self.task_index(task)
        return self.backbone[module_key(block, self.layout.group_of(block, index))]

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of backbone modules used by two or more tasks."""
        return [p for b, g in self.layout.shared_blocks()
                for p in self.backbone[module_key(b, g)].parameters()]

    def task_parameters(self, task: str | int) -> list[nn.Parameter]:
        """Parameters on `task`'s path: its backbone modules and its head."""
        name = self.tasks[self.task_index(task)]
        params = [p for key in self._paths[name] for p in self.backbone[key].parameters()]
        return params + list(self.heads[name].parameters())

    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: `build_model(**model.config())` rebuilds it."""
        return {"layout": str(self.layout), "tasks": list(self.tasks),
                "out_channels": dict(self.out_channels), "width": self.width,
                "stage_depth": self.stage_depth, "skip": self.skip}

    def extra_repr(self) -> str:
        return f"layout={self.layout}, tasks={list(self.tasks)}, width={self.width}"


def build_model(layout: Layout | str, tasks: Sequence[str],
                out_channels: Mapping[str, int] | None = None, *, width: int = 16,
                stage_depth: int = 1, skip: bool = True) -> MultiTaskNet:
    """Build the multi-task network for `layout` (a `Layout` or its string); `tasks[i]` is task
    index i of the layout. `width` is the stem's channel count (stages use w, 2w, 4w, 8w),
    `stage_depth` the BasicBlocks per stage, `skip` the dense heads' block-1 skip connection.
    `out_channels` defaults to the task registry's defaults; segmentation and scene
    classification need the dataset's class counts (e.g. `out_channels=dataset.task_channels`).
    """
    return MultiTaskNet(layout, tasks, out_channels, width=width, stage_depth=stage_depth,
                        skip=skip)
