"""The data-side sections of a run configuration: ``dataset``, ``tasks`` and ``model``.

Each reader validates its YAML section (types, names, import paths, keys the plugin accepts)
and returns a plain JSON-able dict; the registries in mtl.data, mtl.models and mtl.tasks own
what a name means, so the same doors serve built-ins and users' code.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mtl import data, models
from mtl import tasks as registry
from mtl.config.limits import MAX_SAMPLES
from mtl.config.reading import (ConfigError, Node, as_choice, as_int, as_list, brief,
                                check_unique, fail)
from mtl.models import DEFAULT_MODEL
from mtl.models.layout import Layout, count_layouts, enumerate_layouts
from mtl.plugins import is_import_path, load_object

TASK_KEYS = ("name", "loss", "metric", "channels", "kind")
TASK_KINDS = ("dense", "image")


def _source(node: Node, default: str | None) -> str:
    """``name`` (a registered name) or ``factory`` (an import path or a registered name)."""
    if "name" in node.value and "factory" in node.value:
        fail(node.at("factory"), "give either name (a registered one) or factory (an import "
             "path 'package.module:attribute'), not both")
    key = "factory" if "factory" in node.value else "name"
    value = node.get(key, default)
    if value is None:
        fail(node.at("name"), "required: a registered name or factory: package.module:attr")
    if not isinstance(value, str) or not value:
        fail(node.at(key), f"expected a registered name or an import path "
             f"'package.module:attribute', got {brief(value)}")
    return value


def _call(check: Any, where: str, *args: Any, **kwargs: Any) -> Any:
    """Run a registry's check; a ValueError that does not name its field (under ``where``'s
    section, or ``tasks``) gets ``where``."""
    try:
        return check(*args, **kwargs)
    except ConfigError:
        raise
    except ValueError as err:
        text = str(err)
        head = text.split(":", 1)[0]
        named = head.startswith((where.split(".")[0], "tasks[")) and " " not in head
        raise ConfigError(text if named else f"{where}: {text}") from None


def parse_tasks(raw: Any) -> tuple[dict, ...]:
    """``tasks``: registered names, or ``{name, loss, metric, channels, kind}`` for a task of
    the user's own (registered on the spot, in this process, from its import paths)."""
    out: list[dict] = []
    for i, item in enumerate(as_list(raw, "tasks")):
        path = f"tasks[{i}]"
        if isinstance(item, str):
            as_choice(item, path, registry.task_names(), "task")
            out.append({"name": item})
            continue
        node = Node(item, path, TASK_KEYS)
        name = node.require("name")
        if not isinstance(name, str) or not name:
            fail(node.at("name"), f"expected a task name, got {brief(name)}")
        spec: dict[str, Any] = {"name": name}
        if "loss" in node.value or "metric" in node.value:
            for key in ("loss", "metric"):
                value = node.require(key)
                if not is_import_path(value):
                    fail(node.at(key), f"expected an import path 'package.module:attribute', "
                         f"got {brief(value)}")
                _call(load_object, node.at(key), value, node.at(key))
                spec[key] = value
            spec["kind"] = as_choice(node.get("kind", "dense"), node.at("kind"), TASK_KINDS,
                                     "kind")
        else:
            as_choice(name, node.at("name"), registry.task_names(), "task")
            extra = sorted(set(node.value) - {"name", "channels"})
            if extra:
                fail(node.at(extra[0]), "only for a task of your own (with loss and metric)")
        if node.get("channels") is not None:
            spec["channels"] = as_int(node.get("channels"), node.at("channels"), 1, 100_000)
        if "loss" in spec:
            _call(registry.task_from_paths, path, name, spec["loss"], spec["metric"],
                  channels=spec.get("channels"), kind=spec["kind"])
        out.append(spec)
    check_unique([t["name"] for t in out], "tasks")
    return tuple(out)


def task_names_of(tasks: Sequence[Mapping]) -> tuple[str, ...]:
    return tuple(t["name"] for t in tasks)


SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_SIZES = {"train": 512, "val": 128, "test": 128}


