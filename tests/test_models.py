"""The multi-task network: sharing follows the layout, per-task paths, shapes, config, errors."""
from __future__ import annotations

import itertools
import json
from collections import Counter

import pytest
import torch

from mtl.models import Layout, MultiTaskNet, build_model, enumerate_layouts
from mtl.models.blocks import IMAGENET_MEAN, IMAGENET_STD
from mtl.tasks import TASK_NAMES, task_loss

THREE = ["segment_semantic", "depth_zbuffer", "scene_class"]
CHANNELS = {"segment_semantic": 5, "scene_class": 4}
WIDTH = 4  # tiny: the tests are about structure, not capacity


def make(layout, tasks=THREE, **kwargs) -> MultiTaskNet:
    kwargs.setdefault("width", WIDTH)
    return build_model(layout, tasks, CHANNELS, **kwargs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)



# --- sharing follows the layout ---------------------------------------------------------------
@pytest.mark.parametrize("k", range(6))
def test_branch_point_modules_shared_iff_below_k(k):
    model = make(Layout.branch_point(k, 3))
    for b in range(5):
        for t1, t2 in itertools.combinations(range(3), 2):
            same = model.block_module(b, t1) is model.block_module(b, t2)
            assert same == (b < k), (b, t1, t2)
    assert model.block_module(0, "depth_zbuffer") is model.block_module(0, 1)


def test_every_layout_shares_exactly_its_groups_and_params_fall_with_coarsening():
    layouts = enumerate_layouts(3, 5)
    counts = {}
    for layout in layouts:
        model = make(layout)
        assert len(model.backbone) == layout.num_modules()
        for b in range(5):
            for t1, t2 in itertools.combinations(range(3), 2):
                same = model.block_module(b, t1) is model.block_module(b, t2)
                assert same == (layout.group_of(b, t1) == layout.group_of(b, t2))
        counts[layout] = n_params(model)
    pairs = [(f, c) for f, c in itertools.product(layouts, repeat=2) if f != c and f.refines(c)]
    assert len(pairs) > 100
    for fine, coarse in pairs:  # coarse is a strict coarsening of fine: strictly fewer params
        assert counts[fine] > counts[coarse], (fine, coarse)


def test_param_count_strictly_falls_with_branch_point():
    counts = [n_params(make(Layout.branch_point(k, 3))) for k in range(6)]
    assert all(a > b for a, b in zip(counts, counts[1:])), counts


def test_shared_and_task_parameters():
    layout = Layout.parse("0+1+2|0+1+2|0+1,2|0,1,2|0,1,2")
    model = make(layout)
    shared = {id(p) for p in model.shared_parameters()}
    expected = {id(p) for b, g in [(0, (0, 1, 2)), (1, (0, 1, 2)), (2, (0, 1))]
                for p in model.block_module(b, g[0]).parameters()}
    assert shared == expected
    assert not make(Layout.branch_point(0, 3)).shared_parameters()
    full = make(Layout.branch_point(5, 3))
    assert {id(p) for p in full.shared_parameters()} == {id(p) for p in full.backbone.parameters()}
    # a task's parameters: its 5 backbone modules and its head, nothing of the other heads
    own = {id(p) for p in model.task_parameters("scene_class")}
    assert {id(p) for p in model.heads["scene_class"].parameters()} <= own
    assert not own & {id(p) for p in model.heads["depth_zbuffer"].parameters()}
    assert not own & {id(p) for p in model.block_module(3, 0).parameters()}


# --- forward ----------------------------------------------------------------------------------
def test_forward_shapes_for_every_task_at_32px():
    tasks = list(TASK_NAMES)
    model = build_model(Layout.branch_point(2, tasks), tasks, CHANNELS, width=WIDTH)
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert list(out) == tasks
    expected = {"segment_semantic": (2, 5, 32, 32), "depth_zbuffer": (2, 1, 32, 32),
                "normal": (2, 3, 32, 32), "edge_texture": (2, 1, 32, 32),
                "keypoints2d": (2, 1, 32, 32), "scene_class": (2, 4)}
    assert {t: tuple(v.shape) for t, v in out.items()} == expected
    assert all(torch.isfinite(v).all() for v in out.values())
    # non-square input, no skip connection
    plain = build_model("0,1|0,1|0,1|0,1|0,1", ["normal", "depth_zbuffer"], width=WIDTH,
                        skip=False)
    assert plain(torch.rand(1, 3, 16, 24))["normal"].shape == (1, 3, 16, 24)


