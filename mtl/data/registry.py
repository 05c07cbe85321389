"""The dataset registry: built-in and users' datasets come through the same door.

A dataset factory is called as ``factory(split=..., **options)``: ``split`` is "train", "val"
or "test" and ``options`` are the user's other keys of the YAML ``dataset`` section. mtlsweep
also passes ``tasks=`` (task names), ``length=`` (samples wanted of this split) and
``split_sizes=`` ({"train": n, "val": n, "test": n}), each ONLY when the factory's signature
names it or has ``**kwargs``. It returns a Dataset of dict samples (the Batch contract);
`build_split` checks it is long enough and cuts it to ``length``. A ``task_channels``
attribute (task -> channels, the class count for classification) sizes the heads; optional.

A registration may say which tasks the dataset provides (``tasks=``) and bring a ``check``
that validates option values up front; the check also gets ``tasks=`` (the task names asked
for) and ``split_sizes=`` (samples per split) when its signature names them, so limits that
depend on them (files on disk, a cache size) are refused before any work.

A source is a registered name or an import path ``package.module:attribute``.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch.utils.data import Dataset

from mtl.data.loading import subset
from mtl.data.plugin_registry import Check, PluginRegistry, source_path

SPLITS = ("train", "val", "test")
PASSED = ("split", "tasks", "length", "split_sizes")  # supplied by mtlsweep, never options

_REGISTRY = PluginRegistry("dataset", passed=PASSED, always=("split",),
                           meanings={"root": "the directory it lives in"})


def register_dataset(name: str, factory: Callable[..., Dataset], *, check: Check | None = None,
                     tasks: Sequence[str] | None = None, replace: bool = False) -> None:
    """Register a dataset factory under ``name`` (see the module docstring for how it is
    called). ``check(options, path[, tasks=, split_sizes=])`` may validate option values up
    front, raising ValueErrors that start with ``<path>.<key>:``; ``tasks`` are the task names
    the dataset provides (None: it does not say). A second registration of a name needs
    ``replace=True``."""
    _REGISTRY.register(name, factory, check=check, tasks=tasks, replace=replace)


def dataset_tasks(source: str) -> tuple[str, ...] | None:
    """The task names a registered dataset provides (None: it does not say)."""
    return _REGISTRY.tasks(source)


def check_dataset_tasks(source: str, tasks: Sequence[str], path: str = "tasks") -> None:
    """Each of ``tasks`` is one the dataset provides (when its registration says); the error
    names ``<path>[i]`` and the tasks it has."""
    offered = dataset_tasks(source)
    if offered is None:
        return
    for i, task in enumerate(tasks):
        if task not in offered:
            raise ValueError(f"{path}[{i}]: dataset {source!r} does not provide task {task!r}; "
                             f"allowed with {source}: {', '.join(offered)}")


def dataset_names() -> tuple[str, ...]:
    """The registered dataset names, sorted."""
    return _REGISTRY.names()


def dataset_factory(source: str, path: str = "dataset") -> Callable[..., Dataset]:
    """The factory of a registered name or of an import path (a name containing ':')."""
    return _REGISTRY.resolve(source, path)


def check_dataset_options(source: str, options: Mapping[str, Any], path: str = "dataset", *,
                          tasks: Sequence[str] | None = None,
                          split_sizes: Mapping[str, int] | None = None) -> None:
    """Before any work: ``options`` are keys the factory takes, its required keys are given,
    ``tasks`` are ones it provides, and a registered factory's own value check passes (given
    ``tasks``/``split_sizes`` when it names them). Errors start with ``<path>.<key>:``."""
    _REGISTRY.check_options(source, options, path,
                            {"tasks": None if tasks is None else list(tasks),
                             "split_sizes": None if split_sizes is None else dict(split_sizes)})
    if tasks is not None:
        check_dataset_tasks(source, tasks)


def build_split(source: str, split: str, *, options: Mapping[str, Any] | None = None,
                tasks: Sequence[str] | None = None, length: int | None = None,
                split_sizes: Mapping[str, int], path: str = "dataset") -> Dataset:
    """The first ``length`` samples (default: ``split_sizes[split]``) of ``split`` of the
    dataset ``source`` built with ``options``; an error when the split has fewer."""
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    if not isinstance(split_sizes, Mapping):
        raise ValueError(f"split_sizes: expected a mapping split -> samples, got {split_sizes!r}")
    options = dict(options or {})
    check_dataset_options(source, options, path, tasks=tasks, split_sizes=split_sizes)
    if length is None:
        length = split_sizes[split]
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"{path}.{split}: expected an integer >= 1, got {length!r}")
    factory = dataset_factory(source, path)
    extra = {"length": length, "split_sizes": dict(split_sizes)}
    if tasks is not None:
        extra["tasks"] = list(tasks)
    dataset = factory(split=split, **options, **_REGISTRY.passable(factory, extra))
    if not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise ValueError(f"{source_path(source, path)}: {source!r} returned a "
                         f"{type(dataset).__name__}, expected a torch Dataset of dict samples "
                         "(with __len__ and __getitem__)")
    available = len(dataset)
    if available < length:
        raise ValueError(f"{path}.{split}: {length} samples requested but the {split} split "
                         f"has {available}")
    return subset(dataset, 0, length)
