"""`PluginRegistry`: names -> factories, where a registered name and an import path
(``package.module:attribute``, see mtl.plugins) resolve through the same door, plus the checks a
factory's signature allows before any work (unknown keys with a hint, missing required keys).

The dataset registry (mtl.data.registry) and the model registry (mtl.models.registry) are two
instances. It is torch-free and generic; it sits in mtl.data only because that is where it was
first needed (the natural home is beside mtl.plugins).
"""
from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mtl.config.reading import brief
from mtl.plugins import load_object

Check = Callable[..., None]  # check(options, path[, tasks=..., split_sizes=...])
_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


def _parameters(factory: Callable) -> dict[str, inspect.Parameter] | None:
    """The factory's parameters, or None when Python cannot tell (C callables). Cached per
    callable: a sweep validates one config per axis value, each asking the same factories."""
    try:
        return _signature(factory)
    except TypeError:  # an unhashable callable: no cache
        return _signature.__wrapped__(factory)


@functools.lru_cache(maxsize=256)
def _signature(factory: Callable) -> dict[str, inspect.Parameter] | None:
    try:
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return None


def names_parameter(factory: Callable, name: str) -> bool:
    """True when the factory's signature names ``name`` as a keyword (``**kwargs`` does not
    count: nothing says the factory understands it)."""
    params = _parameters(factory)
    return params is not None and name in params and params[name].kind in _NAMED


def _open_ended(params: Mapping[str, inspect.Parameter] | None) -> bool:
    """True when any keyword is allowed: ``**kwargs``, or no signature to tell."""
    return params is None or any(p.kind is inspect.Parameter.VAR_KEYWORD
                                 for p in params.values())


def takes_keyword(factory: Callable, name: str) -> bool:
    """True when ``factory(name=...)`` is allowed: named, ``**kwargs``, or no signature."""
    return names_parameter(factory, name) or _open_ended(_parameters(factory))


def has_default(factory: Callable, name: str) -> bool:
    """True unless ``name`` is a named parameter without a default."""
    params = _parameters(factory) or {}
    return name not in params or params[name].default is not inspect.Parameter.empty


def source_path(source: Any, path: str) -> str:
    """The config path of a factory's source: ``<path>.factory`` for an import path,
    ``<path>.name`` for a registered name."""
    return f"{path}.factory" if isinstance(source, str) and ":" in source else f"{path}.name"


@dataclass(frozen=True)
class Entry:
    """A registered factory, its optional up-front value check ``check(options, path)`` and
    the task names it provides (None: it does not say)."""

    factory: Callable[..., Any]
    check: Check | None = None
    tasks: tuple[str, ...] | None = None


