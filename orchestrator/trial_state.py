"""A trial's last finished epoch, kept in the sweep record so a retried or resumed trial
continues from it: ``<storage>/<sweep>/trials/<trial_id>/state/``.

The state is a handful of files (the training state, the kept checkpoints and their JSON
sidecars) uploaded through pyarrow's filesystems, so it works on object stores too. Each file
is stored under its content hash (``<sha256[:20]>-<name>``), which makes uploads idempotent and
lets the kept checkpoints be uploaded once; ``manifest.json`` (name -> object, size, sha256),
written last and atomically, says which objects make up the state. A reader trusts only the
manifest and verifies every object's hash, so a state cut short by a kill, a full disk or a
hand edit is detected and ignored (the trial starts over) instead of loaded. Everything is
loaded with ``torch.load(weights_only=True)`` by its users; nothing here is unpickled.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pyarrow.fs as pafs

from orchestrator.record import RecordError, read_json, trial_dir, write_json
from orchestrator.fs import filesystem

MANIFEST = "manifest.json"
_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as src:
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dir(exp_dir: str, trial_id: str) -> str:
    return f"{trial_dir(exp_dir, trial_id)}/state"


def save_state(exp_dir: str, trial_id: str, local_dir: str | os.PathLike) -> None:
    """Make the files of ``local_dir`` the trial's saved state (replacing the previous one)."""
    fs, root = filesystem(state_dir(exp_dir, trial_id))
    fs.create_dir(root, recursive=True)
    present = {f.base_name for f in fs.get_file_info(pafs.FileSelector(root))
               if f.type == pafs.FileType.File}
    files = {}
    for item in sorted(Path(local_dir).iterdir()):
        if not item.is_file():
            continue
        digest = _sha256(item)
        obj = f"{digest[:20]}-{item.name}"
        if obj not in present:
            tmp = f"{root}/.{obj}.tmp-{os.getpid()}"
            with open(item, "rb") as src, fs.open_output_stream(tmp) as out:
                for chunk in iter(lambda: src.read(_CHUNK), b""):
                    out.write(chunk)
            fs.move(tmp, f"{root}/{obj}")
        files[item.name] = {"object": obj, "size": item.stat().st_size, "sha256": digest}
    write_json(f"{state_dir(exp_dir, trial_id)}/{MANIFEST}", {"files": files})
    keep = {entry["object"] for entry in files.values()} | {MANIFEST}
    for name in present - keep:  # the previous epoch's training state
        fs.delete_file(f"{root}/{name}")


def load_state(exp_dir: str, trial_id: str, local_dir: str | os.PathLike) -> bool:
    """Download the trial's saved state into ``local_dir``; False when there is none or it
    does not verify (a warning says which file), in which case ``local_dir`` is left empty."""
    where = state_dir(exp_dir, trial_id)
    try:
        manifest = read_json(f"{where}/{MANIFEST}")
    except RecordError as err:
        print(f"mtlsweep: ignoring the saved state of {trial_id}: {err}", file=sys.stderr)
        return False
    if manifest is None:
        return False
    fs, root = filesystem(where)
    dest = Path(local_dir)
    written: list[Path] = []
    try:
        files = manifest["files"]
        for name, entry in files.items():
            if not isinstance(name, str) or "/" in name or name.startswith("."):
                raise RecordError(f"bad file name {name!r}")
            target = dest / name
            with fs.open_input_stream(f"{root}/{entry['object']}") as src, \
                    open(target, "wb") as out:
                written.append(target)
                while chunk := src.read(_CHUNK):
                    out.write(chunk)
            if target.stat().st_size != entry["size"] or _sha256(target) != entry["sha256"]:
                raise RecordError(f"{name} does not match its recorded size and sha256")
    except (RecordError, KeyError, TypeError, AttributeError, OSError) as err:
        print(f"mtlsweep: ignoring the saved state of {trial_id} ({where}): {err}; the trial "
              "starts from epoch 0", file=sys.stderr)
        for path in written:
            path.unlink(missing_ok=True)
        return False
    return True

