"""`load_yaml`: YAML for config files, with the checks PyYAML's safe loader leaves out.

PyYAML keeps the last of two equal keys without a word, expands aliases into values that can
be exponentially larger than the file (a 1 KB "billion laughs" file), recurses once per nesting
level (5,000 nested lists end in a RecursionError) and reads any file size. Here, before any
Python value is built:

- the text is at most `MAX_BYTES`;
- nesting deeper than `MAX_DEPTH` levels stops the composer at that level;
- the node graph is measured while it is composed, without expanding it (each node once; an
  alias adds the size of the value it names): more than `MAX_VALUES` values (every scalar,
  list, mapping and key counts), also after alias expansion, an alias that contains itself,
  or a value nested deeper than `MAX_DEPTH` through aliases stops it at that value;
- a key written twice in one mapping is refused, naming its path (merge keys ``<<`` may be
  overridden: that is what they are for);
- only JSON's kinds of values are made: null, bool, int, float, str, lists and mappings. Dates
  stay strings (``2024-01-01``); ``!!binary``, ``!!set``, ``!!omap``, ``!!pairs``,
  ``!!timestamp`` and unknown tags are refused; an int has at most `MAX_INT_DIGITS` digits.

Every failure is one `ConfigError` line starting with the YAML path (``training.lr: ...``) or,
for the text as a whole, its name (the file path). libyaml scans and parses when PyYAML has
it (several times faster on long lists); the composition with its checks is Python's.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.resolver import Resolver

try:  # libyaml's parser, when PyYAML was built with it
    from yaml._yaml import CParser
except ImportError:  # pragma: no cover - depends on the PyYAML build
    CParser = None

from mtl.config.reading import ConfigError, brief

MAX_BYTES = 1 << 20          # 1 MiB: a sweep file is a few KB
MAX_DEPTH = 50               # sweep files nest about 5 levels
MAX_VALUES = 20_000          # values after alias expansion: an axis of 10,000 seeds fits
MAX_INT_DIGITS = 100         # int64 has 19 digits; Python refuses above 4,300 anyway
_MERGE = "tag:yaml.org,2002:merge"
_TIMESTAMP = "tag:yaml.org,2002:timestamp"
_REFUSED_TAGS = ("binary", "set", "omap", "pairs", "timestamp")


def _mark(node_or_mark: Any) -> str:
    mark = getattr(node_or_mark, "start_mark", node_or_mark)
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _step(path: str, key: Any) -> str:
    """``path`` + one step: ``[i]`` for a list index, ``.key`` for a mapping key."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, ScalarNode):
        key = key.value
    elif isinstance(key, Node):
        key = "?"
    return f"{path}.{key}" if path else str(key)


class _Guards:
    """The checks of `load_yaml`, mixed into a loader in front of PyYAML's Composer: the
    graph is measured while it is composed (each node once; an alias adds its node's size),
    so composition stops at the first value over a limit. ``source_name`` (the file path, or
    ``<yaml>``) starts the messages about the text as a whole."""

    source_name = "<yaml>"

    def _start_guards(self, name: str) -> None:
        self.source_name = name
        self._trail: list[Any] = []
        self._count = 0
        self._size: dict[int, int] = {}
        self._depth: dict[int, int] = {}

    def _path(self, extra: Any = None) -> str:
        path = ""
        for step in [*self._trail[1:], *([] if extra is None else [extra])]:
            path = _step(path, step) if step is not None else path
        return brief(path, plain=True) or self.source_name

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._trail.append(index)
        try:
            level = len(self._trail)
            if level > MAX_DEPTH:
                raise ConfigError(f"{self._path()}: nested deeper than {MAX_DEPTH} levels "
                                  f"({_mark(self.peek_event())}); allowed: at most {MAX_DEPTH}")
            alias = self.check_event(AliasEvent)
            if not alias:
                self._count += 1
                if self._count > MAX_VALUES:
                    raise ConfigError(f"{self._path()}: the text has more than {MAX_VALUES} "
                                      f"values ({_mark(self.peek_event())}); allowed: at most "
                                      f"{MAX_VALUES}")
            node = super().compose_node(parent, index)  # type: ignore[misc]
            if alias and id(node) not in self._size:
                raise ConfigError(f"{self._path()}: an alias refers to a value that contains "
                                  f"it ({_mark(node)}); allowed: aliases of finished values")
            if not alias:
                self._measure(node)
            if level - 1 + self._depth[id(node)] > MAX_DEPTH:
                raise ConfigError(f"{self._path()}: nested deeper than {MAX_DEPTH} levels "
                                  "through YAML aliases; allowed: at most "
                                  f"{MAX_DEPTH}")
            return node
        finally:
            self._trail.pop()

    def _measure(self, node: Node) -> None:
        """Size (values after alias expansion) and depth of a node just composed."""
        kids = _children(node)
        size = 1 + sum(self._size[id(k)] for _, k in kids)
        self._size[id(node)] = size
        self._depth[id(node)] = 1 + max((self._depth[id(k)] for _, k in kids), default=0)
        if size > MAX_VALUES:
            raise ConfigError(f"{self._path()}: expands to more than {MAX_VALUES} values "
                              f"through YAML aliases (&anchor / *alias) ({_mark(node)}); "
                              f"allowed: at most {MAX_VALUES} values")
        if isinstance(node, MappingNode):
            self._check_keys(node)

    def _check_keys(self, node: MappingNode) -> None:
        """No key twice (merge keys ``<<`` aside): PyYAML would keep the last silently."""
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)  # type: ignore[attr-defined]
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue
            if first is not key_node:
                raise ConfigError(f"{self._path(key_node)}: duplicate key ({_mark(first)} and "
                                  f"{_mark(key_node)}); YAML would keep only the last; "
                                  "allowed: each key once per mapping")

    # --- construction: JSON's kinds of values only -----------------------------------------
    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_DIGITS:
            raise ConfigError(f"{self.source_name}: an integer of {len(node.value)} digits "
                              f"({_mark(node)}); allowed: at most {MAX_INT_DIGITS} digits")
        return SafeConstructor.construct_yaml_int(self, node)  # type: ignore[arg-type]

    def construct_refused(self, node: Node) -> Any:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise ConfigError(f"{self.source_name}: YAML tag {tag} is not allowed "
                          f"({_mark(node)}); allowed: null, true/false, numbers, strings, "
                          "lists and mappings")