def parse_dataset(raw: Any, tasks: Sequence[Mapping]) -> dict:
    """``dataset``: a registered ``name`` (scenes, nyuv2, taskonomy, ...) or a ``factory``
    import path, the samples used per split (``train``/``val``/``test``) and every other key,
    which goes to the factory (checked against its signature here, before any work). The
    dataset's registration decides which tasks it provides and, through its check, the
    limits of its options and split sizes (files on disk, a cache bound)."""
    if not isinstance(raw, Mapping):
        fail("dataset", f"expected a mapping with name or factory, got {brief(raw)}")
    keys = tuple(raw)
    node = Node(raw, "dataset", keys)
    source = _source(node, None)
    _call(data.dataset_factory, "dataset.factory" if "factory" in raw else "dataset.name",
          source)
    names = list(task_names_of(tasks))
    sizes = {split: as_int(node.get(split, DEFAULT_SPLIT_SIZES[split]), node.at(split), 1)
             for split in SPLITS}
    options = {k: v for k, v in raw.items() if k not in ("name", "factory", *SPLITS)}
    _call(data.check_dataset_options, "dataset", source, options, path="dataset", tasks=names,
          split_sizes=sizes)  # the dataset's own limits first: they are the tighter ones
    for split in SPLITS:
        as_int(sizes[split], node.at(split), 1, MAX_SAMPLES)
    return {"source": source, **sizes, "options": options, "tasks": names}


def _model_source(raw: Any) -> tuple[str, dict]:
    """(registered name or import path, the model section as a mapping) of ``model``."""
    raw = {} if raw is None else raw
    if not isinstance(raw, Mapping):
        fail("model", f"expected a mapping (factory, layout, options), got {brief(raw)}")
    return _source(Node(raw, "model", tuple(raw)), DEFAULT_MODEL), dict(raw)


def _model_factory(source: str, raw: Mapping) -> Any:
    """The factory of ``source`` (a ConfigError naming model.factory / model.name if none)."""
    return _call(models.model_factory, "model.factory" if "factory" in raw else "model.name",
                 source)


def _model_options(source: str, raw: Mapping, layout_given: bool) -> dict:
    """The factory's options, after the registry's checks of them and of whether a layout
    will be given (one rule, in mtl.models: a factory without a ``layout`` parameter cannot
    have layouts set or swept)."""
    options = {k: v for k, v in raw.items() if k not in ("name", "factory", "layout")}
    _call(models.check_model_options, "model", source, options, path="model",
          layout=layout_given)
    return options


def parse_model(raw: Any, tasks: Sequence[Mapping]) -> dict:
    """``model``: the built-in network (default) or a ``factory``; a ``layout`` (an int
    branch point or a canonical layout string) for factories that take one; every other key
    goes to the factory (checked against its signature)."""
    source, raw = _model_source(raw)
    num_blocks = getattr(_model_factory(source, raw), "num_blocks", None)
    layout = raw.get("layout")
    if layout is None and models.accepts_layout(source):
        layout = num_blocks  # the built-in default: every block shared
    options = _model_options(source, raw, layout is not None)
    canonical = (parse_layout(layout, "model.layout", len(tasks), num_blocks)
                 if layout is not None else None)
    return {"source": source, "layout": canonical, "options": options}


TREEMTL_PREFIX = "treemtl:"


