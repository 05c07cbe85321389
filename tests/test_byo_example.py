"""examples/byo end to end: a user project outside the package (its own dataset factory, model
factory and task, named by import path) runs as a sweep, is analysed, and its rows carry the
user's task and one column per sweep axis; `--dry-run` validates without running or writing."""
from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from orchestrator.cli import main
from orchestrator.results import read_results

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "byo"


@pytest.fixture(autouse=True)
def _fresh_user_package() -> Iterator[None]:
    """Each test imports its own copy of the `byo` package: forget any earlier import and the
    import path the sweep added, before and after."""
    def forget() -> None:
        for name in [n for n in sys.modules if n == "byo" or n.startswith("byo.")]:
            del sys.modules[name]
    path = list(sys.path)
    forget()
    yield
    forget()
    sys.path[:] = path


def copy_example(tmp_path: Path) -> Path:
    """A copy of examples/byo under tmp_path; returns its sweep file."""
    shutil.copytree(EXAMPLE, tmp_path / "byo",
                    ignore=shutil.ignore_patterns("__pycache__", "runs"))
    return tmp_path / "byo" / "sweep.yaml"


def test_byo_sweep_runs_and_analyses(tmp_path, capsys):
    sweep = copy_example(tmp_path)
    storage = tmp_path / "runs"
    assert main(["run", str(sweep), "--storage", str(storage)]) == 0
    assert "4 trials, 0 failed" in capsys.readouterr().out
    sweep_dir = storage / "byo"
    assert main(["analyze", str(sweep_dir)]) == 0

    frame = read_results(sweep_dir).collect()
    assert frame["trial_id"].n_unique() == 4
    assert {"model.width", "training.lr"} <= set(frame.columns)
    assert set(frame["model.width"].unique()) == {4, 8}
    assert set(frame["training.lr"].unique()) == {0.01, 0.003}
    # the 2 x 2 grid: each (width, lr) pair is one trial
    pairs = frame.select("trial_id", "model.width", "training.lr").unique()
    assert pairs.height == 4 and pairs.select("model.width", "training.lr").unique().height == 4

    saliency = frame.filter(pl.col("task") == "saliency")
    assert {"clean", "whitebox"} <= set(saliency["kind"])
    clean = saliency.filter(pl.col("kind") == "clean")
    assert set(clean["metric"]) == {"mae", "fscore"}
    assert clean.height == 4 * 2 * clean["epoch"].n_unique()   # 4 trials x 2 metrics per epoch
    assert clean["clean"].null_count() == 0 and clean["clean"].is_finite().all()
    white = saliency.filter(pl.col("kind") == "whitebox")
    assert {"total", "dgba", "single:saliency"} <= set(white["objective"])
    assert set(white["eps"]) == {8.0}
    assert {"mae", "fscore", "delta"} <= set(white["metric"])
    # the built-in task ran beside the user's
    assert "segment_semantic" in set(frame.filter(pl.col("kind") == "clean")["task"])


def test_dry_run_prints_the_grid_and_writes_nothing(tmp_path, capsys, monkeypatch):
    sweep = copy_example(tmp_path)
    monkeypatch.chdir(tmp_path)           # a stray relative path would land here
    storage = tmp_path / "runs"
    assert main(["run", str(sweep), "--dry-run", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "4 trials" in out
    assert "model.width" in out and "training.lr" in out
    assert "0.003" in out
    assert not storage.exists() or not any(storage.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["byo"]


def test_dry_run_names_a_bad_factory_in_one_line(tmp_path, capsys):
    sweep = copy_example(tmp_path)
    text = sweep.read_text()
    assert "factory: byo.nets:build" in text
    sweep.write_text(text.replace("factory: byo.nets:build", "factory: byo.nets:nope"))
    storage = tmp_path / "runs"
    assert main(["run", str(sweep), "--dry-run", "--storage", str(storage)]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    assert "model.factory" in lines[0] and "nope" in lines[0]
    assert not storage.exists() or not any(storage.iterdir())
