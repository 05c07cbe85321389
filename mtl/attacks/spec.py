"""`AttackSpec`: one attack configuration (method x objective x eps x steps x options)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from mtl.attacks.registry import canonical_method, validate_attack


@dataclass(frozen=True)
class AttackSpec:
    """An attack as evaluation and the orchestrator pass it around. `eps` in 1/255 units;
    `options` are method/objective options (read-only after construction)."""

    method: str
    objective: str
    eps: float
    steps: int = 10
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def __hash__(self) -> int:
        return hash((self.method, self.objective, self.eps, self.steps,
                     tuple(sorted((k, repr(v)) for k, v in self.options.items()))))

    def validate(self, tasks: Sequence[str] | None = None) -> "AttackSpec":
        """Raise one ValueError naming every bad field (tasks: the model's tasks, if known)."""
        validate_attack(self.method, self.objective, self.eps, self.steps, self.options, tasks)
        return self

    @property
    def canonical_method(self) -> str:
        """The method name with aliases resolved ('ifgsm' -> 'pgd')."""
        return canonical_method(self.method)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; `AttackSpec.from_dict` reads it back."""
        return {"method": self.method, "objective": self.objective, "eps": self.eps,
                "steps": self.steps, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "AttackSpec":
        """Inverse of `to_dict` (unknown keys are an error)."""
        unknown = sorted(set(data) - {"method", "objective", "eps", "steps", "options"})
        if unknown:
            raise ValueError(f"attack spec: unknown key(s) {unknown}; allowed: "
                             f"['eps', 'method', 'objective', 'options', 'steps']")
        return cls(**data)
