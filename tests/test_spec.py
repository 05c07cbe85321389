"""Sweep spec: valid YAMLs expand to the right trials; every malformed input gives ONE error
naming its YAML path and the allowed values, before any work (no Ray, no training)."""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

from orchestrator.spec import SpecError, describe, load_spec, parse_spec
from orchestrator.trial import resolve_trial, sweep_context, trial_configs

ROOT = Path(__file__).resolve().parents[1]


def base() -> dict:
    return {
        "dataset": {"name": "scenes", "size": 16, "train": 32, "val": 8, "test": 8},
        "tasks": ["segment_semantic", "depth_zbuffer", "scene_class"],
        "model": {"width": 4},
        "layouts": [1, 4],
        "training": {"epochs": 3, "keep_epochs": [2, 3], "rho": [0, 0.05], "seeds": [0, 1],
                     "milestones": [3]},
        "adv_train": ["none", {"objective": "dgba", "method": "fgsm", "eps": 4}],
        "attacks": {"methods": ["fgsm"], "objectives": ["single", "dgba"], "eps": [4, 8]},
        "transfer": {"targets": [{"layout": [2, 5], "seed": 7}]},
    }


def with_(path: str, value, raw: dict | None = None) -> dict:
    """A copy of the base spec with the value at a dotted path replaced ('del' removes)."""
    raw = copy.deepcopy(raw or base())
    node = raw
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif value == "del":
        del node[last]
    else:
        node[last] = value
    return raw


BAD = [
    # (mutation path, value, expected path in the message, expected words)
    ("layout", [1], "layout", ["did you mean 'layouts'", "allowed keys"]),
    ("attacks.objectives", ["single", "total", "dgbaa"], "attacks.objectives[2]",
     ["unknown objective 'dgbaa'", "signsum", "minmax"]),
    ("attacks.methods", ["fgsm", "pgdd"], "attacks.methods[1]", ["pgdd", "apgd", "mifgsm"]),
    ("attacks.objectives", ["single:normal"], "attacks.objectives[0]",
     ["normal", "segment_semantic"]),
    ("attacks.eps", [4, -1], "attacks.eps[1]", ["out of range", "> 0"]),
    ("tasks", ["segment_semantic", "depht_zbuffer"], "tasks[1]", ["depht_zbuffer", "normal"]),
    ("training.keep_epochs", [2, 5], "training.keep_epochs[1]", ["out of range", "1..3"]),
    ("training.epochs", "ten", "training.epochs", ["expected an integer"]),
    ("training.optimizer", ["sgd", "rmsprop"], "training.optimizer[1]", ["rmsprop", "adam"]),
    ("training.rho", [0, -0.5], "training.rho[1]", [">= 0"]),
    ("training.seeds", [0, 0], "training.seeds[1]", ["duplicate"]),
    ("training.milestones", [4], "training.milestones[0]", ["2..3"]),
    ("training.momentum", 1.0, "training.momentum", ["<= 0.999"]),
    ("training.loss_weights", {"normal": 2}, "training.loss_weights.normal",
     ["unknown task 'normal'", "depth_zbuffer"]),
    ("training.lr", 0, "training.lr", ["> 0"]),
    ("training.epochs", "del", "training.epochs", ["required"]),
    ("layouts", [1, 9], "layouts[1]", ["out of range", "0..5"]),
    ("layouts", ["0+1+2|0,1+2|0+1+2|0,1,2|0,1,2"], "layouts[0]", ["layout"]),
    ("layouts", ["0+1|0+1|0,1|0,1|0,1"], "layouts[0]", ["3 tasks", "5 blocks"]),
    ("layouts", [2, "0+1+2|0+1+2|0,1,2|0,1,2|0,1,2"], "layouts[1]", ["duplicate"]),
    ("adv_train", ["none", {"objective": "dgba", "method": "apgd"}], "adv_train[1].method",
     ["apgd", "fgsm", "pgd"]),
    ("adv_train", [{"objectve": "dgba"}], "adv_train[0].objectve", ["did you mean 'objective'"]),
    ("adv_train", [{"method": "fgsm", "steps": 3}], "adv_train[0].steps", ["allowed: 1"]),
    ("dataset.name", "cifar", "dataset.name", ["cifar", "scenes", "nyuv2", "taskonomy"]),
    ("dataset.name", "nyuv2", "dataset.root", ["directory"]),
    ("dataset.size", 4, "dataset.size", ["out of range", "8..1024"]),
    ("resources", {"cpu": 1, "gpus": 1}, "resources.gpus", ["did you mean 'gpu'"]),
    ("resources", {"cpu": 1, "gpu": 1.5}, "resources.gpu", ["whole GPUs"]),
    ("resources", {"cpu": 0}, "resources.cpu", ["> 0"]),
    ("sharpness", {"power_iters": 0}, "sharpness.power_iters", []),
    ("sharpness", {"power_iter": 3}, "sharpness.power_iter", ["did you mean 'power_iters'"]),
    ("cross_task", {"method": "bim"}, "cross_task.method", ["bim", "fgsm"]),
    ("transfer.targets", [{"layout": 7}], "transfer.targets[0].layout", ["0..5"]),
    ("transfer.targets", [{"seed": 1, "adv_train": {"eps": -2}}],
     "transfer.targets[0].adv_train.eps", ["> 0"]),
    ("transfer.targets", [{"seed": 1}, {"seed": 1}], "transfer.targets[1]", ["duplicate"]),
    ("search", {"mode": "bayes"}, "search.mode", ["bayes", "grid", "random"]),
    ("search", {"mode": "random", "metric": "accuracy", "space": {"rho": {"uniform": [0, 1]}}},
     "search.metric", ["accuracy", "transfer_success", "whitebox_delta"]),
    ("search", {"mode": "random", "metric": "whitebox_delta", "space": {"lr": {}}},
     "search.space.lr", ["rho", "epochs"]),
    ("search", {"mode": "random", "metric": "whitebox_delta",
                "space": {"epochs": {"randint": [5, 2]}}},
     "search.space.epochs.randint", ["low <= high"]),
    ("search", {"mode": "random", "metric": "whitebox_delta",
                "space": {"rho": {"randint": [0, 2]}}},
     "search.space.rho.randint", ["uniform", "loguniform", "choice"]),
    ("search", {"mode": "grid", "num_samples": 4}, "search.num_samples", ["mode: random"]),
    ("max_failures", "two", "max_failures", ["expected an integer"]),
    ("max_concurrent", -1, "max_concurrent", ["out of range"]),
    ("name", "my sweep", "name", ["letters, digits"]),
    ("store", {"path": "s3://bucket/models"}, "store.path", ["file locks"]),
]


