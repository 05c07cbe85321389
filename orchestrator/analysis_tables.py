"""The result tables as the analysis reads them: each table read ONCE, into memory.

`mtlsweep analyze` runs a few dozen queries. Run on lazy scans of the per-trial files, each
query re-read every file (89 s and 4.8 GB at 10,000 trials, issue 12); here the footer pass
(orchestrator/results_reading.py) runs once per table, the rows are read once with polars'
streaming engine, and every query runs on the frames in memory. A sweep directory keeps a
consolidated copy of what was read (orchestrator/analysis_copy.py): the next analysis of
unchanged files reads three files instead of every trial's.

Only the rows the analysis uses are kept, so a 10,000-trial sweep fits in memory: clean rows,
success rates, mean Δ over tasks, and the per-task Δ of cross-task attacks (the matrix). The
per-task metric rows of attacks (clean/adv of each metric, per-task Δ of white-box and transfer
attacks: 85 % of the demo's rows) are not kept; ``read_results`` shows them. A trial's own
columns (layout, adv_train, ρ, seed, ...: :data:`TRIAL_LEVEL` and the axes) are kept once per
trial, not once per row, and joined to the rows by each query (``Tables`` holds lazy frames
over that memory).

Each trial also gets: ``sharing`` and ``branch_point`` (from its layout), ``adversarial`` and
``regime``: the training regime a plot never averages across, made of adversarial training, ρ
and every other trial setting the sweep varies (optimizer, training length, dataset, model, and
any ``axes:`` column except seeds), e.g. ``AT dgba-fgsm-8 ρ=0.5`` or ``standard optimizer=adam``;
``base_regime`` is the same without ρ.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import polars as pl
import pyarrow as pa

from mtl.models import Layout  # pure Python: no torch
from orchestrator import analysis_copy
from orchestrator.results_reading import (ResultFile, ResultScan, Skipped, scan_results,
                                          warn_skipped)

TRIAL = ["sweep", "trial_id"]
NO_LAYOUT = "no layout"
NOT_ADVERSARIAL = ("none", "", "false", "no", "standard")
SETTINGS = ("optimizer", "train_epochs", "dataset", "model")
"""Trial-level columns that name a regime when the sweep varies them (beside AT and ρ)."""
TRIAL_LEVEL = ("attempt", "layout", "branch_point", "adv_train", "rho", "optimizer", "seed",
               "train_epochs", "dataset", "model")
"""Columns of a trial, not of a row: kept once per trial, joined to the rows by each query."""
UNREAD = ("schema_version", "surrogate_id", "attack_options", "steps")
VALUES = {"measurements": ("clean", "adv", "rel_change"), "epochs": ("value",),
          "timings": ("seconds",)}
"""The measured values of each table: NaN (a change that is undefined), infinities and
magnitudes beyond VALUE_LIMIT are read as missing, so a mean skips them instead of becoming
NaN and a plot's axis never spans the whole float range (no metric gets near 1e100)."""
VALUE_LIMIT = 1e100
"""Measurement columns no query uses; not kept in memory."""
CHUNK_FILES = 2000
"""Files read per streaming pass: the reader's buffers stay small (10,000 files read in one
pass peaked at 1.8 GB, in passes of 2,000 at 1.2 GB, for 470 MB of rows kept)."""


@dataclass(frozen=True)
class Tables:
    """The three result tables in memory (latest attempt only; ``measurements`` holds the rows
    the analysis uses, see the module docstring), with ``sharing``, ``branch_point``,
    ``adversarial``, ``regime`` and ``base_regime`` (without ρ) added; ``settings``: the
    varied trial columns named in ``regime``; ``skipped``: the result files left out
    (corrupt, foreign, duplicate: results_reading.py)."""
    measurements: pl.LazyFrame
    epochs: pl.LazyFrame
    timings: pl.LazyFrame
    skipped: tuple[Skipped, ...] = ()
    settings: tuple[str, ...] = ()


def is_adversarial() -> pl.Expr:
    """Whether ``adv_train`` names adversarial training (not none/standard/empty)."""
    return ~pl.col("adv_train").fill_null("none").str.to_lowercase().is_in(NOT_ADVERSARIAL)


def layout_info(layouts: Iterable[str]) -> pl.DataFrame:
    """sharing in [0, 1] and branch point (if the layout is one) for each canonical string;
    both null for a string that is not a layout. (`Layout` is pure Python: no torch import.)"""
    rows = []
    for text in layouts:
        try:
            layout = Layout.parse(text)
            sharing, k = layout.sharing(), layout.branch_point_of()
        except ValueError:
            sharing, k = None, None
        rows.append({"layout": text, "sharing": sharing, "branch_point_of": k})
    return pl.DataFrame(rows, schema={"layout": pl.String, "sharing": pl.Float64,
                                      "branch_point_of": pl.Int64})


