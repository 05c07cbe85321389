"""The sweep's own record: what mtlsweep writes, and the only thing `run`/`resume` read back.

Layout (``<storage>/<sweep>/``, a local directory or any URI pyarrow understands)::

    sweep.json                 the validated spec as JSON + its hash (the sweep's identity)
    trials/<trial_id>/trial.json   the trial's axis values and run config (written at start)
    trials/<trial_id>/status.json  finished | failed (with the reason) | pruned (by ASHA)
    trials/<trial_id>/state/       the last finished epoch (orchestrator/trial_state.py)
    results/<table>/<trial_id>.parquet   the rows (orchestrator/results.py)

Everything here is JSON or parquet; checkpoints are loaded with ``weights_only=True``. Nothing
in the directory is ever unpickled or imported: a copied sweep directory is data, not code.
Ray Tune is the scheduler only; its own files live in a temporary directory and are never read.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow.fs as pafs

from orchestrator.fs import filesystem

SPEC_FILE = "sweep.json"
SPEC_FORMAT = 3
TRIALS_DIR = "trials"
STATUSES = ("finished", "failed", "pruned")
_MAX_JSON = 16 * 1024 * 1024   # a record file larger than this is not ours


class RecordError(ValueError):
    """A sweep directory whose record is missing, foreign or damaged (the message names it)."""


def spec_hash(raw: Mapping[str, Any]) -> str:
    """sha256 of the spec's canonical JSON: what decides the sweep's trials and rows (its
    name and storage are where it lives, not what it is)."""
    body = {k: v for k, v in raw.items() if k not in ("name", "storage")}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def spec_differences(old: Mapping[str, Any], new: Mapping[str, Any], limit: int = 6
                     ) -> list[str]:
    """``path: old -> new`` for the leaves that differ (at most ``limit``, then ``...``)."""
    a, b = _leaves(old), _leaves(new)
    out = []
    for path in sorted(set(a) | set(b)):
        if path.split(".")[0] in ("name", "storage") or a.get(path, _MISSING) == \
                b.get(path, _MISSING):
            continue
        out.append(f"{path}: {_short(a.get(path, _MISSING))} -> {_short(b.get(path, _MISSING))}")
    return out[:limit] + (["..."] if len(out) > limit else [])


_MISSING = object()


def _leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> leaf value of a nested mapping (lists are leaves)."""
    if not isinstance(value, Mapping):
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_leaves(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _short(value: Any) -> str:
    if value is _MISSING:
        return "(absent)"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


# --- files through pyarrow's filesystems ---------------------------------------------------------
def _join(*parts: str) -> str:
    return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))


def write_json(path: str, data: Any) -> None:
    """Write ``data`` as JSON to ``path`` (a local path or URI) atomically: a temp name in
    the same directory, then a rename over the final name."""
    fs, inner = filesystem(path)
    fs.create_dir(inner.rsplit("/", 1)[0], recursive=True)
    tmp = f"{inner}.tmp-{os.getpid()}"
    try:
        with fs.open_output_stream(tmp) as out:
            out.write(json.dumps(data, indent=1, sort_keys=True, allow_nan=False).encode())
        fs.move(tmp, inner)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)


def read_json(path: str) -> Any:
    """The JSON at ``path``; None when there is no such file; RecordError when it is not
    JSON (or absurdly large for a record file)."""
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.NotFound:
        return None
    if info.type != pafs.FileType.File or (info.size or 0) > _MAX_JSON:
        raise RecordError(f"{path}: not a record file (a directory or over 16 MiB)")
    with fs.open_input_stream(inner) as src:
        text = src.read()
    try:
        return json.loads(text.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordError(f"{path}: not valid JSON ({err})") from None


def exists(path: str) -> bool:
    fs, inner = filesystem(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def delete_dir(path: str) -> None:
    """Remove a directory tree (nothing when it does not exist)."""
    fs, inner = filesystem(path)
    if fs.get_file_info(inner).type == pafs.FileType.Directory:
        fs.delete_dir(inner)


# --- the spec -----------------------------------------------------------------------------------
def spec_record(name: str, raw: Mapping[str, Any], import_paths: tuple[str, ...]) -> dict:
    return {"format": SPEC_FORMAT, "name": name, "spec_hash": spec_hash(raw),
            "import_paths": list(import_paths), "sweep": dict(raw)}


def save_spec_record(exp_dir: str, record: Mapping[str, Any]) -> None:
    write_json(_join(exp_dir, SPEC_FILE), record)


def load_spec_record(exp_dir: str) -> dict | None:
    """The checked ``sweep.json`` of ``exp_dir`` (None when absent). Its name must be the
    directory's own name and its hash must match its spec: a record edited or copied under
    another name is refused, never followed (a name like ``../../x`` would write elsewhere)."""
    path = _join(exp_dir, SPEC_FILE)
    data = read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("format") != SPEC_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise RecordError(f"{path}: not a sweep record of format {SPEC_FORMAT} (found "
                          f"{got!r}); it was written by another mtlsweep version or not by "
                          "mtlsweep")
    sweep, name = data.get("sweep"), data.get("name")
    base = exp_dir.rstrip("/").rsplit("/", 1)[-1]
    if not isinstance(sweep, dict) or name != base:
        raise RecordError(f"{path}: its name {name!r} is not the directory's name {base!r} "
                          "(or its 'sweep' is not a mapping); a renamed or edited record is "
                          "not trusted")
    if data.get("spec_hash") != spec_hash(sweep):
        raise RecordError(f"{path}: spec_hash does not match its spec (edited by hand?)")
    paths = data.get("import_paths", [])
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise RecordError(f"{path}: import_paths must be a list of strings")
    return data


# --- trials -------------------------------------------------------------------------------------
def trial_dir(exp_dir: str, trial_id: str) -> str:
    return _join(exp_dir, TRIALS_DIR, trial_id)


def write_trial_info(exp_dir: str, trial_id: str, info: Mapping[str, Any]) -> None:
    """What the trial is (axis values, run config): written when it starts."""
    write_json(_join(trial_dir(exp_dir, trial_id), "trial.json"), dict(info))


def set_status(exp_dir: str, trial_id: str, status: str, reason: str = "",
               traceback: str = "") -> None:
    """The trial's outcome; a failure keeps its one-line reason and its traceback (what the
    console leaves out)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}; got {status!r}")
    write_json(_join(trial_dir(exp_dir, trial_id), "status.json"),
               {"status": status, "reason": reason[:2000], "traceback": traceback[-20000:]})


def statuses(exp_dir: str) -> dict[str, dict]:
    """trial_id -> its status record, for every trial with a readable status file (a
    damaged one counts as no status: the trial runs again)."""
    out = {}
    for trial_id in trial_ids(exp_dir):
        try:
            status = read_json(_join(trial_dir(exp_dir, trial_id), "status.json"))
        except RecordError:
            continue
        if isinstance(status, dict) and status.get("status") in STATUSES:
            out[trial_id] = status
    return out


def trial_ids(exp_dir: str) -> Iterator[str]:
    fs, root = filesystem(_join(exp_dir, TRIALS_DIR))
    for entry in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if entry.type == pafs.FileType.Directory:
            yield entry.base_name