@pytest.mark.parametrize("path,value,where,words", BAD, ids=[f"{b[2]}-{i}" for i, b in
                                                             enumerate(BAD)])
def test_malformed_spec_names_the_yaml_path(path, value, where, words):
    with pytest.raises(SpecError) as info:
        parse_spec(with_(path, value), name="t")
    message = str(info.value)
    assert message.startswith(where + ":"), message
    for word in words:
        assert word in message, (word, message)


def test_search_metric_needs_its_data():
    raw = with_("search", {"mode": "random", "metric": "transfer_success",
                           "space": {"rho": {"loguniform": [0.01, 1]}}})
    raw.pop("transfer")
    with pytest.raises(SpecError, match=r"^search.metric: .*transfer targets"):
        parse_spec(raw, name="t")


def test_valid_spec_expands_to_the_grid():
    spec = parse_spec(base(), name="t")
    assert spec.layouts == ("0+1+2|0,1,2|0,1,2|0,1,2|0,1,2", "0+1+2|0+1+2|0+1+2|0+1+2|0,1,2")
    assert [s["objective"] for s in spec.attacks["specs"][::2]] == [
        "single:segment_semantic", "single:depth_zbuffer", "single:scene_class", "dgba"]
    assert len(spec.attacks["specs"]) == 8  # 1 method x 4 objectives x 2 eps
    assert len(spec.targets) == 2 and spec.targets[0]["label"].startswith("bp2-s7-none")
    trials = trial_configs(spec)
    assert len(trials) == spec.num_grid_trials() == 2 * 2 * 1 * 2 * 2
    assert len({t["trial_id"] for t in trials}) == len(trials)
    assert trials == trial_configs(parse_spec(base(), name="t"))  # deterministic ids
    adv = [t for t in trials if t["labels"]["adv_train"] != "none"][0]
    assert adv["labels"]["adv_train"] == "dgba-fgsm-eps4-k1-alternate"
    assert adv["run"].training["adv"]["objective"] == "dgba"
    assert adv["run"].training["keep_epochs"] == [2, 3]
    assert {t["labels"]["branch_point"] for t in trials} == {1, 4}
    assert "grid of 16 trials" in describe(spec)


def test_searched_epochs_keep_the_epochs_that_fit():
    raw = with_("search", {"mode": "random", "metric": "whitebox_delta", "num_samples": 3,
                           "space": {"epochs": {"randint": [1, 3]}}})
    spec = parse_spec(raw, name="t")
    values = {"model.layout": spec.layouts[0], "adv_train": "none", "training.rho": 0.0,
              "training.seed": 0, "training.epochs": 2}
    trial = resolve_trial(sweep_context(spec), values)
    train = trial["run"].training
    assert train["keep_epochs"] == [2] and train["milestones"] == []
    assert train["epochs"] == 2
    with pytest.raises(ValueError, match="search.mode"):
        trial_configs(spec)


def test_layouts_all_enumerates_every_tree():
    spec = parse_spec(with_("layouts", "all"), name="t")
    assert len(spec.layouts) == 51


def test_scalars_read_as_one_element_axes():
    spec = parse_spec(with_("training.seeds", 3), name="t")
    assert spec.seeds == (3,)


# sweeps that need a real dataset root are checked on fixtures in tests/test_dgba_sweeps.py
NEEDS_DATA = {"dgba_nyuv2", "dgba_taskonomy"}


@pytest.mark.parametrize("path", sorted(p for p in (ROOT / "sweeps").glob("*.yaml")
                                        if p.stem not in NEEDS_DATA), ids=lambda p: p.stem)
