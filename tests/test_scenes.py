"""SyntheticScenes: labels agree with the geometry, determinism, splits, arguments (the
cache: tests/test_scene_cache.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mtl.data import make_loader
from mtl.data import render as render_mod
from mtl.data import scene_geometry as geo
from mtl.data.scenes import TASKS, SyntheticScenes, render_samples, scene_params

SIZE = 32
N = 24


@pytest.fixture(scope="module")
def rendered() -> dict:
    return render_samples("train", np.arange(N), seed=0, size=SIZE, debug=True)


def _camera_points(depth: np.ndarray) -> np.ndarray:
    """Back-project depth [B, H, W] with the intrinsics: camera-frame points [B, H, W, 3]."""
    k = geo.intrinsics(depth.shape[-1])
    v, u = np.mgrid[0:depth.shape[1], 0:depth.shape[2]].astype(np.float64)
    x = (u - k[0, 2]) / k[0, 0]
    y = (v - k[1, 2]) / k[1, 1]
    return np.stack([x * depth, y * depth, depth], axis=-1)


def _world_points(out: dict) -> np.ndarray:
    pts = _camera_points(out["depth_zbuffer"].numpy().astype(np.float64))
    p = out["params"]
    return np.einsum("bij,bhwj->bhwi", p.cam_rot, pts) + p.cam_pos[:, None, None, :]


def _unit_frame(p: geo.SceneParams, b: int, k: int, world: np.ndarray) -> np.ndarray:
    """World points [..., 3] in the unit frame of object (b, k)."""
    c, s = np.cos(p.obj_yaw[b, k]), np.sin(p.obj_yaw[b, k])
    w = world - p.obj_center[b, k]
    local = np.stack([c * w[..., 0] + s * w[..., 1], -s * w[..., 0] + c * w[..., 1], w[..., 2]], -1)
    return local / p.obj_half[b, k]


def _inside(shape: int, q: np.ndarray) -> np.ndarray:
    r2, z = q[..., 0] ** 2 + q[..., 1] ** 2, q[..., 2]
    if shape == geo.SPHERE:
        return r2 + z * z <= 1.0
    if shape == geo.BOX:
        return np.abs(q).max(-1) <= 1.0
    if shape == geo.CYLINDER:
        return (r2 <= 1.0) & (np.abs(z) <= 1.0)
    return (np.sqrt(r2) <= (1.0 - z) / 2.0) & (np.abs(z) <= 1.0)


def _surface_residual(shape: int, q: np.ndarray) -> np.ndarray:
    """Distance-like residual of unit-frame points from the primitive's surface."""
    r, z = np.sqrt(q[..., 0] ** 2 + q[..., 1] ** 2), q[..., 2]
    if shape == geo.SPHERE:
        return np.abs(np.sqrt(r * r + z * z) - 1.0)
    if shape == geo.BOX:
        return np.abs(np.abs(q).max(-1) - 1.0)
    if shape == geo.CYLINDER:
        return np.abs(np.maximum(r, np.abs(z)) - 1.0)
    side = np.abs(r - (1.0 - z) / 2.0)
    base = np.where(r <= 1.0 + 1e-4, np.abs(z + 1.0), np.inf)
    return np.minimum(side, base)


def test_sample_follows_the_batch_contract(tmp_path: Path) -> None:
    ds = SyntheticScenes("val", size=SIZE, length=8, cache_dir=tmp_path)
    assert ds.name == "scenes" and ds.tasks == TASKS and len(ds) == 8
    assert ds.task_channels == {"segment_semantic": 11, "depth_zbuffer": 1, "normal": 3,
                                "edge_texture": 1, "keypoints2d": 1, "scene_class": 8}
    x = ds[3]
    assert set(x) == {"image", *TASKS}
    assert x["image"].dtype == torch.float32 and x["image"].shape == (3, SIZE, SIZE)
    assert 0.0 <= float(x["image"].min()) and float(x["image"].max()) <= 1.0
    assert x["segment_semantic"].dtype == torch.long and x["segment_semantic"].shape == (SIZE, SIZE)
    assert int(x["segment_semantic"].max()) < 11 and int(x["segment_semantic"].min()) >= 0
    for t in ("depth_zbuffer", "edge_texture", "keypoints2d"):
        assert x[t].dtype == torch.float32 and x[t].shape == (1, SIZE, SIZE)
    assert float(x["depth_zbuffer"].min()) > 0
    assert x["normal"].shape == (3, SIZE, SIZE)
    assert torch.allclose(x["normal"].norm(dim=0), torch.ones(SIZE, SIZE), atol=1e-5)
    assert x["scene_class"].dtype == torch.long and x["scene_class"].shape == ()
    batch = next(iter(make_loader(ds, batch_size=4)))
    assert batch["depth_zbuffer"].shape == (4, 1, SIZE, SIZE) and batch["scene_class"].shape == (4,)
    assert torch.equal(ds[-1]["image"], ds[7]["image"])
    with pytest.raises(IndexError):
        ds[8]


