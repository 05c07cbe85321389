"""One module per `mtlsweep` sub-command; see orchestrator/cli.py."""
from __future__ import annotations

import argparse


def check_common_args(args: argparse.Namespace, positive: tuple[str, ...]) -> None:
    """The argument checks that several commands share: a known --dataset and options that
    must be >= 1 when given. One ValueError naming the flag, before any work."""
    from mtl.data import DATASETS

    if args.dataset not in DATASETS:  # the built-in datasets these one-model commands read
        raise ValueError(f"--dataset: unknown {args.dataset!r}; allowed: {', '.join(DATASETS)}")
    for name in positive:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
