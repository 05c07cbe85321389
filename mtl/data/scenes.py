"""SyntheticScenes: the embedded multi-task dataset (procedural 3-D rooms), cached on disk.

Each sample is one scene drawn from a generator seeded by a hash of (split, index, seed)
(`mtl.data.scene_geometry`) and ray-cast into an image and six labels of the same geometry
(`mtl.data.render`). Since sample i does not depend on the length, the cache is keyed by
(split, size, seed, renderer and storage versions) only: `<cache_dir>/scenes/<...>-<hash>/`
holds chunks of samples as one record per sample (uint8 image and segmentation, float16
depth / normals / edges / keypoints, uint8 scene class), memory-mapped so many trial processes
share one copy through the page cache. A shorter length reads a prefix; a longer one renders
only the missing samples; a lock makes concurrent cold starts render once; every chunk is
written atomically and checksummed (`mtl.data.scene_cache`). Every task is stored whatever
`tasks` asks for, so task subsets share one render.
"""
from __future__ import annotations

import hashlib
import json
import operator
import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mtl.config.limits import MAX_SEED
from mtl.data import render as _render
from mtl.data import scene_geometry as geo
from mtl.data.scene_cache import ChunkStore

SPLITS = ("train", "val", "test")
DEFAULT_LENGTHS = {"train": 2000, "val": 500, "test": 500}
TASKS = ("segment_semantic", "depth_zbuffer", "normal", "edge_texture", "keypoints2d",
         "scene_class")
TASK_CHANNELS = {"segment_semantic": geo.NUM_SEG_CLASSES, "depth_zbuffer": 1, "normal": 3,
                 "edge_texture": 1, "keypoints2d": 1, "scene_class": geo.NUM_OBJECT_CLASSES}
SIZE_RANGE = (8, 1024)
STORAGE_VERSION = 3
# stored array -> dtype on disk (converted to the batch contract's dtypes in __getitem__)
_STORED = {"image": np.uint8, "segment_semantic": np.uint8, "depth_zbuffer": np.float16,
           "normal": np.float16, "edge_texture": np.float16, "keypoints2d": np.float16,
           "scene_class": np.uint8}
# Limits of one split. Its cache is rendered once (about 500 images/s at 16 px on one core)
# and memory-mapped by every trial: at most a million samples (about half an hour of
# rendering) and at most 16 GiB on disk, which keeps a split within a workstation's page
# cache (16 bytes per pixel: 1,023 samples at 1024 px, 262,140 at 64 px).
MAX_LENGTH = 1_000_000
MAX_CACHE_BYTES = 16 << 30
SEED_RANGE = (0, MAX_SEED)
# Bytes of one chunk file of the cache (at least one sample): 1,024 samples at 64 px.
CHUNK_BYTES = 64 << 20


def bytes_per_sample(size: int) -> int:
    """Bytes one sample of side ``size`` takes in the cache (image and every label)."""
    per = {"image": 3 * size * size, "normal": 3 * size * size, "scene_class": 1}
    return sum(np.dtype(dtype).itemsize * per.get(key, size * size)
               for key, dtype in _STORED.items())


