"""Every bad sweep input is refused before Ray starts (issue 10, part 4): one line naming the
YAML path and the allowed values, from `parse_spec`/`load_spec` and, end to end, from
`mtlsweep run` (exit 2, nothing written, Ray never initialised). Each case below was accepted
before (or failed late, or hung) and is now refused up front."""
from __future__ import annotations

import copy
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import yaml

from mtl.config.limits import DEFAULT_MAX_TRIALS, MAX_FAILURES, MAX_STEPS
from mtl.config.names import MAX_NAME_BYTES, name_problem
from mtl.config.reading import SHOWN_CHARS, ConfigError, brief
from mtl.config.yaml_io import MAX_BYTES, MAX_DEPTH, MAX_VALUES, load_yaml
from mtl.data import register_dataset
from mtl.data.scenes import SIZE_RANGE, SyntheticScenes, max_length
from orchestrator.cli import main
from orchestrator.spec import SpecError, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[1]
DEMO = load_yaml(ROOT / "sweeps" / "demo.yaml")
SIX_TASKS = ["segment_semantic", "depth_zbuffer", "normal", "edge_texture", "keypoints2d",
             "scene_class"]


def demo(tmp_path: Path, **changes) -> dict:
    """sweeps/demo.yaml with its storage under tmp_path and ``changes`` (dotted keys) made;
    a value of None removes the key."""
    raw = copy.deepcopy(DEMO)
    raw["storage"] = str(tmp_path / "runs")
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


def refused(raw: dict, where: str, *words: str, **kwargs) -> str:
    """The one-line SpecError of ``raw``: it starts with ``where:`` and holds ``words``."""
    with pytest.raises(SpecError) as info:
        parse_spec(raw, name="t", **kwargs)
    message = str(info.value)
    assert message.startswith(where + ":"), message
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


# --- 1. YAML: duplicate keys, alias bombs, deep nesting, size --------------------------------
def _alias_bomb(levels: int = 9) -> str:
    names = "abcdefghijklmnop"[:levels]
    text = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for prev, name in zip(names, names[1:]):
        text += f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]\n"
    return text


@pytest.mark.parametrize("text,where", [
    ("name: a\nstorage: x\nname: b\n", "name"),
    ("training:\n  epochs: 2\n  lr: 0.1\n  lr: 0.2\n", "training.lr"),
    ("attacks:\n  eps: [4, 8]\n  options: {random_start: true, random_start: false}\n",
     "attacks.options.random_start"),
    ("transfer:\n  targets:\n    - {layout: 2, seed: 1, seed: 2}\n", "transfer.targets[0].seed"),
])
def test_duplicate_keys_are_refused_naming_their_path(text, where):
    with pytest.raises(ConfigError) as info:
        load_yaml(text)
    assert str(info.value).startswith(where + ": duplicate key"), str(info.value)


def test_merge_keys_may_override_what_they_merge():
    assert load_yaml("base: &b {x: 1, y: 2}\nuse: {<<: *b, x: 3}\n")["use"] == {"x": 3, "y": 2}


def test_an_alias_bomb_is_refused_without_building_it(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb(9))
    assert path.stat().st_size < 1024
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError) as info:
            load_spec(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert f"expands to more than {MAX_VALUES} values" in str(info.value)
    assert peak < 20 * 2**20  # 9**9 = 387 million values were never made


def test_an_alias_that_contains_itself_is_refused():
    with pytest.raises(ConfigError, match="contains it"):
        load_yaml("a: &a [1, *a]\n")


@pytest.mark.parametrize("text", [
    "x: " + "[" * 5000 + "]" * 5000 + "\n",
    "".join("  " * i + f"k{i}:\n" for i in range(MAX_DEPTH + 5)) + "  " * (MAX_DEPTH + 5) + "1\n",
    "a0: &a0 [1]\n" + "".join(f"a{i}: &a{i} [*a{i - 1}]\n" for i in range(1, 2 * MAX_DEPTH)),
])
def test_deep_nesting_is_refused_cleanly(text):
    with pytest.raises(ConfigError, match=f"nested deeper than {MAX_DEPTH} levels"):
        load_yaml(text)


def test_too_many_values_and_too_large_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=f"more than {MAX_VALUES} values"):
        load_yaml("x: [" + ",".join(["1"] * (MAX_VALUES + 10)) + "]\n")
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ConfigError) as info:
        load_spec(big)
    assert str(info.value).startswith(f"{big}: the file has") and "1 MiB" in str(info.value)


