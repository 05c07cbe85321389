"""`mtlsweep run SWEEP --dry-run`: check everything that can be checked without training.

Beyond the spec's own validation (every axis value, plugin imports, dataset options), a dry run
builds each split of the first trial's dataset, runs one small batch through the model and
every task's loss and metric, and checks that the storage can be written — then prints the
trial grid. Nothing is started (no Ray) and nothing is written: the dataset cache goes to a
temporary directory that is removed afterwards.
"""
from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from collections.abc import Iterator
from typing import Any

import torch

from mtl.config.build import build_model, build_split, register_tasks
from mtl.config.reading import ConfigError
from mtl.config.run import RunConfig
from mtl.data import make_loader
from mtl.models import DEFAULT_MODEL
from mtl.models.outputs import task_outputs
from mtl.tasks import get_task, task_loss
from orchestrator.spec import SweepSpec, describe

PROBE_BATCH = 2


@contextmanager
def _scratch_cache() -> Iterator[None]:
    """Point the dataset cache at a temporary directory for the duration of the probe."""
    old = os.environ.get("MTLSWEEP_CACHE")
    with tempfile.TemporaryDirectory(prefix="mtlsweep-dryrun-") as tmp:
        os.environ["MTLSWEEP_CACHE"] = tmp
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("MTLSWEEP_CACHE", None)
            else:
                os.environ["MTLSWEEP_CACHE"] = old


def _model_path(run: RunConfig) -> str:
    return "model.factory" if run.model["source"] != DEFAULT_MODEL else "model"


def probe_run(run: RunConfig) -> dict[str, Any]:
    """Build the data and the model of ``run`` and push one batch through the model and every
    task's loss and metric; one ConfigError naming the field on the first failure."""
    register_tasks(run.tasks)
    splits = {split: build_split(run.dataset, split) for split in ("train", "val")}
    splits["test"] = build_split(run.dataset, "test", run.attacks["eval_samples"])
    batch = next(iter(make_loader(splits["train"], min(PROBE_BATCH, len(splits["train"])))))
    for i, task in enumerate(run.task_names):
        if task not in batch:
            labels = sorted(k for k in batch if k != "image")
            raise ConfigError(f"tasks[{i}]: the dataset's samples have no label {task!r}; "
                              f"they have {labels}")
    model = build_model(run.model_key(), splits["train"]).eval()
    try:
        with torch.no_grad():
            out = task_outputs(model, batch["image"], run.task_names)
    except ValueError as err:
        raise ConfigError(f"{_model_path(run)}: {err}") from None
    except Exception as err:  # the user's forward may raise anything
        raise ConfigError(f"{_model_path(run)}: forward on a batch of images "
                          f"{tuple(batch['image'].shape)} failed: {type(err).__name__}: {err}"
                          ) from None
    for i, task in enumerate(run.task_names):
        try:
            loss = task_loss(task, out[task], batch)
        except Exception as err:
            raise ConfigError(f"tasks[{i}].loss: {type(err).__name__}: {err}") from None
        if tuple(loss.shape) != (batch["image"].shape[0],) or not torch.isfinite(loss).all():
            raise ConfigError(f"tasks[{i}].loss: expected a finite per-sample tensor of shape "
                              f"[{batch['image'].shape[0]}], got {tuple(loss.shape)} {loss}")
        try:
            metric = get_task(task).new_metric(model.out_channels.get(task))
            metric.update(out[task], batch[task], batch.get(f"{task}_mask"))
            values = {k: float(v) for k, v in metric.compute().items()}
        except Exception as err:
            raise ConfigError(f"tasks[{i}].metric: {type(err).__name__}: {err}") from None
        bad = {k: v for k, v in values.items() if math.isinf(v)}  # NaN = undefined, allowed
        if bad:
            raise ConfigError(f"tasks[{i}].metric: compute() gave non-finite values {bad}")
    return {"samples": {k: len(v) for k, v in splits.items()},
            "parameters": sum(p.numel() for p in model.parameters())}


def dry_run(spec: SweepSpec) -> str:
    """Check ``spec`` as far as possible without training; the printed grid on success."""
    with _scratch_cache():
        facts = probe_run(spec.run)
    lines = [describe(spec), f"trials: {spec.num_grid_trials()}"
             + (f" grid points x {spec.search['num_samples']} samples ({spec.search['mode']} "
                f"search)" if spec.search["mode"] != "grid" else "")]
    for axis in spec.axes:
        lines.append(f"  axis {axis.path} ({axis.source}): "
                     + ", ".join(repr(v) for v in axis.values))
    for path, dist in spec.search.get("space", {}).items():
        lines.append(f"  search {path}: {dist['kind']} {dist['values']}")
    lines.append(f"data: {facts['samples']}; model: {facts['parameters']:,} parameters; "
                 f"resources per trial: {spec.resource_request()}")
    lines.append("dry run: everything checked; nothing started, nothing written")
    return "\n".join(lines)
