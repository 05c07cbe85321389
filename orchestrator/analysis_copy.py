"""A consolidated copy of a sweep's analysed rows, so a second analysis reads 3 files, not 30,000.

Reading 10,000 trials' files costs a footer pass over every file and a read of every file
(tens of seconds on 2 cores, far more on object storage); the rows the analysis keeps fit in
three parquet files of a few tens of MB. After a full read (a sweep's last step, or an
analysis), they are written to ``<sweep>/.analysis-tables/<key>/`` where ``key`` hashes the
listing of the per-trial files (name, size and modification time of every candidate file of
every table) with :data:`COPY_VERSION` and the results schema version. A later analysis lists
the files again (milliseconds locally, one listing call per table on object storage), and reads
the copy only when that exact key's manifest exists: any added, removed, rewritten or retried
trial file changes the key, so the copy is never stale, only missed. The per-trial files stay
the record; the copy is derived data, rebuilt when missing, written best effort (a read-only
sweep is analysed without it). The skipped files of the full read are kept with it, to be
warned about again.

Local sweep directories and URIs (``s3://``, ``gs://``, ...) go through pyarrow's filesystems.
Locally the copy is written into a hidden temporary directory renamed into place; object stores
cannot rename a directory, so there the files go straight to ``<key>/`` and the manifest,
written last, is what makes the copy count.
"""
from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from dataclasses import dataclass

import polars as pl
import pyarrow.fs as pafs

from orchestrator.results_paths import is_result_file, resolve
from orchestrator.results_reading import Skipped
from orchestrator.results_schema import SCHEMA_VERSION, TABLES

COPY_DIR = ".analysis-tables"
COPY_VERSION = 2
"""Bump when what the analysis keeps of a table changes (analysis_tables: rows, columns)."""
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Copy:
    """Named frames (orchestrator/analysis_tables.py: the analysed rows of each table and one
    row per trial), the files the full read skipped, and the sweep's axis columns."""
    frames: dict[str, pl.DataFrame]
    skipped: tuple[Skipped, ...]
    axes: tuple[str, ...]


def _where(results_dir: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path of the sweep directory inside it)."""
    remote, root = resolve(results_dir)
    return remote or pafs.LocalFileSystem(), root.rstrip("/") or "/"


def _is_dir(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type == pafs.FileType.Directory


def listing(results_dir: str | os.PathLike) -> tuple[str, int] | None:
    """(the key of the current per-trial files, how many there are) of a sweep directory (one
    with ``results/``); None for anything else (a storage root, a table directory) or an
    unreadable location."""
    try:
        fs, root = _where(results_dir)
        if not _is_dir(fs, f"{root}/results"):
            return None
        files: dict[str, list] = {}
        for table in TABLES:
            found = fs.get_file_info(pafs.FileSelector(f"{root}/results/{table}",
                                                       allow_not_found=True))
            files[table] = sorted((f.base_name, f.size, f.mtime_ns) for f in found
                                  if f.type == pafs.FileType.File
                                  and is_result_file(f.base_name))
    except (OSError, ValueError):
        return None
    text = json.dumps({"copy": COPY_VERSION, "schema": SCHEMA_VERSION, "files": files})
    return hashlib.sha256(text.encode()).hexdigest()[:32], sum(map(len, files.values()))


def listing_key(results_dir: str | os.PathLike) -> str | None:
    """The key of :func:`listing` (None where it is None)."""
    found = listing(results_dir)
    return None if found is None else found[0]


def exists(results_dir: str | os.PathLike, key: str) -> bool:
    """Whether the copy of ``key`` was written completely (its manifest is written last)."""
    fs, root = _where(results_dir)
    return fs.get_file_info(f"{root}/{COPY_DIR}/{key}/{MANIFEST}").type == pafs.FileType.File


def load(results_dir: str | os.PathLike, key: str) -> Copy | None:
    """The copy of ``key`` if one was written completely; None when it is missing or cannot be
    read (then the per-trial files are read instead)."""
    try:
        fs, root = _where(results_dir)
        where = f"{root}/{COPY_DIR}/{key}"
        with fs.open_input_stream(f"{where}/{MANIFEST}") as src:
            manifest = json.loads(src.read().decode("utf-8"))
        frames = {}
        for name in manifest["frames"]:
            with fs.open_input_file(f"{where}/{name}.parquet") as src:
                frames[name] = pl.read_parquet(src)
        skipped = tuple(Skipped(path, reason) for path, reason in manifest["skipped"])
        return Copy(frames, skipped, tuple(manifest["axes"]))
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None  # unreadable or of another layout: read the per-trial files instead


def _write(fs: pafs.FileSystem, where: str, copy: Copy) -> None:
    """The frames, then the manifest (last: it marks the copy complete)."""
    fs.create_dir(where, recursive=True)
    for name, frame in copy.frames.items():
        with fs.open_output_stream(f"{where}/{name}.parquet") as out:
            frame.write_parquet(out)
    manifest = json.dumps({"frames": list(copy.frames), "axes": list(copy.axes),
                           "skipped": [[s.path, s.reason] for s in copy.skipped]})
    with fs.open_output_stream(f"{where}/{MANIFEST}") as out:
        out.write(manifest.encode("utf-8"))


def save(results_dir: str | os.PathLike, key: str, copy: Copy) -> str | None:
    """Write ``copy`` under ``key`` and remove the copies of older listings; the copy's path,
    or None when it could not be written (e.g. a read-only sweep directory)."""
    try:
        fs, root = _where(results_dir)
        base = f"{root}/{COPY_DIR}"
        final = f"{base}/{key}"
        if isinstance(fs, pafs.LocalFileSystem):
            tmp = f"{base}/.{key}.{uuid.uuid4().hex}"
            try:
                _write(fs, tmp, copy)
                if not _is_dir(fs, final):  # else another analysis wrote it first
                    fs.move(tmp, final)
            finally:  # nothing half-written is left, even on Ctrl-C
                if _is_dir(fs, tmp):
                    fs.delete_dir(tmp)
        else:
            _write(fs, final, copy)
        for old in fs.get_file_info(pafs.FileSelector(base)):
            name = posixpath.basename(old.path.rstrip("/"))
            if old.type == pafs.FileType.Directory and name != key and not name.startswith("."):
                fs.delete_dir(old.path)
    except (OSError, ValueError):
        return None
    return final
