"""A small sweep end to end on a local Ray: the parquet rows match the spec exactly (row
count, no nulls in key columns, every measurement once), plus a random search over rho."""
from __future__ import annotations

import polars as pl
import pytest
import yaml

from mtl.tasks import get_task
from orchestrator import analysis_copy
from orchestrator.analysis_tables import load_tables
from orchestrator.cli import main
from orchestrator.results import read_results
from orchestrator.spec import load_spec, parse_spec
from orchestrator.sweep import run_sweep
from orchestrator.trial import trial_configs

TASKS = ["segment_semantic", "depth_zbuffer", "scene_class"]
KEY_COLUMNS = ["sweep", "trial_id", "attempt", "layout", "adv_train", "rho", "optimizer", "seed",
               "epoch", "surrogate_id", "kind", "attack_method", "objective", "eps", "steps",
               "task", "metric"]
IDENTITY = ["trial_id", "epoch", "kind", "target_id", "attack_method", "objective", "eps",
            "steps", "task", "metric"]


def tiny_sweep(**overrides) -> dict:
    raw = {
        "dataset": {"name": "scenes", "size": 16, "train": 32, "val": 8, "test": 16},
        "tasks": TASKS,
        "model": {"width": 4},
        "layouts": [2],
        "training": {"epochs": 2, "keep_epochs": [1, 2], "batch_size": 16, "lr": 0.05,
                     "milestones": [2], "rho": [0, 0.5]},
        "adv_train": ["none", {"objective": "dgba", "method": "fgsm", "eps": 4}],
        "sharpness": {"num_samples": 8, "power_iters": 2, "hutchinson_samples": 1,
                      "ascent_steps": 1},
        "attacks": {"methods": ["fgsm"], "objectives": ["total", "dgba"], "eps": [8],
                    "eval_samples": 16, "batch_size": 16},
        "cross_task": {"method": "fgsm", "eps": 8},
        "transfer": {"targets": [{"layout": 5, "seed": 1, "epochs": 1}]},
        "resources": {"cpu": 1},
        "max_concurrent": 2,
        "max_failures": 0,
    }
    raw.update(overrides)
    return raw


def expected_rows_per_epoch(spec) -> int:
    """clean: one row per (task, metric); an attack: those rows + a Δ row per task + the mean
    Δ row; transfer adds the success-rate row per target and attack."""
    metrics = sum(len(get_task(t).higher_is_better) for t in spec.tasks)
    per_attack = metrics + len(spec.tasks) + 1
    n_specs = len(spec.attacks["specs"])
    cross = len(spec.tasks) * per_attack if spec.cross_task else 0
    success = 1 if "scene_class" in spec.tasks else 0
    transfer = len(spec.targets) * n_specs * (per_attack + success)
    return metrics + n_specs * per_attack + cross + transfer


@pytest.fixture(scope="module")
def local_ray():
    import ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_grid_sweep_rows_match_the_spec(local_ray, tmp_path, capsys):
    """Through `mtlsweep demo --sweep`: the sweep, then the analysis and its report."""
    path = tmp_path / "e2e.yaml"
    path.write_text(yaml.safe_dump(tiny_sweep()))
    assert main(["demo", "--storage", str(tmp_path), "--sweep", str(path)]) == 0
    out = capsys.readouterr().out
    experiment = tmp_path / "e2e"
    assert "4 trials, 0 failed" in out and f"results: {experiment}/results" in out
    assert f"report:  {experiment}/analysis/report.md" in out
    assert "dgba" in (experiment / "analysis" / "report.md").read_text()
    spec = load_spec(path)
    frame = read_results(experiment).collect()
    trials = trial_configs(spec)
    keep = spec.training["keep_epochs"]
    assert frame.height == len(trials) * len(keep) * expected_rows_per_epoch(spec)
    assert frame.select(KEY_COLUMNS).null_count().sum_horizontal().item() == 0
    assert frame.select(IDENTITY).is_duplicated().sum() == 0
    assert set(frame["trial_id"]) == {t["trial_id"] for t in trials}
    assert set(frame["sweep"]) == {"e2e"} and set(frame["attempt"]) == {1}
    per_trial = frame.group_by("trial_id").agg(pl.col("epoch").unique().sort())
    assert all(list(e) == keep for e in per_trial["epoch"])
    # every (trial, epoch, attack, eps, task, metric) present once, for the attacks asked for
    white = frame.filter(pl.col("kind") == "whitebox")
    got = set(white.select("trial_id", "epoch", "objective", "eps", "task", "metric")
              .iter_rows())
    metric_names = [(t, m) for t in spec.tasks for m in get_task(t).higher_is_better] + \
        [(t, "delta") for t in spec.tasks] + [("mean", "delta")]
    want = {(tr["trial_id"], e, s["objective"], s["eps"], t, m) for tr in trials for e in keep
            for s in spec.attacks["specs"] for t, m in metric_names}
    assert got == want and white.height == len(want)
    assert set(frame.filter(pl.col("kind") == "transfer")["target_id"]) == \
        {t["label"] for t in spec.targets}
    assert set(frame.filter(pl.col("kind") == "cross_task")["objective"]) == \
        {f"single:{t}" for t in TASKS}
    # the axis labels are those of the trials
    labels = {(t["trial_id"], t["labels"]["layout"], t["labels"]["adv_train"],
               t["labels"]["rho"], t["labels"]["branch_point"]) for t in trials}
    assert set(frame.select("trial_id", "layout", "adv_train", "rho", "branch_point")
               .unique().iter_rows()) == labels
    clean = frame.filter(pl.col("kind") == "clean")
    n_metrics = sum(len(get_task(t).higher_is_better) for t in spec.tasks)
    assert clean["clean"].null_count() == 0
    assert clean.height == len(trials) * len(keep) * n_metrics
    finite_delta = white.filter(pl.col("task") == "mean")["rel_change"]
    assert finite_delta.null_count() == 0 and finite_delta.is_finite().all()

    epochs = read_results(experiment, "epochs").collect()
    quantities = set(epochs["quantity"])
    assert {"train_loss", "val/scene_class/accuracy", "lambda_max", "sam_sharpness"} <= quantities
    assert epochs.select("trial_id", "epoch").unique().height == len(trials) * 2
    assert set(epochs.filter(pl.col("kept"))["epoch"]) == set(keep)
    assert epochs.filter(pl.col("epoch") == 2)["lr_decayed"].all()
    timings = read_results(experiment, "timings").collect()
    assert {"train", "eval_whitebox", "eval_transfer", "total"} <= set(timings["phase"])
    # the transfer target was trained once into the store and reused by every trial
    models = list((tmp_path / "models").glob("*/COMPLETE"))
    assert len(models) == 1


