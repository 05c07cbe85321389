"""Dataset and model registries: users' factories by name or import path, built-ins through the
same door, up-front option checks, and the calling convention."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import byo_fixture
from mtl.data import (build_split, check_dataset_options, dataset_factory, dataset_names,
                      get_dataset, register_dataset, subset)
from mtl.data.nyuv2 import NYUv2
from mtl.data.scenes import SyntheticScenes
from mtl.data.taskonomy import Taskonomy
from mtl.models import (Layout, accepts_layout, build_model, build_task_model,
                        check_model_options, model_factory, model_names, register_model)
from mtl.models.task_model import TaskModel
from test_real_data import _write_nyuv2, _write_taskonomy

SIZES = {"train": 4, "val": 3, "test": 2}


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def user_dataset():
    register_dataset("squares", byo_fixture.make_split, replace=True)
    return "squares"


# --- datasets -----------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["squares", "byo_fixture:make_split"])
def test_user_dataset_by_name_or_import_path_is_cut_to_length(source, user_dataset):
    assert dataset_factory(source) is byo_fixture.make_split
    data = build_split(source, "val", options={"size": 6}, tasks=["depth_zbuffer"], length=5,
                       split_sizes=SIZES)
    assert len(data) == 5 and data.tasks == ("depth_zbuffer",)
    assert not hasattr(data, "task_channels")  # a user dataset may omit it
    sample = data[4]
    assert set(sample) == {"image", "depth_zbuffer"} and sample["image"].shape == (3, 6, 6)
    assert sample["depth_zbuffer"][0, 0, 0] == 1004  # val items, first `length` of them
    assert len(build_split(source, "train", split_sizes=SIZES)) == SIZES["train"]


def test_too_few_samples_are_refused(user_dataset):
    with pytest.raises(ValueError, match=r"^dataset\.test: 21 samples requested but the test "
                                         r"split has 20$"):
        build_split(user_dataset, "test", length=21, split_sizes=SIZES)


def test_caller_keywords_go_only_to_factories_that_take_them(tmp_path):
    register_dataset("needs_root", byo_fixture.needs_root, replace=True)
    byo_fixture.needs_root.calls.clear()
    build_split("needs_root", "train", options={"root": str(tmp_path), "extra": 1},
                tasks=("normal",), length=2, split_sizes=SIZES)
    assert byo_fixture.needs_root.calls == [{"split": "train", "root": str(tmp_path),
                                             "extra": 1, "tasks": ["normal"], "length": 2,
                                             "split_sizes": SIZES}]
    # make_split names `tasks` only: no length / split_sizes arrive (it would raise TypeError)
    build_split("byo_fixture:make_split", "train", tasks=["normal"], length=2,
                split_sizes=SIZES)


def test_unknown_and_missing_keys_are_caught_before_any_work(user_dataset):
    with pytest.raises(ValueError, match=r"^dataset\.sise: unknown key for dataset 'squares' "
                                         r"\(did you mean 'size'\?\); allowed keys: n, size$"):
        check_dataset_options(user_dataset, {"sise": 8})
    with pytest.raises(ValueError, match=r"^dataset\.root: required by dataset 'needs_root'"):
        register_dataset("needs_root", byo_fixture.needs_root, replace=True)
        check_dataset_options("needs_root", {})
    with pytest.raises(ValueError, match=r"^dataset\.root: required by dataset 'nyuv2' "
                                         r"\(the directory it lives in\)$"):
        check_dataset_options("nyuv2", {"size": 16})
    with pytest.raises(ValueError, match=r"^dataset\.tasks: set by mtlsweep"):
        check_dataset_options("scenes", {"tasks": ["normal"]})
    check_dataset_options("byo_fixture:needs_root", {"root": ".", "anything": 1})  # **kwargs


@pytest.mark.parametrize("source, options, match", [
    ("scenes", {"size": 4}, r"^dataset\.size: 4 is out of range; allowed: 8\.\.1024$"),
    ("scenes", {"size": "64"}, r"^dataset\.size: expected an integer"),
    ("scenes", {"seed": -1}, r"^dataset\.seed: -1 is out of range"),
    ("nyuv2", {"root": 3}, r"^dataset\.root: expected the directory"),
    ("taskonomy", {"root": "/no/such/dir"}, r"^dataset\.root: '/no/such/dir' is not an "
                                            r"existing directory"),
    ("nyuv2", {"root": ".", "size": "x"}, r"^dataset\.size: "),
])
def test_builtin_value_checks(source, options, match):
    with pytest.raises(ValueError, match=match):
        check_dataset_options(source, options)


def test_unknown_sources_give_one_error():
    with pytest.raises(ValueError, match=r"^dataset\.name: unknown dataset 'imagenet'; "
                                         r"registered: .*nyuv2, .*scenes, .*taskonomy"):
        dataset_factory("imagenet")
    with pytest.raises(ValueError, match=r"^dataset\.factory: module 'byo_fixture' has no "
                                         r"attribute 'nope'"):
        dataset_factory("byo_fixture:nope")
    with pytest.raises(ValueError, match=r"^dataset\.factory: 'byo_fixture:TASKS' is a tuple"):
        dataset_factory("byo_fixture:TASKS")
    assert {"scenes", "nyuv2", "taskonomy"} <= set(dataset_names())


def test_register_twice_needs_replace():
    register_dataset("twice", byo_fixture.make_split, replace=True)
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_dataset("twice", byo_fixture.make_split)
    with pytest.raises(ValueError, match="import paths"):
        register_dataset("a:b", byo_fixture.make_split)
    register_model("twice", byo_fixture.build_net, replace=True)
    with pytest.raises(ValueError, match="already registered"):
        register_model("twice", byo_fixture.build_net)


def test_scenes_through_the_registry_match_the_class(tmp_path):
    opts = {"size": 16, "seed": 3, "cache_dir": str(tmp_path)}
    data = build_split("scenes", "val", options=opts, tasks=["depth_zbuffer", "normal"],
                       length=3, split_sizes=SIZES)
    direct = SyntheticScenes("val", size=16, length=3, seed=3, tasks=["depth_zbuffer", "normal"],
                             cache_dir=tmp_path)
    assert len(data) == 3 and data.task_channels == direct.task_channels
    assert all(_same(data[i], direct[i]) for i in range(3))


def test_nyuv2_through_the_registry_reads_val_for_test(tmp_path):
    _write_nyuv2(tmp_path, "train")
    _write_nyuv2(tmp_path, "val", n=3)
    test = build_split("nyuv2", "test", options={"root": str(tmp_path), "size": 16},
                       tasks=["normal"], length=2, split_sizes=SIZES)
    val = NYUv2(tmp_path, "val", tasks=["normal"], size=16)
    assert len(test) == 2 and test.task_channels == {"normal": 3}
    assert all(_same(test[i], val[i]) for i in range(2))
    assert len(build_split("nyuv2", "train", options={"root": str(tmp_path)},
                           split_sizes=SIZES)) == 4
    with pytest.raises(ValueError, match="dataset.val: 4 samples requested but the val split "
                                         "has 3"):
        build_split("nyuv2", "val", options={"root": str(tmp_path)}, length=4,
                    split_sizes=SIZES)


def test_taskonomy_splits_are_consecutive_ranges(tmp_path):
    _write_taskonomy(tmp_path, {"a": [(0, 0), (0, 1), (1, 0)], "b": [(2, 0), (2, 1)]})
    full = Taskonomy(tmp_path, tasks=["depth_zbuffer"])
    sizes = {"train": 2, "val": 1, "test": 2}
    opts = {"root": str(tmp_path)}
    parts = {s: build_split("taskonomy", s, options=opts, tasks=["depth_zbuffer"],
                            split_sizes=sizes) for s in sizes}
    order = [parts["train"][0], parts["train"][1], parts["val"][0], parts["test"][0],
             parts["test"][1]]
    assert all(_same(order[i], full[i]) for i in range(5))
    assert parts["val"].task_channels == {"depth_zbuffer": 1}
    with pytest.raises(ValueError, match="dataset.test: 2 samples requested but the test split "
                                         "has 1"):
        build_split("taskonomy", "test", options=opts, split_sizes={**sizes, "train": 3})


def test_legacy_class_access_still_works(tmp_path):
    _write_nyuv2(tmp_path, "val")
    assert isinstance(get_dataset("nyuv2", "test", root=tmp_path), NYUv2)
    part = subset(byo_fixture.make_split("train"), 0, 3)  # no contract attributes but tasks
    assert len(part) == 3 and part.tasks == byo_fixture.TASKS


# --- models -------------------------------------------------------------------------------
CHANNELS = {"segment_semantic": 5, "depth_zbuffer": 1, "normal": 3}


def test_builtin_network_is_registered_as_resnet():
    assert "resnet" in model_names() and accepts_layout("resnet")
    layout = Layout.branch_point(2, 2)
    torch.manual_seed(0)
    net = build_task_model("resnet", tasks=["depth_zbuffer", "segment_semantic"],
                           task_channels=CHANNELS, options={"width": 4}, layout=layout)
    torch.manual_seed(0)
    direct = build_model(layout, ["depth_zbuffer", "segment_semantic"],
                         {"depth_zbuffer": 1, "segment_semantic": 5}, width=4)
    assert type(net) is type(direct) and net.tasks == ("depth_zbuffer", "segment_semantic")
    assert net.out_channels == {"depth_zbuffer": 1, "segment_semantic": 5}
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                 direct.state_dict().values()))
    assert model_factory().num_blocks == layout.num_blocks


@pytest.mark.parametrize("options, layout, match", [
    ({"widht": 4}, None, r"^model\.widht: unknown key for model 'resnet' \(did you mean "
                         r"'width'\?\)"),
    ({"width": 0}, None, r"^model\.width: 0 is out of range; allowed: 1\.\.512$"),
    ({"width": 1000}, None, r"^model\.width: 1000 is out of range"),
    ({"layout": "0|0"}, None, r"^model\.layout: set by mtlsweep"),
    ({}, False, r"^model\.layout: required by model 'resnet'"),
])
def test_builtin_model_option_checks(options, layout, match):
    with pytest.raises(ValueError, match=match):
        check_model_options("resnet", options, layout=layout)


def test_user_model_without_layout_is_refused_a_layout():
    source = "byo_fixture:build_net"
    assert not accepts_layout(source)
    check_model_options(source, {"width": 2}, layout=False)
    message = (r"^model\.factory: byo_fixture:build_net takes no `layout` argument, so layouts "
               r"cannot be swept for it; remove `layouts`/model.layout or add a layout "
               r"parameter$")
    with pytest.raises(ValueError, match=message):
        check_model_options(source, {}, layout=True)
    with pytest.raises(ValueError, match=message):
        build_task_model(source, tasks=["normal"], task_channels=CHANNELS, layout="0")


@pytest.mark.parametrize("source", ["mean", "byo_fixture:build_net"])
def test_user_model_comes_back_as_a_task_model(source):
    register_model("mean", byo_fixture.build_net, replace=True)
    model = build_task_model(source, tasks=["segment_semantic", "normal"],
                             task_channels=CHANNELS, options={"width": 2})
    assert isinstance(model, TaskModel) and isinstance(model.net, byo_fixture.MeanNet)
    assert model.tasks == ("segment_semantic", "normal")
    assert model.out_channels == {"segment_semantic": 5, "normal": 3}
    out = model(torch.rand(2, 3, 8, 8), task="segment_semantic")
    assert list(out) == ["segment_semantic"] and out["segment_semantic"].shape == (2, 5, 8, 8)


def test_factory_returning_a_non_module_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^model\.factory: 'byo_fixture:not_a_model' returned "
                                         r"a str, expected a torch\.nn\.Module$"):
        build_task_model("byo_fixture:not_a_model", tasks=["normal"], task_channels=CHANNELS)
    with pytest.raises(ValueError, match=r"^model\.name: unknown model 'vit'"):
        model_factory("vit")


def test_a_factory_must_take_tasks_and_task_channels():
    register_model("bare", lambda: nn.Identity(), replace=True)
    with pytest.raises(ValueError, match=r"^model\.name: 'bare' takes no `tasks` argument"):
        check_model_options("bare", {})


def test_layouts_and_the_registry_names_import_without_torch():
    code = ("import sys, mtl.models as m; m.Layout.branch_point(1, 2); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'build_task_model' in m.__all__")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
