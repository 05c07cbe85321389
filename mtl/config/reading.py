"""Typed readers for config values that know where they are: each failure is one `ConfigError`
whose message starts with the path of the bad value (``attacks.eps[1]: ...``) and lists what is
allowed. The run configuration (mtl/config), the configs it builds (`TrainConfig.validate`) and
the sweep spec (orchestrator/spec.py) all read through these, so a rule is written once."""
from __future__ import annotations

import difflib
import math
import reprlib
from typing import Any

SHOWN_CHARS = 80  # a value in a message is cut here: a message never embeds a huge value
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxlong = _REPR.maxother = SHOWN_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 12
_REPR.maxlevel = 4


class ConfigError(ValueError):
    """A malformed config; the message starts with the path of the offending value."""


def fail(path: str, message: str) -> None:
    raise ConfigError(f"{path}: {message}")


def show(values: Any) -> str:
    return ", ".join(str(v) for v in values)


def _small(value: Any, budget: int = 64) -> bool:
    """True when ``value`` has at most ``budget`` parts and short strings (cheap to repr);
    stops counting at the budget, so a huge value costs no more than a small one."""
    todo = [value]
    while todo:
        budget -= 1
        if budget < 0:
            return False
        item = todo.pop()
        if isinstance(item, dict):
            todo += [*item.keys(), *item.values()]
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo += list(item)[:budget + 1]
        elif isinstance(item, (str, bytes)) and len(item) > SHOWN_CHARS:
            return False
        elif isinstance(item, int) and not isinstance(item, bool) and \
                item.bit_length() > 4 * SHOWN_CHARS:
            return False
    return True


def clip(message: str, limit: int = 6 * SHOWN_CHARS) -> str:
    """``message`` with its middle cut out when longer than ``limit``: the start (the path)
    and the end (often the value or the allowed ones) stay. A backstop for messages written
    where values are not shown through `brief`."""
    if len(message) <= limit:
        return message
    tail = limit // 4
    return f"{message[:limit - tail - 5]} ... {message[-tail:]}"


def brief(value: Any, limit: int = SHOWN_CHARS, plain: bool = False) -> str:
    """``repr(value)`` (``str`` when ``plain``) cut to ``limit`` characters with ``...``
    after: the form of every value shown in a message, whatever its size."""
    if isinstance(value, str):
        text = value[:limit + 1] if plain else repr(value[:limit + 1])
    else:
        text = repr(value) if _small(value) else _REPR.repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Node:
    """A YAML mapping being read: typed getters that know their path, unknown-key detection."""

    def __init__(self, value: Any, path: str, keys: tuple[str, ...]) -> None:
        if not isinstance(value, dict):
            fail(path or "<top>", f"expected a mapping with keys {show(keys)}, "
                 f"got {type(value).__name__} {brief(value)}")
        for key in value:
            if key not in keys:
                close = difflib.get_close_matches(brief(key, plain=True), keys, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                fail(join(path, brief(key, plain=True)),
                     f"unknown key{hint}; allowed keys: {show(keys)}")
        self.value, self.path = value, path

    def at(self, key: str) -> str:
        return join(self.path, key)

    def get(self, key: str, default: Any = None) -> Any:
        return self.value.get(key, default)

    def require(self, key: str) -> Any:
        if key not in self.value:
            fail(self.at(key), "required key is missing")
        return self.value[key]


def join(path: str, key: Any) -> str:
    """``path.key`` (or ``key`` at the top)."""
    return f"{path}.{key}" if path else str(key)


def as_int(value: Any, path: str, lo: int | None = None, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(path, f"expected an integer, got {type(value).__name__} {brief(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        fail(path, f"{brief(value)} is out of range; allowed: {lo if lo is not None else '-inf'}.."
             f"{hi if hi is not None else 'inf'}")
    return value


def as_float(value: Any, path: str, lo: float | None = None, hi: float | None = None,
             lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        fail(path, f"expected a finite number, got {type(value).__name__} {brief(value)}")
    value = float(value)
    if lo is not None and (value < lo or (lo_open and value == lo)):
        fail(path, f"{value:g} is out of range; allowed: {'>' if lo_open else '>='} {lo:g}"
             + (f" and <= {hi:g}" if hi is not None else ""))
    if hi is not None and value > hi:
        fail(path, f"{value:g} is out of range; allowed: <= {hi:g}")
    return value


def _finite(value: int | float) -> bool:
    """True for a finite float or an int a float can hold (10**400 cannot)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def as_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        fail(path, f"expected true or false, got {brief(value)}")
    return value


def as_choice(value: Any, path: str, allowed: tuple[str, ...], what: str = "value") -> str:
    if not isinstance(value, str) or value not in allowed:
        fail(path, f"unknown {what} {brief(value)}; allowed: {show(allowed)}")
    return value


def as_list(value: Any, path: str, nonempty: bool = True) -> list:
    """A YAML list; a scalar is read as a one-element list (``seeds: 0`` == ``seeds: [0]``)."""
    items = value if isinstance(value, list) else [value]
    if nonempty and not items:
        fail(path, "expected a non-empty list")
    return items


def check_unique(items: list, path: str) -> None:
    """Each item once (``==``, so 4 and 4.0 are the same); linear for hashable items."""
    seen: set = set()
    unhashable: list = []
    for i, item in enumerate(items):
        try:
            repeated = item in seen
            seen.add(item)
        except TypeError:
            repeated = item in unhashable
            unhashable.append(item)
        if repeated:
            fail(f"{path}[{i}]", f"duplicate value {brief(item)}")
