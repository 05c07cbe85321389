"""Reading for analysis: each table read once into memory, the rows the queries use, regimes
made of every varied setting, intervals over trials (orchestrator/analysis_tables.py and the
interval helper of orchestrator/analyze.py)."""
from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl
import pytest

from orchestrator import analysis_copy as C
from orchestrator import analysis_tables as T
from orchestrator import analyze as A
from orchestrator.results import write_trial_table


def rows(seed: int, optimizer: str, delta: float, epoch: int = 2) -> list[dict]:
    common = dict(attempt=0, layout="0+1|0,1", branch_point=1, adv_train="none", rho=0.0,
                  optimizer=optimizer, seed=seed, epoch=epoch)
    attack = dict(common, kind="whitebox", attack_method="pgd", objective="dgba", eps=8.0,
                  steps=2)
    return [dict(attack, task="mean", metric="delta", rel_change=delta),
            dict(attack, task="a", metric="delta", rel_change=delta),
            dict(attack, task="a", metric="miou", clean=0.5, adv=0.4, rel_change=-0.2),
            dict(common, kind="clean", attack_method="none", objective="none", eps=0.0, steps=0,
                 task="a", metric="miou", clean=0.5)]


def write(root: Path, trials: dict[str, tuple[int, str, float]],
          axis: dict[str, dict] | None = None) -> None:
    for trial, (seed, optimizer, delta) in trials.items():
        write_trial_table(root, "s", "measurements", trial, rows(seed, optimizer, delta),
                          (axis or {}).get(trial))
        write_trial_table(root, "s", "epochs", trial, [dict(
            attempt=0, layout="0+1|0,1", branch_point=1, adv_train="none", rho=0.0,
            optimizer=optimizer, seed=seed, epoch=2, lr=0.1, lr_decayed=False, kept=True,
            quantity="lambda_max", value=10.0 + seed)], (axis or {}).get(trial))
        write_trial_table(root, "s", "timings", trial, [dict(attempt=0, phase="train",
                                                             seconds=1.0)])


def test_queries_run_on_memory_not_on_the_files(tmp_path: Path) -> None:
    write(tmp_path, {f"t{i}": (i, "sgd", -0.1 * (i + 1)) for i in range(3)})
    tables = A.load_tables(tmp_path / "s")
    shutil.rmtree(tmp_path / "s")  # every query below would fail if it re-read a file
    frame = A.delta_by_objective(tables)
    assert frame["delta"].to_list() == pytest.approx([-0.2])
    assert A.early_stopping(tables)[0]["lambda_max"].to_list() == pytest.approx([11.0])
    assert A.timings(tables)["trials"].to_list() == [3]


def test_only_the_rows_the_analysis_uses_are_kept(tmp_path: Path) -> None:
    write(tmp_path, {"t0": (0, "sgd", -0.1)})
    m = A.load_tables(tmp_path / "s").measurements.collect()
    kept = set(m.select("kind", "task", "metric").rows())
    assert kept == {("whitebox", "mean", "delta"), ("clean", "a", "miou")}
    assert not set(T.UNREAD) & set(m.columns)


def test_every_varied_setting_is_part_of_the_regime(tmp_path: Path) -> None:
    trials = {"a0": (0, "sgd", -0.1), "a1": (1, "sgd", -0.3), "b0": (0, "adam", -0.5),
              "b1": (1, "adam", -0.7)}
    lrs = {"a0": 0.1, "a1": 0.1, "b0": 0.1, "b1": 0.01}
    write(tmp_path, trials, {t: {"training.lr": lr, "training.seed": trials[t][0]}
                             for t, lr in lrs.items()})
    tables = A.load_tables(tmp_path / "s")
    assert tables.settings == ("optimizer", "training.lr")  # a seed axis is a replicate
    frame = A.delta_by_objective(tables).sort("regime")
    assert frame.select("regime", "trials", "delta").rows() == [
        ("standard optimizer=adam training.lr=0.01", 1, pytest.approx(-0.7)),
        ("standard optimizer=adam training.lr=0.1", 1, pytest.approx(-0.5)),
        ("standard optimizer=sgd training.lr=0.1", 2, pytest.approx(-0.2))]
    assert set(A.early_stopping(tables)[0]["regime"]) == set(frame["regime"])


