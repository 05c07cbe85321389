"""One trial: train a multi-task model (resumable), attack every kept checkpoint, write rows.

`resolve_trial` turns the sweep's base run config and one trial's axis values into a validated
`mtl.config.run.RunConfig`; `execute_trial` does the work and runs without Ray too (the bench's
plain loop; Ray Tune's trainable in orchestrator/tuner.py calls it). After every epoch it hands
the training state (kept checkpoints + optimiser, scheduler and RNG state) to ``checkpoint``
(the sweep saves it in its record, orchestrator/trial_state.py), so a retried or resumed trial
continues from its last finished epoch (``restore_dir``). After training it evaluates each kept
epoch (clean, white-box attacks, cross-task matrix, transfer to the target zoo) and writes the
`measurements`, `epochs` and `timings` tables through orchestrator.results, one atomic parquet
per table per trial (a retry replaces the file). The science lives in mtl/.
"""
from __future__ import annotations

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

from mtl.config.build import build_model, build_split, register_tasks
from mtl.config.compute import Compute
from mtl.config.run import RunConfig, parse_run_config
from mtl.models.layout import Layout
from mtl.plugins import add_import_paths
from mtl.train.zoo import HISTORY, checkpoint_paths, config_hash
from orchestrator import store
from orchestrator.devices import setup_trial_device
from orchestrator.results import write_trial_table
from orchestrator.axes import column_value, with_values

if TYPE_CHECKING:
    from orchestrator.spec import SweepSpec

Reporter = Callable[[dict], None]        # per-epoch and final metrics (Tune's report)
Checkpointer = Callable[[str], None]     # a local directory holding the state to keep
STATE_FILE = "train_state.pt"

# Epoch-record keys that are columns of the epochs table (or not measurements at all).
_EPOCH_COLUMNS = ("epoch", "lr", "lr_decayed", "kept", "time_s")


def sweep_context(spec: "SweepSpec") -> dict:
    """What every trial of ``spec`` shares (Tune passes it once, with ``tune.with_parameters``):
    the base run config, the axes' paths and results columns, the transfer zoo, resources."""
    axes = [[a.path, a.column] for a in spec.axes]
    axes += [[path, path] for path in spec.search.get("space", {})]
    return {"sweep": spec.name, "base": spec.base, "axes": axes, "targets": list(spec.targets),
            "resources": spec.resources, "reuse_surrogates": spec.reuse_surrogates,
            "search": spec.search["mode"] != "grid", "import_paths": list(spec.import_paths)}


def trial_configs(spec: "SweepSpec") -> list[dict]:
    """The resolved trials of a grid sweep in a fixed order (what Tune's grid runs; used by
    tests and by the bench's plain loop)."""
    if spec.search["mode"] != "grid":
        raise ValueError("search.mode: trials of a search sweep are sampled by Tune; "
                         "trial_configs needs mode: grid")
    context = sweep_context(spec)
    paths = [a.path for a in spec.axes]
    return [resolve_trial(context, dict(zip(paths, combo)))
            for combo in itertools.product(*(a.values for a in spec.axes))]


def resolve_trial(context: Mapping[str, Any], values: Mapping[str, Any]) -> dict:
    """One trial from the sweep context and its axis values: the validated `RunConfig`, the
    core labels and axis columns of its rows, the model's store config and ``trial_id`` (a
    hash of everything that decides the trial's results, so a rerun or retry has the same id).
    """
    add_import_paths(context.get("import_paths", ()))
    run = parse_run_config(with_values(context["base"], values))
    layout = run.model["layout"]
    bp = Layout.parse(layout).branch_point_of() if layout is not None else None
    labels = {"layout": layout, "branch_point": bp, "adv_train": run.adv_label,
              "rho": float(run.training["rho"]), "optimizer": run.training["optimizer"],
              "seed": int(run.training["seed"])}
    columns = {column: column_value(values[path]) for path, column in context["axes"]
               if column and path in values}
    trial = {"sweep": context["sweep"], "run": run, "labels": labels, "columns": columns,
             "targets": context["targets"], "resources": context["resources"],
             "reuse_surrogates": context["reuse_surrogates"], "search": context["search"],
             "model_config": run.model_key(), "axis_values": dict(values)}
    # How a trial runs (resources, reusing a stored surrogate) does not change its results,
    # so it does not change its id either.
    decisive = {"sweep": trial["sweep"], "run": run.to_dict(), "targets": trial["targets"]}
    shape = f"bp{bp}" if bp is not None else ("L" if layout is not None else "M")
    trial["trial_id"] = (f"{shape}-{run.adv_label.split('-')[0]}-rho{labels['rho']:g}-"
                         f"{labels['optimizer']}-s{labels['seed']}-e{run.training['epochs']}-"
                         f"{config_hash(decisive)[:8]}")
    return trial


