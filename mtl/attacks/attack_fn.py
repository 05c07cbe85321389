"""`attack(...)`: the one-call form of `Attack` (configure, then run on one batch)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from mtl.attacks.attack_object import Attack


def attack(model: nn.Module, batch: Mapping[str, Tensor], *, method: str, objective: str,
           eps: float, steps: int = 10, tasks: Iterable[str] | None = None,
           clean_outputs: Mapping[str, Tensor] | None = None, **options: Any) -> Tensor:
    """Adversarial images for `batch["image"]` (same shape, in [0, 1], within eps/255 in L-inf).

    `model`: any `nn.Module` whose `forward(x)` returns a mapping task -> tensor. `eps` in 1/255
    units (eps=8 means 8/255). Raises one ValueError for a bad request or batch before any work;
    see `Attack` for the tasks attacked and the guarantees. `clean_outputs`: the model's outputs
    on the clean batch, to spare the relative-change objectives their clean forward (see
    `Attack.__call__`).
    """
    return Attack(model, method=method, objective=objective, eps=eps, steps=steps, tasks=tasks,
                  **options)(batch, clean_outputs)
