"""`Option`: one option an attack method or objective accepts, with its default and its check.

Methods and objectives declare their options next to their code (`option_specs`, option name ->
`Option`), so validation asks the registered classes instead of one central table that would
have to know every option of every method.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """Default value, a predicate on values, and the allowed values in words (for errors)."""

    default: Any
    accepts: Callable[[Any], bool]
    allowed: str

    def problem(self, name: str, value: Any) -> str | None:
        """One readable problem with `value`, or None when it is accepted."""
        if self.accepts(value):
            return None
        return f"option {name}: must be {self.allowed}, got {value!r}"


def option_problems(specs: Mapping[str, Option], options: Mapping[str, Any]) -> list[str]:
    """Problems with the values of the declared options in `options` (others are skipped)."""
    problems = (specs[k].problem(k, v) for k, v in options.items() if k in specs)
    return [p for p in problems if p]


def defaults_of(specs: Mapping[str, Option]) -> dict[str, Any]:
    """Option name -> default value."""
    return {k: spec.default for k, spec in specs.items()}


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def flag(default: bool) -> Option:
    """A boolean option."""
    return Option(default, lambda v: isinstance(v, bool), "true or false")


def integer(default: int, minimum: int | None = None) -> Option:
    """An int option, optionally bounded below."""
    return Option(default, lambda v: _is_int(v) and (minimum is None or v >= minimum),
                  "an int" if minimum is None else f"an int >= {minimum}")


def number(default: float | None, minimum: float | None = None, maximum: float | None = None,
           *, positive: bool = False, none_ok: bool = False, unit: str = "") -> Option:
    """A finite number option in [minimum, maximum] (> 0 when `positive`; None allowed when
    `none_ok`). `unit` is appended to the message, e.g. " (1/255 units)"."""
    def accepts(v: Any) -> bool:
        if v is None:
            return none_ok
        return (_is_number(v) and (minimum is None or v >= minimum)
                and (maximum is None or v <= maximum) and (not positive or v > 0))

    if positive:
        words = "a number > 0"
    elif minimum is not None and maximum is not None:
        words = f"a number in [{minimum:g}, {maximum:g}]"
    elif minimum is not None:
        words = f"a number >= {minimum:g}"
    else:
        words = "a finite number"
    return Option(default, accepts, words + unit + (" or None" if none_ok else ""))


def choice(default: Any, values: Sequence[Any]) -> Option:
    """An option whose value is one of `values`."""
    allowed = tuple(values)
    return Option(default, lambda v: v in allowed, f"one of {list(allowed)}")


def number_mapping(minimum: float = 0.0) -> Option:
    """An option that is None (default) or a mapping name -> finite number >= `minimum`."""
    def accepts(v: Any) -> bool:
        return v is None or (isinstance(v, Mapping) and all(
            isinstance(k, str) and _is_number(x) and x >= minimum for k, x in v.items()))
    return Option(None, accepts, f"None or a mapping task -> number >= {minimum:g}")
