"""The rows the claims are judged from: result tables reduced to what a claim needs.

Accepts the frames of :func:`orchestrator.analyze.load_tables` (latest attempt, with
``sharing``/``branch_point`` derived from the layout) or raw result frames of schema 3
(``read_results``); what a raw frame lacks (``sharing``, a layout's branch point) is derived
here the same way. Adds ``unit`` (one trial: ``sweep/trial_id``), ``adversarial``,
``setting`` (the other trial settings the sweep varies: optimizer, training length, dataset,
model, ``axes:`` columns), ``regime`` (AT, ρ and ``setting``: what a claim is judged within,
so regimes are never pooled) and ``final`` (the trial's last checkpoint).
"""
from __future__ import annotations

import polars as pl

from mtl.models import Layout  # pure Python (no torch)

_NOT_ADVERSARIAL = ("none", "", "false", "no", "standard")
OBJECTIVE_PREFERENCE = ("dgba", "total", "signsum", "minmax")
PRIMARY_METRICS: dict[str, str] = {
    "segment_semantic": "miou", "depth_zbuffer": "abs_err", "normal": "angle_mean",
    "edge_texture": "l1", "keypoints2d": "l1", "scene_class": "accuracy"}
HIGHER_IS_BETTER: dict[str, bool] = {
    "miou": True, "pixel_acc": True, "accuracy": True, "within_11.25": True,
    "within_22.5": True, "within_30": True, "delta_1.25": True, "delta_1.25^2": True,
    "delta_1.25^3": True, "abs_err": False, "rel_err": False, "angle_mean": False,
    "angle_median": False, "l1": False}
"""The built-in tasks' metric directions (mtl/metrics.py, read here without importing torch);
a user's metric gets its direction from its attack rows (:func:`directions`)."""
_TRIAL_KEY = ("sweep", "trial_id")
_TRIAL_COLUMNS = ("layout", "branch_point", "sharing", "adv_train", "rho")
_ROW_COLUMNS = ("epoch", "kind", "attack_method", "objective", "eps", "task", "metric", "clean",
                "adv", "rel_change", "n", "numerator", "denominator")
SETTINGS = ("optimizer", "train_epochs", "dataset", "model")
SHARPNESS = ("lambda_max", "hessian_trace", "sam_sharpness")
"""Per-epoch sharpness quantities, the first present is used."""
_COVERED_AXES = ("training.epochs",)
_COVERED_LEAVES = ("seed", "seeds", "rho", "layout", "layouts", "branch_point", "adv_train",
                   "optimizer")
_EPOCH_INFO = ("unit", "regime", "setting", "adversarial")
Frame = pl.DataFrame | pl.LazyFrame


def _is_setting(name: str) -> bool:
    """A trial-level column other than those a claim compares (AT, ρ, layout) or pools
    (seeds): the core settings, and ``axes:`` columns (dotted paths) not covered by a core
    column."""
    if name in SETTINGS:
        return True
    return ("." in name and name not in _COVERED_AXES
            and name.rsplit(".", 1)[-1] not in _COVERED_LEAVES)


def _common(frame: pl.DataFrame) -> pl.DataFrame:
    """Adds ``unit``, ``adversarial``, ``setting`` (the varied settings, "" when none) and
    ``regime`` (AT label, ρ and ``setting``: what a claim is judged within)."""
    trial = pl.col("trial_id").cast(pl.String)
    unit = (pl.col("sweep").cast(pl.String) + "/" + trial) if "sweep" in frame.columns else trial
    adv_train = pl.col("adv_train").fill_null("none").cast(pl.String)
    rho = pl.col("rho").fill_null(0.0)
    varied = [c for c in frame.columns if _is_setting(c)
              and frame.select(pl.col(c).cast(pl.String).n_unique()).item() > 1]
    setting = (pl.concat_str([pl.lit(f"{c}=") + pl.col(c).cast(pl.String).fill_null("–")
                              for c in varied], separator=", ") if varied else pl.lit(""))
    base = pl.format("adv_train={}, ρ={}", "adv_train",
                     pl.col("rho").round(4).cast(pl.String).str.strip_suffix(".0"))
    return frame.with_columns(
        unit.alias("unit"), adv_train.alias("adv_train"), rho.alias("rho"),
        (~adv_train.str.to_lowercase().is_in(_NOT_ADVERSARIAL)).alias("adversarial"),
        setting.alias("setting"),
    ).with_columns(pl.when(pl.col("setting") == "").then(base)
                   .otherwise(pl.concat_str([base, pl.col("setting")], separator=", "))
                   .alias("regime"))


def _layout_columns(frame: pl.DataFrame) -> pl.DataFrame:
    """``sharing`` in [0, 1] and ``branch_point`` from each layout string where missing."""
    if "layout" not in frame.columns:
        return frame.with_columns(pl.lit(None, pl.Float64).alias("sharing"),
                                  pl.lit(None, pl.Int64).alias("branch_point"))
    info = []
    for text in frame["layout"].drop_nulls().unique().to_list():
        try:
            layout = Layout.parse(text)
            info.append((text, layout.sharing(), layout.branch_point_of()))
        except ValueError:
            info.append((text, None, None))
    table = pl.DataFrame(info, schema={"layout": pl.String, "_sharing": pl.Float64,
                                       "_branch": pl.Int64}, orient="row")
    out = frame.join(table, on="layout", how="left")
    sharing = (pl.coalesce("sharing", "_sharing") if "sharing" in frame.columns
               else pl.col("_sharing"))
    branch = (pl.coalesce("branch_point", "_branch") if "branch_point" in frame.columns
              else pl.col("_branch"))
    return out.with_columns(sharing.alias("sharing"), branch.alias("branch_point")).drop(
        "_sharing", "_branch")


