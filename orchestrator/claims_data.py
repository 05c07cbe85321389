"""The rows the claims are judged from: result tables reduced to what a claim needs.

Accepts the frames of :func:`orchestrator.analyze.load_tables` (latest attempt, with
``sharing``/``branch_point`` derived from the layout) or raw result frames of schema 3
(``read_results``); what a raw frame lacks (``sharing``, a layout's branch point) is derived
here the same way. Adds ``unit`` (one trial: ``sweep/trial_id``), ``adversarial``, ``regime``
(the training regime a claim is judged within) and ``final`` (the trial's last checkpoint).
"""
from __future__ import annotations

import polars as pl

from mtl.models import Layout  # pure Python (no torch)

_NOT_ADVERSARIAL = ("none", "", "false", "no", "standard")
_MEASUREMENT_COLUMNS = ("sweep", "trial_id", "layout", "branch_point", "sharing", "adv_train",
                        "rho", "epoch", "kind", "attack_method", "objective", "eps", "task",
                        "metric", "clean", "adv", "rel_change", "n", "numerator", "denominator")
_EPOCH_COLUMNS = ("sweep", "trial_id", "adv_train", "rho", "epoch", "lr_decayed", "quantity",
                  "value")
Frame = pl.DataFrame | pl.LazyFrame


def _select(frame: Frame, wanted: tuple[str, ...]) -> pl.DataFrame:
    lazy = frame.lazy()
    names = lazy.collect_schema().names()
    return lazy.select([c for c in wanted if c in names]).collect()


def _common(frame: pl.DataFrame) -> pl.DataFrame:
    trial = pl.col("trial_id").cast(pl.String)
    unit = (pl.col("sweep").cast(pl.String) + "/" + trial) if "sweep" in frame.columns else trial
    adv_train = pl.col("adv_train").fill_null("none").cast(pl.String)
    rho = pl.col("rho").fill_null(0.0)
    return frame.with_columns(
        unit.alias("unit"), adv_train.alias("adv_train"), rho.alias("rho"),
        (~adv_train.str.to_lowercase().is_in(_NOT_ADVERSARIAL)).alias("adversarial"),
    ).with_columns(pl.format("adv_train={}, ρ={}", "adv_train",
                             pl.col("rho").round(4).cast(pl.String).str.strip_suffix(".0"))
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


def measurements(frame: Frame) -> pl.DataFrame:
    """The measurement columns the claims use, with ``unit``, ``adversarial``, ``regime``,
    ``sharing``, ``branch_point`` and ``final`` (this row is at the trial's largest epoch)."""
    m = _layout_columns(_common(_select(frame, _MEASUREMENT_COLUMNS)))
    return m.with_columns((pl.col("epoch") == pl.col("epoch").max().over("unit")).alias("final"))


def epochs(frame: Frame | None) -> pl.DataFrame:
    """The per-epoch columns the claims use (LR decays, sharpness), with ``unit`` and
    ``regime``; an empty frame when there is no epochs table."""
    schema = {"unit": pl.String, "regime": pl.String, "adversarial": pl.Boolean,
              "epoch": pl.Int64, "lr_decayed": pl.Boolean, "quantity": pl.String,
              "value": pl.Float64}
    if frame is None:
        return pl.DataFrame(schema=schema)
    e = _select(frame, _EPOCH_COLUMNS)
    if e.is_empty() or not {"trial_id", "epoch", "quantity"} <= set(e.columns):
        return pl.DataFrame(schema=schema)
    if "lr_decayed" not in e.columns:
        e = e.with_columns(pl.lit(False).alias("lr_decayed"))
    for name, dtype in (("adv_train", pl.String), ("rho", pl.Float64)):
        if name not in e.columns:
            e = e.with_columns(pl.lit(None, dtype).alias(name))
    return _common(e).select(list(schema))


def objective_family() -> pl.Expr:
    """``single:<task>`` -> ``single``; other objectives unchanged."""
    o = pl.col("objective")
    return pl.when(o.str.starts_with("single:")).then(pl.lit("single")).otherwise(o)


def eps_text(eps: float) -> str:
    """ε as in a condition: 8.0 -> "8", 0.5 -> "0.5"."""
    return f"{eps:g}"
