"""Trainer: config validation, determinism, bit-exact resume, LR schedule, checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mtl.data.scenes import SyntheticScenes
from mtl.models import Layout, build_model
from mtl.train import (SharpnessConfig, TrainConfig, list_checkpoints, load_checkpoint,
                       load_train_state, save_train_state, train)
from mtl.train.checkpoints import read_meta

TASKS = ("segment_semantic", "depth_zbuffer", "normal")



@pytest.fixture(scope="module")
def data() -> tuple[SyntheticScenes, SyntheticScenes]:
    return (SyntheticScenes("train", size=16, length=24, tasks=TASKS),
            SyntheticScenes("val", size=16, length=8, tasks=TASKS))


def _model(ds: SyntheticScenes, k: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(Layout.branch_point(k, len(TASKS)), list(TASKS),
                       {t: ds.task_channels[t] for t in TASKS}, width=4)


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=8, optimizer="sgd", lr=0.05, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time_s"} for r in history]


@pytest.mark.parametrize("kwargs, field", [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch_size"),
    ({"optimizer": "rmsprop"}, "optimizer"), ({"lr": 0.0}, "lr"), ({"lr": float("inf")}, "lr"),
    ({"momentum": 1.0}, "momentum"), ({"weight_decay": -1.0}, "weight_decay"),
    ({"milestones": (1,)}, "milestones"), ({"milestones": (3,)}, "milestones"),
    ({"milestones": (2, 2)}, "milestones"), ({"gamma": 0.0}, "gamma"),
    ({"keep_epochs": (0,)}, "keep_epochs"), ({"keep_epochs": (3,)}, "keep_epochs"),
    ({"loss_weights": {"normal": -1.0}}, "loss_weights"), ({"seed": -1}, "seed"),
    ({"rho": -0.5}, "rho"), ({"sam_shared_only": "yes"}, "sam_shared_only"),
    ({"adv": {"objective": "maxloss"}}, "adv.objective"), ({"adv": {"eps": 0}}, "adv.eps"),
    ({"sharpness": {"rho": -1}}, "sharpness.rho"), ({"epochs": 2.5}, "epochs"),
    ({"betas": (0.5, 0.999)}, "betas"), ({"optimizer": "adam", "betas": (0.5, 1.0)}, "betas"),
    ({"optimizer": "adam", "betas": (0.5,)}, "betas"),
    ({"optimizer": "adam", "betas": (-0.1, 0.9)}, "betas")])
def test_config_rejects_bad_values_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field}"):
        _cfg(**kwargs)


def test_config_round_trips_through_json() -> None:
    cfg = _cfg(epochs=6, milestones=[3, 5], keep_epochs=[2, 6], loss_weights={"normal": 2.0},
               rho=0.5, sam_shared_only=True, adv={"objective": "dgba", "method": "fgsm"},
               sharpness={"num_samples": 8})
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert again.adv.objective == "dgba" and again.sharpness.num_samples == 8
    with pytest.raises(ValueError, match="unknown key.*'epoch'"):
        TrainConfig.from_dict({"epoch": 3})


def test_adam_betas_reach_the_optimizer_and_stay_out_of_the_dict_when_unset(data) -> None:
    """The DGBA authors train with Adam(betas=(0.5, 0.999)); a config without betas keeps
    its dict (so its hash: trial ids and model-store keys) as before the field existed."""
    from mtl.train.trainer import _make_optimizer
    train_set, _ = data
    model = _model(train_set)
    plain = _cfg(optimizer="adam")
    assert "betas" not in plain.to_dict()
    assert _make_optimizer(model, plain).param_groups[0]["betas"] == (0.9, 0.999)
    theirs = _cfg(optimizer="adam", betas=[0.5, 0.999])
    assert theirs.to_dict()["betas"] == [0.5, 0.999]
    assert TrainConfig.from_dict(json.loads(json.dumps(theirs.to_dict()))) == theirs
    assert _make_optimizer(model, theirs).param_groups[0]["betas"] == (0.5, 0.999)
    a, b = _model(train_set), _model(train_set)
    train(a, train_set, _cfg(optimizer="adam", epochs=1), progress=False)
    train(b, train_set, _cfg(optimizer="adam", epochs=1, betas=(0.5, 0.999)), progress=False)
    assert not _same_weights(a, b)  # the betas change the steps


def test_same_config_twice_gives_identical_weights(data) -> None:
    train_set, _ = data
    a, b = _model(train_set), _model(train_set)
    ra = train(a, train_set, _cfg(), progress=False)
    train(b, train_set, _cfg(), progress=False)
    assert _same_weights(a, b)
    c = _model(train_set)  # another data-order seed really changes the run
    train(c, train_set, _cfg(seed=4), progress=False)
    assert not _same_weights(a, c)
    assert len(ra.history) == 2 and ra.history[-1]["train_loss"] > 0


@pytest.mark.parametrize("opt, rho, adv", [
    ("sgd", 0.0, None), ("adam", 0.2, None),
    ("sgd", 0.0, {"method": "pgd", "steps": 2, "options": {"random_start": True}})])
def test_resume_is_bit_identical(data, tmp_path: Path, opt: str, rho: float, adv) -> None:
    """Resuming after epoch 1 ends where the uninterrupted run ends (PGD random starts draw
    from the global RNG, so its state must be part of the training state too)."""
    train_set, val_set = data
    cfg = _cfg(epochs=3, optimizer=opt, lr=0.01, milestones=(2,), keep_epochs=(1, 3), rho=rho,
               adv=adv)
    full = _model(train_set)
    saved: dict[int, Path] = {}

    def keep(epoch: int, metrics: dict, state: dict) -> None:
        saved[epoch] = tmp_path / f"state_{epoch}.pt"
        save_train_state(state, saved[epoch])

    ref = train(full, train_set, cfg, val_set=val_set, checkpoint_dir=tmp_path / "a",
                callback=keep, progress=False)
    assert sorted(saved) == [1, 2, 3]
    resumed = _model(train_set, seed=99)  # different init: the state must override it
    out = train(resumed, train_set, cfg, val_set=val_set, checkpoint_dir=tmp_path / "a",
                resume_state=load_train_state(saved[1]), progress=False)
    assert _same_weights(full, resumed)
    assert _strip(out.history) == _strip(ref.history)
    assert sorted(out.checkpoints) == [1, 3]


def test_resume_rejects_a_state_from_another_config(data, tmp_path: Path) -> None:
    train_set, _ = data
    states = []
    train(_model(train_set), train_set, _cfg(epochs=1), progress=False,
          callback=lambda e, m, s: states.append(s))
    with pytest.raises(ValueError, match="resume_state"):
        train(_model(train_set), train_set, _cfg(epochs=2), resume_state=states[0],
              progress=False)


def test_step_schedule_and_lr_decayed(data) -> None:
    train_set, _ = data
    cfg = _cfg(epochs=4, lr=0.1, milestones=(2, 4), gamma=0.5)
    hist = train(_model(train_set), train_set, cfg, progress=False).history
    assert [r["lr"] for r in hist] == pytest.approx([0.1, 0.05, 0.05, 0.025])
    assert [r["lr_decayed"] for r in hist] == [False, True, False, True]


def test_checkpoints_metadata_and_reload(data, tmp_path: Path) -> None:
    train_set, val_set = data
    cfg = _cfg(epochs=3, keep_epochs=(1, 3),
               sharpness=SharpnessConfig(num_samples=8, power_iters=3, hutchinson_samples=1,
                                         ascent_steps=2))
    snapshots: dict[int, dict] = {}
    model = _model(train_set)
    result = train(model, train_set, cfg, val_set=val_set, checkpoint_dir=tmp_path,
                   callback=lambda e, m, s: snapshots.__setitem__(e, s["model"]),
                   progress=False)
    assert list_checkpoints(tmp_path) == [result.checkpoints[1], result.checkpoints[3]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "epoch_001.json", "epoch_001.pt", "epoch_003.json", "epoch_003.pt"]  # no temp files
    for epoch in (1, 3):
        loaded, meta = load_checkpoint(result.checkpoints[epoch])
        assert not loaded.training
        assert meta["epoch"] == epoch and meta["model"] == model.config()
        assert set(meta["sharpness"]) >= {"lambda_max", "hessian_trace", "sam_sharpness"}
        assert meta["metrics"]["val/segment_semantic/miou"] == \
            result.history[epoch - 1]["val/segment_semantic/miou"]
        state = loaded.state_dict()
        assert all(torch.equal(state[k], v) for k, v in snapshots[epoch].items())
    assert read_meta(tmp_path / "epoch_003.json")["lr_decayed"] is False
    assert not result.history[1]["kept"] and "lambda_max" not in result.history[1]
    with pytest.raises(FileNotFoundError, match="epoch_002"):
        load_checkpoint(tmp_path / "epoch_002.pt")


def test_sharpness_measurement_does_not_change_training(data, tmp_path: Path) -> None:
    train_set, _ = data
    a, b = _model(train_set), _model(train_set)
    train(a, train_set, _cfg(keep_epochs=(1,)), checkpoint_dir=tmp_path / "a", progress=False)
    train(b, train_set, _cfg(keep_epochs=(1,), sharpness=SharpnessConfig(num_samples=8)),
          checkpoint_dir=tmp_path / "b", progress=False)
    assert _same_weights(a, b)


def test_validation_metrics_and_progress_line(data, capsys) -> None:
    train_set, val_set = data
    hist = train(_model(train_set), train_set, _cfg(epochs=1), val_set=val_set).history
    expected = {"val/segment_semantic/miou", "val/segment_semantic/pixel_acc",
                "val/depth_zbuffer/abs_err", "val/normal/angle_mean",
                "train_loss/segment_semantic", "train_loss/depth_zbuffer", "train_loss/normal"}
    assert expected <= set(hist[0])
    parts = sum(hist[0][f"train_loss/{t}"] for t in TASKS)
    assert hist[0]["train_loss"] == pytest.approx(parts, rel=1e-5)
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "loss" in err and "miou" in err


def test_zero_loss_weight_freezes_that_task_path(data) -> None:
    """No sharing (k=0): a task with weight 0 is not computed, so its whole path stays put."""
    train_set, _ = data
    model = _model(train_set, k=0)
    frozen = {id(p) for p in model.task_parameters("normal")}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    hist = train(model, train_set, _cfg(epochs=1, loss_weights={"normal": 0.0}),
                 progress=False).history
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) == (id(p) in frozen), n
    assert "train_loss/normal" not in hist[0]


def test_sam_shared_only_without_shared_blocks_equals_base_optimizer(data) -> None:
    """Branch point 0 shares nothing: shared-only SAM perturbs no weight, so = plain SGD."""
    train_set, _ = data
    a, b, c = _model(train_set, k=0), _model(train_set, k=0), _model(train_set, k=0)
    train(a, train_set, _cfg(), progress=False)
    train(b, train_set, _cfg(rho=0.5, sam_shared_only=True), progress=False)
    train(c, train_set, _cfg(rho=0.5), progress=False)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_ragged_last_batch_of_one_is_dropped() -> None:
    """17 samples, batch 8: two steps per epoch; a batch of one would break BatchNorm."""
    ragged = SyntheticScenes("train", size=16, length=17, tasks=TASKS)
    result = train(_model(ragged), ragged, _cfg(epochs=2), progress=False)
    assert result.state["step"] == 4
    with pytest.raises(ValueError, match="train_set: has 1 samples"):
        train(_model(ragged), SyntheticScenes("train", size=16, length=1, tasks=TASKS), _cfg(),
              progress=False)


def test_bad_train_inputs_raise_before_work(data) -> None:
    train_set, _ = data
    model = _model(train_set)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="loss_weights.*edge_texture"):
        train(model, train_set, _cfg(loss_weights={"edge_texture": 1.0}), progress=False)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        train(model, train_set, _cfg(keep_epochs=(1,)), progress=False)
    with pytest.raises(ValueError, match="adv.objective"):
        train(model, train_set, _cfg(adv={"objective": "single:scene_class"}), progress=False)
    with pytest.raises(ValueError, match="train_set"):
        train(model, SyntheticScenes("train", size=16, length=8, tasks=TASKS[:2]), _cfg(),
              progress=False)
    assert _same_weights_dict(before, model.state_dict())


def _same_weights_dict(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_cli_train_prints_kept_epochs_and_resumes(tmp_path: Path, capsys) -> None:
    from orchestrator.cli import main

    args = ["train", "--branch-point", "2", "--size", "16", "--train-len", "16", "--val-len",
            "8", "--epochs", "2", "--keep", "1", "2", "--batch-size", "8", "--width", "4",
            "--lr", "0.05", "--milestones", "2", "--rho", "0.1", "--threads", "1",
            "--out", str(tmp_path)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "epoch 2/2" in captured.err  # progress on stderr
    out = captured.out
    assert "epoch 1:" in out and "epoch 2: lr 0.005 (decayed)" in out
    assert str(tmp_path / "epoch_002.pt") in out and "miou" in out
    assert [p.name for p in list_checkpoints(tmp_path)] == ["epoch_001.pt", "epoch_002.pt"]
    first = torch.load(tmp_path / "epoch_002.pt", weights_only=True)
    assert main(args + ["--resume", "--quiet"]) == 0  # finished state: nothing left to train
    again = torch.load(tmp_path / "epoch_002.pt", weights_only=True)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert json.loads((tmp_path / "train_config.json").read_text())["rho"] == 0.1


@pytest.mark.parametrize("extra, field", [(["--optimizer", "lbfgs"], "optimizer"),
                                          (["--keep", "9"], "keep_epochs"),
                                          (["--adv-objective", "dgbaa"], "adv.objective"),
                                          (["--dataset", "imagenet"], "--dataset")])
def test_cli_train_rejects_bad_arguments(tmp_path: Path, capsys, extra: list, field: str) -> None:
    from orchestrator.cli import main

    code = main(["train", "--branch-point", "1", "--epochs", "2", "--out",
                 str(tmp_path / "o")] + extra)
    assert code == 2 and field in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # rejected before any work
