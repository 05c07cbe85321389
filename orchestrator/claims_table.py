"""The claims table: its columns, the verdict rule, and how it is written and summarised.

One row per claim and condition. The verdict follows from the 95 % interval alone: **holds**
when the interval lies entirely on the claim's side of 0, **refuted** when it lies entirely on
the other side, **inconclusive** otherwise (or when too few trials stand behind it), and
**not measured by this sweep** when the sweep does not vary what the claim is about.
"""
from __future__ import annotations

import json
import math
import os
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

from orchestrator.intervals import (LEVEL, MIN_UNITS, REPS, SEED, Interval, mean_interval,
                                    rng_for)

HOLDS, REFUTED, INCONCLUSIVE = "holds", "refuted", "inconclusive"
NOT_MEASURED = "not measured by this sweep"
VERDICTS = (HOLDS, REFUTED, INCONCLUSIVE, NOT_MEASURED)
BELOW, ABOVE = "< 0", "> 0"

CLAIMS: dict[str, tuple[str, str]] = {
    "a": ("(a) DGBA is the strongest attack",
          "DGBA's Δ is lower (a stronger attack) than SINGLE (the best single-task attack of "
          "each trial and epoch), "
          "TOTAL and SignSum at each ε, on clean and on adversarially trained models "
          "(paired by trial and epoch)."),
    "b": ("(b) sharing raises accuracy and cross-task damage",
          "More sharing raises clean accuracy and raises cross-task damage (Spearman's rank "
          "correlation with the branch point or the shared fraction)."),
    "c": ("(c) transfer peaks and sharpness drops at the LR decay",
          "Transfer success peaks at or right after an LR decay, and sharpness drops there."),
    "d": ("(d) RFN surrogates transfer best",
          "Surrogates trained with a large ρ (RFN) transfer better than the best early-stopped "
          "and the fully trained plain surrogates, and better than SAM at ρ = 0.05."),
}
"""Letter -> (short title used in the ``claim`` column, the full statement)."""

SCHEMA = pl.Schema({"claim": pl.String, "condition": pl.String, "expect": pl.String,
                    "estimate": pl.Float64, "lo": pl.Float64, "hi": pl.Float64, "n": pl.Int64,
                    "method": pl.String, "verdict": pl.String, "reason": pl.String})


