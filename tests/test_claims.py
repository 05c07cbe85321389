"""The claims table judged from synthetic results with known effects (orchestrator/claims.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from orchestrator import analysis
from orchestrator.claims import judge, verdict_summary
from orchestrator.claims_data import directions
from orchestrator.claims_table import (ABOVE, BELOW, CLAIMS, HOLDS, INCONCLUSIVE, NOT_MEASURED,
                                       REFUTED, verdict)
from orchestrator.intervals import (LARGE_UNITS, MIN_UNITS, mean_interval, newcombe, rng_for,
                                    spearman, spearman_interval, weighted_mean,
                                    weighted_spearman, wilson)
from orchestrator.results import write_trial_table
from orchestrator.results_schema import polars_schema

TASKS = ("segment_semantic", "depth_zbuffer", "scene_class")
METRICS = {"segment_semantic": "miou", "depth_zbuffer": "abs_err", "scene_class": "accuracy"}
DECAY, KEPT = 4, (2, 4, 6)  # DECAY: the first epoch at the lower learning rate


def layout(k: int) -> str:
    """Layout.branch_point(k, 3, 5) in canonical form (more shared blocks as k grows)."""
    return "|".join(["0+1+2"] * k + ["0,1,2"] * (5 - k))


def trial(tid: str, *, k: int = 2, seed: int = 0, adv_train: str = "none",
          rho: float = 0.0) -> dict:
    return dict(sweep="syn", trial_id=tid, attempt=0, layout=layout(k), branch_point=k,
                adv_train=adv_train, rho=rho, optimizer="sgd", seed=seed)


def frame(rows: list[dict], table: str = "measurements") -> pl.DataFrame:
    return pl.DataFrame(rows, schema=polars_schema(table))


def rows_of(claims: pl.DataFrame, letter: str) -> pl.DataFrame:
    return claims.filter(pl.col("claim") == CLAIMS[letter][0])


# --- synthetic sweeps ---------------------------------------------------------------------------
def whitebox(t: dict, epoch: int, objective: str, eps: float, delta: float) -> dict:
    return dict(t, epoch=epoch, kind="whitebox", attack_method="pgd", objective=objective,
                eps=eps, steps=10, task="mean", metric="delta", rel_change=delta, n=64)


def dgba_sweep(trials: int, margin: float, noise: float, *, adv_train: str = "none",
               seed: int = 0) -> list[dict]:
    """DGBA's Δ is the others' minus ``margin`` (+ noise). The trial-level offset is large, so
    only a paired comparison can see a small margin."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(trials):
        t = trial(f"{adv_train}{i}", seed=i, adv_train=adv_train)
        for epoch in (2, 4):
            for eps in (4.0, 8.0):
                base = -0.02 * eps + rng.normal(0, 0.3)
                rows.append(whitebox(t, epoch, "dgba", eps, base - margin + rng.normal(0, noise)))
                for objective in ("total", "signsum"):
                    rows.append(whitebox(t, epoch, objective, eps, base + rng.normal(0, noise)))
                for j, task in enumerate(TASKS):
                    rows.append(whitebox(t, epoch, f"single:{task}", eps,
                                         base + 0.05 * j + rng.normal(0, noise)))
    return rows


def sharing_sweep(slope: float, layouts: tuple[int, ...] = (0, 1, 2, 3, 4, 5)) -> list[dict]:
    """Clean metrics improve by ``slope`` per shared block; cross-task damage grows with it."""
    rng = np.random.default_rng(1)
    rows = []
    for k in layouts:
        for seed in (0, 1):
            t = dict(trial(f"k{k}s{seed}", k=k, seed=seed), epoch=4)
            for task in TASKS:
                better = 0.5 + slope * k + rng.normal(0, 0.01)
                value = 1.0 - better if METRICS[task] == "abs_err" else better
                rows.append(dict(t, kind="clean", attack_method="none", objective="none",
                                 eps=0.0, steps=0, task=task, metric=METRICS[task],
                                 clean=value, n=64))
                for dst in TASKS:
                    delta = -0.3 if dst == task else -0.02 * k + rng.normal(0, 0.005)
                    rows.append(dict(t, kind="cross_task", attack_method="fgsm",
                                     objective=f"single:{task}", eps=8.0, steps=1, task=dst,
                                     metric="delta", rel_change=delta, n=64))
    return rows


