"""A small encoder-decoder: a shared convolutional trunk and one 1x1 head per task.

``forward(x)`` takes only the image batch (RGB in [0, 1]; the model normalises it itself) and
returns ``{task: logits [B, C, H, W]}`` at input resolution. It has no ``task=`` keyword and no
``tasks`` attribute: mtlsweep works with any model that returns a mapping task -> tensor.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class BlobNet(nn.Module):
    """Encoder (full, then half resolution) -> decoder (back to full, with a skip) -> heads."""

    def __init__(self, heads: Mapping[str, int], width: int = 8) -> None:
        super().__init__()
        w = int(width)
        self.register_buffer("mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1))
        self.stem = _conv(3, w)
        self.down = nn.Sequential(_conv(w, 2 * w, stride=2), _conv(2 * w, 2 * w))
        self.fuse = _conv(3 * w, w)
        self.heads = nn.ModuleDict({task: nn.Conv2d(w, int(c), 1) for task, c in heads.items()})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x = (x - self.mean) / self.std
        skip = self.stem(x)
        deep = F.interpolate(self.down(skip), size=skip.shape[-2:], mode="bilinear",
                             align_corners=False)
        shared = self.fuse(torch.cat([skip, deep], dim=1))
        return {task: head(shared) for task, head in self.heads.items()}


def build(tasks: Sequence[str], task_channels: Mapping[str, int], width: int = 8) -> BlobNet:
    """The model factory a sweep names as ``byo.nets:build``: one head per task in ``tasks``
    with ``task_channels[task]`` output channels (the class count for segmentation)."""
    missing = [t for t in tasks if t not in task_channels]
    if missing:
        raise ValueError(f"task_channels: no channel count for {missing}; "
                         f"have {sorted(task_channels)}")
    if int(width) < 1:
        raise ValueError(f"width: {width!r} must be a positive int")
    return BlobNet({t: task_channels[t] for t in tasks}, width=width)
