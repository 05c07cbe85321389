"""`mtlsweep analyze DIR --out DIR`: tables, PNG plots and report.md from parquet results."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl

from orchestrator.results_reading import ResultsWarning


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``analyze`` sub-command."""
    parser = subparsers.add_parser(
        "analyze", help="analyse a sweep's results: tables, PNG plots and report.md",
        description="Read <DIR>/results/*/ (a sweep directory) or <DIR>/*/results/*/ (a storage "
                    "directory holding several sweeps) and write PNG plots and report.md.")
    parser.add_argument("results_dir", metavar="DIR",
                        help="sweep directory, or storage directory holding several sweeps")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: DIR/analysis)")
    parser.add_argument("--sweep", default=None,
                        help="analyse only this sweep of a storage directory")
    parser.set_defaults(func=run)
    return parser


def print_summary(summary: pl.DataFrame) -> None:
    """The compact summary table, sized for a terminal."""
    if summary.is_empty():
        print("(no white-box attack measurements to summarise)")
        return
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=4, tbl_hide_column_data_types=True,
                   tbl_hide_dataframe_shape=True, tbl_width_chars=120):
        print("mean white-box Δ per objective and ε (negative = the attack hurt):")
        print(summary)


@contextmanager
def clean_warnings(prefix: str) -> Iterator[None]:
    """Print each ResultsWarning raised inside once, as ``<prefix>: warning: <path>: <reason>``
    on stderr (not Python's warning format with source lines); other warnings pass through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResultsWarning)
        try:
            yield
        finally:
            seen: set[str] = set()
            for w in caught:
                if not issubclass(w.category, ResultsWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                elif str(w.message) not in seen:
                    seen.add(str(w.message))
                    print(f"{prefix}: warning: {w.message}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    """Analyse, print the summary and where the report went."""
    from orchestrator.analysis import analyze  # polars queries + matplotlib: import only when run

    if not os.path.isdir(args.results_dir) and "://" not in args.results_dir:
        raise FileNotFoundError(f"DIR {args.results_dir!r} is not a directory")
    out = Path(args.out) if args.out else Path(args.results_dir) / "analysis"
    with clean_warnings("mtlsweep analyze"):
        result = analyze(args.results_dir, out, sweep=args.sweep)
    print_summary(result.summary)
    for key, why in result.missing.items():
        print(f"  {key}: {why}")
    if result.skipped:
        print(f"{len(result.skipped)} result files skipped (named above and in the report)")
    print(f"report: {result.report}  ({len(result.plots)} plots in {out})")
    return 0