def transfer(t: dict, epoch: int, rate: float, images: int, rng: np.random.Generator
             ) -> list[dict]:
    """Success-rate rows of two targets (counts drawn around ``rate``)."""
    rows = []
    for target in ("tgt-a", "tgt-b"):
        fooled = int(rng.binomial(images, rate))
        rows.append(dict(t, epoch=epoch, kind="transfer", attack_method="pgd", objective="dgba",
                         eps=8.0, steps=10, target_id=target, task="scene_class",
                         metric="success_rate", adv=fooled / images, n=images,
                         numerator=fooled, denominator=images))
    return rows


def epoch_rows(t: dict, sharpness: dict[int, float]) -> list[dict]:
    rows = []
    for epoch in range(1, 7):
        row = dict(t, epoch=epoch, lr=0.1 if epoch < DECAY else 0.01,
                   lr_decayed=epoch == DECAY, kept=epoch in KEPT)
        rows.append(dict(row, quantity="train_loss", value=1.0 / epoch))
        if epoch in sharpness:
            rows.append(dict(row, quantity="lambda_max", value=sharpness[epoch]))
    return rows


def decay_sweep(rates: dict[int, float], sharpness: dict[int, float], trials: int = 4,
                images: int = 400) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = np.random.default_rng(2)
    m, e = [], []
    for i in range(trials):
        t = trial(f"d{i}", seed=i)
        for epoch in KEPT:
            m += transfer(t, epoch, rates[epoch], images, rng)
        e += epoch_rows(t, {k: v * (1 + rng.normal(0, 0.02)) for k, v in sharpness.items()})
    return frame(m), frame(e, "epochs")


def rho_sweep(finals: dict[float, float], plain: dict[int, float], seeds: int = 3,
              images: int = 400) -> pl.DataFrame:
    """Plain surrogates (ρ = 0) at every kept epoch (``plain``), the others at their last."""
    rng = np.random.default_rng(3)
    rows = []
    for seed in range(seeds):
        for epoch, rate in plain.items():
            rows += transfer(trial(f"plain{seed}", seed=seed), epoch, rate, images, rng)
        for rho, rate in finals.items():
            rows += transfer(trial(f"rho{rho}s{seed}", seed=seed, rho=rho), max(KEPT), rate,
                             images, rng)
    return frame(rows)


# --- intervals ----------------------------------------------------------------------------------
def test_wilson_and_newcombe_match_hand_computed_values() -> None:
    # 8/10: centre (0.8 + z²/20) / (1 + z²/10), half z/(1 + z²/10)·sqrt(0.016 + z²/400)
    assert wilson(8, 10) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert all(math.isnan(v) for v in wilson(0, 0))
    # Newcombe (1998), Table II example: 56/70 − 48/80, method 10 gives [0.0524, 0.3339]
    diff = newcombe(56, 70, 48, 80)
    assert (diff.estimate, diff.lo, diff.hi) == pytest.approx((0.2, 0.0524, 0.3339), abs=1e-4)


def test_spearman_with_ties_and_constant_input() -> None:
    assert spearman(np.array([1, 2, 3, 4]), np.array([1, 3, 2, 4])) == pytest.approx(0.8)
    assert spearman(np.array([1, 1, 2]), np.array([1, 2, 3])) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(spearman(np.array([1, 1, 1]), np.array([1, 2, 3])))


def test_replicate_weights_equal_resampling_the_units() -> None:
    """A replicate's unit counts give the statistic of the resample they stand for."""
    rng = np.random.default_rng(5)
    x, y = rng.integers(0, 4, 30).astype(float), rng.normal(size=30)
    picks = rng.integers(0, 30, size=(20, 30))
    weights = np.stack([np.bincount(p, minlength=30) for p in picks])
    expected = [spearman(x[p], y[p]) for p in picks]
    assert weighted_spearman(x, y, weights) == pytest.approx(expected)
    values = np.where(rng.random((30, 2)) < 0.2, np.nan, rng.normal(size=(30, 2)))
    means = [np.nanmean(values[p], axis=0) for p in picks]
    assert weighted_mean(weights, values) == pytest.approx(np.array(means))


