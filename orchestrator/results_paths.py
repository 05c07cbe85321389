"""Where result files live: local paths or URIs, a trial's file, the candidate files of a table.

Layout on disk (local path or any URI pyarrow understands)::

    <storage>/<sweep>/results/<table>/<trial_id>.parquet

Listing only finds candidates by name (``*.parquet``, not hidden, not a temp file); what a file
*is* is read from its footer by orchestrator/results_reading.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs

from orchestrator.results_schema import TMP_MARKER, check_name, check_table


@dataclass(frozen=True)
class Listed:
    """One candidate file: ``path`` (a local path or URI, as readers are given it), ``inner``
    (the path inside ``fs``), its filesystem (None: local) and its size in bytes."""
    path: str
    inner: str
    fs: pafs.FileSystem | None
    size: int | None


def is_uri(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a URI (``scheme://...``) rather than a local path."""
    return isinstance(path, str) and "://" in path


def resolve(storage: str | os.PathLike) -> tuple[pafs.FileSystem | None, str]:
    """(None, local path) for local storage, else (pyarrow filesystem, path inside it)."""
    if is_uri(storage):
        try:
            fs, inner = pafs.FileSystem.from_uri(str(storage))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise ValueError(f"storage {str(storage)!r} is not a URI pyarrow can open "
                             f"(e.g. file://, s3://, gs://, hdfs://): {err}") from None
        if isinstance(fs, pafs.LocalFileSystem):
            return None, inner
        return fs, inner
    return None, os.fspath(storage)


def trial_path(storage: str | os.PathLike, sweep: str, table: str, trial_id: str) -> str:
    """Where ``write_trial_table`` puts this trial's file (a local path or a URI)."""
    check_table(table)
    check_name("sweep", sweep)
    check_name("trial_id", trial_id)
    if is_uri(storage) and resolve(storage)[0] is not None:
        return f"{str(storage).rstrip('/')}/{sweep}/results/{table}/{trial_id}.parquet"
    local = resolve(storage)[1]
    return os.path.join(local, sweep, "results", table, f"{trial_id}.parquet")


def is_result_file(name: str) -> bool:
    """A candidate by name: ``*.parquet``, not hidden, not a writer's temp file."""
    return name.endswith(".parquet") and not name.startswith(".") and TMP_MARKER not in name


def list_table_files(path: str | os.PathLike, table: str) -> list[Listed]:
    """The candidate files of ``table`` under ``path``, sorted by path.

    ``path`` may be a sweep directory (``<storage>/<sweep>``), a storage directory holding
    several sweeps (``<storage>/*/results/<table>``), a sweep's ``results`` directory, the
    table directory itself, or one file. Raises FileNotFoundError when ``path`` does not exist.
    """
    check_table(table)
    remote, root = resolve(path)
    fs = remote or pafs.LocalFileSystem()
    root = root.rstrip("/") or "/"
    prefix = f"{str(path).split('://', 1)[0]}://" if remote is not None else ""
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"results path {os.fspath(path)!r} does not exist")
    if info.type == pafs.FileType.File:
        return ([Listed(prefix + root, root, remote, info.size)]
                if is_result_file(os.path.basename(root)) else [])

    def is_dir(p: str) -> bool:
        return fs.get_file_info(p).type == pafs.FileType.Directory

    def files_in(directory: str) -> list[pafs.FileInfo]:
        found = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return [f for f in found if f.type == pafs.FileType.File and is_result_file(f.base_name)]

    if is_dir(f"{root}/results/{table}"):          # a sweep directory
        infos = files_in(f"{root}/results/{table}")
    elif os.path.basename(root) == "results":      # a sweep's results directory
        infos = files_in(f"{root}/{table}")
    elif os.path.basename(root) == table and not is_dir(f"{root}/{table}"):  # the table dir
        infos = files_in(root)
    else:                                          # a storage directory with several sweeps
        infos = []
        for sub in fs.get_file_info(pafs.FileSelector(root)):
            if sub.type == pafs.FileType.Directory and not sub.base_name.startswith("."):
                infos += files_in(f"{sub.path}/results/{table}")
    listed = [Listed(prefix + f.path, f.path, remote, f.size) for f in infos]
    return sorted(listed, key=lambda item: item.path)