@pytest.mark.parametrize("text,words", [
    ("b: !!binary aGVsbG8=\n", "!!binary is not allowed"),
    ("s: !!set {a, b}\n", "!!set is not allowed"),
    ("p: !!python/object/apply:os.system ['true']\n", "could not determine a constructor"),
    ("n: " + "9" * 5000 + "\n", "an integer of 5000 digits"),
    ("a: [1, 2\nb: 3\n", "not valid YAML"),
])
def test_values_json_cannot_hold_and_bad_syntax_are_one_line_errors(text, words):
    with pytest.raises(ConfigError) as info:
        load_yaml(text)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_dates_stay_strings():
    assert load_yaml("d: 2024-01-01\n") == {"d": "2024-01-01"}


# --- 2. messages never embed a huge value ---------------------------------------------------
def test_messages_show_at_most_80_characters_of_a_value(tmp_path):
    huge = list(range(10_000))
    message = refused(demo(tmp_path, **{"training.lr": huge}), "training.lr", "...")
    assert len(message) < 3 * SHOWN_CHARS
    assert brief("x" * 1000).endswith("...") and len(brief("x" * 1000)) == SHOWN_CHARS
    assert brief({"a": 1}) == "{'a': 1}"


# --- 3. names ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,words", [
    ("café", "outside the allowed"), ("a" * (MAX_NAME_BYTES + 1), "101 bytes"),
    ("x.tmp-y", "temporary-file marker"), (".hidden", "starts with . or -"),
    ("-rf", "starts with . or -"), ("a/b", "outside the allowed"), ("", "non-empty"),
])
def test_bad_sweep_names_are_refused(tmp_path, name, words):
    refused(demo(tmp_path, name=name), "name", words, "ASCII letters")


def test_a_bad_file_stem_says_how_to_name_the_sweep(tmp_path):
    path = tmp_path / "sweep é.yaml"
    path.write_text(yaml.safe_dump(demo(tmp_path)))
    with pytest.raises(SpecError, match="set name: or --name"):
        load_spec(path)


def test_every_name_the_spec_accepts_the_results_writer_accepts():
    from orchestrator.results_schema import check_name
    for name in ["demo", "a.b=c+d-e_f", "A" * MAX_NAME_BYTES, "x.tmp", "9lives", "a..b"]:
        assert name_problem(name) is None
        assert check_name("sweep", name) == name


# --- 4. integers past int64, split sizes past what the dataset renders ----------------------
@pytest.mark.parametrize("changes,where,words", [
    ({"training.seeds": None, "training.seed": 2**63}, "training.seed", "0..9223372036854775807"),
    ({"training.seeds": [0, 2**63]}, "training.seeds[1]", "0..9223372036854775807"),
    ({"training.seed": 3}, "training.seed", "not both"),
    ({"dataset.seed": 2**63}, "dataset.seed", "0..9223372036854775807"),
    ({"dataset.seed": -1}, "dataset.seed", "out of range"),
    ({"dataset.train": 10**15}, "dataset.train", f"allowed: 1..{max_length(16)} at size 16"),
    ({"dataset.size": 1024, "dataset.test": 2000, "attacks.eval_samples": 2000},
     "dataset.test", f"allowed: 1..{max_length(1024)} at size 1024"),
    ({"attacks.eval_samples": 10**12}, "attacks.eval_samples", "out of range"),
    ({"attacks.eval_samples": 33}, "attacks.eval_samples", "(dataset.test); allowed: 1..32"),
])
def test_integers_past_what_torch_and_the_dataset_take_are_refused(tmp_path, changes, where,
                                                                    words):
    refused(demo(tmp_path, **changes), where, words)


def test_the_spec_and_the_scenes_factory_share_one_size_rule(tmp_path):
    low, high = SIZE_RANGE
    refused(demo(tmp_path, **{"dataset.size": high + 1}), "dataset.size", f"{low}..{high}")
    with pytest.raises(ValueError, match=f"in \\[{low}, {high}\\]"):
        SyntheticScenes("train", size=high + 1, length=1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=f"length: must be in \\[1, {max_length(high)}\\]"):
        SyntheticScenes("train", size=high, length=max_length(high) + 1, cache_dir=tmp_path)
    spec = parse_spec(demo(tmp_path, **{"dataset.size": 600}), name="t")
    assert spec.dataset["options"]["size"] == 600


def test_eval_samples_defaults_to_the_test_split_when_smaller(tmp_path):
    spec = parse_spec(demo(tmp_path, **{"attacks.eval_samples": None}), name="t")
    assert spec.attacks["eval_samples"] == 32


# --- 5. datasets on disk: root, provided tasks, samples --------------------------------------
def _nyuv2(root: Path, counts: dict[str, int]) -> Path:
    for split, n in counts.items():
        for folder in ("image", "label", "depth", "normal"):
            (root / split / folder).mkdir(parents=True)
            for i in range(n):
                np.save(root / split / folder / f"{i}.npy", np.zeros(1))
    return root


