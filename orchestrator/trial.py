"""One trial: train a multi-task model (resumable), attack every kept checkpoint, write rows.

`tune_trainable` is the thin Ray Tune function trainable; `execute_trial` does the work and
runs without Ray too (the bench's plain loop). Per epoch the trial reports its metrics and a
Tune checkpoint (training state + kept model checkpoints), so a retried trial continues from its
last finished epoch (`ray.tune.get_checkpoint()`). After training it evaluates each kept epoch
(clean, white-box attacks, cross-task matrix, transfer to the target zoo) and writes the
`measurements`, `epochs` and `timings` tables through orchestrator.results, one atomic parquet
per table per trial (a retry replaces the file). The science lives in mtl/.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from mtl.models import Layout
from mtl.train.zoo import (HISTORY, checkpoint_paths, config_hash, dataset_from_config,
                           model_from_config)
from orchestrator import store
from orchestrator.spec import adv_label

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec

Reporter = Callable[[dict, "str | None"], None]
STATE_FILE = "train_state.pt"

# Epoch-record keys that are columns of the epochs table (or not measurements at all).
_EPOCH_COLUMNS = ("epoch", "lr", "lr_decayed", "kept", "time_s")


def trial_train_config(training: Mapping, sharpness: dict | None, *, epochs: int,
                       optimizer: str, rho: float, seed: int, adv: dict | None) -> dict:
    """The TrainConfig dict of one trial: the sweep's `training` section with the axis values.
    A searched `epochs` keeps the kept epochs that fit and always the last one."""
    keep = list(training["keep_epochs"])
    if epochs != training["epochs"]:
        keep = sorted({k for k in keep if k <= epochs} | {epochs})
    return {**training, "epochs": epochs, "keep_epochs": keep,
            "milestones": [m for m in training["milestones"] if m <= epochs],
            "optimizer": optimizer, "rho": float(rho), "seed": int(seed), "adv": adv,
            "sharpness": sharpness}


def sweep_base(spec: "SweepSpec") -> dict:
    """The part of every trial's config that no sweep axis changes."""
    return {"sweep": spec.name, "dataset": spec.dataset, "tasks": list(spec.tasks),
            "width": spec.width, "training": spec.training, "sharpness": spec.sharpness,
            "attacks": spec.attacks, "cross_task": spec.cross_task,
            "targets": list(spec.targets), "resources": spec.resources,
            "reuse_surrogates": spec.reuse_surrogates, "search": spec.search["mode"] != "grid"}


def trial_configs(spec: "SweepSpec") -> list[dict]:
    """The resolved trials of a grid sweep in a fixed order (what Tune's grid runs; used by
    tests and by the bench's plain loop)."""
    if spec.search["mode"] != "grid":
        raise ValueError("search.mode: trials of a search sweep are sampled by Tune; "
                         "trial_configs needs mode: grid")
    base = sweep_base(spec)
    return [resolve_trial({"base": base, "layout": layout, "adv": adv, "optimizer": opt,
                           "rho": rho, "seed": seed, "epochs": spec.training["epochs"]})
            for layout, adv, opt, rho, seed in itertools.product(
                spec.layouts, spec.adv_train, spec.optimizers, spec.rhos, spec.seeds)]


def resolve_trial(config: Mapping[str, Any]) -> dict:
    """A Tune trial config (``base`` + one value per axis) -> the trial's full description:
    its TrainConfig dict, the results labels, the model's store config and ``trial_id`` (a hash
    of everything that decides the trial's results, so a rerun or retry has the same id)."""
    base = config["base"]
    train = trial_train_config(base["training"], base["sharpness"], epochs=int(config["epochs"]),
                               optimizer=config["optimizer"], rho=config["rho"],
                               seed=config["seed"], adv=config["adv"])
    layout = config["layout"]
    trial = {"sweep": base["sweep"], "layout": layout,
             "branch_point": Layout.parse(layout).branch_point_of(),
             "adv_train": adv_label(config["adv"]), "rho": float(config["rho"]),
             "optimizer": config["optimizer"], "seed": int(config["seed"]),
             "dataset": base["dataset"], "train": train, "attacks": base["attacks"],
             "cross_task": base["cross_task"], "targets": base["targets"],
             "resources": base["resources"], "reuse_surrogates": base["reuse_surrogates"],
             "search": base["search"],
             "model_config": store.model_config(base["dataset"], base["tasks"], base["width"],
                                                layout, train)}
    bp = trial["branch_point"]
    # How a trial runs (resources, reusing a stored surrogate) does not change its results,
    # so it does not change its id either.
    decisive = {k: v for k, v in trial.items() if k not in ("resources", "reuse_surrogates")}
    trial["trial_id"] = (f"{'bp' + str(bp) if bp is not None else 'L'}-"
                         f"{trial['adv_train'].split('-')[0]}-rho{trial['rho']:g}-"
                         f"{trial['optimizer']}-s{trial['seed']}-e{train['epochs']}-"
                         f"{config_hash(decisive)[:8]}")
    return trial


