"""report.md: the judged claims first, then every analysis section as markdown tables beside
its PNG plot.

A section whose data the sweep did not produce says so (and why) instead of failing, so a small
demo sweep and a full paper reproduction get the same report structure.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from orchestrator import analyze as A
from orchestrator import claims_table, plots
from orchestrator.intervals import LEVEL, MIN_UNITS, REPS, SEED
from orchestrator.results_reading import Skipped

MAX_GROUP_TABLES = 24
MAX_SKIPPED_LISTED = 10
MAX_HEATMAPS = 4

TITLES = {
    "claims": "Claims, judged",
    "summary": "Summary",
    "delta_by_objective": "1. White-box Δ by objective × ε",
    "tradeoff": "2. Sharing trade-off: clean accuracy vs white-box and cross-task damage",
    "cross_task": "3. Cross-task transfer matrix",
    "early_stopping": "4. Transfer and sharpness vs early-stopping epoch",
    "transfer_vs_rho": "5. Transfer vs ρ (RFN / SAM)",
    "clean_vs_adversarial": "6. Clean vs adversarially trained",
    "timings": "7. Timings",
}


def _cell(value: object, digits: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value != 0 and not 1e-3 <= abs(value) < 1e5:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}f}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return str(value).replace("|", "\\|")


def frame_to_markdown(frame: pl.DataFrame, digits: int = 4) -> str:
    """A GitHub markdown table of ``frame`` (floats to ``digits`` decimals, null as –)."""
    head = "| " + " | ".join(c.replace("|", "\\|") for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(_cell(v, digits) for v in row) + " |" for row in frame.iter_rows()]
    return "\n".join([head, rule, *body])


@dataclass(frozen=True)
class AnalysisResult:
    """What :func:`analyze` wrote: ``report`` (report.md), ``plots`` (PNGs), the summary frame,
    every table by section key, why each absent section is absent, the result files that
    were skipped (not counted), and the claims table (orchestrator/claims_table.py) with the
    files it was written to (claims.parquet, claims.json)."""
    report: Path
    plots: list[Path]
    summary: pl.DataFrame
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    skipped: tuple[Skipped, ...] = ()
    claims: pl.DataFrame = field(default_factory=claims_table.SCHEMA.to_frame)
    claim_files: tuple[Path, ...] = ()


@dataclass
class _Doc:
    out: Path
    parts: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)
    tables: dict[str, pl.DataFrame] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def section(self, key: str) -> None:
        self.parts.append(f"\n## {TITLES[key]}\n")

    def text(self, line: str) -> None:
        self.parts.append(line + "\n")

    def table(self, key: str | None, frame: pl.DataFrame, caption: str | None = None) -> None:
        if key is not None:
            self.tables[key] = frame
        if caption:
            self.parts.append(f"{caption}\n")
        self.parts.append(frame_to_markdown(frame) + "\n")

    def absent(self, key: str, why: str) -> None:
        self.missing[key] = why
        self.parts.append(f"_Not available: {why}_\n")

    def plot(self, path: Path, alt: str) -> None:
        self.plots.append(path)
        self.parts.append(f"![{alt}]({path.name})\n")


def _claims(doc: _Doc, claims: pl.DataFrame) -> None:
    """The claims table, first in the report: what each verdict means, then the rows."""
    doc.section("claims")
    doc.tables["claims"] = claims
    doc.text(f"Each row judges a claim of the DGBA and RFN papers under one condition from a "
             f"{LEVEL:.0%} interval: **holds** when the interval lies entirely on the claim's "
             "side of 0 (column *claim expects*), **refuted** when it lies entirely on the other "
             "side, *inconclusive* when it contains 0 or fewer than "
             f"{MIN_UNITS} trials stand behind it, and *not measured by this sweep* when the "
             "sweep does not vary what the claim is about. Intervals: percentile bootstrap "
             f"over trials ({REPS} replicates, seed {SEED}: the same results give the same "
             "intervals), paired by trial and epoch for (a), Spearman's ρ for (b). Each "
             "trial's value is a mean over n images, so its sampling noise is part of the "
             "trial-to-trial spread the bootstrap resamples; rates with fewer trials are "
             "compared from their counts (Newcombe's difference of Wilson intervals, image "
             "sampling only). Also in `claims.parquet` and `claims.json`.")
    doc.text("\n".join(f"- **{title}**: {statement}"
                       for title, statement in claims_table.CLAIMS.values()))
    if claims.is_empty():
        doc.text("_No claim could be judged from these results._")
        return
    doc.text(claims_table.markdown(claims) + "\n")


def _delta_by_objective(doc: _Doc, t: A.Tables) -> None:
    doc.section("delta_by_objective")
    long = A.delta_by_objective(t)
    if long.is_empty():
        return doc.absent("delta_by_objective", "no white-box attack measurements in this sweep.")
    doc.text("Mean Δ over tasks at each trial's final checkpoint (negative = the attack hurt; "
             "the strongest objective has the most negative Δ). One table per layout × regime.")
    doc.tables["delta_by_objective"] = long
    long.write_csv(doc.out / "delta_by_objective.csv")
    groups = long.select("layout", "regime", "sharing").unique(maintain_order=True).rows()
    for layout, regime, sharing in groups[:MAX_GROUP_TABLES]:
        rows = long.filter((pl.col("layout") == layout) & (pl.col("regime") == regime))
        wide = (rows.sort("eps").with_columns(pl.format("ε={}", A.eps_label()).alias("e"))
                .pivot(on="e", index=["attack_method", "objective"], values="delta"))
        share = "" if sharing is None else f", sharing {sharing:.2f}"
        doc.table(None, wide,
                  f"**layout `{layout}`** — {regime}{share}:")
    if len(groups) > MAX_GROUP_TABLES:
        doc.text(f"{len(groups) - MAX_GROUP_TABLES} more layout × regime groups: see "
                 "`delta_by_objective.csv`.")
    doc.plot(plots.delta_vs_eps(long, doc.out / "delta_vs_eps.png"), "Δ vs ε by objective")


def _tradeoff(doc: _Doc, t: A.Tables) -> None:
    doc.section("tradeoff")
    frame, attack = A.tradeoff(t)
    measured = [c for c in frame.columns if c.startswith("clean ")
                or c in ("whitebox_delta", "cross_task_delta")]
    if frame.is_empty() or not measured:
        return doc.absent("tradeoff", "no clean, white-box or cross-task measurements.")
    if frame["sharing"].null_count() == frame.height:
        return doc.absent("tradeoff", "the model has no sharing layouts (a model factory "
                          "without a `layout` argument), so sharing cannot be compared.")
    x = "branch_point" if frame["branch_point"].null_count() == 0 else "sharing"
    axis = ("branch point" if x == "branch_point"
            else "sharing = mean over blocks of (T − groups)/(T − 1)")
    doc.text(f"Per layout, ordered by sharing ({axis}). "
             "Clean columns are each task's primary metric; white-box Δ uses "
             f"{attack.label() if attack else '–'}; cross-task Δ is the mean damage on tasks "
             "that were not attacked (off-diagonal of section 3). More sharing is expected to "
             "raise accuracy and cross-task damage together (the DGBA trade-off).")
    if frame.height < 2:
        doc.text("_Only one layout in this sweep: no trend can be read from it._")
    doc.table("tradeoff", frame)
    doc.plot(plots.tradeoff(frame, x, attack.label() if attack else "–",
                            doc.out / "tradeoff.png"), "sharing trade-off")


def _cross_task(doc: _Doc, t: A.Tables) -> None:
    doc.section("cross_task")
    long = A.cross_task_long(t)
    if long.is_empty():
        return doc.absent("cross_task", "no cross-task measurements (no `single:<task>` attacks "
                                        "evaluated on every task).")
    matrix = A.cross_task_matrix(long)
    doc.text(f"Δ on the measured task (columns) under a single-task attack on the row's task "
             f"({long['attack_method'][0]}, ε={long['eps'][0]:g}), mean over all layouts.")
    doc.table("cross_task", matrix)
    heatmaps = [("all layouts", matrix)]
    per_layout = A.cross_task_long(t, ["layout"])
    order = t.measurements.select("layout", "sharing").unique().collect()
    layouts = (order.filter(pl.col("layout").is_in(per_layout["layout"].unique().to_list()))
               .sort("sharing", "layout", nulls_last=True)["layout"].to_list())
    if 1 < len(layouts) <= MAX_HEATMAPS:
        heatmaps += [(f"layout {lay}", A.cross_task_matrix(per_layout.filter(
            pl.col("layout") == lay).drop("layout"))) for lay in layouts]
    doc.plot(plots.cross_task_heatmaps(heatmaps, doc.out / "cross_task.png"),
             "cross-task transfer heat map")


def _early_stopping(doc: _Doc, t: A.Tables) -> None:
    doc.section("early_stopping")
    frame, attack = A.early_stopping(t)
    has_transfer = frame.height and (frame["success_rate"].drop_nulls().len()
                                     + frame["transfer_delta"].drop_nulls().len()) > 0
    has_sharp = frame.height and frame["lambda_max"].drop_nulls().len() > 0
    if not has_transfer and not has_sharp:
        return doc.absent("early_stopping", "no transfer targets and no sharpness (λ_max) "
                                            "measurements in this sweep.")
    if not has_transfer:
        doc.text("_No transfer targets in this sweep: only sharpness is shown._")
    else:
        doc.text(f"Transfer of {attack.label()} from each early-stopping checkpoint to the "
                 "target models (success rate: share of examples every target got right that "
                 "the target now gets wrong; Δ: mean over tasks).")
    if not has_sharp:
        doc.text("_No λ_max measurements (sharpness was not computed)._")
    decays = frame.filter(pl.col("lr_decayed").fill_null(False))["epoch"].unique().sort()
    doc.text("LR decayed at the start of epoch(s): "
             + (", ".join(map(str, decays.to_list())) or "none")
             + " (dotted vertical lines in the plot, just before those epochs).")
    doc.table("early_stopping", frame)
    doc.plot(plots.early_stopping(frame, attack.label() if attack else "no transfer",
                                  doc.out / "early_stopping.png"), "transfer vs epoch")


def _transfer_vs_rho(doc: _Doc, t: A.Tables) -> None:
    doc.section("transfer_vs_rho")
    frame, attack = A.transfer_vs_rho(t)
    if attack is None or frame.is_empty():
        return doc.absent("transfer_vs_rho", "no transfer targets in this sweep.")
    doc.text(f"Final-checkpoint transfer of {attack.label()} per surrogate ρ, with the "
             "surrogate's λ_max (RFN: a large ρ should beat early stopping).")
    doc.table("transfer_vs_rho", frame)
    if frame["rho"].n_unique() < 2:
        doc.text(f"_Only ρ = {frame['rho'][0]:g} in this sweep: no ρ trend to plot._")
        return
    doc.plot(plots.transfer_vs_rho(frame, attack.label(), doc.out / "transfer_vs_rho.png"),
             "transfer vs rho")


def _clean_vs_adversarial(doc: _Doc, t: A.Tables) -> None:
    doc.section("clean_vs_adversarial")
    frame = A.clean_vs_adversarial(t)
    if not (frame["training"] != "standard").any():
        return doc.absent("clean_vs_adversarial", "no adversarially trained models in this sweep.")
    doc.text("Final checkpoints grouped by training; Δ columns are white-box Δ per objective "
             "family at its largest ε (AT should make them less negative, at some clean cost).")
    doc.table("clean_vs_adversarial", frame)
    if any(c.startswith("Δ ") for c in frame.columns):
        doc.plot(plots.clean_vs_adversarial(frame, doc.out / "clean_vs_adversarial.png"),
                 "clean vs adversarially trained")


def _timings(doc: _Doc, t: A.Tables) -> None:
    doc.section("timings")
    frame = A.timings(t)
    if frame.is_empty():
        return doc.absent("timings", "no timings table in this sweep.")
    doc.table("timings", frame)


def _skipped(doc: _Doc, skipped: tuple[Skipped, ...]) -> None:
    """Name the result files that were left out, so a reader knows what the numbers miss."""
    if not skipped:
        return
    doc.text(f"**{len(skipped)} result files were skipped** and are not counted (corrupt, "
             "foreign, of another table, with null keys, or a second copy of a trial):")
    lines = [f"- `{item.path}`: {item.reason}" for item in skipped[:MAX_SKIPPED_LISTED]]
    if len(skipped) > MAX_SKIPPED_LISTED:
        lines.append(f"- ... and {len(skipped) - MAX_SKIPPED_LISTED} more (see the warnings of "
                     "`mtlsweep analyze`)")
    doc.text("\n".join(lines))


SECTIONS = (_delta_by_objective, _tradeoff, _cross_task, _early_stopping, _transfer_vs_rho,
            _clean_vs_adversarial, _timings)


def build_report(t: A.Tables, out_dir: Path, *, claims: pl.DataFrame,
                 claim_files: tuple[Path, ...] = ()) -> AnalysisResult:
    """Write ``out_dir/report.md``, the judged ``claims`` at its top, then every section with
    its PNGs; see :func:`orchestrator.analysis.analyze`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    doc = _Doc(out_dir)
    info = A.overview(t)
    doc.parts.append(f"# mtlsweep analysis — {', '.join(info['sweeps'])}\n")
    _claims(doc, claims)
    doc.parts.append("\n## Overview\n")
    doc.text(f"{info['trials']} trials, {info['layouts']} layouts, {info['rows']} measurement "
             "rows. Δ is the relative change of docs/design.md §2 (negative = the attack hurt); "
             "ε is in 1/255 units. Each trial's latest attempt and, unless a section says "
             "otherwise, its final checkpoint are used.")
    _skipped(doc, t.skipped)
    if info["undefined_deltas"]:
        doc.text(f"**{info['undefined_deltas']} Δ values were undefined or out of range and "
                 "left out of all means**: NaN where every clean metric of a task was 0 (a "
                 "relative change is undefined there; typically an untrained model's "
                 "accuracy), or an infinite value or one beyond ±1e100 (not a measurement of "
                 "ours: a file written elsewhere).")
    summary = A.summary(t)
    doc.section("summary")
    if summary.is_empty():
        doc.absent("summary", "no white-box attack measurements to summarise.")
    else:
        doc.text("Mean white-box Δ per objective (`single` = mean of the single-task "
                 "objectives), over all layouts, regimes and methods.")
        doc.table("summary", summary)
    for section in SECTIONS:
        section(doc, t)
    report = out_dir / "report.md"
    tmp = out_dir / ".report.md.tmp"
    tmp.write_text("\n".join(doc.parts), encoding="utf-8")
    tmp.replace(report)
    return AnalysisResult(report=report, plots=doc.plots, summary=summary, tables=doc.tables,
                          missing=doc.missing, skipped=t.skipped, claims=claims,
                          claim_files=claim_files)
