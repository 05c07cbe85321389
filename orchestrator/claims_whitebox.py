"""Claims (a) and (b): DGBA against the other objectives, and what sharing buys and costs.

(a) pairs each DGBA Δ with the other objective's Δ of the same trial, epoch, method and ε, so
trial-to-trial differences cancel; the per-trial mean difference is bootstrapped over trials.
(b) ranks each trial's layout (branch point, else shared fraction) against its clean score
and its cross-task damage within one training regime, with a bootstrap over trials.
Both read per-trial aggregates (a Δ over n images), so sampling noise reaches the interval
only through the trial-to-trial spread; fewer than MIN_UNITS trials give no verdict.
"""
from __future__ import annotations

import polars as pl

from orchestrator import claims_table as T
from orchestrator.claims_data import PRIMARY_METRICS, eps_text, objective_family
from orchestrator.intervals import MIN_UNITS, rng_for, spearman, spearman_interval

VERSUS: dict[str, str] = {"single": "best SINGLE",
                          "total": "TOTAL", "signsum": "SignSum"}


# --- (a) ------------------------------------------------------------------------------------
def _per_objective(m: pl.DataFrame) -> pl.DataFrame:
    """Mean white-box Δ per trial, epoch, method, ε and objective family; for ``single`` the
    lowest (strongest) single-task objective of that trial and epoch."""
    w = m.filter((pl.col("kind") == "whitebox") & (pl.col("task") == "mean")
                 & (pl.col("metric") == "delta") & pl.col("rel_change").is_finite()
                 & (objective_family().is_in(["dgba", *VERSUS])))
    keys = ["unit", "adversarial", "adv_train", "epoch", "attack_method", "eps", "family"]
    return (w.with_columns(objective_family().alias("family"))
            .group_by(keys + ["objective"]).agg(pl.col("rel_change").mean())
            .group_by(keys).agg(pl.col("rel_change").min().alias("delta")))


def dgba_rows(m: pl.DataFrame) -> list[dict]:
    """Claim (a): Δ(DGBA) − Δ(other) < 0 per method × ε × (standard | AT) × other objective."""
    per = _per_objective(m)
    if per.is_empty():
        return [T.not_measured("a", "–", "no white-box attack measurements in this sweep")]
    families = set(per["family"].unique().to_list())
    if "dgba" not in families:
        return [T.not_measured("a", "–", "no DGBA attack in this sweep")]
    pair_keys = ["unit", "epoch", "attack_method", "eps"]
    dgba = per.filter(pl.col("family") == "dgba").drop("family").rename({"delta": "dgba"})
    several_methods = dgba["attack_method"].n_unique() > 1
    rows = [T.not_measured("a", f"vs={vs}", f"no {vs} attack in this sweep")
            for vs in VERSUS if vs not in families]
    versus = [vs for vs in VERSUS if vs in families]
    for training, adversarial in (("none", False), ("AT", True)):
        part = dgba.filter(pl.col("adversarial") == adversarial)
        if part.is_empty():
            what = "adversarially trained" if adversarial else "standard-trained"
            rows.append(T.not_measured("a", f"adv_train={training}",
                                       f"no {what} models in this sweep"))
            continue
        labels = sorted(set(part["adv_train"].unique().to_list()))
        note = f"pooled over {', '.join(labels)}" if adversarial and len(labels) > 1 else ""
        configs = part.select("attack_method", "eps").unique().sort("attack_method", "eps")
        for method, eps in configs.iter_rows():
            here = part.filter((pl.col("attack_method") == method) & (pl.col("eps") == eps))
            for vs in versus:
                other = per.filter(pl.col("family") == vs).select(*pair_keys, "delta")
                pairs = here.join(other, on=pair_keys)
                condition = (f"{f'method={method}, ' if several_methods else ''}"
                             f"eps={eps_text(eps)}, adv_train={training}, vs={vs}")
                if pairs.is_empty():
                    rows.append(T.not_measured("a", condition, f"no {vs} attack paired with "
                                               "DGBA at this ε and method"))
                    continue
                units = (pairs.group_by("unit").agg((pl.col("dgba") - pl.col("delta")).mean())
                         .sort("unit"))
                values = units["dgba"].to_numpy()
                epochs = pairs["epoch"].n_unique()
                statistic = (f"Δ(DGBA) − Δ({VERSUS[vs]}), mean over {values.size} trials "
                             f"paired by trial and epoch ({epochs} epoch"
                             f"{'s' if epochs != 1 else ''})")
                rows.append(T.judged_mean("a", condition, T.BELOW, values, statistic, note))
    return rows


