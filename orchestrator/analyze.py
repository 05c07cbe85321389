"""Polars queries over a sweep's result tables: the numbers behind the plots and report.md.

Conventions: Δ (``rel_change``) is stored as docs/design.md §2 defines it, negative = the attack
hurt, and is shown unchanged. Unless a query says otherwise it uses each trial's *final* checkpoint
(its largest epoch) and only the latest attempt of a trial. Queries that need a single attack
(transfer curves, trade-off) use a *reference attack*: DGBA if present (else total, SignSum,
minmax, then any), at its largest ε, with its most frequent method; the report names it.

A trial is one observation: values are averaged within a trial first, then across the trials
of a group, and each plotted value ``v`` comes with ``v_lo``/``v_hi``: the 95 % t-interval of
the mean over trials when 3 or more stand behind it, their min–max when 2, null for one
(:data:`INTERVAL_RULE`). Regimes (AT, ρ, any other varied setting) are never averaged together:
a query either keeps them apart or selects one and says so (a ``regime`` or ``rho`` column).
The tables are read once, into memory (orchestrator/analysis_tables.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from orchestrator.analysis_tables import (NO_LAYOUT, TRIAL, Tables, layout_info,  # noqa: F401
                                          load_tables)

PRIMARY_METRICS: dict[str, str] = {
    "segment_semantic": "miou", "depth_zbuffer": "abs_err", "normal": "angle_mean",
    "edge_texture": "l1", "keypoints2d": "l1", "scene_class": "accuracy"}
OBJECTIVE_PREFERENCE: tuple[str, ...] = ("dgba", "total", "signsum", "minmax")
INTERVAL_RULE = ("bars: 95 % t-interval of the mean over trials where n ≥ 3, min–max where "
                 "n = 2, none for one trial")
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.16, 2.145, 2.131, 2.12, 2.11, 2.101, 2.093, 2.086, 2.08, 2.074, 2.069, 2.064, 2.06,
        2.056, 2.052, 2.048, 2.045, 2.042)  # Student's t, 97.5 % quantile, df = 1..30


@dataclass(frozen=True)
class Attack:
    """One attack configuration (the reference attack of a query)."""
    method: str
    objective: str
    eps: float

    def label(self) -> str:
        return f"{self.objective} / {self.method} / ε={self.eps:g}"


# --- helpers ------------------------------------------------------------------------------------
def t95(df: int) -> float:
    """Student's t 97.5 % quantile with ``df`` degrees of freedom (within 0.001 beyond 30)."""
    return _T95[df - 1] if df <= len(_T95) else 1.96 + 2.4 / df


def _trials() -> pl.Expr:
    """Number of distinct trials (trial ids are unique within a sweep only)."""
    return pl.struct(TRIAL).n_unique().alias("trials")


def across_trials(per_trial: pl.DataFrame | pl.LazyFrame, keys: list[str],
                  values: list[str], sd: bool = False) -> pl.DataFrame:
    """Per ``keys``: the mean of each value over the rows (one per trial), ``trials`` and the
    interval ``<v>_lo``/``<v>_hi`` of :data:`INTERVAL_RULE` (``<v>_std`` too with ``sd``)."""
    aggs = [pl.len().alias("trials")]
    for v in values:
        x = pl.col(v).filter(pl.col(v).is_finite())
        aggs += [x.mean().alias(v), x.std().alias(f"{v}_std"), x.min().alias(f"_{v}_min"),
                 x.max().alias(f"_{v}_max"), x.count().alias(f"_{v}_n")]
    out = per_trial.lazy().group_by(keys).agg(aggs).collect()
    ns = {n for v in values for n in out[f"_{v}_n"].unique().to_list() if n and n >= 3}
    for v in values:
        n = pl.col(f"_{v}_n")
        half = n.replace_strict({k: t95(k - 1) for k in ns}, default=None,
                                return_dtype=pl.Float64) * pl.col(f"{v}_std") / n.sqrt()
        out = out.with_columns(
            pl.when(n >= 3).then(pl.col(v) - half).when(n == 2).then(pl.col(f"_{v}_min"))
            .alias(f"{v}_lo"),
            pl.when(n >= 3).then(pl.col(v) + half).when(n == 2).then(pl.col(f"_{v}_max"))
            .alias(f"{v}_hi"))
    drop = [c for c in out.columns if c.startswith("_") or (not sd and c.endswith("_std"))]
    return out.drop(drop)


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


