"""The one rule for names that become file and directory names (a sweep's ``name``, trial ids).

A sweep's rows land in ``<storage>/<name>/results/<table>/<trial_id>.parquet``, first written
to ``.<trial_id>.parquet.tmp-<32 hex>``. So a name is plain ASCII that means the same on every
filesystem and object store: letters, digits and ``_ . = + -``; it does not start with a dot
(hidden, and ``.``/``..``) or a dash (read as an option by shell tools); it does not contain the
temporary-file marker ``.tmp-`` (readers skip such files); and it is at most `MAX_NAME_BYTES`
bytes, which leaves room in the 255-byte file-name limit of common filesystems for a trial id
of the same length plus the temporary suffix (1 + 100 + 8 + 5 + 32 = 146 bytes).
"""
from __future__ import annotations

import re
from typing import Any

from mtl.config.reading import ConfigError, brief

MAX_NAME_BYTES = 100
TMP_MARKER = ".tmp-"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.=+\-]*")
NAME_RULE = (f"ASCII letters, digits and _ . = + -, not starting with a dot or dash, without "
             f"'{TMP_MARKER}', at most {MAX_NAME_BYTES} characters")


def name_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a name (None when it is a good one)."""
    if not isinstance(value, str) or not value:
        return f"expected a non-empty name, got {brief(value)}"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        return f"{brief(value)} has {len(value.encode('utf-8', 'surrogatepass'))} bytes"
    if not NAME_PATTERN.fullmatch(value):
        return f"{brief(value)} has a character outside the allowed ones or starts with . or -"
    if TMP_MARKER in value:
        return f"{brief(value)} contains the temporary-file marker {TMP_MARKER!r}"
    return None


def check_name(value: Any, path: str) -> str:
    """``value`` if it is a good name, else one `ConfigError` naming ``path`` and the rule."""
    problem = name_problem(value)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}; allowed: {NAME_RULE}")
    return value
