"""`mtlsweep analyze DIR [--sweep NAME] [--out DIR]`: tables, PNG plots and report.md from
parquet results, one report per sweep.

DIR is a sweep directory (``<storage>/<sweep>``, it has ``results/``) or a storage directory
holding several sweeps (``<storage>/*/results/``). Several sweeps are never pooled: each gets
its own report, in ``<storage>/<sweep>/analysis/`` or ``--out DIR/<sweep>/``; ``--sweep NAME``
analyses one of them. The analysis itself (orchestrator/analysis.py) is imported only when the
command runs, so the CLI starts without polars queries or matplotlib (and never imports torch).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.fs as pafs

from orchestrator import analysis_copy, claims_table
from orchestrator.results_paths import is_uri, resolve
from orchestrator.results_reading import ResultsWarning


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``analyze`` sub-command."""
    parser = subparsers.add_parser(
        "analyze", help="analyse sweeps' results: tables, PNG plots and report.md per sweep",
        description="Read <DIR>/results/*/ (a sweep directory) or <DIR>/*/results/*/ (a storage "
                    "directory holding several sweeps) and write PNG plots and report.md: one "
                    "report per sweep, never several sweeps pooled.")
    parser.add_argument("results_dir", metavar="DIR",
                        help="sweep directory, or storage directory holding several sweeps")
    parser.add_argument("--out", metavar="DIR", default=None,
                        help="output directory (default: <sweep>/analysis; for a storage "
                             "directory each sweep's report goes to DIR/<sweep>/)")
    parser.add_argument("--sweep", default=None, metavar="NAME",
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
    on stderr (not Python's warning format with source lines); other warnings pass through,
    re-issued once the recording has stopped (re-issuing them while recording would record
    them again, without end)."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResultsWarning)
            yield
    finally:
        seen: set[str] = set()
        for w in caught:
            if not issubclass(w.category, ResultsWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            elif str(w.message) not in seen:
                seen.add(str(w.message))
                print(f"{prefix}: warning: {w.message}", file=sys.stderr)


@dataclass(frozen=True)
class Target:
    """One analysis to run: the sweep's name, where its results are and where its report goes."""
    name: str
    results: str
    out: Path


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


def sweeps_under(path: str) -> list[str] | None:
    """The sweeps of a storage directory (its sub-directories holding ``results/``, sorted), or
    None when ``path`` is itself a sweep directory (or a results or table directory: analysed
    as it is). FileNotFoundError when ``path`` is not a directory."""
    remote, root = resolve(path)
    fs = remote or pafs.LocalFileSystem()
    root = root.rstrip("/") or "/"
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"DIR {path!r} is not a directory")
    if fs.get_file_info(_join(root, "results")).type == pafs.FileType.Directory:
        return None
    subs = [s for s in fs.get_file_info(pafs.FileSelector(root))
            if s.type == pafs.FileType.Directory and not s.base_name.startswith(".")]
    names = sorted(s.base_name for s in subs if fs.get_file_info(
        _join(s.path, "results")).type == pafs.FileType.Directory)
    return names or None


def targets(path: str, out: str | None, sweep: str | None) -> tuple[list[Target], bool]:
    """What ``mtlsweep analyze`` analyses, and whether ``path`` is one sweep: the one sweep
    directory, or each sweep of a storage directory (``sweep`` picks one: ValueError listing
    the sweeps when there is none of that name)."""
    names = sweeps_under(path)
    if names is None:
        default = Path(path) / "analysis" if not is_uri(path) else None
        if out is None and default is None:
            raise ValueError(f"DIR {path!r} is a URI: say where the report goes with --out")
        return [Target(sweep or Path(path.rstrip("/")).name, path,
                       Path(out) if out else default)], True
    if sweep is not None:
        if sweep not in names:
            raise ValueError(f"no sweep {sweep!r} under {path}; its sweeps: {', '.join(names)}")
        names = [sweep]
    if out is None and is_uri(path):
        raise ValueError(f"DIR {path!r} is a URI: say where the reports go with --out")
    return [Target(name, _join(path, name),
                   Path(out) / name if out else Path(path) / name / "analysis")
            for name in names], False


ANNOUNCE_FROM = 1000
"""Result files from which a full read (seconds to minutes) is announced."""


def announce_full_read(target: Target) -> None:
    """One line on stderr before a large sweep's per-trial files are all read (no consolidated
    copy of the current files: about a minute at 10,000 trials), so a long read is not silent."""
    found = analysis_copy.listing(target.results)
    if found is not None and found[1] >= ANNOUNCE_FROM and \
            not analysis_copy.exists(target.results, found[0]):
        print(f"mtlsweep analyze: reading all {found[1]} result files of {target.name} (no "
              "consolidated copy of these files yet)", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    """Analyse each sweep on its own, print its summary, then the list of reports."""
    from orchestrator.analysis import analyze  # polars queries + matplotlib: import only when run

    todo, single = targets(args.results_dir, args.out, args.sweep)
    done: list[str] = []
    failed = 0
    for target in todo:
        if not single:
            print(f"== sweep {target.name} ==")
        announce_full_read(target)
        try:
            with clean_warnings("mtlsweep analyze"):
                # a sweep directory may be filtered by --sweep; a storage's sweep is its directory
                result = analyze(target.results, target.out,
                                 sweep=args.sweep if single else None)
        except FileNotFoundError as err:
            if single:
                raise
            failed += 1
            print(f"mtlsweep analyze: error: sweep {target.name}: {err}", file=sys.stderr)
            done.append(f"  {target.name}: not analysed ({err})")
            continue
        print_summary(result.summary)
        print(claims_table.summary(result.claims))
        for key, why in result.missing.items():
            print(f"  {key}: {why}")
        if result.skipped:
            print(f"{len(result.skipped)} result files skipped (named above and in the report)")
        done.append(f"  {target.name}: {result.report}  ({len(result.plots)} plots)")
        if single:
            print(f"report: {result.report}  ({len(result.plots)} plots in {target.out})")
    if not single:
        print(f"{len(todo) - failed} of {len(todo)} sweeps analysed under {args.results_dir}, "
              "one report each:")
        print("\n".join(done))
    return 1 if failed else 0
