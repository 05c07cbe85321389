"""Checkpoint files are data, not trusted: truncated, foreign or crafted `.pt` files and
sidecars each give one CheckpointError naming the file (never a raw traceback, never a
payload run), and the built-in network is sized from the weights, not the JSON."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from mtl.models import Layout, build_model
from mtl.train.checkpoints import (CheckpointError, data_settings, load_checkpoint, read_meta,
                                   save_checkpoint, update_meta)

TASKS = ["segment_semantic", "scene_class"]
CHANNELS = {"segment_semantic": 5, "scene_class": 3}


def small_model(width: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(Layout.branch_point(1, 2), TASKS, CHANNELS, width=width)


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A good checkpoint of the built-in network (epoch 1) in tmp_path."""
    return save_checkpoint(small_model(), tmp_path, 1, {"lr": 0.1})


def test_a_good_checkpoint_loads(saved: Path) -> None:
    model, meta = load_checkpoint(saved)
    assert meta["epoch"] == 1 and meta["lr"] == 0.1 and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 small_model().state_dict().values()))


def test_truncated_weights_are_named(saved: Path) -> None:
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{saved.name} is truncated or corrupt"):
        load_checkpoint(saved)
    with pytest.raises(CheckpointError, match=rf"{saved.name} is truncated or corrupt"):
        load_checkpoint(saved, model=small_model())
    saved.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{saved.name} is empty"):
        load_checkpoint(saved)


def test_a_file_that_is_not_torch_is_named(saved: Path) -> None:
    saved.write_text("hello, I am a text file\n")
    with pytest.raises(CheckpointError, match=rf"{saved.name} is not a torch file"):
        load_checkpoint(saved)


def test_a_pickle_payload_is_refused_and_never_runs(saved: Path, tmp_path: Path) -> None:
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    saved.write_bytes(pickle.dumps({"w": Payload()}, protocol=2))
    with pytest.raises(CheckpointError, match=rf"{saved.name} is truncated or corrupt"):
        load_checkpoint(saved)
    torch.save({"w": Payload()}, saved)  # the zip format with the same payload inside
    with pytest.raises(CheckpointError, match=rf"{saved.name} .*weights_only=True"):
        load_checkpoint(saved)
    assert not marker.exists()


@pytest.mark.parametrize("content, words", [
    ([torch.zeros(2)], "holds a list, expected a state_dict"),
    ({"w": 3}, r"not a state_dict of tensors: entry 'w' is a int"),
    ({"w": torch.zeros(1), "lr": "x"}, r"entry 'lr' is a str"),
    ({}, "empty state_dict"),
])
def test_torch_files_that_are_not_state_dicts_are_named(saved: Path, content, words) -> None:
    torch.save(content, saved)
    with pytest.raises(CheckpointError, match=rf"{saved.name} .*{words}"):
        load_checkpoint(saved, model=small_model())


@pytest.mark.parametrize("text, words", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "must hold a JSON object .* got a JSON list"),
    ('"epoch"', "got a JSON str"),
    ('{"epoch": -1}', "epoch: must be an int >= 0, got -1"),
    ('{"epoch": 1, "model": [4]}', "model: must be a JSON object"),
    ('{"epoch": 1, "data": "scenes"}', "data: must be a JSON object"),
    ("[" * 100_000 + "]" * 100_000, "is not valid JSON"),
])
def test_bad_sidecars_are_named(saved: Path, text: str, words: str) -> None:
    sidecar = saved.with_suffix(".json")
    sidecar.write_text(text)
    for call in (lambda: read_meta(saved), lambda: load_checkpoint(saved)):
        with pytest.raises(CheckpointError, match=rf"{sidecar.name} .*{words}"):
            call()


def test_an_oversized_sidecar_is_refused_unread(saved: Path, monkeypatch) -> None:
    import mtl.train.checkpoints as checkpoints
    monkeypatch.setattr(checkpoints, "MAX_SIDECAR_BYTES", 64)
    saved.with_suffix(".json").write_text(json.dumps({"epoch": 1, "pad": "x" * 100}))
    with pytest.raises(CheckpointError, match=r"epoch_001.json is \d+ bytes; .* at most 64"):
        read_meta(saved)


def test_keys_and_shapes_that_do_not_fit_list_the_first_few(saved: Path) -> None:
    with pytest.raises(CheckpointError, match=r"epoch_001.pt does not fit the model: "
                       r"\d+ missing key\(s\) \['0.weight'.*unexpected key\(s\) \['backbone"):
        load_checkpoint(saved, model=torch.nn.Sequential(torch.nn.Linear(2, 2)))
    with pytest.raises(CheckpointError, match=r"first shape mismatch backbone\.b0_.*"
                       r"checkpoint \(4, 3, 3, 3\) vs model \(8, 3, 3, 3\)"):
        load_checkpoint(saved, model=small_model(width=8))
    state = torch.load(saved, weights_only=True)
    last = list(state)[-1]
    del state[last]
    torch.save(state, saved)
    with pytest.raises(CheckpointError, match=rf"1 missing key\(s\) \['{last}'\]"):
        load_checkpoint(saved)  # the sidecar's network has one tensor the file lacks


def test_sidecar_sizes_that_disagree_with_the_weights_are_refused(saved: Path) -> None:
    sidecar = saved.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    cases = [({"width": 100000}, r"width=100000.*does not match its weights"),
             ({"stage_depth": 10**9}, r"stage_depth=1000000000.*does not match its weights"),
             ({"tasks": [f"t{i}" for i in range(10_000)]}, r"names 10000 tasks but its "
                                                            r"weights hold \d+ tensors"),
             ({"out_channels": {"segment_semantic": 10**7, "scene_class": 3}},
              r"first shape mismatch heads\.segment_semantic"),
             ({"layout": "nonsense"}, "not a built-in network config")]
    for change, words in cases:  # each would need gigabytes if built before the check
        sidecar.write_text(json.dumps({**meta, "model": {**meta["model"], **change}}))
        with pytest.raises(CheckpointError, match=rf"{sidecar.name} .*{words}"):
            load_checkpoint(saved)


def test_update_meta_records_the_data_settings(saved: Path) -> None:
    data = {"source": "scenes", "options": {"size": 16, "seed": 3}, "tasks": TASKS,
            "train": 32}
    meta = update_meta(saved, {"data": data})
    assert read_meta(saved) == meta and meta["lr"] == 0.1 and meta["epoch"] == 1
    assert data_settings(read_meta(saved)) == data
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(".")]  # no temp left
    with pytest.raises(ValueError, match="entries: the epoch"):
        update_meta(saved, {"epoch": 7})
    with pytest.raises(TypeError):  # not JSON-able: nothing is written
        update_meta(saved, {"data": {"source": object()}})
    assert data_settings(read_meta(saved)) == data


@pytest.mark.parametrize("data, words", [
    ({"options": {}}, "data.source: must be a dataset name, got None"),
    ({"source": "", "options": {}}, "data.source: must be a dataset name"),
    ({"source": "scenes", "options": [16]}, r"data.options: must be a JSON object, got \[16\]"),
])
def test_bad_data_settings_are_named(data: dict, words: str) -> None:
    with pytest.raises(CheckpointError, match=rf"epoch_009.json {words}"):
        data_settings({"data": data}, "epoch_009.json")
    assert data_settings({"epoch": 9}) is None
