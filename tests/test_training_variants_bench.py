"""Smoke test of bench/training_variants.py: tiny settings, JSON structure (not the numbers)."""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("training_variants",
                                                  ROOT / "bench" / "training_variants.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _all_finite_or_none(x) -> bool:
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, dict):
        return all(_all_finite_or_none(v) for v in x.values())
    if isinstance(x, list):
        return all(_all_finite_or_none(v) for v in x)
    return True


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("variants")
    return tmp, bench.main(["--quick", "--out", str(tmp / "out.json"),
                            "--store", str(tmp / "store")])


def test_quick_run_json_structure(quick_run) -> None:
    tmp, result = quick_run
    s = bench.Settings.quick()
    assert json.loads((tmp / "out.json").read_text()) == result
    assert _all_finite_or_none(result)
    assert set(result) >= {"settings", "conditions", "models", "robustness", "sharpness",
                           "transfer", "summary", "timings_s"}
    surrogates = ["sgd", f"sam_rho{s.sam_rho:g}", *(f"rfn_rho{r:g}" for r in s.rfn_rhos)]
    targets = [f"target_bp{layout}_s{seed}"
               for layout, seed in zip(s.target_layouts, s.target_seeds)]
    roles = {n: m["role"] for n, m in result["models"].items()}
    assert roles == {**{n: "surrogate" for n in surrogates}, "at_dgba": "adversarial",
                     "at_total": "adversarial", **{t: "target" for t in targets}}
    assert result["models"]["at_dgba"]["adv"]["objective"] == "dgba"
    assert result["models"]["at_total"]["adv"]["steps"] == s.at_steps
    # (a) clean + Δ per task and mean for both objectives at every eps, on 3 models
    assert set(result["robustness"]) == {"sgd", "at_dgba", "at_total"}
    for entry in result["robustness"].values():
        assert set(entry["clean"]) == set(bench.TASKS)
        assert set(entry["attacks"]) == {f"pgd-{o}-eps{e:g}" for o in ("dgba", "total")
                                         for e in s.eps}
        for attack in entry["attacks"].values():
            assert set(attack["delta"]) == set(bench.TASKS) and "mean" in attack
    # (b) sharpness at every kept epoch of every surrogate, with the LR the epoch ran at
    assert set(result["sharpness"]) == set(surrogates)
    for by_epoch in result["sharpness"].values():
        assert set(by_epoch) == {str(e) for e in s.keep_epochs}
        for v in by_epoch.values():
            assert {"lr", "lambda_max", "hessian_trace", "sam_sharpness"} <= set(v)
            assert v["sam_sharpness"] >= 0
    # (c) success rate and Δ per target (+ mean) at every kept epoch of every surrogate
    assert set(result["transfer"]) == set(surrogates)
    for by_epoch in result["transfer"].values():
        assert set(by_epoch) == {str(e) for e in s.keep_epochs}
        for per_obj in by_epoch.values():
            t = per_obj[s.transfer_objectives[0]]
            assert set(t["success_rate"]) == {*targets, "mean"}
            assert set(t["delta_mean"]) == {*targets, "mean"}
            assert set(t["delta_task"]) == set(bench.TASKS)
            rates = [v for v in t["success_rate"].values() if v is not None]
            assert all(0.0 <= v <= 1.0 for v in rates)
            pool = result["success_pool"]  # each rate is a count out of the shared pool
            assert all(abs(v * pool - round(v * pool)) < 1e-6
                       for k, v in t["success_rate"].items() if k != "mean" and v is not None)
    assert 0 <= result["success_pool"] <= s.eval_len
    summary = result["summary"]
    assert set(summary["transfer"]) == set(s.transfer_objectives)
    for per_obj in summary["transfer"].values():
        assert set(per_obj["success_by_epoch"]) == set(surrogates)
    assert set(summary["at_clean_cost"]) == {"at_dgba", "at_total"}


def test_rerun_reuses_the_store_and_ends_with_the_json(tmp_path, capsys) -> None:
    """A second run on the same store reuses every model and measures the same numbers."""
    first = bench.main(["--quick", "--store", str(tmp_path / "store")])
    capsys.readouterr()
    second = bench.main(["--quick", "--store", str(tmp_path / "store")])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last) == second
    assert all(m["reused"] for m in second["models"].values())
    assert not any(m["reused"] for m in first["models"].values())
    assert second["transfer"] == first["transfer"]
    assert second["robustness"] == first["robustness"]


@pytest.mark.parametrize("change, field", [
    ({"rfn_rhos": (0.0,)}, "rfn_rhos"),
    ({"keep_epochs": (1,)}, "keep_epochs"),
    ({"transfer_objectives": ("nope",)}, "transfer_objectives"),
    ({"target_seeds": (0, 1)}, "target_seeds"),
    ({"target_seeds": (100,)}, "target_seeds"),
    ({"target_seeds": (100, 100)}, "target_seeds"),
    ({"rfn_rhos": (0.5, 0.5)}, "rfn_rhos"),
    ({"layout": 9}, "layout"),
    ({"eps": (0.0,)}, "eps"),
    ({"milestones": (5,)}, "milestones"),
    ({"at_method": "apgd"}, "adv.method"),
])
def test_bad_settings_raise_before_work(change, field) -> None:
    with pytest.raises(ValueError, match=field):
        replace(bench.Settings.quick(), **change).validate()


def test_cli_rejects_bad_value_before_training(tmp_path) -> None:
    with pytest.raises(ValueError, match="rfn_rhos"):
        bench.main(["--quick", "--rfn-rhos", "-1", "--store", str(tmp_path / "store")])
    assert not (tmp_path / "store").exists()


def test_spearman() -> None:
    assert bench.spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert bench.spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert bench.spearman([1, 2, None, 3], [1, 2, 5, 3]) == pytest.approx(1.0)
    assert bench.spearman([1, 2], [1, 2]) is None
    # ties get average ranks: x ranks (0, 1.5, 1.5, 3) vs y ranks (0, 1, 2, 3)
    assert bench.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(
        4.5 / math.sqrt(4.5 * 5.0))