def _count_calls(model: MultiTaskNet) -> Counter:
    calls: Counter = Counter()
    for name, module in itertools.chain(model.backbone.items(), model.heads.items()):
        module.register_forward_hook(lambda m, i, o, name=name: calls.update([name]))
    return calls


def test_task_selection_runs_only_its_path_once():
    layout = Layout.parse("0+1+2|0+1+2|0+1,2|0,1,2|0,1,2")
    model = make(layout)
    calls = _count_calls(model)
    x = torch.rand(2, 3, 16, 16)
    out = model(x, task="depth_zbuffer")
    assert list(out) == ["depth_zbuffer"]
    assert calls == Counter(["b0_t0-1-2", "b1_t0-1-2", "b2_t0-1", "b3_t1", "b4_t1",
                             "depth_zbuffer"])
    calls.clear()
    out = model(x)  # every module exactly once, shared ones included
    assert list(out) == THREE
    assert calls == Counter(list(model.backbone.keys()) + THREE)
    calls.clear()
    out = model(x, tasks=["scene_class", "segment_semantic"])
    assert list(out) == ["scene_class", "segment_semantic"]
    assert calls == Counter(["b0_t0-1-2", "b1_t0-1-2", "b2_t0-1", "b2_t2", "b3_t0", "b3_t2",
                             "b4_t0", "b4_t2", "scene_class", "segment_semantic"])
    assert list(model(x, tasks="scene_class")) == ["scene_class"]


def test_task_gradient_reaches_only_its_parameters():
    model = make(Layout.parse("0+1+2|0+1+2|0+1,2|0,1,2|0,1,2"))
    model(torch.rand(2, 3, 16, 16), task="segment_semantic")["segment_semantic"].sum().backward()
    own = {id(p) for p in model.task_parameters("segment_semantic")}
    for name, p in model.named_parameters():
        if id(p) in own:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_shared_batchnorm_updates_once_per_forward():
    model = make(Layout.branch_point(3, 3)).train()
    model(torch.rand(4, 3, 16, 16))
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            assert buf.item() == 1, name


@pytest.mark.parametrize("layout", ["0+1+2|0+1+2|0+1,2|0,1,2|0,1,2",
                                    "0,1+2|0,1+2|0,1,2|0,1,2|0,1,2"])
def test_single_task_output_equals_full_output_in_eval(layout):
    model = make(layout).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        full = model(x)
        for task in THREE:
            assert torch.equal(model(x, task=task)[task], full[task])


def test_input_is_normalised_by_the_first_layer():
    model = make(Layout.branch_point(5, 3))
    seen = []
    model.block_module(0, 0).register_forward_pre_hook(lambda m, inp: seen.append(inp[0]))
    x = torch.rand(2, 3, 16, 16)
    model(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen[0], (x - mean) / std)
    assert "normalize.mean" not in model.state_dict()  # constants, not trainable state


def test_a_few_steps_fit_a_batch():
    """The architecture trains: the summed task loss on one batch falls clearly."""
    model = make(Layout.branch_point(3, 3), width=8)
    batch = {"image": torch.rand(8, 3, 16, 16),
             "segment_semantic": torch.randint(0, 5, (8, 16, 16)),
             "depth_zbuffer": torch.rand(8, 1, 16, 16) * 5,
             "scene_class": torch.randint(0, 4, (8,))}
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def loss() -> torch.Tensor:
        out = model(batch["image"])
        return sum(task_loss(t, out[t], batch).mean() for t in THREE)

    first = loss().item()
    for _ in range(30):
        opt.zero_grad()
        value = loss()
        value.backward()
        opt.step()
    assert loss().item() < 0.6 * first


