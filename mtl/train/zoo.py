"""A model store keyed by the hash of a model's full training config, and `ensure_models`.

Layout: ``<store_dir>/<hash>/`` holds the kept checkpoints (``epoch_XXX.pt`` + ``.json``, see
mtl.train.checkpoints), ``config.json`` and a ``COMPLETE`` marker. An entry is built in a
``<hash>.partial-*`` directory and renamed into place with COMPLETE already inside, so a reader
sees either nothing or a complete model. ``<store_dir>/<hash>.lock`` is an exclusive ``fcntl``
lock: of two processes that need the same model only one trains it, the other waits and
reuses it. Locks need a local or shared POSIX filesystem (NFS with lockd, Lustre, ...); object
stores cannot host the store.

A model config is `mtl.config.run.RunConfig.model_key()`: the JSON-able dict ``{"dataset",
"tasks", "model", "train"}`` of everything that decides the trained weights.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mtl.config.build import build_model, build_split

COMPLETE = "COMPLETE"
CONFIG = "config.json"
HISTORY = "history.json"  # per-epoch records of the run (the epochs table)


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys, no spaces), 16 hex chars."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config: must be JSON-able (finite numbers, str keys): {err}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_dir(store_dir: str | os.PathLike, key: str) -> Path:
    return Path(store_dir) / key


def is_complete(path: str | os.PathLike) -> bool:
    return (Path(path) / COMPLETE).is_file()


def find_model(config: Mapping[str, Any], store_dir: str | os.PathLike) -> Path | None:
    """The store entry of ``config`` if a complete one exists, else None."""
    path = entry_dir(store_dir, config_hash(config))
    return path if is_complete(path) else None


@contextlib.contextmanager
def model_lock(store_dir: str | os.PathLike, key: str) -> Iterator[None]:
    """Hold the exclusive lock of store entry ``key`` (blocks while another process holds it)."""
    Path(store_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(store_dir) / f"{key}.lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _commit(config: Mapping[str, Any], store_dir: Path, key: str, fill) -> Path:
    """Build entry ``key`` with ``fill(partial_dir)`` and rename it into place (lock held)."""
    final = entry_dir(store_dir, key)
    if final.exists():  # an entry without COMPLETE: left by a crash in an older layout
        shutil.rmtree(final)
    partial = store_dir / f"{key}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        fill(partial)
        (partial / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        (partial / COMPLETE).write_text(key + "\n")
        os.replace(partial, final)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return final


def train_model(config: Mapping[str, Any], out_dir: str | os.PathLike, *,
                device: torch.device | str | None = None, progress: bool = False) -> dict:
    """Train the model ``config`` describes, keeping its checkpoints in ``out_dir``.
    Returns the TrainResult's history."""
    from mtl.train import TrainConfig, train
    train_cfg = TrainConfig.from_dict(dict(config["train"]))
    train_cfg.validate()
    dataset = build_split(config["dataset"], "train")
    model = build_model(config, dataset)
    if device is not None:
        model = model.to(device)
    result = train(model, dataset, train_cfg, checkpoint_dir=str(out_dir), progress=progress,
                   device=device)
    (Path(out_dir) / HISTORY).write_text(json.dumps(result.history))
    return {"history": result.history}


def ensure_models(configs: Sequence[Mapping[str, Any]], store_dir: str | os.PathLike, *,
                  device: torch.device | str | None = None, progress: bool = False
                  ) -> dict[str, Path]:
    """Train each config's model unless the store has it; returns hash -> entry directory.

    Safe to call from many processes at once: per hash, the first to take the lock trains,
    the others wait on the lock and then find the finished entry.
    """
    store = Path(store_dir)
    out: dict[str, Path] = {}
    for config in configs:
        key = config_hash(config)
        if key in out:
            continue
        path = entry_dir(store, key)
        if not is_complete(path):
            with model_lock(store, key):
                if not is_complete(path):  # nobody finished it while we waited
                    _commit(config, store, key,
                            lambda d: train_model(config, d, device=device, progress=progress))
        out[key] = path
    return out


def publish_model(config: Mapping[str, Any], checkpoint_dir: str | os.PathLike,
                  store_dir: str | os.PathLike) -> Path:
    """Copy checkpoints trained elsewhere (e.g. by a sweep trial) into the store under
    ``config``'s hash, unless an entry exists already. Returns the entry directory."""
    store, key = Path(store_dir), config_hash(config)
    path = entry_dir(store, key)
    with model_lock(store, key):
        if not is_complete(path):
            _commit(config, store, key, lambda d: _copy_checkpoints(checkpoint_dir, d))
    return path


def _copy_checkpoints(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    for item in sorted(Path(src).iterdir()):
        if (item.name.startswith("epoch_") and item.suffix in (".pt", ".json")) \
                or item.name == HISTORY:
            shutil.copy2(item, Path(dst) / item.name)


def checkpoint_paths(entry: str | os.PathLike) -> dict[int, Path]:
    """Epoch -> ``epoch_XXX.pt`` of a store entry (or any checkpoint directory)."""
    out = {}
    for path in sorted(Path(entry).glob("epoch_*.pt")):
        out[int(path.stem.split("_")[1])] = path
    return out


def load_model(entry: str | os.PathLike, config: Mapping[str, Any], dataset: Dataset,
               epoch: int | None = None, device: torch.device | str | None = None
               ) -> torch.nn.Module:
    """The model of a store entry at ``epoch`` (default: its last kept epoch) in eval mode:
    built from ``config`` (the caller's own, never the entry's JSON) and loaded with
    weights-only torch.load."""
    from mtl.train.checkpoints import load_checkpoint
    paths = checkpoint_paths(entry)
    if not paths:
        raise FileNotFoundError(f"model store entry {str(entry)!r} holds no checkpoints")
    if epoch is None:
        epoch = max(paths)
    if epoch not in paths:
        raise ValueError(f"epoch: {epoch} not kept in {str(entry)!r}; kept: {sorted(paths)}")
    model = build_model(config, dataset)
    load_checkpoint(str(paths[epoch]), model=model, device=device)
    return model.eval()
