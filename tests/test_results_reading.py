"""Defensive reading: corrupt, truncated, foreign, misplaced, null-keyed and duplicate files are
named in a ResultsWarning and skipped; the rows left are exactly the good ones."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import results_reading
from orchestrator.cli import main
from orchestrator.results import (ResultsWarning, read_results, result_files, scan_results,
                                  validate_rows, write_trial_table)

COMMON = dict(layout="0+1|0,1", branch_point=1, adv_train="none", rho=0.0, optimizer="sgd",
              seed=0, epoch=2)


def whitebox(objective: str, eps: float, delta: float, attempt: int = 0) -> dict:
    return dict(COMMON, attempt=attempt, kind="whitebox", attack_method="fgsm",
                objective=objective, eps=eps, steps=1, task="mean", metric="delta",
                rel_change=delta, n=8)


def good_rows(trial: int) -> list[dict]:
    return [whitebox(obj, eps, -0.01 * (trial + 1) * eps) for obj in ("dgba", "total")
            for eps in (4.0, 8.0)]


def write_good(storage: Path, sweep: str = "sw", trials: int = 3) -> Path:
    for i in range(trials):
        write_trial_table(storage, sweep, "measurements", f"t{i}", good_rows(i))
        write_trial_table(storage, sweep, "timings", f"t{i}",
                          [dict(attempt=0, phase="train", seconds=1.0 + i)])
    return storage / sweep / "results" / "measurements"


def plant_bad_files(directory: Path) -> dict[str, str]:
    """Every kind of bad file beside the good ones: {file name: a word its reason holds}."""
    good = (directory / "t0.parquet").read_bytes()
    (directory / "truncated.parquet").write_bytes(good[: len(good) // 2])
    (directory / "hollow.parquet").write_bytes(good[:4] + good[200:])  # footer intact, data cut
    (directory / "random.parquet").write_bytes(os.urandom(2000))
    (directory / "empty.parquet").write_bytes(b"")
    pq.write_table(pa.table({"colour": ["red"], "size": [3]}), directory / "foreign.parquet")
    shutil.copy(directory / "t1.parquet", directory / "t1-copy.parquet")
    null_key = validate_rows("measurements", "sw", "nullkey", [whitebox("dgba", 4.0, -9.0)])
    null_key = null_key.set_column(null_key.schema.get_field_index("trial_id"),
                                   pa.field("trial_id", pa.string()), pa.array([None], pa.string()))
    pq.write_table(null_key, directory / "nullkey.parquet")
    timings = directory.parent / "timings"
    shutil.copy(timings / "t2.parquet", directory / "misplaced.parquet")
    return {"truncated.parquet": "truncated", "hollow.parquet": "points past the end",
            "random.parquet": "not a parquet file",
            "empty.parquet": "empty", "foreign.parquet": "foreign",
            "t1-copy.parquet": "a second copy of trial 't1'", "nullkey.parquet": "null trial_id",
            "misplaced.parquet": "table 'timings'"}


def expected_rows() -> pl.DataFrame:
    rows = [dict(trial_id=f"t{i}", **r) for i in range(3) for r in good_rows(i)]
    return pl.DataFrame(rows).select("trial_id", "objective", "eps", "rel_change").sort(
        "trial_id", "objective", "eps")


def read_warning_free(path: Path) -> tuple[pl.DataFrame, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        frame = read_results(path).collect()
    assert all(issubclass(w.category, ResultsWarning) for w in caught)
    return frame, [str(w.message) for w in caught]


@pytest.mark.parametrize("threads", [False, True])
def test_every_bad_file_is_named_once_and_skipped(tmp_path: Path, threads: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # a big directory's footers are read by a thread pool: the same verdicts either way
    monkeypatch.setattr(results_reading, "PARALLEL_FROM", 1 if threads else 10**9)
    directory = write_good(tmp_path)
    bad = plant_bad_files(directory)
    frame, messages = read_warning_free(tmp_path / "sw")
    assert len(messages) == len(bad)
    for name, word in bad.items():
        (line,) = [m for m in messages if m.startswith(str(directory / name) + ": ")]
        assert word in line and "\n" not in line
    got = frame.select("trial_id", "objective", "eps", "rel_change").sort(
        "trial_id", "objective", "eps")
    assert got.equals(expected_rows())  # exactly the good rows: no copy counted twice
    assert frame["trial_id"].null_count() == 0 and frame["sweep"].null_count() == 0


def test_result_files_lists_the_good_files_and_warns_the_rest(tmp_path: Path) -> None:
    directory = write_good(tmp_path)
    bad = plant_bad_files(directory)
    with pytest.warns(ResultsWarning) as caught:
        files = result_files(tmp_path / "sw")
    assert [Path(f).name for f in files] == ["t0.parquet", "t1.parquet", "t2.parquet"]
    assert len(caught) == len(bad)
    scan = scan_results(tmp_path / "sw")
    assert sorted(Path(s.path).name for s in scan.skipped) == sorted(bad)


def test_a_copy_with_a_higher_attempt_wins_and_ties_keep_the_trial_named_file(
        tmp_path: Path) -> None:
    directory = write_good(tmp_path, trials=2)
    # a later attempt of t0 under another name (e.g. written by a newer layout): it wins
    write_trial_table(tmp_path / "elsewhere", "sw", "measurements", "t0",
                      [whitebox("dgba", 4.0, -0.5, attempt=1)])
    renamed = tmp_path / "elsewhere" / "sw" / "results" / "measurements" / "t0.parquet"
    shutil.move(renamed, directory / "a-retry.parquet")
    # same key as t1 (sweep sw, attempt 0): the file named t1.parquet is kept
    shutil.copy(directory / "t1.parquet", directory / "0-first-by-name.parquet")
    scan = scan_results(tmp_path / "sw")
    assert sorted(Path(f.path).name for f in scan.files) == ["a-retry.parquet", "t1.parquet"]
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert set(reasons) == {"t0.parquet", "0-first-by-name.parquet"}
    assert reasons["t0.parquet"] == ("an older attempt (0) of trial 't0' of sweep 'sw': "
                                     f"attempt 1 is read from {directory / 'a-retry.parquet'}")
    assert reasons["0-first-by-name.parquet"].startswith("a second copy of trial 't1'")
    frame = scan.frame().collect()
    assert frame.filter(pl.col("trial_id") == "t0")["rel_change"].to_list() == [-0.5]
    assert frame.filter(pl.col("trial_id") == "t1").height == 4


def test_rows_that_contradict_the_files_key_are_skipped(tmp_path: Path) -> None:
    directory = write_good(tmp_path, trials=1)
    table = validate_rows("measurements", "sw", "t9", [whitebox("dgba", 4.0, -0.1)])
    table = table.set_column(table.schema.get_field_index("trial_id"),
                             table.schema.field("trial_id"), pa.array(["t0"]))
    pq.write_table(table, directory / "t9.parquet")  # keyed t9, rows say t0
    scan = scan_results(tmp_path / "sw")
    (skipped,) = scan.skipped
    assert "rows of trial_id 't0' in a file keyed trial_id 't9'" in skipped.reason
    assert scan.frame().collect().height == 4


def test_null_keys_are_found_without_statistics(tmp_path: Path) -> None:
    directory = write_good(tmp_path, trials=1)
    legacy = pa.table({"sweep": ["sw", "sw"], "trial_id": ["old", None], "task": ["mean"] * 2,
                       "metric": ["delta"] * 2, "epoch": [1, 1], "rel_change": [-0.1, -0.2]})
    pq.write_table(legacy, directory / "old.parquet", write_statistics=False)
    assert pq.read_metadata(directory / "old.parquet").row_group(0).column(1).statistics is None
    scan = scan_results(tmp_path / "sw")
    assert [(Path(s.path).name, s.reason) for s in scan.skipped] == [
        ("old.parquet", "null trial_id in 1 row(s)")]


def test_legacy_files_are_keyed_by_their_rows(tmp_path: Path) -> None:
    """Files before schema 3 carry no key metadata: the key is their rows' single trial."""
    directory = write_good(tmp_path, trials=1)
    v0 = pa.table({"sweep": ["sw"], "trial_id": ["t0"], "task": ["mean"], "metric": ["delta"],
                   "epoch": [2], "attempt": [3], "rel_change": [-0.7]})
    pq.write_table(v0, directory / "v0.parquet")  # attempt 3 of t0: wins over attempt 0
    two = pa.table({"sweep": ["sw", "sw"], "trial_id": ["a", "b"], "task": ["mean"] * 2,
                    "metric": ["delta"] * 2, "epoch": [2, 2]})
    pq.write_table(two, directory / "two.parquet")
    scan = scan_results(tmp_path / "sw")
    assert [Path(f.path).name for f in scan.files] == ["v0.parquet"]
    reasons = {Path(s.path).name: s.reason for s in scan.skipped}
    assert "rows of 2 trials in one file" in reasons["two.parquet"]
    assert "attempt 3 is read from" in reasons["t0.parquet"]


