"""A deterministic DataLoader and subsets that keep the dataset contract's attributes."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Subset

CONTRACT_ATTRIBUTES = ("name", "tasks", "task_channels")


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A single-process DataLoader whose shuffling order depends only on `seed`."""
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last,
                      generator=generator, num_workers=0)


def subset(dataset: Dataset, start: int, stop: int) -> Subset:
    """Items ``[start, stop)`` of ``dataset``, keeping those of the dataset contract's
    attributes (``name``, ``tasks``, ``task_channels``) it has, which a plain Subset drops."""
    part = Subset(dataset, range(start, stop))
    for attr in CONTRACT_ATTRIBUTES:
        if hasattr(dataset, attr):
            setattr(part, attr, getattr(dataset, attr))
    return part
