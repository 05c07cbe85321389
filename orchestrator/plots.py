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
        ax.set_ylabel("Δ (mean over tasks)")
        ax.axhline(0, color="grey", linewidth=0.6)
        ax.legend(fontsize=6)
    fig.suptitle("White-box relative change by objective (lower = stronger attack)")
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
    """Transfer (left axis) and λ_max (right axis) per epoch and regime; LR decays as lines."""
    fig, (ax,) = _figure(1, width=9.0, height=4.2)
    right = ax.twinx()
    use_success = frame["success_rate"].drop_nulls().len() > 0
    metric = "success_rate" if use_success else "transfer_delta"
    regimes = frame.sort("epoch").group_by(["regime"], maintain_order=True)
    for index, ((regime,), rows) in enumerate(regimes):
        colour = f"C{index % 10}"
        line = rows.filter(pl.col(metric).is_not_null())
        if line.height:
            ax.plot(line["epoch"], line[metric], marker="o", color=colour,
                    label=f"{regime}: transfer")
        sharp = rows.filter(pl.col("lambda_max").is_not_null())
        if sharp.height:
            right.plot(sharp["epoch"], sharp["lambda_max"], linestyle="--", marker="x",
                       color=colour, alpha=0.7, label=f"{regime}: λ_max")
    decays = frame.filter(pl.col("lr_decayed").fill_null(False))["epoch"].unique().sort()
    for i, epoch in enumerate(decays.to_list()):
        # lr_decayed marks the first epoch trained at the lower rate: draw the boundary before it
        ax.axvline(epoch - 0.5, color="grey", linestyle=":", label="LR decay" if i == 0 else None)
    ax.set_xlabel("early-stopping epoch")
    ax.set_ylabel("transfer success rate" if use_success else "transfer Δ")
    right.set_ylabel("Hessian λ_max")
    handles = ax.get_legend_handles_labels()
    extra = right.get_legend_handles_labels()
    if handles[0] or extra[0]:
        fig.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=7, loc="outside right")
    ax.set_title(f"Transfer and sharpness vs early stopping ({attack_label})", fontsize=9)
    return _save(fig, path)


def transfer_vs_rho(frame: pl.DataFrame, attack_label: str, path: Path) -> Path:
    """Transfer success (or Δ) against the SAM/RFN neighbourhood size ρ."""
    fig, (ax,) = _figure(1, width=6.0, height=4.0)
    use_success = frame["success_rate"].drop_nulls().len() > 0
    metric = "success_rate" if use_success else "transfer_delta"
    for (adversarial,), rows in frame.sort("rho").group_by(["adversarial"], maintain_order=True):
        rows = rows.filter(pl.col(metric).is_not_null())
        ax.plot(rows["rho"], rows[metric], marker="o",
                label="adversarially trained" if adversarial else "standard")
    if frame["rho"].min() > 0 and frame["rho"].max() / frame["rho"].min() > 20:
        ax.set_xscale("log")
    ax.set_xlabel("ρ (SAM neighbourhood size)")
    ax.set_ylabel("transfer success rate" if use_success else "transfer Δ")
    ax.legend(fontsize=7)
    ax.set_title(f"Transfer vs ρ ({attack_label})", fontsize=9)
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
