"""Taskonomy PNG folders -> the batch contract (seg, depth, normals, edges, keypoints).

Layout: `{root}/{folder}/{building}/point_{p}_view_{v}_domain_{domain}.png` with folders
`rgb/` (always read) and one per task (`segment_semantic/`, `depth_zbuffer/`, `normal/`,
`edge_texture/`, `keypoints2d/`); PNGs directly in `{root}/{folder}/` (no building level) are
read too, as building "". Samples are matched across folders by (building, `point_p_view_v`);
only those present in every requested folder are kept, ordered by building, point, view.

Conventions (Taskonomy's own):
- rgb: 8-bit RGB (an alpha channel is dropped) -> [0, 1].
- depth_zbuffer: 16-bit, 1/512 m units -> metres; 65535 = invalid (-> mask False, depth 0).
- normal: 8-bit RGB, v/255*2-1 then renormalised; a pixel is invalid (-> mask False, vector 0)
  when its decoded length is outside [0.5, 1.5] — Taskonomy paints unlabelled pixels mid-gray
  (~128,128,128, length ~0); a real unit normal decodes to length ~1. Axes as stored.
- segment_semantic: 8-bit class ids, 0 = unlabelled -> 255; ids 1..17 -> 0..16 (17 classes).
- edge_texture, keypoints2d: 16-bit, /65535 -> [0, 1].

Resizing: ``size`` is the antialiased, mask-aware resize of every sample; ``resize`` is the
DGBA / TreeMTL test-time protocol (224 x 224 in the paper): every map nearest to 256 x 256
first, as their loader does, then the image bilinear and the labels nearest to ``resize``
(`authors_resize`). ``class_weights`` (a .npy or .json of 17 numbers, e.g. the authors'
``semseg_prior_factor.npy``) makes ``segment_semantic_mask`` the per-pixel weight w[label]
(0 where unlabelled), the weights their class-weighted cross-entropy uses.

split: None = every building; a list of building names; or a text file with one building per
line (`#` comments allowed), given as a path or as a name `s` meaning `{root}/{s}.txt` (so
`get_dataset("taskonomy", "train", root=r)` reads `r/train.txt`).
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from mtl.data.nyuv2 import authors_resize, parse_tasks, pick_resize, resize_sample

TASKS = ("segment_semantic", "depth_zbuffer", "normal", "edge_texture", "keypoints2d")
NUM_CLASSES = 17
DEPTH_UNITS_PER_METRE = 512.0
DEPTH_INVALID = 65535
IGNORE = 255
LAYOUT = "{root}/{rgb,<task>}/{building}/point_<p>_view_<v>_domain_<domain>.png"
_NAME = re.compile(r"^point_(\d+)_view_(\d+)_domain_[A-Za-z0-9_]+\.png$")
_MODES_16 = ("I;16", "I;16B", "I;16L", "I")
AUTHORS_BASE = (256, 256)  # their loader's first, nearest resize of every Taskonomy map

Key = tuple[str, int, int]  # (building, point, view)


def _read_split(split: str | Sequence[str] | None, root: Path) -> list[str] | None:
    if split is None:
        return None
    if isinstance(split, (str, Path)):
        path = Path(split)
        if not path.is_file():
            path = root / f"{split}.txt"
        if not path.is_file():
            raise ValueError(f"taskonomy split: {split!r} is neither a file of building names nor "
                             f"{path}; allowed: None (all buildings), a list of building names, "
                             "or a text file with one building per line")
        names = [ln.split("#")[0].strip() for ln in path.read_text().splitlines()]
        names = [n for n in names if n]
        source = str(path)
    else:
        names, source = [str(n) for n in split], "split"
    if not names:
        raise ValueError(f"taskonomy split: {source} names no building")
    return names


def _index(folder: Path, buildings: list[str] | None) -> dict[Key, Path]:
    """(building, point, view) -> PNG path for one folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"taskonomy: folder {folder} not found (layout {LAYOUT})")
    if buildings is None:
        dirs = [(d.name, d) for d in folder.iterdir() if d.is_dir()] + [("", folder)]
    else:
        dirs = [(b, folder / b) for b in buildings]
        for b, d in dirs:
            if not d.is_dir():
                raise FileNotFoundError(f"taskonomy: building folder {d} of split building {b!r} "
                                        f"not found (layout {LAYOUT})")
    files: dict[Key, Path] = {}
    for building, d in dirs:
        for path in d.glob("*.png"):
            m = _NAME.match(path.name)
            if m is None:
                continue
            key = (building, int(m.group(1)), int(m.group(2)))
            if key in files:
                raise ValueError(f"taskonomy: {path} and {files[key]} are the same sample "
                                 f"(point {key[1]}, view {key[2]}); expected one per folder")
            files[key] = path
    return files


