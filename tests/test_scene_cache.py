"""Scene cache: reuse by prefix, one render under concurrency, damaged chunks, no unpickling."""
from __future__ import annotations

import fcntl
import multiprocessing
import os
import pickle
import threading
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.data import render as render_mod
from mtl.data import scenes
from mtl.data.scenes import SyntheticScenes, record_dtype, render_samples

SIZE = 16
PER_CHUNK = 8           # samples per chunk file in the tests that need several chunks


def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scenes, "CHUNK_BYTES", PER_CHUNK * scenes.bytes_per_sample(SIZE))


def _count_renders(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Scenes rendered per call of the renderer, recorded from now on."""
    real, counts = render_mod.render, []

    def counting(params, size, **kwargs):
        counts.append(params.batch)
        return real(params, size, **kwargs)

    monkeypatch.setattr(render_mod, "render", counting)
    return counts


def _records(ds: SyntheticScenes) -> np.ndarray:
    """The cached records of samples [0, len(ds)) (a copy)."""
    out = np.empty(len(ds), dtype=record_dtype(ds.size))
    for key in out.dtype.names:
        out[key] = np.concatenate([c[key] for c in ds._chunks])[:len(ds)]
    return out


def _fresh(split: str, n: int, seed: int = 0) -> np.ndarray:
    """Samples [0, n) rendered without a cache, as cache records."""
    stored = scenes._to_storage(render_samples(split, np.arange(n), seed=seed, size=SIZE))
    out = np.empty(n, dtype=record_dtype(SIZE))
    for key, arr in stored.items():
        out[key] = arr
    return out


def _chunk_files(ds: SyntheticScenes) -> list[Path]:
    return sorted(ds.cache_path.glob("chunk*.npy"))


@pytest.mark.parametrize("chunked", [False, True], ids=["one-chunk", "8-per-chunk"])
def test_longer_length_renders_only_the_new_samples(chunked: bool, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    if chunked:
        _small_chunks(monkeypatch)
    counts = _count_renders(monkeypatch)
    short = SyntheticScenes("train", size=SIZE, length=16, cache_dir=tmp_path)
    before = _records(short)
    assert sum(counts) == 16
    counts.clear()
    long = SyntheticScenes("train", size=SIZE, length=32, cache_dir=tmp_path)
    assert sum(counts) == 16                                    # samples 16..31 only
    assert long.cache_path == short.cache_path
    after = _records(long)
    assert np.array_equal(after[:16], before)                   # the prefix is untouched
    assert np.array_equal(after, _fresh("train", 32))           # and all is today's render
    assert np.array_equal(_records(short), before)              # a mapped old chunk lives on
    n_files = 32 // PER_CHUNK if chunked else 1
    assert len(_chunk_files(long)) == n_files                   # replaced prefixes are gone


def test_shorter_length_reads_a_prefix_without_rendering(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _small_chunks(monkeypatch)
    long = SyntheticScenes("val", size=SIZE, length=20, seed=3, cache_dir=tmp_path)
    assert np.array_equal(_records(long), _fresh("val", 20, seed=3))
    monkeypatch.setattr(render_mod, "render", lambda *a, **k: pytest.fail("rendered"))
    for n in (1, 8, 13, 20):
        short = SyntheticScenes("val", size=SIZE, length=n, seed=3, cache_dir=tmp_path,
                                tasks=["normal"])
        assert len(short) == n and short.cache_path == long.cache_path
        assert np.array_equal(_records(short), _records(long)[:n])


def test_cache_key_leaves_out_only_the_length_and_tasks(tmp_path: Path) -> None:
    base = SyntheticScenes("test", size=SIZE, length=2, cache_dir=tmp_path)
    same = SyntheticScenes("test", size=SIZE, length=3, cache_dir=tmp_path, tasks=["normal"])
    assert same.cache_key == base.cache_key and same.cache_path == base.cache_path
    others = [SyntheticScenes("val", size=SIZE, length=2, cache_dir=tmp_path),
              SyntheticScenes("test", size=SIZE + 1, length=2, cache_dir=tmp_path),
              SyntheticScenes("test", size=SIZE, length=2, seed=1, cache_dir=tmp_path)]
    assert len({o.cache_key for o in others} | {base.cache_key}) == 4


def _cold_start(cache: str, counter: str, barrier: Barrier,
                chunk_bytes: int) -> None:
    """One process opening a cold cache: records each render call's scene count in `counter`."""
    scenes.CHUNK_BYTES = chunk_bytes
    real = render_mod.render

    def counting(params, size, **kwargs):
        with open(counter, "a") as f:                           # O_APPEND: lines never mix
            f.write(f"{os.getpid()} {params.batch}\n")
        time.sleep(0.05)                                        # keep the two renders overlapping
        return real(params, size, **kwargs)

    render_mod.render = counting
    barrier.wait()
    ds = SyntheticScenes("train", size=SIZE, length=24, seed=5, cache_dir=cache)
    np.save(Path(counter).with_name(f"images-{os.getpid()}.npy"),
            np.stack([ds[i]["image"].numpy() for i in range(len(ds))]))


def test_two_processes_starting_cold_render_each_sample_once(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    counter = tmp_path / "renders.txt"
    chunk_bytes = PER_CHUNK * scenes.bytes_per_sample(SIZE)
    procs = [ctx.Process(target=_cold_start,
                         args=(str(tmp_path / "cache"), str(counter), barrier, chunk_bytes))
             for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0, 0]
    lines = [line.split() for line in counter.read_text().splitlines()]
    assert sum(int(n) for _, n in lines) == 24                  # each sample rendered once
    images = [np.load(f, allow_pickle=False) for f in sorted(tmp_path.glob("images-*.npy"))]
    assert len(images) == 2 and np.array_equal(images[0], images[1])
    assert not list((tmp_path / "cache").rglob(".tmp-*"))


def test_two_threads_starting_cold_render_each_sample_once(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    counts = _count_renders(monkeypatch)
    real = render_mod.render

    def slow(params, size, **kwargs):
        time.sleep(0.05)
        return real(params, size, **kwargs)

    monkeypatch.setattr(render_mod, "render", slow)
    barrier, out = threading.Barrier(2), []

    def start() -> None:
        barrier.wait()
        out.append(SyntheticScenes("val", size=SIZE, length=12, cache_dir=tmp_path))

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(out) == 2 and sum(counts) == 12
    assert np.array_equal(_records(out[0]), _records(out[1]))


def _damage(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated":
        path.write_bytes(raw[:len(raw) // 2])
    elif how == "flipped-byte":
        pos = len(raw) - 100                                    # inside the data, not the header
        path.write_bytes(raw[:pos] + bytes([raw[pos] ^ 0xFF]) + raw[pos + 1:])
    elif how == "longer":
        path.write_bytes(raw + b"\0" * 16)
    elif how == "other-dtype":
        np.save(path, np.zeros(PER_CHUNK, dtype=np.float64), allow_pickle=False)
    else:
        path.write_bytes(b"not an npy file at all")


@pytest.mark.parametrize("how", ["truncated", "flipped-byte", "longer", "other-dtype", "garbage"])
def test_damaged_chunk_is_detected_and_rendered_again(how: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    _small_chunks(monkeypatch)
    first = SyntheticScenes("test", size=SIZE, length=20, cache_dir=tmp_path)
    ref = _records(first)
    files = _chunk_files(first)
    assert len(files) == 3
    _damage(files[1], how)
    (first.cache_path / ".tmp-123-dead.npy").write_bytes(b"left by a killed writer")
    counts = _count_renders(monkeypatch)
    again = SyntheticScenes("test", size=SIZE, length=20, cache_dir=tmp_path)
    assert sum(counts) == PER_CHUNK                             # that chunk only
    assert np.array_equal(_records(again), ref)
    assert len(_chunk_files(again)) == 3
    assert not list(again.cache_path.glob(".tmp-*"))
    counts.clear()
    SyntheticScenes("test", size=SIZE, length=20, cache_dir=tmp_path)
    assert counts == []


class _Planted:
    """An object whose unpickling would create the directory `marker`."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_nothing_read_from_the_cache_is_unpickled(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _small_chunks(monkeypatch)
    first = SyntheticScenes("val", size=SIZE, length=10, cache_dir=tmp_path)
    ref = _records(first)
    marker = tmp_path / "unpickled"
    planted = _chunk_files(first)[0]
    planted.unlink()
    with open(planted, "wb") as f:                             # same name: count and crc match
        np.save(f, np.array([_Planted(str(marker))] * PER_CHUNK, dtype=object),
                allow_pickle=True)

    def refuse(*args, **kwargs):
        raise AssertionError("the scene cache unpickled something")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    again = SyntheticScenes("val", size=SIZE, length=10, cache_dir=tmp_path)
    assert not marker.exists()
    assert np.array_equal(_records(again), ref)


def test_a_complete_cache_is_read_without_the_lock(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    first = SyntheticScenes("train", size=SIZE, length=6, cache_dir=tmp_path)

    def no_lock(*args, **kwargs):
        raise AssertionError("took the lock to read a complete cache")

    monkeypatch.setattr(fcntl, "flock", no_lock)
    again = SyntheticScenes("train", size=SIZE, length=4, cache_dir=tmp_path)
    assert np.array_equal(_records(again), _records(first)[:4])
    with pytest.raises(AssertionError, match="took the lock"):
        SyntheticScenes("train", size=SIZE, length=7, cache_dir=tmp_path)   # must render


def test_cache_is_reused_and_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = SyntheticScenes("test", size=32, length=5, cache_dir=tmp_path)
    assert (first.cache_path / "meta.json").exists()
    assert [p.name for p in first.cache_path.parent.iterdir()] == [first.cache_path.name]

    def no_render(*args, **kwargs):
        raise AssertionError("rendered although the cache holds this split")

    monkeypatch.setattr(render_mod, "render", no_render)
    second = SyntheticScenes("test", size=32, length=5, cache_dir=tmp_path,
                             tasks=["depth_zbuffer"])
    assert second.cache_path == first.cache_path
    for i in range(5):
        assert torch.equal(first[i]["depth_zbuffer"], second[i]["depth_zbuffer"])
        assert torch.equal(first[i]["image"], second[i]["image"])
    with pytest.raises(AssertionError, match="rendered although"):
        SyntheticScenes("test", size=32, length=5, seed=1, cache_dir=tmp_path)   # other key
    with pytest.raises(AssertionError, match="rendered although"):
        SyntheticScenes("test", size=32, length=6, cache_dir=tmp_path)   # sample 5 is new


def test_shorter_length_reuses_a_longer_cached_render(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    long = SyntheticScenes("val", size=16, length=7, cache_dir=tmp_path)
    monkeypatch.setattr(render_mod, "render", lambda *a, **k: pytest.fail("rendered"))
    short = SyntheticScenes("val", size=16, length=4, cache_dir=tmp_path)
    assert len(short) == 4 and short.cache_path == long.cache_path
    assert torch.equal(short[3]["keypoints2d"], long[3]["keypoints2d"])
    with pytest.raises(IndexError):
        short[4]


def test_crashed_render_leaves_no_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = render_mod.render
    calls = []

    def crash(*args, **kwargs):
        calls.append(1)
        raise KeyboardInterrupt("killed mid-render")

    monkeypatch.setattr(render_mod, "render", crash)
    with pytest.raises(KeyboardInterrupt):
        SyntheticScenes("val", size=16, length=4, cache_dir=tmp_path)
    (key_dir,) = (tmp_path / "scenes").iterdir()
    assert calls and {p.name for p in key_dir.iterdir()} <= {".lock", "meta.json"}   # no data
    monkeypatch.setattr(render_mod, "render", real)
    ds = SyntheticScenes("val", size=16, length=4, cache_dir=tmp_path)
    assert ds.cache_path == key_dir and len(list(key_dir.glob("chunk*.npy"))) == 1
    assert torch.equal(ds[2]["image"], torch.floor(render_samples("val", [2], size=16)["image"][0]
                                                   * 255 + 0.5) / 255)


def test_cache_dir_that_is_a_file_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="cache_dir"):
        SyntheticScenes("val", size=16, length=2, cache_dir=tmp_path / "file")
