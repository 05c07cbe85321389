"""Polars queries over a sweep's result tables: the numbers behind the plots and report.md.

Conventions: Δ (``rel_change``) is stored as docs/design.md §2 defines it, negative = the attack hurt,
and is shown unchanged. Unless a query says otherwise it uses each trial's *final* checkpoint
(its largest epoch) and only the latest attempt of a trial. Queries that need a single attack
(transfer curves, trade-off) use a *reference attack*: DGBA if present (else total, SignSum,
minmax, then any), at its largest ε, with its most frequent method; the report names it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable

import polars as pl

from mtl.models import Layout
from orchestrator.results_reading import Skipped, scan_results, warn_skipped

PRIMARY_METRICS: dict[str, str] = {
    "segment_semantic": "miou", "depth_zbuffer": "abs_err", "normal": "angle_mean",
    "edge_texture": "l1", "keypoints2d": "l1", "scene_class": "accuracy"}
OBJECTIVE_PREFERENCE: tuple[str, ...] = ("dgba", "total", "signsum", "minmax")
_NOT_ADVERSARIAL = ("none", "", "false", "no", "standard")
TRIAL = ["sweep", "trial_id"]
NO_LAYOUT = "no layout"


@dataclass(frozen=True)
class Tables:
    """The three result tables, latest attempt only, with ``sharing``/``regime`` columns added;
    ``skipped``: the result files left out (corrupt, foreign, duplicate: results_reading.py)."""
    measurements: pl.LazyFrame
    epochs: pl.LazyFrame
    timings: pl.LazyFrame
    skipped: tuple[Skipped, ...] = ()


@dataclass(frozen=True)
class Attack:
    """One attack configuration (the reference attack of a query)."""
    method: str
    objective: str
    eps: float

    def label(self) -> str:
        return f"{self.objective} / {self.method} / ε={self.eps:g}"


# --- loading ------------------------------------------------------------------------------------
def _layout_info(layouts: Iterable[str]) -> pl.DataFrame:
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


def _regime() -> pl.Expr:
    adversarial = _is_adversarial()
    at = pl.when(adversarial).then(pl.lit("AT ") + pl.col("adv_train")).otherwise(
        pl.lit("standard"))
    rho = pl.lit(" ρ=") + pl.col("rho").round(4).cast(pl.String)
    return pl.when(pl.col("rho") > 0).then(at + rho).otherwise(at).alias("regime")


def _is_adversarial() -> pl.Expr:
    return ~pl.col("adv_train").fill_null("none").str.to_lowercase().is_in(_NOT_ADVERSARIAL)


def _trials() -> pl.Expr:
    """Number of distinct trials (trial ids are unique within a sweep only)."""
    return pl.struct(TRIAL).n_unique().alias("trials")


def eps_label() -> pl.Expr:
    """ε as a short label: 4.0 -> "4", 0.5 -> "0.5"."""
    return pl.col("eps").round(3).cast(pl.String).str.strip_suffix(".0")


def objective_rank() -> pl.Expr:
    """Sort key: DGBA, total, SignSum, minmax, then single-task objectives, then the rest."""
    o = pl.col("objective")
    rank = pl.when(o.str.starts_with("single:")).then(pl.lit(10, pl.Int32)).otherwise(
        pl.lit(20, pl.Int32))
    for i, name in enumerate(OBJECTIVE_PREFERENCE):
        rank = pl.when(o == name).then(pl.lit(i, pl.Int32)).otherwise(rank)
    return rank


def _latest_attempt(frame: pl.LazyFrame) -> pl.LazyFrame:
    attempt = pl.col("attempt").fill_null(0)  # files older than the attempt column
    return frame.filter(attempt == attempt.max().over(TRIAL))


def load_tables(results_dir: str | os.PathLike, sweep: str | None = None) -> Tables:
    """Read the three tables under ``results_dir`` (optionally one ``sweep``) for analysis.
    Files that do not count are skipped, each named in a ResultsWarning and in ``skipped``."""
    scans = [scan_results(results_dir, t) for t in ("measurements", "epochs", "timings")]
    skipped = tuple(s for scan in scans for s in scan.skipped)
    warn_skipped(skipped)
    frames = {scan.table: scan.frame() for scan in scans}
    if sweep is not None:
        frames = {t: f.filter(pl.col("sweep") == sweep) for t, f in frames.items()}
    m, e = _latest_attempt(frames["measurements"]), _latest_attempt(frames["epochs"])
    # pre-`kind` files: infer it from the attack columns (cross-task rows read as white-box)
    m = m.with_columns(pl.coalesce(
        pl.col("kind"),
        pl.when(pl.col("target_id").is_not_null()).then(pl.lit("transfer"))
        .when(pl.col("objective") == "none").then(pl.lit("clean"))
        .otherwise(pl.lit("whitebox"))).alias("kind"))
    # a model without layouts (a user's own) has a null layout: one named group, not null keys
    m, e = (f.with_columns(pl.col("layout").fill_null(NO_LAYOUT)) for f in (m, e))
    layouts = pl.concat([m.select("layout"), e.select("layout")]).unique().collect()
    info = _layout_info(layouts["layout"].drop_nulls().to_list()).lazy()

    def enrich(frame: pl.LazyFrame) -> pl.LazyFrame:
        return (frame.join(info, on="layout", how="left")
                .with_columns(pl.coalesce("branch_point", "branch_point_of").alias("branch_point"))
                .drop("branch_point_of").with_columns(_regime(),
                                                      _is_adversarial().alias("adversarial")))
    return Tables(enrich(m), enrich(e), _latest_attempt(frames["timings"]), skipped)


def final_epoch(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Only each trial's last checkpoint (its largest epoch among these rows)."""
    return frame.filter(pl.col("epoch") == pl.col("epoch").max().over(TRIAL))


