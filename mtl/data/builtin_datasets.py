"""The built-in datasets (scenes, nyuv2, taskonomy), registered through `register_dataset`
like any user's: one small factory per dataset holding its split rules, and its up-front
option check. Imported by mtl.data, so the built-ins are always registered."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mtl.config.reading import as_int
from mtl.data.loading import subset
from mtl.data.nyuv2 import NYUv2, parse_size
from mtl.data.registry import SPLITS, register_dataset
from mtl.data.scenes import SIZE_RANGE, SyntheticScenes
from mtl.data.taskonomy import Taskonomy

# NYUv2's preprocessed release ships train + val; val is the official test set.
NYUV2_SPLIT_FOLDER = {"train": "train", "val": "val", "test": "val"}


def scenes_split(split: str, tasks: Sequence[str] | None = None, length: int | None = None,
                 size: int = 64, seed: int = 0, cache_dir: str | os.PathLike | None = None
                 ) -> SyntheticScenes:
    """``length`` rendered scenes of ``split`` from world ``seed`` (splits never overlap)."""
    return SyntheticScenes(split, size=size, length=length, seed=seed, tasks=tasks,
                           cache_dir=cache_dir)


def check_scenes(options: Mapping[str, Any], path: str) -> None:
    """``size`` an int in SIZE_RANGE, ``seed`` an int >= 0 (when given)."""
    if "size" in options:
        as_int(options["size"], f"{path}.size", *SIZE_RANGE)
    if "seed" in options:
        as_int(options["seed"], f"{path}.seed", 0)


def nyuv2_split(split: str, root: str, tasks: Sequence[str] | None = None,
                size: int | Sequence[int] | None = None) -> NYUv2:
    """NYUv2's ``split``; "test" reads the val folder (the usual NYUv2 protocol)."""
    return NYUv2(root, NYUV2_SPLIT_FOLDER[split], tasks=tasks, size=size)


def taskonomy_split(split: str, root: str, split_sizes: Mapping[str, int],
                    tasks: Sequence[str] | None = None,
                    size: int | Sequence[int] | None = None) -> Dataset:
    """Taskonomy has no split folders: train, val and test are consecutive disjoint ranges
    of its samples, of ``split_sizes`` each (cut short where the samples run out)."""
    full = Taskonomy(root, None, tasks=tasks, size=size)
    start = sum(split_sizes.get(s, 0) for s in SPLITS[:SPLITS.index(split)])
    stop = min(start + split_sizes.get(split, 0), len(full))
    return subset(full, min(start, stop), stop)


def check_files(options: Mapping[str, Any], path: str) -> None:
    """``root`` (when given) names an existing directory; ``size`` is None, an int or (h, w)."""
    root = options.get("root")
    if "root" in options and not isinstance(root, str):
        raise ValueError(f"{path}.root: expected the directory (a string), got {root!r}")
    if root is not None and not Path(root).is_dir():
        raise ValueError(f"{path}.root: {root!r} is not an existing directory")
    try:
        parse_size(options.get("size"))
    except ValueError as err:
        raise ValueError(f"{path}.{err}") from None


register_dataset("scenes", scenes_split, check=check_scenes)
register_dataset("nyuv2", nyuv2_split, check=check_files)
register_dataset("taskonomy", taskonomy_split, check=check_files)
