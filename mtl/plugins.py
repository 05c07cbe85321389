"""Users' own code, named by import path: ``"package.module:attribute"`` (the entry-point
convention), e.g. ``mypkg.nets:build``. Registries (datasets, models, tasks, attacks) resolve
a name that contains ``:`` through `load_object`; built-ins are plain registered names.

A user package beside the sweep file or in the working directory is importable without
installing it: the sweep adds those directories with `add_import_paths` on the driver and in
every trial (on a cluster the package travels with the job's working directory).
"""
from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable
from typing import Any

_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def is_import_path(name: Any) -> bool:
    """True for strings shaped like ``package.module:attribute``."""
    return isinstance(name, str) and bool(_PATH.match(name))


def load_object(path: str, what: str = "plugin") -> Any:
    """The object named by ``package.module:attribute``; one ValueError (starting with
    ``what``) saying which part failed: the spelling, the import (with the module's own
    error) or the attribute (with the names the module does have)."""
    if not is_import_path(path):
        raise ValueError(f"{what}: {path!r} is not an import path; expected "
                         "'package.module:attribute' (e.g. 'mypkg.nets:build')")
    module_name, attr = path.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # the user's module may raise anything while importing
        raise ValueError(f"{what}: cannot import module {module_name!r} for {path!r} "
                         f"({type(err).__name__}: {err}); is the package beside the sweep "
                         f"file, in the working directory or installed?") from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(obj) if not n.startswith("_"))
            raise ValueError(f"{what}: module {module_name!r} has no attribute {attr!r}; "
                             f"it has: {', '.join(public[:20]) or 'nothing public'}")
        obj = getattr(obj, part)
    return obj


def add_import_paths(paths: Iterable[str]) -> None:
    """Put ``paths`` at the front of ``sys.path`` (once each), so user packages import."""
    for path in reversed([str(p) for p in paths]):
        if path and path not in sys.path:
            sys.path.insert(0, path)
