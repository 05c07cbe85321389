"""Built-in task losses: per-pixel values with their validity, reduced per sample.

Each built-in loss is written once as a *pixel loss* `(pred, target, mask=None) -> (per_pixel,
valid)` and reduced two ways:

* `masked_mean`: the per-sample mean over valid pixels, `Tensor[B]` (0 for a sample without a
  valid pixel) — the task's `loss`, used by training and by the attacks by default;
* `masked_sums`: per sample, (sum over valid pixels, number of valid pixels) — the two parts of
  a batch mean over *all valid pixels of the batch*, which is how the DGBA authors' code
  (Zhang et al. 2023, `data/pixel2pixel_loss.py` with `reduction='mean'`) reduces TOTAL and
  SINGLE; `summed(pixels)` makes the task's `loss_sums` from a pixel loss.

The two agree when every pixel is valid; with ignore labels (255) or masks they weigh samples
differently. `mtl.tasks` registers the six built-in tasks with these functions.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.metrics import IGNORE_INDEX, broadcast_mask, check_dense

PixelLoss = Callable[..., tuple[Tensor, Tensor]]
"""(pred, target, mask=None) -> (per-pixel loss [B,...], valid [B,...] bool)."""
LossSums = Callable[..., tuple[Tensor, Tensor]]
"""(pred, target, mask=None) -> per-sample (sum over valid pixels [B], valid count [B])."""


def masked_sums(per_pixel: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample sum of `per_pixel` [B,...] over `valid` and the number of valid entries
    (in `per_pixel`'s dtype); a [B] input is one 'pixel' per sample. A floating `valid` is a
    per-pixel weight: the weighted sum and the sum of weights (a weighted mean follows)."""
    zero = torch.zeros((), dtype=per_pixel.dtype, device=per_pixel.device)
    if valid.dtype == torch.bool:
        kept, weight = torch.where(valid, per_pixel, zero), valid.to(per_pixel.dtype)
    else:  # per-pixel weights (e.g. Taskonomy's class weights): a weighted sum and count
        weight = valid.to(per_pixel.dtype)
        kept = torch.where(weight > 0, per_pixel * weight, zero)
    flat = kept.flatten(1) if kept.dim() > 1 else kept[:, None]
    flat_weight = weight.flatten(1) if weight.dim() > 1 else weight[:, None]
    return flat.sum(dim=1), flat_weight.sum(dim=1)


def masked_mean(per_pixel: Tensor, valid: Tensor) -> Tensor:
    """Per-sample mean of `per_pixel` [B,...] over `valid`; 0 where a sample has none valid."""
    total, count = masked_sums(per_pixel, valid)
    return total / count.clamp_min(1)


def summed(pixels: PixelLoss) -> LossSums:
    """The `loss_sums` of a pixel loss: per-sample (sum over valid pixels, valid count)."""
    def loss_sums(pred: Tensor, target: Tensor, mask: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
        return masked_sums(*pixels(pred, target, mask))
    loss_sums.__doc__ = f"Per-sample (sum, valid count) of {pixels.__name__}."
    return loss_sums


def segmentation_pixels(pred: Tensor, target: Tensor, mask: Tensor | None = None
                        ) -> tuple[Tensor, Tensor]:
    """Per-pixel cross-entropy [B,H,W]; valid where the label is not 255 and the mask True.
    A floating mask holds per-pixel weights (Taskonomy's class weights, as the DGBA authors'
    loss): the second value is then the weight map (0 where invalid) for a weighted mean."""
    if pred.dim() != 4 or target.dim() != 3 or pred.shape[0] != target.shape[0] \
            or pred.shape[2:] != target.shape[1:]:
        raise ValueError(f"segment_semantic: pred must be [B,C,H,W] and target [B,H,W] with the "
                         f"same B,H,W; got {tuple(pred.shape)} and {tuple(target.shape)}")
    target = target.long()
    valid = (target != IGNORE_INDEX) & broadcast_mask(mask, tuple(target.shape), pred.device,
                                                      "segment_semantic_mask")
    per_pixel = F.cross_entropy(pred, torch.where(valid, target, 0), reduction="none")
    if mask is not None and mask.is_floating_point():  # class weights: a weighted CE
        weights = mask[:, 0] if mask.dim() == 4 else mask
        return per_pixel, torch.where(valid, weights.to(per_pixel.device, per_pixel.dtype), 0.0)
    return per_pixel, valid


def segmentation_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample cross-entropy over pixels whose label is not 255 and whose mask is True."""
    return masked_mean(*segmentation_pixels(pred, target, mask))


def normal_pixels(pred: Tensor, target: Tensor, mask: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """Per-pixel 1 - cos(normalise(pred), target) [B,H,W]; valid on non-zero, finite targets."""
    check_dense("normal", pred, target, 3)
    valid = (target.abs().sum(dim=1) > 0) & torch.isfinite(target).all(dim=1) & broadcast_mask(
        mask, (target.shape[0], *target.shape[2:]), pred.device, "normal_mask")
    target = torch.where(valid[:, None], target.to(pred.dtype), 0.0)  # no NaN into gradients
    cos = (F.normalize(pred, dim=1) * F.normalize(target, dim=1)).sum(dim=1)
    return 1.0 - cos, valid


def normal_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample mean of 1 - cos(normalise(pred), target) over non-zero, finite targets."""
    return masked_mean(*normal_pixels(pred, target, mask))


def l1_pixels(task: str) -> PixelLoss:
    """The per-pixel L1 of a one-channel task [B,H,W]; valid where its mask is True."""
    def pixels(pred: Tensor, target: Tensor, mask: Tensor | None = None
               ) -> tuple[Tensor, Tensor]:
        check_dense(task, pred, target, 1)
        valid = broadcast_mask(mask, (target.shape[0], *target.shape[2:]), pred.device,
                               f"{task}_mask")
        safe = torch.where(valid[:, None], target.to(pred.dtype), 0.0)  # no NaN into gradients
        return (pred - safe).abs().mean(dim=1), valid
    pixels.__name__ = f"{task}_pixels"
    return pixels


def l1_loss(task: str) -> Callable[..., Tensor]:
    """Per-sample masked L1 for a one-channel task (everywhere valid without a mask)."""
    pixels = l1_pixels(task)

    def loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        return masked_mean(*pixels(pred, target, mask))
    loss.__doc__ = f"Per-sample masked L1 for {task} (everywhere valid without a mask)."
    return loss


def classification_pixels(pred: Tensor, target: Tensor, mask: Tensor | None = None
                          ) -> tuple[Tensor, Tensor]:
    """Per-image cross-entropy [B] (one 'pixel' per image); valid unless target 255 / mask
    False."""
    if pred.dim() != 2 or target.shape != (pred.shape[0],):
        raise ValueError(f"scene_class: pred must be [B,K] and target [B]; got "
                         f"{tuple(pred.shape)} and {tuple(target.shape)}")
    target = target.long()
    valid = (target != IGNORE_INDEX) & broadcast_mask(mask, tuple(target.shape), pred.device,
                                                      "scene_class_mask")
    return F.cross_entropy(pred, torch.where(valid, target, 0), reduction="none"), valid


def classification_loss(pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Per-sample cross-entropy for image-level classes; target 255 / mask False gives 0."""
    return masked_mean(*classification_pixels(pred, target, mask))
