"""One `mtlsweep run` per sweep at a time: an exclusive lock on ``<storage>/<sweep>/.lock``.

A second run (or resume) of the same sweep while the first is alive would run every trial twice
and interleave their files; it is refused, naming the holder. The lock is ``fcntl.flock``, so
the kernel releases it when the holder dies (even by SIGKILL): there is no stale lock to clean.
On object stores (``s3://``...) there is no lock primitive; the lock then lives in the local
temporary directory, keyed by the URI, and only protects against runs on the same machine.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from orchestrator.exits import SweepBusyError
from orchestrator.fs import local_path

LOCK_FILE = ".lock"


def _lock_path(exp_dir: str) -> Path:
    local = local_path(exp_dir)
    if local is not None:
        return Path(local) / LOCK_FILE
    key = hashlib.sha256(exp_dir.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"mtlsweep-lock-{key}"


@contextlib.contextmanager
def sweep_lock(exp_dir: str) -> Iterator[None]:
    """Hold the sweep's lock for the block; SweepBusyError at once when another run holds it."""
    path = _lock_path(exp_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read(500).strip() or "another process"
            raise SweepBusyError(
                f"{exp_dir} is in use by another mtlsweep run ({holder}); wait for it to end "
                "or stop it, then run again") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        handle.flush()
        try:
            yield
        finally:
            handle.seek(0)
            handle.truncate()
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