def reference_transfer(frame: Frame) -> tuple[str, str, float] | None:
    """(method, objective, ε) of the transfer attack claims (c) and (d) read, chosen as
    report.md's reference attack is (orchestrator/analyze.py): DGBA (else total, SignSum,
    minmax, else the first by name) at its largest ε, with the method of most rows."""
    counts = (frame.lazy().filter((pl.col("kind") == "transfer")
                                  & pl.col("metric").is_in(["success_rate", "delta"]))
              .group_by("attack_method", "objective", "eps").len().collect())
    if counts.is_empty():
        return None
    objectives = set(counts["objective"].to_list())
    objective = next((o for o in OBJECTIVE_PREFERENCE if o in objectives), min(objectives))
    rows = counts.filter(pl.col("objective") == objective)
    eps = rows["eps"].max()
    method = (rows.filter(pl.col("eps") == eps)
              .sort(["len", "attack_method"], descending=[True, False])["attack_method"][0])
    return method, objective, float(eps)


def _claim_rows(transfer: tuple[str, str, float] | None) -> pl.Expr:
    """The measurement rows some claim reads (a small share of a sweep's rows): of transfer
    rows only those of the ``transfer`` attack."""
    kind, task, metric = pl.col("kind"), pl.col("task"), pl.col("metric")
    mean_delta = (task == "mean") & (metric == "delta")
    rows = ((kind == "clean") | ((kind == "whitebox") & mean_delta)
            | ((kind == "cross_task") & (metric == "delta") & (task != "mean")))
    if transfer is None:
        return rows
    method, objective, eps = transfer
    return rows | ((kind == "transfer") & ((metric == "success_rate") | mean_delta)
                   & (pl.col("attack_method") == method) & (pl.col("objective") == objective)
                   & (pl.col("eps") == eps))


def read(measurements: Frame, epochs: Frame | None = None
         ) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The measurement and epoch rows the claims use, each with the trial's ``unit``,
    ``adversarial``, ``setting``, ``regime``, ``sharing`` and ``branch_point`` (worked out once
    per trial, so both tables name a trial's regime alike); measurement rows also get ``final``
    (at the trial's largest epoch). Measurement rows: clean, white-box and cross-task Δ, and
    the reference transfer attack's (:func:`reference_transfer`); epoch rows: LR decays and
    sharpness. Rows are filtered before they are read, so a large sweep is not loaded whole."""
    lazy = measurements.lazy().filter(_claim_rows(reference_transfer(measurements)))
    names = lazy.collect_schema().names()
    key = [c for c in _TRIAL_KEY if c in names]
    trial = [c for c in _TRIAL_COLUMNS if c in names] + [c for c in names if _is_setting(c)]
    rows, trials = pl.collect_all([
        lazy.select(*key, *(c for c in _ROW_COLUMNS if c in names)),
        lazy.select(*key, *trial).unique(subset=key, keep="first")])
    info = _layout_columns(_common(trials))
    m = rows.join(info, on=key, how="left").with_columns(
        (pl.col("epoch") == pl.col("epoch").max().over("unit")).alias("final"))
    return m, _epochs(epochs, info.select(*key, *_EPOCH_INFO), key)


def _epochs(frame: Frame | None, info: pl.DataFrame, key: list[str]) -> pl.DataFrame:
    schema = {**{c: info.schema[c] for c in _EPOCH_INFO}, "epoch": pl.Int64,
              "lr_decayed": pl.Boolean, "quantity": pl.String, "value": pl.Float64}
    if frame is None:
        return pl.DataFrame(schema=schema)
    lazy = frame.lazy()
    if not {*key, "epoch", "quantity", "lr_decayed"} <= set(lazy.collect_schema().names()):
        return pl.DataFrame(schema=schema)
    rows = (lazy.filter(pl.col("lr_decayed") | pl.col("quantity").is_in(SHARPNESS))
            .select(*key, "epoch", "lr_decayed", "quantity", "value").collect())
    return rows.join(info, on=key).select(list(schema))


def directions(frame: Frame, metrics: set[str]) -> dict[str, bool]:
    """higher-is-better of each metric name in ``metrics``: the built-in flags, else read from
    the attack rows (rel_change has the sign of adv − clean exactly when higher is better);
    a metric with neither is left out."""
    unknown = sorted(set(metrics) - set(HIGHER_IS_BETTER))
    flags = {k: v for k, v in HIGHER_IS_BETTER.items() if k in metrics}
    if not unknown:
        return flags
    clean, adv, change = pl.col("clean"), pl.col("adv"), pl.col("rel_change")
    seen = (frame.lazy().filter((pl.col("kind") != "clean") & pl.col("metric").is_in(unknown)
                                & clean.is_finite() & adv.is_finite() & change.is_finite()
                                & (adv != clean) & (change != 0))
            .group_by("metric").agg(((change * (adv - clean)) > 0).mean().alias("higher"))
            .collect())
    return {**flags, **{k: v >= 0.5 for k, v in seen.iter_rows()}}


def objective_family() -> pl.Expr:
    """``single:<task>`` -> ``single``; other objectives unchanged."""
    o = pl.col("objective")
    return pl.when(o.str.starts_with("single:")).then(pl.lit("single")).otherwise(o)


def eps_text(eps: float) -> str:
    """ε as in a condition: 8.0 -> "8", 0.5 -> "0.5"."""
    return f"{eps:g}"