_RESOLVERS = {first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
              for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


class GuardedLoader(_Guards, yaml.SafeLoader):
    """A pure-Python SafeLoader with the checks of `load_yaml` (the module docstring)."""

    yaml_implicit_resolvers = _RESOLVERS

    def __init__(self, stream: Any, name: str = "<yaml>") -> None:
        yaml.SafeLoader.__init__(self, stream)
        self._start_guards(name)

    def fetch_flow_collection_start(self, token_class: type) -> None:
        """Flow collections (``[[[...``) are counted as they are scanned: PyYAML's scanner
        looks ahead over all of them in quadratic time before the composer sees one."""
        if self.flow_level >= MAX_DEPTH:
            raise ConfigError(f"{self.source_name}: nested deeper than {MAX_DEPTH} levels "
                              f"({_mark(self.get_mark())}); allowed: at most {MAX_DEPTH}")
        super().fetch_flow_collection_start(token_class)


LOADERS: list[type] = [GuardedLoader]
if CParser is not None:
    class CGuardedLoader(_Guards, Composer, CParser, SafeConstructor, Resolver):
        """`GuardedLoader` with libyaml's scanner and parser (about 5x faster on long
        lists); composition stays in Python, where the checks are."""

        yaml_implicit_resolvers = _RESOLVERS

        def __init__(self, stream: Any, name: str = "<yaml>") -> None:
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)
            self._start_guards(name)

    LOADERS.insert(0, CGuardedLoader)

for _loader in LOADERS:
    _loader.add_constructor("tag:yaml.org,2002:int", _Guards.construct_yaml_int)
    for _tag in _REFUSED_TAGS:
        _loader.add_constructor(f"tag:yaml.org,2002:{_tag}", _Guards.construct_refused)


def _children(node: Node) -> list[tuple[Any, Node]]:
    """(step, child) of a node: list positions, or each key node and its value."""
    if isinstance(node, SequenceNode):
        return list(enumerate(node.value))
    if isinstance(node, MappingNode):
        out: list[tuple[Any, Node]] = []
        for key, value in node.value:
            out += [(None, key), (key, value)]
        return out
    return []


def _one_line(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    if "maximum nesting depth" in problem:  # libyaml's own limit (1,000 levels)
        return (f"nested deeper than {MAX_DEPTH} levels ({_mark(err.problem_mark)}); "
                f"allowed: at most {MAX_DEPTH}")
    where = _mark(getattr(err, "problem_mark", None))
    context = getattr(err, "context", None)
    return " ".join(f"{problem}{f' ({where})' if where else ''}"
                    f"{f', {context}' if context else ''}".split())


def load_yaml(source: str | bytes | os.PathLike, name: str | None = None) -> Any:
    """The value of one YAML document: ``source`` is a path (`os.PathLike`) to read, or the
    YAML text itself (str or bytes). ``name`` starts messages about the text as a whole
    (default: the path, or ``<yaml>``). Raises one-line `ConfigError`s (module docstring)."""
    if isinstance(source, os.PathLike):
        path = Path(source)
        name = name or str(path)
        try:
            if path.stat().st_size > MAX_BYTES:
                raise ConfigError(f"{name}: the file has {path.stat().st_size} bytes; allowed: "
                                  f"at most {MAX_BYTES} bytes (1 MiB)")
            with path.open("rb") as handle:
                text: str | bytes = handle.read(MAX_BYTES + 1)
        except OSError as err:
            raise ConfigError(f"{name}: cannot be read ({err.strerror or err})") from None
    elif isinstance(source, (str, bytes)):
        name, text = name or "<yaml>", source
    else:
        raise TypeError(f"load_yaml: expected a path (os.PathLike) or the YAML text, got "
                        f"{type(source).__name__}")
    if len(text) > MAX_BYTES:
        raise ConfigError(f"{name}: more than {MAX_BYTES} bytes; allowed: at most {MAX_BYTES} "
                          "bytes (1 MiB)")
    loader = LOADERS[0](text, name)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        text = _one_line(err)
        raise ConfigError(f"{name}: {'' if text.startswith('nested') else 'not valid YAML: '}"
                          f"{text}") from None
    finally:
        loader.dispose()
