"""The papers' claims, judged from a sweep's results with 95 % intervals.

:func:`judge` returns the claims table (orchestrator/claims_table.py): one row per claim and
condition with the estimate, its interval, ``n``, the method, a verdict (holds / refuted /
inconclusive / not measured by this sweep) that follows from the interval alone, and a reason.
The claims (docs/design.md, the DGBA and RFN papers):

- (a) DGBA's Δ is lower than SINGLE, TOTAL and SignSum at each ε, on standard and on
  adversarially trained models (orchestrator/claims_whitebox.py);
- (b) more sharing raises clean accuracy and cross-task damage (same file);
- (c) transfer peaks at or right after an LR decay, and sharpness drops there
  (orchestrator/claims_transfer.py);
- (d) large-ρ (RFN) surrogates transfer better than the best early-stopped and the fully
  trained plain ones, and than SAM at ρ = 0.05 (same file).

The statistics (bootstrap over trials with a fixed seed, paired where the claim pairs;
Wilson/Newcombe intervals from a rate's counts when too few trials stand behind it;
Spearman's ρ) are in orchestrator/intervals.py.
"""
from __future__ import annotations

import polars as pl

from orchestrator import claims_data, claims_table
from orchestrator.claims_table import markdown, write
from orchestrator.claims_table import summary as verdict_summary
from orchestrator.claims_transfer import decay_rows, rho_rows, transfer_cells
from orchestrator.claims_whitebox import dgba_rows, sharing_rows

__all__ = ["judge", "markdown", "verdict_summary", "write"]


def judge(measurements: claims_data.Frame, epochs: claims_data.Frame | None = None
          ) -> pl.DataFrame:
    """The claims table of one sweep's ``measurements`` (and ``epochs``, for LR decays and
    sharpness): frames of :func:`orchestrator.analyze.load_tables` or of ``read_results``.
    Pass one sweep's rows (and its latest attempts): trials of different sweeps are pooled."""
    m, e = claims_data.read(measurements, epochs)
    clean = m.filter(pl.col("kind") == "clean")["metric"].unique().to_list()
    flags = claims_data.directions(measurements, set(clean))
    cells, measure = transfer_cells(m)
    rows = (dgba_rows(m) + sharing_rows(m, flags) + decay_rows(cells, measure, e)
            + rho_rows(cells, measure))
    return claims_table.frame(rows)

