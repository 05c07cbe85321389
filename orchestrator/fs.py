"""Local paths and URIs through one door: pyarrow's filesystems (no torch, no Ray here, so
the light commands stay light). What a storage string means is `mtl.config.locations`' rule."""
from __future__ import annotations

import os

import pyarrow.fs as pafs

from mtl.config.locations import local_path as _local


def local_path(storage: str) -> str | None:
    """The absolute local path of ``storage`` (a path, file:// or local:// URI), or None
    for a remote URI."""
    path = _local(storage)
    return os.path.abspath(path) if path is not None else None


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a local path or a URI pyarrow understands."""
    local = local_path(path)
    if local is not None:
        return pafs.LocalFileSystem(), local
    return pafs.FileSystem.from_uri(path)