def test_verdict_follows_the_interval_only() -> None:
    assert verdict(-0.3, -0.1, BELOW) == HOLDS and verdict(0.1, 0.3, BELOW) == REFUTED
    assert verdict(0.1, 0.3, ABOVE) == HOLDS and verdict(-0.3, -0.1, ABOVE) == REFUTED
    assert verdict(-0.1, 0.3, ABOVE) == INCONCLUSIVE  # a positive estimate is not enough
    assert verdict(0.0, 0.3, ABOVE) == INCONCLUSIVE  # touching 0 is not "entirely above"
    assert verdict(math.nan, 0.3, ABOVE) == INCONCLUSIVE


def test_bootstrap_is_reproducible_with_the_same_seed() -> None:
    values = np.random.default_rng(0).normal(-0.1, 0.2, size=12)
    first = mean_interval(rng_for("a", "eps=8"), values)
    assert mean_interval(rng_for("a", "eps=8"), values) == first
    assert mean_interval(rng_for("a", "eps=4"), values) != first  # other draws, same data
    assert first.estimate == pytest.approx(values.mean())
    assert first.lo < first.estimate < first.hi


def test_many_trials_use_the_normal_limit_of_the_bootstrap() -> None:
    """From LARGE_UNITS trials on, the normal-theory interval stands in for the bootstrap; at
    that size the two agree to a few percent of the width, even for skewed values."""
    rng = np.random.default_rng(6)
    values = rng.exponential(size=LARGE_UNITS)
    x = rng.integers(0, 6, LARGE_UNITS).astype(float)
    y = 0.1 * x + rng.normal(size=LARGE_UNITS)
    for limit, resampled in ((mean_interval(rng_for("m"), values),
                              mean_interval(rng_for("m"), values, large=10**9)),
                             (spearman_interval(rng_for("s"), x, y),
                              spearman_interval(rng_for("s"), x, y, large=10**9))):
        assert limit.method in ("normal (trials)", "spearman + fisher z (trials)")
        assert "bootstrap" in resampled.method and limit.estimate == resampled.estimate
        width = resampled.hi - resampled.lo
        assert (limit.lo, limit.hi) == pytest.approx((resampled.lo, resampled.hi),
                                                     abs=0.05 * width)


def test_judging_twice_gives_the_same_table() -> None:
    """Same rows in another order: the same table, intervals included (every claim)."""
    decay, epochs = decay_sweep({2: 0.2, 4: 0.4, 6: 0.3}, {2: 50.0, 4: 20.0, 6: 18.0})
    m = pl.concat([frame(dgba_sweep(5, 0.02, 0.05) + sharing_sweep(0.01)), decay,
                   rho_sweep({0.05: 0.25, 0.5: 0.3}, {2: 0.3, 4: 0.25, 6: 0.2})])
    first = judge(m, epochs)
    assert first["lo"].drop_nulls().len() >= 10
    assert first.equals(judge(m.sample(fraction=1.0, shuffle=True, seed=4),
                              epochs.sample(fraction=1.0, shuffle=True, seed=5)))


# --- (a) ----------------------------------------------------------------------------------------
def test_dgba_stronger_by_a_known_margin_holds() -> None:
    claims = rows_of(judge(frame(dgba_sweep(8, 0.1, 0.01))), "a")
    judged = claims.filter(pl.col("condition").str.contains("adv_train=none"))
    assert judged.height == 6  # 2 ε × (single, total, signsum)
    assert set(judged["verdict"]) == {HOLDS}
    assert (judged["hi"] < 0).all() and (judged["lo"] < judged["estimate"]).all()
    assert (judged["n"] == 8).all() and set(judged["method"]) == {"bootstrap (trials)"}
    total = judged.filter(pl.col("condition") == "eps=8, adv_train=none, vs=total")
    assert total["estimate"][0] == pytest.approx(-0.1, abs=0.01)
    at = claims.filter(pl.col("condition") == "adv_train=AT")
    assert at["verdict"].to_list() == [NOT_MEASURED]
    assert "no adversarially trained models" in at["reason"][0]


