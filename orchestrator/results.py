"""The Arrow/parquet result sink: one schema per table, atomic per-trial files, lazy polars reads.

Layout on disk (local path or any URI pyarrow understands)::

    <storage>/<sweep>/results/<table>/<trial_id>.parquet

One file per trial per table, written under a hidden temp name in the same directory and then
renamed over the final name, so a retried trial *replaces* its rows and a reader never sees a
half-written file. Every row carries ``schema_version`` and so does the parquet metadata; readers
tolerate files of older schema versions (columns they lack read as null).
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

SCHEMA_VERSION = 2
"""Bump when a column is added, removed or changes meaning; readers fill missing ones with null.
2: ``layout`` may be null (a model without layouts) and files carry one column per sweep axis."""

METADATA_KEY = b"mtlsweep.schema_version"
TABLE_KEY = b"mtlsweep.table"
AXIS_KEY = b"mtlsweep.axis"  # field metadata marking a sweep-axis column
TMP_MARKER = ".tmp-"

# --- the schema, in one place -------------------------------------------------------------------
# (name, type, nullable). Key columns (identity of a row) are non-nullable.
_TRIAL_COLUMNS: list[tuple[str, pa.DataType, bool]] = [
    ("schema_version", pa.int32(), False),
    ("sweep", pa.string(), False),
    ("trial_id", pa.string(), False),
    ("attempt", pa.int64(), False),
    ("layout", pa.string(), True),          # canonical Layout string; null: no layouts
    ("branch_point", pa.int64(), True),      # k of Layout.branch_point(k, ...); null otherwise
    ("adv_train", pa.string(), False),       # "none" = standard training, else an AT label
    ("rho", pa.float64(), False),            # SAM/RFN neighbourhood size; 0 = plain training
    ("optimizer", pa.string(), False),
    ("seed", pa.int64(), False),
    ("epoch", pa.int64(), False),            # early-stopping epoch of the checkpoint
]

_COLUMNS: dict[str, list[tuple[str, pa.DataType, bool]]] = {
    "measurements": _TRIAL_COLUMNS + [
        ("surrogate_id", pa.string(), True),  # model the attack was crafted on
        ("target_id", pa.string(), True),     # model evaluated under transfer (null = white-box)
        ("kind", pa.string(), False),         # clean | whitebox | cross_task | transfer
        ("attack_method", pa.string(), False),  # "none" for clean rows
        ("objective", pa.string(), False),      # "none" for clean rows
        ("eps", pa.float64(), False),           # 1/255 units; 0 for clean rows
        ("steps", pa.int64(), False),
        ("task", pa.string(), False),           # a task name or "mean"
        ("metric", pa.string(), False),         # a metric name, "delta" or "success_rate"
        ("clean", pa.float64(), True),
        ("adv", pa.float64(), True),
        ("rel_change", pa.float64(), True),
    ],
    "epochs": _TRIAL_COLUMNS + [
        ("lr", pa.float64(), True),
        ("lr_decayed", pa.bool_(), False),    # this epoch's LR is lower than the previous one's
        ("kept", pa.bool_(), False),          # a checkpoint was kept at this epoch
        ("quantity", pa.string(), False),     # train_loss, val/<task>/<metric>, lambda_max, ...
        ("value", pa.float64(), True),
    ],
    "timings": [
        ("schema_version", pa.int32(), False),
        ("sweep", pa.string(), False),
        ("trial_id", pa.string(), False),
        ("attempt", pa.int64(), False),
        ("phase", pa.string(), False),
        ("seconds", pa.float64(), False),
    ],
}

TABLES: tuple[str, ...] = tuple(_COLUMNS)
MEASUREMENT_KINDS: tuple[str, ...] = ("clean", "whitebox", "cross_task", "transfer")


def schema(table: str) -> pa.Schema:
    """The current Arrow schema of ``table`` (with the schema version in its metadata)."""
    _check_table(table)
    fields = [pa.field(name, typ, nullable=nullable) for name, typ, nullable in _COLUMNS[table]]
    return pa.schema(fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode(),
                                       TABLE_KEY: table.encode()})


def polars_schema(table: str) -> pl.Schema:
    """The polars view of :func:`schema` (what :func:`read_results` frames always have)."""
    return pl.Schema(pl.from_arrow(schema(table).empty_table()).schema)


def _check_table(table: str) -> None:
    if table not in _COLUMNS:
        raise ValueError(f"table must be one of {', '.join(TABLES)}; got {table!r}")


# --- validation ---------------------------------------------------------------------------------
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=+\-]*$")


def _check_name(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _SAFE_NAME.match(value) or TMP_MARKER in value:
        raise ValueError(
            f"{field} must be a non-empty name of letters, digits and _ . = + - (not starting "
            f"with a dot or dash, no '{TMP_MARKER}'); got {value!r}")
    return value


def _coerce(table: str, column: str, typ: pa.DataType, value: Any, index: int) -> Any:
    """Check one cell against its Arrow type; ints are accepted for floats, nothing else bends."""
    def bad(expected: str) -> ValueError:
        return ValueError(f"{table} row {index}: column {column!r} must be {expected}; "
                          f"got {value!r} ({type(value).__name__})")

    if pa.types.is_string(typ):
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if pa.types.is_boolean(typ):
        if not isinstance(value, bool):
            raise bad("a bool")
        return value
    if pa.types.is_integer(typ):
        if isinstance(value, bool) or not isinstance(value, int):
            if hasattr(value, "item") and not isinstance(value.item(), (bool, float)):
                return int(value.item())  # numpy / torch integer scalar
            raise bad("an int")
        return value
    if pa.types.is_floating(typ):
        if isinstance(value, bool):
            raise bad("a float")
        if hasattr(value, "item"):
            value = value.item()
        if not isinstance(value, (int, float)):
            raise bad("a float")
        return float(value)
    raise AssertionError(f"unhandled Arrow type {typ}")  # the schema above uses only these


def axis_type(value: Any) -> pa.DataType:
    """The Arrow type of an axis column holding ``value`` (bool, int, float or string)."""
    if isinstance(value, bool):
        return pa.bool_()
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    if isinstance(value, str) or value is None:
        return pa.string()
    raise ValueError(f"axis column value {value!r} ({type(value).__name__}): expected a bool, "
                     "int, float or string")


def validate_rows(table: str, sweep: str, trial_id: str, rows: list[dict],
                  columns: dict[str, Any] | None = None) -> pa.Table:
    """Rows -> an Arrow table of the current schema, or a ValueError naming the bad column.

    ``schema_version`` is filled in; ``sweep`` and ``trial_id`` are filled in from the arguments
    (a row that states a different one is an error). Unknown columns are errors, missing nullable
    columns are null, missing non-nullable ones are errors. ``columns`` (the trial's sweep-axis
    values, named by dotted path) are appended as constant columns after the schema's own.
    """
    axis_values = dict(columns or {})
    clash = sorted(set(axis_values) & {name for name, _, _ in _COLUMNS.get(table, [])})
    if clash:
        raise ValueError(f"axis column {clash[0]!r} has the name of a core column of {table}")
    _check_table(table)
    _check_name("sweep", sweep)
    _check_name("trial_id", trial_id)
    if not isinstance(rows, list):
        raise ValueError(f"rows must be a list of dicts; got {type(rows).__name__}")
    spec = _COLUMNS[table]
    known = {name for name, _, _ in spec}
    fixed = {"schema_version": SCHEMA_VERSION, "sweep": sweep, "trial_id": trial_id}
    columns: dict[str, list[Any]] = {name: [] for name, _, _ in spec}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{table} row {i} must be a dict; got {type(row).__name__}")
        unknown = sorted(set(row) - known)
        if unknown:
            raise ValueError(f"{table} row {i}: unknown column {unknown[0]!r}; allowed columns: "
                             f"{', '.join(name for name, _, _ in spec)}")
        for name, typ, nullable in spec:
            if name in fixed:
                if name in row and row[name] != fixed[name]:
                    raise ValueError(f"{table} row {i}: column {name!r} is {row[name]!r} but this "
                                     f"file is for {name} {fixed[name]!r}")
                columns[name].append(fixed[name])
                continue
            value = row.get(name)
            if value is None:
                if not nullable:
                    raise ValueError(f"{table} row {i}: column {name!r} is required (non-null)")
                columns[name].append(None)
                continue
            columns[name].append(_coerce(table, name, typ, value, i))
    if table == "measurements":
        for i, kind in enumerate(columns["kind"]):
            if kind not in MEASUREMENT_KINDS:
                raise ValueError(f"measurements row {i}: column 'kind' must be one of "
                                 f"{', '.join(MEASUREMENT_KINDS)}; got {kind!r}")
    arrays = [pa.array(columns[name], type=typ) for name, typ, _ in spec]
    out = pa.Table.from_arrays(arrays, schema=schema(table))
    for name in sorted(axis_values):
        value = axis_values[name]
        typ = axis_type(value)
        out = out.append_column(pa.field(name, typ, metadata={AXIS_KEY: b"1"}),
                                pa.array([value] * len(rows), type=typ))
    return out


# --- paths and filesystems ----------------------------------------------------------------------
def _is_uri(path: str | os.PathLike) -> bool:
    return isinstance(path, str) and "://" in path


def _resolve(storage: str | os.PathLike) -> tuple[pafs.FileSystem | None, str]:
    """(None, local path) for local storage, else (pyarrow filesystem, path inside it)."""
    if _is_uri(storage):
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
    _check_table(table)
    _check_name("sweep", sweep)
    _check_name("trial_id", trial_id)
    if _is_uri(storage) and _resolve(storage)[0] is not None:
        return f"{str(storage).rstrip('/')}/{sweep}/results/{table}/{trial_id}.parquet"
    local = _resolve(storage)[1]
    return os.path.join(local, sweep, "results", table, f"{trial_id}.parquet")


def write_trial_table(storage: str | os.PathLike, sweep: str, table: str, trial_id: str,
                      rows: list[dict], columns: dict[str, Any] | None = None) -> str:
    """Validate ``rows`` and write them as this trial's file of ``table``, atomically.

    The file goes to a hidden temp name in the destination directory and is then renamed over
    ``<storage>/<sweep>/results/<table>/<trial_id>.parquet``, so a retried trial replaces the
    earlier attempt's rows instead of duplicating them. Returns the final path (or URI).
    An empty ``rows`` writes an empty file (the trial ran and measured nothing).
    """
    data = validate_rows(table, sweep, trial_id, rows, columns)
    fs, root = _resolve(storage)
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


# --- reading ------------------------------------------------------------------------------------
def _is_result_file(name: str) -> bool:
    return name.endswith(".parquet") and not name.startswith(".") and TMP_MARKER not in name


def result_files(path: str | os.PathLike, table: str = "measurements") -> list[str]:
    """The parquet files of ``table`` under ``path``, sorted; temp and hidden files skipped.

    ``path`` may be a sweep directory (``<storage>/<sweep>``), a storage directory holding
    several sweeps (``<storage>/*/results/<table>``), a sweep's ``results`` directory, or the
    table directory itself. Raises FileNotFoundError when ``path`` does not exist.
    """
    _check_table(table)
    fs, root = _resolve(path)
    fs = fs or pafs.LocalFileSystem()
    root = root.rstrip("/") or "/"
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"results path {os.fspath(path)!r} does not exist")
    if info.type == pafs.FileType.File:
        return [root] if _is_result_file(os.path.basename(root)) else []

    def is_dir(p: str) -> bool:
        return fs.get_file_info(p).type == pafs.FileType.Directory

    def files_in(directory: str) -> list[str]:
        found = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        return [f.path for f in found
                if f.type == pafs.FileType.File and _is_result_file(f.base_name)]

    if is_dir(f"{root}/results/{table}"):          # a sweep directory
        files = files_in(f"{root}/results/{table}")
    elif os.path.basename(root) == "results":      # a sweep's results directory
        files = files_in(f"{root}/{table}")
    elif os.path.basename(root) == table and not is_dir(f"{root}/{table}"):  # the table dir
        files = files_in(root)
    else:                                          # a storage directory with several sweeps
        files = []
        for sub in fs.get_file_info(pafs.FileSelector(root)):
            if sub.type == pafs.FileType.Directory and not sub.base_name.startswith("."):
                files += files_in(f"{sub.path}/results/{table}")
    files.sort()
    if _is_uri(path) and _resolve(path)[0] is not None:
        scheme = str(path).split("://", 1)[0]
        files = [f"{scheme}://{f}" for f in files]
    return files


def _axis_columns(files: list[str], table: str) -> dict[str, pl.DataType]:
    """Sweep-axis columns found in ``files`` (beyond the table's schema) with one polars type
    each: a column that is integer in some files and float in others reads as float, any
    other disagreement as string."""
    known = {name for name, _, _ in _COLUMNS[table]}
    found: dict[str, set[pl.DataType]] = {}
    for path in files:
        fs, inner = _resolve(path)
        arrow = pq.read_schema(inner, filesystem=fs)
        for field in arrow:
            if field.name not in known and (field.metadata or {}).get(AXIS_KEY) == b"1":
                dtype = pl.from_arrow(pa.array([], type=field.type)).dtype
                found.setdefault(field.name, set()).add(dtype)
    out: dict[str, pl.DataType] = {}
    for name, types in sorted(found.items()):
        if len(types) == 1:
            out[name] = types.pop()
        elif types <= {pl.Int64, pl.Float64}:
            out[name] = pl.Float64
        else:
            out[name] = pl.String
    return out


def read_results(path: str | os.PathLike, table: str = "measurements") -> pl.LazyFrame:
    """All rows of ``table`` under ``path`` as one polars LazyFrame of the current schema plus
    one column per sweep axis (named by its dotted path, e.g. ``pl.col("training.lr")``).

    ``path`` is a sweep directory or a storage directory holding several sweeps (see
    :func:`result_files`). Files of older schema versions are read too: columns they lack are
    null (``schema_version`` itself, absent in pre-versioning files, reads as 0), columns the
    current schema dropped are ignored. A path without files for ``table`` gives an empty frame.
    """
    files = result_files(path, table)
    target = polars_schema(table)
    if not files:
        return pl.LazyFrame(schema=target)
    full = pl.Schema({**dict(target), **_axis_columns(files, table)})
    frame = pl.scan_parquet(files, schema=full, missing_columns="insert",
                            extra_columns="ignore", cast_options=pl.ScanCastOptions(
                                integer_cast="upcast", float_cast="upcast"))
    return frame.with_columns(pl.col("schema_version").fill_null(0))