def test_normals_are_unit_and_face_the_camera(rendered: dict) -> None:
    n = rendered["normal"].double()
    assert torch.allclose(n.norm(dim=1), torch.ones_like(n[:, 0]), atol=1e-5)
    ray = torch.from_numpy(_camera_points(np.ones((1, SIZE, SIZE))))[0].permute(2, 0, 1)
    assert float((n * ray).sum(1).max()) <= 1e-4          # n . ray < 0: seen from the front


def test_planar_normals_agree_with_normals_from_depth(rendered: dict) -> None:
    pts = _camera_points(rendered["depth_zbuffer"].numpy().astype(np.float64))
    du = pts[:, 1:-1, 2:] - pts[:, 1:-1, :-2]
    dv = pts[:, 2:, 1:-1] - pts[:, :-2, 1:-1]
    fd = np.cross(du, dv)
    fd /= np.linalg.norm(fd, axis=-1, keepdims=True)
    fd *= -np.sign((fd * pts[:, 1:-1, 1:-1]).sum(-1, keepdims=True))     # face the camera
    n = rendered["normal"].numpy().transpose(0, 2, 3, 1).astype(np.float64)
    surf = rendered["surface"].numpy()
    centre_n, centre_s = n[:, 1:-1, 1:-1], surf[:, 1:-1, 1:-1]
    planar = np.ones(centre_s.shape, dtype=bool)   # 3x3 patch on one plane: same surface + normal
    for dy in range(3):
        for dx in range(3):
            nb = (slice(None), slice(dy, dy + SIZE - 2), slice(dx, dx + SIZE - 2))
            planar &= (surf[nb] == centre_s) & ((n[nb] * centre_n).sum(-1) > 1 - 1e-6)
    assert planar.mean() > 0.4
    angle = np.degrees(np.arccos(np.clip((fd * centre_n).sum(-1), -1, 1)))[planar]
    assert np.percentile(angle, 99) < 0.5 and angle.max() < 1.0
    room = planar & (centre_s < 3)
    boxes = planar & (centre_s >= 3)
    assert room.sum() > 1000 and boxes.sum() > 20       # both walls/floor and box faces tested


def test_room_normals_in_world_frame(rendered: dict) -> None:
    p, seg = rendered["params"], rendered["segment_semantic"].numpy()
    world = np.einsum("bij,bjhw->bhwi", p.cam_rot, rendered["normal"].numpy().astype(np.float64))
    assert np.all(world[seg == 0][:, 2] > 1 - 1e-5)                  # floor points up
    assert np.all(world[seg == 2][:, 2] < -1 + 1e-5)                 # ceiling points down
    walls = world[seg == 1]
    assert np.all(np.abs(walls[:, 2]) < 1e-5)
    assert np.all(np.abs(walls[:, :2]).max(1) > 1 - 1e-5)           # axis-aligned walls