def _open(path: Path) -> Image.Image:
    try:
        img = Image.open(path)
        img.load()
        return img
    except (OSError, ValueError) as err:
        raise ValueError(f"taskonomy: cannot read {path} as a PNG: {err}") from None


def _bad(path: Path, img: Image.Image, expected: str) -> ValueError:
    return ValueError(f"taskonomy: {path} is mode {img.mode} size {img.size}; expected {expected}")


def _read_rgb8(path: Path, expected: str) -> np.ndarray:
    img = _open(path)
    if img.mode == "RGBA":
        img = img.convert("RGB")
    if img.mode != "RGB":
        raise _bad(path, img, expected)
    return np.asarray(img, dtype=np.uint8)


def _read_u16(path: Path, expected: str) -> np.ndarray:
    img = _open(path)
    if img.mode not in _MODES_16:
        raise _bad(path, img, expected)
    arr = np.asarray(img).astype(np.int64)
    if arr.ndim != 2 or arr.min() < 0 or arr.max() > 65535:
        raise _bad(path, img, expected)
    return arr


def load_rgb(path: Path) -> Tensor:
    """[3,H,W] float32 in [0,1]."""
    arr = _read_rgb8(path, "8-bit RGB")
    return torch.from_numpy(arr.transpose(2, 0, 1).astype(np.float32) / 255.0)


def load_depth(path: Path) -> tuple[Tensor, Tensor]:
    """([1,H,W] metres, [1,H,W] valid) from a 16-bit PNG in 1/512 m, 65535 = invalid."""
    arr = _read_u16(path, "16-bit grayscale depth in 1/512 m (65535 = invalid)")
    valid = arr != DEPTH_INVALID
    depth = np.where(valid, arr / DEPTH_UNITS_PER_METRE, 0.0).astype(np.float32)
    return torch.from_numpy(depth)[None], torch.from_numpy(valid)[None]


def load_normal(path: Path) -> tuple[Tensor, Tensor]:
    """([3,H,W] unit normals, [1,H,W] valid) from 8-bit RGB; gray / degenerate pixels invalid."""
    arr = _read_rgb8(path, "8-bit RGB normals").astype(np.float64) / 255.0 * 2.0 - 1.0
    norm = np.linalg.norm(arr, axis=-1, keepdims=True)
    valid = (norm[..., 0] >= 0.5) & (norm[..., 0] <= 1.5)
    unit = np.where(valid[..., None], arr / np.maximum(norm, 1e-12), 0.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1))), \
        torch.from_numpy(valid)[None]


def load_segmentation(path: Path) -> Tensor:
    """[H,W] int64: 0 (unlabelled) -> 255, ids 1..17 -> 0..16."""
    expected = f"8-bit class ids 0..{NUM_CLASSES} (0 = unlabelled), mode L or P"
    img = _open(path)
    if img.mode not in ("L", "P"):
        raise _bad(path, img, expected)
    ids = np.asarray(img).astype(np.int64)
    if ids.max(initial=0) > NUM_CLASSES:
        raise _bad(path, img, expected + f" (found id {int(ids.max())})")
    return torch.from_numpy(np.where(ids == 0, IGNORE, ids - 1))


def load_unit16(path: Path) -> Tensor:
    """[1,H,W] float32 in [0,1] from a 16-bit PNG (/65535): edges and keypoints."""
    arr = _read_u16(path, "16-bit grayscale (scaled by 1/65535)")
    return torch.from_numpy((arr / 65535.0).astype(np.float32))[None]


