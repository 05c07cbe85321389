"""Analysis queries checked by hand on synthetic sweeps written through the real result sink."""
from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from orchestrator import analysis
from orchestrator import analyze as A
from orchestrator.cli import main
from orchestrator.results import write_trial_table

TASKS = ("segment_semantic", "depth_zbuffer", "scene_class")
METRICS = {"segment_semantic": "miou", "depth_zbuffer": "abs_err", "scene_class": "accuracy"}
OBJ_SCALE = {"dgba": 1.0, "total": 0.8, "signsum": 0.7, "single:segment_semantic": 0.5,
             "single:depth_zbuffer": 0.4, "single:scene_class": 0.3}
EPOCHS, KEPT, DECAY = (1, 2, 3, 4), (2, 4), 3  # DECAY: first epoch at the lower LR
AT_LABEL = "dgba-fgsm-8"


def layout(k: int) -> str:
    """Layout.branch_point(k, 3, 5) in canonical form."""
    return "|".join(["0+1+2"] * k + ["0,1,2"] * (5 - k))


def white_delta(k: int, objective: str, eps: float, at: bool, epoch: int) -> float:
    """The mean-over-seeds white-box Δ the synthetic sweep stores (final epoch = 4)."""
    base = -0.1 * eps / 4 * OBJ_SCALE[objective] * (1 + 0.1 * k)
    return base * (0.5 if at else 1.0) - (0.5 if epoch != 4 else 0.0)


def success(epoch: int, rho: float) -> float:
    return 0.2 + 0.1 * epoch + 0.3 * rho  # a share: stays in [0, 1]


def lambda_max(epoch: int, rho: float) -> float:
    return 100.0 / epoch - 10 * rho


def trial_rows(k: int, seed: int, at: bool, rho: float) -> dict[str, list[dict]]:
    noise = 0.01 if seed == 0 else -0.01  # cancels in the mean over the two seeds
    common = dict(attempt=0, layout=layout(k), branch_point=k,
                  adv_train=AT_LABEL if at else "none", rho=rho, optimizer="sgd", seed=seed)
    measurements, epochs = [], []
    for epoch in KEPT:
        row = dict(common, epoch=epoch)
        for task in TASKS:
            value = 0.5 + 0.05 * k - (0.1 if at else 0.0)
            measurements.append(dict(row, kind="clean", attack_method="none", objective="none",
                                      eps=0.0, steps=0, task=task, metric=METRICS[task],
                                      clean=value + noise))
            measurements.append(dict(row, kind="clean", attack_method="none", objective="none",
                                     eps=0.0, steps=0, task=task, metric="extra", clean=9.0))
        for objective in OBJ_SCALE:
            for eps in (2.0, 4.0):
                attack = dict(row, kind="whitebox", attack_method="pgd", objective=objective,
                              eps=eps, steps=10)
                measurements.append(dict(attack, task="mean", metric="delta",
                                         rel_change=white_delta(k, objective, eps, at, epoch)
                                         + noise))
                measurements.append(dict(attack, task="scene_class", metric="accuracy",
                                         clean=0.6, adv=0.3, rel_change=-0.5))
        for src in TASKS:
            for dst in TASKS:
                measurements.append(dict(row, kind="cross_task", attack_method="fgsm",
                                         objective=f"single:{src}", eps=8.0, steps=1, task=dst,
                                         metric="delta",
                                         rel_change=(-0.3 if src == dst else -0.05 * k) + noise))
        for target in ("tgt-a", "tgt-b"):
            for objective, scale in (("dgba", 1.0), ("total", 0.5)):
                attack = dict(row, kind="transfer", attack_method="mifgsm", objective=objective,
                              eps=8.0, steps=10, surrogate_id="self", target_id=target)
                measurements.append(dict(attack, task="scene_class", metric="success_rate",
                                         adv=scale * success(epoch, rho) + noise))
                measurements.append(dict(attack, task="mean", metric="delta",
                                         rel_change=-scale * success(epoch, rho)))
    for epoch in EPOCHS:
        row = dict(common, epoch=epoch, lr=0.1 if epoch < DECAY else 0.01,
                   lr_decayed=epoch == DECAY, kept=epoch in KEPT)
        epochs.append(dict(row, quantity="train_loss", value=1.0 / epoch))
        epochs.append(dict(row, quantity="lambda_max", value=lambda_max(epoch, rho) + noise))
    timings = [dict(attempt=0, phase="train", seconds=2.0), dict(attempt=0, phase="attack",
                                                                 seconds=1.0)]
    return {"measurements": measurements, "epochs": epochs, "timings": timings}


