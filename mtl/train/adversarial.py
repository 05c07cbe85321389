"""Adversarial training: which batches one optimiser step trains on.

`training_batches` turns one clean batch into a list of `(batch, weight)` pairs. Adversarial
images are crafted with the shared attack library (`mtl.attacks.attack`, eps in 1/255 units) in
eval mode, so BatchNorm running statistics only ever see the batches the model is trained on.
Mixing follows the DGBA paper's code (`alternate`: clean on even steps, adversarial on odd
steps) or a fixed convex combination (`weighted`: clean with `clean_weight`, adversarial with
`1 - clean_weight`, both in the same step).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from mtl.models.task_model import as_task_model
from mtl.tasks import task_names
from mtl.config.reading import as_float
from mtl.train.fields import from_mapping

Batch = dict[str, torch.Tensor]

ADV_METHODS = ("fgsm", "pgd")
ADV_MIXES = ("alternate", "weighted")
_OBJECTIVES_TEXT = "total, dgba, single:<task>"


@dataclass(frozen=True)
class AdvTrainConfig:
    """How adversarial examples are crafted and mixed into training.

    objective: `total`, `dgba` or `single:<task>` (the attack's objective, see docs/design.md §3).
    method: `fgsm` (one step of eps) or `pgd` (I-FGSM, `steps` steps of eps/steps).
    eps: L-inf radius in 1/255 units (8 means 8/255). steps: PGD iterations (FGSM uses 1).
    mix: `alternate` or `weighted`; clean_weight: the clean batch's weight for `weighted`.
    options: extra keyword options passed to `mtl.attacks.attack` (e.g. `random_start`; with
    it and no fixed `seed`, each step's random start is seeded from the global torch RNG).
    """

    objective: str = "total"
    method: str = "pgd"
    eps: float = 8.0
    steps: int = 10
    mix: str = "alternate"
    clean_weight: float = 0.5
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.options, Mapping):
            object.__setattr__(self, "options", dict(self.options))
        self.validate()

    def validate(self) -> None:
        """Raise one ValueError naming the first bad field and its allowed values."""
        obj = self.objective
        if not isinstance(obj, str):
            raise ValueError(f"adv.objective: must be one of {_OBJECTIVES_TEXT}, got {obj!r}")
        if obj.startswith("single:"):
            names = task_names()
            if obj[len("single:"):] not in names:
                raise ValueError(f"adv.objective: unknown task in {obj!r}; allowed: "
                                 + ", ".join(f"single:{t}" for t in names))
        elif obj not in ("total", "dgba"):
            raise ValueError(f"adv.objective: must be one of {_OBJECTIVES_TEXT}, got {obj!r}")
        if self.method not in ADV_METHODS:
            raise ValueError(f"adv.method: must be one of {', '.join(ADV_METHODS)}, "
                             f"got {self.method!r}")
        as_float(self.eps, "adv.eps", 0.0, 255.0, lo_open=True)  # 1/255 units
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"adv.steps: must be an int >= 1, got {self.steps!r}")
        if self.mix not in ADV_MIXES:
            raise ValueError(f"adv.mix: must be one of {', '.join(ADV_MIXES)}, got {self.mix!r}")
        w = self.clean_weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 <= w <= 1.0:
            raise ValueError(f"adv.clean_weight: must be a number in [0, 1], got {w!r}")
        if not isinstance(self.options, dict):
            raise ValueError(f"adv.options: must be a mapping of attack options, "
                             f"got {self.options!r}")
        if self.options:  # checked by the attack library's own validator, before any work
            from mtl.attacks.registry import validate_attack

            try:
                validate_attack(self.method, self.objective, float(self.eps), self.steps,
                                self.options, task_names())
            except ValueError as err:
                raise ValueError(f"adv.options: {err}") from None

    def task(self) -> str | None:
        """The attacked task for `single:<task>` objectives, else None."""
        return self.objective[len("single:"):] if self.objective.startswith("single:") else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict that `from_dict` reads back."""
        out = asdict(self)
        out["options"] = dict(self.options)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AdvTrainConfig":
        """Inverse of `to_dict`; unknown keys raise a ValueError listing the allowed ones."""
        return from_mapping(cls, data, "adv")


def craft_adversarial(model: nn.Module, batch: Batch, cfg: AdvTrainConfig, *,
                      tasks: Sequence[str] | None = None) -> Batch:
    """A copy of `batch` whose image is replaced by an adversarial one (detached).

    The model's train/eval mode is the same after the call as before it. `tasks` names the
    tasks of a model without a `tasks` attribute (see `as_task_model`).
    """
    from mtl.attacks import attack  # late import: mtl.train must not need attacks to load

    model = as_task_model(model, tasks)
    was_training = model.training
    steps = 1 if cfg.method == "fgsm" else cfg.steps
    options = dict(cfg.options)
    if options.get("random_start") and "seed" not in options:
        # The attack library seeds its random start with options["seed"] (default 0, the same
        # noise every call); training wants fresh noise per step, drawn from the global RNG,
        # which the trainer seeds and checkpoints, so runs and resumes stay reproducible.
        options["seed"] = int(torch.randint(0, 2**31 - 1, (1,)).item())
    x_adv = attack(model, batch, method=cfg.method, objective=cfg.objective, eps=float(cfg.eps),
                   steps=steps, **options)
    model.train(was_training)  # attack() restores the mode itself; make sure of it
    out = dict(batch)
    out["image"] = x_adv.detach()
    return out


def training_batches(model: nn.Module, batch: Batch, cfg: AdvTrainConfig | None,
                     step: int, *, tasks: Sequence[str] | None = None
                     ) -> list[tuple[Batch, float]]:
    """The (batch, weight) pairs that training step `step` (0-based, global) optimises.

    No adversarial training: `[(batch, 1.0)]`. `alternate`: the clean batch on even steps and
    the adversarial batch on odd steps. `weighted`: `[(clean, w), (adv, 1 - w)]`, dropping an
    entry whose weight is 0 (so no attack is crafted when w = 1). `tasks`: as for
    `craft_adversarial`.
    """
    if cfg is None:
        return [(batch, 1.0)]
    model = as_task_model(model, tasks)
    if cfg.mix == "alternate":
        if step % 2 == 0:
            return [(batch, 1.0)]
        return [(craft_adversarial(model, batch, cfg), 1.0)]
    w = float(cfg.clean_weight)
    pairs: list[tuple[Batch, float]] = []
    if w > 0.0:
        pairs.append((batch, w))
    if w < 1.0:
        pairs.append((craft_adversarial(model, batch, cfg), 1.0 - w))
    return pairs
