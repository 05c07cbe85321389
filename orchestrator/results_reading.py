"""Reading results defensively: one pass over the parquet footers decides which files count.

A results directory is data from outside the process (copied from a bucket, edited by hand,
left by a crash), so before any rows are read every candidate file's footer is read once
(``pq.read_metadata``: no full reads) and a file is **skipped with a warning**
(:class:`ResultsWarning`, one line: ``<path>: <reason>``) when it

- is not parquet, is truncated or its footer is corrupt (it cannot be read at all);
- is foreign: no mtlsweep metadata and not the columns of the table (files written before the
  metadata existed, "version 0", are read when they have the table's columns, see
  ``LEGACY_COLUMNS``);
- belongs to another table (``mtlsweep.table``, or the columns of another table);
- has a column whose type cannot be read as the schema's, or a null in a non-nullable column
  (``sweep``, ``trial_id``, ``attempt``, ...: from the footer's null counts; a file without
  statistics has those columns alone read);
- states rows of another trial than its key, or (files before schema 3) rows of several trials;
- is a second file of a trial already read: files are keyed *inside* the file (schema 3:
  ``mtlsweep.sweep``/``mtlsweep.trial_id``/``mtlsweep.attempt`` metadata; older files: the
  single value of those columns, attempt 0 when absent), never by name. Of two files with the
  same (sweep, trial_id) the higher attempt is kept; on a tie the file named
  ``<trial_id>.parquet``, then the first by path.

Skipping, not refusing, is the choice: one bad file out of thousands should not hide the rest,
and every skip is named. Corruption inside a data page of a file whose footer is intact is not
seen by this pass: ``read_results``' frame fails when it is collected, while the analysis
(orchestrator/analysis_tables.py) reads such a pass again file by file and skips the damaged
file by name.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from orchestrator.results_paths import Listed, list_table_files
from orchestrator.results_schema import (ATTEMPT_KEY, AXIS_KEY, KEY_COLUMNS, LEGACY_COLUMNS,
                                         SWEEP_KEY, TABLE_KEY, TABLES, TRIAL_KEY, columns,
                                         polars_schema)

PARQUET_MAGIC = b"PAR1"
FOOTER_THREADS = 16
PARALLEL_FROM = 32  # fewer files are read one after another


class ResultsWarning(UserWarning):
    """A results file was skipped; the message is ``<path>: <reason>``."""


@dataclass(frozen=True)
class Skipped:
    """A file left out of the results and why."""
    path: str
    reason: str

    def line(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class ResultFile:
    """A file that counts: its key and the polars type of every column the reader uses."""
    path: str
    sweep: str | None      # None only for an empty pre-schema-3 file (no rows to key)
    trial_id: str | None
    attempt: int
    dtypes: dict[str, pl.DataType]
    axes: dict[str, pl.DataType] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultScan:
    """The outcome of the footer pass over one table: the files that count and the skipped."""
    table: str
    files: tuple[ResultFile, ...]
    skipped: tuple[Skipped, ...]

    def frame(self) -> pl.LazyFrame:
        """The rows of :attr:`files` in the current schema plus one column per sweep axis."""
        return _frame(self.table, self.files)


# --- one file's footer --------------------------------------------------------------------------
_DTYPES: dict[pa.DataType, pl.DataType] = {}


def _dtype(arrow: pa.DataType) -> pl.DataType:
    if arrow not in _DTYPES:
        _DTYPES[arrow] = pl.from_arrow(pa.array([], type=arrow)).dtype
    return _DTYPES[arrow]


def _castable(found: pl.DataType, target: pl.DataType) -> bool:
    """Whether a column of type ``found`` reads losslessly as ``target``."""
    if found == target or found == pl.Null:
        return True
    if target.is_integer():
        return found.is_integer() and found != pl.UInt64
    if target.is_float():
        return found.is_float() or found.is_integer()
    if target == pl.String:
        return isinstance(found, (pl.Categorical, pl.Enum))
    return False


def _unreadable(item: Listed, err: Exception) -> str:
    if item.size == 0:
        return "empty file (0 bytes)"
    if isinstance(err, OSError) and not isinstance(err, pa.ArrowException):
        return f"cannot be read: {err}"
    try:
        if item.fs is None:
            with open(item.inner, "rb") as src:
                head = src.read(4)
        else:
            with item.fs.open_input_stream(item.inner) as src:
                head = src.read(4)
    except OSError as exc:
        return f"cannot be read: {exc}"
    if head != PARQUET_MAGIC:
        return "not a parquet file"
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if "magic bytes not found in footer" in text or "size is" in text:
        return "truncated parquet file (no footer: its write did not finish)"
    return f"corrupt parquet footer ({text[:160]})"


def _table_of(names: set[str], table: str) -> str | None:
    """The table a file without mtlsweep metadata has the columns of (``table`` first)."""
    for candidate in (table, *TABLES):
        if set(LEGACY_COLUMNS[candidate]) <= names:
            return candidate
    return None


def _row_group_facts(md: pq.FileMetaData, index: dict[str, int], names: Iterable[str],
                     size: int | None) -> tuple[dict[str, int], dict[str, set]] | str | None:
    """From the footer alone: null counts of ``names`` and the distinct min/max values of the
    key columns among them; a reason string when a column chunk lies past the end of the file;
    None when a row group lacks statistics (then the columns themselves are read)."""
    nulls = dict.fromkeys(names, 0)
    values: dict[str, set] = {name: set() for name in names if name in KEY_COLUMNS}
    data_end = None if size is None else size - md.serialized_size - 8  # footer, length, magic
    for g in range(md.num_row_groups):
        group = md.row_group(g)
        if data_end is not None:
            for c in range(group.num_columns):
                chunk = group.column(c)
                start = chunk.dictionary_page_offset or chunk.data_page_offset
                if start is not None and start + chunk.total_compressed_size > data_end:
                    return "truncated parquet file (its footer points past the end of the file)"
        rows = group.num_rows
        if rows == 0:
            continue
        for name in nulls:
            stats = group.column(index[name]).statistics
            if stats is None or not stats.has_null_count:
                return None
            nulls[name] += stats.null_count
            if name not in values or stats.null_count == rows:
                continue
            if not stats.has_min_max:
                return None
            values[name].update(v.decode("utf-8", "replace") if isinstance(v, bytes) else v
                                for v in (stats.min, stats.max))
    return nulls, values


def _read_columns(item: Listed, names: list[str]) -> tuple[dict[str, int], dict[str, set]]:
    data = pq.read_table(item.inner, columns=names, filesystem=item.fs)
    return ({n: data[n].null_count for n in names},
            {n: set(data[n].drop_null().unique().to_pylist()) for n in names if n in KEY_COLUMNS})


@dataclass(frozen=True)
class _Target:
    """What every file of a table is checked against (computed once per pass)."""
    table: str
    dtypes: dict[str, pl.DataType]
    required: tuple[str, ...]  # the non-nullable columns

    @classmethod
    def of(cls, table: str) -> "_Target":
        return cls(table, dict(polars_schema(table)),
                   tuple(n for n, _, nullable in columns(table) if not nullable))


def _inspect(item: Listed, target: _Target) -> ResultFile | Skipped:
    """Read ``item``'s footer once and decide whether (and as what) it counts."""
    def skip(reason: str) -> Skipped:
        return Skipped(item.path, reason)

    table = target.table
    try:
        md = pq.read_metadata(item.inner, filesystem=item.fs)
        arrow = md.schema.to_arrow_schema()
    except (pa.ArrowException, OSError, ValueError) as err:
        return skip(_unreadable(item, err))
    meta = arrow.metadata or {}
    names = set(arrow.names)
    if TABLE_KEY in meta:
        own = meta[TABLE_KEY].decode("utf-8", "replace")
        if own != table:
            return skip(f"a file of table {own!r}, not {table!r}")
    else:
        own = _table_of(names, table)
        if own is None:
            return skip(f"foreign parquet file: no mtlsweep metadata and not the columns of the "
                        f"{table} table (needs {', '.join(LEGACY_COLUMNS[table])})")
        if own != table:
            return skip(f"a file of table {own!r} (by its columns), not {table!r}")
    missing = [k for k in KEY_COLUMNS[:2] if k not in names]
    if missing:
        return skip(f"no key column {missing[0]!r}")
    dtypes: dict[str, pl.DataType] = {}
    axes: dict[str, pl.DataType] = {}
    for f in arrow:
        found = _dtype(f.type)
        expected = target.dtypes.get(f.name)
        if expected is not None:
            if not _castable(found, expected):
                return skip(f"column {f.name!r} is {found}, expected {expected}")
            dtypes[f.name] = found
        elif f.metadata and f.metadata.get(AXIS_KEY) == b"1":
            if not (found.is_numeric() or found in (pl.Boolean, pl.String, pl.Null)):
                return skip(f"axis column {f.name!r} is {found}, expected a bool, number or "
                            "string")
            axes[f.name] = dtypes[f.name] = found
    required = [n for n in target.required if n in names]
    index = ({name: i for i, name in enumerate(arrow.names)} if md.num_columns == len(arrow)
             else {md.schema.column(i).path: i for i in range(md.num_columns)})  # flat: cheap
    facts = (_row_group_facts(md, index, required, item.size)
             if all(n in index for n in required) else None)
    if isinstance(facts, str):
        return skip(facts)
    nulls, values = facts if facts is not None else _read_columns(item, required)
    for name in required:
        if nulls[name]:
            return skip(f"null {name} in {nulls[name]} row(s)")
    return _keyed(item, meta, values, dtypes, axes)


