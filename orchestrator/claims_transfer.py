"""Claims (c) and (d): transfer over early-stopping epochs and over the SAM/RFN radius ρ.

Transfer is the reference transfer attack's (orchestrator.analyze.reference_attack) success
rate pooled over the targets, per trial and checkpoint; its counts (``numerator`` /
``denominator``) let the bootstrap redraw the images inside each trial as binomial counts
(trials, then images). With fewer than MIN_UNITS trials the interval comes from the counts
alone (Newcombe's difference of two Wilson intervals, pooled over the trials), and says so.
A sweep without success-rate rows (no scene_class) is judged on the damage −Δ instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from orchestrator import claims_table as T
from orchestrator.analyze import reference_attack
from orchestrator.intervals import (MIN_UNITS, REPS, Interval, binomial_draws, newcombe,
                                    percentile_interval, resample_units, rng_for)

SAM_RHO = 0.05
SHARPNESS = ("lambda_max", "hessian_trace", "sam_sharpness")
_CELLS = {"unit": pl.String, "regime": pl.String, "adversarial": pl.Boolean, "rho": pl.Float64,
          "epoch": pl.Int64, "rate": pl.Float64, "images": pl.Float64}


def transfer_cells(m: pl.DataFrame) -> tuple[pl.DataFrame, str]:
    """Per trial × epoch: ``rate`` (success rate pooled over targets; ``images`` behind it when
    counted, else null) for the reference transfer attack; and what ``rate`` measures."""
    t = m.filter(pl.col("kind") == "transfer")
    attack = reference_attack(t.select("attack_method", "objective", "eps"))
    if attack is None:
        return pl.DataFrame(schema=_CELLS), ""
    t = t.filter((pl.col("attack_method") == attack.method)
                 & (pl.col("objective") == attack.objective) & (pl.col("eps") == attack.eps))
    keys = ["unit", "regime", "adversarial", "rho", "epoch"]
    rates = t.filter((pl.col("metric") == "success_rate") & pl.col("adv").is_finite())
    if rates.is_empty():
        damage = (t.filter((pl.col("task") == "mean") & (pl.col("metric") == "delta")
                           & pl.col("rel_change").is_finite())
                  .group_by(keys).agg((-pl.col("rel_change")).mean().alias("rate"))
                  .with_columns(pl.lit(None, pl.Float64).alias("images")))
        return damage.select(list(_CELLS)), f"transfer damage −Δ of {attack.label()}"
    counted = (pl.col("numerator").is_not_null() & pl.col("denominator").is_not_null()
               & (pl.col("denominator") > 0)).all()
    cells = rates.group_by(keys).agg(
        pl.col("adv").mean().alias("mean_rate"), pl.col("numerator").sum(),
        pl.col("denominator").sum(), pl.col("denominator").mean().alias("per_target"),
        counted.alias("counted"))
    cells = cells.with_columns(
        pl.when("counted").then(pl.col("numerator") / pl.col("denominator"))
        .otherwise("mean_rate").alias("rate"),
        pl.when("counted").then(pl.col("per_target").cast(pl.Float64)).otherwise(None)
        .alias("images"))
    return cells.select(list(_CELLS)), f"transfer success rate of {attack.label()}"


@dataclass(frozen=True)
class _Group:
    """One group of trials as matrices over (trial, epoch): the rate (NaN where not measured)
    and the images behind it (NaN where not counted)."""
    epochs: np.ndarray
    rate: np.ndarray
    images: np.ndarray

    @classmethod
    def of(cls, cells: pl.DataFrame) -> "_Group":
        epochs = np.array(sorted(set(cells["epoch"].to_list())))
        units = sorted(set(cells["unit"].to_list()))
        rate = np.full((len(units), epochs.size), np.nan)
        images = np.full_like(rate, np.nan)
        row = {u: i for i, u in enumerate(units)}
        for unit, epoch, value, n in cells.select("unit", "epoch", "rate", "images").iter_rows():
            i, j = row[unit], int(np.searchsorted(epochs, epoch))
            rate[i, j] = value
            images[i, j] = np.nan if n is None else n
        return cls(epochs, rate, images)

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


def _means(group: _Group, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates (reps, epochs) of the mean rate over trials, entries outside
    ``mask`` left out: trials resampled, each rate redrawn from its images."""
    rate = np.where(mask, group.rate, np.nan)
    return resample_units(rng, binomial_draws(rng, rate, group.images, REPS))


