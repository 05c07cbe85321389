"""PNG figures of the analysis frames (matplotlib, Agg canvas; no pyplot global state).

``<name>_figure`` draws a frame of :mod:`orchestrator.analyze` (tests inspect the Figure);
``<name>`` writes it as a PNG and returns the path. Δ is plotted as stored (negative = the
attack hurt). Every figure (issue 13): draws every configuration (facets or lines) or writes
its selection; ticks only at measured values (integers for epochs and branch points, symlog ρ
so 0 and 0.05 stay apart); legends outside the axes; a value with several trials behind it
carries its interval (``<v>_lo``/``<v>_hi``, :data:`analyze.INTERVAL_RULE`, named in the
caption); text at least 9 pt in figures at most about 12 inches wide, every line of it cut to
a readable length when saved. The shared pieces are in orchestrator/figure_parts.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import polars as pl
from matplotlib.figure import Figure

from orchestrator import figure_parts as parts
from orchestrator.figure_parts import MOST_PANELS


# --- figures ------------------------------------------------------------------------------------
@parts.styled
def delta_vs_eps_figure(frame: pl.DataFrame, most: int = MOST_PANELS) -> Figure:
    """White-box Δ vs ε, one line per objective (line style per method), one panel per
    regime × layout: every group, or an evenly spaced ``most`` of them, said in the caption."""
    bp = pl.col("branch_point") if "branch_point" in frame.columns else pl.lit(None, pl.Int64)
    groups = (frame.select("regime", "sharing", "layout", bp.alias("bp")).unique()
              .sort("regime", "sharing", "layout", nulls_last=True).rows())
    shown = parts.spread(groups, most)
    layouts = frame["layout"].n_unique()
    objectives = (frame.select("objective").unique().sort(
        [pl.col("objective").replace_strict({"dgba": 0, "total": 1, "signsum": 2, "minmax": 3},
                                            default=9), "objective"])["objective"].to_list())
    methods = sorted(frame["attack_method"].unique().to_list())
    colours = parts.styles(objectives)
    cols = min(len(shown), layouts if layouts <= 3 else 3)
    fig, axes = parts.figure(len(shown), cols=cols, width=4.0, height=2.8, extra_width=3.2,
                             sharey=True)
    for i, (ax, (regime, sharing, layout, k)) in enumerate(zip(axes, shown)):
        rows = frame.filter((pl.col("layout") == layout) & (pl.col("regime") == regime))
        for objective in objectives:
            for m, method in enumerate(methods):
                line = rows.filter((pl.col("objective") == objective)
                                   & (pl.col("attack_method") == method))
                if line.height:
                    parts.line(ax, line, "eps", "delta", label=f"{objective} ({method})",
                               linestyle=parts.LINESTYLES[m % 4],
                               linewidth=2.4 if objective == "dgba" else 1.3,
                               **colours[objective])
        n = rows["trials"].max()
        share = "" if sharing is None else f"sharing {sharing:.2f}, "
        where = (f"branch point {k}, {share}" if k is not None
                 else f"layout {layout}\n{share}")  # a layout string gets a line of its own
        ax.set_title(f"{regime}\n{where}n = {n} trial{'s' * (n != 1)}", fontsize=9)
        parts.ticks(ax, rows["eps"].to_list())
        if i >= len(shown) - cols:
            ax.set_xlabel("ε (1/255)")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.yaxis.set_tick_params(labelleft=True)
    fig.supylabel("Δ, mean over tasks (lower = stronger attack)")
    parts.legend(fig, axes, "objective (method)")
    selection = ("" if len(shown) == len(groups) else
                 f"{len(shown)} of {len(groups)} regime × layout groups shown (evenly spaced "
                 "by sharing); every group is in delta_by_objective.csv")
    fig.suptitle("White-box Δ by objective and ε")
    fig.supxlabel(parts.caption(frame, selection), fontsize=9)
    return fig


@parts.styled
def tradeoff_figure(frame: pl.DataFrame, x: str, attack_label: str) -> Figure:
    """Clean metrics, white-box Δ and cross-task Δ against the amount of sharing, one line
    per regime of the frame, one panel per quantity (their scales differ)."""
    frame = frame.filter(pl.col(x).is_not_null()).sort(x)
    clean_cols = [c for c in frame.columns if c.startswith("clean ") and
                  not c.endswith(("_lo", "_hi"))]
    regimes = (frame["regime"].unique().sort().to_list() if "regime" in frame.columns
               else ["all trials"])
    styles = parts.styles(regimes)
    fig, axes = parts.figure(len(clean_cols) + 2, cols=3, width=3.8, height=3.0, extra_width=2.4)
    panels = [(c, c.removeprefix("clean "), False) for c in clean_cols] + [
        ("whitebox_delta", f"white-box Δ\n{attack_label}", True),
        ("cross_task_delta", "cross-task Δ\n(mean on tasks not attacked)", True)]
    for ax, (col, title, zero) in zip(axes, panels):
        if col in frame.columns and frame[col].drop_nulls().len():
            for regime in regimes:
                rows = frame.filter(pl.col("regime") == regime) if "regime" in frame.columns \
                    else frame
                parts.line(ax, rows, x, col, label=regime, **styles[regime])
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        if zero:
            ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(("clean " if not zero else "") + title, fontsize=9)
        if x == "branch_point":
            parts.ticks(ax, frame[x].to_list(), lambda v: f"{v:.0f}")
            ax.set_xlabel("branch point (shared blocks)")
        else:
            parts.ticks(ax, frame[x].to_list(), lambda v: f"{v:.2f}")
            ax.set_xlabel("sharing")
            ax.tick_params(axis="x", labelrotation=45)
    parts.legend(fig, axes, "regime", regimes)
    fig.suptitle("Sharing trade-off: clean accuracy vs vulnerability")
    keys = ["regime", x] if "regime" in frame.columns else [x]
    spread = ("; layouts of equal sharing are spread sideways, not joined"
              if frame.select(keys).is_duplicated().any() else "")
    fig.supxlabel(parts.caption(frame, "Trials without adversarial training and with ρ = 0 when "
                                "the sweep has them (the DGBA paper's setting); means over "
                                "seeds" + spread), fontsize=9)
    return fig


@parts.styled
def cross_task_heatmaps_figure(matrices: list[tuple[str, pl.DataFrame]]) -> Figure:
    """One heat map per (title, matrix); rows attacked task, columns measured task; a matrix
    with several regimes labels its rows ``regime: task``, with one it names it in the title."""
    fig, axes = parts.figure(len(matrices), cols=2, width=5.2, height=4.6)
    for ax, (title, matrix) in zip(axes, matrices):
        targets = [c for c in matrix.columns if c not in ("source_task", "regime")
                   and not c.endswith(("_lo", "_hi"))]
        values = matrix.select(targets).to_numpy().astype(float)
        ranges = (None if f"{targets[0]}_lo" not in matrix.columns or len(targets) > 4 else
                  [matrix.select(f"{c}_{end}" for c in targets).to_numpy().astype(float)
                   for end in ("lo", "hi")])
        regimes = matrix["regime"].unique().to_list() if "regime" in matrix.columns else []
        rows = matrix["source_task"].to_list()
        if len(regimes) > 1:
            rows = [f"{r}: {s}" for r, s in zip(matrix["regime"].to_list(), rows)]
        elif regimes:
            title = f"{title} — {regimes[0]}"
        bound = max(1e-12, float(abs(values[~(values != values)]).max(initial=0.0)))
        image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound, aspect="auto")
        ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right")
        ax.set_yticks(range(len(rows)), rows)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if values[i, j] == values[i, j]:
                    dark = abs(values[i, j]) > 0.6 * bound
                    text = f"{values[i, j]:.2f}"
                    if ranges is not None and ranges[0][i, j] == ranges[0][i, j]:
                        text += f"\n[{ranges[0][i, j]:.2f}, {ranges[1][i, j]:.2f}]"
                    ax.text(j, i, text, ha="center", va="center", fontsize=9,
                            color="white" if dark else "black")
        ax.set_xlabel("measured task")
        ax.set_ylabel("attacked task (single:<task>)")
        ax.set_title(title, fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8, label="Δ")
    fig.suptitle("Cross-task transfer (Δ on the measured task)")
    fig.supxlabel("Each cell: mean over trials; in brackets (up to 4 tasks) its interval: "
                  "95 % t-interval where n ≥ 3, min–max where n = 2", fontsize=9)
    return fig


@parts.styled
def early_stopping_figure(frame: pl.DataFrame, attack_label: str) -> Figure:
    """Transfer success, transfer Δ, λ_max and SAM-sharpness per early-stopping epoch (one
    panel each), one line per regime (nudged sideways so bars do not overlap); LR decays as
    dotted lines just before the first epoch at the lower rate."""
    panels = [(c, label) for c, label in (
        ("success_rate", "transfer success rate"), ("transfer_delta", "transfer Δ"),
        ("lambda_max", "Hessian λ_max"), ("sam_sharpness", "SAM-sharpness"))
        if c in frame.columns and frame[c].drop_nulls().len() > 0]
    regimes = frame["regime"].unique().sort().to_list()
    styles = parts.styles(regimes)
    fig, axes = parts.figure(max(1, len(panels)), cols=2, width=4.6, height=3.2, extra_width=3.2,
                             sharex=True)
    decays = frame.filter(pl.col("lr_decayed").fill_null(False))["epoch"].unique().sort()
    measured = frame.filter(pl.any_horizontal(pl.col(c).is_not_null() for c, _ in panels)
                            if panels else pl.lit(True))["epoch"].to_list()
    width = 0.3 / max(1, len(regimes) - 1)
    for ax, (column, label) in zip(axes, panels):
        for i, regime in enumerate(regimes):
            parts.line(ax, frame.filter(pl.col("regime") == regime), "epoch", column,
                       shift=(i - (len(regimes) - 1) / 2) * width if len(regimes) > 1 else 0.0,
                       label=regime, **styles[regime])
        for i, epoch in enumerate(decays.to_list()):
            ax.axvline(epoch - 0.5, color="grey", linestyle=":",
                       label="LR decay (before this epoch)" if i == 0 else None)
        ax.set_title(label)
        parts.ticks(ax, measured, lambda v: f"{v:.0f}")
        ax.xaxis.set_tick_params(labelbottom=True)
        ax.set_xlabel("early-stopping epoch")
    parts.legend(fig, axes, "regime", regimes)
    fig.suptitle(f"Transfer and sharpness vs early stopping ({attack_label})")
    fig.supxlabel(parts.caption(frame, "Each point: mean over the regime's trials (its layouts "
                                "and seeds); lines nudged sideways to keep them apart"),
                  fontsize=9)
    return fig


@parts.styled
def transfer_vs_rho_figure(frame: pl.DataFrame, attack_label: str) -> Figure:
    """Transfer success, transfer Δ and λ_max against the SAM/RFN neighbourhood size ρ on a
    symlog axis (linear below the smallest ρ > 0, so 0 and 0.05 stay apart), one line per
    training regime without ρ (``base_regime``)."""
    panels = [(c, label) for c, label in (("success_rate", "transfer success rate"),
                                          ("transfer_delta", "transfer Δ"),
                                          ("lambda_max", "surrogate Hessian λ_max"))
              if c in frame.columns and frame[c].drop_nulls().len() > 0]
    lines = frame["base_regime"].unique().sort().to_list()
    styles = parts.styles(lines)
    fig, axes = parts.figure(max(1, len(panels)), cols=3, width=3.9, height=3.2, extra_width=2.8)
    positive = frame.filter(pl.col("rho") > 0)["rho"]
    for ax, (column, label) in zip(axes, panels):
        for line in lines:
            parts.line(ax, frame.filter(pl.col("base_regime") == line), "rho", column,
                       label=line, **styles[line])
        if positive.len():
            ax.set_xscale("symlog", linthresh=float(positive.min()), linscale=0.6)
        parts.ticks(ax, frame["rho"].to_list())
        ax.set_xlabel("ρ (SAM/RFN neighbourhood size)")
        ax.set_title(label)
    parts.legend(fig, axes, "training", lines)
    fig.suptitle(f"Transfer vs ρ ({attack_label})")
    fig.supxlabel(parts.caption(frame, "Final checkpoints; each point: mean over that ρ's "
                                "trials (layouts and seeds); symlog x axis"), fontsize=9)
    return fig


@parts.styled
def clean_vs_adversarial_figure(frame: pl.DataFrame) -> Figure:
    """Grouped bars: white-box Δ per objective family, one bar per training regime, with the
    interval of each bar."""
    rank = {f: i for i, f in enumerate(("dgba", "total", "signsum", "minmax", "single"))}
    cols = sorted((c for c in frame.columns
                   if c.startswith("Δ ") and not c.endswith(("_lo", "_hi"))),
                  key=lambda c: (rank.get(c.split()[1], 9), c))
    fig, (ax,) = parts.figure(1, width=max(6.0, 1.1 * len(cols) + 2.5), height=4.0,
                              extra_width=2.8)
    width = 0.8 / max(1, frame.height)
    for i, row in enumerate(frame.iter_rows(named=True)):
        xs = [j + i * width for j in range(len(cols))]
        ys = [row[c] if row[c] is not None else math.nan for c in cols]
        yerr = parts.yerr(ys, [row.get(f"{c}_lo") for c in cols],
                          [row.get(f"{c}_hi") for c in cols])
        ax.bar(xs, ys, width, yerr=yerr, label=f"{row['training']} (n = {row['trials']})",
               color=f"C{i % 10}")
    ax.set_xticks([j + (frame.height - 1) * width / 2 for j in range(len(cols))], cols,
                  rotation=20, ha="right")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_ylabel("white-box Δ (lower = stronger attack)")
    parts.legend(fig, [ax], "training")
    fig.suptitle("Clean vs adversarially trained models")
    fig.supxlabel(parts.caption(frame, f"Trials at ρ = {frame['rho'].max():g} only (SAM/RFN "
                                "surrogates are in section 5); Δ at each objective family's "
                                "largest ε"), fontsize=9)
    return fig


# --- the PNGs the report embeds --------------------------------------------------------------
def delta_vs_eps(frame: pl.DataFrame, path: Path, most: int = MOST_PANELS) -> Path:
    """:func:`delta_vs_eps_figure` written to ``path`` (PNG)."""
    return parts.save(delta_vs_eps_figure(frame, most), path)


def tradeoff(frame: pl.DataFrame, x: str, attack_label: str, path: Path) -> Path:
    """:func:`tradeoff_figure` written to ``path`` (PNG)."""
    return parts.save(tradeoff_figure(frame, x, attack_label), path)


def cross_task_heatmaps(matrices: list[tuple[str, pl.DataFrame]], path: Path) -> Path:
    """:func:`cross_task_heatmaps_figure` written to ``path`` (PNG)."""
    return parts.save(cross_task_heatmaps_figure(matrices), path)


def early_stopping(frame: pl.DataFrame, attack_label: str, path: Path) -> Path:
    """:func:`early_stopping_figure` written to ``path`` (PNG)."""
    return parts.save(early_stopping_figure(frame, attack_label), path)


def transfer_vs_rho(frame: pl.DataFrame, attack_label: str, path: Path) -> Path:
    """:func:`transfer_vs_rho_figure` written to ``path`` (PNG)."""
    return parts.save(transfer_vs_rho_figure(frame, attack_label), path)


def clean_vs_adversarial(frame: pl.DataFrame, path: Path) -> Path:
    """:func:`clean_vs_adversarial_figure` written to ``path`` (PNG)."""
    return parts.save(clean_vs_adversarial_figure(frame), path)
