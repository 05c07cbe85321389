"""Checkpoints kept at early-stopping epochs: `epoch_{e:03d}.pt` (state_dict) + `.json` (meta).

Both files are written to a temporary name in the same directory and renamed into place, so a
crash never leaves a half-written checkpoint; the JSON is written last and marks a checkpoint as
complete (`list_checkpoints` ignores a `.pt` without its `.json`). For a model with a
`config()` (the built-in network) the metadata carries `model = model.config()`, which is
enough for `mtl.models.build_model(**meta["model"])`; any other model is saved with its own
state_dict keys (a `TaskModel` wrapper is unwrapped) and loaded back with `model=`.
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

from mtl.models.task_model import unwrap

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
    model = unwrap(model)
    if "model" not in full and callable(getattr(model, "config", None)):
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


def _check_state(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Any],
                 where: Any) -> None:
    """One ValueError naming the first missing / unexpected keys and the first shape mismatch
    between a model's parameter shapes (`expected`) and a checkpoint's tensors (`state`)."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatch = next((f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(shape)}"
                     for k, shape in expected.items()
                     if k in state and tuple(state[k].shape) != tuple(shape)), None)
    if missing or unexpected or mismatch:
        parts = [f"{len(missing)} missing key(s) {missing[:3]}" if missing else "",
                 f"{len(unexpected)} unexpected key(s) {unexpected[:3]}" if unexpected else "",
                 f"first shape mismatch {mismatch}" if mismatch else ""]
        raise ValueError(f"checkpoint: {where} does not fit the model: "
                         + "; ".join(p for p in parts if p))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _build_builtin(config: Any, state: Mapping[str, Any], where: Path) -> nn.Module:
    """The built-in network of `config`, allocated only once its shapes match `state`."""
    from mtl.models import build_model  # late: keeps this module importable without networks

    hint = "pass model=... built by your factory"
    if not isinstance(config, Mapping):
        raise ValueError(f"checkpoint: {where} has no 'model' entry (the model was not the "
                         f"built-in network); {hint}")
    stem = next((v for k, v in state.items() if k.startswith("backbone.b0_")
                 and k.endswith(".0.weight")), None)
    width, depth = config.get("width"), config.get("stage_depth", 1)
    if stem is None or stem.shape[0] != width or not isinstance(depth, int) \
            or not 0 < depth <= len(state):
        raise ValueError(f"checkpoint: {where} model entry (width={width!r}, stage_depth="
                         f"{depth!r}) does not match its weights (stem conv "
                         f"{None if stem is None else tuple(stem.shape)}); {hint}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            skeleton = build_model(**config)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint: {where} model entry is not a built-in network config "
                         f"({err}); {hint}") from None
    _check_state(_shapes(skeleton), state, where)
    return build_model(**config)


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module | None = None,
                    device: torch.device | str | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint (eval mode) and its meta.

    With `model` (any module, e.g. built by your factory, or its `TaskModel`) the weights are
    loaded into it (kept on its device unless `device` is given); a key or shape difference is
    one ValueError naming the first few. Without it, the built-in network is rebuilt from the
    sidecar's `model` entry on `device` (default CPU), after checking the weights' shapes.
    """
    pt, js = _resolve(path)
    meta = json.loads(js.read_text())
    state = torch.load(pt, map_location="cpu", weights_only=True)
    if model is None:
        model = _build_builtin(meta.get("model"), state, js)
        device = device or "cpu"
    else:
        _check_state(_shapes(unwrap(model)), state, pt)
    unwrap(model).load_state_dict(state)
    if device is not None:
        model.to(device)
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
