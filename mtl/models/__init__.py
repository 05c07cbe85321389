"""Sharing layouts (task trees over backbone blocks; TreeMTL's index order in
mtl.models.treemtl), the multi-task network built from one, the DGBA paper's Deeplab-ResNet-34
tree (mtl.models.deeplab, registered as ``deeplab_resnet34``) and the model registry (built-in
and users' model factories, see mtl.models.registry).

`Layout` and `enumerate_layouts` are pure Python; the network and the registry (torch) are
imported on first use, so layout-only users (the CLI's `layouts` command, analysis) never pay
for them.
"""
from __future__ import annotations

import importlib
from typing import Any

from mtl.models.layout import Layout, count_layouts, enumerate_layouts, iter_layouts

_REGISTRY_NAMES = ("DEFAULT_MODEL", "register_model", "model_names", "model_factory",
                   "accepts_layout", "check_model_options", "build_task_model")
_LAZY = {"build_model": "mtl.models.network", "MultiTaskNet": "mtl.models.network",
         "NUM_BLOCKS": "mtl.models.blocks",
         **{name: "mtl.models.registry" for name in _REGISTRY_NAMES}}

__all__ = ["Layout", "enumerate_layouts", "iter_layouts", "count_layouts", "build_model",
           "MultiTaskNet", "NUM_BLOCKS", *_REGISTRY_NAMES]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mtl.models' has no attribute {name!r}")
