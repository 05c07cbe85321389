"""NYUv2 in the common preprocessed `.npy` layout (MTAN / LibMTL): seg (13 classes), depth, normals.

Layout: `{root}/{split}/{image,label,depth,normal}/{i}.npy`, i = 0..N-1 (sorted numerically).
- image: HxWx3 (or 3xHxW) float in [0, 1] (uint8 in [0, 255] is accepted too).
- label: HxW float/int class ids 0..12, -1 = unlabelled -> 255 (ignore).
- depth: HxW / HxWx1 metres; 0 (or non-finite) = invalid -> `depth_zbuffer_mask` False.
- normal: HxWx3 (or 3xHxW) in [-1, 1]; all-zero = invalid -> `normal_mask` False; valid ones are
  renormalised to unit length. Axes are passed through as stored (no frame conversion).
The preprocessed release has only `train` and `val`; its `val` is the official 654-image test
set, so `split="test"` reads `{root}/test` if present, else `{root}/val`.
Structural problems (missing folders, non-integer names, mismatched indices) raise at
construction; each array is validated when it is loaded, and sample 0 is loaded up front.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

TASKS = ("segment_semantic", "depth_zbuffer", "normal")
MODALITY = {"segment_semantic": "label", "depth_zbuffer": "depth", "normal": "normal"}
NUM_CLASSES = 13
SPLITS = ("train", "val", "test")
IGNORE = 255
LAYOUT = "{root}/{train,val}/{image,label,depth,normal}/<i>.npy"


def parse_tasks(tasks: Sequence[str] | None, allowed: Sequence[str],
                dataset: str) -> tuple[str, ...]:
    """Validated task tuple in the dataset's canonical order (None = all of `allowed`)."""
    if tasks is None:
        return tuple(allowed)
    if isinstance(tasks, str):
        tasks = [tasks]
    tasks = list(tasks)
    bad = [t for t in tasks if t not in allowed]
    if bad or not tasks or len(set(tasks)) != len(tasks):
        raise ValueError(f"{dataset} tasks: got {tasks}; allowed: a non-empty, duplicate-free "
                         f"subset of {list(allowed)}")
    return tuple(t for t in allowed if t in tasks)