def tune_trainable(config: dict) -> None:
    """The Ray Tune function trainable (config = `sweep.param_space` + ``run`` paths)."""
    import logging
    from ray import tune
    # Tune logs every persisted checkpoint at INFO; one per epoch per trial drowns the table.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    trial = resolve_trial(config)
    if trial["search"]:  # sampled trials may coincide: the Tune index keeps their files apart
        trial["trial_id"] += "-" + tune.get_context().get_trial_id().rsplit("_", 1)[-1]
    checkpoint = tune.get_checkpoint()

    def report(metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = tune.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        tune.report(metrics, checkpoint=ckpt)

    with (checkpoint.as_directory() if checkpoint else contextlib.nullcontext()) as restore:
        execute_trial(trial, storage=config["run"]["storage"],
                      store_dir=config["run"]["store_dir"], report=report, restore_dir=restore)


def execute_trial(trial: Mapping[str, Any], *, storage: str, store_dir: str,
                  report: Reporter | None = None, restore_dir: str | None = None,
                  progress: bool = False) -> dict[str, float]:
    """Run one resolved trial end to end; returns (and reports) its final metrics."""
    from orchestrator.devices import setup_trial_device
    from orchestrator.results import write_trial_table
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    attempt = store.next_attempt(storage, trial["sweep"], trial["trial_id"])
    device = setup_trial_device(trial["resources"]["cpu"], trial["resources"]["gpu"])
    work = Path(tempfile.mkdtemp(prefix=f"mtlsweep-{trial['trial_id']}-"))
    try:
        t0 = time.perf_counter()
        data = {split: dataset_from_config(trial["dataset"], split) for split in ("train", "val")}
        data["test"] = dataset_from_config(trial["dataset"], "test",
                                           trial["attacks"]["eval_samples"])
        timings["data"] = time.perf_counter() - t0
        ckpt_dir = work / "checkpoints"
        ckpt_dir.mkdir()
        t0 = time.perf_counter()
        history = _train(trial, data, ckpt_dir, store_dir, device, report, restore_dir, progress)
        timings["train"] = time.perf_counter() - t0
        rows, final = _evaluate(trial, data["test"], ckpt_dir, store_dir, device, timings)
        final["train_loss"] = float(history[-1]["train_loss"]) if history else math.nan
        t0 = time.perf_counter()
        common = {"attempt": attempt, "layout": trial["layout"],
                  "branch_point": trial["branch_point"], "adv_train": trial["adv_train"],
                  "rho": trial["rho"], "optimizer": trial["optimizer"], "seed": trial["seed"]}
        args = (storage, trial["sweep"])
        write_trial_table(*args, "measurements", trial["trial_id"],
                          [{**common, **row} for row in rows])
        write_trial_table(*args, "epochs", trial["trial_id"], _epoch_rows(history, common))
        timings["write"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        write_trial_table(*args, "timings", trial["trial_id"],
                          [{"attempt": attempt, "phase": k, "seconds": v}
                           for k, v in timings.items()])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    final = {k: (v if math.isfinite(v) else None) for k, v in final.items()}
    if report is not None:
        report({"evaluated": 1, **{k: v for k, v in final.items() if v is not None}}, None)
    return final


def _train(trial: Mapping, data: dict, ckpt_dir: Path, store_dir: str, device: torch.device,
           report: Reporter | None, restore_dir: str | None, progress: bool) -> list[dict]:
    """Train (or restore / reuse) the surrogate; kept checkpoints end up in ``ckpt_dir``."""
    from mtl.train import TrainConfig, load_train_state, save_train_state, train
    config = TrainConfig.from_dict(trial["train"])
    if trial["reuse_surrogates"]:
        entry = store.find_surrogate(trial["model_config"], store_dir)
        if entry is not None:
            _copy_model_files(entry, ckpt_dir)
            return json.loads((ckpt_dir / HISTORY).read_text())
    resume = None
    if restore_dir is not None and (Path(restore_dir) / STATE_FILE).is_file():
        _copy_model_files(restore_dir, ckpt_dir)
        resume = load_train_state(Path(restore_dir) / STATE_FILE)
    model = model_from_config(trial["model_config"], data["train"]).to(device)

    def callback(epoch: int, metrics: dict, state: dict) -> None:
        if report is None:
            return
        with tempfile.TemporaryDirectory(prefix="mtlsweep-ckpt-") as tmp:
            save_train_state(state, Path(tmp) / STATE_FILE)
            _copy_model_files(ckpt_dir, tmp)
            report({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, tmp)

    if resume is not None and int(resume["epoch"]) >= config.epochs:
        history = list(resume["history"])  # the attempt before died after training
    else:
        result = train(model, data["train"], config, val_set=data["val"],
                       checkpoint_dir=str(ckpt_dir), callback=callback, resume_state=resume,
                       progress=progress, device=device)
        history = result.history
    (ckpt_dir / HISTORY).write_text(json.dumps(history))
    if trial["reuse_surrogates"]:
        store.publish_surrogate(trial["model_config"], str(ckpt_dir), store_dir)
    return history


def _copy_model_files(src: str | Path, dst: str | Path) -> None:
    for item in Path(src).iterdir():
        if item.name.startswith("epoch_") or item.name == HISTORY:
            shutil.copy2(item, Path(dst) / item.name)


def _evaluate(trial: Mapping, test_set: Any, ckpt_dir: Path, store_dir: str,
              device: torch.device, timings: dict[str, float]) -> tuple[list[dict], dict]:
    """Rows for every kept epoch (clean, white-box, cross-task, transfer) + final metrics."""
    from mtl.attacks import AttackSpec
    from mtl.data import make_loader
    from mtl.evaluate import cross_task_rows, evaluate_attacks, evaluate_clean, evaluate_transfer
    from mtl.train import load_checkpoint
    attacks = trial["attacks"]
    specs = [AttackSpec(**s) for s in attacks["specs"]]
    loader = make_loader(test_set, attacks["batch_size"])
    t0 = time.perf_counter()
    targets = store.load_targets(trial["targets"], store_dir, device) if trial["targets"] else {}
    labels = {t["id"]: t["label"] for t in trial["targets"]}
    targets = {labels[k]: m for k, m in targets.items()}
    timings["zoo"] = time.perf_counter() - t0
    surrogate_id = config_hash(trial["model_config"])
    rows: list[dict] = []

    def add(kind: str, epoch: int, new: list[dict]) -> None:
        # target_id: the transfer target's label; null for rows measured on the surrogate
        rows.extend({"epoch": epoch, "kind": kind, "surrogate_id": surrogate_id,
                     "target_id": None, **row} for row in new)

    for epoch, path in sorted(checkpoint_paths(ckpt_dir).items()):
        model, _ = load_checkpoint(str(path), device=device)
        model.eval()
        phase_seed = trial["seed"] * 100_003 + epoch  # attacks with random starts repeat exactly
        t0 = time.perf_counter()
        clean = evaluate_clean(model, loader)
        add("clean", epoch, [{"attack_method": "none", "objective": "none", "eps": 0.0,
                              "steps": 0, "task": task, "metric": metric, "clean": value,
                              "adv": None, "rel_change": None}
                             for task, metrics in clean.items()
                             for metric, value in metrics.items()])
        timings["eval_clean"] = timings.get("eval_clean", 0.0) + time.perf_counter() - t0
        for phase, run in (("whitebox", lambda: evaluate_attacks(model, loader, specs)),
                           ("cross_task", lambda: cross_task_rows(
                               model, loader, trial["cross_task"]["method"],
                               trial["cross_task"]["eps"], trial["cross_task"]["steps"])
                            if trial["cross_task"] else []),
                           ("transfer", lambda: evaluate_transfer(model, targets, loader, specs)
                            if targets else [])):
            torch.manual_seed(phase_seed)
            t0 = time.perf_counter()
            add(phase, epoch, run())
            timings[f"eval_{phase}"] = timings.get(f"eval_{phase}", 0.0) + \
                time.perf_counter() - t0
    return rows, final_metrics(rows)


def final_metrics(rows: list[dict]) -> dict[str, float]:
    """The trial's summary for Tune searches (means over kept epochs, specs and targets):
    ``whitebox_delta`` / ``transfer_delta`` (mean Δ over tasks; negative = the attack hurt),
    ``transfer_success`` (RFN success rate on scene_class), ``cross_task_delta`` (Δ of task j
    under a single-task attack on i != j)."""
    def mean(values: list[float]) -> float:
        values = [v for v in values if v is not None and math.isfinite(v)]
        return sum(values) / len(values) if values else math.nan

    def pick(kind: str, task: str | None, metric: str, col: str = "rel_change") -> list:
        return [r[col] for r in rows if r["kind"] == kind and r["metric"] == metric
                and (task is None or r["task"] == task)]

    return {"whitebox_delta": mean(pick("whitebox", "mean", "delta")),
            "transfer_delta": mean(pick("transfer", "mean", "delta")),
            "transfer_success": mean(pick("transfer", None, "success_rate", "adv")),
            "cross_task_delta": mean([r["rel_change"] for r in rows
                                      if r["kind"] == "cross_task" and r["metric"] == "delta"
                                      and r["task"] not in ("mean", r["objective"][7:])])}


def _epoch_rows(history: list[dict], common: Mapping[str, Any]) -> list[dict]:
    """The epochs table: one row per (epoch, quantity) — train loss, val metrics, sharpness."""
    rows = []
    for rec in history:
        head = {**common, "epoch": int(rec["epoch"]), "lr": float(rec["lr"]),
                "lr_decayed": bool(rec["lr_decayed"]), "kept": bool(rec["kept"])}
        for key, value in rec.items():
            if key in _EPOCH_COLUMNS or isinstance(value, bool) or \
                    not isinstance(value, (int, float)):
                continue
            rows.append({**head, "quantity": key,
                         "value": float(value) if math.isfinite(value) else None})
    return rows
