"""Our own task, saliency: a per-sample loss and a metric accumulator.

Predictions are logits ``[B, 1, H, W]``; targets are ``{0, 1}`` maps ``[B, 1, H, W]``; an
optional ``mask`` (bool, ``[B, 1, H, W]`` or ``[B, H, W]``, True = valid) leaves pixels out.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

BETA2 = 0.3        # beta^2 of the saliency F-measure: precision weighs more than recall
THRESHOLD = 0.5    # a pixel is predicted salient when sigmoid(logit) >= 0.5


def _valid(pred: Tensor, target: Tensor, mask: Tensor | None) -> Tensor:
    """Bool ``[B,1,H,W]``: finite target pixels that the mask (if any) keeps."""
    if pred.dim() != 4 or pred.shape[1] != 1 or pred.shape != target.shape:
        raise ValueError(f"saliency: pred and target must both be [B,1,H,W]; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    valid = torch.isfinite(target)
    if mask is not None:
        mask = mask[:, None] if mask.dim() == 3 else mask
        if mask.shape != target.shape:
            raise ValueError(f"saliency_mask: shape {tuple(mask.shape)} does not match the "
                             f"label's {tuple(target.shape)}")
        valid = valid & mask.to(device=target.device, dtype=torch.bool)
    return valid


def saliency_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample binary cross-entropy with logits, ``Tensor[B]``: the mean over each sample's
    valid pixels, and 0 (never NaN, with finite gradients) for a sample without any."""
    valid = _valid(pred, target, mask)
    safe = torch.where(valid, target.to(pred.dtype), torch.zeros_like(pred))  # no NaN inside
    bce = F.binary_cross_entropy_with_logits(pred, safe, reduction="none")
    total = torch.where(valid, bce, torch.zeros_like(bce)).flatten(1).sum(dim=1)
    count = valid.flatten(1).sum(dim=1).clamp_min(1).to(pred.dtype)
    return total / count


class SaliencyMetric:
    """MAE and F-measure of saliency maps, accumulated over the whole evaluation set.

    ``update`` adds sums and counts (float64 / int64) for one batch; ``compute`` turns them
    into numbers; ``reset`` starts over.

    - ``mae``: mean absolute error between sigmoid(pred) and the target over all valid pixels
      seen (lower is better).
    - ``fscore``: the saliency F-measure with beta^2 = 0.3 (the convention of the saliency
      literature, weighing precision above recall) of the maps thresholded at 0.5, from the
      true/false positive and false negative counts pooled over all valid pixels seen
      (higher is better); 0 when nothing is predicted and nothing is salient.

    Both are NaN before any valid pixel was seen.
    """

    higher_is_better = {"mae": False, "fscore": True}

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self.abs_err = 0.0
        self.pixels = 0
        self.tp = self.fp = self.fn = 0

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> None:
        """Add one batch: ``pred`` logits and ``target`` maps, both ``[B,1,H,W]``."""
        valid = _valid(pred, target, mask)
        prob = torch.sigmoid(pred.double())
        truth = target.double() >= 0.5
        hit = prob >= THRESHOLD
        self.abs_err += float(torch.where(valid, (prob - target.double()).abs(), 0.0).sum())
        self.pixels += int(valid.sum())
        self.tp += int((hit & truth & valid).sum())
        self.fp += int((hit & ~truth & valid).sum())
        self.fn += int((~hit & truth & valid).sum())

    def compute(self) -> dict[str, float]:
        """``{"mae": ..., "fscore": ...}`` over everything since the last reset."""
        if self.pixels == 0:
            return {"mae": math.nan, "fscore": math.nan}
        precision = self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0
        recall = self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0
        denom = BETA2 * precision + recall
        fscore = (1 + BETA2) * precision * recall / denom if denom > 0 else 0.0
        return {"mae": self.abs_err / self.pixels, "fscore": fscore}