def test_shipped_sweeps_are_valid(path):
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.num_grid_trials() >= 1 and spec.attacks["specs"]


def test_demo_sweep_exercises_every_axis():
    spec = load_spec(ROOT / "sweeps" / "demo.yaml")
    assert len(spec.layouts) >= 2 and None in spec.adv_train and len(spec.adv_train) >= 2
    assert {0.0, 0.05} <= set(spec.rhos) and max(spec.rhos) > 0.05
    assert len(spec.training["keep_epochs"]) >= 2
    objectives = {s["objective"].split(":")[0] for s in spec.attacks["specs"]}
    assert objectives == {"single", "total", "signsum", "dgba", "minmax"}
    assert len(spec.targets) == 2 and spec.cross_task and spec.sharpness


def test_load_spec_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [a\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump([1, 2]))
    with pytest.raises(SpecError, match="expected a mapping"):
        load_spec(bad)


def test_impossible_gpu_request_fails_before_any_trial(monkeypatch):
    """gpu: 0.25 on a GPU-less cluster: refused from ray.cluster_resources(), not left PENDING;
    a request bigger than every single node is refused too."""
    import ray
    from orchestrator.tuner import check_cluster
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0, "memory": 1e9})
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}},
                                               {"Alive": True, "Resources": {"CPU": 2.0}}])
    spec = parse_spec(with_("resources", {"cpu": 1, "gpu": 0.25}), name="t")
    with pytest.raises(SpecError, match=r"^resources.gpu: 0.25 requested.*cluster has 0 GPUs"):
        check_cluster(spec)
    with pytest.raises(SpecError, match=r"^resources: one trial needs .*single node"):
        check_cluster(parse_spec(with_("resources", {"cpu": 3}), name="t"))
    check_cluster(parse_spec(with_("resources", {"cpu": 0.5}), name="t"))


def test_cli_rejects_a_bad_sweep_before_starting_ray(tmp_path, capsys):
    from orchestrator.cli import main
    ray = sys.modules.get("ray")
    ray_was_up = ray is not None and ray.is_initialized()
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_("attacks.objectives", ["dgba", "totl"])))
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "attacks.objectives[1]: unknown objective 'totl'" in err
    ray = sys.modules.get("ray")
    assert ray_was_up or ray is None or not ray.is_initialized()
    assert not (tmp_path / "runs").exists()


def test_search_spec_builds_tunes_search_and_asha():
    """A random search turns the searched parameters into Tune distributions, the generator
    carries the concurrency limit and ASHA prunes on the per-epoch train loss."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator
    from orchestrator.tuner import param_space, tuner_parts
    raw = with_("search", {"mode": "random", "num_samples": 6, "metric": "transfer_success",
                           "space": {"rho": {"loguniform": [0.01, 2.0]},
                                     "epochs": {"randint": [2, 3]}},
                           "scheduler": {"name": "asha", "grace_period": 2}})
    raw["max_concurrent"] = 3
    spec = parse_spec(raw, name="t", storage="/tmp/x")
    space = param_space(spec, {"storage": "/tmp/x", "store_dir": "/tmp/x/models"}, None)
    axes = space["axis"]
    assert isinstance(axes["training.rho"], tune.search.sample.Float)
    assert axes["training.epochs"].lower == 2 and axes["training.epochs"].upper == 4  # inclusive
    assert axes["model.layout"] == tune.grid_search(list(spec.layouts))
    _, tune_config, run_config = tuner_parts(spec, "/tmp/x/tune")
    assert tune_config.num_samples == 6 and tune_config.max_concurrent_trials is None
    assert isinstance(tune_config.search_alg, BasicVariantGenerator)
    assert tune_config.search_alg.max_concurrent == 3
    asha = tune_config.scheduler
    assert isinstance(asha, ASHAScheduler) and asha.metric == "train_loss"
    assert asha._max_t == 4  # the longest trial's epochs + its final evaluation report
    assert run_config.failure_config.max_failures == spec.max_failures


def test_saved_spec_round_trips_and_resume_needs_a_sweep_dir(tmp_path, capsys):
    from orchestrator.cli import main
    from orchestrator.sweep import load_saved_spec, save_spec
    spec = load_spec(ROOT / "sweeps" / "demo.yaml", storage=str(tmp_path))
    save_spec(spec, str(tmp_path / "demo"))
    assert load_saved_spec(str(tmp_path / "demo")) == spec
    assert main(["resume", str(tmp_path)]) == 2
    assert "is not a sweep directory (no sweep.json)" in capsys.readouterr().err


def test_init_ray_joins_the_cluster_named_by_ray_address(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside a Ray job RAY_ADDRESS is set; passing num_cpus there makes ray.init fail."""
    import ray

    from orchestrator.tuner import init_ray

    calls: list[dict] = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert init_ray() is True
    assert calls[-1]["address"] == "127.0.0.1:6379" and "num_cpus" not in calls[-1]
    monkeypatch.delenv("RAY_ADDRESS")
    init_ray()
    assert "address" not in calls[-1] and calls[-1]["num_cpus"] >= 1
