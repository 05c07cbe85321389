"""`attack(...)`: the one-call form of `Attack` (configure, then run on one batch)."""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor, nn

from mtl.attacks.attack_object import Attack


def attack(model: nn.Module, batch: Mapping[str, Tensor], *, method: str, objective: str,
           eps: float, steps: int = 10, tasks: Iterable[str] | None = None,
           **options: Any) -> Tensor:
    """Adversarial images for `batch["image"]` (same shape, in [0, 1], within eps/255 in L-inf).

    `model`: any `nn.Module` whose `forward(x)` returns a mapping task -> tensor. `eps` in 1/255
    units (eps=8 means 8/255). Raises one ValueError for a bad request or batch before any work;
    see `Attack` for the tasks attacked and the guarantees.
    """
    return Attack(model, method=method, objective=objective, eps=eps, steps=steps, tasks=tasks,
                  **options)(batch)