def max_length(size: int) -> int:
    """The most samples one split of side ``size`` may have (`MAX_LENGTH`, `MAX_CACHE_BYTES`)."""
    return min(MAX_LENGTH, MAX_CACHE_BYTES // bytes_per_sample(size))


def samples_per_chunk(size: int) -> int:
    """Samples in one full chunk file of the cache at side ``size`` (`CHUNK_BYTES`)."""
    return max(1, CHUNK_BYTES // bytes_per_sample(size))


def record_dtype(size: int) -> np.dtype:
    """One cached sample of side ``size`` as a structured record (no padding, no objects)."""
    shapes = {"image": (3, size, size), "normal": (3, size, size), "scene_class": ()}
    return np.dtype([(k, dtype, shapes.get(k, (size, size))) for k, dtype in _STORED.items()])


_PROGRESS_AFTER_S = 2.0


def default_cache_dir() -> Path:
    """`$MTLSWEEP_CACHE`, else `~/.cache/mtlsweep`."""
    env = os.environ.get("MTLSWEEP_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mtlsweep"


def render_samples(split: str, indices: Sequence[int] | np.ndarray, seed: int = 0, size: int = 64,
                   *, debug: bool = False) -> dict:
    """Render samples `indices` of `split` without any cache (renderer output dtypes).

    Sample i is identical whatever other indices are rendered with it. `debug=True` adds the
    renderer's ground-truth extras (object ids per pixel, visible pixel counts, ...) and
    "params", the `SceneParams` (camera pose, objects) the samples were rendered from.
    """
    params = scene_params(split, indices, seed)
    out = _render.render(params, size, debug=debug)
    if debug:
        out["params"] = params
    return out


def scene_params(split: str, indices: Sequence[int] | np.ndarray, seed: int = 0) -> geo.SceneParams:
    """The scene parameters of samples `indices` of `split` (for tests and inspection)."""
    _check_split(split)
    _check_int("seed", seed, *SEED_RANGE)
    idx = np.asarray(indices)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer) or (idx < 0).any():
        raise ValueError(f"indices: must be a 1-D sequence of ints >= 0, got {indices!r}")
    return geo.sample_scenes(geo.scene_keys(split, seed, idx.astype(np.int64)))


def _check_split(split: object) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; allowed: {list(SPLITS)}")


def _check_int(field: str, value: object, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{field}: must be an int, got {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{field}: must be {allowed}, got {value}")
    return int(value)


def _check_tasks(tasks: Iterable[str] | None) -> tuple[str, ...]:
    if tasks is None:
        return TASKS
    if isinstance(tasks, str) or not isinstance(tasks, Iterable):
        raise ValueError(f"tasks: must be a sequence of task names (allowed: {list(TASKS)}), "
                         f"got {tasks!r}")
    names = tuple(dict.fromkeys(tasks))
    unknown = [t for t in names if t not in TASKS]
    if unknown:
        raise ValueError(f"tasks: unknown task(s) {unknown}; allowed: {list(TASKS)}")
    if not names:
        raise ValueError(f"tasks: must name at least one task; allowed: {list(TASKS)}")
    return names


class SyntheticScenes(Dataset):
    """Procedural indoor scenes with six dense / image-level labels from the same geometry.

    Labels: segment_semantic (floor, wall, ceiling + 8 object classes = 11 classes; no 255
    since every ray hits the room), depth_zbuffer (metres along the optical axis), normal
    (camera frame, OpenCV axes, unit), edge_texture (Sobel magnitude of the un-shaded albedo),
    keypoints2d (Gaussian heat-map of visible object keypoints), scene_class (class of the
    object with the most visible pixels; 8 classes).
    """

    name = "scenes"

    def __init__(self, split: str = "train", size: int = 64, length: int | None = None,
                 seed: int = 0, tasks: Iterable[str] | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        _check_split(split)
        self.split = split
        self.size = _check_int("size", size, *SIZE_RANGE)
        self.length = (DEFAULT_LENGTHS[split] if length is None
                       else _check_int("length", length, 1, max_length(self.size)))
        self.seed = _check_int("seed", seed, *SEED_RANGE)
        self.tasks = _check_tasks(tasks)
        self.task_channels = {t: TASK_CHANNELS[t] for t in self.tasks}
        if cache_dir is not None and not isinstance(cache_dir, (str, os.PathLike)):
            raise ValueError(f"cache_dir: must be a path or None, got {cache_dir!r}")
        root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        if root.exists() and not root.is_dir():
            raise ValueError(f"cache_dir: {str(root)!r} exists and is not a directory")
        self._per_chunk = samples_per_chunk(self.size)
        self.cache_path = root / "scenes" / self._dir_name()
        store = ChunkStore(self.cache_path, record_dtype(self.size), self._per_chunk,
                           batch=max(1, _render.CHUNK_RAYS // (self.size * self.size)),
                           meta={"key": self.cache_key, **self._key_spec()})
        chunks = store.ensure(self.length, self._render_records, self._progress())
        self._chunks = [{k: c[k] for k in _STORED} for c in chunks]    # views of each field

    @property
    def cache_key(self) -> str:
        """Hash of everything a rendered sample depends on (16 hex characters); not the
        length, since sample i is the same in every length."""
        return hashlib.sha256(json.dumps(self._key_spec(), sort_keys=True).encode()
                              ).hexdigest()[:16]

    def _key_spec(self) -> dict:
        return {"dataset": self.name, "split": self.split, "size": self.size, "seed": self.seed,
                "renderer": _render.RENDERER_VERSION, "geometry": geo.GEOMETRY_VERSION,
                "storage": STORAGE_VERSION,
                "chunk": self._per_chunk}

    def _dir_name(self) -> str:
        return f"{self.split}-{self.size}px-seed{self.seed}-{self.cache_key}"

    def _render_records(self, lo: int, hi: int) -> np.ndarray:
        """Samples [lo, hi) rendered and converted to cache records."""
        out = _render.render(scene_params(self.split, np.arange(lo, hi), self.seed), self.size)
        with _render.one_thread():     # tiny tensors: intra-op threads only spin-wait
            stored = _to_storage(out)
        records = np.empty(hi - lo, dtype=record_dtype(self.size))
        for key, arr in stored.items():
            records[key] = arr
        return records

    def _progress(self) -> Callable[[int, int], None]:
        """A progress line on stderr once rendering takes longer than a moment."""
        state = {"start": time.perf_counter(), "last": 0.0, "shown": False}

        def report(done: int, total: int) -> None:
            now = time.perf_counter()
            if done == 0:                 # rendering starts (after any wait for the lock)
                state["start"] = now
            took = now - state["start"]
            if took > _PROGRESS_AFTER_S and (now - state["last"] > 0.5 or done == total):
                print(f"\rscenes[{self.split}, {self.size}px]: rendered {done}/{total} new "
                      f"samples ({done / took:.0f} images/s)", end="", file=sys.stderr,
                      flush=True)
                state.update(last=now, shown=True)
            if done == total and state["shown"]:
                print(file=sys.stderr, flush=True)

        return report

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        i = operator.index(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        c, i = divmod(i, self._per_chunk)
        a = self._chunks[c]
        out = {"image": torch.from_numpy(a["image"][i].astype(np.float32)).div_(255.0)}
        for task in self.tasks:
            v = a[task][i]
            if task == "segment_semantic":
                out[task] = torch.from_numpy(v.astype(np.int64))
            elif task == "scene_class":
                out[task] = torch.tensor(int(v), dtype=torch.long)
            elif task == "normal":
                n = v.astype(np.float32)
                n /= np.maximum(np.sqrt((n * n).sum(0, keepdims=True)), 1e-12)
                out[task] = torch.from_numpy(n)
            else:
                out[task] = torch.from_numpy(v.astype(np.float32))[None]
        return out

    def __repr__(self) -> str:
        return (f"SyntheticScenes(split={self.split!r}, size={self.size}, length={self.length}, "
                f"seed={self.seed}, tasks={list(self.tasks)})")


def _to_storage(out: dict[str, Tensor]) -> dict[str, np.ndarray]:
    """Renderer output -> the compact on-disk dtypes (image rounded half up to uint8)."""
    half = {k: out[k].half().numpy()
            for k in ("depth_zbuffer", "normal", "edge_texture", "keypoints2d")}
    return {"image": out["image"].mul(255.0).add_(0.5).to(torch.uint8).numpy(),
            "segment_semantic": out["segment_semantic"].to(torch.uint8).numpy(),
            "scene_class": out["scene_class"].to(torch.uint8).numpy(), **half}
