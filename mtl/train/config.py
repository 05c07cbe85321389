"""`TrainConfig`: everything that decides one training run (and nothing about data or model).

Epochs are 1-based throughout. `milestones` are the epochs at whose START the learning rate is
multiplied by `gamma` (milestones=(6,) with lr=0.1: epochs 1-5 run at 0.1, epoch 6 on at 0.01).
`keep_epochs` are the epochs at whose END a checkpoint is kept (the early-stopping epochs of
the RFN paper, all from one run); empty = keep none. `rho` = 0 trains with the base optimiser,
rho > 0 with the SAM/RFN step (sam.py) over all trainable parameters or, with
`sam_shared_only`, over `model.shared_parameters()`. `loss_weights` maps task -> weight
(missing tasks weigh 1).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from mtl.train.adversarial import AdvTrainConfig
from mtl.train.fields import from_mapping
from mtl.train.sharpness import SharpnessConfig

OPTIMIZERS = ("sgd", "adam")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class TrainConfig:
    """One training run's hyper-parameters; validated on construction (see module docstring)."""

    epochs: int = 10
    batch_size: int = 32
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    loss_weights: Mapping[str, float] = field(default_factory=dict)
    keep_epochs: tuple[int, ...] = ()
    seed: int = 0
    rho: float = 0.0
    sam_shared_only: bool = False
    adv: AdvTrainConfig | None = None
    sharpness: SharpnessConfig | None = None

    def __post_init__(self) -> None:
        for name in ("milestones", "keep_epochs"):
            v = getattr(self, name)
            if isinstance(v, (list, tuple)):
                object.__setattr__(self, name, tuple(v))
        if isinstance(self.loss_weights, Mapping):
            object.__setattr__(self, "loss_weights", dict(self.loss_weights))
        if isinstance(self.adv, Mapping):
            object.__setattr__(self, "adv", AdvTrainConfig.from_dict(self.adv))
        if isinstance(self.sharpness, Mapping):
            object.__setattr__(self, "sharpness", SharpnessConfig.from_dict(self.sharpness))
        self.validate()

    def validate(self) -> None:
        """Raise one ValueError naming the first bad field and its allowed values."""
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise ValueError(f"{name}: must be an int >= 1, got {v!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer: must be one of {', '.join(OPTIMIZERS)}, "
                             f"got {self.optimizer!r}")
        if not _is_num(self.lr) or self.lr <= 0:
            raise ValueError(f"lr: must be a finite number > 0, got {self.lr!r}")
        if not _is_num(self.momentum) or not 0 <= self.momentum < 1:
            raise ValueError(f"momentum: must be a number in [0, 1), got {self.momentum!r}")
        if not _is_num(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay: must be a number >= 0, got {self.weight_decay!r}")
        if not _is_num(self.gamma) or not 0 < self.gamma <= 1:
            raise ValueError(f"gamma: must be a number in (0, 1], got {self.gamma!r}")
        self._check_epochs("milestones", low=2)
        self._check_epochs("keep_epochs", low=1)
        if not isinstance(self.loss_weights, dict):
            raise ValueError(f"loss_weights: must be a mapping task -> weight, "
                             f"got {self.loss_weights!r}")
        for task, w in self.loss_weights.items():
            if not isinstance(task, str) or not _is_num(w) or w < 0:
                raise ValueError(f"loss_weights: must map task names to numbers >= 0, "
                                 f"got {task!r}: {w!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed: must be an int >= 0, got {self.seed!r}")
        if not _is_num(self.rho) or self.rho < 0:
            raise ValueError(f"rho: must be a number >= 0 (0 = base optimiser), got {self.rho!r}")
        if not isinstance(self.sam_shared_only, bool):
            raise ValueError(f"sam_shared_only: must be true or false, "
                             f"got {self.sam_shared_only!r}")
        if self.adv is not None:
            if not isinstance(self.adv, AdvTrainConfig):
                raise ValueError(f"adv: must be an AdvTrainConfig, a mapping or None, "
                                 f"got {type(self.adv).__name__}")
            self.adv.validate()
        if self.sharpness is not None:
            if not isinstance(self.sharpness, SharpnessConfig):
                raise ValueError(f"sharpness: must be a SharpnessConfig, a mapping or None, "
                                 f"got {type(self.sharpness).__name__}")
            self.sharpness.validate()

    def _check_epochs(self, name: str, low: int) -> None:
        v = getattr(self, name)
        allowed = f"strictly increasing ints in [{low}, epochs={self.epochs}]"
        if not isinstance(v, tuple) or not all(_is_int(e) for e in v):
            raise ValueError(f"{name}: must be a list of {allowed}, got {v!r}")
        if any(e < low or e > self.epochs for e in v) or list(v) != sorted(set(v)):
            raise ValueError(f"{name}: must be {allowed}, got {list(v)}")

    def weight(self, task: str) -> float:
        """The loss weight of `task` (1 when not listed)."""
        return float(self.loss_weights.get(task, 1.0))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (lists, not tuples) that `from_dict` reads back."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, dict):
                v = dict(v)
            elif isinstance(v, (AdvTrainConfig, SharpnessConfig)):
                v = v.to_dict()
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys raise a ValueError listing the allowed ones."""
        return from_mapping(cls, data, "train config")