def _valid_delta() -> pl.Expr:
    # NaN marks an undefined relative change (clean metric 0, see mtl.tasks): left out of means.
    return pl.col("rel_change").is_finite()


def _finite_delta(frame: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    return frame.filter((pl.col("kind") == kind) & (pl.col("metric") == "delta")
                        & _valid_delta())


def reference_attack(frame: pl.DataFrame) -> Attack | None:
    """DGBA (else total, SignSum, minmax, any) at its largest ε with its most used method."""
    if frame.is_empty():
        return None
    objectives = set(frame["objective"].unique().to_list())
    objective = next((o for o in OBJECTIVE_PREFERENCE if o in objectives), min(objectives))
    rows = frame.filter(pl.col("objective") == objective)
    eps = rows["eps"].max()
    methods = (rows.filter(pl.col("eps") == eps).group_by("attack_method").len()
               .sort(["len", "attack_method"], descending=[True, False]))
    return Attack(methods["attack_method"][0], objective, float(eps))


def _only(frame: pl.LazyFrame, attack: Attack) -> pl.LazyFrame:
    return frame.filter((pl.col("attack_method") == attack.method)
                        & (pl.col("objective") == attack.objective) & (pl.col("eps") == attack.eps))


# --- 1. Δ by objective × ε ----------------------------------------------------------------------
def delta_by_objective(t: Tables) -> pl.DataFrame:
    """Mean white-box Δ (task="mean") per layout × regime × method × objective × ε."""
    keys = ["layout", "sharing", "regime", "attack_method", "objective", "eps"]
    return (final_epoch(_finite_delta(t.measurements, "whitebox"))
            .filter(pl.col("task") == "mean")
            .group_by(keys).agg(pl.col("rel_change").mean().alias("delta"),
                                pl.col("rel_change").std().alias("delta_std"),
                                _trials())
            .sort([pl.col("sharing"), "layout", "regime", "attack_method", objective_rank(),
                   "objective", "eps"], nulls_last=True)
            .collect())


def objective_family() -> pl.Expr:
    """``single:<task>`` -> ``single``; other objectives unchanged."""
    o = pl.col("objective")
    return pl.when(o.str.starts_with("single:")).then(pl.lit("single")).otherwise(o)


def summary(t: Tables) -> pl.DataFrame:
    """Compact headline: mean white-box Δ per objective family (rows) and ε (columns).

    ``single`` averages the single-task objectives. Averaged over layouts, regimes, methods.
    """
    rows = (final_epoch(_finite_delta(t.measurements, "whitebox"))
            .filter(pl.col("task") == "mean").with_columns(objective_family().alias("objective"))
            .group_by(["objective", "eps"]).agg(pl.col("rel_change").mean().alias("delta"),
                                                 _trials())
            .collect())
    if rows.is_empty():
        return pl.DataFrame(schema={"objective": pl.String, "trials": pl.UInt32})
    wide = (rows.sort("eps").with_columns(pl.format("Δ ε={}", eps_label()).alias("col"))
            .pivot(on="col", index="objective", values="delta"))
    trials = rows.group_by("objective").agg(pl.col("trials").max())
    return (wide.join(trials, on="objective").sort(objective_rank(), "objective")
            .select("objective", "trials", pl.exclude("objective", "trials")))


# --- 2. accuracy vs sharing ---------------------------------------------------------------------
def clean_metrics(t: Tables, by: list[str]) -> pl.DataFrame:
    """Clean primary metric per task (one column ``clean <task> <metric>``), mean over ``by``."""
    clean = final_epoch(t.measurements.filter(pl.col("kind") == "clean")).with_columns(
        pl.coalesce("clean", "adv").alias("value")).filter(pl.col("value").is_finite())
    pairs = clean.select("task", "metric").unique().collect()
    chosen = []
    for task in sorted(set(pairs["task"].to_list())):
        metrics = sorted(pairs.filter(pl.col("task") == task)["metric"].to_list())
        chosen.append((task, PRIMARY_METRICS.get(task) if PRIMARY_METRICS.get(task) in metrics
                       else metrics[0]))
    if not chosen:
        return pl.DataFrame(schema={k: t.measurements.collect_schema()[k] for k in by})
    keep = pl.any_horizontal([(pl.col("task") == a) & (pl.col("metric") == b) for a, b in chosen])
    return (clean.filter(keep).with_columns(pl.format("clean {} {}", "task", "metric").alias("col"))
            .group_by(by + ["col"]).agg(pl.col("value").mean()).collect()
            .pivot(on="col", index=by, values="value", sort_columns=True))


def cross_task_long(t: Tables, by: list[str] | None = None) -> pl.DataFrame:
    """Mean Δ on task j (``target_task``) under ``single:<i>`` (``source_task``), long form."""
    by = by or []
    rows = final_epoch(_finite_delta(t.measurements, "cross_task")).filter(
        pl.col("objective").str.starts_with("single:") & (pl.col("task") != "mean")).collect()
    if rows.is_empty():
        return pl.DataFrame(schema={"source_task": pl.String, "target_task": pl.String,
                                    "delta": pl.Float64})
    eps = rows["eps"].max()
    rows = rows.filter(pl.col("eps") == eps)
    method = (rows.group_by("attack_method").len()
              .sort(["len", "attack_method"], descending=[True, False])["attack_method"][0])
    return (rows.filter(pl.col("attack_method") == method)
            .with_columns(pl.col("objective").str.strip_prefix("single:").alias("source_task"),
                          pl.col("task").alias("target_task"))
            .group_by(by + ["source_task", "target_task"])
            .agg(pl.col("rel_change").mean().alias("delta"))
            .with_columns(pl.lit(method).alias("attack_method"), pl.lit(eps).alias("eps"))
            .sort(by + ["source_task", "target_task"]))


def cross_task_matrix(long: pl.DataFrame) -> pl.DataFrame:
    """The T×T matrix (rows: attacked task, columns: measured task) from :func:`cross_task_long`."""
    if long.is_empty():
        return long
    return long.pivot(on="target_task", index="source_task", values="delta", sort_columns=True,
                      aggregate_function="mean").sort("source_task")


def tradeoff(t: Tables) -> tuple[pl.DataFrame, Attack | None]:
    """Per layout: sharing, clean metrics, white-box Δ (reference attack), cross-task Δ.

    Standard-trained, non-SAM trials only when the sweep has any (the DGBA paper's setting).
    Cross-task Δ is the mean off-diagonal entry: damage on tasks that were not attacked.
    """
    standard = t.measurements.filter(pl.col("regime") == "standard")
    if standard.select(pl.len()).collect().item() == 0:
        standard = t.measurements
    base = Tables(standard, t.epochs, t.timings)
    keys = ["layout", "branch_point", "sharing"]
    layouts = standard.select(keys + TRIAL).group_by(keys).agg(
        _trials()).collect()
    white = final_epoch(_finite_delta(standard, "whitebox")).filter(pl.col("task") == "mean")
    attack = reference_attack(white.select("attack_method", "objective", "eps").collect())
    out = layouts.join(clean_metrics(base, keys), on=keys, how="left", nulls_equal=True)
    if attack is not None:
        wb = (_only(white, attack).group_by("layout").agg(
            pl.col("rel_change").mean().alias("whitebox_delta")).collect())
        out = out.join(wb, on="layout", how="left")
    cross = cross_task_long(base, ["layout"])
    if not cross.is_empty():
        off = (cross.filter(pl.col("source_task") != pl.col("target_task"))
               .group_by("layout").agg(pl.col("delta").mean().alias("cross_task_delta")))
        out = out.join(off, on="layout", how="left")
    return out.sort(["sharing", "layout"], nulls_last=True), attack


# --- 4./5. transfer, early stopping, ρ ----------------------------------------------------------
def _transfer(t: Tables) -> tuple[pl.LazyFrame, Attack | None]:
    rows = t.measurements.filter(pl.col("kind") == "transfer")
    attack = reference_attack(rows.select("attack_method", "objective", "eps").collect())
    return (_only(rows, attack) if attack else rows), attack


def _transfer_values() -> list[pl.Expr]:
    success = (pl.col("task") == "scene_class") & (pl.col("metric") == "success_rate")
    delta = (pl.col("task") == "mean") & (pl.col("metric") == "delta")
    return [pl.col("adv").filter(success & pl.col("adv").is_finite()).mean().alias("success_rate"),
            pl.col("rel_change").filter(delta & _valid_delta()).mean()
            .alias("transfer_delta")]


def _epoch_quantities(t: Tables, by: list[str], final: bool = False) -> pl.LazyFrame:
    e = t.epochs.filter(pl.col("kept")) if final else t.epochs
    e = final_epoch(e) if final else e
    q = pl.col("quantity")
    return e.group_by(by).agg(
        pl.col("value").filter(q == "lambda_max").mean().alias("lambda_max"),
        pl.col("value").filter(q == "sam_sharpness").mean().alias("sam_sharpness"),
        pl.col("lr").mean().alias("lr"), pl.col("lr_decayed").any().alias("lr_decayed"))


def early_stopping(t: Tables) -> tuple[pl.DataFrame, Attack | None]:
    """Per regime × epoch: transfer success/Δ (reference attack), λ_max, LR and its decays."""
    rows, attack = _transfer(t)
    keys = ["regime", "epoch"]
    transfer = rows.group_by(keys).agg(*_transfer_values(),
                                       _trials())
    out = (_epoch_quantities(t, keys).join(transfer, on=keys, how="full", coalesce=True)
           .sort(keys).collect())
    return out, attack


def transfer_vs_rho(t: Tables) -> tuple[pl.DataFrame, Attack | None]:
    """Per ρ (and adversarial training on/off): final-checkpoint transfer and λ_max."""
    rows, attack = _transfer(t)
    keys = ["adversarial", "rho"]
    transfer = final_epoch(rows).group_by(keys).agg(
        *_transfer_values(), _trials())
    sharp = _epoch_quantities(t, keys, final=True).select(keys + ["lambda_max", "sam_sharpness"])
    out = transfer.join(sharp, on=keys, how="left").sort(keys).collect()
    return out, attack


# --- 6. clean vs adversarially trained; timings -------------------------------------------------
def clean_vs_adversarial(t: Tables) -> pl.DataFrame:
    """Per training (``standard`` or the adv_train label): clean metrics and white-box Δ.

    White-box Δ columns are per objective family at each family's largest ε.
    """
    training = pl.when(pl.col("adversarial")).then(pl.col("adv_train")).otherwise(
        pl.lit("standard")).alias("training")
    m = t.measurements.with_columns(training)
    base = Tables(m, t.epochs, t.timings)
    out = (m.group_by("training").agg(_trials())
           .collect().join(clean_metrics(base, ["training"]), on="training", how="left"))
    white = (final_epoch(_finite_delta(m, "whitebox")).filter(pl.col("task") == "mean")
             .with_columns(objective_family().alias("family"))
             .filter(pl.col("eps") == pl.col("eps").max().over("family")).collect())
    if not white.is_empty():
        wide = (white.with_columns(pl.format("Δ {} ε={}", "family", eps_label())
                                   .alias("col"))
                .pivot(on="col", index="training", values="rel_change",
                       aggregate_function="mean", sort_columns=True))
        out = out.join(wide, on="training", how="left")
    rows, attack = _transfer(base)
    if attack is not None:
        tr = final_epoch(rows).group_by("training").agg(*_transfer_values()).collect()
        out = out.join(tr, on="training", how="left")
    return out.sort(pl.col("training") != "standard", "training")


def timings(t: Tables) -> pl.DataFrame:
    """Seconds per phase: total, mean per trial, and the number of trials."""
    return (t.timings.group_by("phase").agg(
        pl.col("seconds").sum().alias("total_s"), pl.col("seconds").mean().alias("mean_s"),
        _trials()).sort("total_s", descending=True).collect())


def overview(t: Tables) -> dict[str, object]:
    """Counts for the report's header."""
    m = t.measurements.select(
        pl.col("sweep").unique().sort().implode().alias("sweeps"),
        pl.struct(TRIAL).n_unique().alias("trials"), pl.col("layout").n_unique().alias("layouts"),
        pl.len().alias("rows"),
        ((pl.col("metric") == "delta") & pl.col("rel_change").is_nan()).sum()
        .alias("undefined_deltas")).collect()
    return m.row(0, named=True)
