"""A model store keyed by the hash of a model's full training config, and `ensure_models`.

Layout: ``<store_dir>/<hash>/`` holds the kept checkpoints (``epoch_XXX.pt`` + ``.json``, see
mtl.train.checkpoints), ``config.json`` and a ``COMPLETE`` manifest. An entry is built in a
``<hash>.partial-*`` directory and renamed into place with COMPLETE already inside, so a reader
sees either nothing or a complete model. ``<store_dir>/<hash>.lock`` is an exclusive ``fcntl``
lock: of two processes that need the same model only one trains it, the other waits and
reuses it. Locks need a local or shared POSIX filesystem (NFS with lockd, Lustre, ...); object
stores cannot host the store.

COMPLETE is JSON written last (atomically): ``{"format": 1, "key": <hash>, "files": {name:
{"size", "sha256"}}}`` for every other file of the entry. An entry is trusted only while it
verifies: the sizes on every check, the sha256 of each file once per process (cached by path,
mtime and size), no file missing and none unlisted. An entry that does not verify (truncated,
corrupt, a file planted or removed) is reported in one warning line naming the entry and the
file, and is rebuilt: `ensure_models` retrains it under the lock, `publish_model` replaces it.
Entries written before the manifest (COMPLETE holding only the hash) carry no checksums and
are treated the same way: reported once and rebuilt, never trusted unverified.

A model config is `mtl.config.run.RunConfig.model_key()`: the JSON-able dict ``{"dataset",
"tasks", "model", "train"}`` of everything that decides the trained weights. Each checkpoint
sidecar of an entry records that ``dataset`` as its ``data`` (mtl.train.checkpoints).
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from mtl.config.build import build_model, build_split
from mtl.train.checkpoints import load_checkpoint, read_meta, update_meta
from mtl.train.config import TrainConfig
from mtl.train.trainer import train

COMPLETE = "COMPLETE"
CONFIG = "config.json"
HISTORY = "history.json"  # per-epoch records of the run (the epochs table)
MANIFEST_FORMAT = 1
MAX_MANIFEST_BYTES = 2**20
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_LOG = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()  # (entry, problem) already reported by this process


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of ``config`` (sorted keys, no spaces), 16 hex chars."""
    try:
        text = json.dumps(config, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"config: must be JSON-able (finite numbers, str keys): {err}") from None
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def entry_dir(store_dir: str | os.PathLike, key: str) -> Path:
    return Path(store_dir) / key


