"""Claims (c) and (d): transfer over early-stopping epochs and over the SAM/RFN radius ρ.

Transfer is the reference transfer attack's (claims_data.reference_transfer) success
rate pooled over the targets, per trial and checkpoint. With MIN_UNITS trials or more the
interval is a bootstrap over the trials: each trial's rate carries its image sampling noise,
so the trial-to-trial spread already holds it (redrawing the images as well would count that
noise twice; Davison & Hinkley 1997, §3.8). With fewer trials the interval comes from the
counts (``numerator`` / ``denominator``) alone: Newcombe's difference of two Wilson intervals,
pooled over the trials, and the row says so. The best early-stopped plain checkpoint of (d)
is chosen on the data, so each bootstrap replicate chooses it again (the selection's own
luck stays inside the interval). A sweep without success-rate rows (no scene_class) is
judged on the damage −Δ instead.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from orchestrator import claims_table as T
from orchestrator.claims_data import SHARPNESS
from orchestrator.intervals import (MIN_UNITS, Interval, bootstrap, mean_interval, newcombe,
                                    percentile_interval, rng_for, weighted_mean)

SAM_RHO = 0.05
_CELLS = {"unit": pl.String, "regime": pl.String, "setting": pl.String,
          "adversarial": pl.Boolean, "rho": pl.Float64,
          "epoch": pl.Int64, "rate": pl.Float64, "images": pl.Float64}


def transfer_cells(m: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """Per trial × epoch: ``rate`` (success rate pooled over targets, each weighted by its
    denominator; ``images``: the mean denominator when every row has its counts, else null)
    of the transfer rows of ``m`` (one attack, see claims_data.reference_transfer); and what
    ``rate`` measures. The targets score the same images, so ``images`` (not their sum over
    the targets) is what a count-based interval uses."""
    t = m.filter(pl.col("kind") == "transfer")
    if t.is_empty():
        return pl.DataFrame(schema=_CELLS), ""
    first = t.row(0, named=True)  # one attack: claims_data.read kept only its rows
    label = f"{first['objective']} / {first['attack_method']} / ε={first['eps']:g}"
    keys = ["unit", "regime", "setting", "adversarial", "rho", "epoch"]
    rates = t.filter((pl.col("metric") == "success_rate") & pl.col("adv").is_finite())
    if rates.is_empty():
        damage = (t.filter((pl.col("task") == "mean") & (pl.col("metric") == "delta")
                           & pl.col("rel_change").is_finite())
                  .group_by(keys).agg((-pl.col("rel_change")).mean().alias("rate"))
                  .with_columns(pl.lit(None, pl.Float64).alias("images")))
        return damage.select(list(_CELLS)), f"transfer damage −Δ of {label}"
    counted = (pl.col("numerator").is_not_null() & pl.col("denominator").is_not_null()
               & (pl.col("denominator") > 0)).all()
    weight = pl.col("denominator").cast(pl.Float64)
    cells = rates.group_by(keys).agg(
        pl.col("adv").mean().alias("mean_rate"),
        ((pl.col("adv") * weight).sum() / weight.sum()).alias("weighted_rate"),
        weight.mean().alias("per_target"), counted.alias("counted"))
    cells = cells.with_columns(
        pl.when("counted").then("weighted_rate").otherwise("mean_rate").alias("rate"),
        pl.when("counted").then("per_target").otherwise(None).alias("images"))
    return cells.select(list(_CELLS)), f"transfer success rate of {label}"


@dataclass(frozen=True)
class _Group:
    """One group of trials as matrices over (trial, epoch): the rate (NaN where not measured)
    and the images behind it (NaN where not counted)."""
    epochs: np.ndarray
    rate: np.ndarray
    images: np.ndarray

    @classmethod
    def of(cls, cells: pl.DataFrame) -> "_Group":
        at = cells.select((pl.col("unit").rank("dense") - 1).alias("i"),
                          (pl.col("epoch").rank("dense") - 1).alias("j"),
                          pl.col("rate").fill_null(np.nan), pl.col("images").fill_null(np.nan))
        i, j = at["i"].to_numpy(), at["j"].to_numpy()
        rate = np.full((cells["unit"].n_unique(), cells["epoch"].n_unique()), np.nan)
        images = rate.copy()
        rate[i, j], images[i, j] = at["rate"].to_numpy(), at["images"].to_numpy()
        return cls(np.sort(cells["epoch"].unique().to_numpy()), rate, images)

    @property
    def units(self) -> int:
        return self.rate.shape[0]

    def counted(self, mask: np.ndarray) -> bool:
        return bool(np.isfinite(self.images[mask]).all())

    def pooled(self, mask: np.ndarray) -> tuple[float, float]:
        """(successes, images) summed over the entries of ``mask``."""
        return (float(np.nansum((self.rate * self.images)[mask])),
                float(np.nansum(self.images[mask])))

    def final_mask(self) -> np.ndarray:
        """Each trial's last measured checkpoint."""
        seen = np.isfinite(self.rate)
        last = seen.shape[1] - 1 - np.argmax(seen[:, ::-1], axis=1)
        return np.arange(seen.shape[1])[None, :] == last[:, None]