def test_intervals_over_trials_by_hand() -> None:
    per = pl.DataFrame({"g": ["three"] * 3 + ["two"] * 2 + ["one"],
                        "v": [1.0, 2.0, 3.0, 5.0, 9.0, 4.0]})
    out = A.across_trials(per, ["g"], ["v"]).sort("g")
    got = {row["g"]: row for row in out.iter_rows(named=True)}
    half = 4.303 * 1.0 / 3 ** 0.5  # t(0.975, df 2) x sd / sqrt(n)
    assert (got["three"]["v_lo"], got["three"]["v"], got["three"]["v_hi"]) == pytest.approx(
        (2.0 - half, 2.0, 2.0 + half))
    assert (got["two"]["v_lo"], got["two"]["v_hi"]) == (5.0, 9.0)  # min–max of two
    assert (got["one"]["v_lo"], got["one"]["v_hi"]) == (None, None)
    assert [got[g]["trials"] for g in ("one", "two", "three")] == [1, 2, 3]
    assert A.t95(1) == 12.706 and A.t95(30) == 2.042 and A.t95(120) == pytest.approx(1.98)


def test_a_second_analysis_reads_the_consolidated_copy(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {f"t{i}": (i, "sgd", -0.1 * (i + 1)) for i in range(3)})
    (tmp_path / "s" / "results" / "measurements" / "junk.parquet").write_bytes(b"not parquet")
    with pytest.warns(UserWarning, match="junk.parquet: not a parquet file"):
        cold = A.load_tables(tmp_path / "s")
    assert len(list((tmp_path / "s" / C.COPY_DIR).iterdir())) == 1

    def no_file_reads(*args: object, **kwargs: object) -> None:
        raise AssertionError("the per-trial files were read again")

    monkeypatch.setattr(T, "scan_results", no_file_reads)
    with pytest.warns(UserWarning, match="junk.parquet: not a parquet file"):
        warm = A.load_tables(tmp_path / "s")  # the skipped file is still named
    for name in ("measurements", "epochs", "timings"):
        assert getattr(warm, name).collect().equals(getattr(cold, name).collect())
    assert warm.skipped == cold.skipped and warm.settings == cold.settings


def test_a_new_or_rewritten_trial_file_is_read_not_the_old_copy(tmp_path: Path) -> None:
    write(tmp_path, {"t0": (0, "sgd", -0.1)})
    assert T.consolidate(tmp_path / "s")
    old = {p.name for p in (tmp_path / "s" / C.COPY_DIR).iterdir()}
    write(tmp_path, {"t0": (0, "sgd", -0.3), "t1": (1, "sgd", -0.5)})  # retried t0, new t1
    frame = A.delta_by_objective(A.load_tables(tmp_path / "s"))
    assert frame["delta"].to_list() == pytest.approx([-0.4]) and frame["trials"][0] == 2
    new = {p.name for p in (tmp_path / "s" / C.COPY_DIR).iterdir()}
    assert len(new) == 1 and new != old  # the older listing's copy is removed


def test_no_copy_outside_a_writable_local_sweep_directory(tmp_path: Path) -> None:
    write(tmp_path, {"t0": (0, "sgd", -0.1)})
    assert not T.consolidate(tmp_path)  # a storage root: one copy per sweep, not per root
    (tmp_path / "s" / C.COPY_DIR).write_text("in the way")  # the copy cannot be written
    assert not T.consolidate(tmp_path / "s")
    assert A.delta_by_objective(A.load_tables(tmp_path / "s"))["trials"].to_list() == [1]


def test_an_unreadable_copy_is_ignored(tmp_path: Path) -> None:
    write(tmp_path, {"t0": (0, "sgd", -0.1)})
    assert T.consolidate(tmp_path / "s")
    (copy,) = (tmp_path / "s" / C.COPY_DIR).iterdir()
    (copy / C.MANIFEST).write_text('{"skipped": []}')  # e.g. written by another version
    assert A.delta_by_objective(A.load_tables(tmp_path / "s"))["delta"].to_list() == [-0.1]


