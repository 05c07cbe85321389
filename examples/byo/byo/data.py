"""Procedural "blobs" images: a few bright blobs of two kinds on a noisy dark background.

Every sample is computed from (seed, split, index) alone, so it is the same on every machine and
in every trial, costs microseconds on a CPU, and the three splits never share a sample (each
split draws from its own random stream). A sample is a dict of tensors:

- ``image`` float32 ``[3,S,S]`` RGB in [0, 1];
- ``segment_semantic`` int64 ``[S,S]``: 0 background, 1 round reddish blob (type A), 2 square
  greenish blob (type B), and 255 (ignored) on a one-pixel frame around the image, so masked
  losses and metrics are exercised;
- ``saliency`` float32 ``[1,S,S]``: 1 on any blob, 0 elsewhere.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

NUM_CLASSES = 3          # background, blob type A, blob type B
IGNORE = 255             # label of ignored pixels (the house convention)
SPLITS = ("train", "val", "test")
TASKS = ("segment_semantic", "saliency")

# Mean colour of each blob type (RGB); a sample jitters them, the background stays dark.
_COLOURS = {1: (0.95, 0.35, 0.25), 2: (0.30, 0.90, 0.40)}


class Blobs(Dataset):
    """``length`` samples of one split; see the module docstring for the sample layout."""

    name = "byo_blobs"
    tasks = TASKS
    task_channels = {"segment_semantic": NUM_CLASSES, "saliency": 1}

    def __init__(self, split: str = "train", size: int = 16, seed: int = 0,
                 length: int = 64) -> None:
        if split not in SPLITS:
            raise ValueError(f"split: {split!r} is not a split; allowed: {list(SPLITS)}")
        if int(size) < 8:
            raise ValueError(f"size: {size!r} is too small; allowed: an int >= 8")
        if int(length) < 0:
            raise ValueError(f"length: {length!r} must be >= 0")
        self.split, self.size, self.seed, self.length = split, int(size), int(seed), int(length)
        # Public copies so that changing one dataset never changes the class attributes.
        self.tasks = tuple(TASKS)
        self.task_channels = dict(Blobs.task_channels)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), int(index)])
        s = self.size
        image = rng.uniform(0.05, 0.35) + rng.normal(0.0, 0.05, size=(3, s, s))
        labels = np.zeros((s, s), dtype=np.int64)
        yy, xx = np.mgrid[0:s, 0:s]
        for _ in range(rng.integers(1, 4)):                  # 1-3 blobs
            kind = int(rng.integers(1, NUM_CLASSES))
            radius = rng.uniform(0.12, 0.22) * s
            cy, cx = rng.uniform(radius, s - radius, size=2)
            if kind == 1:                                    # type A: a disk
                inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
            else:                                            # type B: a square
                inside = (np.abs(yy - cy) <= radius * 0.85) & (np.abs(xx - cx) <= radius * 0.85)
            colour = np.asarray(_COLOURS[kind]) + rng.normal(0.0, 0.05, size=3)
            image[:, inside] = colour[:, None] + rng.normal(0.0, 0.04, size=(3, int(inside.sum())))
            labels[inside] = kind                            # later blobs cover earlier ones
        saliency = (labels > 0).astype(np.float32)[None]
        labels[0, :] = labels[-1, :] = labels[:, 0] = labels[:, -1] = IGNORE
        return {
            "image": torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32)),
            "segment_semantic": torch.from_numpy(labels),
            "saliency": torch.from_numpy(saliency),
        }


def make_split(split: str, size: int = 16, seed: int = 0, length: int = 64) -> Blobs:
    """The dataset factory a sweep names as ``byo.data:make_split``: ``length`` samples of
    ``split`` (train | val | test) at ``size`` x ``size`` pixels from world ``seed``."""
    return Blobs(split=split, size=size, seed=seed, length=length)
