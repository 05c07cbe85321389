"""The plots' matplotlib objects on a synthetic sweep with several seeds per configuration:
every configuration is a panel or a line, ticks sit at the measured values, error bars show the
interval over seeds, legends sit outside the axes, ρ is on a symlog axis (issue 13 item 3)."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest
from matplotlib.axes import Axes
from matplotlib.container import BarContainer, ErrorbarContainer
from matplotlib.figure import Figure

from orchestrator import analyze as A
from orchestrator import figure_parts, plots
from orchestrator.results import write_trial_table

TASKS = ("segment_semantic", "scene_class")
METRICS = {"segment_semantic": "miou", "scene_class": "accuracy"}
AT = "dgba-fgsm-8"
REGIMES = [("none", 0.0), (AT, 0.0), ("none", 0.05), ("none", 0.5)]  # (adv_train, rho)
SEEDS = (0, 1, 2)
LAYOUTS = {1: "0+1|0,1|0,1", 3: "0+1|0+1|0+1"}  # branch points of 2 tasks over 3 blocks
KEPT, DECAY = (2, 4), 4


def trial_rows(k: int, at: str, rho: float, seed: int) -> dict[str, list[dict]]:
    """One trial whose values move with the seed (so intervals are not empty)."""
    wiggle = 0.01 * (seed - 1)
    common = dict(attempt=0, layout=LAYOUTS[k], branch_point=k, adv_train=at, rho=rho,
                  optimizer="sgd", seed=seed)
    m: list[dict] = []
    for epoch in KEPT:
        row = dict(common, epoch=epoch)
        m += [dict(row, kind="clean", attack_method="none", objective="none", eps=0.0, steps=0,
                   task=t, metric=METRICS[t], clean=0.5 + 0.05 * k + wiggle) for t in TASKS]
        for objective, scale in (("dgba", 1.0), ("total", 0.7)):
            for eps in (4.0, 8.0):
                m.append(dict(row, kind="whitebox", attack_method="pgd", objective=objective,
                              eps=eps, steps=2, task="mean", metric="delta",
                              rel_change=-0.02 * eps * scale + wiggle))
                m.append(dict(row, kind="transfer", attack_method="pgd", objective=objective,
                              eps=eps, steps=2, task="scene_class", metric="success_rate",
                              target_id="tgt", adv=0.1 + 0.1 * rho + 0.02 * epoch + wiggle))
        for src in TASKS:
            m += [dict(row, kind="cross_task", attack_method="fgsm", objective=f"single:{src}",
                       eps=8.0, steps=1, task=dst, metric="delta",
                       rel_change=(-0.3 if src == dst else -0.05 * k) + wiggle) for dst in TASKS]
    e = [dict(common, epoch=ep, lr=0.1 if ep < DECAY else 0.01, lr_decayed=ep == DECAY,
              kept=ep in KEPT, quantity="lambda_max", value=50.0 / ep - 10 * rho + seed)
         for ep in KEPT]
    e += [dict(common, epoch=ep, lr=0.1 if ep < DECAY else 0.01, lr_decayed=ep == DECAY,
               kept=ep in KEPT, quantity="train_loss", value=1.0 / ep) for ep in (1, 2, 3, 4)]
    return {"measurements": m, "epochs": e}


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> A.Tables:
    root = tmp_path_factory.mktemp("plots")
    for k in LAYOUTS:
        for at, rho in REGIMES:
            for seed in SEEDS:
                for table, rows in trial_rows(k, at, rho, seed).items():
                    write_trial_table(root, "syn", table, f"k{k}-{at}-r{rho}-s{seed}", rows)
    return A.load_tables(root / "syn")


def shown(fig: Figure) -> list[Axes]:
    """The figure's data axes (not colour bars, not hidden spare cells)."""
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]


def ticks(ax: Axes) -> list[float]:
    return sorted(float(v) for v in ax.get_xticks())


