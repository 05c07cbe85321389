"""The parquet result sink: schema validation, atomic per-trial files, old-schema tolerant reads."""
from __future__ import annotations

import os
import types
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from orchestrator import results, results_paths
from orchestrator.results import (SCHEMA_VERSION, TABLES, read_results, result_files, schema,
                                  trial_path, write_trial_table)


def measurement(**over: object) -> dict:
    row = dict(attempt=0, layout="0+1+2|0,1+2|0,1,2", branch_point=1, adv_train="none", rho=0.0,
               optimizer="sgd", seed=0, epoch=3, surrogate_id=None, target_id=None,
               kind="whitebox", attack_method="pgd", objective="dgba", eps=4.0, steps=10,
               task="mean", metric="delta", clean=None, adv=None, rel_change=-0.25)
    row.update(over)
    return row


def epoch_row(**over: object) -> dict:
    row = dict(attempt=0, layout="0+1|0,1", branch_point=1, adv_train="none", rho=0.0,
               optimizer="sgd", seed=0, epoch=1, lr=0.1, lr_decayed=False, kept=True,
               quantity="lambda_max", value=12.5)
    row.update(over)
    return row


def test_schema_has_the_documented_columns_and_version_metadata() -> None:
    assert TABLES == ("measurements", "epochs", "timings")
    assert schema("measurements").names == [
        "schema_version", "sweep", "trial_id", "attempt", "layout", "branch_point", "adv_train",
        "rho", "optimizer", "seed", "epoch", "train_epochs", "dataset", "model",
        "surrogate_id", "target_id", "kind", "attack_method", "objective", "eps", "steps",
        "task", "metric", "clean", "adv", "rel_change", "n", "numerator", "denominator",
        "attack_options"]
    assert schema("epochs").names[-5:] == ["lr", "lr_decayed", "kept", "quantity", "value"]
    assert schema("timings").names == ["schema_version", "sweep", "trial_id", "attempt",
                                       "phase", "seconds"]
    m = schema("measurements")
    # schema 2: layout is null for a model without layouts (a user's own model)
    for nullable in ("branch_point", "clean", "adv", "rel_change", "target_id", "layout"):
        assert m.field(nullable).nullable
    for key in ("sweep", "trial_id", "eps", "objective", "task", "metric", "epoch"):
        assert not m.field(key).nullable
    assert m.metadata[results.METADATA_KEY] == str(SCHEMA_VERSION).encode()


def test_write_then_read_roundtrip_fills_version_sweep_and_trial(tmp_path: Path) -> None:
    rows = [measurement(eps=2), measurement(eps=4, rel_change=-0.5)]
    path = write_trial_table(tmp_path, "sw", "measurements", "t0", rows)
    assert path == trial_path(tmp_path, "sw", "measurements", "t0")
    assert Path(path) == tmp_path / "sw" / "results" / "measurements" / "t0.parquet"
    meta = pq.read_schema(path).metadata
    assert meta[results.METADATA_KEY] == str(SCHEMA_VERSION).encode()
    df = read_results(tmp_path / "sw").collect()
    assert df.height == 2
    assert df["schema_version"].to_list() == [SCHEMA_VERSION] * 2
    assert df["sweep"].unique().to_list() == ["sw"]
    assert df["trial_id"].unique().to_list() == ["t0"]
    assert sorted(df["rel_change"].to_list()) == [-0.5, -0.25]
    assert df["eps"].dtype == pl.Float64 and df["target_id"].null_count() == 2


def test_retry_replaces_the_trial_file_and_leaves_no_temp_files(tmp_path: Path) -> None:
    write_trial_table(tmp_path, "sw", "measurements", "t0", [measurement()] * 3)
    write_trial_table(tmp_path, "sw", "measurements", "t0", [measurement(attempt=1)] * 2)
    directory = tmp_path / "sw" / "results" / "measurements"
    assert sorted(os.listdir(directory)) == ["t0.parquet"]
    df = read_results(tmp_path / "sw").collect()
    assert df.height == 2 and df["attempt"].to_list() == [1, 1]