def test_depth_lies_on_the_labelled_surface(rendered: dict) -> None:
    p, seg = rendered["params"], rendered["segment_semantic"].numpy()
    slot = rendered["object_slot"].numpy()
    world = _world_points(rendered)
    depth = rendered["depth_zbuffer"].numpy()
    assert depth.min() > 0
    tol = 1e-5 * 10
    room = p.room[:, None, None, :]
    assert np.all(np.abs(world[..., 2][seg == 0]) < tol)
    assert np.all(np.abs(world[..., 2] - room[..., 2])[seg == 2] < tol)
    wall_dist = np.minimum(np.abs(world[..., :2]), np.abs(world[..., :2] - room[..., :2])).min(-1)
    assert np.all(wall_dist[seg == 1] < tol)
    checked = 0
    for b in range(N):
        for k in np.flatnonzero(p.obj_shape[b] >= 0):
            mask = slot[b] == k
            if mask.any():
                q = _unit_frame(p, b, k, world[b][mask])
                assert _surface_residual(int(p.obj_shape[b, k]), q).max() < 1e-3
                checked += 1
    assert checked >= 2 * N


def test_depth_matches_ray_marching_oracle(rendered: dict) -> None:
    """An independent reference: march along random pixel rays and find the first point inside
    an object or outside the room; it must agree with the ray-cast depth and object id."""
    p, depth = rendered["params"], rendered["depth_zbuffer"].numpy()
    slot = rendered["object_slot"].numpy()
    rng = np.random.default_rng(0)
    b = rng.integers(0, N, 400)
    v, u = rng.integers(0, SIZE, 400), rng.integers(0, SIZE, 400)
    obj = slot[b, v, u] >= 0      # oversample object pixels: they are the hard part
    keep = np.concatenate([np.flatnonzero(obj)[:200], np.flatnonzero(~obj)[:100]])
    b, v, u = b[keep], v[keep], u[keep]
    k = geo.intrinsics(SIZE)
    d_cam = np.stack([(u - k[0, 2]) / k[0, 0], (v - k[1, 2]) / k[1, 1], np.ones(len(u))], -1)
    step = 0.002
    t = np.arange(0.05, 14.0, step)
    d_world = np.einsum("nij,nj->ni", p.cam_rot[b], d_cam)
    pts = p.cam_pos[b][:, None] + t[None, :, None] * d_world[:, None]
    hit_slot = np.full(pts.shape[:2], -1)
    stop = np.any((pts < 0) | (pts > p.room[b][:, None]), axis=-1)
    for kk in range(geo.MAX_OBJECTS):
        for i in np.flatnonzero(p.obj_shape[b, kk] >= 0):
            inside = _inside(int(p.obj_shape[b[i], kk]), _unit_frame(p, b[i], kk, pts[i]))
            hit_slot[i] = np.where(inside & (hit_slot[i] < 0), kk, hit_slot[i])
    first = np.argmax(stop | (hit_slot >= 0), axis=1)
    t_ref = t[first]
    err = np.abs(t_ref - depth[b, v, u])
    agree = (err < 2 * step) & (hit_slot[np.arange(len(b)), first] == slot[b, v, u])
    assert agree.mean() > 0.98 and np.median(err) < step


def test_segmentation_matches_the_object_hit(rendered: dict) -> None:
    p, seg = rendered["params"], rendered["segment_semantic"].numpy()
    slot = rendered["object_slot"].numpy()
    assert np.all(seg != 255)                       # every ray hits the room: no unlabeled pixel
    is_obj = slot >= 0
    b_idx = np.broadcast_to(np.arange(N)[:, None, None], slot.shape)
    expected = geo.NUM_ROOM_CLASSES + p.obj_class[b_idx[is_obj], slot[is_obj]]
    assert np.array_equal(seg[is_obj], expected)
    assert np.all(seg[~is_obj] < geo.NUM_ROOM_CLASSES)
    assert np.array_equal(seg[~is_obj], rendered["surface"].numpy()[~is_obj])


def test_scene_class_is_the_largest_visible_object(rendered: dict) -> None:
    p, slot = rendered["params"], rendered["object_slot"].numpy()
    for b in range(N):
        counts = np.bincount(slot[b][slot[b] >= 0], minlength=geo.MAX_OBJECTS)
        assert counts.max() > 0                      # the camera looks at object 0
        assert np.array_equal(counts, rendered["visible_pixels"][b].numpy())
        winners = p.obj_class[b, counts == counts.max()]
        assert int(rendered["scene_class"][b]) in winners


