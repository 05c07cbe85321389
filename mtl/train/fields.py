"""Reading a config dataclass back from a plain mapping, with one clear error for bad keys."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any, TypeVar

T = TypeVar("T")


def from_mapping(cls: type[T], data: Any, what: str) -> T:
    """`cls(**data)` after checking that `data` is a mapping whose keys are all fields of `cls`;
    otherwise one ValueError naming `what` and listing the allowed keys."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{what}: must be a mapping, got {type(data).__name__}")
    allowed = [f.name for f in fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValueError(f"{what}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")
    return cls(**dict(data))
