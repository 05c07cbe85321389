"""NYUv2 / Taskonomy loaders on tiny fixtures written in exactly their on-disk layouts."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mtl.data import get_dataset, make_loader
from mtl.data.nyuv2 import NYUv2
from mtl.data.taskonomy import Taskonomy
from mtl.tasks import get_task, task_loss

N, H, W = 4, 24, 32


def _write_nyuv2(root: Path, split: str = "train", n: int = N, chw: bool = False) -> None:
    rng = np.random.default_rng(0)
    for mod in ("image", "label", "depth", "normal"):
        (root / split / mod).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = rng.random((H, W, 3)).astype(np.float32)
        np.save(root / split / "image" / f"{i}.npy", image.transpose(2, 0, 1) if chw else image)
        label = rng.integers(-1, 13, (H, W)).astype(np.float32)
        label[0, 0], label[0, 1] = -1, 12
        np.save(root / split / "label" / f"{i}.npy", label)
        depth = (rng.random((H, W, 1)) * 5 + 0.5).astype(np.float32)
        depth[:2] = 0.0  # invalid rows
        np.save(root / split / "depth" / f"{i}.npy", depth)
        normal = rng.normal(size=(H, W, 3))
        normal /= np.linalg.norm(normal, axis=-1, keepdims=True) * 1.5  # not unit on disk
        normal[-1] = 0.0  # invalid row
        np.save(root / split / "normal" / f"{i}.npy", normal.astype(np.float32))


def test_nyuv2_batch_contract(tmp_path: Path) -> None:
    _write_nyuv2(tmp_path)
    ds = NYUv2(tmp_path, "train")
    assert (ds.name, ds.tasks, len(ds)) == ("nyuv2", ("segment_semantic", "depth_zbuffer",
                                                       "normal"), N)
    assert ds.task_channels == {"segment_semantic": 13, "depth_zbuffer": 1, "normal": 3}
    batch = next(iter(make_loader(ds, batch_size=N)))
    assert batch["image"].dtype == torch.float32 and batch["image"].shape == (N, 3, H, W)
    assert 0 <= batch["image"].min() and batch["image"].max() <= 1
    seg = batch["segment_semantic"]
    assert seg.dtype == torch.int64 and seg.shape == (N, H, W)
    assert seg[0, 0, 0] == 255 and seg[0, 0, 1] == 12
    assert set(seg.unique().tolist()) <= set(range(13)) | {255}
    raw = np.load(tmp_path / "train" / "label" / "1.npy")
    assert torch.equal(seg[1], torch.from_numpy(np.where(raw < 0, 255, raw).astype(np.int64)))
    depth, dmask = batch["depth_zbuffer"], batch["depth_zbuffer_mask"]
    assert depth.shape == dmask.shape == (N, 1, H, W) and dmask.dtype == torch.bool
    assert not dmask[:, :, :2].any() and dmask[:, :, 2:].all()
    raw = np.load(tmp_path / "train" / "depth" / "2.npy")[..., 0]
    assert torch.allclose(depth[2, 0], torch.from_numpy(raw))  # metres, unchanged
    normal, nmask = batch["normal"], batch["normal_mask"]
    assert normal.shape == (N, 3, H, W) and nmask.shape == (N, 1, H, W)
    assert not nmask[:, :, -1].any() and nmask[:, :, :-1].all()
    norms = normal.norm(dim=1)
    assert torch.allclose(norms[:, :-1], torch.ones_like(norms[:, :-1]), atol=1e-5)
    assert (norms[:, -1] == 0).all()


def test_nyuv2_chw_images_subset_tasks_and_get_dataset(tmp_path: Path) -> None:
    _write_nyuv2(tmp_path, "val", chw=True)
    ds = get_dataset("nyuv2", "val", root=tmp_path, tasks=["normal"])
    sample = ds[0]
    assert set(sample) == {"image", "normal", "normal_mask"}
    ref = np.load(tmp_path / "val" / "image" / "0.npy")
    assert torch.allclose(sample["image"], torch.from_numpy(ref))
    assert len(get_dataset("nyuv2", "test", root=tmp_path)) == N  # test -> val fallback


def test_nyuv2_resize(tmp_path: Path) -> None:
    _write_nyuv2(tmp_path)
    s = NYUv2(tmp_path, size=(12, 16))[0]
    assert s["image"].shape == (3, 12, 16) and s["segment_semantic"].shape == (12, 16)
    assert s["depth_zbuffer_mask"].shape == (1, 12, 16) and s["normal"].shape == (3, 12, 16)
    assert set(s["segment_semantic"].unique().tolist()) <= set(range(13)) | {255}
    # invalid zeros never blend into valid depths; valid normals stay unit length
    assert (s["depth_zbuffer"][s["depth_zbuffer_mask"]] >= 0.5).all()
    assert not s["depth_zbuffer_mask"][:, 0].any()
    n = s["normal"].norm(dim=0)[s["normal_mask"][0]]
    assert torch.allclose(n, torch.ones_like(n), atol=1e-5)


def test_nyuv2_batches_drive_a_real_model_losses_and_metrics(tmp_path: Path) -> None:
    from mtl.models import Layout, build_model

    _write_nyuv2(tmp_path, n=2)
    ds = NYUv2(tmp_path)
    model = build_model(Layout.branch_point(1, len(ds.tasks)), list(ds.tasks), ds.task_channels,
                        width=4)
    batch = next(iter(make_loader(ds, batch_size=2)))
    out = model(batch["image"])
    for t in ds.tasks:
        loss = task_loss(t, out[t], batch)
        assert loss.shape == (2,) and torch.isfinite(loss).all() and (loss > 0).all()
        metric = get_task(t).new_metric(ds.task_channels[t])
        metric.update(out[t].detach(), batch[t], batch.get(t + "_mask"))
        assert all(np.isfinite(v) for v in metric.compute().values())


@pytest.mark.parametrize("breakage, match", [
    ("no_split", "split folder"), ("no_modality", "modality folder"),
    ("count", "same indices"), ("name", "integer"), ("shape", "HxWx3"),
    ("label_values", "ids in 0..12"), ("label_float", "non-integer"), ("hw", "pixels"),
    ("depth_dtype", "float depth"), ("pickle", "numeric .npy"),
])
def test_nyuv2_malformed_folder_errors_name_the_path(tmp_path: Path, breakage: str,
                                                     match: str) -> None:
    _write_nyuv2(tmp_path, n=2)
    d = tmp_path / "train"
    expected_path = {"no_split": tmp_path / "val", "no_modality": d / "depth",
                     "count": d / "label", "name": d / "image" / "x.npy",
                     "shape": d / "image" / "0.npy", "label_values": d / "label" / "0.npy",
                     "label_float": d / "label" / "0.npy", "hw": d / "normal" / "0.npy",
                     "depth_dtype": d / "depth" / "0.npy",
                     "pickle": d / "image" / "0.npy"}[breakage]
    if breakage == "no_modality":
        for f in (d / "depth").iterdir():
            f.unlink()
        (d / "depth").rmdir()
    elif breakage == "count":
        (d / "label" / "1.npy").unlink()
    elif breakage == "name":
        np.save(d / "image" / "x.npy", np.zeros((H, W, 3), np.float32))
    elif breakage == "shape":
        np.save(d / "image" / "0.npy", np.zeros((H, W), np.float32))
    elif breakage == "label_values":
        np.save(d / "label" / "0.npy", np.full((H, W), 13, np.int64))
    elif breakage == "label_float":
        np.save(d / "label" / "0.npy", np.full((H, W), 0.5, np.float32))
    elif breakage == "hw":
        np.save(d / "normal" / "0.npy", np.ones((H, W + 1, 3), np.float32) / 2)
    elif breakage == "depth_dtype":
        np.save(d / "depth" / "0.npy", np.ones((H, W), np.int32))
    elif breakage == "pickle":
        np.save(d / "image" / "0.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    split = "val" if breakage == "no_split" else "train"
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        NYUv2(tmp_path, split)
    assert str(expected_path) in str(info.value)


def test_nyuv2_bad_arguments(tmp_path: Path) -> None:
    _write_nyuv2(tmp_path, n=1)
    with pytest.raises(ValueError, match="allowed.*train"):
        NYUv2(tmp_path, "training")
    with pytest.raises(ValueError, match="segment_semantic"):
        NYUv2(tmp_path, tasks=["edge_texture"])
    with pytest.raises(ValueError, match="size"):
        NYUv2(tmp_path, size=(0, 4))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        NYUv2(tmp_path / "nope")
    ds = NYUv2(tmp_path)
    np.save(tmp_path / "train" / "depth" / "0.npy", np.zeros((3, 3, 3), np.float32))
    with pytest.raises(ValueError, match="depth"):  # validated again when loaded later
        ds[0]


TASKONOMY_DOMAINS = {"rgb": "rgb", "segment_semantic": "segmentsemantic",
                     "depth_zbuffer": "depth_zbuffer", "normal": "normal",
                     "edge_texture": "edge_texture", "keypoints2d": "keypoints2d"}


def _write_taskonomy(root: Path, buildings: dict[str, list[tuple[int, int]]],
                     skip: dict[str, int] | None = None) -> None:
    rng = np.random.default_rng(1)
    for building, pvs in buildings.items():
        for folder, domain in TASKONOMY_DOMAINS.items():
            d = root / folder / building
            d.mkdir(parents=True, exist_ok=True)
            for j, (p, v) in enumerate(pvs):
                if skip and skip.get(folder) == j:
                    continue
                name = d / f"point_{p}_view_{v}_domain_{domain}.png"
                if folder == "rgb":
                    arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                elif folder == "segment_semantic":
                    arr = rng.integers(0, 18, (H, W), dtype=np.uint8)
                    arr[0, :3] = (0, 1, 17)
                elif folder == "depth_zbuffer":
                    arr = rng.integers(0, 65535, (H, W), dtype=np.uint16)
                    arr[0, :2] = (65535, 1024)
                elif folder == "normal":
                    arr = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                    arr[0, 0] = (128, 128, 128)
                    arr[0, 1] = (128, 128, 255)
                else:
                    arr = rng.integers(0, 65536, (H, W), dtype=np.uint16)
                    arr[0, :2] = (0, 65535)
                Image.fromarray(arr).save(name)


def test_taskonomy_batch_contract_and_units(tmp_path: Path) -> None:
    _write_taskonomy(tmp_path, {"allensville": [(0, 0), (0, 1), (3, 2)], "beechwood": [(1, 0)]},
                     skip={"normal": 2})
    ds = Taskonomy(tmp_path)
    assert ds.name == "taskonomy" and len(ds) == 3  # point_3_view_2 lacks a normal map
    assert ds.tasks == ("segment_semantic", "depth_zbuffer", "normal", "edge_texture",
                        "keypoints2d")
    assert ds.task_channels == {"segment_semantic": 17, "depth_zbuffer": 1, "normal": 3,
                                "edge_texture": 1, "keypoints2d": 1}
    b = next(iter(make_loader(ds, batch_size=3)))
    assert b["image"].shape == (3, 3, H, W) and b["image"].dtype == torch.float32
    rgb = np.array(Image.open(tmp_path / "rgb/allensville/point_0_view_1_domain_rgb.png"))
    assert torch.allclose(b["image"][1], torch.from_numpy(rgb).permute(2, 0, 1) / 255.0)
    seg = b["segment_semantic"]
    assert seg.dtype == torch.int64 and seg.shape == (3, H, W)
    assert seg[0, 0, :3].tolist() == [255, 0, 16]
    assert set(seg.unique().tolist()) <= set(range(17)) | {255}
    depth, dmask = b["depth_zbuffer"], b["depth_zbuffer_mask"]
    assert depth.shape == dmask.shape == (3, 1, H, W)
    assert not dmask[0, 0, 0, 0] and depth[0, 0, 0, 0] == 0
    assert dmask[0, 0, 0, 1] and depth[0, 0, 0, 1] == pytest.approx(2.0)  # 1024 / 512 m
    normal, nmask = b["normal"], b["normal_mask"]
    assert not nmask[0, 0, 0, 0] and normal[0, :, 0, 0].abs().sum() == 0  # gray = invalid
    assert nmask[0, 0, 0, 1]
    assert torch.allclose(normal[0, :, 0, 1], torch.tensor([0.0, 0.0, 1.0]), atol=1e-2)
    n = normal.norm(dim=1)[nmask[:, 0]]
    assert torch.allclose(n, torch.ones_like(n), atol=1e-5)
    for t in ("edge_texture", "keypoints2d"):
        assert b[t].shape == (3, 1, H, W) and b[t].dtype == torch.float32
        assert b[t][0, 0, 0, :2].tolist() == [0.0, 1.0] and 0 <= b[t].min() <= b[t].max() <= 1


def test_taskonomy_split_subset_resize_and_get_dataset(tmp_path: Path) -> None:
    _write_taskonomy(tmp_path, {"allensville": [(0, 0), (1, 0)], "beechwood": [(2, 5)]})
    (tmp_path / "train.txt").write_text("# training buildings\nallensville\n")
    ds = get_dataset("taskonomy", "train", root=tmp_path, tasks=["depth_zbuffer"], size=16)
    assert len(ds) == 2 and ds.tasks == ("depth_zbuffer",)
    s = ds[1]
    assert set(s) == {"image", "depth_zbuffer", "depth_zbuffer_mask"}
    assert s["image"].shape == (3, 16, 16) and s["depth_zbuffer_mask"].shape == (1, 16, 16)
    assert len(Taskonomy(tmp_path, split=["beechwood"], tasks=["normal"])) == 1
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "rgb" / "nowhere")):
        Taskonomy(tmp_path, split=["nowhere"])
    with pytest.raises(ValueError, match="split.*val.txt"):
        Taskonomy(tmp_path, split="val")
    with pytest.raises(ValueError, match="allowed"):
        Taskonomy(tmp_path, tasks=["scene_class"])
    (tmp_path / "only_rgb" / "rgb").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no task folder"):
        Taskonomy(tmp_path / "only_rgb")


@pytest.mark.parametrize("breakage, match", [
    ("no_folder", "not found"), ("disjoint", "no sample"), ("depth_8bit", "16-bit"),
    ("seg_values", "class ids"), ("rgb_gray", "8-bit RGB"), ("hw", "pixels"),
    ("not_png", "cannot read"), ("duplicate", "same sample"),
])
def test_taskonomy_malformed_folder_errors_name_the_path(tmp_path: Path, breakage: str,
                                                         match: str) -> None:
    _write_taskonomy(tmp_path, {"b": [(0, 0)]})
    f = {k: tmp_path / k / "b" / f"point_0_view_0_domain_{d}.png"
         for k, d in TASKONOMY_DOMAINS.items()}
    named = {"no_folder": tmp_path / "keypoints2d", "disjoint": tmp_path / "normal",
             "depth_8bit": f["depth_zbuffer"], "seg_values": f["segment_semantic"],
             "rgb_gray": f["rgb"], "hw": f["edge_texture"], "not_png": f["normal"],
             "duplicate": tmp_path / "normal" / "b"}[breakage]
    if breakage == "no_folder":
        f["keypoints2d"].unlink()
        (tmp_path / "keypoints2d" / "b").rmdir()
        (tmp_path / "keypoints2d").rmdir()
    elif breakage == "disjoint":
        f["normal"].rename(f["normal"].with_name("point_9_view_0_domain_normal.png"))
    elif breakage == "depth_8bit":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(f["depth_zbuffer"])
    elif breakage == "seg_values":
        Image.fromarray(np.full((H, W), 40, np.uint8)).save(f["segment_semantic"])
    elif breakage == "rgb_gray":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(f["rgb"])
    elif breakage == "hw":
        Image.fromarray(np.zeros((H, W + 2), np.uint16)).save(f["edge_texture"])
    elif breakage == "not_png":
        f["normal"].write_bytes(b"not a png")
    elif breakage == "duplicate":
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
            f["normal"].with_name("point_0_view_0_domain_normal2.png"))
    tasks = ["keypoints2d"] if breakage == "no_folder" else None
    with pytest.raises((ValueError, FileNotFoundError), match=match) as info:
        Taskonomy(tmp_path, tasks=tasks)
    assert str(named) in str(info.value)