def read_class_weights(path: str | Path) -> Tensor:
    """The 17 segmentation class weights in a .npy (numeric, no pickles) or .json (a list of
    numbers) file: finite, >= 0, not all 0. One ValueError naming the file otherwise."""
    p = Path(path)
    expected = f"{NUM_CLASSES} finite numbers >= 0 (one per class), not all 0"
    try:
        if p.suffix == ".json":
            values = json.loads(p.read_text())
        elif p.suffix == ".npy":
            values = np.load(p, allow_pickle=False).tolist()
        else:
            raise ValueError("expected a .npy or .json file")
    except (OSError, ValueError) as err:
        raise ValueError(f"taskonomy class_weights: cannot read {p}: {err}") from None
    if isinstance(values, list) and len(values) == 1 and isinstance(values[0], list):
        values = values[0]  # a 1 x 17 array
    if not isinstance(values, list) or len(values) != NUM_CLASSES or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            and v >= 0 for v in values) or not any(values):
        raise ValueError(f"taskonomy class_weights: {p} holds {str(values)[:80]}; expected "
                         f"{expected}")
    return torch.tensor(values, dtype=torch.float32)


def weight_mask(labels: Tensor, weights: Tensor) -> Tensor:
    """w[label] per pixel as float32, 0 where the label is ignored (255)."""
    valid = labels != IGNORE
    return torch.where(valid, weights[torch.where(valid, labels, 0)], 0.0)


class Taskonomy(Dataset):
    """Taskonomy folders yielding the batch contract; ``size`` / ``resize`` / ``class_weights``
    as the module docstring says."""

    name = "taskonomy"

    def __init__(self, root: str | Path, split: str | Sequence[str] | None = None,
                 tasks: Sequence[str] | None = None,
                 size: int | Sequence[int] | None = None,
                 resize: int | Sequence[int] | None = None,
                 class_weights: str | Path | None = None) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"taskonomy root: {root} is not a directory (layout {LAYOUT})")
        if tasks is None:  # every task whose folder exists
            tasks = [t for t in TASKS if (root / t).is_dir()]
            if not tasks:
                raise FileNotFoundError(f"taskonomy: no task folder ({', '.join(TASKS)}) under "
                                        f"{root} (layout {LAYOUT})")
        self.tasks = parse_tasks(tasks, TASKS, "taskonomy")
        self.size, self.resize = pick_resize(size, resize, "taskonomy")
        self.class_weights = None
        if class_weights is not None:
            if "segment_semantic" not in self.tasks:
                raise ValueError("taskonomy class_weights: weigh segment_semantic, which is not "
                                 f"among the tasks {list(self.tasks)}")
            self.class_weights = read_class_weights(class_weights)
        self.buildings = _read_split(split, root)
        self.root = root
        self.task_channels = {t: NUM_CLASSES if t == "segment_semantic" else
                              (3 if t == "normal" else 1) for t in self.tasks}
        folders = ("rgb",) + self.tasks
        files = {f: _index(root / f, self.buildings) for f in folders}
        common = set.intersection(*(set(v) for v in files.values()))
        if not common:
            counts = ", ".join(f"{root / f}: {len(v)}" for f, v in files.items())
            raise ValueError(f"taskonomy: no sample (point_<p>_view_<v>) is present in every "
                             f"requested folder ({counts}; layout {LAYOUT})")
        self._keys = sorted(common)
        self._files = files
        self[0]  # validate the first file of every folder now, not mid-training

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"taskonomy: index {i} out of range for {len(self)} samples")
        key = self._keys[i]
        path = self._files["rgb"][key]
        sample = {"image": load_rgb(path)}
        hw = tuple(sample["image"].shape[-2:])
        for task in self.tasks:
            p = self._files[task][key]
            if task == "depth_zbuffer":
                sample[task], sample[task + "_mask"] = load_depth(p)
            elif task == "normal":
                sample[task], sample[task + "_mask"] = load_normal(p)
            elif task == "segment_semantic":
                sample[task] = load_segmentation(p)
            else:
                sample[task] = load_unit16(p)
            if tuple(sample[task].shape[-2:]) != hw:
                raise ValueError(f"taskonomy: {p} is {tuple(sample[task].shape[-2:])} pixels but "
                                 f"its rgb {path} is {hw}; expected equal sizes")
        if self.resize:
            sample = authors_resize(authors_resize(sample, AUTHORS_BASE, image_mode="nearest"),
                                    self.resize)
        elif self.size:
            sample = resize_sample(sample, self.size)
        if self.class_weights is not None:
            sample["segment_semantic_mask"] = weight_mask(sample["segment_semantic"],
                                                          self.class_weights)
        return sample