def _treemtl_layout(item: str, path: str, num_tasks: int, num_blocks: int | None) -> str:
    """``treemtl:<i>``: layout i of TreeMTL's enumeration (the DGBA paper's layout index)."""
    if num_blocks is None:
        fail(path, "a TreeMTL index needs the model's number of blocks (its factory has no "
             "num_blocks attribute); give a layout string")
    digits = item[len(TREEMTL_PREFIX):].strip()
    if not (digits.isascii() and digits.isdigit()):
        fail(path, f"expected treemtl:<index> with an integer index, got {brief(item)}")
    try:
        return str(Layout.from_treemtl_index(int(digits), num_tasks, num_blocks))
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_layout(item: Any, path: str, num_tasks: int, num_blocks: int | None) -> str:
    """An int is a branch point k (share blocks < k, then every task alone); a string is a
    canonical layout like ``0+1+2|0+1+2|0,1+2|0,1,2|0,1,2`` or ``treemtl:<i>``, layout i of
    TreeMTL's enumeration (`Layout.from_treemtl_index`, the DGBA paper's index)."""
    if isinstance(item, int) and not isinstance(item, bool):
        if num_blocks is None:
            fail(path, "a branch point needs the model's number of blocks (its factory has "
                 "no num_blocks attribute); give a layout string")
        as_int(item, path, 0, num_blocks)
        return str(Layout.branch_point(item, num_tasks, num_blocks))
    if not isinstance(item, str):
        fail(path, f"expected a branch point 0..{num_blocks}, a layout string like "
             f"'0+1+2|0+1+2|0,1+2|0,1,2|0,1,2', 'treemtl:<index>' or 'all', got {brief(item)}")
    if item.strip().startswith(TREEMTL_PREFIX):
        return _treemtl_layout(item.strip(), path, num_tasks, num_blocks)
    try:
        layout = Layout.parse(item)
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None
    if layout.num_tasks != num_tasks or (num_blocks is not None
                                         and layout.num_blocks != num_blocks):
        fail(path, f"layout {brief(item)} has {layout.num_tasks} tasks and {layout.num_blocks} "
             f"blocks; allowed: {num_tasks} tasks (as in `tasks`)"
             + (f" and {num_blocks} blocks" if num_blocks is not None else ""))
    return str(layout)


EXACT_COUNT_TASKS = 6  # counting layouts of 6 tasks takes ~0.1 s, 7: ~1 s, 8: ~10 s


def _bell(n: int) -> int:
    """The number of partitions of n tasks (the Bell number), by the Bell triangle."""
    row = [1]
    for _ in range(n - 1):
        nxt = [row[-1]]
        for value in row:
            nxt.append(nxt[-1] + value)
        row = nxt
    return row[-1]


def count_layout_values(raw: Any, model: Any, num_tasks: int, limit: int,
                        path: str = "layouts") -> tuple[int, bool]:
    """(how many values the legacy ``layouts`` axis has, whether that is exact), without
    listing them: ``all`` is counted (`count_layouts`) or, when that is slow (more than 6
    tasks), bounded from below by the layouts of 6 tasks and the partitions of all tasks (a
    layout of fewer tasks extends to more); a bound over ``limit`` is returned as a bound,
    under it the exact count is taken (up to 8 tasks; more is reported as over ``limit``)."""
    if raw != "all":
        return len(as_list(raw, path)), True
    source, model = _model_source(model)
    num_blocks = getattr(_model_factory(source, model), "num_blocks", None)
    if not isinstance(num_blocks, int) or isinstance(num_blocks, bool) or num_blocks < 1:
        fail(path, "`all` needs the model's number of blocks (num_blocks)")
    if num_tasks <= EXACT_COUNT_TASKS:
        return count_layouts(num_tasks, num_blocks), True
    bound = max(_bell(num_tasks), count_layouts(EXACT_COUNT_TASKS, num_blocks))
    if bound > limit or num_tasks > EXACT_COUNT_TASKS + 2:
        return max(bound, limit + 1), False
    return count_layouts(num_tasks, num_blocks), True


def expand_layouts(raw: Any, model: Any, num_tasks: int, path: str = "layouts") -> list:
    """The legacy ``layouts`` axis (a list of branch points / layout strings, or ``all``) read
    against the ``model`` section's factory and its number of blocks."""
    source, model = _model_source(model)
    num_blocks = getattr(_model_factory(source, model), "num_blocks", None)
    _model_options(source, model, layout_given=True)
    if raw == "all":
        if num_blocks is None:
            fail(path, "`all` needs the model's number of blocks (num_blocks)")
        return [str(lay) for lay in enumerate_layouts(num_tasks, num_blocks)]
    items = as_list(raw, path)
    canonical = [parse_layout(x, f"{path}[{i}]", num_tasks, num_blocks)
                 for i, x in enumerate(items)]
    check_unique(canonical, path)
    return canonical
