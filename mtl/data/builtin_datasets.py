"""The built-in datasets (scenes, nyuv2, taskonomy), registered through `register_dataset`
like any user's: one small factory per dataset holding its split rules, the tasks it provides
and its up-front check, which holds the dataset's own limits (the scenes cache bound, the
files on disk) so a sweep refuses what the dataset would refuse, before any work. Imported by
mtl.data, so the built-ins are always registered."""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from mtl.config.locations import check_writable_dir
from mtl.config.reading import as_int, brief
from mtl.data import nyuv2, scenes, taskonomy
from mtl.data.loading import subset
from mtl.data.nyuv2 import NYUv2, parse_size
from mtl.data.registry import SPLITS, register_dataset
from mtl.data.scenes import SIZE_RANGE, SyntheticScenes
from mtl.data.taskonomy import Taskonomy

# NYUv2's preprocessed release ships train + val; val is the official test set.
NYUV2_SPLIT_FOLDER = {"train": "train", "val": "val", "test": "val"}
SCENES_SIZE = 64  # the scenes factory's default image side


def scenes_split(split: str, tasks: Sequence[str] | None = None, length: int | None = None,
                 size: int = SCENES_SIZE, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None) -> SyntheticScenes:
    """``length`` rendered scenes of ``split`` from world ``seed`` (splits never overlap)."""
    return SyntheticScenes(split, size=size, length=length, seed=seed, tasks=tasks,
                           cache_dir=cache_dir)


def check_scenes(options: Mapping[str, Any], path: str,
                 split_sizes: Mapping[str, int] | None = None) -> None:
    """SyntheticScenes' own limits: ``size`` in SIZE_RANGE, ``seed`` in SEED_RANGE,
    ``cache_dir`` a writable directory, each split at most `scenes.max_length(size)` samples
    (a million, and a 16 GiB cache)."""
    size = as_int(options.get("size", SCENES_SIZE), f"{path}.size", *SIZE_RANGE)
    if "seed" in options:
        as_int(options["seed"], f"{path}.seed", *scenes.SEED_RANGE)
    if options.get("cache_dir") is not None:
        cache_dir = options["cache_dir"]
        check_writable_dir(os.fspath(cache_dir) if isinstance(cache_dir, os.PathLike)
                           else cache_dir, f"{path}.cache_dir", "cache directory")
    most = scenes.max_length(size)
    for split, n in (split_sizes or {}).items():
        if isinstance(n, int) and n > most:
            raise ValueError(
                f"{path}.{split}: {n} samples of {size} px scenes; allowed: 1..{most} at size "
                f"{size} (a split's cache holds at most {scenes.MAX_LENGTH} samples and "
                f"{scenes.MAX_CACHE_BYTES >> 30} GiB, {scenes.bytes_per_sample(size)} bytes "
                "per sample)")


def nyuv2_split(split: str, root: str, tasks: Sequence[str] | None = None,
                size: int | Sequence[int] | None = None,
                resize: int | Sequence[int] | None = None) -> NYUv2:
    """NYUv2's ``split``; "test" reads the val folder (the usual NYUv2 protocol)."""
    return NYUv2(root, NYUV2_SPLIT_FOLDER[split], tasks=tasks, size=size, resize=resize)


def taskonomy_split(split: str, root: str, split_sizes: Mapping[str, int],
                    tasks: Sequence[str] | None = None,
                    size: int | Sequence[int] | None = None,
                    resize: int | Sequence[int] | None = None,
                    class_weights: str | None = None) -> Dataset:
    """Taskonomy has no split folders: train, val and test are consecutive disjoint ranges
    of its samples, of ``split_sizes`` each (cut short where the samples run out)."""
    full = Taskonomy(root, None, tasks=tasks, size=size, resize=resize,
                     class_weights=class_weights)
    start = sum(split_sizes.get(s, 0) for s in SPLITS[:SPLITS.index(split)])
    stop = min(start + split_sizes.get(split, 0), len(full))
    return subset(full, min(start, stop), stop)


