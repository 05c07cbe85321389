"""The DGBA paper's Deeplab-ResNet-34 tree (`deeplab_resnet34`): parameter counts against a
hand count, sharing by TreeMTL's coarse blocks, forward / backward / attack on small inputs,
and local ImageNet weights in torchvision's format."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mtl.attacks import attack
from mtl.config.reading import ConfigError
from mtl.config.sections import parse_model
from mtl.models import Layout, build_task_model, check_model_options
from mtl.models.deeplab import DeeplabTree, fine_partitions

TASKS = ["segment_semantic", "normal", "depth_zbuffer"]
CHANNELS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}  # NYUv2 as in the paper


# --- the hand count ---------------------------------------------------------------------------
def bn(c: int) -> int:
    return 2 * c


def unit(cin: int, cout: int, projection: bool) -> int:
    """A basic unit: two 3x3 convs without bias + BN, and a 1x1 projection + BN."""
    return (9 * cin * cout + bn(cout) + 9 * cout * cout + bn(cout)
            + (cin * cout + bn(cout) if projection else 0))


STEM = 7 * 7 * 3 * 64 + bn(64)
STAGE1 = 3 * unit(64, 64, False)
STAGE2 = unit(64, 128, True) + 3 * unit(128, 128, False)
STAGE3 = unit(128, 256, True) + 5 * unit(256, 256, False)
STAGE4 = unit(256, 512, True) + 2 * unit(512, 512, False)
COARSE = (STEM, STAGE1, STAGE2, STAGE3, STAGE4)


def head(classes: int, hidden: int = 1024) -> int:
    """Four ASPP branches: 3x3 (512 -> hidden), 1x1 (hidden -> hidden), 1x1 (-> classes),
    all with biases."""
    branch = 9 * 512 * hidden + hidden + hidden * hidden + hidden + hidden * classes + classes
    return 4 * branch


HEADS = sum(head(c) for c in CHANNELS.values())


def test_hand_count_is_a_resnet34_without_its_classifier():
    # torchvision's ResNet-34 has 21,797,672 parameters, 513,000 of them in its 512 -> 1000 fc
    assert sum(COARSE) == 21_797_672 - 513_000 == 21_284_672


def build(layout: str | Layout, device: str = "cpu", **options) -> DeeplabTree:
    if isinstance(layout, str):  # "treemtl:<i>", the paper's layout index
        layout = Layout.from_treemtl_index(int(layout.split(":")[1]), len(TASKS))
    with torch.device(device):
        model = build_task_model("deeplab_resnet34", tasks=TASKS, task_channels=CHANNELS,
                                 options=options, layout=str(layout))
    assert isinstance(model, DeeplabTree)  # a task model of its own, not wrapped
    return model


def count(params) -> int:
    return sum(p.numel() for p in params)


@pytest.mark.parametrize("index, copies", [
    (0, (1, 1, 1, 1, 1)),   # fully shared backbone
    (2, (3, 3, 3, 3, 3)),   # three independent networks
    (3, (2, 3, 3, 3, 3)),   # stem shared by tasks 1 and 2, then all apart
])
def test_parameter_counts_per_layout(index, copies):
    layout = Layout.from_treemtl_index(index, 3)
    assert tuple(len(p) for p in layout.partitions) == copies
    model = build(layout, device="meta")  # counts without allocating ~130M floats
    expected = sum(c * n for c, n in zip(copies, COARSE)) + HEADS
    assert count(model.parameters()) == expected
    assert count(model.shared_parameters()) == sum(
        n * sum(len(g) > 1 for g in part) for n, part in zip(COARSE, layout.partitions))
    assert {0: 90_695_664, 2: 133_265_008}.get(index, expected) == expected


def test_fine_blocks_follow_treemtl_coarse_mapping():
    layout = Layout.from_treemtl_index(3, 3)
    fine = fine_partitions(layout)
    mapping = {0: [0], 1: [1, 2, 3], 2: [4, 5, 6, 7], 3: [8, 9, 10, 11, 12, 13],
               4: [14, 15, 16]}
    assert len(fine) == 17
    for coarse, fines in mapping.items():
        assert all(fine[f] == layout.partitions[coarse] for f in fines)
    assert fine_partitions(Layout(fine)) == fine  # a 17-block layout is taken as it is
    with pytest.raises(ValueError, match="5 \\(coarse\\) or 17 \\(fine\\) blocks"):
        fine_partitions(Layout.branch_point(2, 3, 4))


@pytest.fixture(scope="module")
def mixed() -> DeeplabTree:
    torch.manual_seed(0)
    return build("treemtl:3", aspp_channels=8).eval()


def test_forward_selects_tasks_and_returns_input_sized_maps(mixed):
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = mixed(x)
        assert {t: tuple(v.shape) for t, v in out.items()} == {
            "segment_semantic": (2, 40, 64, 64), "normal": (2, 3, 64, 64),
            "depth_zbuffer": (2, 1, 64, 64)}
        one = mixed(x, task="normal")
        two = mixed(x, tasks=["depth_zbuffer", "normal"])
    assert list(one) == ["normal"] and list(two) == ["depth_zbuffer", "normal"]
    assert torch.equal(one["normal"], out["normal"])
    assert torch.equal(two["depth_zbuffer"], out["depth_zbuffer"])
    with torch.no_grad():
        odd = mixed(torch.rand(1, 3, 33, 33))  # output stride 8 of an odd size: 5 x 5
    assert odd["segment_semantic"].shape == (1, 40, 33, 33)
    with pytest.raises(ValueError, match="allowed"):
        mixed(x, task="edge_texture")


def test_one_task_backward_reaches_exactly_its_path(mixed):
    mixed.zero_grad(set_to_none=True)
    x = torch.rand(1, 3, 33, 33)
    mixed(x, task="depth_zbuffer")["depth_zbuffer"].mean().backward()
    touched = [p for p in mixed.parameters() if p.grad is not None]
    # one whole backbone (its path: the shared stem, its own stages) and its own head
    assert count(touched) == sum(COARSE) + head(1, hidden=8)
    shared_stem = dict(mixed.backbone.named_children())["f0_t1-2"]
    assert all(p.grad is not None for p in shared_stem.parameters())
    assert all(p.grad is None for p in dict(mixed.backbone.named_children())["f0_t0"]
               .parameters())
    mixed.zero_grad(set_to_none=True)


def test_pgd_dgba_attack_runs_on_the_tree(mixed):
    torch.manual_seed(1)
    batch = {"image": torch.rand(2, 3, 64, 64),
             "segment_semantic": torch.randint(0, 40, (2, 64, 64)),
             "normal": torch.nn.functional.normalize(torch.randn(2, 3, 64, 64), dim=1),
             "depth_zbuffer": torch.rand(2, 1, 64, 64) + 0.5}
    adv = attack(mixed, batch, method="pgd", objective="dgba", eps=4, steps=2)
    delta = adv - batch["image"]
    assert adv.shape == batch["image"].shape and 0 <= adv.min() and adv.max() <= 1
    assert delta.abs().max() <= 4 / 255 + 1e-6 and delta.abs().max() > 0


def test_registered_with_its_options_checked():
    raw = {"name": "deeplab_resnet34", "layout": "treemtl:2", "aspp_channels": 64}
    model = parse_model(raw, [{"name": t} for t in TASKS])
    assert model["layout"] == str(Layout.branch_point(0, 3)) and model["source"] == \
        "deeplab_resnet34" and model["options"] == {"aspp_channels": 64}
    for key, value, words in [("aspp_channels", 0, "1..4096"), ("upsample", "cubic", "nearest"),
                              ("pretrained", "/no/such/file.pth", "not an existing file"),
                              ("width", 8, "unknown key")]:
        with pytest.raises(ValueError, match=words) as info:
            check_model_options("deeplab_resnet34", {key: value}, layout=True)
        assert str(info.value).startswith(f"model.{key}:")
    with pytest.raises(ConfigError, match="model.layout"):
        parse_model({"name": "deeplab_resnet34", "layout": "treemtl:51"},
                    [{"name": t} for t in TASKS])


def test_image_level_tasks_are_refused():
    with pytest.raises(ValueError, match="scene_class.*dense"):
        DeeplabTree(Layout.branch_point(5, 2), ["depth_zbuffer", "scene_class"],
                    {"scene_class": 5}, aspp_channels=4)


# --- local ImageNet weights ---------------------------------------------------------------------
def torchvision_resnet34_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict with torchvision's ResNet-34 names and shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}

    def add_bn(prefix: str, c: int) -> None:
        state[prefix + "weight"] = torch.rand(c, generator=g)
        state[prefix + "bias"] = torch.rand(c, generator=g)
        state[prefix + "running_mean"] = torch.rand(c, generator=g)
        state[prefix + "running_var"] = torch.rand(c, generator=g) + 0.5
        state[prefix + "num_batches_tracked"] = torch.tensor(7)

    state["conv1.weight"] = torch.randn(64, 3, 7, 7, generator=g)
    add_bn("bn1.", 64)
    cin = 64
    for stage, (units, cout) in enumerate(zip((3, 4, 6, 3), (64, 128, 256, 512)), start=1):
        for u in range(units):
            p = f"layer{stage}.{u}."
            state[p + "conv1.weight"] = torch.randn(cout, cin if u == 0 else cout, 3, 3,
                                                    generator=g)
            add_bn(p + "bn1.", cout)
            state[p + "conv2.weight"] = torch.randn(cout, cout, 3, 3, generator=g)
            add_bn(p + "bn2.", cout)
            if u == 0 and stage > 1:
                state[p + "downsample.0.weight"] = torch.randn(cout, cin, 1, 1, generator=g)
                add_bn(p + "downsample.1.", cout)
        cin = cout
    state["fc.weight"] = torch.randn(1000, 512, generator=g)
    state["fc.bias"] = torch.randn(1000, generator=g)
    return state


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    state = torchvision_resnet34_state()
    path = tmp_path_factory.mktemp("weights") / "resnet34.pth"
    torch.save(state, path)
    return path, state


def test_pretrained_weights_reach_every_copy(weights_file):
    path, state = weights_file
    model = build("treemtl:3", aspp_channels=4, pretrained=str(path))
    blocks = dict(model.backbone.named_children())
    for key in ("f0_t0", "f0_t1-2"):  # the stem, in both of its copies
        assert torch.equal(blocks[key].conv1.weight, state["conv1.weight"])
        assert torch.equal(blocks[key].bn1.running_var, state["bn1.running_var"])
    for t in (0, 1, 2):  # fine block 9 = layer3.1; 14 = layer4.0 with its projection
        assert torch.equal(blocks[f"f9_t{t}"].conv2.weight, state["layer3.1.conv2.weight"])
        assert torch.equal(blocks[f"f14_t{t}"].downsample[1].running_mean,
                           state["layer4.0.downsample.1.running_mean"])
        assert torch.equal(blocks[f"f4_t{t}"].bn1.bias, state["layer2.0.bn1.bias"])


def test_pretrained_without_num_batches_tracked_loads(weights_file, tmp_path):
    _, state = weights_file
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    model = build("treemtl:0", aspp_channels=4, pretrained=str(tmp_path / "old.pth"))
    assert torch.equal(dict(model.backbone.named_children())["f16_t0-1-2"].conv1.weight,
                       state["layer4.2.conv1.weight"])


@pytest.mark.parametrize("breakage, words", [
    ("missing", "missing layer2.3.conv2.weight"),
    ("shape", r"wrong shape layer1.0.conv1.weight \(64, 64, 1, 1\)"),
    ("extra", "unexpected layer5.0.conv1.weight"),
    ("not_a_dict", "not a state_dict"),
    ("garbage", "cannot read"),
])
def test_bad_weight_files_name_the_file_and_keys(weights_file, tmp_path, breakage, words):
    _, state = weights_file
    state = dict(state)
    path = tmp_path / "bad.pth"
    if breakage == "missing":
        del state["layer2.3.conv2.weight"]
    elif breakage == "shape":
        state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    elif breakage == "extra":
        state["layer5.0.conv1.weight"] = torch.zeros(1)
    if breakage == "not_a_dict":
        torch.save([torch.zeros(1)], path)
    elif breakage == "garbage":
        path.write_bytes(b"not torch")
    else:
        torch.save(state, path)
    with pytest.raises(ValueError, match=words) as info:
        build("treemtl:0", aspp_channels=4, pretrained=str(path))
    assert str(path) in str(info.value)