def verdict(lo: float, hi: float, expect: str) -> str:
    """holds / refuted / inconclusive from the interval [lo, hi] and the claim's side of 0."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    above, below = lo > 0, hi < 0
    if expect == BELOW:
        return HOLDS if below else REFUTED if above else INCONCLUSIVE
    return HOLDS if above else REFUTED if below else INCONCLUSIVE


def _side(expect: str) -> str:
    return "below 0" if expect == BELOW else "above 0"


def judged(letter: str, condition: str, expect: str, interval: Interval, statistic: str,
           note: str = "") -> dict:
    """A row judged from ``interval``; ``statistic`` says what the estimate is."""
    result = verdict(interval.lo, interval.hi, expect)
    why = {HOLDS: f"the interval lies {_side(expect)}",
           REFUTED: f"the interval lies on the other side of 0 than the claim's {_side(expect)}",
           INCONCLUSIVE: "the interval contains 0"}[result]
    return _row(letter, condition, expect, interval.estimate, interval.lo, interval.hi,
                interval.n, interval.method, result,
                f"{statistic}; {why}" + (f" ({note})" if note else ""))


def too_few(letter: str, condition: str, expect: str, estimate: float, units: int,
            statistic: str) -> dict:
    """An inconclusive row: too few trials for a bootstrap and no counts to judge from."""
    return _row(letter, condition, expect, estimate, None, None, units, None, INCONCLUSIVE,
                f"{statistic}; only {units} trial{'s' if units != 1 else ''}: at least "
                f"{MIN_UNITS} are needed for an interval")


def judged_mean(letter: str, condition: str, expect: str, values: np.ndarray, statistic: str,
                note: str = "") -> dict:
    """A row judged from the mean of per-trial ``values`` with a bootstrap over the trials (too
    few trials: inconclusive, no interval)."""
    if values.size < MIN_UNITS:
        return too_few(letter, condition, expect, float(values.mean()), values.size, statistic)
    return judged(letter, condition, expect, mean_interval(rng_for(letter, condition), values),
                  statistic, note)


def not_measured(letter: str, condition: str, reason: str) -> dict:
    """A row for a claim (or part of one) whose columns this sweep does not vary."""
    return _row(letter, condition, None, None, None, None, 0, None, NOT_MEASURED, reason)


def _row(letter: str, condition: str, expect: str | None, estimate: float | None,
         lo: float | None, hi: float | None, n: int, method: str | None, result: str,
         reason: str) -> dict:
    def num(value: float | None) -> float | None:
        return None if value is None or not math.isfinite(value) else float(value)
    return {"claim": CLAIMS[letter][0], "condition": condition, "expect": expect,
            "estimate": num(estimate), "lo": num(lo), "hi": num(hi), "n": int(n),
            "method": method, "verdict": result, "reason": reason}


def frame(rows: list[dict]) -> pl.DataFrame:
    """The claims table from its rows (columns of :data:`SCHEMA`)."""
    return pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else SCHEMA.to_frame()


def write(claims: pl.DataFrame, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``claims.parquet`` and ``claims.json`` (rows, with the interval level and the
    bootstrap's replicates and seed) to ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parquet, text = out / "claims.parquet", out / "claims.json"
    claims.write_parquet(parquet)
    document = {"level": LEVEL, "bootstrap": {"replicates": REPS, "seed": SEED},
                "verdicts": list(VERDICTS), "claims": claims.to_dicts()}
    tmp = out / ".claims.json.tmp"
    tmp.write_text(json.dumps(document, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(text)
    return parquet, text


def _number(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if value != 0 and not 1e-3 <= abs(value) < 1e4 else f"{value:.3f}"


def estimate_cell(estimate: float | None, lo: float | None, hi: float | None) -> str:
    """``estimate [lo, hi]`` (– for a missing part)."""
    if estimate is None:
        return "–"
    if lo is None or hi is None:
        return f"{_number(estimate)} [no interval]"
    return f"{_number(estimate)} [{_number(lo)}, {_number(hi)}]"


def markdown(claims: pl.DataFrame) -> str:
    """The claims table as readable markdown: claim, condition, estimate [95 % interval],
    expected side, n, method, verdict, reason."""
    lines = ["| claim | condition | estimate [95 % interval] | claim expects | n | method | "
             "verdict | reason |", "|---|---|---|---|---|---|---|---|"]
    for row in claims.iter_rows(named=True):
        cells = [row["claim"], row["condition"],
                 estimate_cell(row["estimate"], row["lo"], row["hi"]), row["expect"] or "–",
                 str(row["n"]), row["method"] or "–",
                 f"**{row['verdict']}**" if row["verdict"] in (HOLDS, REFUTED) else row["verdict"],
                 row["reason"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def summary(claims: pl.DataFrame) -> str:
    """A few lines for the terminal: per claim, how many conditions got each verdict."""
    if claims.is_empty():
        return "claims: none judged"
    lines = [f"claims judged ({LEVEL:.0%} intervals; verdicts: {', '.join(VERDICTS)}):"]
    for title, _ in CLAIMS.values():
        rows = claims.filter(pl.col("claim") == title)
        if rows.is_empty():
            continue
        counts = Counter(rows["verdict"].to_list())
        if set(counts) == {NOT_MEASURED}:
            lines.append(f"  {title}: {NOT_MEASURED} ({rows['reason'][0]})")
            continue
        parts = [f"{counts[v]} {v}" for v in VERDICTS if counts[v]]
        lines.append(f"  {title}: {', '.join(parts)}")
    return "\n".join(lines)