@functools.lru_cache(maxsize=4096)
def _digest(path: str, mtime_ns: int, size: int) -> str:
    """sha256 of the file at ``path``; cached per (path, mtime, size): once per process."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    st = path.stat()
    return _digest(str(path), st.st_mtime_ns, st.st_size)


def _manifest(directory: Path, key: str) -> dict[str, Any]:
    """The COMPLETE manifest of ``directory``: size and sha256 of every file but COMPLETE."""
    files = {}
    for item in sorted(directory.iterdir()):
        if item.name != COMPLETE:
            files[item.name] = {"size": item.stat().st_size, "sha256": _file_digest(item)}
    return {"format": MANIFEST_FORMAT, "key": key, "files": files}


def _read_manifest(path: Path) -> tuple[dict[str, dict] | None, str | None]:
    """(name -> {size, sha256}, None), or (None, why COMPLETE is not a usable manifest)."""
    marker = path / COMPLETE
    if marker.stat().st_size > MAX_MANIFEST_BYTES:
        return None, f"{COMPLETE} is larger than {MAX_MANIFEST_BYTES} bytes"
    try:
        manifest = json.loads(marker.read_bytes())
    except (ValueError, RecursionError):
        manifest = None
    if not isinstance(manifest, dict) or "files" not in manifest:
        return None, (f"{COMPLETE} holds no checksums (written by an older mtlsweep, or "
                      "damaged)")
    files = manifest["files"]
    if manifest.get("format") != MANIFEST_FORMAT or manifest.get("key") != path.name \
            or not isinstance(files, dict):
        return None, (f"{COMPLETE} is not a format-{MANIFEST_FORMAT} manifest of entry "
                      f"{path.name!r}")
    bad = next((name for name, record in files.items() if not _valid_record(name, record)),
               None)
    if bad is not None:
        return None, f"{COMPLETE} has a malformed record for {bad[:60]!r}"
    return files, None


def _valid_record(name: str, record: Any) -> bool:
    """A manifest record: a plain file name -> {"size": int >= 0, "sha256": 64 hex}."""
    size = record.get("size") if isinstance(record, dict) else None
    return (name not in ("", ".", "..", COMPLETE) and "/" not in name and "\0" not in name
            and isinstance(size, int) and not isinstance(size, bool) and size >= 0
            and isinstance(record.get("sha256"), str) and bool(_SHA256.match(record["sha256"])))


def entry_problem(path: str | os.PathLike) -> str | None:
    """Why the store entry at ``path`` (which has a COMPLETE) cannot be trusted, naming the
    file; None when every file matches its size and sha256 and no other file is present."""
    path = Path(path)
    files, problem = _read_manifest(path)
    if files is None:
        return problem
    present = {p.name for p in path.iterdir()} - {COMPLETE}
    extra = sorted(present - set(files))
    if extra:
        return f"holds {extra[0][:60]!r}, which {COMPLETE} does not list"
    for name, record in sorted(files.items()):
        item = path / name
        try:
            st = item.lstat()
        except FileNotFoundError:
            return f"{name!r} is missing"
        if not stat.S_ISREG(st.st_mode):
            return f"{name!r} is not a regular file"
        if st.st_size != record["size"]:
            return (f"{name!r} is {st.st_size} bytes, {COMPLETE} records {record['size']} "
                    "(truncated or replaced)")
        if _digest(str(item), st.st_mtime_ns, st.st_size) != record["sha256"]:
            return f"{name!r} does not match its sha256 in {COMPLETE} (corrupt)"
    return None


def _warn(path: Path, problem: str) -> None:
    """One warning line per (entry, problem) and process."""
    if (str(path), problem) not in _warned:
        _warned.add((str(path), problem))
        _LOG.warning("model store entry %s: %s; it is not trusted and will be rebuilt",
                     path, problem)


def is_complete(path: str | os.PathLike) -> bool:
    """True when the entry at ``path`` is complete and verifies against its manifest; a
    corrupt or unverifiable entry is reported (one warning line) and is not complete."""
    path = Path(path)
    if not (path / COMPLETE).is_file():
        return False
    try:
        problem = entry_problem(path)
    except (FileNotFoundError, NotADirectoryError):  # removed meanwhile: being rebuilt
        return False
    if problem is not None:
        _warn(path, problem)
    return problem is None


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
    if final.exists():  # not complete or not verified (see is_complete): replaced
        shutil.rmtree(final)
    partial = store_dir / f"{key}.partial-{uuid.uuid4().hex[:8]}"
    partial.mkdir(parents=True)
    try:
        fill(partial)
        _record_data(partial, config)
        (partial / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
        manifest = json.dumps(_manifest(partial, key), indent=1, sort_keys=True)
        tmp = partial / f".{COMPLETE}.tmp"
        tmp.write_text(manifest)
        os.replace(tmp, partial / COMPLETE)  # last: the entry is complete only with it
        os.replace(partial, final)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return final


def _record_data(directory: Path, config: Mapping[str, Any]) -> None:
    """Write ``config["dataset"]`` as ``data`` into every checkpoint sidecar in ``directory``
    that records none (the entry's key decides the data, so this is the checkpoint's data)."""
    data = config.get("dataset")
    if not isinstance(data, Mapping):
        return
    for sidecar in sorted(directory.glob("epoch_*.json")):
        if sidecar.with_suffix(".pt").is_file() and read_meta(sidecar).get("data") is None:
            update_meta(sidecar, {"data": dict(data)})


def train_model(config: Mapping[str, Any], out_dir: str | os.PathLike, *,
                device: torch.device | str | None = None, progress: bool = False) -> dict:
    """Train the model ``config`` describes, keeping its checkpoints in ``out_dir``.
    Returns the TrainResult's history."""
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
    weights-only torch.load. An entry that does not verify (see `is_complete`) is a
    ValueError naming it and the file."""
    problem = (entry_problem(entry) if (Path(entry) / COMPLETE).is_file()
               else f"has no {COMPLETE} (not a finished entry)")
    if problem is not None:
        raise ValueError(f"model store entry {entry}: {problem}; ensure_models rebuilds it")
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
