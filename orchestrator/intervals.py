"""Confidence intervals behind the claims table (orchestrator/claims.py).

Percentile bootstrap over units (trials), optionally with the samples inside each unit redrawn
as binomial counts where a rate's counts are known (a two-level bootstrap: trials, then
images); Wilson intervals for one rate and Newcombe's hybrid score interval for the difference
of two rates, both from counts; Spearman's rank correlation. numpy only (scipy is not a
dependency). Every draw comes from :func:`rng_for`, seeded by a fixed seed and the claim's own
name, so the same results always give the same report.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 97.5 % quantile
REPS = 2000
SEED = 13
MIN_UNITS = 3
"""Fewest trials a trial bootstrap is trusted with: with two, the percentile interval is just
the range of the two values (a sign test of two), so fewer trials give no verdict."""


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % interval; ``n`` is how many units stand behind it (trials
    for a bootstrap, images for an interval from counts) and ``method`` how it was computed."""
    estimate: float
    lo: float
    hi: float
    n: int
    method: str


def rng_for(*keys: str) -> np.random.Generator:
    """A generator seeded by :data:`SEED` and the CRC-32 of ``keys``: a claim and condition get
    the same draws whatever else the sweep holds and in whatever order claims are judged."""
    return np.random.default_rng([SEED, *(zlib.crc32(k.encode()) for k in keys)])


def percentile_interval(draws: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central ``level`` range of the finite bootstrap ``draws`` (NaN, NaN if none)."""
    finite = np.asarray(draws, dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    lo, hi = np.quantile(finite, [tail, 1 - tail])
    return float(lo), float(hi)


def binomial_draws(rng: np.random.Generator, rate: np.ndarray, n: np.ndarray,
                   reps: int = REPS) -> np.ndarray:
    """``reps`` redraws of each rate as Binomial(n, rate) / n, shape ``(reps, *rate.shape)``.

    Where ``n`` is missing (NaN) or below 1 the value is not a rate with counts and is repeated
    unchanged; NaN rates (no value) stay NaN."""
    rate = np.asarray(rate, dtype=float)
    n = np.broadcast_to(np.asarray(n, dtype=float), rate.shape)
    counted = np.isfinite(n) & (n >= 1) & np.isfinite(rate)
    out = np.broadcast_to(rate, (reps, *rate.shape)).copy()
    if counted.any():
        size = np.rint(n[counted]).astype(np.int64)
        p = np.clip(rate[counted], 0.0, 1.0)
        out[:, counted] = rng.binomial(size, p, size=(reps, size.size)) / size
    return out


def resample_units(rng: np.random.Generator, draws: np.ndarray) -> np.ndarray:
    """Bootstrap means over units: ``draws`` is ``(reps, U, ...)`` (each unit's value in each
    replicate, e.g. from :func:`binomial_draws`); each replicate takes U units with replacement
    and averages them (NaN entries are left out of a mean). Returns ``(reps, ...)``."""
    reps, units = draws.shape[0], draws.shape[1]
    pick = rng.integers(0, units, size=(reps, units))
    chosen = np.take_along_axis(draws, pick.reshape(reps, units, *([1] * (draws.ndim - 2))),
                                axis=1)
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(chosen)
        total = np.where(finite, chosen, 0.0).sum(axis=1)
        count = finite.sum(axis=1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def bootstrap_mean(rng: np.random.Generator, values: np.ndarray, reps: int = REPS) -> Interval:
    """Mean of per-unit ``values`` with a percentile bootstrap over the units."""
    values = np.asarray(values, dtype=float)
    draws = resample_units(rng, np.broadcast_to(values, (reps, values.size)))
    lo, hi = percentile_interval(draws)
    return Interval(float(values.mean()), lo, hi, int(values.size), "bootstrap (trials)")


def wilson(k: float, n: float, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of the rate k/n (Wilson 1927); (NaN, NaN) when n < 1."""
    if not n >= 1:
        return math.nan, math.nan
    p = k / n
    scale = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / scale
    half = z / scale * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: float, n1: float, k2: float, n2: float) -> Interval:
    """Difference of two independent rates k1/n1 − k2/n2 with Newcombe's hybrid score interval
    (1998, method 10), built from the two Wilson intervals."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1)
    l2, u2 = wilson(k2, n2)
    d = p1 - p2
    return Interval(d, d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2),
                    int(round(n1 + n2)), "newcombe (wilson)")


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, ties sharing their mean rank."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    out = np.empty(x.size)
    start = 0
    while start < x.size:
        stop = start
        while stop + 1 < x.size and sorted_x[stop + 1] == sorted_x[start]:
            stop += 1
        out[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (Pearson's on mid-ranks); NaN when x or y is constant."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / denominator) if denominator > 0 else math.nan


def bootstrap_spearman(rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                       reps: int = REPS) -> Interval:
    """Spearman's ρ of paired per-unit (x, y) with a percentile bootstrap over the units.
    Replicates whose x or y came out constant have no correlation and are left out."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    pick = rng.integers(0, x.size, size=(reps, x.size))
    draws = np.array([spearman(x[i], y[i]) for i in pick])
    lo, hi = percentile_interval(draws)
    return Interval(spearman(x, y), lo, hi, int(x.size), "spearman + bootstrap (trials)")
