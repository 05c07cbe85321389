"""The training loop: one multi-task model, one config, checkpoints at the kept epochs.

Each step optimises Σ_(b, w) w · Σ_t λ_t · mean_i L_t(b_i) over the batches that
`adversarial.training_batches` returns (just the clean batch without adversarial training),
with the base optimiser or, when `config.rho > 0`, the SAM/RFN step. The learning rate follows a
step schedule (`milestones`, 1-based epochs at whose start it is multiplied by `gamma`).

Per-epoch record (a flat dict, also the `metrics` given to `callback` and stored in checkpoint
metadata): `epoch`, `lr` (the rate used in this epoch), `lr_decayed` (True when this epoch's
rate is lower than the previous epoch's, i.e. a decay happened at this epoch's start), `kept`,
`time_s`, `train_loss`, `train_loss/<task>`, `val/<task>/<metric>` (when `val_set` is given)
and, at kept epochs with `config.sharpness`, `lambda_max`, `hessian_trace`, `sam_sharpness`,
`subset_loss`.

Each epoch shuffles the training set and drops a ragged last batch when there is at least one
full batch. Determinism: the global torch RNG is seeded with `config.seed` and the loader
shuffles with its own generator (`mtl.data.make_loader(seed=...)`); the state passed to
`callback` holds the model, optimiser, scheduler, both RNG states and the history, so
`train(..., resume_state=state)` continues bit-for-bit where the interrupted run stopped.
"""
from __future__ import annotations

import copy
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from mtl.config.compute import Compute
from mtl.models.outputs import task_outputs
from mtl.models.task_model import as_task_model, unwrap
from mtl.tasks import get_task, new_metrics, task_loss
from mtl.train.adversarial import training_batches
from mtl.train.checkpoints import save_checkpoint
from mtl.train.config import TrainConfig
from mtl.train.progress import print_epoch
from mtl.train.sam import SAMStep
from mtl.train.sharpness import measure_sharpness

Batch = dict[str, torch.Tensor]
Callback = Callable[[int, dict[str, Any], dict[str, Any]], None]
STATE_VERSION = 1


@dataclass
class TrainResult:
    """What `train` returns: per-epoch records, kept checkpoints (epoch -> .pt) and final state."""

    history: list[dict[str, Any]]
    checkpoints: dict[int, Path]
    state: dict[str, Any] = field(repr=False)


def save_train_state(state: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write a training state (from `callback`) with torch.save, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(dict(state), tmp)
    os.replace(tmp, path)


def load_train_state(path: str | os.PathLike) -> dict[str, Any]:
    """Read a state written by `save_train_state` (torch.load with weights_only=True)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"resume_state: {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def weighted_task_loss(model: nn.Module, batch: Batch, weights: Mapping[str, float], *,
                       tasks: Sequence[str] | None = None
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(Σ_t w_t · mean L_t, {t: mean L_t}) over the tasks with a non-zero weight.

    `tasks` names the tasks of a model without a `tasks` attribute (see `as_task_model`)."""
    model = as_task_model(model, tasks)
    tasks = [t for t in model.tasks if weights[t] != 0.0]
    preds = task_outputs(model, batch["image"], tasks)
    parts = {t: task_loss(t, preds[t], batch).mean() for t in tasks}
    total = sum(weights[t] * parts[t] for t in tasks)
    return total, parts


def evaluate_metrics(model: nn.Module, dataset: Any, batch_size: int,
                     device: torch.device, *, tasks: Sequence[str] | None = None
                     ) -> dict[str, float]:
    """`{"val/<task>/<metric>": value}` over `dataset` with the registry's accumulators.

    `tasks` names the tasks of a model without a `tasks` attribute (see `as_task_model`)."""
    from mtl.data import make_loader

    model = as_task_model(model, tasks, getattr(dataset, "task_channels", None))
    metrics = new_metrics(model.tasks, model.out_channels)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in make_loader(dataset, batch_size):
                batch = {k: v.to(device) for k, v in batch.items()}
                preds = task_outputs(model, batch["image"], model.tasks)
                for t, m in metrics.items():
                    m.update(preds[t], batch[t], batch.get(f"{t}_mask"))
    finally:
        model.train(was_training)
    return {f"val/{t}/{name}": v for t, m in metrics.items()
            for name, v in get_task(t).compute(m).items()}


def _check_inputs(model: nn.Module, train_set: Any, config: TrainConfig, val_set: Any,
                  checkpoint_dir: Any, resume_state: Any) -> None:
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: must be a TrainConfig, got {type(config).__name__}")
    config.validate()
    tasks = list(getattr(model, "tasks", []))
    if not tasks:
        raise ValueError("model: must be a multi-task model with a non-empty `tasks` attribute")
    unknown = sorted(set(config.loss_weights) - set(tasks))
    if unknown:
        raise ValueError(f"loss_weights: unknown task(s) {unknown}; allowed: {', '.join(tasks)}")
    if all(config.weight(t) == 0 for t in tasks):
        raise ValueError("loss_weights: at least one of the model's tasks needs a weight > 0")
    if config.rho > 0 and config.sam_shared_only \
            and not hasattr(unwrap(model), "shared_parameters"):
        raise ValueError("sam_shared_only: the model has no shared_parameters(); use false")
    if config.adv is not None and config.adv.task() not in (None, *tasks):
        raise ValueError(f"adv.objective: {config.adv.objective!r} attacks a task the model "
                         f"lacks; allowed tasks: {', '.join(tasks)}")
    for name, ds in (("train_set", train_set), ("val_set", val_set)):
        if ds is None:
            continue
        have = getattr(ds, "tasks", None)
        if have is not None and set(tasks) - set(have):
            raise ValueError(f"{name}: lacks labels for {sorted(set(tasks) - set(have))}; "
                             f"it has {', '.join(have)}")
        if len(ds) < (2 if name == "train_set" else 1):
            raise ValueError(f"{name}: has {len(ds)} samples; needs at least "
                             f"{2 if name == 'train_set' else 1}")
    if config.keep_epochs and checkpoint_dir is None:
        raise ValueError("checkpoint_dir: required when config.keep_epochs is non-empty")
    if resume_state is not None:
        if not isinstance(resume_state, Mapping) or resume_state.get("version") != STATE_VERSION:
            raise ValueError(f"resume_state: must be a state dict from train()'s callback "
                             f"(version {STATE_VERSION})")
        if resume_state.get("config") != config.to_dict():
            raise ValueError("resume_state: was produced with a different TrainConfig")


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    betas = {} if config.betas is None else {"betas": config.betas}
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, **betas)