def check_files(options: Mapping[str, Any], path: str) -> Path | None:
    """``root`` (when given) names an existing directory; ``size`` and ``resize`` are None,
    an int or (h, w), not both given. Returns the root (None when not given: the signature
    check reports it missing)."""
    root = options.get("root")
    if "root" in options and not isinstance(root, (str, os.PathLike)):
        raise ValueError(f"{path}.root: expected the directory (a string), got {brief(root)}")
    if root is not None and not Path(root).is_dir():
        raise ValueError(f"{path}.root: {brief(os.fspath(root))} is not an existing directory")
    try:
        parse_size(options.get("size"))
    except ValueError as err:
        raise ValueError(f"{path}.{err}") from None
    try:
        parse_size(options.get("resize"))
    except ValueError as err:
        raise ValueError(f"{path}.resize: {str(err).removeprefix('size: ')}") from None
    if options.get("size") is not None and options.get("resize") is not None:
        raise ValueError(f"{path}.resize: give either size (antialiased, mask-aware) or resize "
                         "(the DGBA authors' bilinear image / nearest labels), not both")
    return None if root is None else Path(root)


def _count_npy(folder: Path) -> int:
    with os.scandir(folder) as entries:
        return sum(1 for e in entries if e.name.endswith(".npy"))


def check_nyuv2(options: Mapping[str, Any], path: str, tasks: Sequence[str] | None = None,
                split_sizes: Mapping[str, int] | None = None) -> None:
    """`check_files`, then the folders the asked-for tasks read exist in each split, and
    each split has the samples asked for (one directory listing per split)."""
    root = check_files(options, path)
    if root is None:
        return
    folders = ["image"] + [nyuv2.MODALITY[t] for t in tasks or () if t in nyuv2.MODALITY]
    for split, n in (split_sizes or {}).items():
        split_dir = root / NYUV2_SPLIT_FOLDER.get(split, split)
        for folder in folders:
            if not (split_dir / folder).is_dir():
                raise ValueError(f"{path}.root: {brief(str(split_dir / folder))} is missing "
                                 f"(the {split} split; layout {nyuv2.LAYOUT})")
        have = _count_npy(split_dir / "image")
        if isinstance(n, int) and n > have:
            allowed = f"1..{have}" if have else f"a root whose {split} split has samples"
            raise ValueError(f"{path}.{split}: {n} samples asked for but nyuv2's {split} split "
                             f"has {have} ({brief(str(split_dir / 'image'))}); allowed: "
                             f"{allowed}")


def check_taskonomy(options: Mapping[str, Any], path: str,
                    tasks: Sequence[str] | None = None) -> None:
    """`check_files`, ``class_weights`` (when given) a readable file of 17 weights for the
    asked-for segment_semantic, then ``rgb`` and each asked-for task have their folder."""
    if options.get("class_weights") is not None:
        if tasks is not None and "segment_semantic" not in tasks:
            raise ValueError(f"{path}.class_weights: weigh segment_semantic, which is not "
                             "among the tasks")
        weights = options["class_weights"]
        if not isinstance(weights, (str, os.PathLike)):
            raise ValueError(f"{path}.class_weights: expected a .npy or .json file path, got "
                             f"{brief(weights)}")
        try:
            taskonomy.read_class_weights(weights)
        except ValueError as err:
            raise ValueError(f"{path}.class_weights: "
                             f"{str(err).removeprefix('taskonomy class_weights: ')}") from None
    root = check_files(options, path)
    if root is None:
        return
    for folder in ("rgb", *(tasks or ())):
        if not (root / folder).is_dir():
            raise ValueError(f"{path}.root: {brief(str(root / folder))} is missing (layout "
                             f"{taskonomy.LAYOUT})")


register_dataset("scenes", scenes_split, check=check_scenes, tasks=scenes.TASKS)
register_dataset("nyuv2", nyuv2_split, check=check_nyuv2, tasks=nyuv2.TASKS)
register_dataset("taskonomy", taskonomy_split, check=check_taskonomy, tasks=taskonomy.TASKS)
