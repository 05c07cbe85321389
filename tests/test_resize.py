"""The DGBA authors' resize protocol in the NYUv2 / Taskonomy loaders (`resize`), Taskonomy's
class weights (`class_weights`), the options' up-front checks, and predictions scored at label
resolution. Expected values come from numpy transcriptions of cv2's INTER_LINEAR (half-pixel
centres, no antialiasing) and INTER_NEAREST (source floor(i * in / out)) written here."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_real_data import H, W, _write_nyuv2, _write_taskonomy

from mtl.data import build_split, check_dataset_options, get_dataset, make_loader
from mtl.data.nyuv2 import NYUv2
from mtl.data.taskonomy import Taskonomy
from mtl.tasks import get_task, task_loss


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    return np.floor(np.arange(n_out) * (n_in / n_out)).astype(int)


def cv2_nearest(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[..., H, W] -> [..., h, w] by INTER_NEAREST."""
    rows, cols = nearest_index(arr.shape[-2], size[0]), nearest_index(arr.shape[-1], size[1])
    return arr[..., rows, :][..., cols]


def _linear_axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(int), n_in - 1)
    return lo, np.minimum(lo + 1, n_in - 1), src - lo


def cv2_linear(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[C, H, W] -> [C, h, w] by INTER_LINEAR."""
    r0, r1, fr = _linear_axis(img.shape[1], size[0])
    c0, c1, fc = _linear_axis(img.shape[2], size[1])
    top = img[:, r0][:, :, c0] * (1 - fc) + img[:, r0][:, :, c1] * fc
    bottom = img[:, r1][:, :, c0] * (1 - fc) + img[:, r1][:, :, c1] * fc
    return top * (1 - fr[:, None]) + bottom * fr[:, None]


@pytest.mark.parametrize("size", [(12, 16), (10, 21), (33, 33)])  # down, uneven, up
def test_nyuv2_resize_is_bilinear_image_and_nearest_labels(tmp_path: Path, size) -> None:
    _write_nyuv2(tmp_path, n=1)
    raw, out = NYUv2(tmp_path)[0], NYUv2(tmp_path, resize=list(size))[0]
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {k: size for k in raw}
    assert {k: v.dtype for k, v in out.items()} == {k: v.dtype for k, v in raw.items()}
    assert np.allclose(out["image"].numpy(), cv2_linear(raw["image"].numpy(), size), atol=1e-5)
    for key in ("segment_semantic", "depth_zbuffer", "depth_zbuffer_mask", "normal",
                "normal_mask"):  # nearest: no depth or normal is blended with an invalid one
        assert np.array_equal(out[key].numpy(), cv2_nearest(raw[key].numpy(), size)), key


def test_taskonomy_resize_goes_through_256_nearest_first(tmp_path: Path) -> None:
    _write_taskonomy(tmp_path, {"b": [(0, 0)]})
    raw = Taskonomy(tmp_path)[0]
    out = Taskonomy(tmp_path, resize=224)[0]
    base = {k: cv2_nearest(v.numpy(), (256, 256)) for k, v in raw.items()}
    assert np.allclose(out["image"].numpy(), cv2_linear(base["image"], (224, 224)), atol=1e-5)
    for key in raw:
        assert out[key].shape[-2:] == (224, 224)
        if key != "image":
            assert np.array_equal(out[key].numpy(), cv2_nearest(base[key], (224, 224))), key


def test_size_and_resize_exclude_each_other(tmp_path: Path) -> None:
    _write_nyuv2(tmp_path, n=1)
    with pytest.raises(ValueError, match="nyuv2 resize: give either size"):
        NYUv2(tmp_path, size=8, resize=8)
    with pytest.raises(ValueError, match=r"nyuv2 resize: expected .*\(height, width\)"):
        NYUv2(tmp_path, resize=(0, 4))


# --- class weights --------------------------------------------------------------------------
WEIGHTS = np.linspace(0.5, 2.1, 17).astype(np.float32)


@pytest.mark.parametrize("kind", ["npy", "json"])
def test_class_weights_make_the_segmentation_mask_a_weight_map(tmp_path: Path, kind) -> None:
    _write_taskonomy(tmp_path / "data", {"b": [(0, 0), (1, 0)]})
    path = tmp_path / f"w.{kind}"
    if kind == "npy":
        np.save(path, WEIGHTS)
    else:
        path.write_text(json.dumps(WEIGHTS.tolist()))
    ds = Taskonomy(tmp_path / "data", tasks=["segment_semantic", "normal"], class_weights=path)
    s = ds[0]
    seg, weight = s["segment_semantic"], s["segment_semantic_mask"]
    assert weight.dtype == torch.float32 and weight.shape == seg.shape == (H, W)
    assert weight[0, 0] == 0 and seg[0, 0] == 255  # unlabelled: weight 0
    labelled = seg != 255
    assert torch.allclose(weight[labelled], torch.from_numpy(WEIGHTS)[seg[labelled]])
    resized = Taskonomy(tmp_path / "data", tasks=["segment_semantic"], class_weights=path,
                        resize=(7, 9))[1]
    expected = np.where(resized["segment_semantic"].numpy() == 255, 0.0,
                        WEIGHTS[np.minimum(resized["segment_semantic"].numpy(), 16)])
    assert np.allclose(resized["segment_semantic_mask"].numpy(), expected)
    batch = next(iter(make_loader(ds, batch_size=2)))
    loss = task_loss("segment_semantic", torch.randn(2, 17, H, W), batch)
    assert loss.shape == (2,) and torch.isfinite(loss).all()


@pytest.mark.parametrize("content, words", [
    (WEIGHTS[:16], "holds"), (-WEIGHTS, "holds"), (np.zeros(17), "not all 0"),
    (np.array([np.nan] * 17), "holds"), ("text", "cannot read"), ("pickle", "cannot read"),
])
def test_bad_class_weight_files_are_refused_up_front(tmp_path: Path, content, words) -> None:
    _write_taskonomy(tmp_path / "data", {"b": [(0, 0)]})
    path = tmp_path / ("w.txt" if isinstance(content, str) and content == "text" else "w.npy")
    if isinstance(content, str) and content == "text":
        path.write_text("1 2 3")
    elif isinstance(content, str):
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    else:
        np.save(path, content)
    with pytest.raises(ValueError, match=words) as info:
        check_dataset_options("taskonomy", {"root": str(tmp_path / "data"),
                                            "class_weights": str(path)},
                              tasks=["segment_semantic"])
    assert str(info.value).startswith("dataset.class_weights:") and str(path) in str(info.value)
    with pytest.raises(ValueError, match=words):
        Taskonomy(tmp_path / "data", class_weights=path)


def test_dataset_options_accept_resize_and_weights(tmp_path: Path) -> None:
    _write_nyuv2(tmp_path / "nyu", "train", n=2)
    _write_nyuv2(tmp_path / "nyu", "val", n=2)
    _write_taskonomy(tmp_path / "tk", {"b": [(0, 0), (1, 0), (2, 0)]})
    np.save(tmp_path / "w.npy", WEIGHTS)
    sizes = {"train": 1, "val": 1, "test": 1}
    check_dataset_options("nyuv2", {"root": str(tmp_path / "nyu"), "resize": [321, 321]},
                          tasks=["normal"], split_sizes=sizes)
    options = {"root": str(tmp_path / "tk"), "resize": [224, 224],
               "class_weights": str(tmp_path / "w.npy")}
    check_dataset_options("taskonomy", options, tasks=["segment_semantic"], split_sizes=sizes)
    test = build_split("taskonomy", "test", options=options, tasks=["segment_semantic"],
                       split_sizes=sizes)
    assert test[0]["segment_semantic_mask"].shape == (224, 224)
    nyu = build_split("nyuv2", "test", options={"root": str(tmp_path / "nyu"), "resize": 17},
                      tasks=["normal"], split_sizes=sizes)
    assert nyu[0]["image"].shape == (3, 17, 17)
    for options, key, words in [
        ({"size": 8, "resize": 8}, "resize", "either size"),
        ({"resize": [321]}, "resize", r"\(height, width\)"),
        ({"resize": "big"}, "resize", "positive int"),
    ]:
        with pytest.raises(ValueError, match=words) as info:
            check_dataset_options("nyuv2", {"root": str(tmp_path / "nyu"), **options})
        assert str(info.value).startswith(f"dataset.{key}:")
    with pytest.raises(ValueError, match="^dataset.class_weights: weigh segment_semantic"):
        check_dataset_options("taskonomy", {"root": str(tmp_path / "tk"),
                                            "class_weights": str(tmp_path / "w.npy")},
                              tasks=["normal"])


def test_deeplab_predictions_are_scored_at_label_resolution(tmp_path: Path) -> None:
    """With resize, labels are at the input size; the tree's 1/8 maps reach that size by
    nearest resizing, as the authors' metrics resize predictions to the label size."""
    from mtl.models import Layout, build_task_model

    _write_nyuv2(tmp_path, n=2)
    ds = get_dataset("nyuv2", "train", root=tmp_path, resize=(33, 33))
    torch.manual_seed(0)
    model = build_task_model("deeplab_resnet34", tasks=list(ds.tasks),
                             task_channels=ds.task_channels, options={"aspp_channels": 4},
                             layout=str(Layout.from_treemtl_index(0, 3))).eval()
    raw = {}
    model.heads["normal"].register_forward_hook(lambda m, i, o: raw.update(normal=o))
    batch = next(iter(make_loader(ds, batch_size=2)))
    with torch.no_grad():
        out = model(batch["image"])
    assert raw["normal"].shape[-2:] == (5, 5)  # output stride 8
    assert torch.equal(out["normal"], torch.from_numpy(cv2_nearest(raw["normal"].numpy(),
                                                                   (33, 33))))
    for t in ds.tasks:
        assert out[t].shape[-2:] == batch[t].shape[-2:] == (33, 33)
        assert torch.isfinite(task_loss(t, out[t], batch)).all()
        metric = get_task(t).new_metric(ds.task_channels[t])
        metric.update(out[t], batch[t], batch.get(t + "_mask"))
        assert all(np.isfinite(v) for v in metric.compute().values())



def test_class_weight_maps_make_the_segmentation_loss_a_weighted_mean():
    """A floating segment_semantic_mask (Taskonomy's class weights) weighs each pixel's CE:
    sum(w * CE) / sum(w) over valid pixels, as the authors' loss; a bool mask stays a plain
    mean over the pixels it keeps."""
    import torch.nn.functional as F
    from mtl.task_losses import segmentation_loss, segmentation_pixels, masked_sums
    torch.manual_seed(0)
    pred = torch.randn(2, 4, 3, 3)
    target = torch.randint(0, 4, (2, 3, 3))
    target[0, 0, 0] = 255
    weights = torch.rand(2, 3, 3) + 0.1
    weights[1, 1, 1] = 0.0
    ce = F.cross_entropy(pred, target.clamp_max(3), reduction="none")
    valid = (target != 255) & (weights > 0)
    want = torch.stack([(ce[b] * weights[b])[valid[b]].sum() / weights[b][valid[b]].sum()
                        for b in range(2)])
    assert torch.allclose(segmentation_loss(pred, target, weights), want)
    total, count = masked_sums(*segmentation_pixels(pred, target, weights))
    assert torch.allclose(count, torch.stack([weights[b][valid[b]].sum() for b in range(2)]))
    plain = torch.stack([ce[b][valid[b]].mean() for b in range(2)])
    assert torch.allclose(segmentation_loss(pred, target, weights > 0), plain)
    assert not torch.allclose(plain, want)