def _analysed_rows() -> pl.Expr:
    kind, metric = pl.col("kind"), pl.col("metric")
    return ((kind == "clean") | (metric == "success_rate")
            | ((metric == "delta") & ((kind == "cross_task") | (pl.col("task") == "mean"))))


def _with_kind(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Pre-``kind`` files: infer it from the attack columns (cross-task rows read as
    white-box)."""
    return frame.with_columns(pl.coalesce(
        pl.col("kind"),
        pl.when(pl.col("target_id").is_not_null()).then(pl.lit("transfer"))
        .when(pl.col("objective") == "none").then(pl.lit("clean"))
        .otherwise(pl.lit("whitebox"))).alias("kind"))


READ_ERRORS = (pl.exceptions.PolarsError, pa.ArrowException, OSError)
"""What reading a file whose footer is sound but whose data is not can raise."""


def _read(scan: ResultScan, shape: Callable[[pl.LazyFrame], pl.LazyFrame]
          ) -> tuple[pl.DataFrame, list[Skipped]]:
    """The rows of ``scan``'s files, each row read once, ``CHUNK_FILES`` files at a time,
    each pass through ``shape`` (filters and projections) with polars' streaming engine; and
    the files skipped because their data cannot be read (a damaged page behind a sound
    footer: the footer pass cannot see it). A pass that fails is read again file by file, so
    one damaged file costs only its own rows."""
    def collect(files: Sequence[ResultFile]) -> pl.DataFrame:
        return (shape(ResultScan(scan.table, tuple(files), ()).frame())
                .collect(engine="streaming"))

    parts: list[pl.DataFrame] = []
    bad: list[Skipped] = []
    for i in range(0, len(scan.files), CHUNK_FILES):
        chunk = scan.files[i:i + CHUNK_FILES]
        try:
            parts.append(collect(chunk))
            continue
        except READ_ERRORS:
            pass
        for f in chunk:
            try:
                parts.append(collect([f]))
            except READ_ERRORS as err:
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
                bad.append(Skipped(f.path, f"damaged data: its rows cannot be read ({reason})"))
    if not parts:
        return shape(ResultScan(scan.table, (), ()).frame()).collect(), bad
    frame = parts[0] if len(parts) == 1 else pl.concat(parts, how="diagonal_relaxed")
    return frame, bad


def _latest_attempt(frame: pl.DataFrame) -> pl.DataFrame:
    """Only each trial's latest attempt (one file per trial already holds one attempt, so the
    frame is copied only when an old file mixes attempts)."""
    attempt = pl.col("attempt").fill_null(0)  # files older than the attempt column
    latest = attempt == attempt.max().over(TRIAL)
    return frame if frame.select(latest.all()).item() in (True, None) else frame.filter(latest)


def _varied(trials: pl.DataFrame, names: Iterable[str]) -> list[str]:
    return [n for n in names if n in trials.columns
            and trials.select(pl.col(n).cast(pl.String).n_unique()).item() > 1]


def _trial_info(trials: pl.DataFrame, settings: list[str]) -> pl.DataFrame:
    """Per trial, in the order of ``trials``: sharing, branch_point_of, adversarial, regime and
    base_regime (the regime without ρ)."""
    info = layout_info(trials["layout"].drop_nulls().unique().sort().to_list())
    at = pl.when(is_adversarial()).then(pl.lit("AT ") + pl.col("adv_train").fill_null("")) \
        .otherwise(pl.lit("standard"))
    rho = pl.lit(" ρ=") + pl.col("rho").round(4).cast(pl.String).str.strip_suffix(".0")
    rest = [pl.lit(f" {name}=") + pl.col(name).cast(pl.String).fill_null("–")
            for name in settings]
    return (trials.join(info, on="layout", how="left", maintain_order="left")
            .with_columns(pl.concat_str([pl.when(pl.col("rho") > 0).then(at + rho)
                                         .otherwise(at), *rest]).alias("regime"),
                          pl.concat_str([at, *rest]).alias("base_regime"),
                          is_adversarial().alias("adversarial"))
            .select("sharing", "branch_point_of", "adversarial", "regime", "base_regime"))


def _trials(frames: Iterable[pl.DataFrame], level: list[str]) -> pl.DataFrame:
    """One row per trial: its key, the trial-level columns and a row index ``_trial``."""
    parts = [f.select(TRIAL + [c for c in level if c in f.columns]).unique(TRIAL)
             for f in frames]
    return (pl.concat(parts, how="diagonal_relaxed")
            .unique(TRIAL, keep="first", maintain_order=True).with_row_index("_trial"))


def _split(frame: pl.DataFrame, trials: pl.DataFrame, level: list[str]) -> pl.DataFrame:
    """``frame``'s rows without the key and the trial-level columns (stored once per trial in
    ``trials``), with the trial's ``_trial`` index; a column that varies within a trial (an
    old file) stays with the rows."""
    own = [c for c in level if c in frame.columns]
    if frame.select(TRIAL + own).unique().height != frame.select(TRIAL).unique().height:
        spread = frame.group_by(TRIAL).agg(pl.col(own).n_unique()).select(pl.col(own).max())
        own = [c for c in own if spread[c][0] <= 1]
    return (frame.lazy().join(trials.lazy().select(*TRIAL, "_trial"), on=TRIAL, how="left",
                              maintain_order="left").drop(*TRIAL, *own).collect())


def _view(rows: pl.DataFrame, trials: pl.DataFrame) -> pl.LazyFrame:
    """The rows with their trial's columns: a lazy join each query runs on its own rows."""
    right = trials.drop([c for c in trials.columns if c in rows.columns and c != "_trial"])
    return (rows.lazy().join(right.lazy(), on="_trial", how="inner", maintain_order="left")
            .drop("_trial"))