def _point(group: _Group, mask: np.ndarray) -> np.ndarray:
    """Mean rate over trials per epoch, entries outside ``mask`` left out (NaN: none)."""
    finite = mask & np.isfinite(group.rate)
    count = finite.sum(axis=0)
    total = np.where(finite, group.rate, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _final_draws(group: _Group, rng: np.random.Generator) -> tuple[float, np.ndarray]:
    """The mean over trials of each trial's last checkpoint, and its bootstrap replicates."""
    last = group.final_mask()
    rate = np.where(last, group.rate, np.nan)[last]
    images = group.images[last]
    return float(rate.mean()), resample_units(rng, binomial_draws(rng, rate, images, REPS))


def _judge_difference(letter: str, condition: str, expect: str, point: float,
                      draws: np.ndarray, sizes: tuple[int, int], counts: tuple | None,
                      counted: bool, statistic: str) -> dict:
    """Bootstrap when each side (``sizes``: trials per side; one entry when both sides are
    the same trials) has MIN_UNITS trials, else Newcombe from ``counts`` (k1, n1, k2, n2),
    else no verdict."""
    if min(sizes) >= MIN_UNITS:
        lo, hi = percentile_interval(draws)
        method = "bootstrap (trials × binomial)" if counted else "bootstrap (trials)"
        return T.judged(letter, condition, expect, Interval(point, lo, hi, sum(sizes), method),
                        statistic)
    if counted and counts is not None and min(counts[1], counts[3]) >= 1:
        k1, n1, k2, n2 = counts
        return T.judged(letter, condition, expect, newcombe(k1, n1, k2, n2), statistic,
                        f"{min(sizes)} trial{'s' if min(sizes) != 1 else ''}: the interval "
                        f"covers image sampling only, pooled {n1:.0f} vs {n2:.0f} images")
    return T.too_few(letter, condition, expect, point, min(sizes), statistic)


# --- (c) ------------------------------------------------------------------------------------
def _decay_epochs(e: pl.DataFrame) -> dict[str, list[int]]:
    decays = e.filter(pl.col("lr_decayed")).group_by("unit").agg(pl.col("epoch").unique().sort())
    return {unit: epochs for unit, epochs in decays.iter_rows()}


def _peak_row(cells: pl.DataFrame, decays: dict[str, list[int]], regime: str,
              measure: str) -> dict:
    part = cells.filter(pl.col("unit").is_in(list(decays)))
    group = _Group.of(part)
    units = sorted(set(part["unit"].to_list()))
    window = np.zeros(group.rate.shape, dtype=bool)
    for i, unit in enumerate(units):
        kept = group.epochs[np.isfinite(group.rate[i])]
        for d in decays[unit]:
            after = kept[kept >= d]
            if after.size:
                window[i, np.searchsorted(group.epochs, after.min())] = True
    measured = np.isfinite(group.rate)
    others = measured & ~window
    usable = window.any(axis=1) & others.any(axis=1)
    epochs = sorted({d for unit in units for d in decays[unit]})
    condition = f"transfer peak, {regime}, decay at epoch {', '.join(map(str, epochs))}"
    if not usable.any():
        return T.not_measured("c", condition, "no trial kept a checkpoint at or after the decay "
                              "and another one to compare it with")
    group = _Group(group.epochs, group.rate[usable], group.images[usable])
    window, others = window[usable], others[usable]
    rng = rng_for("c", condition)
    draws = binomial_draws(rng, group.rate, group.images, REPS)
    per_unit = (_nanmax(np.where(window, draws, np.nan), 2)
                - _nanmax(np.where(others, draws, np.nan), 2))
    point = float(np.mean(_nanmax(np.where(window, group.rate, np.nan), 1)
                          - _nanmax(np.where(others, group.rate, np.nan), 1)))
    in_rates, out_rates = _point(group, window), _point(group, others)
    best_in, best_out = int(np.nanargmax(in_rates)), int(np.nanargmax(out_rates))
    k1, n1 = group.pooled(window & (np.arange(window.shape[1]) == best_in))
    k2, n2 = group.pooled(others & (np.arange(window.shape[1]) == best_out))
    statistic = (f"{measure}: the checkpoint at or right after the decay minus the best other "
                 f"checkpoint, mean over {group.units} trials")
    return _judge_difference("c", condition, T.ABOVE, point, resample_units(rng, per_unit),
                             (group.units,), (k1, n1, k2, n2),
                             group.counted(measured), statistic)


def _sharpness_row(e: pl.DataFrame, decays: dict[str, list[int]], regime: str) -> dict | None:
    rows = e.filter(pl.col("quantity").is_in(SHARPNESS) & pl.col("value").is_finite()
                    & pl.col("unit").is_in(list(decays)))
    if rows.is_empty():
        return None
    quantity = next(q for q in SHARPNESS if q in rows["quantity"].to_list())
    epochs = sorted({d for unit in set(rows["unit"].to_list()) for d in decays[unit]})
    condition = (f"sharpness ({quantity}) drop, {regime}, decay at epoch "
                 f"{', '.join(map(str, epochs))}")
    changes = []
    for unit, series in (rows.filter(pl.col("quantity") == quantity)
                         .group_by("unit", "epoch").agg(pl.col("value").mean())
                         .sort("unit", "epoch")
                         .group_by("unit", maintain_order=True)):
        by_epoch = dict(zip(series["epoch"].to_list(), series["value"].to_list()))
        steps = []
        for d in decays[unit[0]]:
            before = [k for k in by_epoch if k < d]
            after = [k for k in by_epoch if k >= d]
            if before and after and by_epoch[max(before)] != 0:
                b, a = by_epoch[max(before)], by_epoch[min(after)]
                steps.append((a - b) / abs(b))
        if steps:
            changes.append(float(np.mean(steps)))
    if not changes:
        return T.not_measured("c", condition, f"no {quantity} both before and at or after the "
                              "decay")
    statistic = (f"relative change of {quantity} from the last measurement before the decay "
                 f"to the first at or after it, mean over {len(changes)} trials")
    return T.judged_mean("c", condition, T.BELOW, np.array(changes), statistic)


def decay_rows(m: pl.DataFrame, e: pl.DataFrame) -> list[dict]:
    """Claim (c) per training regime with LR decays: transfer peaks at the decay (> 0) and
    sharpness drops across it (< 0)."""
    decays = _decay_epochs(e)
    if not decays:
        return [T.not_measured("c", part, "no LR decay in this sweep (training.milestones)")
                for part in ("transfer peak", "sharpness drop")]
    cells, measure = transfer_cells(m)
    regimes = sorted(set(e.filter(pl.col("unit").is_in(list(decays)))["regime"].to_list()))
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
def _compare(rfn: _Group, other: _Group, early: bool, rho: float, name: str,
             measure: str) -> dict:
    condition = f"ρ={rho:g} vs {name}"
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
        their_draws = _nanmax(_means(other, candidates, rng), 1)
        which = f" (epoch {other.epochs[best]}, re-chosen in each replicate)"
    else:
        theirs = other.final_mask()
        (picked, their_draws), which = _final_draws(other, rng), ""
    ours, ours_draws = _final_draws(rfn, rng)
    point = ours - picked
    draws = ours_draws - their_draws
    statistic = (f"{measure}: ρ={rho:g} surrogates at their last checkpoint minus {name}"
                 f"{which}, {rfn.units} vs {other.units} trials")
    counted = rfn.counted(mine) and other.counted(theirs)
    return _judge_difference("d", condition, T.ABOVE, point, draws, (rfn.units, other.units),
                             (*rfn.pooled(mine), *other.pooled(theirs)), counted, statistic)


def rho_rows(m: pl.DataFrame) -> list[dict]:
    """Claim (d): each RFN ρ (> 0.05) against the best early-stopped and the fully trained
    plain (ρ = 0) surrogates and against SAM ρ = 0.05, on surrogates without AT."""
    cells, measure = transfer_cells(m)
    if cells.is_empty():
        return [T.not_measured("d", "–", "no transfer targets in this sweep")]
    cells = cells.filter(~pl.col("adversarial"))
    rhos = sorted(set(cells["rho"].to_list()))
    large = [r for r in rhos if r > SAM_RHO + 1e-9]
    if not large:
        seen = ", ".join(f"{r:g}" for r in rhos) or "none without AT"
        return [T.not_measured("d", "–", f"no surrogate with ρ > {SAM_RHO:g} (RFN); ρ in this "
                                         f"sweep: {seen}")]
    plain = cells.filter(pl.col("rho") == 0)
    sam = cells.filter((pl.col("rho") - SAM_RHO).abs() < 1e-9)
    rows = []
    for rho in large:
        rfn = _Group.of(cells.filter(pl.col("rho") == rho))
        for name, other, early in (("plain best early-stopped", plain, True),
                                   ("plain fully trained", plain, False),
                                   (f"SAM ρ={SAM_RHO:g} fully trained", sam, False)):
            if other.is_empty():
                what = "SAM ρ = 0.05" if other is sam else "plain (ρ = 0)"
                rows.append(T.not_measured("d", f"ρ={rho:g} vs {name}",
                                           f"no {what} surrogate in this sweep"))
                continue
            rows.append(_compare(rfn, _Group.of(other), early, rho, name, measure))
    return rows

