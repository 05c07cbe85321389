"""A consolidated copy of a sweep's analysed rows, so a second analysis reads 3 files, not 30,000.

Reading 10,000 trials' files costs a footer pass over every file and a read of every file
(tens of seconds on 2 cores); the rows the analysis keeps fit in three parquet files of a few
tens of MB. After a full read, the analysis writes them to
``<sweep>/.analysis-tables/<key>/`` where ``key`` hashes the listing of the per-trial files
(name, size and modification time of every candidate file of every table) with
:data:`COPY_VERSION` and the results schema version. A later analysis lists the files again
(milliseconds), and reads the copy only when a directory of that exact key exists: any added,
removed, rewritten or retried trial file changes the key, so the copy is never stale, only
missed. The per-trial files stay the record; the copy is derived data, rebuilt when missing,
and written only for local sweep directories (best effort: a read-only sweep is analysed
without it). The skipped files of the full read are kept with it, to be warned about again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from orchestrator.results_paths import is_result_file, is_uri
from orchestrator.results_reading import Skipped
from orchestrator.results_schema import SCHEMA_VERSION, TABLES

COPY_DIR = ".analysis-tables"
COPY_VERSION = 1
"""Bump when what the analysis keeps of a table changes (analysis_tables: rows, columns)."""
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Copy:
    """Named frames (orchestrator/analysis_tables.py: the analysed rows of each table and one
    row per trial), the files the full read skipped, and the sweep's axis columns."""
    frames: dict[str, pl.DataFrame]
    skipped: tuple[Skipped, ...]
    axes: tuple[str, ...]


def listing_key(results_dir: str | os.PathLike) -> str | None:
    """The key of the current per-trial files of a local sweep directory (one with
    ``results/``); None for anything else (a storage root, a URI, a table directory)."""
    if is_uri(results_dir) or not (Path(results_dir) / "results").is_dir():
        return None
    listing: dict[str, list] = {}
    for table in TABLES:
        directory = Path(results_dir) / "results" / table
        try:
            entries = [e for e in os.scandir(directory) if is_result_file(e.name) and e.is_file()]
        except FileNotFoundError:
            entries = []
        stats = [(e.name, e.stat()) for e in entries]
        listing[table] = sorted((name, s.st_size, s.st_mtime_ns) for name, s in stats)
    text = json.dumps({"copy": COPY_VERSION, "schema": SCHEMA_VERSION, "files": listing})
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def exists(results_dir: str | os.PathLike, key: str) -> bool:
    """Whether the copy of ``key`` was written completely."""
    return (Path(results_dir) / COPY_DIR / key / MANIFEST).is_file()


def load(results_dir: str | os.PathLike, key: str) -> Copy | None:
    """The copy of ``key`` if one was written completely (its manifest is written last)."""
    where = Path(results_dir) / COPY_DIR / key
    try:
        manifest = json.loads((where / MANIFEST).read_text(encoding="utf-8"))
        frames = {name: pl.read_parquet(where / f"{name}.parquet")
                  for name in manifest["frames"]}
        skipped = tuple(Skipped(path, reason) for path, reason in manifest["skipped"])
        return Copy(frames, skipped, tuple(manifest["axes"]))
    except (OSError, ValueError, KeyError, TypeError, pl.exceptions.PolarsError):
        return None  # unreadable or of another layout: read the per-trial files instead


def save(results_dir: str | os.PathLike, key: str, copy: Copy) -> Path | None:
    """Write ``copy`` under ``key`` (into a temporary directory renamed into place) and remove
    the copies of older listings; None when the sweep directory is not writable."""
    root = Path(results_dir) / COPY_DIR
    final = root / key
    tmp = root / f".{key}.{uuid.uuid4().hex}"
    try:
        tmp.mkdir(parents=True)
        for name, frame in copy.frames.items():
            frame.write_parquet(tmp / f"{name}.parquet")
        (tmp / MANIFEST).write_text(json.dumps({
            "frames": list(copy.frames), "axes": list(copy.axes),
            "skipped": [[s.path, s.reason] for s in copy.skipped]}), encoding="utf-8")
        try:
            tmp.rename(final)
        except OSError:  # another analysis wrote the same listing's copy first
            shutil.rmtree(tmp, ignore_errors=True)
        for old in root.iterdir():
            if old.name != key and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return final