def execute_trial(trial: Mapping[str, Any], *, storage: str, store_dir: str,
                  report: Reporter | None = None, checkpoint: Checkpointer | None = None,
                  restore_dir: str | None = None, progress: bool = False
                  ) -> dict[str, float]:
    """Run one resolved trial end to end; returns (and reports) its final metrics. Training
    that diverges (a non-finite loss) raises `mtl.train.NonFiniteLossError` before any row is
    written."""
    run: RunConfig = trial["run"]
    register_tasks(run.tasks)
    t_start = time.perf_counter()
    timings: dict[str, float] = {}
    attempt = store.next_attempt(storage, trial["sweep"], trial["trial_id"])
    device = setup_trial_device(trial["resources"]["cpu"], trial["resources"]["gpu"])
    work = Path(tempfile.mkdtemp(prefix=f"mtlsweep-{trial['trial_id']}-"))
    try:
        t0 = time.perf_counter()
        data = {split: build_split(run.dataset, split) for split in ("train", "val")}
        data["test"] = build_split(run.dataset, "test", run.attacks["eval_samples"])
        timings["data"] = time.perf_counter() - t0
        ckpt_dir = work / "checkpoints"
        ckpt_dir.mkdir()
        t0 = time.perf_counter()
        history = _train(trial, data, ckpt_dir, store_dir, device, report, checkpoint,
                         restore_dir, progress)
        timings["train"] = time.perf_counter() - t0
        rows, final = _evaluate(trial, data, ckpt_dir, store_dir, device, timings)
        final["train_loss"] = float(history[-1]["train_loss"]) if history else math.nan
        t0 = time.perf_counter()
        common = {"attempt": attempt, **trial["labels"],
                  "train_epochs": int(run.training["epochs"]),
                  "dataset": run.dataset["source"], "model": run.model["source"]}
        args = (storage, trial["sweep"])
        columns = trial["columns"]
        write_trial_table(*args, "measurements", trial["trial_id"],
                          [{**common, **row} for row in rows], columns=columns, attempt=attempt)
        write_trial_table(*args, "epochs", trial["trial_id"], _epoch_rows(history, common),
                          columns=columns, attempt=attempt)
        timings["write"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        write_trial_table(*args, "timings", trial["trial_id"],
                          [{"attempt": attempt, "phase": k, "seconds": v}
                           for k, v in timings.items()], attempt=attempt)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    final = {k: (v if math.isfinite(v) else None) for k, v in final.items()}
    if report is not None:
        last = history[-1] if history else {}
        per_epoch = {k: v for k, v in last.items() if isinstance(v, (int, float))
                     and not isinstance(v, bool) and math.isfinite(v)}
        report({**per_epoch, "evaluated": 1,
                **{k: v for k, v in final.items() if v is not None}})
    return final


def _train(trial: Mapping, data: dict, ckpt_dir: Path, store_dir: str, device: torch.device,
           report: Reporter | None, checkpoint: Checkpointer | None, restore_dir: str | None,
           progress: bool) -> list[dict]:
    """Train (or restore / reuse) the surrogate; kept checkpoints end up in ``ckpt_dir``."""
    from mtl.train import TrainConfig, load_train_state, save_train_state, train
    config = TrainConfig.from_dict(trial["run"].training)
    if trial["reuse_surrogates"]:
        entry = store.find_surrogate(trial["model_config"], store_dir)
        if entry is not None:
            _copy_model_files(entry, ckpt_dir)
            return json.loads((ckpt_dir / HISTORY).read_text())
    resume = None
    if restore_dir is not None and (Path(restore_dir) / STATE_FILE).is_file():
        _copy_model_files(restore_dir, ckpt_dir)
        resume = load_train_state(Path(restore_dir) / STATE_FILE)
    model = build_model(trial["model_config"], data["train"]).to(device)

    def callback(epoch: int, metrics: dict, state: dict) -> None:
        if checkpoint is not None:
            with tempfile.TemporaryDirectory(prefix="mtlsweep-ckpt-") as tmp:
                save_train_state(state, Path(tmp) / STATE_FILE)
                _copy_model_files(ckpt_dir, tmp)
                checkpoint(tmp)
        if report is not None:
            report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    if resume is not None and int(resume["epoch"]) >= config.epochs:
        history = list(resume["history"])  # the attempt before died after training
    else:
        result = train(model, data["train"], config, val_set=data["val"],
                       checkpoint_meta={"data": dict(trial["model_config"]["dataset"])},
                       compute=Compute.from_dict(trial["run"].compute),
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


def _evaluate(trial: Mapping, data: dict, ckpt_dir: Path, store_dir: str,
              device: torch.device, timings: dict[str, float]) -> tuple[list[dict], dict]:
    """Rows for every kept epoch (clean, white-box, cross-task, transfer) + final metrics.

    Each spec is crafted once per batch and scored on the surrogate and every target
    (`mtl.evaluate.evaluate_checkpoint`); the targets' clean scores are computed once per
    trial. Timings: ``eval_clean`` the surrogate's clean forwards, ``eval_whitebox`` crafting
    the specs (+ the official APGD's clean losses) and scoring them on the surrogate,
    ``eval_cross_task`` crafting the cross-task specs that are not among the specs and scoring
    them, ``eval_transfer`` the targets' clean reference and scoring the crafted batches on
    the targets. The run's ``compute`` settings apply to crafting (autocast, channels-last,
    torch.compile); scoring runs the eager model."""
    from mtl.attacks import AttackSpec
    from mtl.data import make_loader
    from mtl import evaluate
    from mtl.evaluate import TargetReference, cross_task_specs
    from mtl.models.task_model import as_task_model
    from mtl.train import load_checkpoint
    run: RunConfig = trial["run"]
    cross = run.cross_task
    attacks = run.attacks
    specs = [AttackSpec(**s) for s in attacks["specs"]]
    loader = make_loader(data["test"], attacks["batch_size"])
    t0 = time.perf_counter()
    targets = (store.load_targets(trial["targets"], store_dir, device, data["train"])
               if trial["targets"] else {})
    labels = {t["id"]: t["label"] for t in trial["targets"]}
    targets = {labels[k]: m for k, m in targets.items()}
    timings["zoo"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    reference = TargetReference(targets, loader) if targets else None
    timings["eval_transfer"] = time.perf_counter() - t0
    surrogate_id = config_hash(trial["model_config"])
    rows: list[dict] = []

    def add(kind: str, epoch: int, new: list[dict]) -> None:
        # target_id: the model the values were measured on: the surrogate itself for clean,
        # white-box and cross-task rows, the transfer target for transfer rows
        rows.extend({"epoch": epoch, "kind": kind, "surrogate_id": surrogate_id,
                     "target_id": surrogate_id, **row} for row in new)

    compute = Compute.from_dict(run.compute)
    craft = compute.crafter(evaluate._craft) if not compute.is_default else None
    model = build_model(trial["model_config"], data["train"])  # each epoch loads its weights
    cross_specs = (cross_task_specs(as_task_model(model, None).tasks, cross["method"],
                                    cross["eps"], cross["steps"]) if cross else [])
    for phase in ("clean", "whitebox", "cross_task"):
        timings.setdefault(f"eval_{phase}", 0.0)
    for epoch, path in sorted(checkpoint_paths(ckpt_dir).items()):
        load_checkpoint(str(path), model=model, device=device)
        compute.prepare_model(model).eval()
        # attacks with random starts repeat exactly
        torch.manual_seed(trial["labels"]["seed"] * 100_003 + epoch)
        result = evaluate.evaluate_checkpoint(model, loader, specs, reference,
                                              cross=cross_specs, craft=craft)
        for kind in ("clean", "whitebox", "cross_task", "transfer"):
            add(kind, epoch, getattr(result, kind))
        for phase, seconds in result.seconds.items():
            timings[f"eval_{phase}"] = timings.get(f"eval_{phase}", 0.0) + seconds
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
