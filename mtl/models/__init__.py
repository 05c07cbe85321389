"""Sharing layouts (task trees over backbone blocks) and the multi-task network built from one.

`Layout` and `enumerate_layouts` are pure Python; the network (torch) is imported on first use,
so layout-only users (the CLI's `layouts` command, analysis) never pay for it.
"""
from __future__ import annotations

import importlib
from typing import Any

from mtl.models.layout import Layout, count_layouts, enumerate_layouts, iter_layouts

_LAZY = {"build_model": "mtl.models.network", "MultiTaskNet": "mtl.models.network",
         "NUM_BLOCKS": "mtl.models.blocks"}

__all__ = ["Layout", "enumerate_layouts", "iter_layouts", "count_layouts", "build_model",
           "MultiTaskNet", "NUM_BLOCKS"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mtl.models' has no attribute {name!r}")
