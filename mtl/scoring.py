"""Scoring pieces of the evaluation (mtl.evaluate): a model's metric accumulators, the transfer
targets' clean reference computed once per trial, per-phase clocks and the RNG streams that
keep interleaved attack kinds drawing what each drew alone."""
from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtl.attacks.modes import eval_mode, held_eval
from mtl.models.outputs import task_outputs
from mtl.models.task_model import as_task_model
from mtl.tasks import get_task, new_metrics

SUCCESS_TASK = "scene_class"


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter."""
    return next(model.parameters()).device


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on `device`."""
    return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}


def task_model(model: nn.Module, tasks: Sequence[str] | None) -> nn.Module:
    """`model` with `tasks` / `out_channels`; `tasks` names a plain model's tasks only (for a
    model that has them, `tasks` selects what to score, see `eval_tasks`)."""
    return as_task_model(model, None if getattr(model, "tasks", None) is not None else tasks)


def eval_tasks(model: nn.Module, batch: Mapping[str, Any], tasks: Sequence[str] | None
               ) -> tuple[str, ...]:
    """Tasks to score: `tasks` (checked) or the model's tasks that have labels in the batch."""
    model_tasks = tuple(model.tasks)
    if tasks is None:
        return tuple(t for t in model_tasks if t in batch)
    bad = [t for t in tasks if t not in model_tasks or t not in batch]
    if bad:
        raise ValueError(f"tasks: {bad} not predicted by the model or not labelled in the batch; "
                         f"allowed: {[t for t in model_tasks if t in batch]}")
    return tuple(tasks)


class Scorer:
    """Metric accumulators of one model on its tasks."""

    def __init__(self, model: nn.Module, tasks: Sequence[str]) -> None:
        self.model, self.tasks = model, tuple(tasks)
        self.metrics = new_metrics(self.tasks, model.out_channels)
        self.count = 0  # images scored: the n behind every metric

    @torch.no_grad()
    def predict(self, images: Tensor) -> dict[str, Tensor]:
        with eval_mode(self.model):  # free inside an evaluation pass that holds eval mode
            return task_outputs(self.model, images.to(device_of(self.model)), self.tasks)

    def update(self, images: Tensor, batch: Mapping[str, Any]) -> dict[str, Tensor]:
        preds = self.predict(images)
        self.count += int(images.shape[0])
        for t in self.tasks:
            self.metrics[t].update(preds[t], batch[t], batch.get(t + "_mask"))
        return preds

    def compute(self) -> dict[str, dict[str, float]]:
        return {t: get_task(t).compute(m) for t, m in self.metrics.items()}


def progress_line(enabled: bool, what: str, i: int) -> None:
    """A one-line progress counter on stderr (when enabled)."""
    if enabled:
        print(f"\r{what}: batch {i + 1}", end="", file=sys.stderr, flush=True)


class TargetReference:
    """The transfer targets' clean scores over one loader, computed once per trial (targets and
    test data do not change between a trial's checkpoints): each target's clean metrics and,
    per batch, which examples every scene classifier gets right (the RFN success rate's
    qualifying examples). `evaluate_checkpoint` needs the same loader, batch for batch."""

    def __init__(self, targets: Mapping[str, nn.Module], loader: Iterable[Mapping[str, Tensor]],
                 tasks: Sequence[str] | None = None) -> None:
        if not targets:
            raise ValueError("targets: need at least one target model")
        models = {tid: task_model(target, tasks) for tid, target in targets.items()}
        self.clean: dict[str, Scorer] = {}
        self.correct: list[Tensor | None] = []  # per batch, on the CPU
        with held_eval(models.values()):
            self._score(loader, models)
        if not self.clean:
            raise ValueError("loader: yielded no batch")
        self.metrics = {tid: scorer.compute() for tid, scorer in self.clean.items()}
        self.counted = sum(int(c.sum()) for c in self.correct if c is not None)

    def _score(self, loader: Iterable[Mapping[str, Tensor]], models: Mapping[str, nn.Module]
               ) -> None:
        for batch in loader:
            if not self.clean:
                self.clean = {tid: Scorer(m, eval_tasks(m, to_device(batch, device_of(m)), None))
                              for tid, m in models.items()}
            correct = None
            for scorer in self.clean.values():
                preds = scorer.update(batch["image"], to_device(batch, device_of(scorer.model)))
                if SUCCESS_TASK in scorer.tasks:
                    ok = correct_mask(preds, batch)
                    correct = ok if correct is None else correct & ok
            self.correct.append(correct)


def correct_mask(preds: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:
    """Which examples the scene classifier gets right (bool, CPU)."""
    label = batch[SUCCESS_TASK].to(preds[SUCCESS_TASK].device)
    return (preds[SUCCESS_TASK].argmax(1) == label).cpu()


def rng_state() -> list[Tensor]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return [torch.random.get_rng_state(), *cuda]


class RngStream:
    """A copy of the global RNG state that one kind of attack draws from, so kinds interleaved
    batch by batch (white-box/transfer specs, cross-task specs) draw exactly what each drew
    when run alone after the same seed (the built-in attacks draw nothing global; a plugin's
    may)."""

    def __init__(self) -> None:
        self.state = rng_state()

    def __enter__(self) -> None:
        torch.random.set_rng_state(self.state[0])
        if len(self.state) > 1:
            torch.cuda.set_rng_state_all(self.state[1:])

    def __exit__(self, *exc: object) -> None:
        self.state = rng_state()


class PhaseClock:
    """Seconds per phase (a CUDA device is synchronised at each switch, so queued GPU work is
    charged to the phase that queued it)."""

    def __init__(self, device: torch.device) -> None:
        self.seconds: dict[str, float] = {}
        self.cuda = device.type == "cuda"

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        if self.cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - t0
