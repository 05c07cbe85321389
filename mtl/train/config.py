"""`TrainConfig`: everything that decides one training run (and nothing about data or model).

Epochs are 1-based throughout. `milestones` are the epochs at whose START the learning rate is
multiplied by `gamma` (milestones=(6,) with lr=0.1: epochs 1-5 run at 0.1, epoch 6 on at 0.01).
`keep_epochs` are the epochs at whose END a checkpoint is kept (the early-stopping epochs of
the RFN paper, all from one run); empty = keep none. `rho` = 0 trains with the base optimiser,
rho > 0 with the SAM/RFN step (sam.py) over all trainable parameters or, with
`sam_shared_only`, over `model.shared_parameters()`. `loss_weights` maps task -> weight
(missing tasks weigh 1). `betas` are Adam's (beta1, beta2); None = torch's (0.9, 0.999).

Fields added after the first release (:data:`LATER_FIELDS`) are left out of `to_dict` while
they hold their default, so a config that does not use them keeps its hash (trial ids, model
store keys) across versions.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from mtl.config.limits import MAX_SEED
from mtl.config.reading import (as_bool, as_choice, as_float, as_int, check_unique, fail,
                                join)
from mtl.train.adversarial import AdvTrainConfig
from mtl.train.fields import from_mapping
from mtl.train.sharpness import SharpnessConfig

OPTIMIZERS = ("sgd", "adam")
MAX_EPOCHS = 10_000
MAX_MOMENTUM = 0.999
LATER_FIELDS = ("betas",)
"""Fields omitted from `to_dict` at their default (see the module docstring)."""


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
    betas: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for name in ("milestones", "keep_epochs", "betas"):
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

    def validate(self, path: str = "") -> None:
        """Raise one ConfigError (a ValueError) naming the first bad field — under ``path``
        when given (``training.lr: ...``) — and its allowed values. The sweep YAML is checked
        by this same method, so each rule lives here once."""
        def at(name: str) -> str:
            return join(path, name)

        as_int(self.epochs, at("epochs"), 1, MAX_EPOCHS)
        as_int(self.batch_size, at("batch_size"), 1)
        as_choice(self.optimizer, at("optimizer"), OPTIMIZERS, "optimizer")
        as_float(self.lr, at("lr"), 0.0, lo_open=True)
        as_float(self.momentum, at("momentum"), 0.0, MAX_MOMENTUM)
        self._check_betas(at("betas"))
        as_float(self.weight_decay, at("weight_decay"), 0.0)
        as_float(self.gamma, at("gamma"), 0.0, 1.0, lo_open=True)
        # decays happen at an epoch's start, and epoch 1 has no previous rate to decay
        self._check_epochs("milestones", low=2, path=path)
        self._check_epochs("keep_epochs", low=1, path=path)
        if not isinstance(self.loss_weights, dict):
            fail(at("loss_weights"), f"expected a mapping task -> weight, "
                 f"got {self.loss_weights!r}")
        for task, w in self.loss_weights.items():
            if not isinstance(task, str):
                fail(at("loss_weights"), f"task names must be strings, got {task!r}")
            as_float(w, at(f"loss_weights.{task}"), 0.0)
        as_int(self.seed, at("seed"), 0, MAX_SEED)
        as_float(self.rho, at("rho"), 0.0)
        as_bool(self.sam_shared_only, at("sam_shared_only"))
        if self.adv is not None:
            if not isinstance(self.adv, AdvTrainConfig):
                fail(at("adv"), f"must be an AdvTrainConfig, a mapping or None, "
                     f"got {type(self.adv).__name__}")
            self.adv.validate()
        if self.sharpness is not None:
            if not isinstance(self.sharpness, SharpnessConfig):
                fail(at("sharpness"), f"must be a SharpnessConfig, a mapping or None, "
                     f"got {type(self.sharpness).__name__}")
            self.sharpness.validate()

    def _check_betas(self, where: str) -> None:
        if self.betas is None:
            return
        if self.optimizer != "adam":
            fail(where, f"Adam's (beta1, beta2): only with optimizer adam, not "
                 f"{self.optimizer!r}")
        if not isinstance(self.betas, tuple) or len(self.betas) != 2:
            fail(where, f"expected two numbers [beta1, beta2] in [0, 1), got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            as_float(beta, f"{where}[{i}]", 0.0)
            if beta >= 1.0:
                fail(f"{where}[{i}]", f"{beta!r} is out of range; allowed: 0 <= beta < 1")

    def _check_epochs(self, name: str, low: int, path: str) -> None:
        v = getattr(self, name)
        where = join(path, name)
        if not isinstance(v, tuple):
            fail(where, f"expected a list of epochs, got {v!r}")
        for i, e in enumerate(v):
            as_int(e, f"{where}[{i}]", low, self.epochs)
        check_unique(list(v), where)
        if list(v) != sorted(v):
            fail(where, f"expected increasing epochs, got {list(v)}")

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
            if f.name in LATER_FIELDS and v == f.default:
                continue
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys raise a ValueError listing the allowed ones."""
        return from_mapping(cls, data, "train config")
