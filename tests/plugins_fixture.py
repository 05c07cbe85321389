"""A user's own task, model and data for the custom-task tests (imported as `plugins_fixture`).

Saliency: logits [B,1,H,W] against {0,1} maps [B,1,H,W]; a per-sample BCE-with-logits loss and
a metric with mae (lower is better) and an F-score (higher is better).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

TASKS = ("segment_semantic", "saliency")
CLASSES = 3


def _valid(target: Tensor, mask: Tensor | None) -> Tensor:
    valid = torch.isfinite(target)
    if mask is not None:
        valid = valid & (mask[:, None] if mask.dim() == 3 else mask).bool()
    return valid


def saliency_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample BCE with logits over valid pixels; 0 for a sample without any."""
    valid = _valid(target, mask)
    safe = torch.where(valid, target.to(pred.dtype), torch.zeros_like(pred))
    bce = F.binary_cross_entropy_with_logits(pred, safe, reduction="none")
    total = torch.where(valid, bce, torch.zeros_like(bce)).flatten(1).sum(1)
    return total / valid.flatten(1).sum(1).clamp_min(1).to(pred.dtype)


class SaliencyMetric:
    """MAE of sigmoid(pred) and the F1 score of the maps thresholded at 0.5."""

    higher_is_better = {"mae": False, "fscore": True}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.abs_err, self.pixels, self.tp, self.fp, self.fn = 0.0, 0, 0, 0, 0

    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        valid = _valid(target, mask)
        prob, truth = torch.sigmoid(pred.double()), target.double() >= 0.5
        hit = prob >= 0.5
        self.abs_err += float(torch.where(valid, (prob - target.double()).abs(), 0.0).sum())
        self.pixels += int(valid.sum())
        self.tp += int((hit & truth & valid).sum())
        self.fp += int((hit & ~truth & valid).sum())
        self.fn += int((~hit & truth & valid).sum())

    def compute(self) -> dict[str, float]:
        if self.pixels == 0:
            return {"mae": math.nan, "fscore": math.nan}
        denom = 2 * self.tp + self.fp + self.fn
        return {"mae": self.abs_err / self.pixels,
                "fscore": 2 * self.tp / denom if denom else 0.0}


class TinyNet(nn.Module):
    """A plain model: forward(x) -> {task: tensor}, no `tasks`, no `out_channels`."""

    def __init__(self, classes: int = CLASSES, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU())
        self.seg = nn.Conv2d(width, classes, 1)
        self.sal = nn.Conv2d(width, 1, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = self.body(x)
        return {"segment_semantic": self.seg(h), "saliency": self.sal(h)}


class Blobs(Dataset):
    """Random images with segmentation and saliency labels (bright pixels are salient)."""

    tasks = TASKS
    task_channels = {"segment_semantic": CLASSES, "saliency": 1}

    def __init__(self, length: int = 8, size: int = 8, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(length, 3, size, size, generator=g)
        bright = self.images.mean(1)
        self.seg = (bright * CLASSES).long().clamp(max=CLASSES - 1)
        self.sal = (bright > 0.5).float()[:, None]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i], "segment_semantic": self.seg[i],
                "saliency": self.sal[i]}
