"""Checkpoints kept at early-stopping epochs: `epoch_{e:03d}.pt` (state_dict) + `.json` (meta).

Both files are written to a temporary name in the same directory and renamed into place, so a
crash never leaves a half-written checkpoint; the JSON is written last and marks a checkpoint as
complete (`list_checkpoints` ignores a `.pt` without its `.json`). For a model with a
`config()` (the built-in network) the metadata carries `model = model.config()`, which is
enough for `mtl.models.build_model(**meta["model"])`; any other model is saved with its own
state_dict keys (a `TaskModel` wrapper is unwrapped) and loaded back with `model=`.
A sidecar may also carry `data`, the dataset settings the weights were trained on, in the
sweep's dataset form ``{"source", "options", "tasks", "train", ...}`` (`data_settings`).

Reading trusts neither file: the weights are read with ``torch.load(weights_only=True)`` and
must be a mapping of names to tensors, the sidecar must be a JSON object, and the built-in
network is sized from the weights' shapes before anything is allocated. Every problem is one
`CheckpointError` (a ValueError) naming the file: truncated, not a torch file, not a state
dict, a sidecar that is not a JSON object, or weights that do not fit the model.
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
MAX_SIDECAR_BYTES = 16 * 2**20  # metadata is a few kB; a larger sidecar is not ours
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy torch.save format starts with a pickle protocol byte


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: truncated, foreign, or not fitting the model."""