def objective_family() -> pl.Expr:
    """``single:<task>`` -> ``single``; other objectives unchanged."""
    o = pl.col("objective")
    return pl.when(o.str.starts_with("single:")).then(pl.lit("single")).otherwise(o)


def final_epoch(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Only each trial's last checkpoint (its largest epoch among these rows)."""
    return frame.filter(pl.col("epoch") == pl.col("epoch").max().over(TRIAL))


def _valid_delta() -> pl.Expr:
    # NaN marks an undefined relative change (clean metric 0, see mtl.tasks): left out of means.
    return pl.col("rel_change").is_finite()


def _finite_delta(frame: pl.LazyFrame, kind: str) -> pl.LazyFrame:
    return frame.filter((pl.col("kind") == kind) & (pl.col("metric") == "delta")
                        & _valid_delta())


def standard_trials(frame: pl.LazyFrame) -> pl.LazyFrame:
    """The trials without adversarial training and with ρ = 0 (the DGBA paper's setting) when
    the sweep has any, else all; callers keep ``regime`` apart."""
    standard = frame.filter(~pl.col("adversarial") & (pl.col("rho").fill_null(0.0) == 0))
    return standard if standard.select(pl.len()).collect().item() else frame


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
    """White-box Δ (task="mean") per layout × regime × method × objective × ε: mean over
    trials, ``delta_std``, ``trials`` and the interval ``delta_lo``/``delta_hi``."""
    keys = ["layout", "branch_point", "sharing", "regime", "attack_method", "objective", "eps"]
    per = (final_epoch(_finite_delta(t.measurements, "whitebox")).filter(pl.col("task") == "mean")
           .group_by(keys + TRIAL).agg(pl.col("rel_change").mean().alias("delta")))
    out = across_trials(per, keys, ["delta"], sd=True)
    return out.sort([pl.col("sharing"), "layout", "regime", "attack_method", objective_rank(),
                     "objective", "eps"], nulls_last=True)


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
def _wide(frame: pl.DataFrame, index: list[str], intervals: bool) -> pl.DataFrame:
    """Long (index, col, value[, value_lo, value_hi]) -> one column per ``col`` (``<col>_lo``,
    ``<col>_hi`` beside it)."""
    out = frame.pivot(on="col", index=index, values="value", sort_columns=True)
    if not intervals:
        return out
    names = [c for c in out.columns if c not in index]
    for end in ("lo", "hi"):
        side = frame.pivot(on="col", index=index, values=f"value_{end}", sort_columns=True)
        out = out.join(side.rename({c: f"{c}_{end}" for c in names}), on=index, how="left",
                       nulls_equal=True)
    return out.select(*index, *[f"{c}{e}" for c in names for e in ("", "_lo", "_hi")])


def clean_metrics(t: Tables, by: list[str], intervals: bool = False) -> pl.DataFrame:
    """Clean primary metric per task (one column ``clean <task> <metric>``), mean over the
    trials of each ``by`` group (with ``intervals``, ``<column>_lo``/``_hi`` beside it)."""
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
    per = (clean.filter(keep).with_columns(pl.format("clean {} {}", "task", "metric").alias("col"))
           .group_by(by + ["col"] + TRIAL).agg(pl.col("value").mean()))
    return _wide(across_trials(per, by + ["col"], ["value"]), by, intervals)


def cross_task_long(t: Tables, by: list[str] | None = None) -> pl.DataFrame:
    """Mean Δ on task j (``target_task``) under ``single:<i>`` (``source_task``), long form,
    per ``regime`` of :func:`standard_trials` (the regime is a column, never averaged over),
    with ``trials`` and the interval ``delta_lo``/``delta_hi`` over trials."""
    by = by or []
    rows = final_epoch(_finite_delta(standard_trials(t.measurements), "cross_task")).filter(
        pl.col("objective").str.starts_with("single:") & (pl.col("task") != "mean")).collect()
    if rows.is_empty():
        return pl.DataFrame(schema={"source_task": pl.String, "target_task": pl.String,
                                    "delta": pl.Float64})
    eps = rows["eps"].max()
    rows = rows.filter(pl.col("eps") == eps)
    method = (rows.group_by("attack_method").len()
              .sort(["len", "attack_method"], descending=[True, False])["attack_method"][0])
    keys = by + ["regime"] * ("regime" not in by) + ["source_task", "target_task"]
    per = (rows.filter(pl.col("attack_method") == method)
           .with_columns(pl.col("objective").str.strip_prefix("single:").alias("source_task"),
                         pl.col("task").alias("target_task"))
           .group_by(keys + [c for c in TRIAL if c not in keys])
           .agg(pl.col("rel_change").mean().alias("delta")))
    return (across_trials(per, keys, ["delta"])
            .with_columns(pl.lit(method).alias("attack_method"), pl.lit(eps).alias("eps"))
            .sort(keys))


def cross_task_matrix(long: pl.DataFrame) -> pl.DataFrame:
    """The T×T matrix (rows: attacked task, columns: measured task) from :func:`cross_task_long`,
    one block of rows per ``regime`` when the long frame has one; ``<task>_lo``/``_hi`` beside
    each column when the long frame has intervals."""
    if long.is_empty():
        return long
    index = [c for c in ("regime", "source_task") if c in long.columns]
    out = long.pivot(on="target_task", index=index, values="delta", sort_columns=True,
                     aggregate_function="mean")
    names = [c for c in out.columns if c not in index]
    if "delta_lo" not in long.columns:
        return out.sort(index)
    for end in ("lo", "hi"):
        side = long.pivot(on="target_task", index=index, values=f"delta_{end}",
                          sort_columns=True, aggregate_function="mean")
        out = out.join(side.rename({c: f"{c}_{end}" for c in names}), on=index, how="left")
    return out.select(*index, *[f"{c}{e}" for c in names for e in ("", "_lo", "_hi")]).sort(index)


def tradeoff(t: Tables) -> tuple[pl.DataFrame, Attack | None]:
    """Per regime × layout: sharing, clean metrics, white-box Δ (reference attack), cross-task Δ,
    each with its interval over trials (``_lo``/``_hi``).

    Trials of :func:`standard_trials` only (the DGBA paper's setting), one group per regime.
    Cross-task Δ is each trial's mean off-diagonal entry: damage on tasks not attacked.
    """
    standard = standard_trials(t.measurements)
    base = Tables(standard, t.epochs, t.timings)
    keys = ["regime", "layout", "branch_point", "sharing"]
    out = standard.group_by(keys).agg(_trials()).collect()
    white = final_epoch(_finite_delta(standard, "whitebox")).filter(pl.col("task") == "mean")
    attack = reference_attack(white.select("attack_method", "objective", "eps").collect())
    clean = clean_metrics(base, keys, intervals=True)
    if clean.columns != keys:
        out = out.join(clean, on=keys, how="left", nulls_equal=True)
    per = {}
    if attack is not None:
        per["whitebox_delta"] = _only(white, attack).group_by(keys + TRIAL).agg(
            pl.col("rel_change").mean().alias("whitebox_delta"))
    cross = cross_task_long(base, TRIAL + keys)
    if not cross.is_empty():
        per["cross_task_delta"] = (
            cross.filter(pl.col("source_task") != pl.col("target_task"))
            .group_by(keys + TRIAL).agg(pl.col("delta").mean().alias("cross_task_delta")))
    for name, frame in per.items():
        values = across_trials(frame, keys, [name]).drop("trials")
        out = out.join(values, on=keys, how="left", nulls_equal=True)
    return out.sort(["regime", "sharing", "layout"], nulls_last=True), attack


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


TRANSFER = ["success_rate", "transfer_delta"]
SHARPNESS = ["lambda_max", "sam_sharpness"]


def _epoch_quantities(t: Tables, by: list[str], final: bool = False) -> pl.LazyFrame:
    """Per trial × ``by``: λ_max, SAM-sharpness, LR and whether it was decayed."""
    e = t.epochs.filter(pl.col("kept")) if final else t.epochs
    e = final_epoch(e) if final else e
    q = pl.col("quantity")
    return e.group_by(by + TRIAL).agg(
        pl.col("value").filter(q == "lambda_max").mean().alias("lambda_max"),
        pl.col("value").filter(q == "sam_sharpness").mean().alias("sam_sharpness"),
        pl.col("lr").mean().alias("lr"), pl.col("lr_decayed").any().alias("lr_decayed"))


def early_stopping(t: Tables) -> tuple[pl.DataFrame, Attack | None]:
    """Per regime × epoch: transfer success/Δ (reference attack), λ_max, SAM-sharpness with
    intervals over trials (means over the regime's layouts and seeds), LR and its decays."""
    rows, attack = _transfer(t)
    keys = ["regime", "epoch"]
    transfer = rows.group_by(keys + TRIAL).agg(*_transfer_values())
    per = _epoch_quantities(t, keys).join(transfer, on=keys + TRIAL, how="full", coalesce=True)
    out = across_trials(per, keys, TRANSFER + SHARPNESS)
    extra = per.group_by(keys).agg(pl.col("lr").mean(), pl.col("lr_decayed").any()).collect()
    return out.join(extra, on=keys, how="left").sort(keys), attack


def transfer_vs_rho(t: Tables) -> tuple[pl.DataFrame, Attack | None]:
    """Per training regime (AT and other settings, without ρ) × ρ: final-checkpoint transfer
    and λ_max with intervals over trials (means over layouts and seeds)."""
    rows, attack = _transfer(t)
    keys = ["adversarial", "base_regime", "rho"]
    transfer = final_epoch(rows).group_by(keys + TRIAL).agg(*_transfer_values())
    sharp = _epoch_quantities(t, keys, final=True).drop("lr", "lr_decayed")
    per = transfer.join(sharp, on=keys + TRIAL, how="left")
    return across_trials(per, keys, TRANSFER + SHARPNESS).sort(keys), attack


# --- 6. clean vs adversarially trained; timings -------------------------------------------------
def clean_vs_adversarial(t: Tables) -> pl.DataFrame:
    """Per training (``standard`` or the adv_train label, with any other varied setting):
    clean metrics and white-box Δ, at the sweep's smallest ρ (column ``rho``) so SAM/RFN
    trials are not averaged in. Δ columns are per objective family at each family's largest
    ε, with ``_lo``/``_hi`` intervals over trials.
    """
    label = pl.when(pl.col("adversarial")).then(pl.col("adv_train")).otherwise(
        pl.lit("standard"))
    settings = [pl.lit(f" {s}=") + pl.col(s).cast(pl.String).fill_null("–") for s in t.settings]
    m = t.measurements.filter(pl.col("rho").fill_null(0.0) == pl.col("rho").fill_null(0.0).min())
    m = m.with_columns(pl.concat_str([label, *settings]).alias("training"))
    base = Tables(m, t.epochs, t.timings)
    out = (m.group_by("training").agg(_trials(), pl.col("rho").fill_null(0.0).min())
           .collect().join(clean_metrics(base, ["training"]), on="training", how="left"))
    white = (final_epoch(_finite_delta(m, "whitebox")).filter(pl.col("task") == "mean")
             .with_columns(objective_family().alias("family"))
             .filter(pl.col("eps") == pl.col("eps").max().over("family")))
    per = (white.with_columns(pl.format("Δ {} ε={}", "family", eps_label()).alias("col"))
           .group_by(["training", "col"] + TRIAL).agg(pl.col("rel_change").mean().alias("value")))
    if per.select(pl.len()).collect().item():
        wide = _wide(across_trials(per, ["training", "col"], ["value"]), ["training"], True)
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
    """Counts for the report's header (``rows``: the measurement rows analysed)."""
    m = t.measurements.select(
        pl.col("sweep").unique().sort().implode().alias("sweeps"),
        pl.struct(TRIAL).n_unique().alias("trials"), pl.col("layout").n_unique().alias("layouts"),
        pl.len().alias("rows"),
        ((pl.col("metric") == "delta") & pl.col("rel_change").is_null()).sum()
        .alias("undefined_deltas")).collect()
    return m.row(0, named=True)


def interval_columns(frame: pl.DataFrame) -> list[str]:
    """The ``_lo``/``_hi``/``_std`` columns of a query's frame (for tables that hide them)."""
    return [c for c in frame.columns if c.endswith(("_lo", "_hi", "_std"))]


__all__ = ["Attack", "INTERVAL_RULE", "NO_LAYOUT", "TRIAL", "Tables", "across_trials",
           "clean_metrics", "clean_vs_adversarial", "cross_task_long", "cross_task_matrix",
           "delta_by_objective", "early_stopping", "eps_label", "final_epoch", "interval_columns",
           "layout_info", "load_tables", "objective_family", "objective_rank", "overview",
           "reference_attack", "standard_trials", "summary", "t95", "timings", "tradeoff",
           "transfer_vs_rho"]
