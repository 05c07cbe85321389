"""Local paths and URIs through one door: pyarrow's filesystems (no torch, no Ray here, so
the light commands stay light)."""
from __future__ import annotations

import os

import pyarrow.fs as pafs


def local_path(storage: str) -> str | None:
    """The local path of ``storage`` (a path or file:// URI), or None for a remote URI."""
    if "://" not in storage:
        return os.path.abspath(storage)
    scheme, rest = storage.split("://", 1)
    return rest if scheme == "file" else None  # no network call to classify a URI


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI pyarrow understands."""
    local = local_path(path)
    if local is not None:
        return pafs.LocalFileSystem(), local
    return pafs.FileSystem.from_uri(path)