def test_a_column_of_the_wrong_type_is_skipped_by_name(tmp_path: Path) -> None:
    directory = write_good(tmp_path, trials=1)
    table = validate_rows("measurements", "sw", "t5", [whitebox("dgba", 4.0, -0.1)])
    table = table.set_column(table.schema.get_field_index("eps"), pa.field("eps", pa.string()),
                             pa.array(["four"]))
    pq.write_table(table, directory / "t5.parquet")
    (skipped,) = scan_results(tmp_path / "sw").skipped
    assert skipped.reason == "column 'eps' is String, expected Float64"


def test_axis_columns_of_mixed_types_merge(tmp_path: Path) -> None:
    """An axis that is int in one file and float in another reads as float; int and string as
    string (each file is read with its own types and cast, never failing in polars)."""
    write_trial_table(tmp_path, "sw", "measurements", "a", [whitebox("dgba", 4, -0.1)],
                      columns={"model.width": 8, "training.lr": 1, "tag": "x"})
    write_trial_table(tmp_path, "sw", "measurements", "b", [whitebox("dgba", 4, -0.2)],
                      columns={"model.width": 16, "training.lr": 0.5, "tag": 3})
    frame = read_results(tmp_path / "sw").collect().sort("trial_id")
    assert frame["model.width"].dtype == pl.Int64 and frame["model.width"].to_list() == [8, 16]
    assert frame["training.lr"].dtype == pl.Float64 and frame["training.lr"].to_list() == [1, 0.5]
    assert frame["tag"].dtype == pl.String and frame["tag"].to_list() == ["x", "3"]