def _keyed(item: Listed, meta: dict, values: dict[str, set], dtypes: dict[str, pl.DataType],
           axes: dict[str, pl.DataType]) -> ResultFile | Skipped:
    """The file's key: from its metadata (schema 3), checked against its rows; else (older
    files) the single sweep and trial of its rows, and their highest attempt (0 if none)."""
    sweeps, trials = values["sweep"], values["trial_id"]
    attempts = values.get("attempt", set())
    if SWEEP_KEY in meta and TRIAL_KEY in meta and ATTEMPT_KEY in meta:
        sweep = meta[SWEEP_KEY].decode("utf-8", "replace")
        trial = meta[TRIAL_KEY].decode("utf-8", "replace")
        try:
            attempt = int(meta[ATTEMPT_KEY])
        except ValueError:
            return Skipped(item.path, f"unreadable attempt {meta[ATTEMPT_KEY]!r} in its metadata")
        for column, stated, key in (("sweep", sweeps, sweep), ("trial_id", trials, trial),
                                    ("attempt", attempts, attempt)):
            if stated - {key}:
                other = sorted(map(str, stated - {key}))[0]
                return Skipped(item.path, f"rows of {column} {other!r} in a file keyed "
                                          f"{column} {key!r}")
        return ResultFile(item.path, sweep, trial, attempt, dtypes, axes)
    if len(sweeps) > 1 or len(trials) > 1:
        return Skipped(item.path, f"rows of {max(len(sweeps), len(trials))} trials in one file "
                                  "(a file holds one trial)")
    if not sweeps or not trials:
        return ResultFile(item.path, None, None, 0, dtypes, axes)  # no rows: nothing to count
    return ResultFile(item.path, str(next(iter(sweeps))), str(next(iter(trials))),
                      int(max(attempts)) if attempts else 0, dtypes, axes)