def test_random_search_over_rho_reports_the_best(local_ray, tmp_path, monkeypatch):
    raw = tiny_sweep(adv_train=["none"], transfer=None, cross_task=False, sharpness=None,
                     search={"mode": "random", "num_samples": 2, "metric": "whitebox_delta",
                             "goal": "min", "seed": 3,
                             "space": {"rho": {"loguniform": [0.01, 1.0]}}})
    raw["training"] = {**raw["training"], "rho": 0, "keep_epochs": [2]}
    spec = parse_spec(raw, name="search")
    # A relative storage (as in `make demo`) means the driver's cwd, not a trial's working dir.
    monkeypatch.chdir(tmp_path)
    outcome = run_sweep(spec, storage="runs")
    assert (outcome.trials, outcome.errored) == (2, 0)
    assert outcome.experiment_dir == str(tmp_path / "runs" / "search")
    assert len(list((tmp_path / "runs" / "search" / "results" / "measurements").iterdir())) == 2
    # the sweep's last step wrote the analysis's copy of exactly these files (no analysis ran)
    key = analysis_copy.listing_key(outcome.experiment_dir)
    assert analysis_copy.exists(outcome.experiment_dir, key)
    assert load_tables(outcome.experiment_dir).measurements.collect()["trial_id"].n_unique() == 2
    frame = read_results(outcome.experiment_dir).collect()
    rhos = sorted(set(frame["rho"]))
    assert len(rhos) == 2 and all(0.01 <= r <= 1.0 for r in rhos)
    assert frame["trial_id"].n_unique() == 2
    means = (frame.filter((pl.col("kind") == "whitebox") & (pl.col("task") == "mean"))
             .group_by("rho").agg(pl.col("rel_change").mean()))
    best = means.sort("rel_change")[0]
    assert outcome.best["metric"] == "whitebox_delta"
    assert outcome.best["config"]["training.rho"] == pytest.approx(best["rho"].item())
    assert frame["training.rho"].to_list() == frame["rho"].to_list()  # searched = a column
    assert outcome.best["value"] == pytest.approx(best["rel_change"].item())
    # the same search again: both samples are done, nothing is drawn or run
    again = run_sweep(spec, storage="runs")
    assert (again.trials, again.finished, again.skipped, again.errored) == (2, 2, 2, 0)
    assert read_results(again.experiment_dir).collect().equals(frame)


def test_optuna_search_over_a_dotted_path_with_asha_on_a_val_metric(local_ray, tmp_path):
    """Any field can be searched (training.lr, by Optuna's TPE through Ray Tune), ASHA prunes
    on a per-epoch validation metric, and the searched field and an `axes:` field are columns."""
    raw = tiny_sweep(adv_train="none", transfer=None, cross_task=False, sharpness=None,
                     layouts=[2], axes={"model.width": [4]},
                     search={"mode": "optuna", "num_samples": 2, "metric": "whitebox_delta",
                             "goal": "min", "seed": 1,
                             "space": {"training.lr": {"loguniform": [0.001, 0.1]}},
                             "scheduler": {"name": "asha", "metric": "val/scene_class/accuracy",
                                           "goal": "max", "grace_period": 2}})
    raw["training"] = {**raw["training"], "rho": 0}
    spec = parse_spec(raw, name="optuna")
    outcome = run_sweep(spec, storage=str(tmp_path))
    assert (outcome.trials, outcome.errored) == (2, 0)
    frame = read_results(outcome.experiment_dir).collect()
    lrs = frame.group_by("trial_id").agg(pl.col("training.lr").unique())["training.lr"]
    # ASHA may stop the worse trial at epoch 2 (its grace period); a pruned trial writes no rows
    assert 1 <= len(lrs) <= 2 and all(len(v) == 1 and 0.001 <= v[0] <= 0.1 for v in lrs)
    assert set(frame["model.width"]) == {4} and frame.schema["model.width"] == pl.Int64
    assert outcome.best["config"]["training.lr"] in {v[0] for v in lrs}


def test_a_failed_consolidation_is_one_warning_not_a_failed_sweep(monkeypatch, capsys):
    import orchestrator.sweep as sweep

    def full_disk(exp_dir):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep, "consolidate", full_disk)
    sweep._consolidate("/nowhere")  # returns: the per-trial files stay the record
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].endswith("consolidating the results for analysis ...")
    err = err[1:]
    assert "consolidated copy was not written" in err[0]
    assert "No space left" in err[0] and "will read every trial's files" in err[0]