# --- config -----------------------------------------------------------------------------------
def test_config_round_trip_rebuilds_identical_model():
    model = make("0+1+2|0+1+2|0,1+2|0,1,2|0,1,2", width=6, stage_depth=2, skip=False)
    cfg = json.loads(json.dumps(model.config()))
    assert cfg == {"layout": "0+1+2|0+1+2|0,1+2|0,1,2|0,1,2", "tasks": THREE,
                   "out_channels": {"segment_semantic": 5, "depth_zbuffer": 1, "scene_class": 4},
                   "width": 6, "stage_depth": 2, "skip": False}
    clone = build_model(**cfg)
    assert clone.config() == model.config()
    assert {k: v.shape for k, v in clone.state_dict().items()} == \
        {k: v.shape for k, v in model.state_dict().items()}
    clone.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 16, 16)
    model.eval(), clone.eval()
    with torch.no_grad():
        a, b = model(x), clone(x)
    assert all(torch.equal(a[t], b[t]) for t in THREE)


def test_out_channels_defaults_and_dataset_style_mapping():
    model = build_model(Layout.branch_point(1, 2), ["normal", "keypoints2d"], width=WIDTH)
    assert model.out_channels == {"normal": 3, "keypoints2d": 1}
    # a dataset's full task_channels may be passed; only the model's tasks are kept
    task_channels = {"segment_semantic": 7, "depth_zbuffer": 1, "normal": 3, "scene_class": 9}
    model = build_model(Layout.branch_point(1, 2), ["scene_class", "normal"], task_channels,
                        width=WIDTH)
    assert model.out_channels == {"scene_class": 9, "normal": 3}


# --- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, needle", [
    (dict(tasks=["segment_semantic", "depth_zbuffer"]), "tasks: layout .* has 3 tasks"),
    (dict(tasks=["segment_semantic", "depth", "scene_class"]), "tasks: unknown task 'depth'"),
    (dict(tasks=["normal", "normal", "scene_class"]), "tasks: duplicate"),
    (dict(tasks="normal"), "tasks: expected a non-empty list"),
    (dict(layout="0+1+2|0,1,2"), "layout: must have 5 blocks"),
    (dict(layout="0+1+2|0+3|0,1,2|0,1,2|0,1,2"), "layout '.*': task index 3"),
    (dict(layout=3), "layout: expected a Layout"),
    (dict(width=0), "width: must be an integer >= 1"),
    (dict(stage_depth=1.5), "stage_depth: must be an integer >= 1"),
    (dict(skip="yes"), "skip: must be True or False"),
    (dict(out_channels={"scene_class": 4}), "out_channels: segment_semantic"),
    (dict(out_channels={"segment_semantic": 5, "scene_class": 4, "sky": 2}),
     "out_channels: unknown task 'sky'"),
    (dict(out_channels={"segment_semantic": 5, "scene_class": 0}),
     r"out_channels\['scene_class'\]: must be an integer >= 1"),
    (dict(out_channels={"segment_semantic": 5, "scene_class": 4, "depth_zbuffer": 2}),
     "out_channels: depth_zbuffer: channels must be 1"),
    (dict(out_channels=[5, 1, 4]), "out_channels: expected a mapping"),
])
def test_build_model_rejects_bad_input(kwargs, needle):
    args = dict(layout=Layout.branch_point(2, 3), tasks=THREE, out_channels=CHANNELS,
                width=WIDTH)
    args.update(kwargs)
    with pytest.raises(ValueError, match=needle) as info:
        build_model(**args)
    if "unknown task" in needle:
        assert "scene_class" in str(info.value) and "keypoints2d" in str(info.value)


def test_forward_rejects_bad_input():
    model = make(Layout.branch_point(2, 3))
    x = torch.rand(1, 3, 16, 16)
    for kwargs, needle in [(dict(task="normal"), "task: 'normal' is not a task of this model"),
                           (dict(task="normal", tasks=["normal"]), "at most one"),
                           (dict(tasks=[]), "empty selection"),
                           (dict(tasks=["scene_class", "scene_class"]), "duplicate")]:
        with pytest.raises(ValueError, match=needle):
            model(x, **kwargs)
    with pytest.raises(ValueError, match=r"x: expected images \[B, 3, H, W\]"):
        model(torch.rand(1, 1, 16, 16))
    for task in ("normal", 3, -1, True):
        with pytest.raises(ValueError, match="task"):
            model.block_module(0, task)
    with pytest.raises(ValueError, match="block"):
        model.block_module(5, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_models_device():
    model = make(Layout.branch_point(2, 3)).cuda()
    out = model(torch.rand(2, 3, 16, 16, device="cuda"))
    assert all(v.device.type == "cuda" for v in out.values())