# --- the pass over all files --------------------------------------------------------------------
def _deduplicate(files: list[ResultFile]) -> tuple[list[ResultFile], list[Skipped]]:
    """One file per (sweep, trial_id): the highest attempt, then ``<trial_id>.parquet``."""
    groups: dict[tuple[str, str], list[ResultFile]] = {}
    kept: list[ResultFile] = []
    for f in files:
        if f.sweep is None or f.trial_id is None:
            kept.append(f)
        else:
            groups.setdefault((f.sweep, f.trial_id), []).append(f)
    skipped: list[Skipped] = []
    for (sweep, trial), group in groups.items():
        group.sort(key=lambda f: (-f.attempt,
                                  os.path.basename(f.path) != f"{trial}.parquet", f.path))
        winner = group[0]
        kept.append(winner)
        for f in group[1:]:
            what = ("a second copy of" if f.attempt == winner.attempt
                    else f"an older attempt ({f.attempt}) of")
            skipped.append(Skipped(f.path, f"{what} trial {trial!r} of sweep {sweep!r}: attempt "
                                           f"{winner.attempt} is read from {winner.path}"))
    kept.sort(key=lambda f: f.path)
    return kept, skipped


def scan_results(path: str | os.PathLike, table: str = "measurements") -> ResultScan:
    """The footer pass over ``table``'s files under ``path`` (see the module docstring); warns
    nothing: :func:`read_results` and ``mtlsweep analyze`` report the skipped files."""
    target = _Target.of(table)
    listed = list_table_files(path, table)
    if len(listed) < PARALLEL_FROM:
        inspected = [_inspect(item, target) for item in listed]
    else:  # footers are small reads: overlap them (an object store answers each in ~ms)
        with ThreadPoolExecutor(max_workers=FOOTER_THREADS) as pool:
            inspected = list(pool.map(lambda item: _inspect(item, target), listed))
    good = [r for r in inspected if isinstance(r, ResultFile)]
    bad = [r for r in inspected if isinstance(r, Skipped)]
    kept, duplicates = _deduplicate(good)
    skipped = sorted(bad + duplicates, key=lambda s: s.path)
    return ResultScan(table, tuple(kept), tuple(skipped))


