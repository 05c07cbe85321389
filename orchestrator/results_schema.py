"""The results schema: one Arrow schema per table, its version, and row validation against it.

Every file carries the schema version and its key in the parquet metadata (``mtlsweep.*``
keys below), so a reader learns what a file is from its footer alone (orchestrator/
results_reading.py). Writing is in orchestrator/results.py.
"""
from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from mtl.config.names import NAME_RULE, TMP_MARKER, name_problem  # TMP_MARKER: re-exported

SCHEMA_VERSION = 3
"""Bump when a column is added, removed or changes meaning; readers fill missing ones with null.
2: ``layout`` may be null (a model without layouts) and files carry one column per sweep axis.
3: the columns a confidence interval and the common groupings need: ``train_epochs``,
``dataset``, ``model`` (trial-level, in ``measurements`` and ``epochs``), and in
``measurements`` ``n`` (samples behind the value), ``numerator``/``denominator`` (the counts of
a rate such as ``success_rate``) and ``attack_options`` (canonical JSON); all nullable, so
files of versions 1 and 2 read with nulls there. Files also carry their key in the metadata
(``mtlsweep.sweep``, ``mtlsweep.trial_id``, ``mtlsweep.attempt``)."""

METADATA_KEY = b"mtlsweep.schema_version"
TABLE_KEY = b"mtlsweep.table"
SWEEP_KEY = b"mtlsweep.sweep"
TRIAL_KEY = b"mtlsweep.trial_id"
ATTEMPT_KEY = b"mtlsweep.attempt"
AXIS_KEY = b"mtlsweep.axis"  # field metadata marking a sweep-axis column
KEY_COLUMNS: tuple[str, ...] = ("sweep", "trial_id", "attempt")
"""A file's key: one file per (sweep, trial_id, attempt) and table, stated inside the file."""

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
    ("train_epochs", pa.int64(), True),      # the trial's training length (training.epochs)
    ("dataset", pa.string(), True),          # the dataset's source (registered name or factory)
    ("model", pa.string(), True),            # the model's source (registered name or factory)
]

_COLUMNS: dict[str, list[tuple[str, pa.DataType, bool]]] = {
    "measurements": _TRIAL_COLUMNS + [
        ("surrogate_id", pa.string(), True),  # model the attack was crafted on
        ("target_id", pa.string(), True),     # model measured: surrogate_id, or the transfer target
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
        ("n", pa.int64(), True),                # samples (images) behind the value
        ("numerator", pa.int64(), True),        # a rate's counts (adv = numerator/denominator);
        ("denominator", pa.int64(), True),      # null for values that are not rates
        ("attack_options", pa.string(), True),  # canonical JSON of the options; null: clean
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
LEGACY_COLUMNS: dict[str, tuple[str, ...]] = {
    "measurements": ("sweep", "trial_id", "task", "metric"),
    "epochs": ("sweep", "trial_id", "quantity"),
    "timings": ("sweep", "trial_id", "phase", "seconds"),
}
"""What a file without mtlsweep metadata (written before schema version 1) must have to be read
as a file of the table; without them it is a foreign file."""


def columns(table: str) -> list[tuple[str, pa.DataType, bool]]:
    """(name, Arrow type, nullable) of every core column of ``table``, in schema order."""
    check_table(table)
    return list(_COLUMNS[table])


def schema(table: str) -> pa.Schema:
    """The current Arrow schema of ``table`` (with the schema version in its metadata)."""
    check_table(table)
    fields = [pa.field(name, typ, nullable=nullable) for name, typ, nullable in _COLUMNS[table]]
    return pa.schema(fields, metadata={METADATA_KEY: str(SCHEMA_VERSION).encode(),
                                       TABLE_KEY: table.encode()})


def polars_schema(table: str) -> pl.Schema:
    """The polars view of :func:`schema` (what ``read_results`` frames always have)."""
    return pl.Schema(pl.from_arrow(schema(table).empty_table()).schema)


def check_table(table: str) -> None:
    """ValueError unless ``table`` is one of :data:`TABLES`."""
    if table not in _COLUMNS:
        raise ValueError(f"table must be one of {', '.join(TABLES)}; got {table!r}")


# --- validation ---------------------------------------------------------------------------------
def check_name(field: str, value: Any) -> str:
    """``value`` if it is a safe file-name part (a sweep or trial id: the one rule of
    `mtl.config.names`), else a ValueError naming ``field``."""
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(f"{field}: {problem}; allowed: {NAME_RULE}")
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
                  columns: dict[str, Any] | None = None, *,
                  attempt: int | None = None) -> pa.Table:
    """Rows -> an Arrow table of the current schema, or a ValueError naming the bad column.

    ``schema_version`` is filled in; ``sweep`` and ``trial_id`` (and ``attempt`` when given)
    are filled in from the arguments (a row that states a different one is an error); all rows
    of a file share one attempt. Unknown columns are errors, missing nullable columns are null,
    missing non-nullable ones are errors. ``columns`` (the trial's sweep-axis values, named by
    dotted path) are appended as constant columns after the schema's own. The table's metadata
    carries the file's key (sweep, trial_id, attempt) beside the schema version.
    """
    axis_values = dict(columns or {})
    clash = sorted(set(axis_values) & {name for name, _, _ in _COLUMNS.get(table, [])})
    if clash:
        raise ValueError(f"axis column {clash[0]!r} has the name of a core column of {table}")
    check_table(table)
    check_name("sweep", sweep)
    check_name("trial_id", trial_id)
    if not isinstance(rows, list):
        raise ValueError(f"rows must be a list of dicts; got {type(rows).__name__}")
    if attempt is not None and (isinstance(attempt, bool) or not isinstance(attempt, int)
                                or attempt < 0):
        raise ValueError(f"attempt must be an int >= 0; got {attempt!r}")
    spec = _COLUMNS[table]
    known = {name for name, _, _ in spec}
    fixed: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "sweep": sweep,
                             "trial_id": trial_id}
    if attempt is not None:
        fixed["attempt"] = attempt
    cells: dict[str, list[Any]] = {name: [] for name, _, _ in spec}
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
                cells[name].append(fixed[name])
                continue
            value = row.get(name)
            if value is None:
                if not nullable:
                    raise ValueError(f"{table} row {i}: column {name!r} is required (non-null)")
                cells[name].append(None)
                continue
            cells[name].append(_coerce(table, name, typ, value, i))
    attempts = sorted(set(cells["attempt"]))
    if len(attempts) > 1:
        raise ValueError(f"{table}: rows of attempts {attempts} in one file; a file holds one "
                         "attempt of one trial")
    file_attempt = attempt if attempt is not None else (attempts[0] if attempts else 0)
    if table == "measurements":
        for i, kind in enumerate(cells["kind"]):
            if kind not in MEASUREMENT_KINDS:
                raise ValueError(f"measurements row {i}: column 'kind' must be one of "
                                 f"{', '.join(MEASUREMENT_KINDS)}; got {kind!r}")
    arrays = [pa.array(cells[name], type=typ) for name, typ, _ in spec]
    out = pa.Table.from_arrays(arrays, schema=schema(table))
    for name in sorted(axis_values):
        value = axis_values[name]
        typ = axis_type(value)
        out = out.append_column(pa.field(name, typ, metadata={AXIS_KEY: b"1"}),
                                pa.array([value] * len(rows), type=typ))
    return out.replace_schema_metadata({
        **out.schema.metadata, SWEEP_KEY: sweep.encode(), TRIAL_KEY: trial_id.encode(),
        ATTEMPT_KEY: str(file_attempt).encode()})
