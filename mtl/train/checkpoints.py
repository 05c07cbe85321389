"""Checkpoints kept at early-stopping epochs: `epoch_{e:03d}.pt` (state_dict) + `.json` (meta).

Both files are written to a temporary name in the same directory and renamed into place, so a
crash never leaves a half-written checkpoint; the JSON is written last and marks a checkpoint as
complete (`list_checkpoints` ignores a `.pt` without its `.json`). The metadata carries
`model = model.config()`, which is enough for `mtl.models.build_model(**meta["model"])`.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

_NAME = re.compile(r"^epoch_(\d{3,})\.pt$")


def checkpoint_path(directory: str | os.PathLike, epoch: int) -> Path:
    """Path of the state_dict file for `epoch` (1-based) in `directory`."""
    return Path(directory) / f"epoch_{epoch:03d}.pt"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(model: nn.Module, directory: str | os.PathLike, epoch: int,
                    meta: Mapping[str, Any] | None = None) -> Path:
    """Write `model`'s weights and `meta` (+ `epoch`, `model` config) atomically; return the .pt.

    `meta` must be JSON-able (floats, strings, lists, dicts).
    """
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"epoch: must be an int >= 0, got {epoch!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    full = dict(meta or {})
    full["epoch"] = epoch
    if "model" not in full and hasattr(model, "config"):
        full["model"] = model.config()
    text = json.dumps(full, indent=2, sort_keys=True)  # fail before writing anything
    pt = checkpoint_path(directory, epoch)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    _atomic_write(pt, lambda fh: torch.save(state, fh))
    _atomic_write(pt.with_suffix(".json"), lambda fh: fh.write(text.encode()))
    return pt


def _resolve(path: str | os.PathLike) -> tuple[Path, Path]:
    p = Path(path)
    if p.suffix == ".json":
        p = p.with_suffix(".pt")
    elif p.suffix != ".pt":
        p = p.with_name(p.name + ".pt")
    for q in (p, p.with_suffix(".json")):
        if not q.is_file():
            raise FileNotFoundError(f"checkpoint: {q} does not exist (expected epoch_XXX.pt "
                                    "with its epoch_XXX.json beside it)")
    return p, p.with_suffix(".json")


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the checkpoint at `path` (.pt, .json or the stem)."""
    _, js = _resolve(path)
    return json.loads(js.read_text())


def load_checkpoint(path: str | os.PathLike, *, device: torch.device | str | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint (eval mode, on `device`, default CPU) and its meta."""
    from mtl.models import build_model  # late: keeps this module importable on its own

    pt, js = _resolve(path)
    meta = json.loads(js.read_text())
    if "model" not in meta:
        raise ValueError(f"checkpoint: {js} has no 'model' entry (the model config)")
    model = build_model(**meta["model"])
    state = torch.load(pt, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.to(device or "cpu")
    model.eval()
    return model, meta


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (.pt with its .json) in `directory`, ordered by epoch."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint_dir: {directory} is not a directory")
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.with_suffix(".json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def checkpoint_epoch(path: str | os.PathLike) -> int:
    """The epoch number encoded in a checkpoint file name."""
    m = _NAME.match(Path(path).with_suffix(".pt").name)
    if not m:
        raise ValueError(f"checkpoint: {path} is not named epoch_XXX.pt")
    return int(m.group(1))