def nyu(tmp_path: Path, root: Path, **changes) -> dict:
    return demo(tmp_path, **{"dataset": {"name": "nyuv2", "root": str(root), "train": 4,
                                         "val": 2, "test": 2},
                             "tasks": ["segment_semantic", "depth_zbuffer"],
                             "attacks.eval_samples": 2, **changes})


def test_nyuv2_with_a_missing_root_is_refused(tmp_path):
    refused(nyu(tmp_path, tmp_path / "nope"), "dataset.root", "not an existing directory")


def test_a_task_the_dataset_does_not_provide_is_refused(tmp_path):
    root = _nyuv2(tmp_path / "nyu", {"train": 4, "val": 2})
    raw = nyu(tmp_path, root, tasks=["segment_semantic", "scene_class"])
    refused(raw, "tasks[1]", "'nyuv2' does not provide task 'scene_class'", "depth_zbuffer")
    assert parse_spec(nyu(tmp_path, root), name="t").dataset["source"] == "nyuv2"


def test_nyuv2_split_sizes_match_the_files_on_disk(tmp_path):
    root = _nyuv2(tmp_path / "nyu", {"train": 4, "val": 2})
    refused(nyu(tmp_path, root, **{"dataset.train": 5}), "dataset.train",
            "has 4", "allowed: 1..4")
    (root / "val" / "depth").rename(root / "val" / "depth_gone")
    refused(nyu(tmp_path, root), "dataset.root", "depth")


def test_taskonomy_needs_a_folder_per_task(tmp_path):
    (tmp_path / "tk" / "rgb").mkdir(parents=True)
    (tmp_path / "tk" / "segment_semantic").mkdir()
    raw = demo(tmp_path, **{"dataset": {"name": "taskonomy", "root": str(tmp_path / "tk")},
                            "tasks": ["segment_semantic", "normal"]})
    refused(raw, "dataset.root", "normal")


def test_a_user_dataset_declares_its_tasks_through_the_same_door(tmp_path):
    register_dataset("only_seg", lambda split, length=8: [], tasks=("segment_semantic",))
    raw = demo(tmp_path, **{"dataset": {"name": "only_seg"}, "tasks": ["depth_zbuffer"],
                            "layouts": None})
    refused(raw, "tasks[0]", "'only_seg' does not provide task 'depth_zbuffer'")


# --- 6. storage ----------------------------------------------------------------------------
def test_storage_that_is_a_file_or_an_unknown_scheme_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    refused(demo(tmp_path, storage=str(tmp_path / "f")), "storage", "is a file")
    refused(demo(tmp_path, storage=str(tmp_path / "f" / "deeper")), "storage", "is a file")
    refused(demo(tmp_path, storage="foo://x"), "storage", "'foo'", "s3://", "gs://", "abfs://")
    refused(demo(tmp_path, storage=f"file://{tmp_path / 'f'}"), "storage", "is a file")
    refused(demo(tmp_path), "storage (--storage)", "'foo'", storage="foo://x")
    assert parse_spec(demo(tmp_path, storage="s3://bucket/runs"), name="t").storage


def test_a_sweep_directory_taken_by_a_file_is_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "t").write_text("")
    refused(demo(tmp_path), "name", "is a file")


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="root ignores directory permissions, so nothing is read-only")
def test_storage_under_a_read_only_directory_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        refused(demo(tmp_path, storage=str(locked / "runs")), "storage", "not writable")
    finally:
        locked.chmod(0o755)


def test_storage_where_this_user_may_not_write_is_refused(tmp_path, monkeypatch):
    """The same check as above for any user: what os.access says is what is reported."""
    import mtl.config.locations as locations
    monkeypatch.setattr(locations.os, "access", lambda path, mode: False)
    refused(demo(tmp_path, storage=str(tmp_path / "runs")), "storage", "not writable",
            "allowed: a writable directory")
    refused(demo(tmp_path, storage="s3://bucket/runs", store={"path": str(tmp_path / "m")}),
            "store.path", "not writable")


# --- 7.-9. retries, attack steps, the same attack twice -----------------------------------
@pytest.mark.parametrize("changes,where,words", [
    ({"max_failures": -1}, "max_failures", f"allowed: 0..{MAX_FAILURES}"),
    ({"max_failures": MAX_FAILURES + 1}, "max_failures", f"allowed: 0..{MAX_FAILURES}"),
    ({"max_concurrent": -1}, "max_concurrent", "out of range"),
    ({"cross_task": {"method": "pgd", "steps": 10**9}}, "cross_task.steps",
     f"allowed: 1..{MAX_STEPS}"),
    ({"cross_task": {"method": "fgsm", "steps": 10**9}}, "cross_task.steps",
     "fgsm takes exactly 1 step"),
    ({"adv_train": [{"objective": "dgba", "method": "pgd", "eps": 4, "steps": 10**9}]},
     "adv_train[0].steps", f"allowed: 1..{MAX_STEPS}"),
    ({"attacks.steps": MAX_STEPS + 1}, "attacks.steps", f"allowed: 1..{MAX_STEPS}"),
    ({"attacks.methods": ["pgd", "ifgsm"]}, "attacks.methods[1]",
     "'ifgsm' is the same attack as 'pgd' (attacks.methods[0])"),
])
def test_retries_steps_and_aliases(tmp_path, changes, where, words):
    refused(demo(tmp_path, **changes), where, words)


