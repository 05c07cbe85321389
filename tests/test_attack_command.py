"""`mtlsweep train` records the data settings in each checkpoint and `mtlsweep attack` uses them
by default (a 16-px model is attacked at 16 px); flags override, a different size warns;
`--option` values are bounded YAML scalars."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mtl.train.checkpoints import read_meta, update_meta
from orchestrator.cli import main
from orchestrator.commands.attack import MAX_OPTION_CHARS, parse_options

TASKS = ["segment_semantic", "scene_class"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint that `mtlsweep train` wrote for a 16-px scenes model."""
    out = tmp_path_factory.mktemp("m16")
    code = main(["train", "--branch-point", "1", "--tasks", *TASKS, "--width", "4",
                 "--size", "16", "--train-len", "16", "--val-len", "4", "--epochs", "1",
                 "--batch-size", "8", "--quiet", "--threads", "1", "--out", str(out)])
    assert code == 0
    return out / "epoch_001.pt"


def attack(checkpoint: Path, *extra: str) -> int:
    return main(["attack", "--checkpoint", str(checkpoint), "--method", "fgsm", "--objective",
                 "total", "--eps", "4", "--n", "4", "--batch-size", "4", "--threads", "1",
                 *extra])


def test_train_records_the_data_settings(trained: Path) -> None:
    data = read_meta(trained)["data"]
    assert data == {"source": "scenes", "options": {"size": 16, "seed": 0}, "tasks": TASKS,
                    "train": 16, "val": 4}


def test_attack_defaults_to_the_trained_data(trained: Path, capsys) -> None:
    assert attack(trained) == 0
    captured = capsys.readouterr()
    assert "scenes val at 16 px" in captured.out and "eps = 4/255" in captured.out
    assert captured.err == ""  # nothing overridden: no warning, no note


def test_a_different_size_is_used_with_one_warning_line(trained: Path, capsys) -> None:
    assert attack(trained, "--size", "24") == 0
    captured = capsys.readouterr()
    assert "scenes val at 24 px" in captured.out
    (line,) = captured.err.splitlines()
    assert "warning" in line and "trained at 16 px" in line and "--size 24" in line


def test_a_checkpoint_without_data_settings_says_what_it_assumes(trained: Path, tmp_path,
                                                                   capsys) -> None:
    old = tmp_path / trained.name
    old.write_bytes(trained.read_bytes())
    meta = read_meta(trained)
    del meta["data"]
    old.with_suffix(".json").write_text(json.dumps(meta))
    assert attack(old, "--dataset", "scenes", "--size", "16") == 0
    assert capsys.readouterr().err == ""  # both given: nothing assumed
    assert attack(old, "--n", "2") == 0
    captured = capsys.readouterr()
    assert "records no dataset settings; using --dataset scenes --size 32" in captured.err
    assert "scenes val at 32 px" in captured.out


def test_a_source_this_command_cannot_build_is_named(trained: Path, tmp_path, capsys) -> None:
    plugin = tmp_path / trained.name
    plugin.write_bytes(trained.read_bytes())
    plugin.with_suffix(".json").write_text(trained.with_suffix(".json").read_text())
    update_meta(plugin, {"data": {"source": "evil.module:factory", "options": {"size": 16}}})
    assert attack(plugin) == 2
    err = capsys.readouterr().err
    assert "--dataset:" in err and "'evil.module:factory'" in err and "cannot build" in err
    assert attack(plugin, "--dataset", "scenes", "--size", "16") == 0  # a flag overrides


def test_a_record_without_a_size_means_the_datasets_default(trained: Path, tmp_path,
                                                           capsys) -> None:
    """A sweep's `dataset: {name: scenes}` records no size: the factory's default applies."""
    import inspect

    from mtl.data.builtin_datasets import scenes_split
    default = inspect.signature(scenes_split).parameters["size"].default
    sweep = tmp_path / trained.name
    sweep.write_bytes(trained.read_bytes())
    sweep.with_suffix(".json").write_text(trained.with_suffix(".json").read_text())
    update_meta(sweep, {"data": {"source": "scenes", "options": {"seed": 0}}})
    assert attack(sweep, "--n", "2") == 0
    captured = capsys.readouterr()
    assert f"scenes val at {default} px" in captured.out and captured.err == ""


def test_a_bad_sidecar_is_one_line_exit_2(trained: Path, tmp_path, capsys) -> None:
    bad = tmp_path / trained.name
    bad.write_bytes(trained.read_bytes())
    bad.with_suffix(".json").write_text("[")
    assert attack(bad) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "epoch_001.json is not valid JSON" in line


def test_options_are_yaml_scalars() -> None:
    assert parse_options(["random_start=true", "alpha=1", "denominator=clean", "x=", "y=1.5"]) \
        == {"random_start": True, "alpha": 1, "denominator": "clean", "x": None, "y": 1.5}


@pytest.mark.parametrize("items, words", [
    ([f"alpha={'9' * (MAX_OPTION_CHARS + 1)}"],
     f"--option alpha: the value has {MAX_OPTION_CHARS + 1} characters; at most"),
    (["bomb=[&a [1,1,1,1,1,1,1,1,1], &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], "
      "[*b,*b,*b,*b,*b,*b,*b,*b,*b]]"], "--option bomb: expected one value .* got a list"),
    (["m={a: 1}"], "--option m: expected one value .* got a dict"),
    (["alpha=1", "alpha=2"], "--option alpha: given twice"),
    (["noequals"], "--option: expected KEY=VALUE"),
    (["../x=1"], "--option: expected KEY=VALUE with KEY a name"),
    (["a=[1"], "--option a: not a YAML value"),
    (["a=!!python/object:os.system ls"], "--option a: not a YAML value"),
])
def test_bad_options_are_refused(items: list[str], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_options(items)


def test_bad_options_exit_2_before_any_work(trained: Path, capsys) -> None:
    assert attack(trained, "--option", "alpha=" + "1" * 500) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("mtlsweep attack: error: --option alpha:") and len(line) < 200