def _scheduler_state(scheduler: Any) -> dict[str, Any]:
    """The scheduler's state with its Counter turned into a dict (weights_only-loadable)."""
    state = copy.deepcopy(scheduler.state_dict())
    state["milestones"] = dict(state["milestones"])
    return state


def _rng_state(loader: Any, device: torch.device) -> dict[str, Any]:
    rng = {"torch": torch.get_rng_state(), "loader": loader.generator.get_state()}
    if device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(device)
    return rng


def _set_rng_state(rng: Mapping[str, Any], loader: Any, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    loader.generator.set_state(rng["loader"])
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], device)


class NonFiniteLossError(ArithmeticError):
    """Training diverged: an epoch's mean loss is NaN or infinite (its weights are unusable)."""


def _check_finite(record: dict[str, Any], epoch: int, config: TrainConfig) -> None:
    bad = {k: v for k, v in record.items() if k.startswith("train_loss") and not math.isfinite(v)}
    if bad:
        raise NonFiniteLossError(
            f"training diverged at epoch {epoch}: " + ", ".join(f"{k} = {v}" for k, v in
                                                                sorted(bad.items()))
            + f" (training.lr = {config.lr:g}; a lower learning rate usually helps)")


def train(model: nn.Module, train_set: Any, config: TrainConfig, *, val_set: Any = None,
          checkpoint_dir: str | os.PathLike | None = None, callback: Callback | None = None,
          resume_state: Mapping[str, Any] | None = None, progress: bool = True,
          device: torch.device | str | None = None, tasks: Sequence[str] | None = None,
          out_channels: Mapping[str, int | None] | None = None,
          checkpoint_meta: Mapping[str, Any] | None = None,
          compute: Compute | None = None) -> TrainResult:
    """Train `model` on `train_set` under `config`; see the module docstring for the records.

    ``checkpoint_meta`` (JSON-able) goes into every kept checkpoint's sidecar, e.g.
    ``{"data": <dataset settings>}`` so that a checkpoint says what it was trained on.
    ``compute`` (`mtl.config.compute.Compute`): bf16 autocast around the forwards (and the
    adversarial-training attacks), channels-last model and images; default: neither.

    `model` is the built-in network or any module whose `forward(x)` returns {task: tensor};
    for one without a `tasks` attribute pass `tasks=` (and `out_channels=` for heads whose
    channel count neither the registry nor `train_set.task_channels` gives). Training updates
    `model`'s own parameters in place; checkpoints hold its own state_dict keys.
    """
    from mtl.data import make_loader

    model = as_task_model(model, tasks, out_channels if out_channels is not None
                          else getattr(train_set, "task_channels", None))
    _check_inputs(model, train_set, config, val_set, checkpoint_dir, resume_state)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    compute = compute or Compute()
    compute.prepare_model(model)
    weights = {t: config.weight(t) for t in model.tasks}

    torch.manual_seed(config.seed)
    # A ragged last batch is dropped (it is reshuffled into later epochs): a batch of one
    # sample cannot train BatchNorm, and equal batches keep SAM's ρ/‖g‖ comparable per step.
    loader = make_loader(train_set, config.batch_size, shuffle=True, seed=config.seed,
                         drop_last=len(train_set) > config.batch_size)
    optimizer = _make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=[m - 1 for m in config.milestones], gamma=config.gamma)
    sam = None
    if config.rho > 0:
        perturb = model.shared_parameters() if config.sam_shared_only else None
        sam = SAMStep(model, optimizer, config.rho, perturb_params=perturb)

    history: list[dict[str, Any]] = []
    checkpoints: dict[int, Path] = {}
    start, step = 0, 0
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        sched = dict(resume_state["scheduler"])
        sched["milestones"] = Counter({int(k): int(v) for k, v in sched["milestones"].items()})
        scheduler.load_state_dict(sched)
        _set_rng_state(resume_state["rng"], loader, device)
        start, step = int(resume_state["epoch"]), int(resume_state["step"])
        history = copy.deepcopy(list(resume_state["history"]))
        checkpoints = {int(e): Path(p) for e, p in resume_state["checkpoints"].items()}
    state = resume_state if resume_state is not None else {}
    prev_lr = history[-1]["lr"] if history else None

    for epoch in range(start + 1, config.epochs + 1):
        t0 = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        sums: dict[str, float] = {}
        seen = 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            batch["image"] = compute.images(batch["image"])
            with compute.autocast_context(device):
                pairs = training_batches(model, batch, config.adv, step)
            logged: dict[str, torch.Tensor] = {}

            def closure() -> torch.Tensor:
                total = 0.0
                parts_sum: dict[str, torch.Tensor] = {}
                for b, w in pairs:
                    with compute.autocast_context(device):
                        loss, parts = weighted_task_loss(model, b, weights)
                    if compute.autocast != "none":
                        loss = loss.float()  # a bf16 loss of a user's task sums in float32
                    total = total + w * loss
                    for t, v in parts.items():
                        parts_sum[t] = parts_sum.get(t, 0.0) + w * v.detach()
                if not logged:  # record the loss at w, not at the SAM-perturbed weights
                    logged.update(parts_sum, train_loss=total.detach())
                return total

            if sam is not None:
                sam.step(closure)
            else:
                optimizer.zero_grad(set_to_none=True)
                closure().backward()
                optimizer.step()
            n = batch["image"].shape[0]
            seen += n
            for k, v in logged.items():
                key = k if k == "train_loss" else f"train_loss/{k}"
                sums[key] = sums.get(key, 0.0) + float(v) * n
            step += 1
        scheduler.step()

        record: dict[str, Any] = {"epoch": epoch, "lr": lr,
                                  "lr_decayed": prev_lr is not None and lr < prev_lr,
                                  "kept": epoch in config.keep_epochs}
        record.update({k: v / seen for k, v in sums.items()})
        _check_finite(record, epoch, config)
        if val_set is not None:
            record.update(evaluate_metrics(model, val_set, config.batch_size, device))
        if record["kept"]:
            sharp = None
            if config.sharpness is not None:
                sharp = measure_sharpness(model, train_set, config.sharpness,
                                          loss_weights=weights, device=device)
                record.update(sharp)
            metrics = {k: v for k, v in record.items()
                       if k.startswith(("train_loss", "val/"))}
            meta = {**(checkpoint_meta or {}), "lr": lr, "lr_decayed": record["lr_decayed"],
                    "metrics": metrics,
                    "sharpness": sharp, "train_config": config.to_dict()}
            checkpoints[epoch] = save_checkpoint(model, checkpoint_dir, epoch, meta)
        record["time_s"] = time.perf_counter() - t0
        history.append(record)
        prev_lr = lr
        if progress:
            print_epoch(record, config.epochs)
        state = {"version": STATE_VERSION, "epoch": epoch, "step": step,
                 "config": config.to_dict(),
                 "model": copy.deepcopy(model.state_dict()),
                 "optimizer": copy.deepcopy(optimizer.state_dict()),
                 "scheduler": _scheduler_state(scheduler),
                 "rng": _rng_state(loader, device),
                 "history": copy.deepcopy(history),
                 "checkpoints": {e: str(p) for e, p in checkpoints.items()}}
        if callback is not None:
            callback(epoch, dict(record), state)
    return TrainResult(history=history, checkpoints=checkpoints, state=state)
