"""Model store: config hashing, train-once under concurrent demand (fcntl lock per hash),
complete-or-absent entries, reuse, publishing trial checkpoints, attempt counting."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtl.config.build import build_split
from mtl.train import zoo
from orchestrator import store

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(seed: int = 0, epochs: int = 1) -> dict:
    """A model config as the store keys it (`RunConfig.model_key()`)."""
    from mtl.config.run import parse_run_config
    return parse_run_config({
        "dataset": {"name": "scenes", "size": 16, "train": 16, "seed": 0},
        "tasks": ["segment_semantic", "scene_class"],
        "model": {"layout": "0+1|0+1|0,1|0,1|0,1", "width": 4},
        "training": {"epochs": epochs, "batch_size": 8, "keep_epochs": [epochs], "seed": seed,
                     "lr": 0.01},
        "attacks": {"methods": ["fgsm"], "objectives": ["total"], "eps": [8]}}).model_key()


def tiny_model(entry, config: dict, epoch: int | None = None):
    """The stored model of ``config`` (heads sized by its training split)."""
    return zoo.load_model(entry, config, build_split(config["dataset"], "train"), epoch)


def test_config_hash_is_canonical():
    a = tiny_config()
    b = json.loads(json.dumps(a))
    b["train"] = dict(reversed(list(b["train"].items())))  # key order must not matter
    assert zoo.config_hash(a) == zoo.config_hash(b)
    assert len(zoo.config_hash(a)) == 16 and int(zoo.config_hash(a), 16) >= 0
    assert zoo.config_hash(a) != zoo.config_hash(tiny_config(seed=1))
    with pytest.raises(ValueError, match="JSON-able"):
        zoo.config_hash({"x": float("nan")})


def test_ensure_models_trains_once_and_reuses(tmp_path, monkeypatch):
    calls = []
    real = zoo.train_model

    def counting(config, out_dir, **kwargs):
        calls.append(zoo.config_hash(config))
        return real(config, out_dir, **kwargs)

    monkeypatch.setattr(zoo, "train_model", counting)
    configs = [tiny_config(0), tiny_config(1), tiny_config(0)]
    entries = zoo.ensure_models(configs, tmp_path)
    assert len(calls) == 2 and len(entries) == 2
    for key, path in entries.items():
        assert zoo.is_complete(path) and path.name == key
        assert json.loads((path / zoo.CONFIG).read_text())["train"]["seed"] in (0, 1)
        assert sorted(zoo.checkpoint_paths(path)) == [1]
    again = zoo.ensure_models(configs, tmp_path)
    assert again == entries and len(calls) == 2  # found, not retrained
    model = tiny_model(entries[zoo.config_hash(tiny_config(1))], tiny_config(1))
    assert not model.training and list(model.tasks) == ["segment_semantic", "scene_class"]
    out = model(torch.rand(2, 3, 16, 16))
    assert out["scene_class"].shape[0] == 2
    with pytest.raises(ValueError, match="epoch: 7 not kept"):
        tiny_model(entries[zoo.config_hash(tiny_config(1))], tiny_config(1), epoch=7)
    assert not list(tmp_path.glob("*.partial-*"))


def test_same_config_trains_identical_weights(tmp_path):
    a = zoo.ensure_models([tiny_config(3)], tmp_path / "a")
    b = zoo.ensure_models([tiny_config(3)], tmp_path / "b")
    wa = tiny_model(next(iter(a.values())), tiny_config(3)).state_dict()
    wb = tiny_model(next(iter(b.values())), tiny_config(3)).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


CONCURRENT = textwrap.dedent("""
    import sys, time, pathlib
    import mtl.train.zoo as zoo
    store, counter = sys.argv[1], pathlib.Path(sys.argv[2])

    def fake_train(config, out_dir, **kwargs):
        with open(counter, "a") as f:
            f.write("trained\\n")
        time.sleep(1.0)  # long enough for the other process to arrive and wait
        (pathlib.Path(out_dir) / "epoch_001.pt").write_bytes(b"weights")
        return {}

    zoo.train_model = fake_train
    entries = zoo.ensure_models([{"model": "shared", "train": {"seed": 0}}], store)
    print(next(iter(entries.values())))