def test_edges_are_sobel_of_the_unshaded_albedo(rendered: dict) -> None:
    alb = rendered["albedo"]
    lum = (0.299 * alb[:, 0] + 0.587 * alb[:, 1] + 0.114 * alb[:, 2])[:, None]
    sx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    pad = torch.nn.functional.pad(lum, (1, 1, 1, 1), mode="replicate")
    g = torch.nn.functional.conv2d(pad, torch.stack([sx, sx.T])[:, None])
    ref = (g.norm(dim=1) / 4).clamp(0, 1)
    assert torch.allclose(rendered["edge_texture"], ref, atol=1e-5)
    assert float(ref.amax()) > 0.3 and float((ref < 0.02).float().mean()) > 0.3   # sparse


def test_keypoints_mark_visible_projections(rendered: dict) -> None:
    kp, heat = rendered["keypoints"], rendered["keypoints2d"].numpy()
    vis = kp["visible"]
    assert vis.any() and (~vis & np.isfinite(kp["z"])).any()
    bb = np.broadcast_to(kp["b"][:, None], vis.shape)
    ui, vi = np.floor(kp["u"] + 0.5).astype(int), np.floor(kp["v"] + 0.5).astype(int)
    assert np.all(heat[bb[vis], vi[vis], ui[vis]] > 0.75)
    assert heat.max() <= 1.0 and heat.min() >= 0.0
    # far (> 4 sigma + 1 px) from every visible keypoint the map is exactly zero
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    for b in range(4):
        sel = vis & (bb == b)
        near = np.zeros((SIZE, SIZE), dtype=bool)
        for u, v in zip(kp["u"][sel], kp["v"][sel]):
            near |= (xx - u) ** 2 + (yy - v) ** 2 < 25
        assert np.all(heat[b][~near] == 0)


def test_same_index_renders_identically_in_any_batch(rendered: dict) -> None:
    alone = render_samples("train", [5], size=SIZE)
    mixed = render_samples("train", [17, 5, 2], size=SIZE)
    for key in alone:
        assert torch.equal(alone[key][0], rendered[key][5]), key
        assert torch.equal(mixed[key][1], rendered[key][5]), key
        assert torch.equal(mixed[key][0], rendered[key][17]), key


def test_rendering_in_chunks_changes_nothing(rendered: dict,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_mod, "CHUNK_RAYS", 5 * SIZE * SIZE)    # 5 scenes per chunk
    chunked = render_samples("train", np.arange(N), size=SIZE, debug=True)
    for key, value in rendered.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(chunked[key], value), key
    def by_object(kp: dict) -> dict:        # rows are per object; their order is per chunk
        order = np.lexsort((kp["k"], kp["b"]))
        return {key: value[order] for key, value in kp.items()}

    ref, got = by_object(rendered["keypoints"]), by_object(chunked["keypoints"])
    for key, value in ref.items():
        assert np.array_equal(got[key], value), key


def test_dataset_is_deterministic_and_independent_of_length(tmp_path: Path) -> None:
    a = SyntheticScenes("train", size=SIZE, length=6, cache_dir=tmp_path / "a")
    b = SyntheticScenes("train", size=SIZE, length=10, cache_dir=tmp_path / "b")
    ref = render_samples("train", [4], size=SIZE)
    for i in range(6):
        for key in a[i]:
            assert torch.equal(a[i][key], b[i][key]), key
    assert torch.equal(a[4]["image"], torch.floor(ref["image"][0] * 255 + 0.5) / 255)
    assert torch.equal(a[4]["segment_semantic"], ref["segment_semantic"][0])
    assert torch.allclose(a[4]["depth_zbuffer"][0], ref["depth_zbuffer"][0], rtol=1e-3)
    other_seed = SyntheticScenes("train", size=SIZE, length=6, seed=1, cache_dir=tmp_path / "a")
    assert not torch.equal(other_seed[0]["image"], a[0]["image"])


def test_splits_never_overlap() -> None:
    keys = {s: set(geo.scene_keys(s, 0, np.arange(5000)).tolist())
            for s in ("train", "val", "test")}
    assert all(len(k) == 5000 for k in keys.values())
    assert not (keys["train"] & keys["val"]) and not (keys["train"] & keys["test"])
    assert not (keys["val"] & keys["test"])
    images = [render_samples(s, np.arange(8), size=16)["image"] for s in ("train", "val", "test")]
    flat = torch.cat(images).flatten(1)
    assert torch.cdist(flat, flat).add(torch.eye(24) * 1e9).min() > 1.0   # no two alike
    cams = np.concatenate([scene_params(s, np.arange(8)).cam_pos for s in ("train", "val", "test")])
    assert len(np.unique(cams.round(9), axis=0)) == 24


