"""`load_yaml`: YAML for config files, with the checks PyYAML's safe loader leaves out.

PyYAML keeps the last of two equal keys without a word, expands aliases into values that can
be exponentially larger than the file (a 1 KB "billion laughs" file), recurses once per nesting
level (5,000 nested lists end in a RecursionError) and reads any file size. Here, before any
Python value is built:

- the text is at most `MAX_BYTES`;
- nesting deeper than `MAX_DEPTH` levels stops the composer at that level;
- the composed node graph is measured without expanding it (each node once, sizes added up
  through aliases): more than `MAX_VALUES` values after expansion, an alias that contains
  itself, or a value nested deeper than `MAX_DEPTH` through aliases is refused;
- a key written twice in one mapping is refused, naming its path (merge keys ``<<`` may be
  overridden: that is what they are for);
- only JSON's kinds of values are made: null, bool, int, float, str, lists and mappings. Dates
  stay strings (``2024-01-01``); ``!!binary``, ``!!set``, ``!!omap``, ``!!pairs``,
  ``!!timestamp`` and unknown tags are refused; an int has at most `MAX_INT_DIGITS` digits.

Every failure is one `ConfigError` line starting with the YAML path (``training.lr: ...``) or,
for the text as a whole, its name (the file path).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from mtl.config.reading import ConfigError, brief

MAX_BYTES = 1 << 20          # 1 MiB: a sweep file is a few KB
MAX_DEPTH = 50               # sweep files nest about 5 levels
MAX_VALUES = 100_000         # values (scalars, lists, mappings, keys) after alias expansion
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


class GuardedLoader(yaml.SafeLoader):
    """A SafeLoader that refuses what `load_yaml` refuses (see the module docstring).

    ``name`` (the file path, or ``<yaml>``) starts the messages about the text as a whole."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def __init__(self, stream: Any, name: str = "<yaml>") -> None:
        super().__init__(stream)
        self.source_name = name
        self._trail: list[Any] = []

    # --- composition: a depth limit, with the path so far for the message ---------------
    def compose_node(self, parent: Node | None, index: Any) -> Node:
        self._trail.append(index)
        try:
            if len(self._trail) > MAX_DEPTH:
                path = ""
                for step in self._trail[1:]:
                    path = _step(path, step) if step is not None else path
                raise ConfigError(f"{brief(path or self.source_name, plain=True)}: nested "
                                  f"deeper than {MAX_DEPTH} levels ({_mark(self.peek_event())})"
                                  f"; allowed: at most {MAX_DEPTH}")
            return super().compose_node(parent, index)
        finally:
            self._trail.pop()

    def get_single_node(self) -> Node | None:
        node = super().get_single_node()
        if node is not None:
            self._measure(node)
        return node

    # --- the node graph, measured once per node (never expanded) --------------------------
    def _measure(self, root: Node) -> None:
        """Sizes and depths of every node through aliases, cycles, duplicate keys."""
        paths: dict[int, str] = {id(root): ""}
        size: dict[int, int] = {}
        depth: dict[int, int] = {}
        stack: list[tuple[Node, bool]] = [(root, False)]
        while stack:
            node, finished = stack.pop()
            nid = id(node)
            kids = _children(node)
            if finished:
                size[nid] = 1 + sum(size[id(k)] for _, k in kids)
                depth[nid] = 1 + max((depth[id(k)] for _, k in kids), default=0)
                continue
            if nid in size:
                continue
            if nid in depth:  # entered and not finished: we are inside it
                raise ConfigError(f"{paths[nid] or self.source_name}: an alias refers to a "
                                  f"value that contains it ({_mark(node)}); allowed: aliases "
                                  "of finished values only")
            depth[nid] = -1
            if isinstance(node, MappingNode):
                self._check_keys(node, paths[nid])
            stack.append((node, True))
            for key, kid in reversed(kids):
                paths.setdefault(id(kid), _step(paths[nid], key))
                stack.append((kid, False))
        self._check_budget(root, paths, size, depth)

    def _check_keys(self, node: MappingNode, path: str) -> None:
        seen: dict[Any, Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE or not isinstance(key_node, ScalarNode):
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:
                continue
            if first is not key_node:
                raise ConfigError(f"{brief(_step(path, key_node), plain=True)}: duplicate key "
                                  f"({_mark(first)} and {_mark(key_node)}); YAML would keep "
                                  "only the last; allowed: each key once per mapping")

    def _check_budget(self, root: Node, paths: dict[int, str], size: dict[int, int],
                      depth: dict[int, int]) -> None:
        def worst(measure: dict[int, int], limit: int) -> str:
            """The path of the first top-level value over ``limit`` (the text's name if
            only their sum is)."""
            for _, kid in _children(root):
                if measure[id(kid)] > limit - 1:
                    return brief(paths[id(kid)], plain=True) or self.source_name
            return self.source_name

        if size[id(root)] > MAX_VALUES:
            raise ConfigError(f"{worst(size, MAX_VALUES)}: expands to more than {MAX_VALUES} "
                              f"values through YAML aliases (&anchor / *alias); allowed: at "
                              f"most {MAX_VALUES} values")
        if depth[id(root)] > MAX_DEPTH:
            raise ConfigError(f"{worst(depth, MAX_DEPTH)}: nested deeper than {MAX_DEPTH} "
                              f"levels through YAML aliases; allowed: at most {MAX_DEPTH}")

    # --- construction: JSON's kinds of values only -----------------------------------------
    def construct_yaml_int(self, node: ScalarNode) -> int:
        if len(node.value) > MAX_INT_DIGITS:
            raise ConfigError(f"{self.source_name}: an integer of {len(node.value)} digits "
                              f"({_mark(node)}); allowed: at most {MAX_INT_DIGITS} digits")
        return super().construct_yaml_int(node)

    def construct_refused(self, node: Node) -> Any:
        raise ConfigError(f"{self.source_name}: YAML tag {node.tag} is not allowed "
                          f"({_mark(node)}); allowed: null, true/false, numbers, strings, "
                          "lists and mappings")


GuardedLoader.add_constructor("tag:yaml.org,2002:int", GuardedLoader.construct_yaml_int)
for _tag in _REFUSED_TAGS:
    GuardedLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", GuardedLoader.construct_refused)


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
    loader = GuardedLoader(text, name)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as err:
        raise ConfigError(f"{name}: not valid YAML: {_one_line(err)}") from None
    finally:
        loader.dispose()
