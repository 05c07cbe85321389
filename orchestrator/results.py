"""The Arrow/parquet result sink: atomic per-trial files, read back defensively with polars.

Layout on disk (local path or any URI pyarrow understands)::

    <storage>/<sweep>/results/<table>/<trial_id>.parquet

One file per trial per table, written under a hidden temp name in the same directory and then
renamed over the final name, so a retried trial *replaces* its rows and a reader never sees a
half-written file. Every row carries ``schema_version``, and the parquet metadata carries the
schema version, the table and the file's key (sweep, trial_id, attempt): files are keyed inside
the file, not by their names.

This module is the public face of the results: the schema and row validation live in
orchestrator/results_schema.py, where files live in orchestrator/results_paths.py, and the
defensive reading (corrupt, foreign and duplicate files skipped with a ``ResultsWarning``;
files of older schema versions read with nulls for the columns they lack) in
orchestrator/results_reading.py; their public names are importable from here.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from orchestrator.results_paths import is_uri, resolve, trial_path
from orchestrator.results_reading import (ResultScan, ResultsWarning, Skipped, read_results,
                                          result_files, scan_results)
from orchestrator.results_schema import (ATTEMPT_KEY, AXIS_KEY, KEY_COLUMNS, MEASUREMENT_KINDS,
                                         METADATA_KEY, SCHEMA_VERSION, SWEEP_KEY, TABLE_KEY,
                                         TABLES, TMP_MARKER, TRIAL_KEY, axis_type, polars_schema,
                                         schema, validate_rows)

__all__ = ["ATTEMPT_KEY", "AXIS_KEY", "KEY_COLUMNS", "MEASUREMENT_KINDS", "METADATA_KEY",
           "SCHEMA_VERSION", "SWEEP_KEY", "TABLE_KEY", "TABLES", "TMP_MARKER", "TRIAL_KEY",
           "ResultScan", "ResultsWarning", "Skipped", "axis_type", "is_uri", "polars_schema",
           "read_results", "result_files", "scan_results", "schema", "trial_path",
           "validate_rows", "write_trial_table"]


def write_trial_table(storage: str | os.PathLike, sweep: str, table: str, trial_id: str,
                      rows: list[dict], columns: dict[str, Any] | None = None, *,
                      attempt: int | None = None) -> str:
    """Validate ``rows`` and write them as this trial's file of ``table``, atomically.

    The file goes to a hidden temp name in the destination directory and is then renamed over
    ``<storage>/<sweep>/results/<table>/<trial_id>.parquet``, so a retried trial replaces the
    earlier attempt's rows instead of duplicating them. Returns the final path (or URI).
    An empty ``rows`` writes an empty file (the trial ran and measured nothing). ``attempt``
    (default: the rows' own, 0 without rows) is filled into the rows and the file's key.
    """
    data = validate_rows(table, sweep, trial_id, rows, columns, attempt=attempt)
    fs, root = resolve(storage)
    final_name = f"{trial_id}.parquet"
    tmp_name = f".{trial_id}.parquet{TMP_MARKER}{uuid.uuid4().hex}"
    if fs is None:
        directory = Path(root) / sweep / "results" / table
        directory.mkdir(parents=True, exist_ok=True)
        tmp, final = directory / tmp_name, directory / final_name
        try:
            with open(tmp, "wb") as sink:
                pq.write_table(data, sink)
                sink.flush()
                os.fsync(sink.fileno())  # the rename must never expose a file still in cache
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                tmp.unlink()
        return str(final)
    directory = f"{root.rstrip('/')}/{sweep}/results/{table}"
    fs.create_dir(directory, recursive=True)
    tmp, final = f"{directory}/{tmp_name}", f"{directory}/{final_name}"
    try:
        with fs.open_output_stream(tmp) as sink:
            pq.write_table(data, sink)
        try:
            fs.move(tmp, final)  # object stores copy over the key: readers see old or new rows
        except OSError:
            if fs.get_file_info(final).type == pafs.FileType.NotFound:
                raise
            fs.delete_file(final)  # a filesystem that refuses to move over an existing file
            fs.move(tmp, final)
    finally:
        if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
            fs.delete_file(tmp)
    return trial_path(storage, sweep, table, trial_id)
