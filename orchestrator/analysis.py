"""`analyze`: read a sweep's results, judge the papers' claims, write report.md, the plots and
the claims table (what `mtlsweep analyze` runs). The polars queries live in
orchestrator/analyze.py, the claims in orchestrator/claims.py, the report and its plots in
orchestrator/report.py and orchestrator/plots.py; this module joins them, so none of those
imports another in a circle."""
from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from orchestrator import claims as C
from orchestrator.analyze import load_tables
from orchestrator.report import AnalysisResult, build_report


def analyze(results_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
            sweep: str | None = None) -> AnalysisResult:
    """Read the results under ``results_dir``; write PNG plots, report.md and the claims table
    (claims.parquet, claims.json; also at the top of report.md and in the result's ``claims``)
    to ``out_dir``.

    ``results_dir`` is a sweep directory, or a storage directory with ``sweep`` naming one of
    its sweeps (without it their trials would be pooled; `mtlsweep analyze` never does that:
    it calls this once per sweep). Result files that do not count
    (corrupt, foreign, duplicate) are skipped, each named in a ResultsWarning, in the report and
    in the result's ``skipped``. Raises FileNotFoundError when there are no measurements to
    analyse.
    """
    tables = load_tables(results_dir, sweep)
    if tables.measurements.select(pl.len()).collect().item() == 0:
        where = f"{os.fspath(results_dir)!r}" + (f" for sweep {sweep!r}" if sweep else "")
        skipped = (f"; {len(tables.skipped)} result files were skipped, see the warnings"
                   if tables.skipped else "")
        raise FileNotFoundError(f"no measurements under {where} (expected "
                                f"<sweep>/results/measurements/*.parquet){skipped}")
    claims = C.judge(tables.measurements, tables.epochs)
    files = C.write(claims, out_dir)
    return build_report(tables, Path(out_dir), claims=claims, claim_files=files)