def _short(value: Any, limit: int = 60) -> str:
    """`repr(value)` cut to `limit` characters, for one-line messages about foreign data."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


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


def _read_sidecar(js: Path) -> dict[str, Any]:
    """The sidecar's JSON object; a CheckpointError naming `js` for anything else."""
    size = js.stat().st_size
    if size > MAX_SIDECAR_BYTES:
        raise CheckpointError(f"checkpoint: {js} is {size} bytes; a sidecar holds at most "
                              f"{MAX_SIDECAR_BYTES} bytes of JSON")
    try:
        meta = json.loads(js.read_bytes())
    except (ValueError, RecursionError) as err:  # JSONDecodeError, UnicodeDecodeError
        raise CheckpointError(f"checkpoint: {js} is not valid JSON "
                              f"({str(err).splitlines()[0][:120]})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint: {js} must hold a JSON object (epoch, model, ...), "
                              f"got a JSON {type(meta).__name__}")
    epoch = meta.get("epoch")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int)
                              or epoch < 0):
        raise CheckpointError(f"checkpoint: {js} epoch: must be an int >= 0, got {epoch!r}")
    for key in ("model", "data"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise CheckpointError(f"checkpoint: {js} {key}: must be a JSON object, got a "
                                  f"JSON {type(meta[key]).__name__}")
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata of the checkpoint at `path` (.pt, .json or the stem): a JSON object whose
    `epoch`, `model` and `data` entries (when present) have the right types."""
    _, js = _resolve(path)
    return _read_sidecar(js)


def data_settings(meta: Mapping[str, Any], where: Any = "checkpoint") -> dict[str, Any] | None:
    """The checked `data` entry of a checkpoint's metadata (None when it records none):
    ``source`` a non-empty string, ``options`` a mapping (default {})."""
    data = meta.get("data")
    if data is None:
        return None
    if not isinstance(data, Mapping):
        raise CheckpointError(f"checkpoint: {where} data: must be a JSON object, got "
                              f"{_short(data)}")
    source, options = data.get("source"), data.get("options", {})
    if not isinstance(source, str) or not source:
        raise CheckpointError(f"checkpoint: {where} data.source: must be a dataset name, got "
                              f"{_short(source)}")
    if not isinstance(options, Mapping):
        raise CheckpointError(f"checkpoint: {where} data.options: must be a JSON object, got "
                              f"{_short(options)}")
    return {**data, "options": dict(options)}


def update_meta(path: str | os.PathLike, entries: Mapping[str, Any]) -> dict[str, Any]:
    """Add `entries` (JSON-able; not `epoch`) to the sidecar of the checkpoint at `path`,
    rewritten atomically; returns the new metadata. Used to record settings the trainer does
    not know, e.g. `{"data": ...}` from a training callback."""
    if "epoch" in entries:
        raise ValueError("entries: the epoch of a checkpoint is its file's, not an update")
    pt, js = _resolve(path)
    meta = {**_read_sidecar(js), **entries}
    text = json.dumps(meta, indent=2, sort_keys=True)  # fail before writing anything
    _atomic_write(js, lambda fh: fh.write(text.encode()))
    return meta


def _load_state(pt: Path) -> dict[str, torch.Tensor]:
    """The weights file as a {name: tensor} mapping, or one CheckpointError naming `pt`."""
    with open(pt, "rb") as fh:
        head = fh.read(4)
    if not head:
        raise CheckpointError(f"checkpoint: {pt} is empty (expected torch.save's state_dict)")
    if not head.startswith((_ZIP_MAGIC, _PICKLE_MAGIC)):
        raise CheckpointError(f"checkpoint: {pt} is not a torch file (it starts with "
                              f"{head!r}); expected torch.save's state_dict")
    try:
        state = torch.load(pt, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, KeyError, Unpickling...
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        raise CheckpointError(f"checkpoint: {pt} is truncated or corrupt and cannot be read "
                              f"with weights_only=True ({reason})") from None
    if not isinstance(state, Mapping):
        raise CheckpointError(f"checkpoint: {pt} holds a {type(state).__name__}, expected a "
                              "state_dict (a mapping of names to tensors)")
    bad = next(((k, v) for k, v in state.items()
                if not isinstance(k, str) or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise CheckpointError(f"checkpoint: {pt} is not a state_dict of tensors: entry "
                              f"{_short(bad[0])} is a {type(bad[1]).__name__}")
    if not state:
        raise CheckpointError(f"checkpoint: {pt} holds an empty state_dict (no tensors)")
    return dict(state)


def _check_state(expected: Mapping[str, tuple[int, ...]], state: Mapping[str, Any],
                 where: Any) -> None:
    """One CheckpointError naming the first missing / unexpected keys and first shape mismatch
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
        raise CheckpointError(f"checkpoint: {where} does not fit the model: "
                              + "; ".join(p for p in parts if p))


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _build_builtin(config: Any, state: Mapping[str, Any], where: Path) -> nn.Module:
    """The built-in network of `config`, allocated only once its shapes match `state`."""
    from mtl.models import build_model  # late: keeps this module importable without networks

    hint = "pass model=... built by your factory"
    if not isinstance(config, Mapping):
        raise CheckpointError(f"checkpoint: {where} has no 'model' entry (the model was not "
                              f"the built-in network); {hint}")
    stem = next((v for k, v in state.items() if k.startswith("backbone.b0_")
                 and k.endswith(".0.weight")), None)
    tasks = config.get("tasks")
    if isinstance(tasks, list) and len(tasks) > len(state):  # every task has a head's tensors
        raise CheckpointError(f"checkpoint: {where} model entry names {len(tasks)} tasks but "
                              f"its weights hold {len(state)} tensors; {hint}")
    width, depth = config.get("width"), config.get("stage_depth", 1)
    if stem is None or stem.shape[0] != width or not isinstance(depth, int) \
            or not 0 < depth <= len(state):
        raise CheckpointError(f"checkpoint: {where} model entry (width={_short(width)}, "
                              f"stage_depth={_short(depth)}) does not match its weights (stem "
                              f"conv {None if stem is None else tuple(stem.shape)}); {hint}")
    try:
        with torch.device("meta"):  # shapes only: nothing is allocated
            skeleton = build_model(**config)
    except Exception as err:  # any failure to build from a foreign config is the same verdict
        raise CheckpointError(f"checkpoint: {where} model entry is not a built-in network "
                              f"config ({str(err)[:120]}); {hint}") from None
    _check_state(_shapes(skeleton), state, where)
    return build_model(**config)


def load_checkpoint(path: str | os.PathLike, *, model: nn.Module | None = None,
                    device: torch.device | str | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint (eval mode) and its meta.

    With `model` (any module, e.g. built by your factory, or its `TaskModel`) the weights are
    loaded into it (kept on its device unless `device` is given); a key or shape difference is
    one CheckpointError naming the first few. Without it, the built-in network is rebuilt from
    the sidecar's `model` entry on `device` (default CPU), after checking the weights' shapes.
    A file that is truncated, foreign or not a state_dict is a CheckpointError naming it.
    """
    pt, js = _resolve(path)
    meta = _read_sidecar(js)
    state = _load_state(pt)
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