def test_the_copy_on_object_storage_is_written_in_place_manifest_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A URI sweep (s3://, gs://: no directory rename) gets its copy too: files straight into
    ``<key>/``, the manifest last; older listings' copies removed. pyarrow's in-memory mock
    filesystem stands in for the bucket."""
    import pyarrow.fs as pafs

    bucket = pafs._MockFileSystem()
    monkeypatch.setattr(C, "resolve", lambda uri: (bucket, uri.split("://", 1)[1]))
    sweep = "s3://bucket/runs/s"
    assert C.listing_key(sweep) is None  # no results/ yet: not a sweep directory
    bucket.create_dir("bucket/runs/s/results/measurements")
    with bucket.open_output_stream("bucket/runs/s/results/measurements/t0.parquet") as out:
        out.write(b"x" * 10)
    key = C.listing_key(sweep)
    copy = C.Copy({"measurements": pl.DataFrame({"trial_id": ["t0"], "delta": [-0.1]})},
                  (), ("training.lr",))
    assert not C.exists(sweep, key) and C.load(sweep, key) is None
    written = []
    real_write = C._write
    monkeypatch.setattr(C, "_write", lambda fs, where, c: (written.append(where),
                                                           real_write(fs, where, c)))
    assert C.save(sweep, key, copy) == f"bucket/runs/s/{C.COPY_DIR}/{key}"
    assert written == [f"bucket/runs/s/{C.COPY_DIR}/{key}"]  # in place, no temporary dir
    loaded = C.load(sweep, key)
    assert loaded is not None and loaded.frames["measurements"].equals(copy.frames["measurements"])
    assert loaded.axes == ("training.lr",) and C.exists(sweep, key)
    with bucket.open_output_stream("bucket/runs/s/results/measurements/t1.parquet") as out:
        out.write(b"y" * 10)  # a new trial file: a new key, the old copy is not read
    new_key = C.listing_key(sweep)
    assert new_key != key and C.load(sweep, new_key) is None
    assert C.save(sweep, new_key, copy)
    names = [i.base_name for i in bucket.get_file_info(
        pafs.FileSelector(f"bucket/runs/s/{C.COPY_DIR}"))]
    assert names == [new_key]


def test_an_interrupted_copy_leaves_nothing_half_written(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path, {"t0": (0, "sgd", -0.1)})
    real_write = C._write

    def interrupted(fs, where, copy):
        real_write(fs, where, copy)  # every file written, then Ctrl-C before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(C, "_write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        T.consolidate(tmp_path / "s")
    assert list((tmp_path / "s" / C.COPY_DIR).iterdir()) == []
    monkeypatch.setattr(C, "_write", real_write)
    assert T.consolidate(tmp_path / "s")  # the next run writes it


def test_a_file_with_damaged_data_behind_a_sound_footer_is_skipped_by_name(
        tmp_path: Path) -> None:
    """The footer pass cannot see a damaged data page; the row read finds it, reads the other
    files of its pass one by one and names the damaged one, instead of a traceback."""
    write(tmp_path, {f"t{i}": (i, "sgd", -0.1 * (i + 1)) for i in range(3)})
    damaged = tmp_path / "s" / "results" / "measurements" / "t1.parquet"
    data = bytearray(damaged.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    for i in range(4, len(data) - 8 - footer):  # every data byte; footer and magic intact
        data[i] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"t1\.parquet: damaged data: its rows cannot be read"):
        tables = A.load_tables(tmp_path / "s")
    assert [s.path for s in tables.skipped] == [str(damaged)]
    frame = A.delta_by_objective(tables)
    assert frame["trials"].to_list() == [2]  # t0 and t2
    assert frame["delta"].to_list() == pytest.approx([-0.2])


def test_infinite_and_absurd_values_are_read_as_missing_and_plots_still_draw(
        tmp_path: Path) -> None:
    """A file written elsewhere with ±inf or 1e308 (whose means overflow and whose axes would
    span the float range: matplotlib then allocates without bound) is analysed like NaN."""
    from orchestrator import analysis
    write(tmp_path, {"t0": (0, "sgd", -0.1), "t1": (1, "sgd", float("inf")),
                     "t2": (2, "sgd", -1e308), "t3": (3, "sgd", 1e99)})
    tables = A.load_tables(tmp_path / "s")
    values = tables.measurements.filter(pl.col("metric") == "delta").collect()
    assert sorted(values["rel_change"].drop_nulls().to_list()) == [-0.1, 1e99]  # mean Δ rows
    assert values["rel_change"].null_count() == 2  # inf and -1e308
    result = analysis.analyze(tmp_path / "s", tmp_path / "out")
    assert result.plots and all(p.stat().st_size > 0 for p in result.plots)
    assert "**2 Δ values were undefined or out of range" in result.report.read_text()