def _finite(table: str) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """The table's values (:data:`VALUES`) with NaN, infinities and |v| > VALUE_LIMIT null."""
    def shape(frame: pl.LazyFrame) -> pl.LazyFrame:
        return frame.with_columns(
            pl.when(pl.col(c).is_finite() & (pl.col(c).abs() <= VALUE_LIMIT)).then(pl.col(c))
            .otherwise(None).alias(c) for c in VALUES[table])
    return shape


def _read_all(results_dir: str | os.PathLike) -> analysis_copy.Copy:
    """The analysed rows of the three tables, split into rows and trials (frames
    ``measurements``, ``epochs``, ``timings`` and ``trials``): from the sweep's consolidated
    copy when it is current (orchestrator/analysis_copy.py), else from the per-trial files
    (then the copy is written for the next analysis)."""
    key = analysis_copy.listing_key(results_dir)
    copy = analysis_copy.load(results_dir, key) if key else None
    if copy is not None:
        return copy
    scans = [scan_results(results_dir, t) for t in ("measurements", "epochs", "timings")]
    axes = sorted({name for scan in scans for f in scan.files for name in f.axes})
    skipped = tuple(s for scan in scans for s in scan.skipped)

    def analysed(frame: pl.LazyFrame) -> pl.LazyFrame:
        frame = _with_kind(frame).filter(_analysed_rows()).drop(UNREAD, strict=False)
        return _finite("measurements")(frame)

    read = [_read(scan, analysed if scan.table == "measurements" else _finite(scan.table))
            for scan in scans]
    del scans
    m, e, timings = (_latest_attempt(frame) for frame, _ in read)
    skipped += tuple(s for _, bad in read for s in bad)
    del read
    level = [c for c in (*TRIAL_LEVEL, *axes) if c in m.columns or c in e.columns]
    trials = _trials((m, e), level)
    m, e = _split(m, trials, level), _split(e, trials, level)
    copy = analysis_copy.Copy({"measurements": m, "epochs": e, "timings": timings,
                               "trials": trials}, skipped, tuple(axes))
    if key:
        analysis_copy.save(results_dir, key, copy)
    return copy


def consolidate(results_dir: str | os.PathLike) -> bool:
    """Write a sweep directory's consolidated copy now (a sweep's last step), so its first
    analysis reads three files; False when it is not a writable sweep directory (local or a URI)."""
    key = analysis_copy.listing_key(results_dir)
    if key is None:
        return False
    _read_all(results_dir)
    return analysis_copy.exists(results_dir, key)


def load_tables(results_dir: str | os.PathLike, sweep: str | None = None) -> Tables:
    """Read the three tables under ``results_dir`` (optionally one ``sweep``) once, for
    analysis. Files that do not count are skipped, each named in a ResultsWarning and in
    ``skipped``."""
    copy = _read_all(results_dir)
    warn_skipped(copy.skipped)
    axes = [a for a in copy.axes if a.rsplit(".", 1)[-1] not in ("seed", "seeds")]
    m, e, timings, trials = (copy.frames.pop(t) for t in ("measurements", "epochs",
                                                          "timings", "trials"))
    if sweep is not None:
        trials, timings = (f.filter(pl.col("sweep") == sweep) for f in (trials, timings))
        m, e = (f.filter(pl.col("_trial").is_in(trials["_trial"].to_list())) for f in (m, e))
    # a model without layouts (a user's own) has a null layout: one named group, not null keys
    trials, m, e = (f.with_columns(pl.col("layout").fill_null(NO_LAYOUT))
                    if "layout" in f.columns else f for f in (trials, m, e))
    settings = _varied(trials, [*SETTINGS, *axes])
    trials = (trials.with_columns(_trial_info(trials, settings)).with_columns(
        pl.coalesce("branch_point", "branch_point_of").alias("branch_point"))
        .drop("branch_point_of"))
    return Tables(_view(m, trials), _view(e, trials), timings.lazy(), copy.skipped,
                  tuple(settings))
