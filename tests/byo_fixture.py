"""A user's own dataset and model factories, importable as ``byo_fixture:<name>`` (tests/ is
on sys.path under pytest): what the registry tests plug in from outside mtl."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

TASKS = ("depth_zbuffer", "segment_semantic")


class Squares(Dataset):
    """``n`` samples: a constant image whose value is the index, depth = index, seg = index % 3."""

    def __init__(self, split: str, size: int, n: int, tasks: Sequence[str]) -> None:
        self.split, self.size, self.n, self.tasks = split, size, n, tuple(tasks)
        self.offset = {"train": 0, "val": 1000, "test": 2000}[split]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < self.n:
            raise IndexError(i)
        k, s = self.offset + i, self.size
        out = {"image": torch.full((3, s, s), (k % 256) / 255.0)}
        if "depth_zbuffer" in self.tasks:
            out["depth_zbuffer"] = torch.full((1, s, s), float(k))
        if "segment_semantic" in self.tasks:
            out["segment_semantic"] = torch.full((s, s), k % 3, dtype=torch.long)
        return out


def make_split(split: str, size: int = 8, n: int = 20, tasks: Sequence[str] | None = None
               ) -> Squares:
    """A dataset factory without ``task_channels``, ``length`` or ``split_sizes``."""
    return Squares(split, size, n, tasks or TASKS)


def needs_root(split: str, root: str, **extra: object) -> Squares:
    """A factory with a required key and **kwargs (so every key and keyword is accepted)."""
    needs_root.calls.append({"split": split, "root": root, **extra})
    return Squares(split, 8, 4, TASKS)


needs_root.calls = []


class MeanNet(nn.Module):
    """Any model: forward(x) -> {task: tensor}, no tasks/out_channels attributes."""

    def __init__(self, heads: Mapping[str, int]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({t: nn.Conv2d(3, c, 1) for t, c in heads.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {t: head(x) for t, head in self.heads.items()}


def build_net(tasks: Sequence[str], task_channels: Mapping[str, int], width: int = 4) -> MeanNet:
    """A model factory without ``layout``."""
    return MeanNet({t: task_channels.get(t) or 1 for t in tasks})


def not_a_model(tasks: Sequence[str], task_channels: Mapping[str, int]) -> str:
    return "a string"