def legend_outside(fig: Figure) -> bool:
    """One figure legend, right of every axes (drawn to know the extents); no axes legend."""
    fig.canvas.draw()
    if len(fig.legends) != 1 or any(ax.get_legend() for ax in fig.axes):
        return False
    box = fig.legends[0].get_window_extent()
    return all(box.x0 >= ax.get_window_extent().x1 for ax in shown(fig))


def bars(ax: Axes) -> list[ErrorbarContainer]:
    return [c for c in ax.containers if isinstance(c, ErrorbarContainer)]


def test_delta_vs_eps_one_panel_per_regime_and_layout(tables: A.Tables) -> None:
    frame = A.delta_by_objective(tables)
    fig = plots.delta_vs_eps_figure(frame)
    axes = shown(fig)
    assert len(axes) == len(LAYOUTS) * len(REGIMES) == 8
    titles = [ax.get_title() for ax in axes]
    for at, rho in REGIMES:
        regime = ("standard" if at == "none" else f"AT {at}") + (f" ρ={rho:g}" if rho else "")
        assert sum(t.startswith(regime + "\n") for t in titles) == len(LAYOUTS)
    assert all("n = 3 trials" in t for t in titles)
    for ax in axes:
        assert ticks(ax) == [4.0, 8.0]
        assert len(bars(ax)) == 2  # dgba and total, each with its interval over the 3 seeds
    assert legend_outside(fig)
    # the bar of dgba at ε=8 in the first panel spans the frame's 95 % interval
    first = frame.filter((pl.col("regime") == "AT " + AT) & (pl.col("branch_point") == 1)
                         & (pl.col("objective") == "dgba") & (pl.col("eps") == 8.0)).row(
        0, named=True)
    assert axes[0].get_title().startswith("AT " + AT + "\nbranch point 1")
    dgba = next(c for c in bars(axes[0]) if c.get_label() == "dgba (pgd)")
    segments = dgba.lines[2][0].get_segments()
    (x0, lo), (x1, hi) = next(s for s in segments if s[0][0] == 8.0)
    assert (lo, hi) == pytest.approx((first["delta_lo"], first["delta_hi"]))
    assert hi - lo == pytest.approx(2 * A.t95(2) * 0.01 / 3 ** 0.5)  # sd of ±0.01 seeds = 0.01
    assert "95 % t-interval" in fig.get_supxlabel()


def test_delta_vs_eps_says_which_groups_it_shows(tables: A.Tables) -> None:
    fig = plots.delta_vs_eps_figure(A.delta_by_objective(tables), most=3)
    assert len(shown(fig)) == 3
    assert "3 of 8 regime × layout groups shown" in fig.get_supxlabel()


def test_tradeoff_integer_ticks_at_branch_points_and_bars(tables: A.Tables) -> None:
    frame, attack = A.tradeoff(tables)
    assert set(frame["regime"]) == {"standard"}  # the stated selection: no AT, ρ = 0
    fig = plots.tradeoff_figure(frame, "branch_point", attack.label())
    axes = shown(fig)
    assert len(axes) == len(TASKS) + 2
    for ax in axes:
        assert ticks(ax) == [1.0, 3.0]
        assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "3"]
        assert len(bars(ax)) == 1
    assert legend_outside(fig)
    assert "ρ = 0" in fig.get_supxlabel()


def test_early_stopping_every_regime_a_line_ticks_at_measured_epochs(tables: A.Tables) -> None:
    frame, attack = A.early_stopping(tables)
    fig = plots.early_stopping_figure(frame, attack.label())
    axes = shown(fig)
    assert [ax.get_title() for ax in axes] == ["transfer success rate", "Hessian λ_max"]
    for ax in axes:
        assert ticks(ax) == [2.0, 4.0]  # epochs 1 and 3 have no measurement to show
        assert len(bars(ax)) == len(REGIMES)
        xs = sorted(x for c in bars(ax) for x in c.lines[0].get_xdata())
        assert len(set(xs)) == len(xs)  # regimes nudged apart: no two points on one x
    labels = fig.legends[0].get_texts()
    assert [t.get_text() for t in labels][:len(REGIMES)] == sorted(frame["regime"].unique())
    assert legend_outside(fig)