def test_each_footer_is_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_good(tmp_path, trials=6)
    calls: list[str] = []
    real = results_reading.pq.read_metadata

    def counting(where: str, **kwargs: object) -> pq.FileMetaData:
        calls.append(where)
        return real(where, **kwargs)

    monkeypatch.setattr(results_reading.pq, "read_metadata", counting)
    frame = read_results(tmp_path / "sw").collect()
    assert frame.height == 24
    assert sorted(calls) == sorted(set(calls)) and len(calls) == 6


def test_cli_analyze_names_the_skipped_files_and_exits_0(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    directory = write_good(tmp_path)
    bad = plant_bad_files(directory)
    out = tmp_path / "out"
    assert main(["analyze", str(tmp_path / "sw"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if "warning" in ln]
    assert len(lines) == len(bad)
    for name in bad:
        assert f"mtlsweep analyze: warning: {directory / name}: " in captured.err
    assert "Warning" not in captured.err and "warnings.warn" not in captured.err
    report = (out / "report.md").read_text()
    assert f"{len(bad)} result files were skipped" in report
    for name in bad:
        assert name in report
    assert "3 trials" in report


def test_cli_analyze_with_only_bad_files_names_them_and_fails(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture
                                                              ) -> None:
    directory = tmp_path / "sw" / "results" / "measurements"
    directory.mkdir(parents=True)
    (directory / "t0.parquet").write_bytes(b"PAR1 and then nothing")
    assert main(["analyze", str(tmp_path / "sw"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [f"mtlsweep analyze: warning: {directory / 't0.parquet'}: truncated parquet "
                   "file (no footer: its write did not finish)",
                   f"mtlsweep analyze: error: no measurements under {str(tmp_path / 'sw')!r} "
                   "(expected <sweep>/results/measurements/*.parquet); 1 result files were "
                   "skipped, see the warnings"]