def test_dgba_weaker_is_refuted_on_adversarially_trained_models() -> None:
    rows = dgba_sweep(6, 0.1, 0.01) + dgba_sweep(6, -0.05, 0.01, adv_train="dgba-pgd-8")
    claims = rows_of(judge(frame(rows)), "a")
    at = claims.filter(pl.col("condition").str.contains("adv_train=AT"))
    assert at.height == 6 and set(at["verdict"]) == {REFUTED} and (at["lo"] > 0).all()
    standard = claims.filter(pl.col("condition").str.contains("adv_train=none"))
    assert set(standard["verdict"]) == {HOLDS}


def test_tiny_effect_or_too_few_trials_is_inconclusive() -> None:
    tiny = rows_of(judge(frame(dgba_sweep(4, 0.002, 0.05))), "a").filter(
        pl.col("condition").str.contains("vs=total"))
    assert set(tiny["verdict"]) == {INCONCLUSIVE}
    assert ((tiny["lo"] < 0) & (tiny["hi"] > 0)).all()
    few = rows_of(judge(frame(dgba_sweep(MIN_UNITS - 1, 0.5, 0.001))), "a").filter(
        pl.col("condition").str.contains("adv_train=none"))
    assert set(few["verdict"]) == {INCONCLUSIVE}  # a big effect, but two trials
    assert few["lo"].is_null().all() and few["estimate"].is_not_null().all()
    assert f"at least {MIN_UNITS} are needed" in few["reason"][0]


# --- (b) ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("slope, expected", [(0.05, HOLDS), (-0.05, REFUTED)])
def test_sharing_trade_off_by_rank_correlation(slope: float, expected: str) -> None:
    claims = rows_of(judge(frame(sharing_sweep(slope))), "b")
    accuracy = claims.filter(pl.col("condition").str.starts_with("clean accuracy"))
    assert accuracy["condition"].to_list() == ["clean accuracy, adv_train=none, ρ=0, "
                                               "x=branch point"]
    assert accuracy["verdict"].to_list() == [expected] and accuracy["n"].to_list() == [12]
    assert accuracy["estimate"][0] == pytest.approx(math.copysign(0.97, slope), abs=0.03)
    damage = claims.filter(pl.col("condition").str.starts_with("cross-task damage"))
    assert damage["verdict"].to_list() == [HOLDS]


def test_regimes_of_a_varied_setting_are_judged_apart() -> None:
    """An ``axes:`` column (a dotted path) the sweep varies splits the regimes; seeds do not."""
    rising = frame(sharing_sweep(0.05)).with_columns(pl.lit(0.1).alias("training.lr"),
                                                     pl.col("seed").alias("training.seed"))
    falling = frame(sharing_sweep(-0.05)).with_columns(
        pl.lit(0.01).alias("training.lr"), pl.col("seed").alias("training.seed"),
        pl.col("trial_id") + "-slow")
    claims = rows_of(judge(pl.concat([rising, falling])), "b").filter(
        pl.col("condition").str.starts_with("clean accuracy"))
    assert dict(zip(claims["condition"], claims["verdict"])) == {
        "clean accuracy, adv_train=none, ρ=0, training.lr=0.01, x=branch point": REFUTED,
        "clean accuracy, adv_train=none, ρ=0, training.lr=0.1, x=branch point": HOLDS}


# --- (c) ----------------------------------------------------------------------------------------
def test_transfer_peaks_after_the_decay_and_sharpness_drops() -> None:
    m, e = decay_sweep({2: 0.2, 4: 0.4, 6: 0.3}, {2: 50.0, 4: 20.0, 6: 18.0})
    claims = rows_of(judge(m, e), "c")
    peak = claims.filter(pl.col("condition").str.starts_with("transfer peak"))
    assert peak["condition"].to_list() == ["transfer peak, adv_train=none, ρ=0, decay at epoch 4"]
    assert peak["verdict"].to_list() == [HOLDS]
    assert peak["method"].to_list() == ["bootstrap (trials)"]
    assert peak["estimate"][0] == pytest.approx(0.1, abs=0.03)
    sharp = claims.filter(pl.col("condition").str.starts_with("sharpness (lambda_max)"))
    assert sharp["verdict"].to_list() == [HOLDS]
    assert sharp["estimate"][0] == pytest.approx(20.0 - 50.0, abs=1.5)  # λ_max at epoch 4 − 2


