"""Config values that name a place to write: a local directory, or a URI of a known scheme.

Checked when the config is read, without writing anything and without any network call:
a local directory must be a directory if it exists, else be creatable (its nearest existing
ancestor is a writable directory); a URI is classified by its scheme only. The schemes are
those pyarrow's ``FileSystem.from_uri`` opens (results and Tune's storage go through it).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mtl.config.reading import ConfigError, brief

STORAGE_SCHEMES = ("file", "local", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss")
_MAX_PATH_BYTES = 4096  # PATH_MAX on Linux


def uri_scheme(value: str) -> str | None:
    """The scheme of ``scheme://...`` (lower case), None for a plain path."""
    head, sep, _ = value.partition("://")
    return head.lower() if sep else None


def local_path(value: str) -> str | None:
    """The local path a storage string means (``file:///x`` and ``local:///x`` mean /x),
    None for a remote URI."""
    scheme = uri_scheme(value)
    if scheme is None:
        return value
    if scheme in ("file", "local"):
        return value.split("://", 1)[1] or "/"
    return None


def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(path.anchor or ".")


def writable_dir_problem(value: str) -> str | None:
    """What keeps ``value`` from being (or becoming) a directory this process can write in;
    None when nothing does. No file is created."""
    if "\x00" in value:
        return "contains a NUL character"
    if len(os.fsencode(value)) > _MAX_PATH_BYTES:
        return f"is longer than {_MAX_PATH_BYTES} bytes"
    path = Path(value).expanduser().absolute()
    if path.exists() and not path.is_dir():
        return f"{brief(str(path))} exists and is a file, not a directory"
    found = _nearest_existing(path)
    if not found.is_dir():
        return f"{brief(str(found))} is a file, so {brief(str(path))} cannot be created"
    if not os.access(found, os.W_OK | os.X_OK):
        return f"{brief(str(found))} is not writable by this user"
    return None


def check_writable_dir(value: Any, path: str, what: str = "directory") -> str:
    """``value`` if it names a local directory that exists or can be created and is
    writable (a `ConfigError` naming ``path`` otherwise)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: expected a {what} (a non-empty string), got {brief(value)}")
    problem = writable_dir_problem(value)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}; allowed: a writable {what}, or one that can be "
                          "created")
    return value


def check_storage(value: Any, path: str) -> str:
    """``value`` if it is a writable local directory (see `check_writable_dir`) or a URI of a
    scheme in `STORAGE_SCHEMES` (not probed: no network call)."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{path}: expected a directory or URI string, got {brief(value)}")
    scheme = uri_scheme(value)
    if scheme is not None and scheme not in STORAGE_SCHEMES:
        raise ConfigError(f"{path}: {brief(value)} has the URI scheme {brief(scheme)}, which "
                          f"pyarrow cannot open; allowed: a local directory or "
                          f"{', '.join(s + '://' for s in STORAGE_SCHEMES)}")
    local = local_path(value)
    if local is not None:
        problem = writable_dir_problem(local)
        if problem is not None:
            raise ConfigError(f"{path}: {problem}; allowed: a writable directory (or one that "
                              f"can be created), or a URI "
                              f"({', '.join(s + '://' for s in STORAGE_SCHEMES)})")
    return value
