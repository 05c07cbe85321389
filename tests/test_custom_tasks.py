"""Bring your own task and model: register_task / task_from_paths, the built-in network with a
custom task, a plain nn.Module trained and evaluated, and checkpoints loaded into model=."""
from __future__ import annotations

import json
import math
from pathlib import Path

import plugins_fixture as fx
import pytest
import torch

from mtl.attacks import AttackSpec
from mtl.data import make_loader
from mtl.evaluate import evaluate_attacks, evaluate_clean
from mtl.models import Layout, build_model
from mtl.models.task_model import TaskModel, as_task_model
from mtl.tasks import (TASK_NAMES, get_task, register_task, relative_change, task_from_paths,
                       task_names)
from mtl.train import TrainConfig, load_checkpoint, save_checkpoint, train

SALIENCY = None


@pytest.fixture(autouse=True)
def _saliency_task():
    """Register the fixture's task for each test; conftest drops it afterwards, so a user
    project with its own 'saliency' (examples/byo) meets an empty slot."""
    global SALIENCY
    SALIENCY = register_task("saliency", fx.saliency_loss, fx.SaliencyMetric, channels=1)
SPECS = [AttackSpec("pgd", "total", 8.0, 2), AttackSpec("pgd", "dgba", 8.0, 2)]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{**dict(epochs=2, batch_size=4, lr=0.05, seed=0), **kw})


def _batches() -> list[dict[str, torch.Tensor]]:
    return list(make_loader(fx.Blobs(length=8, seed=1), 4))


def test_registered_task_is_listed_after_the_builtins() -> None:
    assert task_names()[:6] == TASK_NAMES and "saliency" in task_names()
    assert "saliency" not in TASK_NAMES  # the module attribute stays the built-in six
    assert get_task("saliency") is SALIENCY and SALIENCY.kind == "dense"
    assert dict(SALIENCY.higher_is_better) == {"mae": False, "fscore": True}
    assert isinstance(SALIENCY.new_metric(), fx.SaliencyMetric)


def test_registration_is_idempotent_and_refuses_a_different_definition() -> None:
    assert register_task("saliency", fx.saliency_loss, fx.SaliencyMetric, channels=1) is SALIENCY
    assert task_from_paths("saliency", "plugins_fixture:saliency_loss",
                           "plugins_fixture:SaliencyMetric", channels=1) is SALIENCY
    with pytest.raises(ValueError, match="already registered.*replace=True"):
        register_task("saliency", fx.saliency_loss, fx.SaliencyMetric, channels=2)
    with pytest.raises(ValueError, match="built-in task cannot be replaced"):
        register_task("normal", fx.saliency_loss, fx.SaliencyMetric, replace=True)
    first = task_from_paths("sal_paths", "plugins_fixture:saliency_loss",
                            "plugins_fixture:SaliencyMetric", channels=1)
    assert task_from_paths("sal_paths", "plugins_fixture:saliency_loss",
                           "plugins_fixture:SaliencyMetric", channels=1) is first
    with pytest.raises(ValueError, match="already registered"):
        task_from_paths("sal_paths", "plugins_fixture:saliency_loss",
                        "plugins_fixture:SaliencyMetric", kind="image")
    again = task_from_paths("sal_paths", "plugins_fixture:saliency_loss",
                            "plugins_fixture:SaliencyMetric", kind="image", replace=True)
    assert get_task("sal_paths") is again and again.kind == "image"
    with pytest.raises(ValueError, match="no attribute 'nope'"):
        task_from_paths("sal_bad", "plugins_fixture:nope", "plugins_fixture:SaliencyMetric")


class _NoCompute:
    higher_is_better = {"x": True}

    def update(self, pred, target, mask=None) -> None: ...

    def reset(self) -> None: ...


@pytest.mark.parametrize("kwargs, message", [
    (dict(name="1bad"), "identifier-like"),
    (dict(name="sal_mask"), "_mask"),
    (dict(name="image"), "identifier-like"),
    (dict(loss=3), "loss must be callable"),
    (dict(metric=_NoCompute), "update / compute / reset"),
    (dict(kind="pixel"), "kind must be 'dense' or 'image'"),
    (dict(channels=0), "channels must be None or an int >= 1"),
    (dict(higher_is_better={"mae": "no"}), "higher_is_better must be a non-empty mapping"),
    (dict(metric=lambda: fx.SaliencyMetric()), "higher_is_better must be a non-empty mapping"),
])
def test_register_task_names_the_bad_argument(kwargs: dict, message: str) -> None:
    args = {"name": "sal_checked", "loss": fx.saliency_loss, "metric": fx.SaliencyMetric, **kwargs}
    with pytest.raises(ValueError, match=message):
        register_task(args.pop("name"), args.pop("loss"), args.pop("metric"), **args)