def test_tasks_subset(tmp_path: Path) -> None:
    ds = SyntheticScenes("val", size=16, length=3, cache_dir=tmp_path,
                         tasks=("scene_class", "depth_zbuffer"))
    assert ds.tasks == ("scene_class", "depth_zbuffer")
    assert ds.task_channels == {"scene_class": 8, "depth_zbuffer": 1}
    assert set(ds[0]) == {"image", "scene_class", "depth_zbuffer"}


@pytest.mark.parametrize("kwargs, field", [
    ({"split": "training"}, "split"), ({"split": None}, "split"),
    ({"size": 0}, "size"), ({"size": "64"}, "size"), ({"size": True}, "size"),
    ({"size": 4096}, "size"), ({"length": 0}, "length"), ({"length": 2.5}, "length"),
    ({"seed": -1}, "seed"), ({"tasks": ["depth"]}, "tasks"), ({"tasks": "normal"}, "tasks"),
    ({"tasks": []}, "tasks"), ({"cache_dir": 3}, "cache_dir"),
])
def test_bad_arguments_raise_before_any_work(kwargs: dict, field: str, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(render_mod, "render", lambda *a, **k: pytest.fail("rendered"))
    kwargs = {"cache_dir": tmp_path, **kwargs}
    with pytest.raises(ValueError, match=field) as err:
        SyntheticScenes(**kwargs)
    if field in ("split", "tasks"):
        assert "allowed" in str(err.value)


def test_bad_indices_raise() -> None:
    for bad in ([-1], [[1, 2]], [0.5]):
        with pytest.raises(ValueError, match="indices"):
            render_samples("train", bad, size=16)
    with pytest.raises(ValueError, match="split"):
        scene_params("dev", [0])


def test_genuine_multi_task_problem() -> None:
    out = render_samples("val", np.arange(64), size=SIZE, debug=True)
    assert len(torch.unique(out["scene_class"])) >= 6                 # classes vary
    assert len(torch.unique(out["segment_semantic"])) == geo.NUM_SEG_CLASSES
    depth = out["depth_zbuffer"].flatten(1)
    assert float(depth.std(1).min()) > 0.2 and float(depth.max() / depth.min()) > 4
    assert float(out["image"].flatten(1).std(1).min()) > 0.03
    assert float(out["edge_texture"].mean()) > 0.01
    assert float(out["keypoints2d"].flatten(1).amax(1).min()) > 0.5   # every image has some
    n = out["normal"]
    assert float(n[:, 0].std()) > 0.2 and float(n[:, 1].std()) > 0.2
    # classes of the same shape are told apart by colour (mean albedo over their pixels)
    p, slot = out["params"], out["object_slot"].numpy()
    albedo = out["albedo"].numpy().transpose(0, 2, 3, 1)
    means = {}
    for c in range(geo.NUM_OBJECT_CLASSES):
        b, k = np.nonzero(p.obj_class == c)
        pix = np.concatenate([albedo[bi][slot[bi] == ki] for bi, ki in zip(b, k)])
        means[c] = pix.mean(0)
    for i in range(0, geo.NUM_OBJECT_CLASSES, 2):       # table lists same-shape classes in pairs
        assert geo.CLASS_TABLE[i].shape == geo.CLASS_TABLE[i + 1].shape
        assert np.abs(means[i] - means[i + 1]).max() > 0.1


def test_subset_keeps_the_dataset_contract_attributes() -> None:
    from mtl.data import subset

    data = SyntheticScenes("val", size=16, length=6, tasks=["depth_zbuffer", "scene_class"])
    part = subset(data, 2, 5)
    assert len(part) == 3
    assert (part.name, part.tasks, part.task_channels) == (data.name, data.tasks,
                                                           data.task_channels)
    assert torch.equal(part[0]["depth_zbuffer"], data[2]["depth_zbuffer"])
