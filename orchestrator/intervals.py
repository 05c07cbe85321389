"""Confidence intervals behind the claims table (orchestrator/claims.py).

Percentile bootstrap over units (trials; each replicate is a block of unit counts, so large
sweeps are resampled without copying their values), Wilson intervals for one rate and
Newcombe's hybrid score interval for the difference of two rates, both from counts, and
Spearman's rank correlation. numpy only (scipy is not a
dependency). Every draw comes from :func:`rng_for`, seeded by a fixed seed and the claim's own
name, so the same results always give the same report.
"""
from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
Z = 1.959963984540054  # the standard normal's 97.5 % quantile
REPS = 2000
SEED = 13
BLOCK = 2_000_000
"""Elements of one block of bootstrap replicates (see :func:`bootstrap`)."""
LARGE_UNITS = 500
"""From this many units on, the interval of a mean or of a rank correlation is its normal
limit, the interval the percentile bootstrap converges to (equal to it within the bootstrap's
own Monte-Carlo error at this size, see tests/test_claims.py), so a sweep of 10,000 trials is
judged in seconds instead of resampling reps × trials values per condition."""
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


def bootstrap(rng: np.random.Generator, units: int,
              statistic: Callable[[np.ndarray], np.ndarray], *, inner: int = 1,
              reps: int = REPS) -> np.ndarray:
    """``reps`` bootstrap replicates of ``statistic(weights)`` over ``units`` units.

    ``weights`` is a ``(k, units)`` block of counts: how often each unit was drawn (with
    replacement) in each of k replicates, which gives the statistic of the resample without
    copying the data. Blocks are sized so that ``k · units · inner`` stays near
    :data:`BLOCK`, which bounds memory on sweeps of many trials; ``statistic`` returns
    ``(k, ...)``."""
    block = max(1, BLOCK // max(1, units * inner))
    out, done = [], 0
    while done < reps:
        k = min(block, reps - done)
        kind = np.int32 if k * units < 2**31 else np.int64
        picks = rng.integers(0, units, size=(k, units), dtype=kind)
        picks += (units * np.arange(k, dtype=kind))[:, None]  # replicate r counts in row r
        out.append(statistic(np.bincount(picks.ravel(), minlength=k * units).reshape(k, units)))
        done += k
    return np.concatenate(out)


def weighted_mean(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each replicate's mean over units of ``values`` ``(U,)`` or ``(U, E)``, unit i counted
    ``weights[:, i]`` times: ``(k,)`` or ``(k, E)``. NaN values are left out of a mean (NaN
    where nothing is left). Two matrix products, so no ``(k, U, E)`` array is built."""
    finite = np.isfinite(values)
    w = weights.astype(float)
    total = w @ np.where(finite, values, 0.0)
    count = w @ finite.astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def mean_interval(rng: np.random.Generator, values: np.ndarray, reps: int = REPS,
                  large: int = LARGE_UNITS) -> Interval:
    """Mean of per-unit ``values`` with a percentile bootstrap over the units, or, from
    ``large`` units on, its normal limit (mean ± z · standard error)."""
    values = np.asarray(values, dtype=float)
    mean = float(values.mean())
    if values.size >= large:
        half = Z * float(values.std(ddof=1)) / math.sqrt(values.size)
        return Interval(mean, mean - half, mean + half, int(values.size), "normal (trials)")
    draws = bootstrap(rng, values.size, lambda w: (w @ values) / values.size, reps=reps)
    lo, hi = percentile_interval(draws)
    return Interval(mean, lo, hi, int(values.size), "bootstrap (trials)")


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


def _ranks(x: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mid-ranks ``(k, U)`` of each unit in each replicate where unit i appears
    ``weights[:, i]`` times (ties share their mean rank)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    new_value = np.r_[True, ordered[1:] != ordered[:-1]]
    group = np.empty(x.size, dtype=np.int64)
    group[order] = np.cumsum(new_value) - 1
    counts = np.add.reduceat(weights[:, order], np.flatnonzero(new_value), axis=1)
    mid = np.cumsum(counts, axis=1) - counts + (counts + 1) / 2
    return mid[:, group]


def weighted_spearman(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each replicate ``(k,)``: Pearson's on mid-ranks, unit i
    counted ``weights[:, i]`` times; NaN where x or y is constant in a replicate."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = weights.astype(float)
    rx, ry = _ranks(x, weights), _ranks(y, weights)
    total = w.sum(axis=1, keepdims=True)
    rx = rx - (w * rx).sum(axis=1, keepdims=True) / total
    ry = ry - (w * ry).sum(axis=1, keepdims=True) / total
    spread = np.sqrt((w * rx * rx).sum(axis=1) * (w * ry * ry).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(spread > 1e-12, (w * rx * ry).sum(axis=1) / spread, np.nan)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation of paired x and y; NaN when x or y is constant."""
    return float(weighted_spearman(x, y, np.ones((1, len(x)), dtype=np.int64))[0])


def spearman_interval(rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                      reps: int = REPS, large: int = LARGE_UNITS) -> Interval:
    """Spearman's ρ of paired per-unit (x, y) with a percentile bootstrap over the units
    (replicates whose x or y came out constant have no correlation and are left out), or,
    from ``large`` units on, Fisher's z interval with Bonett & Wright's (2000) standard error
    for Spearman's ρ, √((1 + ρ²/2) / (n − 3))."""
    n, r = len(x), spearman(x, y)
    if n >= large and math.isfinite(r):
        z, se = math.atanh(min(max(r, -1 + 1e-12), 1 - 1e-12)), math.sqrt((1 + r * r / 2) / (n - 3))
        return Interval(r, math.tanh(z - Z * se), math.tanh(z + Z * se), n,
                        "spearman + fisher z (trials)")
    draws = bootstrap(rng, n, lambda w: weighted_spearman(x, y, w), inner=4, reps=reps)
    lo, hi = percentile_interval(draws)
    return Interval(r, lo, hi, n, "spearman + bootstrap (trials)")