def test_unflagged_metric_is_reported_when_computed() -> None:
    task = register_task("sal_partial", fx.saliency_loss, fx.SaliencyMetric, channels=1,
                         higher_is_better={"mae": False})
    metric = task.new_metric()
    metric.update(torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    with pytest.raises(ValueError, match=r"\['fscore'\] have no higher_is_better flag"):
        task.compute(metric)


def test_relative_change_uses_the_registered_flags() -> None:
    per_task, mean = relative_change({"saliency": {"mae": 1.0, "fscore": 0.5}},
                                     {"saliency": {"mae": 2.0, "fscore": 0.25}})
    assert per_task["saliency"] == pytest.approx(-0.75) and mean == pytest.approx(-0.75)


def test_builtin_network_trains_and_is_attacked_on_a_custom_task() -> None:
    torch.manual_seed(0)
    model = build_model(Layout.branch_point(2, 2), list(fx.TASKS), fx.Blobs.task_channels,
                        width=4)
    assert model.out_channels == {"segment_semantic": fx.CLASSES, "saliency": 1}
    result = train(model, fx.Blobs(), _cfg(), val_set=fx.Blobs(length=4, seed=2),
                   progress=False)
    assert len(result.history) == 2
    assert math.isfinite(result.history[-1]["train_loss/saliency"])
    assert 0 <= result.history[-1]["val/saliency/fscore"] <= 1
    clean = evaluate_clean(model, _batches())
    assert set(clean["saliency"]) == {"mae", "fscore"}
    rows = evaluate_attacks(model, _batches(), SPECS)
    sal = {(r["objective"], r["metric"]): r for r in rows if r["task"] == "saliency"}
    assert set(sal) == {(o, m) for o in ("total", "dgba") for m in ("mae", "fscore", "delta")}
    assert sal["total", "mae"]["clean"] == pytest.approx(clean["saliency"]["mae"])
    mae = sal["total", "mae"]
    assert mae["rel_change"] == pytest.approx(-(mae["adv"] - mae["clean"]) / mae["clean"])


def test_plain_model_trains_evaluates_and_round_trips_a_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = fx.TinyNet()
    result = train(net, fx.Blobs(), _cfg(keep_epochs=(2,)), tasks=fx.TASKS,
                   checkpoint_dir=tmp_path, progress=False)
    assert [r["epoch"] for r in result.history] == [1, 2]
    clean = evaluate_clean(net, _batches(), tasks=fx.TASKS)  # class count read from the logits
    assert set(clean) == set(fx.TASKS) and set(clean["segment_semantic"]) == {"miou",
                                                                                "pixel_acc"}
    wrapped = as_task_model(net, fx.TASKS, fx.Blobs.task_channels)
    assert isinstance(wrapped, TaskModel) and evaluate_clean(wrapped, _batches()) == clean
    rows = evaluate_attacks(net, _batches(), SPECS, tasks=fx.TASKS)
    assert {r["task"] for r in rows} == {*fx.TASKS, "mean"}

    path = result.checkpoints[2]
    assert "model" not in json.loads(path.with_suffix(".json").read_text())
    fresh = fx.TinyNet()
    loaded, meta = load_checkpoint(path, model=fresh)
    assert loaded is fresh and not fresh.training and meta["epoch"] == 2
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(),
                                                 net.state_dict().values()))
    load_checkpoint(path, model=as_task_model(fx.TinyNet(), fx.TASKS))  # the wrapper fits too
    with pytest.raises(ValueError, match="pass model=... built by your factory"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"first shape mismatch seg\.weight"):
        load_checkpoint(path, model=fx.TinyNet(classes=5))
    other = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"missing key\(s\) \['0.weight'.*unexpected"):
        load_checkpoint(path, model=other)


def test_plain_model_missing_an_output_is_named() -> None:
    with pytest.raises(ValueError, match=r"missing task\(s\) \['normal'\]"):
        evaluate_clean(fx.TinyNet(), [{**_batches()[0], "normal": torch.zeros(4, 3, 8, 8)}],
                       tasks=("segment_semantic", "normal"))


def test_sidecar_claiming_a_huge_width_is_refused_before_building(tmp_path: Path) -> None:
    model = build_model(Layout.branch_point(1, 2), list(fx.TASKS), fx.Blobs.task_channels,
                        width=4)
    path = save_checkpoint(model, tmp_path, 1)
    sidecar = path.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    assert load_checkpoint(path)[1]["model"]["width"] == 4
    sidecar.write_text(json.dumps({**meta, "model": {**meta["model"], "width": 100000}}))
    with pytest.raises(ValueError, match="width=100000.*does not match its weights"):
        load_checkpoint(path)  # building it would need terabytes: it must fail first
    sidecar.write_text(json.dumps({**meta, "model": {**meta["model"], "skip": False}}))
    with pytest.raises(ValueError, match="first shape mismatch heads"):
        load_checkpoint(path)