""")


def test_two_processes_needing_one_model_train_it_once(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(CONCURRENT)
    counter = tmp_path / "counter"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / "store"),
                               str(counter)], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert counter.read_text().count("trained") == 1
    assert outs[0] == outs[1] and zoo.is_complete(outs[0])
    assert (Path(outs[0]) / "epoch_001.pt").read_bytes() == b"weights"


def test_a_crash_leaves_no_entry_and_the_next_call_retrains(tmp_path, monkeypatch):
    config = {"model": "x"}

    def crash(config, out_dir, **kwargs):
        (Path(out_dir) / "epoch_001.pt").write_bytes(b"half")
        raise RuntimeError("node died")

    monkeypatch.setattr(zoo, "train_model", crash)
    with pytest.raises(RuntimeError, match="node died"):
        zoo.ensure_models([config], tmp_path)
    assert zoo.find_model(config, tmp_path) is None
    assert not (tmp_path / zoo.config_hash(config)).exists()
    assert not list(tmp_path.glob("*.partial-*"))
    monkeypatch.setattr(zoo, "train_model",
                        lambda c, d, **k: (Path(d) / "epoch_001.pt").write_bytes(b"ok"))
    entry = zoo.ensure_models([config], tmp_path)[zoo.config_hash(config)]
    assert (entry / "epoch_001.pt").read_bytes() == b"ok"


def test_publish_offers_a_trials_checkpoints_once(tmp_path):
    src = tmp_path / "trial"
    src.mkdir()
    (src / "epoch_002.pt").write_bytes(b"a")
    (src / "epoch_002.json").write_text("{}")
    (src / "history.json").write_text("[]")
    (src / "train_state.pt").write_bytes(b"not a model file")
    config = {"model": "y"}
    assert store.find_surrogate(config, str(tmp_path / "models")) is None
    entry = store.publish_surrogate(config, str(src), str(tmp_path / "models"))
    assert sorted(p.name for p in entry.iterdir()) == [
        "COMPLETE", "config.json", "epoch_002.json", "epoch_002.pt", "history.json"]
    (src / "epoch_002.pt").write_bytes(b"b")
    store.publish_surrogate(config, str(src), str(tmp_path / "models"))  # already there
    assert (entry / "epoch_002.pt").read_bytes() == b"a"
    assert store.find_surrogate(config, str(tmp_path / "models")) == entry


def test_model_store_dir_needs_a_filesystem(tmp_path):
    assert store.model_store_dir(str(tmp_path)) == os.path.join(str(tmp_path), "models")
    assert store.model_store_dir(f"file://{tmp_path}") == os.path.join(str(tmp_path), "models")
    assert store.model_store_dir("s3://bucket/runs", str(tmp_path)) == str(tmp_path)
    with pytest.raises(ValueError, match="store.path"):
        store.model_store_dir("s3://bucket/runs")


def test_attempts_are_counted_per_trial(tmp_path):
    assert [store.next_attempt(str(tmp_path), "sw", "t1") for _ in range(3)] == [1, 2, 3]
    assert store.next_attempt(str(tmp_path), "sw", "t2") == 1


def test_a_trial_reuses_a_surrogate_an_earlier_sweep_trained(tmp_path, monkeypatch):
    """store.reuse_surrogates: same training config, different attacks -> no training, the
    earlier checkpoints and epoch records are reused."""
    import mtl.train
    from orchestrator.results import read_results
    from orchestrator.spec import parse_spec
    from orchestrator.trial import execute_trial, trial_configs

    def raw(eps: float) -> dict:
        return {"dataset": {"name": "scenes", "size": 16, "train": 16, "val": 8, "test": 8},
                "tasks": ["depth_zbuffer", "scene_class"], "model": {"width": 4},
                "layouts": [3], "training": {"epochs": 2, "keep_epochs": [1, 2],
                                             "batch_size": 8},
                "attacks": {"methods": ["fgsm"], "objectives": ["dgba"], "eps": [eps]},
                "store": {"reuse_surrogates": True}}

    storage, models = str(tmp_path), str(tmp_path / "models")
    first = trial_configs(parse_spec(raw(4), name="first"))[0]
    execute_trial(first, storage=storage, store_dir=models)
    assert store.find_surrogate(first["model_config"], models) is not None

    def no_training(*args, **kwargs):
        raise AssertionError("the surrogate should have come from the store")

    monkeypatch.setattr(mtl.train, "train", no_training)
    second = trial_configs(parse_spec(raw(8), name="second"))[0]
    assert second["model_config"] == first["model_config"]
    assert second["trial_id"] != first["trial_id"]
    execute_trial(second, storage=storage, store_dir=models)
    rows = read_results(tmp_path / "second").collect()
    assert set(rows["eps"].to_list()) == {0.0, 8.0} and set(rows["epoch"]) == {1, 2}
    epochs = [read_results(tmp_path / name, "epochs").collect().drop("trial_id", "attempt")
              .sort("epoch", "quantity") for name in ("first", "second")]
    assert epochs[0].drop("sweep").equals(epochs[1].drop("sweep"))


def test_real_dataset_splits(tmp_path):
    """NYUv2 (the .npy layout): train from train/, test from val/; too many samples -> error."""
    import numpy as np
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for modality, shape in (("image", (24, 32, 3)), ("label", (24, 32)),
                                ("depth", (24, 32)), ("normal", (24, 32, 3))):
            folder = tmp_path / split / modality
            folder.mkdir(parents=True)
            for i in range(n):
                array = rng.random(shape, dtype=np.float32)
                if modality == "label":
                    array = rng.integers(0, 13, shape).astype(np.float32)
                np.save(folder / f"{i}.npy", array)
    config = {"source": "nyuv2", "options": {"root": str(tmp_path), "size": 16},
              "tasks": ["segment_semantic", "depth_zbuffer"], "train": 3, "val": 2, "test": 2}
    train = build_split(config, "train")
    test = build_split(config, "test")
    assert (len(train), len(test)) == (3, 2) and train.task_channels["segment_semantic"] == 13
    assert train[0]["image"].shape == (3, 16, 16)
    with pytest.raises(ValueError, match="dataset.test: 3 samples .* has 2"):
        build_split(config, "test", 3)


def _store_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "mtl.train.zoo"]


def test_a_truncated_checkpoint_is_reported_once_and_rebuilt(tmp_path, monkeypatch, caplog):
    calls = []
    real = zoo.train_model
    monkeypatch.setattr(zoo, "train_model",
                        lambda c, d, **k: calls.append(d) or real(c, d, **k))
    config = tiny_config(5)
    entry = zoo.ensure_models([config], tmp_path)[zoo.config_hash(config)]
    manifest = json.loads((entry / zoo.COMPLETE).read_text())
    assert manifest["key"] == entry.name and sorted(manifest["files"]) == [
        "config.json", "epoch_001.json", "epoch_001.pt", "history.json"]
    pt = entry / "epoch_001.pt"
    assert manifest["files"]["epoch_001.pt"]["size"] == pt.stat().st_size
    data = pt.read_bytes()
    pt.write_bytes(data[: len(data) // 3])
    with caplog.at_level("WARNING", logger="mtl.train.zoo"):
        assert zoo.find_model(config, tmp_path) is None
        again = zoo.ensure_models([config], tmp_path)[zoo.config_hash(config)]
    (line,) = _store_warnings(caplog)  # one line, though the entry was checked three times
    assert "\n" not in line and str(entry) in line and "'epoch_001.pt'" in line
    assert "truncated" in line and "rebuilt" in line
    assert again == entry and len(calls) == 2 and zoo.is_complete(entry)
    assert pt.read_bytes() == data  # the same config retrains the same weights
    assert tiny_model(entry, config)(torch.rand(1, 3, 16, 16))["scene_class"].shape[0] == 1


def fake_entry(store_dir: Path, config: dict) -> Path:
    """An entry committed by ensure_models with a stand-in trainer (no torch training)."""
    def fake(config, out_dir, **kwargs):
        (Path(out_dir) / "epoch_001.pt").write_bytes(bytes(range(256)) * 4)
        (Path(out_dir) / "epoch_001.json").write_text('{"epoch": 1}')

    real, zoo.train_model = zoo.train_model, fake
    try:
        return zoo.ensure_models([config], store_dir)[zoo.config_hash(config)]
    finally:
        zoo.train_model = real


def test_a_flipped_byte_is_detected(tmp_path, caplog):
    config = {"model": "flip"}
    entry = fake_entry(tmp_path, config)
    pt = entry / "epoch_001.pt"
    before = pt.stat()
    data = bytearray(pt.read_bytes())
    data[100] ^= 0x01
    pt.write_bytes(bytes(data))
    os.utime(pt, ns=(before.st_atime_ns, before.st_mtime_ns))  # silent: same size and time
    zoo._digest.cache_clear()  # as a fresh process sees it (the verdict is cached per mtime)
    with caplog.at_level("WARNING", logger="mtl.train.zoo"):
        assert not zoo.is_complete(entry) and zoo.find_model(config, tmp_path) is None
    (line,) = _store_warnings(caplog)
    assert "'epoch_001.pt' does not match its sha256" in line and str(entry) in line
    with pytest.raises(ValueError, match=r"epoch_001.pt' does not match its sha256.*"
                       "ensure_models rebuilds it"):
        zoo.load_model(entry, config, None)
    data[100] ^= 0x01  # restored: trusted again
    pt.write_bytes(bytes(data))
    assert zoo.is_complete(entry)
    data[7] ^= 0x80  # a later write changes the mtime: seen without a new process
    pt.write_bytes(bytes(data))
    os.utime(pt, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    assert not zoo.is_complete(entry)


def test_entries_that_do_not_verify_are_rebuilt(tmp_path, caplog):
    """Each way an entry can stop matching its manifest is named, and ensure_models (or
    publish_model) replaces the entry instead of failing."""
    config = {"model": "planted"}
    breakages = [
        (lambda e: (e / "epoch_009.pt").write_bytes(b"x"),
         "holds 'epoch_009.pt', which COMPLETE does not list"),
        (lambda e: (e / "epoch_001.json").unlink(), "'epoch_001.json' is missing"),
        (lambda e: (e / zoo.COMPLETE).write_text(e.name + "\n"),
         "COMPLETE holds no checksums (written by an older mtlsweep"),
        (lambda e: (e / zoo.COMPLETE).write_text(json.dumps(
            {"format": 1, "key": e.name, "files": {"../x": {"size": 1, "sha256": "0" * 64}}})),
         r"malformed record for '../x'"),
        (lambda e: (e / zoo.COMPLETE).write_text(json.dumps(
            {"format": 1, "key": "0" * 16, "files": {}})), "not a format-1 manifest"),
    ]
    for breakage, words in breakages:
        caplog.clear()
        entry = fake_entry(tmp_path, config)
        assert zoo.is_complete(entry)
        breakage(entry)
        with caplog.at_level("WARNING", logger="mtl.train.zoo"):
            rebuilt = fake_entry(tmp_path, config)
        assert rebuilt == entry and zoo.is_complete(entry)
        assert any(words in line for line in _store_warnings(caplog)), (words, caplog.text)
    (entry / "epoch_001.pt").write_bytes(b"")
    src = tmp_path / "trial"
    src.mkdir()
    (src / "epoch_001.pt").write_bytes(b"trained elsewhere")
    (src / "epoch_001.json").write_text('{"epoch": 1}')
    assert zoo.publish_model(config, src, tmp_path) == entry  # the corrupt entry is replaced
    assert (entry / "epoch_001.pt").read_bytes() == b"trained elsewhere"
    assert zoo.is_complete(entry)
    assert not list(tmp_path.glob("*.partial-*"))


def test_stored_checkpoints_record_their_data_settings(tmp_path):
    from mtl.train.checkpoints import data_settings, read_meta
    config = tiny_config(0)
    entry = zoo.ensure_models([config], tmp_path)[zoo.config_hash(config)]
    data = data_settings(read_meta(entry / "epoch_001.pt"))
    assert data == config["dataset"] and data["options"]["size"] == 16