def test_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    write_trial_table(tmp_path, "sw", "timings", "t0", [dict(attempt=0, phase="train",
                                                             seconds=1.5)])

    def broken_replace(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_trial_table(tmp_path, "sw", "timings", "t0",
                          [dict(attempt=1, phase="train", seconds=9.0)])
    assert os.listdir(tmp_path / "sw" / "results" / "timings") == ["t0.parquet"]
    assert read_results(tmp_path / "sw", "timings").collect()["seconds"].to_list() == [1.5]


def test_reader_ignores_temp_and_hidden_files(tmp_path: Path) -> None:
    write_trial_table(tmp_path, "sw", "measurements", "t0", [measurement()])
    directory = tmp_path / "sw" / "results" / "measurements"
    (directory / ".t1.parquet.tmp-abc").write_bytes(b"half written")
    (directory / "t2.parquet.tmp-abc").write_bytes(b"half written")
    assert [Path(f).name for f in result_files(tmp_path / "sw")] == ["t0.parquet"]
    assert read_results(tmp_path / "sw").collect().height == 1


@pytest.mark.parametrize("column, value, needle", [
    ("eps", "eight", "'eps' must be a float"),
    ("steps", 2.5, "'steps' must be an int"),
    ("seed", True, "'seed' must be an int"),
    ("optimizer", None, "'optimizer' is required"),
    ("kind", "blackbox", "'kind' must be one of clean, whitebox, cross_task, transfer"),
    ("colour", "red", "unknown column 'colour'"),
    ("trial_id", "other", "column 'trial_id' is 'other'"),
])
def test_validation_names_the_column(tmp_path: Path, column: str, value: object,
                                     needle: str) -> None:
    with pytest.raises(ValueError, match="measurements row 1") as err:
        write_trial_table(tmp_path, "sw", "measurements", "t0",
                          [measurement(), measurement(**{column: value})])
    assert needle in str(err.value)
    assert not (tmp_path / "sw").exists()  # raised before any work


def test_missing_required_column_and_bad_arguments(tmp_path: Path) -> None:
    row = epoch_row()
    del row["quantity"]
    with pytest.raises(ValueError, match="'quantity' is required"):
        write_trial_table(tmp_path, "sw", "epochs", "t0", [row])
    with pytest.raises(ValueError, match="table must be one of measurements, epochs, timings"):
        write_trial_table(tmp_path, "sw", "trials", "t0", [])
    with pytest.raises(ValueError, match="trial_id"):
        write_trial_table(tmp_path, "sw", "epochs", "../escape", [])
    with pytest.raises(ValueError, match="sweep"):
        write_trial_table(tmp_path, ".hidden", "epochs", "t0", [])
    with pytest.raises(ValueError, match="table must be one of"):
        read_results(tmp_path, "trials")


def test_numpy_scalars_are_accepted(tmp_path: Path) -> None:
    np = pytest.importorskip("numpy")
    write_trial_table(tmp_path, "sw", "epochs", "t0",
                      [epoch_row(epoch=np.int64(2), value=np.float32(0.5))])
    df = read_results(tmp_path / "sw", "epochs").collect()
    assert df["epoch"].to_list() == [2] and df["value"].to_list() == [0.5]


def test_storage_dir_with_several_sweeps_and_uri(tmp_path: Path) -> None:
    write_trial_table(tmp_path, "a", "measurements", "t0", [measurement()])
    write_trial_table(tmp_path, "b", "measurements", "t0", [measurement(), measurement()])
    write_trial_table(f"file://{tmp_path}", "c", "measurements", "t9", [measurement()])
    every = read_results(tmp_path).collect()
    assert every.group_by("sweep").len().sort("sweep")["len"].to_list() == [1, 2, 1]
    assert read_results(f"file://{tmp_path}/b").collect().height == 2
    assert read_results(tmp_path / "b" / "results").collect().height == 2
    assert read_results(tmp_path / "b" / "results" / "measurements").collect().height == 2


def test_absent_table_reads_empty_and_absent_path_raises(tmp_path: Path) -> None:
    write_trial_table(tmp_path, "sw", "measurements", "t0", [measurement()])
    empty = read_results(tmp_path / "sw", "epochs").collect()
    assert empty.height == 0 and empty.columns == schema("epochs").names
    with pytest.raises(FileNotFoundError):
        read_results(tmp_path / "nope")


def test_old_schema_files_are_read_beside_new_ones(tmp_path: Path) -> None:
    """A v0 file (no schema_version, no kind, int32 ints) reads with nulls inserted."""
    directory = tmp_path / "sw" / "results" / "measurements"
    directory.mkdir(parents=True)
    old = pa.table({
        "sweep": ["sw"], "trial_id": ["a_old"], "attempt": pa.array([0], pa.int32()),
        "layout": ["0+1|0,1"], "branch_point": pa.array([1], pa.int32()),
        "adv_train": ["none"], "rho": [0.0], "optimizer": ["sgd"],
        "seed": pa.array([0], pa.int32()), "epoch": pa.array([5], pa.int32()),
        "surrogate_id": [None], "target_id": [None], "attack_method": ["fgsm"],
        "objective": ["total"], "eps": [8.0], "steps": pa.array([1], pa.int32()),
        "task": ["mean"], "metric": ["delta"], "clean": [None], "adv": [None],
        "rel_change": [-0.125], "retired_column": ["gone"],
    })
    pq.write_table(old, directory / "a_old.parquet")  # sorts first: its schema must not win
    write_trial_table(tmp_path, "sw", "measurements", "b_new", [measurement(kind="whitebox")])
    df = read_results(tmp_path / "sw").collect().sort("trial_id")
    assert df.columns == schema("measurements").names
    assert df["schema_version"].to_list() == [0, SCHEMA_VERSION]
    assert df["kind"].to_list() == [None, "whitebox"]
    assert df["epoch"].to_list() == [5, 3] and df["epoch"].dtype == pl.Int64
    assert df["rel_change"].to_list() == [-0.125, -0.25]


def test_uri_storage_writes_through_the_pyarrow_filesystem(monkeypatch) -> None:
    """Non-local URIs go through pyarrow.fs (a mock filesystem stands in for s3:// here)."""
    import pyarrow.fs as pafs

    mock = pafs._MockFileSystem()

    class FileSystem:
        @staticmethod
        def from_uri(uri: str) -> tuple:
            return mock, uri.split("://", 1)[1].strip("/")

    fake = types.ModuleType("pyarrow.fs")
    fake.__dict__.update(vars(pafs))
    fake.FileSystem = FileSystem
    monkeypatch.setattr(results_paths, "pafs", fake)  # where storage URIs are resolved
    for attempt in (0, 1):
        uri = write_trial_table("s3://bucket/runs", "sw", "timings", "t0",
                                [dict(attempt=attempt, phase="train", seconds=1.0)])
    assert uri == "s3://bucket/runs/sw/results/timings/t0.parquet"
    listing = mock.get_file_info(pafs.FileSelector("bucket/runs/sw/results/timings"))
    assert [f.base_name for f in listing] == ["t0.parquet"]
    with mock.open_input_file("bucket/runs/sw/results/timings/t0.parquet") as src:
        assert pq.read_table(src)["attempt"].to_pylist() == [1]
    assert result_files("s3://bucket/runs/sw", "timings") == [uri]


def test_schema_3_columns_for_statistics_are_nullable_and_round_trip(tmp_path: Path) -> None:
    m, e = schema("measurements"), schema("epochs")
    for name in ("n", "numerator", "denominator", "train_epochs"):
        assert m.field(name).type == pa.int64() and m.field(name).nullable
    for name in ("dataset", "model", "attack_options"):
        assert m.field(name).type == pa.string() and m.field(name).nullable
    for name in ("train_epochs", "dataset", "model"):  # trial-level: in the epochs table too
        assert e.field(name).nullable
    rows = [measurement(kind="transfer", target_id="tgt", task="scene_class",
                        metric="success_rate", adv=0.4, rel_change=None, n=5, numerator=2,
                        denominator=5, attack_options='{"rand_init":true}', train_epochs=8,
                        dataset="scenes", model="resnet"),
            measurement(kind="clean", attack_method="none", objective="none", eps=0.0,
                        steps=0, metric="accuracy", clean=0.5, rel_change=None, n=5)]
    write_trial_table(tmp_path, "sw", "measurements", "t0", rows)
    df = read_results(tmp_path / "sw").collect().sort("kind")
    assert df["n"].to_list() == [5, 5] and df["n"].dtype == pl.Int64
    assert df["numerator"].to_list() == [None, 2] and df["denominator"].to_list() == [None, 5]
    assert df["attack_options"].to_list() == [None, '{"rand_init":true}']
    assert df["train_epochs"].to_list() == [None, 8] and df["dataset"].to_list() == [None, "scenes"]
    with pytest.raises(ValueError, match="'n' must be an int"):
        write_trial_table(tmp_path, "sw", "measurements", "t1", [measurement(n=2.5)])


def test_files_carry_their_key_in_the_metadata(tmp_path: Path) -> None:
    path = write_trial_table(tmp_path, "sw", "epochs", "t0", [epoch_row(attempt=2)] * 2)
    meta = pq.read_schema(path).metadata
    assert meta[results.TABLE_KEY] == b"epochs" and meta[results.SWEEP_KEY] == b"sw"
    assert meta[results.TRIAL_KEY] == b"t0" and meta[results.ATTEMPT_KEY] == b"2"
    empty = write_trial_table(tmp_path, "sw", "timings", "t0", [], attempt=3)
    assert pq.read_schema(empty).metadata[results.ATTEMPT_KEY] == b"3"
    filled = write_trial_table(tmp_path, "sw", "timings", "t1",
                               [dict(phase="train", seconds=1.0)], attempt=1)
    assert pq.read_table(filled)["attempt"].to_pylist() == [1]
    with pytest.raises(ValueError, match="attempts \\[0, 1\\] in one file"):
        write_trial_table(tmp_path, "sw", "epochs", "t2", [epoch_row(), epoch_row(attempt=1)])
    with pytest.raises(ValueError, match="column 'attempt' is 0 but this file is for attempt 4"):
        write_trial_table(tmp_path, "sw", "epochs", "t2", [epoch_row()], attempt=4)


@pytest.mark.parametrize("version", [1, 2])
def test_files_of_schema_1_and_2_read_with_nulls_in_the_new_columns(tmp_path: Path,
                                                                    version: int) -> None:
    """Before schema 3 the metadata held only the version and the table: the key comes from
    the rows, and the statistics columns read as null."""
    current = {f.name for f in schema("measurements")}
    added = {"train_epochs", "dataset", "model", "n", "numerator", "denominator",
             "attack_options"}
    table = results.validate_rows("measurements", "sw", "old", [measurement()])
    table = table.drop_columns(sorted(added))
    assert set(table.column_names) == current - added
    table = table.replace_schema_metadata({results.METADATA_KEY: str(version).encode(),
                                           results.TABLE_KEY: b"measurements"})
    table = table.set_column(0, "schema_version", pa.array([version], pa.int32()))
    directory = tmp_path / "sw" / "results" / "measurements"
    directory.mkdir(parents=True)
    pq.write_table(table, directory / "old.parquet")
    write_trial_table(tmp_path, "sw", "measurements", "new", [measurement(n=7)])
    df = read_results(tmp_path / "sw").collect().sort("trial_id")
    assert df["trial_id"].to_list() == ["new", "old"]
    assert df["schema_version"].to_list() == [SCHEMA_VERSION, version]
    old = df.filter(pl.col("trial_id") == "old")
    assert all(old[name].to_list() == [None] for name in added)
    assert df["n"].to_list() == [7, None]