def parse_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """None, an int (square) or (h, w) of positive ints."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                 for v in pair):
        raise ValueError(f"size: expected None, a positive int or (height, width) of positive "
                         f"ints, got {size!r}")
    return (int(pair[0]), int(pair[1]))


def _bilinear(x: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(x[None], size=size, mode="bilinear", align_corners=False,
                         antialias=True)[0]


def _nearest(x: Tensor, size: tuple[int, int]) -> Tensor:
    shape = x.shape
    y = x.reshape(1, -1, *shape[-2:]).float()
    y = F.interpolate(y, size=size, mode="nearest-exact")[0]
    return y.reshape(*shape[:-2], *size).to(x.dtype)


def resize_sample(sample: dict[str, Tensor], size: tuple[int, int]) -> dict[str, Tensor]:
    """Resize an unbatched sample to `size` = (h, w).

    Image: antialiased bilinear. Class labels and masks: nearest. Continuous labels with a mask
    (depth, normals): bilinear over *valid* pixels only (normalised convolution), so invalid
    zeros never bleed into valid depths; normals are renormalised afterwards.
    """
    if tuple(sample["image"].shape[-2:]) == tuple(size):
        return sample
    out: dict[str, Tensor] = {}
    for key, value in sample.items():
        if key.endswith("_mask"):
            continue
        if key == "image":
            out[key] = _bilinear(value, size).clamp(0.0, 1.0)
        elif value.dtype in (torch.int64, torch.uint8, torch.int32, torch.bool):
            out[key] = _nearest(value, size)
        elif key + "_mask" in sample:
            mask = sample[key + "_mask"].reshape(1, *value.shape[-2:]).float()
            weight = _bilinear(mask, size)
            summed = _bilinear(value * mask, size)
            new_mask = (_nearest(mask, size) > 0.5) & (weight > 1e-6)
            resized = torch.where(new_mask, summed / weight.clamp_min(1e-6),
                                  torch.zeros_like(summed))
            if key == "normal":
                norm = resized.norm(dim=0, keepdim=True)
                new_mask &= norm > 1e-6
                resized = torch.where(new_mask, resized / norm.clamp_min(1e-6),
                                      torch.zeros_like(resized))
            out[key] = resized
            out[key + "_mask"] = new_mask.reshape(sample[key + "_mask"].shape[:-2] + size)
        else:
            out[key] = _bilinear(value, size)
    for key, value in sample.items():  # masks of labels resized without one (e.g. class ids)
        if key.endswith("_mask") and key not in out:
            out[key] = _nearest(value, size)
    return out


def authors_resize(sample: dict[str, Tensor], size: tuple[int, int],
                   image_mode: str = "bilinear") -> dict[str, Tensor]:
    """Resize an unbatched sample to ``size`` = (h, w) as the DGBA / TreeMTL loaders do at
    test time (``__scale__val__``: a resize, not a crop): the image bilinear like cv2's
    INTER_LINEAR (half-pixel centres, no antialiasing; ``image_mode="nearest"`` for their
    Taskonomy pre-step), every label and mask nearest like cv2's INTER_NEAREST (source pixel
    floor(i * in / out), no blending of depths, normals or validity)."""
    out: dict[str, Tensor] = {}
    for key, value in sample.items():
        if tuple(value.shape[-2:]) == tuple(size):
            out[key] = value
        elif key == "image" and image_mode == "bilinear":
            out[key] = F.interpolate(value[None], size=size, mode="bilinear",
                                     align_corners=False)[0].clamp(0.0, 1.0)
        else:
            shape = value.shape
            flat = value.reshape(1, -1, *shape[-2:]).float()
            out[key] = F.interpolate(flat, size=size, mode="nearest")[0].reshape(
                *shape[:-2], *size).to(value.dtype)
    return out


def pick_resize(size: int | Sequence[int] | None, resize: int | Sequence[int] | None,
                dataset: str) -> tuple[tuple[int, int] | None, tuple[int, int] | None]:
    """(size, resize) parsed; at most one of them (two resize rules cannot both apply)."""
    parsed_size = parse_size(size)
    try:
        parsed_resize = parse_size(resize)
    except ValueError as err:
        raise ValueError(f"{dataset} resize: {str(err).removeprefix('size: ')}") from None
    if parsed_size is not None and parsed_resize is not None:
        raise ValueError(f"{dataset} resize: give either size (antialiased, mask-aware resize) "
                         "or resize (the DGBA authors' bilinear / nearest resize), not both")
    return parsed_size, parsed_resize


def _index(folder: Path) -> dict[int, Path]:
    files: dict[int, Path] = {}
    for path in folder.iterdir():
        if path.suffix != ".npy":
            continue
        if not path.stem.isdigit():
            raise ValueError(f"nyuv2: unexpected file {path}; expected files named <i>.npy with "
                             f"an integer i (layout {LAYOUT})")
        files[int(path.stem)] = path
    return files


def _load(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValueError(f"nyuv2: cannot read {path} as a numeric .npy array: {err}") from None


def _bad(path: Path, arr: np.ndarray, expected: str) -> ValueError:
    return ValueError(f"nyuv2: {path} has shape {arr.shape} dtype {arr.dtype}; expected {expected}")


def _hw(arr: np.ndarray, path: Path, expected: str, channels: int) -> np.ndarray:
    """Bring an HxWxC / CxHxW / HxW (channels == 1) array to HxWxC."""
    if channels == 1 and arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3 and arr.shape[-1] == channels:
        return arr
    if arr.ndim == 3 and arr.shape[0] == channels:
        return np.moveaxis(arr, 0, -1)
    raise _bad(path, arr, expected)


def load_image(path: Path) -> Tensor:
    """[3,H,W] float32 in [0,1] from an HWC/CHW float [0,1] or uint8 array."""
    expected = "HxWx3 or 3xHxW, float in [0,1] or uint8"
    arr = _hw(_load(path), path, expected, 3)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or arr.min() < -1e-3 or arr.max() > 1 + 1e-3:
            raise _bad(path, arr, expected + " (values outside [0,1] or non-finite)")
    else:
        raise _bad(path, arr, expected)
    return torch.from_numpy(np.ascontiguousarray(np.clip(arr, 0, 1).transpose(2, 0, 1),
                                                 dtype=np.float32))


def load_label(path: Path) -> Tensor:
    """[H,W] int64 class ids 0..12 with -1 (or 255) mapped to 255."""
    expected = f"HxW (or HxWx1) integer-valued ids in 0..{NUM_CLASSES - 1}, -1 = unlabelled"
    arr = _load(path)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2 or arr.dtype.kind not in "fiu":
        raise _bad(path, arr, expected)
    if arr.dtype.kind == "f" and (not np.isfinite(arr).all() or (arr != np.round(arr)).any()):
        raise _bad(path, arr, expected + " (found non-integer values)")
    ids = arr.astype(np.int64)
    ids[(ids == -1) | (ids == IGNORE)] = IGNORE
    if ((ids < 0) | ((ids >= NUM_CLASSES) & (ids != IGNORE))).any():
        raise _bad(path, arr, expected + f" (found values {np.unique(ids).tolist()[:20]})")
    return torch.from_numpy(ids)


def load_depth(path: Path) -> tuple[Tensor, Tensor]:
    """([1,H,W] float32 metres, [1,H,W] bool valid); 0 / non-finite depth is invalid."""
    expected = "HxW or HxWx1 float depth in metres >= 0 (0 = invalid)"
    arr = _load(path)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    arr = _hw(arr, path, expected, 1)[..., 0]
    if arr.dtype.kind != "f":
        raise _bad(path, arr, expected)
    valid = np.isfinite(arr) & (arr > 0)
    if (arr[np.isfinite(arr)] < 0).any():
        raise _bad(path, arr, expected + " (found negative depths)")
    depth = np.where(valid, arr, 0).astype(np.float32)
    return torch.from_numpy(depth)[None], torch.from_numpy(valid)[None]


def load_normal(path: Path) -> tuple[Tensor, Tensor]:
    """([3,H,W] unit normals, [1,H,W] bool valid); all-zero / non-finite vectors are invalid."""
    expected = "HxWx3 or 3xHxW float normals in [-1,1] (all-zero = invalid)"
    arr = _hw(_load(path), path, expected, 3)
    if arr.dtype.kind != "f":
        raise _bad(path, arr, expected)
    finite = np.isfinite(arr).all(axis=-1)
    if (np.abs(arr[finite]) > 1 + 1e-3).any():
        raise _bad(path, arr, expected + " (values outside [-1,1])")
    vec = np.where(finite[..., None], arr, 0).astype(np.float64)
    norm = np.linalg.norm(vec, axis=-1, keepdims=True)
    valid = norm[..., 0] > 1e-6
    unit = np.where(valid[..., None], vec / np.maximum(norm, 1e-12), 0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(unit.transpose(2, 0, 1))), \
        torch.from_numpy(valid)[None]


class NYUv2(Dataset):
    """Preprocessed NYUv2 yielding the batch contract. ``size=(h, w)`` resizes every sample
    (antialiased, mask-aware: `resize_sample`); ``resize=(h, w)`` instead resizes as the DGBA
    authors do (`authors_resize`; 321 x 321 in their NYUv2 experiments)."""

    name = "nyuv2"

    def __init__(self, root: str | Path, split: str = "train", tasks: Sequence[str] | None = None,
                 size: int | Sequence[int] | None = None,
                 resize: int | Sequence[int] | None = None) -> None:
        if split not in SPLITS:
            raise ValueError(f"nyuv2 split: got {split!r}; allowed: {list(SPLITS)}")
        self.tasks = parse_tasks(tasks, TASKS, "nyuv2")
        self.size, self.resize = pick_resize(size, resize, "nyuv2")
        self.split = split
        self.task_channels = {t: {"segment_semantic": NUM_CLASSES, "depth_zbuffer": 1,
                                  "normal": 3}[t] for t in self.tasks}
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"nyuv2 root: {root} is not a directory (layout {LAYOUT})")
        split_dir = root / split
        if split == "test" and not split_dir.is_dir():
            split_dir = root / "val"
        if not split_dir.is_dir():
            raise FileNotFoundError(f"nyuv2: split folder {split_dir} not found (layout {LAYOUT})")
        self.root = split_dir
        modalities = ["image"] + [MODALITY[t] for t in self.tasks]
        files: dict[str, dict[int, Path]] = {}
        for mod in modalities:
            folder = split_dir / mod
            if not folder.is_dir():
                raise FileNotFoundError(f"nyuv2: modality folder {folder} not found; needed for "
                                        f"tasks {list(self.tasks)} (layout {LAYOUT})")
            files[mod] = _index(folder)
        ref = files["image"]
        if not ref:
            raise ValueError(f"nyuv2: no <i>.npy files in {split_dir / 'image'} (layout {LAYOUT})")
        for mod in modalities[1:]:
            if set(files[mod]) != set(ref):
                missing = sorted(set(ref) - set(files[mod]))[:5]
                extra = sorted(set(files[mod]) - set(ref))[:5]
                raise ValueError(f"nyuv2: {split_dir / mod} has {len(files[mod])} files but "
                                 f"{split_dir / 'image'} has {len(ref)}; every modality needs the "
                                 f"same indices (missing {missing}, extra {extra})")
        self._indices = sorted(ref)
        self._files = files
        self[0]  # validate the first file of every modality now, not mid-training

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"nyuv2: index {i} out of range for {len(self)} samples")
        idx = self._indices[i]
        path = self._files["image"][idx]
        sample = {"image": load_image(path)}
        hw = tuple(sample["image"].shape[-2:])
        if "segment_semantic" in self.tasks:
            sample["segment_semantic"] = load_label(self._files["label"][idx])
        if "depth_zbuffer" in self.tasks:
            sample["depth_zbuffer"], sample["depth_zbuffer_mask"] = \
                load_depth(self._files["depth"][idx])
        if "normal" in self.tasks:
            sample["normal"], sample["normal_mask"] = load_normal(self._files["normal"][idx])
        for key in sample:
            if tuple(sample[key].shape[-2:]) != hw:
                mod = MODALITY.get(key.removesuffix("_mask"), key)
                got = tuple(sample[key].shape[-2:])
                raise ValueError(f"nyuv2: {self._files[mod][idx]} is {got} pixels but its image "
                                 f"{path} is {hw}; expected equal sizes")
        if self.resize:
            return authors_resize(sample, self.resize)
        return resize_sample(sample, self.size) if self.size else sample
