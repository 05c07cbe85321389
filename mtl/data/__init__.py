"""Datasets that yield the batch contract (see docs/internals.md), the dataset registry
(built-ins and users' factories alike, see mtl.data.registry) and a deterministic loader."""
from __future__ import annotations

import importlib
from typing import Any

from torch.utils.data import Dataset

from mtl.data import builtin_datasets  # noqa: F401  (registers scenes, nyuv2, taskonomy)
from mtl.data.loading import make_loader, subset
from mtl.data.registry import (SPLITS, build_split, check_dataset_options, dataset_factory,
                               dataset_names, register_dataset)

# The built-in dataset classes by name (module, class), for direct construction with
# `get_dataset`; sweeps build splits through the registry (`build_split`) instead.
DATASETS: dict[str, tuple[str, str]] = {
    "scenes": ("mtl.data.scenes", "SyntheticScenes"),
    "nyuv2": ("mtl.data.nyuv2", "NYUv2"),
    "taskonomy": ("mtl.data.taskonomy", "Taskonomy"),
}

__all__ = ["SPLITS", "DATASETS", "build_split", "check_dataset_options", "dataset_class",
           "dataset_factory", "dataset_names", "get_dataset", "make_loader", "register_dataset",
           "subset"]


def dataset_class(name: str) -> type:
    """The built-in dataset class registered under `name`."""
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown name {name!r}; allowed: {sorted(DATASETS)}")
    module, cls = DATASETS[name]
    return getattr(importlib.import_module(module), cls)


def get_dataset(name: str, split: str, **kwargs: Any) -> Dataset:
    """Construct the built-in dataset class `name` for `split` (kwargs go to its constructor)."""
    return dataset_class(name)(split=split, **kwargs)
