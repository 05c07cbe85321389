"""The model registry: the built-in network and users' models come through the same door.

A model factory is called as ``factory(tasks=[...], task_channels={...}, [layout=...],
**options)``: ``task_channels`` is the dataset's (task -> channels, the class count for
classification; may hold more tasks than ``tasks``), ``options`` the user's other keys of the
YAML ``model`` section, and ``layout`` is passed only to factories whose signature names it
(only they can have layouts swept). It returns an ``nn.Module`` whose ``forward(x)`` gives a
mapping task -> tensor; `build_task_model` hands it back as a task model (``.tasks``,
``.out_channels``, see mtl.models.task_model). A source is a registered name or an import path
``package.module:attribute``; the built-in network is ``"resnet"``, the default;
``"deeplab_resnet34"`` is the DGBA paper's Deeplab-ResNet-34 tree (mtl.models.deeplab).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import nn

from mtl.config.reading import as_bool, as_int
from mtl.data.plugin_registry import Check, PluginRegistry, has_default, names_parameter
from mtl.models.blocks import NUM_BLOCKS
from mtl.models.deeplab import check_deeplab, deeplab_resnet34
from mtl.models.layout import Layout
from mtl.models.network import MultiTaskNet, build_model
from mtl.models.task_model import as_task_model

DEFAULT_MODEL = "resnet"
PASSED = ("tasks", "task_channels", "layout")  # supplied by mtlsweep, never options

_REGISTRY = PluginRegistry("model", passed=PASSED, always=("tasks", "task_channels"))


def register_model(name: str, factory: Callable[..., nn.Module], *, check: Check | None = None,
                   replace: bool = False) -> None:
    """Register a model factory under ``name`` (see the module docstring for how it is
    called). ``check(options, path)`` may validate option values up front, raising ValueErrors
    that start with ``<path>.<key>:``. A second registration of a name needs ``replace=True``."""
    _REGISTRY.register(name, factory, check=check, replace=replace)


def model_names() -> tuple[str, ...]:
    """The registered model names, sorted."""
    return _REGISTRY.names()


def model_factory(source: str = DEFAULT_MODEL, path: str = "model") -> Callable[..., nn.Module]:
    """The factory of a registered name or of an import path (a name containing ':')."""
    return _REGISTRY.resolve(source, path)


def accepts_layout(source: str = DEFAULT_MODEL) -> bool:
    """True when the factory's signature names ``layout`` (so layouts can be swept for it)."""
    return names_parameter(model_factory(source), "layout")


def _check_layout(source: str, given: bool, path: str) -> None:
    """One error for a layout the factory cannot take, or a layout it needs but lacks."""
    factory = model_factory(source, path)
    takes = names_parameter(factory, "layout")
    if given and not takes:
        raise ValueError(f"{path}.factory: {source} takes no `layout` argument, so layouts "
                         "cannot be swept for it; remove `layouts`/model.layout or add a "
                         "layout parameter")
    if not given and takes and not has_default(factory, "layout"):
        raise ValueError(f"{path}.layout: required by model {source!r} (a sharing layout; give "
                         "`layouts` in the sweep)")


def check_model_options(source: str, options: Mapping[str, Any], path: str = "model", *,
                        layout: bool | None = None) -> None:
    """Before any work: ``options`` are keys the factory takes, its required keys are given,
    a registered factory's own value check passes, and, when ``layout`` says whether a layout
    will be given, that the factory can take (or does not need) one."""
    _REGISTRY.check_options(source, options, path)
    if layout is not None:
        _check_layout(source, layout, path)


def build_task_model(source: str, *, tasks: Sequence[str], task_channels: Mapping[str, int],
                     options: Mapping[str, Any] | None = None,
                     layout: Layout | str | None = None, path: str = "model") -> nn.Module:
    """A fresh model from ``source`` for ``tasks``, as a task model (``.tasks``,
    ``.out_channels``); ``task_channels`` usually is the dataset's ``task_channels``."""
    options = dict(options or {})
    check_model_options(source, options, path, layout=layout is not None)
    factory = model_factory(source, path)
    extra = {} if layout is None else {"layout": layout}
    model = factory(tasks=list(tasks), task_channels=dict(task_channels), **extra, **options)
    if not isinstance(model, nn.Module):
        raise ValueError(f"{path}.factory: {source!r} returned a {type(model).__name__}, "
                         "expected a torch.nn.Module")
    return as_task_model(model, tasks, task_channels)


def resnet(tasks: Sequence[str], task_channels: Mapping[str, int], layout: Layout | str,
           width: int = 16, stage_depth: int = 1, skip: bool = True) -> MultiTaskNet:
    """The built-in network (mtl.models.network) for ``layout``, heads sized by
    ``task_channels`` of ``tasks`` (tasks without a count take the task registry's default)."""
    channels = {t: task_channels[t] for t in tasks if task_channels.get(t) is not None}
    return build_model(layout, list(tasks), channels, width=width, stage_depth=stage_depth,
                       skip=skip)


resnet.num_blocks = NUM_BLOCKS  # its layouts' depth: branch points and `all` need it


def check_resnet(options: Mapping[str, Any], path: str) -> None:
    """``width`` an int in 1..512, ``stage_depth`` an int >= 1, ``skip`` a bool (when given)."""
    if "width" in options:
        as_int(options["width"], f"{path}.width", 1, 512)
    if "stage_depth" in options:
        as_int(options["stage_depth"], f"{path}.stage_depth", 1)
    if "skip" in options:
        as_bool(options["skip"], f"{path}.skip")


register_model(DEFAULT_MODEL, resnet, check=check_resnet)
register_model("deeplab_resnet34", deeplab_resnet34, check=check_deeplab)
