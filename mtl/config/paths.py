"""Config values by dotted path: ``training.lr``, ``model.width``, ``attacks.steps``.

A sweep axis is a dotted path into the run configuration's YAML mapping; `set_path` writes one
value into a copy, `get_path` reads one, and `reroot` moves an error's path from where the rule
saw the value (``training.lr``) to where the user wrote it (``axes.training.lr[1]``).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from mtl.config.reading import ConfigError, brief

_MISSING = object()


def split_path(path: str) -> list[str]:
    """``"training.lr"`` -> ``["training", "lr"]``; empty parts are an error."""
    parts = path.split(".") if isinstance(path, str) else []
    if not parts or not all(parts):
        raise ConfigError(f"{brief(path)}: expected a dotted path of config keys like training.lr")
    return parts


def get_path(raw: Mapping, path: str, default: Any = _MISSING) -> Any:
    """The value at ``path`` in ``raw`` (``default`` when absent; KeyError without one)."""
    node: Any = raw
    for part in split_path(path):
        if not isinstance(node, Mapping) or part not in node:
            if default is _MISSING:
                raise KeyError(path)
            return default
        node = node[part]
    return node


def set_path(raw: Mapping, path: str, value: Any) -> dict:
    """A copy of ``raw`` with ``value`` at ``path`` (intermediate mappings are created; a
    scalar in the way is an error naming the path)."""
    out = dict(raw)
    node = out
    parts = split_path(path)
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, {})
        if child is None or child is False:
            child = {}
        if not isinstance(child, Mapping):
            raise ConfigError(f"{'.'.join(parts[:i + 1])}: is {brief(child)}, not a section, so "
                              f"{path} cannot be set")
        node[part] = dict(child)
        node = node[part]
    node[parts[-1]] = copy.deepcopy(value)
    return out


def pop_path(raw: dict, path: str) -> Any:
    """Remove and return the value at ``path`` (None when absent); ``raw`` is changed, the
    mappings along the path are copied first so callers' nested mappings stay untouched."""
    parts = split_path(path)
    node: Any = raw
    for part in parts[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(part), Mapping):
            return None
        child = dict(node[part])
        node[part] = child
        node = child
    return node.pop(parts[-1], None) if isinstance(node, dict) else None


def reroot(err: ConfigError, old: str, new: str) -> ConfigError:
    """``err`` with its leading path ``old`` (or ``old.<rest>``/``old[...]``) replaced by
    ``new``; other messages get ``new: `` in front."""
    text = str(err)
    for sep in (":", ".", "["):
        if text.startswith(old + sep):
            return ConfigError(new + text[len(old):])
    return ConfigError(f"{new}: {text}")