def _nanmax(values: np.ndarray, axis: int) -> np.ndarray:
    finite = np.isfinite(values)
    best = np.where(finite, values, -np.inf).max(axis=axis)
    return np.where(finite.any(axis=axis), best, np.nan)


def _unit_means(rng: np.random.Generator, values: np.ndarray) -> np.ndarray:
    """Bootstrap replicates ``(reps,)`` or ``(reps, E)`` of the mean over trials of
    ``values`` ``(U,)`` or ``(U, E)``, resampling the trials (NaN entries left out)."""
    return bootstrap(rng, values.shape[0], lambda w: weighted_mean(w, values))


def _point(group: _Group, mask: np.ndarray) -> np.ndarray:
    """Mean rate over trials per epoch, entries outside ``mask`` left out (NaN: none)."""
    finite = mask & np.isfinite(group.rate)
    count = finite.sum(axis=0)
    total = np.where(finite, group.rate, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _finals(group: _Group) -> np.ndarray:
    """Each trial's rate at its last checkpoint, ``(U,)``."""
    return group.rate[group.final_mask()]


def _judge_difference(letter: str, condition: str, expect: str, point: float,
                      interval: Callable[[], Interval], sizes: tuple[int, ...],
                      counts: tuple[float, float, float, float], counted: bool,
                      statistic: str) -> dict:
    """A difference judged by ``interval()`` (over the trials) when each side (``sizes``:
    trials per side; one entry when both sides are the same trials) has MIN_UNITS trials,
    else by Newcombe's interval from ``counts`` (k1, n1, k2, n2, pooled over the trials),
    else not at all."""
    if min(sizes) >= MIN_UNITS:
        return T.judged(letter, condition, expect, interval(), statistic)
    k1, n1, k2, n2 = counts
    if counted and min(n1, n2) >= 1:
        return T.judged(letter, condition, expect, newcombe(k1, n1, k2, n2), statistic,
                        f"{min(sizes)} trial{'s' if min(sizes) != 1 else ''}: the interval "
                        f"covers image sampling only, pooled {n1:.0f} vs {n2:.0f} images")
    return T.too_few(letter, condition, expect, point, min(sizes), statistic)


# --- (c) ------------------------------------------------------------------------------------
def _decay_epochs(e: pl.DataFrame) -> pl.DataFrame:
    """(unit, decay): every epoch at which a trial's learning rate dropped."""
    return (e.filter(pl.col("lr_decayed")).select("unit", pl.col("epoch").alias("decay"))
            .unique().sort("unit", "decay"))


def _condition(part: str, regime: str, decays: pl.DataFrame, units: pl.Series) -> str:
    epochs = decays.filter(pl.col("unit").is_in(units.implode()))["decay"].unique().sort()
    return f"{part}, {regime}, decay at epoch {', '.join(map(str, epochs.to_list()))}"


def _peak_row(cells: pl.DataFrame, decays: pl.DataFrame, regime: str, measure: str) -> dict:
    """The decay checkpoints (per trial and decay, the first kept epoch at or after it) against
    the trial's best other checkpoint."""
    condition = _condition("transfer peak", regime, decays, cells["unit"])
    window = (cells.join(decays, on="unit").filter(pl.col("epoch") >= pl.col("decay"))
              .group_by("unit", "decay").agg(pl.col("epoch").min())
              .select("unit", "epoch").unique().with_columns(pl.lit(True).alias("window")))
    cells = cells.join(window, on=["unit", "epoch"], how="left").with_columns(
        pl.col("window").fill_null(False))
    rate = pl.col("rate")
    per_trial = (cells.group_by("unit").agg(rate.filter("window").max().alias("at"),
                                            rate.filter(~pl.col("window")).max().alias("other"))
                 .drop_nulls().sort("unit"))
    if per_trial.is_empty():
        return T.not_measured("c", condition, "no trial kept a checkpoint at or after the decay "
                              "and another one to compare it with")
    used = cells.filter(pl.col("unit").is_in(per_trial["unit"].implode()))
    pooled = (used.group_by("window", "epoch")
              .agg((rate * pl.col("images")).sum().alias("k"), pl.col("images").sum().alias("n"),
                   rate.mean().alias("mean"))
              .sort("mean", "epoch", descending=[True, False]))
    best = {flag: pooled.filter(pl.col("window") == flag).row(0, named=True)
            for flag in (True, False)}
    values = (per_trial["at"] - per_trial["other"]).to_numpy()
    statistic = (f"{measure}: the checkpoint at or right after the decay minus the best other "
                 f"checkpoint, over {values.size} trials")
    return _judge_difference(
        "c", condition, T.ABOVE, float(values.mean()),
        lambda: mean_interval(rng_for("c", condition), values), (values.size,),
        (best[True]["k"], best[True]["n"], best[False]["k"], best[False]["n"]),
        used["images"].null_count() == 0, statistic)


def _sharpness_row(e: pl.DataFrame, decays: pl.DataFrame, regime: str) -> dict | None:
    rows = e.filter(pl.col("quantity").is_in(SHARPNESS) & pl.col("value").is_finite()
                    & pl.col("unit").is_in(decays["unit"].implode()))
    if rows.is_empty():
        return None
    quantity = next(q for q in SHARPNESS if q in rows["quantity"].unique().to_list())
    values = (rows.filter(pl.col("quantity") == quantity).group_by("unit", "epoch")
              .agg(pl.col("value").mean()))
    condition = _condition(f"sharpness ({quantity}) drop", regime, decays, values["unit"])
    pairs = decays.join(values, on="unit")
    side = pl.col("value").sort_by("epoch")
    before = (pairs.filter(pl.col("epoch") < pl.col("decay")).group_by("unit", "decay")
              .agg(side.last().alias("before")))
    after = (pairs.filter(pl.col("epoch") >= pl.col("decay")).group_by("unit", "decay")
             .agg(side.first().alias("after")))
    changes = (before.join(after, on=["unit", "decay"])
               .group_by("unit").agg((pl.col("after") - pl.col("before")).mean().alias("change"))
               .sort("unit")["change"].to_numpy())
    if changes.size == 0:
        return T.not_measured("c", condition, f"no {quantity} both before and at or after the "
                              "decay")
    statistic = (f"change of {quantity} (its own units) from the last measurement before the "
                 f"decay to the first at or after it, mean over {changes.size} trials")
    return T.judged_mean("c", condition, T.BELOW, changes, statistic)


def decay_rows(cells: pl.DataFrame, measure: str, e: pl.DataFrame) -> list[dict]:
    """Claim (c) per training regime with LR decays: transfer peaks at the decay (> 0) and
    sharpness drops across it (< 0). ``cells``, ``measure``: :func:`transfer_cells`."""
    decays = _decay_epochs(e)
    if decays.is_empty():
        return [T.not_measured("c", part, "no LR decay in this sweep (training.milestones)")
                for part in ("transfer peak", "sharpness drop")]
    cells = cells.filter(pl.col("unit").is_in(decays["unit"].implode()))
    e = e.filter(pl.col("unit").is_in(decays["unit"].implode()))
    regimes = sorted(set(e["regime"].unique().to_list())
                     | set(cells["regime"].unique().to_list()))
    rows = []
    if cells.is_empty():
        rows.append(T.not_measured("c", "transfer peak", "no transfer targets in this sweep"))
    sharp = [r for regime in regimes
             if (r := _sharpness_row(e.filter(pl.col("regime") == regime), decays, regime))]
    for regime in regimes:
        part = cells.filter(pl.col("regime") == regime)
        if not part.is_empty():
            rows.append(_peak_row(part, decays, regime, measure))
    if not sharp:
        sharp = [T.not_measured("c", "sharpness drop", "no sharpness measurements in this "
                                                       "sweep (training.sharpness)")]
    return rows + sharp


# --- (d) ------------------------------------------------------------------------------------
def _compare(rfn: _Group, other: _Group, early: bool, rho: float, name: str, measure: str,
             condition: str) -> dict:
    rng = rng_for("d", condition)
    mine = rfn.final_mask()
    if early:
        candidates = ~other.final_mask() & np.isfinite(other.rate)
        if not candidates.any():
            return T.not_measured("d", condition, "the plain surrogates kept no checkpoint "
                                                  "before their last epoch")
        means = _point(other, candidates)
        best = int(np.nanargmax(means))
        theirs = candidates & (np.arange(candidates.shape[1]) == best)
        picked = float(means[best])
        their_values = np.where(candidates, other.rate, np.nan)
        which = f" (epoch {other.epochs[best]})"
    else:
        theirs = other.final_mask()
        their_values, which = _finals(other), ""
        picked = float(their_values.mean())
    point = float(_finals(rfn).mean()) - picked
    statistic = (f"{measure}: ρ={rho:g} surrogates at their last checkpoint minus {name}"
                 f"{which}, {rfn.units} vs {other.units} trials")
    counted = rfn.counted(mine) and other.counted(theirs)

    def interval() -> Interval:
        replicates = _unit_means(rng, their_values)
        best_of = _nanmax(replicates, 1) if early else replicates
        lo, hi = percentile_interval(_unit_means(rng, _finals(rfn)) - best_of)
        return Interval(point, lo, hi, rfn.units + other.units, "bootstrap (trials)")

    return _judge_difference("d", condition, T.ABOVE, point, interval,
                             (rfn.units, other.units), (*rfn.pooled(mine), *other.pooled(theirs)),
                             counted, statistic)


def rho_rows(cells: pl.DataFrame, measure: str) -> list[dict]:
    """Claim (d): each RFN ρ (> 0.05) against the best early-stopped and the fully trained
    plain (ρ = 0) surrogates and against SAM ρ = 0.05, on surrogates without AT, within each
    combination of the other varied settings. ``cells``, ``measure``: :func:`transfer_cells`."""
    if cells.is_empty():
        return [T.not_measured("d", "–", "no transfer targets in this sweep")]
    cells = cells.filter(~pl.col("adversarial"))
    rhos = sorted(set(cells["rho"].unique().to_list()))
    large = [r for r in rhos if r > SAM_RHO + 1e-9]
    if not large:
        seen = ", ".join(f"{r:g}" for r in rhos) or "none without AT"
        return [T.not_measured("d", "–", f"no surrogate with ρ > {SAM_RHO:g} (RFN); ρ in this "
                                         f"sweep: {seen}")]
    rows = []
    for setting in sorted(set(cells["setting"].unique().to_list())):
        part = cells.filter(pl.col("setting") == setting)
        plain = part.filter(pl.col("rho") == 0)
        sam = part.filter((pl.col("rho") - SAM_RHO).abs() < 1e-9)
        for rho in [r for r in large if r in set(part["rho"].unique().to_list())]:
            rfn = _Group.of(part.filter(pl.col("rho") == rho))
            for name, other, early in (("plain best early-stopped", plain, True),
                                       ("plain fully trained", plain, False),
                                       (f"SAM ρ={SAM_RHO:g} fully trained", sam, False)):
                condition = f"{setting + ', ' if setting else ''}ρ={rho:g} vs {name}"
                if other.is_empty():
                    what = "SAM ρ = 0.05" if other is sam else "plain (ρ = 0)"
                    rows.append(T.not_measured("d", condition,
                                               f"no {what} surrogate in this sweep"))
                    continue
                rows.append(_compare(rfn, _Group.of(other), early, rho, name, measure,
                                     condition))
    return rows