# --- 10. the number of trials -------------------------------------------------------------
def test_layouts_all_with_six_tasks_is_refused_without_listing_them(tmp_path):
    message = refused(demo(tmp_path, tasks=SIX_TASKS, layouts="all"), "layouts",
                      "120196 layouts", f"max_trials = {DEFAULT_MAX_TRIALS}",
                      "top-level key max_trials")
    assert "6 tasks" in message


def test_a_grid_over_the_cap_gives_the_count_per_axis(tmp_path):
    raw = demo(tmp_path, **{"training.seeds": list(range(2000))})
    refused(raw, "training.seeds", "the sweep has 24000 trials",
            "layouts 2 x adv_train 2 x training.rho 3 x training.seeds 2000", "max_trials")
    search = {"mode": "random", "num_samples": 10**6, "metric": "train_loss",
              "space": {"training.lr": {"loguniform": [0.001, 0.01]}}}
    refused(demo(tmp_path, search=search), "search.num_samples", "x search.num_samples 1000000")


def test_max_trials_raises_the_cap(tmp_path):
    raw = demo(tmp_path, **{"training.seeds": list(range(900)), "max_trials": 20_000})
    assert parse_spec(raw, name="t").num_grid_trials() == 2 * 2 * 3 * 900
    refused(demo(tmp_path, max_trials=0), "max_trials", "out of range")


# --- 11. the model store's path -----------------------------------------------------------
def test_a_store_path_that_is_empty_or_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    refused(demo(tmp_path, store={"path": ""}), "store.path", "non-empty")
    refused(demo(tmp_path, store={"path": str(tmp_path / "f")}), "store.path", "is a file")


# --- 12. hostile values for the other keys ------------------------------------------------
@pytest.mark.parametrize("changes,where", [
    ({"training.epochs": True}, "training.epochs"),
    ({"training.lr": float("nan")}, "training.lr"),
    ({"training.lr": 10**400}, "training.lr"),
    ({"attacks.eps": [float("inf")]}, "attacks.eps[0]"),
    ({"attacks.eps": [-4]}, "attacks.eps[0]"),
    ({"attacks.eps": []}, "attacks.eps"),
    ({"attacks.eps": list(range(1, 255))}, "attacks"),
    ({"training.rho": []}, "training.rho"),
    ({"adv_train": []}, "adv_train"),
    ({"layouts": []}, "layouts"),
    ({"dataset.cache_dir": "/dev/null"}, "dataset.cache_dir"),
    ({"dataset.size": 16.0}, "dataset.size"),
    ({"resources": {"cpu": float("nan")}}, "resources.cpu"),
    ({"model.layout": 2}, "model.layout"),
    ({"attacks.options": {"random_start": list(range(5000))}}, "attacks"),
    ({"search": {"mode": "random", "metric": "train_loss",
                 "space": {"training.lr": {"choice": [0.1 + i for i in range(2000)]}}}},
     "search.space.training.lr.choice"),
])
def test_hostile_values_are_refused(tmp_path, changes, where):
    assert len(refused(demo(tmp_path, **changes), where)) <= 6 * SHOWN_CHARS


# --- end to end: `mtlsweep run` ------------------------------------------------------------
@pytest.mark.parametrize("write,args,where,words", [
    (lambda p, t: p.write_text(_alias_bomb(9)), [], "", "expands to more than"),
    (lambda p, t: p.write_text(yaml.safe_dump(demo(t)) + "name: x\nname: y\n"), [], "name:",
     "duplicate key"),
    (lambda p, t: p.write_text(yaml.safe_dump(demo(t, name="café"))), ["--dry-run"], "name:",
     "ASCII letters"),
    (lambda p, t: p.write_text(yaml.safe_dump(demo(t))), ["--storage", "foo://x"],
     "storage (--storage):", "pyarrow cannot open"),
    (lambda p, t: p.write_text(yaml.safe_dump(demo(t, tasks=SIX_TASKS, layouts="all"))), [],
     "layouts:", "120196 layouts"),
])
def test_mtlsweep_run_refuses_in_one_line_before_ray(tmp_path, capsys, write, args, where,
                                                      words):
    path = tmp_path / "sweep.yaml"
    write(path, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["run", str(path), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mtlsweep run: error: {where}") and "\n" not in err, err
    assert words in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written
    import ray
    assert not ray.is_initialized()