def test_transfer_peak_elsewhere_is_refuted_and_one_trial_uses_the_counts() -> None:
    m, e = decay_sweep({2: 0.45, 4: 0.2, 6: 0.25}, {2: 20.0, 4: 30.0, 6: 25.0})
    claims = rows_of(judge(m, e), "c")
    assert claims["verdict"].to_list() == [REFUTED, REFUTED]
    m, e = decay_sweep({2: 0.2, 4: 0.4, 6: 0.3}, {2: 50.0, 4: 20.0, 6: 18.0}, trials=1,
                       images=500)
    claims = rows_of(judge(m, e), "c")
    peak = claims.filter(pl.col("condition").str.starts_with("transfer peak"))
    assert peak["verdict"].to_list() == [HOLDS]
    # two targets score the same 500 images: 500 at the decay checkpoint + 500 at the best other
    assert peak["method"].to_list() == ["newcombe (wilson)"] and peak["n"].to_list() == [1000]
    assert "covers image sampling only" in peak["reason"][0]
    sharp = claims.filter(pl.col("condition").str.starts_with("sharpness"))
    assert sharp["verdict"].to_list() == [INCONCLUSIVE]  # no counts behind λ_max: too few


# --- (d) ----------------------------------------------------------------------------------------
def test_rfn_beats_early_stopped_plain_and_sam() -> None:
    claims = rows_of(judge(rho_sweep({0.05: 0.25, 0.5: 0.45}, {2: 0.3, 4: 0.25, 6: 0.2})), "d")
    assert claims["condition"].to_list() == [
        "ρ=0.5 vs plain best early-stopped", "ρ=0.5 vs plain fully trained",
        "ρ=0.5 vs SAM ρ=0.05 fully trained"]
    assert set(claims["verdict"]) == {HOLDS}
    assert claims["estimate"].to_list() == pytest.approx([0.15, 0.25, 0.2], abs=0.03)
    assert "epoch 2" in claims["reason"][0] and (claims["n"] == 6).all()


def test_rfn_weaker_is_refuted_and_single_seeds_use_newcombe() -> None:
    claims = rows_of(judge(rho_sweep({0.05: 0.3, 0.5: 0.1}, {2: 0.3, 4: 0.25, 6: 0.2})), "d")
    assert set(claims["verdict"]) == {REFUTED}
    claims = rows_of(judge(rho_sweep({0.05: 0.25, 0.5: 0.45}, {2: 0.3, 6: 0.2}, seeds=1)), "d")
    assert set(claims["verdict"]) == {HOLDS} and set(claims["method"]) == {"newcombe (wilson)"}


# --- not measured -------------------------------------------------------------------------------
def test_claims_the_sweep_does_not_vary_are_not_measured() -> None:
    """One layout, no AT, no clean or cross-task rows, no transfer, no LR decay."""
    claims = judge(frame(dgba_sweep(4, 0.1, 0.01)), frame([], "epochs"))
    absent = claims.filter(pl.col("verdict") == NOT_MEASURED)
    reasons = dict(zip(absent["claim"] + ": " + absent["condition"], absent["reason"]))
    assert reasons == {
        f"{CLAIMS['a'][0]}: adv_train=AT": "no adversarially trained models in this sweep",
        f"{CLAIMS['b'][0]}: clean accuracy": "only one layout",
        f"{CLAIMS['b'][0]}: cross-task damage": "only one layout",
        f"{CLAIMS['c'][0]}: transfer peak": "no LR decay in this sweep (training.milestones)",
        f"{CLAIMS['c'][0]}: sharpness drop": "no LR decay in this sweep (training.milestones)",
        f"{CLAIMS['d'][0]}: –": "no transfer targets in this sweep"}
    assert absent["estimate"].is_null().all() and (absent["n"] == 0).all()
    no_rfn = rows_of(judge(rho_sweep({0.05: 0.25}, {2: 0.3, 6: 0.2})), "d")
    assert no_rfn["verdict"].to_list() == [NOT_MEASURED]
    assert no_rfn["reason"][0] == ("no surrogate with ρ > 0.05 (RFN); ρ in this sweep: 0, 0.05")
    no_dgba = rows_of(judge(frame([r for r in dgba_sweep(4, 0.1, 0.01)
                                   if r["objective"] != "dgba"])), "a")
    assert no_dgba["reason"].to_list() == ["no DGBA attack in this sweep"]