class PluginRegistry:
    """Factories of one kind (``"dataset"``, ``"model"``).

    Errors about the factory itself start with ``<path>.name`` for a registered name and
    ``<path>.factory`` for an import path (the config keys that hold them). ``passed`` are the
    keywords mtlsweep supplies itself (never user options), ``always`` those of them every
    factory must take; ``meanings`` explain well-known option keys in the "required" error
    (e.g. root -> "the directory it lives in").
    """

    def __init__(self, kind: str, passed: tuple[str, ...], always: tuple[str, ...],
                 meanings: Mapping[str, str] | None = None) -> None:
        self.kind = kind
        self.passed, self.always = passed, always
        self.meanings = dict(meanings or {})
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, factory: Callable[..., Any], *, check: Check | None = None,
                 tasks: Sequence[str] | None = None, replace: bool = False) -> None:
        """Register ``factory`` under ``name`` (providing ``tasks``, when it says); a second
        registration needs ``replace=True``."""
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"{self.kind} name: expected a non-empty string without ':' (names "
                             f"with ':' are import paths), got {name!r}")
        if not callable(factory):
            raise ValueError(f"{self.kind} {name!r}: factory must be callable, got "
                             f"{type(factory).__name__}")
        if check is not None and not callable(check):
            raise ValueError(f"{self.kind} {name!r}: check must be callable or None")
        if tasks is not None and (isinstance(tasks, str) or not all(
                isinstance(t, str) and t for t in tasks)):
            raise ValueError(f"{self.kind} {name!r}: tasks must be a sequence of task names "
                             f"or None, got {tasks!r}")
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered; pass replace=True "
                             "to replace it")
        self._entries[name] = Entry(factory, check, None if tasks is None else tuple(tasks))

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def tasks(self, source: str) -> tuple[str, ...] | None:
        """The task names a registered ``source`` provides (None: any, or it does not say)."""
        entry = self._entries.get(source)
        return entry.tasks if entry is not None else None

    def resolve(self, source: str, path: str) -> Callable[..., Any]:
        """The factory of a registered name or an import path (one ValueError otherwise)."""
        where = source_path(source, path)
        if isinstance(source, str) and ":" in source:
            factory = load_object(source, where)
            if not callable(factory):
                raise ValueError(f"{where}: {brief(source)} is a {type(factory).__name__}, not a "
                                 f"callable {self.kind} factory")
            return factory
        if source not in self._entries:
            raise ValueError(f"{where}: unknown {self.kind} {brief(source)}; registered: "
                             f"{', '.join(self.names()) or 'none'} (or an import path "
                             "'package.module:attribute')")
        return self._entries[source].factory

    def check_options(self, source: str, options: Mapping[str, Any], path: str,
                      context: Mapping[str, Any] | None = None) -> None:
        """Before any work: ``options`` fit the factory's signature (no reserved or unknown
        key, every required one given), then the registered value check, if any; it also
        gets those of ``context`` (e.g. ``tasks=``, ``split_sizes=``) its signature names."""
        factory = self.resolve(source, path)
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ValueError(f"{path}: expected a mapping of option names to values, got "
                             f"{brief(options)}")
        for key in options:
            if key in self.passed:
                raise ValueError(f"{path}.{key}: set by mtlsweep (passed to the {self.kind} "
                                 f"factory itself), not an option; remove it")
        for key in self.always:
            if not takes_keyword(factory, key):
                raise ValueError(f"{source_path(source, path)}: {source!r} takes no `{key}` "
                                 f"argument; a {self.kind} factory is called as "
                                 f"f({', '.join(k + '=...' for k in self.always)}, **options)")
        params = _parameters(factory)
        if params is not None:
            self._check_keys(source, factory, params, options, path)
        entry = self._entries.get(source)
        if entry is not None and entry.check is not None:
            extra = {k: v for k, v in (context or {}).items()
                     if v is not None and names_parameter(entry.check, k)}
            entry.check(options, path, **extra)

    def _check_keys(self, source: str, factory: Callable, params: dict[str, inspect.Parameter],
                    options: Mapping[str, Any], path: str) -> None:
        named = [n for n, p in params.items() if p.kind in _NAMED and n not in self.passed]
        if not _open_ended(params):  # no **kwargs: only named keys are accepted
            for key in options:
                if key not in named:
                    close = difflib.get_close_matches(key, named, n=1)
                    hint = f" (did you mean {close[0]!r}?)" if close else ""
                    raise ValueError(f"{path}.{brief(key, plain=True)}: unknown key for "
                                     f"{self.kind} {source!r}{hint}; allowed keys: "
                                     f"{', '.join(sorted(named)) or 'none'}")
        for key in named:
            if key not in options and not has_default(factory, key):
                meaning = f" ({self.meanings[key]})" if key in self.meanings else ""
                raise ValueError(f"{path}.{key}: required by {self.kind} {source!r}{meaning}")

    def passable(self, factory: Callable, keywords: Mapping[str, Any]) -> dict[str, Any]:
        """Those of ``keywords`` the factory takes (named, or it has ``**kwargs``)."""
        return {k: v for k, v in keywords.items() if takes_keyword(factory, k)}


__all__ = ["PluginRegistry", "Entry", "Check", "names_parameter", "takes_keyword",
           "has_default", "source_path"]