# --- (b) ------------------------------------------------------------------------------------
def clean_scores(m: pl.DataFrame, flags: dict[str, bool]) -> pl.DataFrame:
    """Per trial (final checkpoint): the mean over tasks of the primary clean metric's signed
    relative difference from its regime's mean (positive = better than that regime's average).
    ``flags``: higher-is-better per metric (claims_data.directions); tasks whose metrics have
    no direction are left out."""
    c = (m.filter(pl.col("final") & (pl.col("kind") == "clean") & (pl.col("task") != "mean"))
         .with_columns(pl.coalesce("clean", "adv").alias("value"))
         .filter(pl.col("value").is_finite() & pl.col("metric").is_in(list(flags))))
    chosen = []
    for task in sorted(set(c["task"].unique().to_list())):
        metrics = sorted(set(c.filter(pl.col("task") == task)["metric"].unique().to_list()))
        primary = PRIMARY_METRICS.get(task)
        chosen.append((task, primary if primary in metrics else metrics[0]))
    if not chosen:
        return pl.DataFrame(schema={"unit": pl.String, "regime": pl.String, "y": pl.Float64})
    pick = pl.any_horizontal([(pl.col("task") == t) & (pl.col("metric") == k) for t, k in chosen])
    sign = pl.col("metric").replace_strict({k: 1.0 if v else -1.0 for k, v in flags.items()},
                                           return_dtype=pl.Float64)
    per_task = (c.filter(pick).group_by("unit", "regime", "task", "metric")
                .agg(pl.col("value").mean())
                .with_columns(pl.col("value").mean().over("regime", "task").alias("centre"))
                .filter(pl.col("centre") != 0))
    return (per_task.with_columns((sign * (pl.col("value") - pl.col("centre"))
                                   / pl.col("centre").abs()).alias("y"))
            .group_by("unit", "regime").agg(pl.col("y").mean()))


def cross_damage(m: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """Per trial (final checkpoint): −mean Δ on the tasks a single-task attack did not target,
    for the largest ε and its most used method; and that attack's label."""
    rows = m.filter(pl.col("final") & (pl.col("kind") == "cross_task")
                    & pl.col("objective").str.starts_with("single:") & (pl.col("task") != "mean")
                    & (pl.col("metric") == "delta") & pl.col("rel_change").is_finite()
                    & (pl.col("objective").str.strip_prefix("single:") != pl.col("task")))
    if rows.is_empty():
        return pl.DataFrame(schema={"unit": pl.String, "regime": pl.String, "y": pl.Float64}), ""
    rows = rows.filter(pl.col("eps") == rows["eps"].max())
    method = (rows.group_by("attack_method").len()
              .sort(["len", "attack_method"], descending=[True, False])["attack_method"][0])
    damage = (rows.filter(pl.col("attack_method") == method).group_by("unit", "regime")
              .agg((-pl.col("rel_change")).mean().alias("y")))
    return damage, f"{method} ε={eps_text(rows['eps'][0])}"


def sharing_rows(m: pl.DataFrame, flags: dict[str, bool]) -> list[dict]:
    """Claim (b): Spearman ρ of sharing with the clean score and with cross-task damage > 0,
    per training regime that has at least two layouts."""
    layouts = (m.filter(pl.col("final") & pl.col("sharing").is_not_null())
               .group_by("unit", "regime").agg(pl.col("sharing").first(),
                                               pl.col("branch_point").first(),
                                               pl.col("layout").first()))
    damage, attack = cross_damage(m)
    parts = (("clean accuracy", clean_scores(m, flags), "clean measurements",
              "the clean score (primary metrics, signed, relative to the regime mean)"),
             ("cross-task damage", damage, "cross-task measurements",
              f"cross-task damage (−Δ on the tasks not attacked, {attack})"))
    if layouts.is_empty():
        return [T.not_measured("b", part, "the model has no sharing layouts (layout is not a "
                                          "layout string)") for part, *_ in parts]
    regimes = (layouts.group_by("regime").agg(pl.col("layout").n_unique().alias("layouts"))
               .filter(pl.col("layouts") >= 2)["regime"].sort().to_list())
    if not regimes:
        return [T.not_measured("b", part, "only one layout in each training regime"
                               if layouts["layout"].n_unique() > 1 else "only one layout")
                for part, *_ in parts]
    rows = []
    for part, values, measured, what in parts:
        if values.is_empty():
            rows.append(T.not_measured("b", part, f"no {measured} in this sweep"))
            continue
        for regime in regimes:
            g = (layouts.filter(pl.col("regime") == regime)
                 .join(values, on=["unit", "regime"]).sort("unit"))
            by_branch = g.height > 0 and g["branch_point"].null_count() == 0
            x_name = "branch point" if by_branch else "shared fraction"
            condition = f"{part}, {regime}, x={x_name}"
            if g.height == 0 or g["layout"].n_unique() < 2:
                rows.append(T.not_measured("b", condition, f"{measured} of fewer than two "
                                                           "layouts in this regime"))
                continue
            x = g["branch_point" if by_branch else "sharing"].cast(pl.Float64).to_numpy()
            y = g["y"].to_numpy()
            statistic = (f"Spearman ρ of the {x_name} and {what} over {g.height} trials, "
                         f"{g['layout'].n_unique()} layouts")
            if g.height < MIN_UNITS:
                rows.append(T.too_few("b", condition, T.ABOVE, spearman(x, y), g.height,
                                      statistic))
                continue
            rows.append(T.judged("b", condition, T.ABOVE,
                                 spearman_interval(rng_for("b", condition), x, y), statistic))
    return rows
