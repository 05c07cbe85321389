"""Datasets that yield the batch contract (see docs/internals.md) and a deterministic loader."""
from __future__ import annotations

import importlib
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

# name -> (module, class); imported lazily so one broken optional loader never blocks the others.
DATASETS: dict[str, tuple[str, str]] = {
    "scenes": ("mtl.data.scenes", "SyntheticScenes"),
    "nyuv2": ("mtl.data.nyuv2", "NYUv2"),
    "taskonomy": ("mtl.data.taskonomy", "Taskonomy"),
}


def dataset_class(name: str) -> type:
    """The dataset class registered under `name`."""
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown name {name!r}; allowed: {sorted(DATASETS)}")
    module, cls = DATASETS[name]
    return getattr(importlib.import_module(module), cls)


def get_dataset(name: str, split: str, **kwargs: Any) -> Dataset:
    """Build the dataset `name` for `split` (kwargs go to its constructor)."""
    return dataset_class(name)(split=split, **kwargs)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A single-process DataLoader whose shuffling order depends only on `seed`."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=generator, num_workers=0)


def subset(dataset: Dataset, start: int, stop: int) -> Subset:
    """Items ``[start, stop)`` of ``dataset``, keeping the dataset contract's attributes
    (``name``, ``tasks``, ``task_channels``) that a plain Subset would drop."""
    part = Subset(dataset, range(start, stop))
    for attr in ("name", "tasks", "task_channels"):
        setattr(part, attr, getattr(dataset, attr))
    return part