def test_a_model_without_layouts_and_a_users_metric() -> None:
    """No layout strings: (b) is not measured. A metric mtlsweep does not know gets its
    direction from its attack rows (Δ has the sign of adv − clean when higher is better)."""
    rows = [dict(r, layout=None, branch_point=None) for r in sharing_sweep(0.05)]
    claims = rows_of(judge(frame(rows)), "b")
    assert set(claims["verdict"]) == {NOT_MEASURED}
    assert claims["reason"][0].startswith("the model has no sharing layouts")
    t = dict(trial("u"), epoch=1, kind="whitebox", attack_method="pgd", objective="dgba",
             eps=8.0, steps=10)
    attack = [dict(t, task="saliency", metric="err", clean=0.2, adv=0.5, rel_change=-1.5),
              dict(t, task="saliency", metric="hits", clean=0.8, adv=0.4, rel_change=-0.5)]
    assert directions(frame(attack), {"err", "hits", "miou", "unseen"}) == {
        "err": False, "hits": True, "miou": True}


# --- through analyze() --------------------------------------------------------------------------
def test_analyze_writes_the_claims_first_in_the_report(tmp_path: Path) -> None:
    rows = dgba_sweep(4, 0.1, 0.01) + sharing_sweep(0.05, layouts=(1, 4))
    m, e = decay_sweep({2: 0.2, 4: 0.4, 6: 0.3}, {2: 50.0, 4: 20.0, 6: 18.0}, trials=3)
    tables = {"measurements": pl.concat([frame(rows), m]), "epochs": e}
    for table, data in tables.items():
        for (tid,), part in data.group_by("trial_id"):
            keep = [c for c in part.columns if c != "schema_version"]
            write_trial_table(tmp_path / "st", "syn", table, tid,
                              [{k: v for k, v in r.items() if v is not None}
                               for r in part.select(keep).to_dicts()])
    result = analysis.analyze(tmp_path / "st" / "syn", tmp_path / "out")
    stored = pl.read_parquet(tmp_path / "out" / "claims.parquet")
    assert stored.equals(result.claims) and result.claims.height > 10
    assert [p.name for p in result.claim_files] == ["claims.parquet", "claims.json"]
    document = json.loads((tmp_path / "out" / "claims.json").read_text())
    assert document["claims"] == result.claims.to_dicts()
    assert document["bootstrap"]["seed"] == 13 and document["level"] == 0.95
    text = result.report.read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings[0] == "## Claims, judged"
    first_row = result.claims.row(0, named=True)
    assert f"| {first_row['claim']} | {first_row['condition']} |" in text.split("## Overview")[0]
    verdicts = dict(zip(result.claims["claim"] + " " + result.claims["condition"],
                        result.claims["verdict"]))
    assert verdicts[f"{CLAIMS['a'][0]} eps=8, adv_train=none, vs=total"] == HOLDS
    assert verdicts[f"{CLAIMS['c'][0]} transfer peak, adv_train=none, ρ=0, decay at epoch 4"] \
        == HOLDS
    printed = verdict_summary(result.claims).splitlines()
    assert printed[0].startswith("claims judged (95% intervals")
    assert printed[1].startswith(f"  {CLAIMS['a'][0]}: ") and "holds" in printed[1]
    assert any(line.startswith(f"  {CLAIMS['d'][0]}: {NOT_MEASURED}") for line in printed)