CONFIGS = [(k, seed, False, 0.0) for k in (0, 2, 5) for seed in (0, 1)] + [
    (2, seed, True, 0.0) for seed in (0, 1)] + [
    (2, seed, False, rho) for rho in (0.05, 0.5) for seed in (0, 1)]


def write_sweep(storage: Path, sweep: str = "syn") -> None:
    for k, seed, at, rho in CONFIGS:
        trial = f"k{k}_s{seed}_{'at' if at else 'std'}_r{rho}"
        for table, rows in trial_rows(k, seed, at, rho).items():
            write_trial_table(storage, sweep, table, trial, rows)


def write_bare_sweep(storage: Path, sweep: str = "bare") -> None:
    """White-box only: no clean rows, transfer targets, cross-task, epochs or timings."""
    rows = [dict(attempt=0, layout="0+1|0,1", branch_point=None, adv_train="none", rho=0.0,
                 optimizer="adam", seed=0, epoch=3, kind="whitebox", attack_method="fgsm",
                 objective=objective, eps=eps, steps=1, task="mean", metric="delta",
                 rel_change=-0.01 * eps * (2 if objective == "dgba" else 1))
            for objective in ("dgba", "total") for eps in (4.0, 8.0)]
    write_trial_table(storage, sweep, "measurements", "only", rows)


