"""PNG figures of the analysis frames (matplotlib, Agg canvas; no pyplot global state).

Each function takes a frame from :mod:`orchestrator.analyze`, writes one PNG and returns its path.
Δ is plotted as stored: negative = the attack hurt.
"""
from __future__ import annotations

import math
from pathlib import Path

import polars as pl
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

DPI = 110


def _figure(panels: int, width: float = 4.2, height: float = 3.4) -> tuple[Figure, list]:
    cols = min(panels, 3)
    rows = math.ceil(panels / cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[panels:]:
        ax.set_visible(False)
    return fig, axes[:panels]


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


def _spread(items: list, most: int) -> list:
    """At most ``most`` items, evenly spaced, first and last kept."""
    if len(items) <= most:
        return items
    step = (len(items) - 1) / (most - 1)
    return [items[round(i * step)] for i in range(most)]


def delta_vs_eps(frame: pl.DataFrame, path: Path, most: int = 6) -> Path:
    """White-box Δ vs ε, one line per method × objective, one panel per layout × regime."""
    groups = frame.select("layout", "regime", "sharing").unique(maintain_order=True).rows()
    groups = _spread(groups, most)
    fig, axes = _figure(len(groups))
    for ax, (layout, regime, sharing) in zip(axes, groups):
        rows = frame.filter((pl.col("layout") == layout) & (pl.col("regime") == regime))
        for (method, objective), line in rows.sort("eps").group_by(
                ["attack_method", "objective"], maintain_order=True):
            ax.plot(line["eps"], line["delta"], marker="o", label=f"{objective} ({method})",
                    linewidth=2.2 if objective == "dgba" else 1.2)
        share = "" if sharing is None else f", sharing {sharing:.2f}"
        ax.set_title(f"{layout}\n{regime}{share}", fontsize=8)
        ax.set_xlabel("ε (1/255)")
        ax.set_xticks(sorted(set(rows["eps"].to_list())))  # ticks only where measured
        ax.set_ylabel("Δ (mean over tasks)")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.legend(fontsize=6)
    fig.suptitle("White-box relative change by objective\n(lower = stronger attack)",
                 fontsize=10)
    return _save(fig, path)


def tradeoff(frame: pl.DataFrame, x: str, attack_label: str, path: Path) -> Path:
    """Clean metrics, white-box Δ and cross-task Δ against the amount of sharing."""
    frame = frame.filter(pl.col(x).is_not_null()).sort(x)
    clean_cols = [c for c in frame.columns if c.startswith("clean ")]
    fig, axes = _figure(len(clean_cols) + 2)  # one panel per clean metric: their scales differ
    for ax, col in zip(axes, clean_cols):
        ax.plot(frame[x], frame[col], marker="o", color="tab:blue")
        ax.set_title(col, fontsize=9)
    for ax, col, title in ((axes[-2], "whitebox_delta", f"white-box Δ ({attack_label})"),
                           (axes[-1], "cross_task_delta", "cross-task Δ (off-diagonal mean)")):
        if col in frame.columns:
            ax.plot(frame[x], frame[col], marker="o", color="tab:red")
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xlabel("branch point (shared blocks)" if x == "branch_point" else "sharing")
    fig.suptitle("Sharing trade-off: accuracy vs vulnerability")
    return _save(fig, path)


def cross_task_heatmaps(matrices: list[tuple[str, pl.DataFrame]], path: Path) -> Path:
    """One heat map per (title, matrix); rows attacked task, columns measured task."""
    fig, axes = _figure(len(matrices), width=4.6, height=4.0)
    for ax, (title, matrix) in zip(axes, matrices):
        targets = [c for c in matrix.columns if c != "source_task"]
        values = matrix.select(targets).to_numpy().astype(float)
        bound = max(1e-12, float(abs(values[~(values != values)]).max(initial=0.0)))
        image = ax.imshow(values, cmap="RdBu", vmin=-bound, vmax=bound)
        ax.set_xticks(range(len(targets)), targets, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(matrix.height), matrix["source_task"].to_list(), fontsize=7)
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if values[i, j] == values[i, j]:
                    dark = abs(values[i, j]) > 0.6 * bound
                    ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if dark else "black")
        ax.set_xlabel("measured task")
        ax.set_ylabel("attacked task (single:<task>)")
        ax.set_title(title, fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8, label="Δ")
    fig.suptitle("Cross-task transfer")
    return _save(fig, path)