def warn_skipped(skipped: Iterable[Skipped], stacklevel: int = 3) -> None:
    """One :class:`ResultsWarning` per skipped file (``<path>: <reason>``)."""
    for item in skipped:
        warnings.warn(ResultsWarning(item.line()), stacklevel=stacklevel)


def _merged_axes(files: Iterable[ResultFile]) -> dict[str, pl.DataType]:
    """One polars type per axis column: integer and float files read as float, any other
    disagreement as string."""
    found: dict[str, set[pl.DataType]] = {}
    for f in files:
        for name, dtype in f.axes.items():
            if dtype != pl.Null:
                found.setdefault(name, set()).add(dtype)
            else:
                found.setdefault(name, set())
    out: dict[str, pl.DataType] = {}
    for name, types in sorted(found.items()):
        if not types:
            out[name] = pl.String
        elif len(types) == 1:
            out[name] = next(iter(types))
        elif all(t.is_numeric() for t in types):
            out[name] = pl.Float64
        else:
            out[name] = pl.String
    return out


def _frame(table: str, files: Iterable[ResultFile]) -> pl.LazyFrame:
    """Files grouped by their own column types, each group scanned as written and cast to the
    common schema (polars itself casts only integer widths), then concatenated."""
    files = list(files)
    target = polars_schema(table)
    if not files:
        return pl.LazyFrame(schema=target)
    full = pl.Schema({**dict(target), **_merged_axes(files)})
    groups: dict[tuple, list[str]] = {}
    for f in files:
        groups.setdefault(tuple(sorted(f.dtypes.items(), key=lambda kv: kv[0])), []).append(
            f.path)
    frames = []
    for dtypes, paths in groups.items():
        own = pl.Schema({name: dict(dtypes).get(name, dtype) for name, dtype in full.items()})
        scan = pl.scan_parquet(paths, schema=own, missing_columns="insert",
                               extra_columns="ignore")
        frames.append(scan.select(pl.col(name).cast(dtype, strict=False)
                                  for name, dtype in full.items()))
    frame = frames[0] if len(frames) == 1 else pl.concat(frames, how="vertical")
    return frame.with_columns(pl.col("schema_version").fill_null(0))


def result_files(path: str | os.PathLike, table: str = "measurements") -> list[str]:
    """The files of ``table`` under ``path`` that count, sorted; every other candidate is
    named in a :class:`ResultsWarning` (temp and hidden files are ignored silently).

    ``path`` may be a sweep directory (``<storage>/<sweep>``), a storage directory holding
    several sweeps (``<storage>/*/results/<table>``), a sweep's ``results`` directory, or the
    table directory itself. Raises FileNotFoundError when ``path`` does not exist.
    """
    scan = scan_results(path, table)
    warn_skipped(scan.skipped)
    return [f.path for f in scan.files]


def read_results(path: str | os.PathLike, table: str = "measurements") -> pl.LazyFrame:
    """All rows of ``table`` under ``path`` as one polars LazyFrame of the current schema plus
    one column per sweep axis (named by its dotted path, e.g. ``pl.col("training.lr")``).

    ``path`` is a sweep directory or a storage directory holding several sweeps (see
    :func:`result_files`). Files that do not count are skipped with a :class:`ResultsWarning`
    each (module docstring). Files of older schema versions are read too: columns they lack
    are null (``schema_version`` itself, absent in pre-versioning files, reads as 0), columns
    the current schema dropped are ignored. A path without files for ``table`` gives an empty
    frame.
    """
    scan = scan_results(path, table)
    warn_skipped(scan.skipped)
    return scan.frame()