@pytest.fixture(scope="module")
def storage(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("storage")
    write_sweep(root)
    write_bare_sweep(root)
    return root


@pytest.fixture(scope="module")
def tables(storage: Path) -> A.Tables:
    return A.load_tables(storage / "syn")


@pytest.fixture(scope="module")
def result(storage: Path, tmp_path_factory: pytest.TempPathFactory) -> A.AnalysisResult:
    return analysis.analyze(storage / "syn", tmp_path_factory.mktemp("out"))


def test_layout_columns_derive_sharing_and_branch_point(tables: A.Tables) -> None:
    info = tables.measurements.select("layout", "sharing", "branch_point").unique().collect()
    for k in (0, 2, 5):
        row = info.filter(pl.col("layout") == layout(k))
        assert row["sharing"].to_list() == [pytest.approx(k / 5)]
        assert row["branch_point"].to_list() == [k]
    info = A.layout_info([layout(2), "0+1+2|0,1+2|0,1,2|0,1,2|0,1,2", "not a layout"])
    assert info.row(0) == (layout(2), pytest.approx(0.4), 2)
    assert info.row(1)[2] is None  # a layout, but not a branch-point one
    assert info.row(2)[1:] == (None, None)


def test_delta_by_objective_matches_the_stored_values(tables: A.Tables) -> None:
    frame = A.delta_by_objective(tables)
    for k in (0, 2, 5):
        for objective in OBJ_SCALE:
            for eps in (2.0, 4.0):
                got = frame.filter((pl.col("layout") == layout(k))
                                   & (pl.col("regime") == "standard")
                                   & (pl.col("objective") == objective) & (pl.col("eps") == eps))
                assert got.height == 1 and got["trials"][0] == 2
                assert got["delta"][0] == pytest.approx(white_delta(k, objective, eps, False, 4))
    at = frame.filter((pl.col("regime") == f"AT {AT_LABEL}") & (pl.col("objective") == "dgba")
                      & (pl.col("eps") == 4.0))
    assert at["delta"].to_list() == [pytest.approx(white_delta(2, "dgba", 4.0, True, 4))]
    assert set(frame["regime"]) == {"standard", f"AT {AT_LABEL}", "standard ρ=0.05",
                                    "standard ρ=0.5"}


def test_summary_averages_objective_families(tables: A.Tables) -> None:
    summary = A.summary(tables)
    assert summary["objective"].to_list() == ["dgba", "total", "signsum", "single"]
    # ten trials: six standard (k=0,2,5), two AT (k=2, half damage), two+two SAM (k=2)
    per_trial = [white_delta(k, "dgba", 4.0, at, 4) for k, _, at, _ in CONFIGS]
    dgba = summary.filter(pl.col("objective") == "dgba")
    assert dgba["Δ ε=4"][0] == pytest.approx(sum(per_trial) / len(per_trial))
    single = [white_delta(k, o, 2.0, at, 4) for k, _, at, _ in CONFIGS for o in OBJ_SCALE
              if o.startswith("single:")]
    assert summary.filter(pl.col("objective") == "single")["Δ ε=2"][0] == pytest.approx(
        sum(single) / len(single))
    assert summary["trials"].to_list() == [len(CONFIGS)] * 4


def test_tradeoff_uses_standard_trials_and_dgba_reference(tables: A.Tables) -> None:
    frame, attack = A.tradeoff(tables)
    assert attack == A.Attack("pgd", "dgba", 4.0)
    assert frame["branch_point"].to_list() == [0, 2, 5]
    assert frame["clean scene_class accuracy"].to_list() == pytest.approx([0.5, 0.6, 0.75])
    assert frame["clean depth_zbuffer abs_err"].to_list() == pytest.approx([0.5, 0.6, 0.75])
    assert frame["whitebox_delta"].to_list() == pytest.approx(
        [white_delta(k, "dgba", 4.0, False, 4) for k in (0, 2, 5)])
    assert frame["cross_task_delta"].to_list() == pytest.approx([0.0, -0.1, -0.25])
    assert "clean scene_class extra" not in frame.columns


def test_cross_task_matrix_by_hand(tables: A.Tables) -> None:
    long = A.cross_task_long(tables, ["layout"])
    matrix = A.cross_task_matrix(long.filter(pl.col("layout") == layout(5)).drop("layout"))
    assert matrix["source_task"].to_list() == sorted(TASKS)
    for i, src in enumerate(sorted(TASKS)):
        for dst in TASKS:
            assert matrix[dst][i] == pytest.approx(-0.3 if src == dst else -0.25)


def test_early_stopping_curve_and_lr_decays(tables: A.Tables) -> None:
    frame, attack = A.early_stopping(tables)
    assert attack == A.Attack("mifgsm", "dgba", 8.0)
    standard = frame.filter(pl.col("regime") == "standard").sort("epoch")
    assert standard["epoch"].to_list() == list(EPOCHS)
    assert standard["success_rate"].to_list()[1::2] == pytest.approx(
        [success(e, 0.0) for e in KEPT])
    assert standard["success_rate"].to_list()[0::2] == [None, None]  # not kept: not attacked
    assert standard["lambda_max"].to_list() == pytest.approx([lambda_max(e, 0.0) for e in EPOCHS])
    assert frame.filter(pl.col("lr_decayed"))["epoch"].unique().to_list() == [DECAY]
    assert standard["lr"].to_list() == pytest.approx([0.1, 0.1, 0.01, 0.01])


def test_transfer_vs_rho(tables: A.Tables) -> None:
    frame, _ = A.transfer_vs_rho(tables)
    standard = frame.filter(~pl.col("adversarial")).sort("rho")
    assert standard["rho"].to_list() == [0.0, 0.05, 0.5]
    assert standard["success_rate"].to_list() == pytest.approx(
        [success(4, r) for r in (0.0, 0.05, 0.5)])
    assert standard["transfer_delta"].to_list() == pytest.approx(
        [-success(4, r) for r in (0.0, 0.05, 0.5)])
    assert standard["lambda_max"].to_list() == pytest.approx(
        [lambda_max(4, r) for r in (0.0, 0.05, 0.5)])


def test_clean_vs_adversarial(tables: A.Tables) -> None:
    frame = A.clean_vs_adversarial(tables)
    assert frame["training"].to_list() == ["standard", AT_LABEL]
    at = frame.row(1, named=True)
    assert at["trials"] == 2
    assert at["clean scene_class accuracy"] == pytest.approx(0.5)
    assert at["Δ dgba ε=4"] == pytest.approx(white_delta(2, "dgba", 4.0, True, 4))


def test_report_has_every_section_and_plots(result: A.AnalysisResult) -> None:
    text = result.report.read_text()
    for key in ("Summary", "1. White-box Δ", "2. Sharing trade-off", "3. Cross-task",
                "4. Transfer and sharpness", "5. Transfer vs ρ", "6. Clean vs adversarially",
                "7. Timings"):
        assert f"## {key}" in text
    assert "Not available" not in text and result.missing == {}
    assert f"LR decayed at the start of epoch(s): {DECAY}" in text
    names = {p.name for p in result.plots}
    assert names == {"delta_vs_eps.png", "tradeoff.png", "cross_task.png", "early_stopping.png",
                     "transfer_vs_rho.png", "clean_vs_adversarial.png"}
    for path in result.plots:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
        assert f"]({path.name})" in text
    assert f"| dgba | {white_delta(2, 'dgba', 2.0, False, 4):.4f} |" in text.replace(
        "| pgd ", "")


def test_sections_degrade_when_data_is_absent(storage: Path, tmp_path: Path) -> None:
    result = analysis.analyze(storage / "bare", tmp_path)
    text = result.report.read_text()
    assert set(result.missing) == {"cross_task", "early_stopping", "transfer_vs_rho",
                                   "clean_vs_adversarial", "timings"}
    assert text.count("_Not available:") == 5
    assert "no transfer targets" in result.missing["transfer_vs_rho"]
    assert "Only one layout" in text  # the trade-off still shows its single white-box point
    assert result.tables["tradeoff"]["sharing"].to_list() == [pytest.approx(0.5)]
    assert [p.name for p in result.plots] == ["delta_vs_eps.png", "tradeoff.png"]
    assert result.summary["Δ ε=8"].to_list() == pytest.approx([-0.16, -0.08])


def test_storage_with_several_sweeps_and_sweep_filter(storage: Path, tmp_path: Path) -> None:
    both = A.load_tables(storage)
    assert set(both.measurements.select("sweep").unique().collect()["sweep"]) == {"syn", "bare"}
    only = analysis.analyze(storage, tmp_path, sweep="bare")
    assert only.summary["trials"].to_list() == [1, 1]
    with pytest.raises(FileNotFoundError, match="no measurements"):
        analysis.analyze(storage, tmp_path, sweep="nope")


def test_cli_analyze(storage: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "report"
    assert main(["analyze", str(storage / "bare"), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dgba" in printed and "-0.16" in printed and "report.md" in printed
    assert (out / "report.md").is_file() and (out / "delta_vs_eps.png").stat().st_size > 0
    assert main(["analyze", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("dropped, absent", [
    ("clean", set()),
    ("whitebox", {"summary", "delta_by_objective"}),
    ("cross_task", {"cross_task"}),
    ("transfer", {"transfer_vs_rho"}),
])
def test_each_kind_may_be_missing(tmp_path: Path, dropped: str, absent: set[str]) -> None:
    from orchestrator.report import TITLES

    for k, seed, at, rho in (CONFIGS[0], CONFIGS[2], CONFIGS[6], CONFIGS[8]):
        rows = trial_rows(k, seed, at, rho)
        rows["measurements"] = [r for r in rows["measurements"] if r["kind"] != dropped]
        for table, table_rows in rows.items():
            write_trial_table(tmp_path / "st", "syn", table, f"t{k}{seed}{at}{rho}", table_rows)
    result = analysis.analyze(tmp_path / "st" / "syn", tmp_path / "out")
    text = result.report.read_text()
    assert all(f"## {title}" in text for title in TITLES.values())
    assert set(result.missing) == absent
    if dropped == "transfer":
        assert "No transfer targets in this sweep: only sharpness is shown" in text
    if dropped == "clean":
        assert not any(c.startswith("clean ") for c in result.tables["tradeoff"].columns)


def test_old_schema_rows_are_analysed(tmp_path: Path) -> None:
    """A v0 file (no schema_version, attempt or kind) counts beside a current one."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    write_bare_sweep(tmp_path, "mixed")
    directory = tmp_path / "mixed" / "results" / "measurements"
    pq.write_table(pa.table({
        "sweep": ["mixed"], "trial_id": ["v0"], "layout": ["0+1|0,1"], "adv_train": ["none"],
        "rho": [0.0], "optimizer": ["adam"], "seed": [1], "epoch": [3], "attack_method": ["fgsm"],
        "objective": ["dgba"], "eps": [8.0], "steps": [1], "task": ["mean"], "metric": ["delta"],
        "rel_change": [-0.36]}), directory / "v0.parquet")
    frame = A.delta_by_objective(A.load_tables(tmp_path / "mixed"))
    dgba8 = frame.filter((pl.col("objective") == "dgba") & (pl.col("eps") == 8.0))
    assert dgba8["trials"].to_list() == [2]
    assert dgba8["delta"].to_list() == [pytest.approx((-0.16 - 0.36) / 2)]


def test_undefined_deltas_are_left_out_and_counted(tmp_path: Path) -> None:
    write_bare_sweep(tmp_path, "zero")
    write_trial_table(tmp_path, "zero", "measurements", "floored", [dict(
        attempt=0, layout="0+1|0,1", branch_point=1, adv_train="none", rho=0.0,
        optimizer="adam", seed=1, epoch=3, kind="whitebox", attack_method="fgsm",
        objective="dgba", eps=8.0, steps=1, task="mean", metric="delta",
        rel_change=float("nan"))])
    result = analysis.analyze(tmp_path / "zero", tmp_path / "out")
    assert result.summary["Δ ε=8"].to_list() == pytest.approx([-0.16, -0.08])
    assert "**1 Δ values were undefined or out of range and left out" in \
        result.report.read_text()  # the wording changed with the out-of-range rule



def test_rows_of_the_real_evaluation_flow_through_sink_and_report(tmp_path: Path) -> None:
    """mtl.evaluate rows (tiny untrained models) -> write_trial_table -> analyze."""
    import torch

    from mtl.attacks import AttackSpec
    from mtl.evaluate import cross_task_rows, evaluate_attacks, evaluate_clean, evaluate_transfer
    from mtl.models import Layout, build_model

    tasks = ("segment_semantic", "depth_zbuffer", "scene_class")
    channels = {"segment_semantic": 4, "depth_zbuffer": 1, "scene_class": 3}
    g = torch.Generator().manual_seed(0)
    loader = [{"image": torch.rand(4, 3, 16, 16, generator=g),
               "segment_semantic": torch.randint(0, 4, (4, 16, 16), generator=g),
               "depth_zbuffer": torch.rand(4, 1, 16, 16, generator=g) + 0.5,
               "scene_class": torch.randint(0, 3, (4,), generator=g)}]
    specs = [AttackSpec("fgsm", objective, 8, 1) for objective in ("dgba", "total")]
    target = build_model(Layout.branch_point(5, 3, 5), tasks, channels, width=4)
    for k in (0, 5):
        torch.manual_seed(k)
        model = build_model(Layout.branch_point(k, 3, 5), tasks, channels, width=4)
        common = dict(attempt=0, layout=str(model.layout), branch_point=k, adv_train="none",
                      rho=0.0, optimizer="sgd", seed=0, epoch=1, surrogate_id=f"k{k}")
        rows = [dict(common, kind="clean", attack_method="none", objective="none", eps=0.0,
                     steps=0, task=task, metric=metric, clean=value)
                for task, metrics in evaluate_clean(model, loader).items()
                for metric, value in metrics.items()]
        rows += [dict(common, kind="whitebox", **r) for r in evaluate_attacks(model, loader, specs)]
        rows += [dict(common, kind="cross_task", **r)
                 for r in cross_task_rows(model, loader, "fgsm", 8, 1)]
        rows += [dict(common, kind="transfer", **r)
                 for r in evaluate_transfer(model, {"tgt": target}, loader, specs)]
        write_trial_table(tmp_path, "real", "measurements", f"k{k}", rows)
    result = analysis.analyze(tmp_path / "real", tmp_path / "out")
    assert result.summary["objective"].to_list() == ["dgba", "total"]
    assert {"delta_by_objective", "tradeoff", "cross_task", "early_stopping"} <= set(
        result.tables)
    assert result.tables["cross_task"].height == 3