def early_stopping(frame: pl.DataFrame, attack_label: str, path: Path) -> Path:
    """Transfer success, transfer Δ and λ_max per epoch (stacked panels, one colour per
    regime); LR decays as dotted lines just before the first epoch at the lower rate."""
    panels = [("success_rate", "transfer success rate"), ("transfer_delta", "transfer Δ"),
              ("lambda_max", "Hessian λ_max")]
    panels = [(c, label) for c, label in panels if frame[c].drop_nulls().len() > 0]
    fig = Figure(figsize=(8.5, 2.4 * max(1, len(panels)) + 0.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(1, len(panels)), 1, sharex=True, squeeze=False).ravel().tolist()
    decays = frame.filter(pl.col("lr_decayed").fill_null(False))["epoch"].unique().sort()
    for ax, (column, label) in zip(axes, panels):
        regimes = frame.sort("epoch").group_by(["regime"], maintain_order=True)
        for index, ((regime,), rows) in enumerate(regimes):
            line = rows.filter(pl.col(column).is_not_null())
            if line.height:
                ax.plot(line["epoch"], line[column], marker="o", color=f"C{index % 10}",
                        label=regime, linestyle="--" if column == "lambda_max" else "-")
        for i, epoch in enumerate(decays.to_list()):
            ax.axvline(epoch - 0.5, color="grey", linestyle=":",
                       label="LR decay" if i == 0 else None)
        ax.set_ylabel(label, fontsize=8)
    axes[-1].set_xlabel("early-stopping epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    if panels:
        fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, loc="outside right")
    fig.suptitle(f"Transfer and sharpness vs early stopping ({attack_label})", fontsize=9)
    return _save(fig, path)


def transfer_vs_rho(frame: pl.DataFrame, attack_label: str, path: Path) -> Path:
    """Transfer success and transfer Δ against the SAM/RFN neighbourhood size ρ."""
    panels = [(c, label) for c, label in (("success_rate", "transfer success rate"),
                                          ("transfer_delta", "transfer Δ"))
              if frame[c].drop_nulls().len() > 0]
    fig, axes = _figure(max(1, len(panels)), width=5.0, height=3.8)
    log = frame["rho"].min() > 0 and frame["rho"].max() / frame["rho"].min() > 20
    for ax, (column, label) in zip(axes, panels):
        groups = frame.sort("rho").group_by(["adversarial"], maintain_order=True)
        for (adversarial,), rows in groups:
            rows = rows.filter(pl.col(column).is_not_null())
            ax.plot(rows["rho"], rows[column], marker="o",
                    label="adversarially trained" if adversarial else "standard")
        if log:
            ax.set_xscale("log")
        ax.set_xlabel("ρ (SAM neighbourhood size)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    fig.suptitle(f"Transfer vs ρ ({attack_label})", fontsize=9)
    return _save(fig, path)


def clean_vs_adversarial(frame: pl.DataFrame, path: Path) -> Path:
    """Grouped bars: white-box Δ per objective family, one bar per training regime."""
    cols = [c for c in frame.columns if c.startswith("Δ ")]
    fig, (ax,) = _figure(1, width=max(6.0, 1.2 * len(cols) + 2), height=4.0)
    width = 0.8 / max(1, frame.height)
    for i, row in enumerate(frame.iter_rows(named=True)):
        xs = [j + i * width for j in range(len(cols))]
        ax.bar(xs, [row[c] if row[c] is not None else math.nan for c in cols], width,
               label=str(row["training"]))
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))], cols, rotation=20,
                  fontsize=7)
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set_ylabel("white-box Δ")
    ax.legend(fontsize=7)
    ax.set_title("Clean vs adversarially trained models")
    return _save(fig, path)
