"""How a command ends, named: the conditions `orchestrator/cli.py` turns into one line and an
exit status instead of a traceback (kept free of heavy imports: every command loads it)."""
from __future__ import annotations

import errno


class SweepInterrupted(Exception):
    """The run was stopped (Ctrl-C / SIGTERM); the record keeps every finished epoch."""

    def __init__(self, experiment_dir: str, signum: int) -> None:
        super().__init__(experiment_dir)
        self.experiment_dir, self.signum = experiment_dir, signum


class SweepBusyError(RuntimeError):
    """Another live process holds the sweep's lock."""


def is_disk_full(err: BaseException | str) -> bool:
    """An OSError (or a recorded failure reason) that says the filesystem is full."""
    return getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err)


class StopRequest:
    """Set by the sweep's Ctrl-C / SIGTERM handler, read by Tune's Stopper: a plain picklable
    flag (Tune pickles its run config, so no lock or Event can live in it)."""

    def __init__(self) -> None:
        self.signum = 0

    def set(self, signum: int) -> None:
        if not self.signum:
            self.signum = signum

    def is_set(self) -> bool:
        return self.signum != 0