def test_transfer_vs_rho_symlog_keeps_zero_and_sam_apart(tables: A.Tables) -> None:
    frame, attack = A.transfer_vs_rho(tables)
    fig = plots.transfer_vs_rho_figure(frame, attack.label())
    ax = shown(fig)[0]
    assert ax.get_xscale() == "symlog"
    assert ticks(ax) == [0.0, 0.05, 0.5]
    x0, x1, x2 = (ax.transData.transform((r, 0.0))[0] for r in (0.0, 0.05, 0.5))
    width = ax.get_window_extent().width
    assert x1 - x0 > 0.2 * width and x2 - x1 > 0.2 * width
    assert {c.get_label() for c in bars(ax)} == {"standard", "AT " + AT}
    assert legend_outside(fig)


def test_clean_vs_adversarial_bars_carry_intervals(tables: A.Tables) -> None:
    frame = A.clean_vs_adversarial(tables)
    assert frame["training"].to_list() == ["standard", AT] and frame["rho"].to_list() == [0, 0]
    fig = plots.clean_vs_adversarial_figure(frame)
    (ax,) = shown(fig)
    groups = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(groups) == 2 and all(g.errorbar is not None for g in groups)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Δ dgba ε=8", "Δ total ε=8"]
    assert legend_outside(fig)
    assert "ρ = 0 only" in fig.get_supxlabel()


def test_cross_task_heatmap_names_its_regime(tables: A.Tables) -> None:
    matrix = A.cross_task_matrix(A.cross_task_long(tables))
    fig = plots.cross_task_heatmaps_figure([("all layouts", matrix)])
    (ax,) = shown(fig)
    assert ax.get_title() == "all layouts — standard"
    assert [t.get_text() for t in ax.get_yticklabels()] == sorted(TASKS)
    assert len(ax.texts) == len(TASKS) ** 2
    assert all("\n[" in text.get_text() for text in ax.texts)  # each cell's interval (6 trials)


def test_bars_rule_names_only_the_cases_present() -> None:
    assert figure_parts.bars_rule([1, 1]) == "one trial per point: no error bars"
    assert figure_parts.bars_rule([2]) == "bars: min–max of the two trials (n = 2)"
    assert figure_parts.bars_rule([3, 2, 1]) == ("bars: 95 % t-interval of the mean over trials "
                                          "(n ≥ 3); min–max of the two trials (n = 2); none "
                                          "for a single trial")


def test_pngs_are_written(tables: A.Tables, tmp_path: Path) -> None:
    path = plots.delta_vs_eps(A.delta_by_objective(tables), tmp_path / "d.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_text_from_results_files_is_shortened_but_captions_keep_their_sentences(
        tmp_path: Path) -> None:
    """A 4,000-character label (e.g. an adv_train string in a copied results file) made the
    layout collapse; every title, label and legend entry is cut to MOST_CHARS characters."""
    fig = Figure()
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], label="a" * 4000)
    ax.set_title("b" * 300 + "\nshort")
    fig.legend()
    caption, title = "c" * 150, "Transfer and sharpness vs early stopping (dgba / pgd / ε=8)"
    fig.supxlabel(caption)
    fig.suptitle(title)
    figure_parts.save(fig, tmp_path / "f.png")
    texts = [t.get_text() for t in fig.findobj(figure_parts.Text)]
    assert ax.get_title() == "b" * (figure_parts.MOST_CHARS - 1) + "…\nshort"
    assert "a" * (figure_parts.MOST_CHARS - 1) + "…" in texts and "a" * 4000 not in texts
    assert fig.get_supxlabel() == caption  # captions are sentences: up to 160 per line
    assert fig.get_suptitle() == title  # so are the figures' titles (the demo's has 59)
    assert (tmp_path / "f.png").stat().st_size > 0
