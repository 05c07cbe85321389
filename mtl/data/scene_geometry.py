"""Scene parameters of the synthetic multi-task dataset: classes, camera, hashing, sampling.

A scene is a box-shaped room (floor, walls, ceiling) holding 2-6 primitives that stand on the
floor, a pinhole camera 1.3-2.6 m from object 0 looking at it, and one point light under the
ceiling. The pinhole intrinsics and each primitive's keypoints are defined here too.
Everything here is plain numpy (float64) and vectorised over a batch of scenes; the
renderer (`mtl.data.render`) turns a `SceneParams` into pixels and labels.

Determinism: sample i of a split draws all its numbers from a SplitMix64 stream seeded by
`scene_keys(split, seed, [i])`, a hash of (split, seed, index). Every scene uses a fixed budget
of `NUM_UNIFORMS` draws at fixed positions, so a scene never depends on which batch, slice or
length it was generated with, and the splits are different hash streams.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, fields

import numpy as np

GEOMETRY_VERSION = 2

ROOM_CLASSES = ("floor", "wall", "ceiling")
OBJECT_CLASSES = ("ball", "globe", "crate", "slab", "barrel", "pillar", "cone", "spire")
NUM_ROOM_CLASSES = len(ROOM_CLASSES)
NUM_OBJECT_CLASSES = len(OBJECT_CLASSES)
NUM_SEG_CLASSES = NUM_ROOM_CLASSES + NUM_OBJECT_CLASSES   # object class c has seg label 3 + c
MIN_OBJECTS, MAX_OBJECTS = 2, 6
NUM_SURFACES = NUM_ROOM_CLASSES + MAX_OBJECTS               # floor, wall, ceiling, object slots
FOV_DEG = 60.0                                              # horizontal = vertical (square images)

# Primitive shapes. Each lives in a unit object frame inside [-1, 1]^3, scaled by its half
# extents and rotated by a yaw about the world z axis (z up).
SPHERE, CYLINDER, CONE, BOX = 0, 1, 2, 3
SHAPES = ("sphere", "cylinder", "cone", "box")
# Procedural textures, evaluated on 3-D surface coordinates (metres, object or world frame).
PLAIN, CHECKER, STRIPES, MARBLE = 0, 1, 2, 3
TEXTURES = ("plain", "checker", "stripes", "marble")

# Surface parameter columns (see `SceneParams.surfaces`).
SURF_COLOR_A, SURF_COLOR_B = slice(0, 3), slice(3, 6)
SURF_TEX, SURF_FREQ, SURF_PHASE = 6, 7, 8
SURF_DIR = slice(9, 12)
NUM_SURF_PARAMS = 12


@dataclass(frozen=True)
class ObjectClass:
    """One semantic object class: a shape family with its own size, colour and texture."""
    name: str
    shape: int
    radius: tuple[float, float]        # half width in x and y (drawn independently for boxes)
    half_height: tuple[float, float]   # ignored for spheres (half height = radius)
    hue: float
    sat: tuple[float, float]
    val: tuple[float, float]
    texture: int
    freq: tuple[float, float]          # texture frequency, cycles per metre
    second: float                      # colour B: < 1 darker copy of A (factor), 1 = off-white


CLASS_TABLE: tuple[ObjectClass, ...] = (
    ObjectClass("ball", SPHERE, (0.20, 0.34), (0, 0), 0.00, (0.75, 0.95), (0.75, 0.95), MARBLE,
                (1.5, 2.5), 0.65),
    ObjectClass("globe", SPHERE, (0.36, 0.50), (0, 0), 0.60, (0.60, 0.85), (0.60, 0.90), CHECKER,
                (3.0, 5.0), 1.0),
    ObjectClass("crate", BOX, (0.25, 0.40), (0.25, 0.40), 0.08, (0.55, 0.75), (0.45, 0.65),
                STRIPES, (4.0, 6.0), 0.6),
    ObjectClass("slab", BOX, (0.30, 0.40), (0.06, 0.12), 0.15, (0.60, 0.80), (0.80, 0.95), MARBLE,
                (2.0, 3.0), 0.7),
    ObjectClass("barrel", CYLINDER, (0.25, 0.38), (0.30, 0.55), 0.33, (0.50, 0.80), (0.40, 0.70),
                STRIPES, (3.0, 5.0), 0.55),
    ObjectClass("pillar", CYLINDER, (0.09, 0.16), (0.60, 1.00), 0.00, (0.00, 0.10), (0.75, 0.95),
                CHECKER, (4.0, 6.0), 0.35),
    ObjectClass("cone", CONE, (0.22, 0.36), (0.30, 0.50), 0.07, (0.85, 1.00), (0.90, 1.00),
                STRIPES, (3.0, 4.0), 1.0),
    ObjectClass("spire", CONE, (0.12, 0.20), (0.60, 1.00), 0.78, (0.50, 0.75), (0.50, 0.80),
                CHECKER, (4.0, 6.0), 1.0),
)
assert len(CLASS_TABLE) == NUM_OBJECT_CLASSES

# Layout of the object region: a 3x3 grid of cells centred in the room; one object per cell,
# jittered so that footprints never overlap and the camera ring stays outside the region.
GRID, CELL = 3, 1.3
CAM_RING = (3.0, 3.3)           # fallback camera distance from the room centre (horizontal)
CAM_DIST = (1.3, 2.6)           # preferred horizontal distance from object 0
CAM_TRIES, CAM_CLEARANCE = 8, 0.25
CAM_HEIGHT = (1.0, 2.0)
ROOM_XY, ROOM_Z = (7.0, 9.0), (2.7, 3.3)

# Positions of the per-scene uniforms in the stream.
_U_ROOM, _U_NOBJ, _U_CAM, _U_TARGET, _U_LIGHT = 0, 3, 4, 7, 10
_U_CELLS = 15
_U_SURF = _U_CELLS + GRID * GRID      # 3 room surfaces x 8
_U_OBJ = _U_SURF + 3 * 8               # MAX_OBJECTS x 16
_PER_OBJ = 16
_U_CAM_TRY = _U_OBJ + MAX_OBJECTS * _PER_OBJ
NUM_UNIFORMS = _U_CAM_TRY + 2 * CAM_TRIES

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _keypoint_table() -> tuple[np.ndarray, np.ndarray]:
    """Unit-frame keypoints [4 shapes, 8, 3] and their validity [4, 8]."""
    ring = [(math.cos(a), math.sin(a)) for a in (0.0, math.pi / 2, math.pi, 3 * math.pi / 2)]
    pts = {
        SPHERE: [(0.0, 0.0, 1.0)] + [(x, y, 0.0) for x, y in ring],
        CYLINDER: [(x, y, z) for z in (-1.0, 1.0) for x, y in ring],
        CONE: [(0.0, 0.0, 1.0)] + [(x, y, -1.0) for x, y in ring],
        BOX: [(x, y, z) for x in (-1.0, 1.0) for y in (-1.0, 1.0) for z in (-1.0, 1.0)],
    }
    table, valid = np.zeros((4, 8, 3)), np.zeros((4, 8), dtype=bool)
    for shape, p in pts.items():
        table[shape, :len(p)] = p
        valid[shape, :len(p)] = True
    return table, valid


KEYPOINTS, KEYPOINT_VALID = _keypoint_table()   # per shape, unit object frame


def focal_length(size: int) -> float:
    """Focal length in pixels of the fixed-FOV pinhole camera for square images of `size`."""
    return (size / 2.0) / math.tan(math.radians(FOV_DEG) / 2.0)


def intrinsics(size: int) -> np.ndarray:
    """3x3 pinhole matrix K (principal point at the image centre)."""
    f, c = focal_length(size), (size - 1) / 2.0
    return np.array([[f, 0.0, c], [0.0, f, c], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class SceneParams:
    """A batch of B scenes (numpy arrays, float64 unless noted), K = MAX_OBJECTS slots.

    cam_rot is camera-to-world with columns (right, down, forward): the OpenCV camera frame.
    Inactive object slots have shape = cls = -1. surfaces[b, s] holds the texture parameters
    of surface s (0 floor, 1 wall, 2 ceiling, 3 + k object slot k), columns as SURF_*.
    """
    room: np.ndarray          # [B, 3] extents (x, y, z); the room is [0, room]
    cam_pos: np.ndarray       # [B, 3]
    cam_rot: np.ndarray       # [B, 3, 3]
    light_pos: np.ndarray     # [B, 3]
    ambient: np.ndarray       # [B]
    diffuse: np.ndarray       # [B]
    obj_shape: np.ndarray     # [B, K] int64
    obj_class: np.ndarray     # [B, K] int64
    obj_center: np.ndarray    # [B, K, 3]
    obj_yaw: np.ndarray       # [B, K]
    obj_half: np.ndarray      # [B, K, 3] half extents
    surfaces: np.ndarray      # [B, NUM_SURFACES, NUM_SURF_PARAMS]

    @property
    def batch(self) -> int:
        return int(self.room.shape[0])

    def take(self, rows: slice | np.ndarray) -> "SceneParams":
        """The scenes at `rows` (a slice or index array) as a new batch."""
        return SceneParams(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 output function (uint64 arrays wrap modulo 2^64)."""
    x = x.astype(np.uint64, copy=True)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def scene_keys(split: str, seed: int, indices: np.ndarray | list[int]) -> np.ndarray:
    """uint64 seed of each sample's generator: a hash of (split, seed, index)."""
    tag = int.from_bytes(hashlib.sha256(f"mtlsweep.scenes/{split}".encode()).digest()[:8], "little")
    idx = np.asarray(indices, dtype=np.uint64).reshape(-1)
    head = _mix(np.array([tag], dtype=np.uint64) ^ np.array([seed % 2**64], dtype=np.uint64))
    return _mix(_mix(head + _GOLDEN) ^ idx)


def uniforms(keys: np.ndarray, n: int) -> np.ndarray:
    """[B, n] uniforms in [0, 1): the first n outputs of SplitMix64 seeded with each key."""
    steps = (np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    bits = _mix(keys.astype(np.uint64)[:, None] + steps)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)


def _lerp(u: np.ndarray, lo: float | np.ndarray, hi: float | np.ndarray) -> np.ndarray:
    return lo + (hi - lo) * u


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB, all inputs in [0, 1]; returns [..., 3]."""
    h6 = (h % 1.0) * 6.0
    k = np.stack([(5.0 + h6) % 6.0, (3.0 + h6) % 6.0, (1.0 + h6) % 6.0], axis=-1)
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return v[..., None] * (1.0 - s[..., None] * ramp)


def look_at(cam: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world rotations [B, 3, 3] (columns right, down, forward) with zero roll."""
    fwd = target - cam
    fwd /= np.linalg.norm(fwd, axis=-1, keepdims=True)
    up = np.broadcast_to(np.array([0.0, 0.0, 1.0]), fwd.shape)
    right = np.cross(fwd, up)
    right /= np.linalg.norm(right, axis=-1, keepdims=True)
    down = np.cross(fwd, right)
    return np.stack([right, down, fwd], axis=-1)


def _room_surfaces(u: np.ndarray) -> np.ndarray:
    """[B, 3, NUM_SURF_PARAMS] texture parameters of floor, walls and ceiling."""
    b = u.shape[0]
    out = np.zeros((b, NUM_ROOM_CLASSES, NUM_SURF_PARAMS))
    # (texture choices, hue range, saturation, value) per room surface
    looks = (((CHECKER, STRIPES, MARBLE), (0.0, 1.0), (0.10, 0.45), (0.35, 0.75)),
             ((PLAIN, STRIPES, MARBLE), (0.0, 1.0), (0.05, 0.30), (0.55, 0.90)),
             ((PLAIN, MARBLE), (0.0, 1.0), (0.00, 0.10), (0.80, 0.95)))
    for s, (texs, hue, sat, val) in enumerate(looks):
        v = u[:, 8 * s:8 * s + 8]
        tex = np.asarray(texs)[np.minimum((v[:, 0] * len(texs)).astype(np.int64), len(texs) - 1)]
        col_a = hsv_to_rgb(_lerp(v[:, 1], *hue), _lerp(v[:, 2], *sat), _lerp(v[:, 3], *val))
        out[:, s, SURF_COLOR_A] = col_a
        out[:, s, SURF_COLOR_B] = col_a * _lerp(v[:, 4], 0.55, 0.8)[:, None]
        out[:, s, SURF_TEX] = tex
        out[:, s, SURF_FREQ] = _lerp(v[:, 5], 0.6, 2.0)
        out[:, s, SURF_PHASE] = _lerp(v[:, 6], 0.2, 0.8)
        along_x = v[:, 7] < 0.5   # planks / stripes along x or y (vertical stripes on walls)
        out[:, s, 9] = np.where(along_x, 1.0, 0.0)
        out[:, s, 10] = np.where(along_x, 0.0, 1.0)
    return out


def sample_scenes(keys: np.ndarray) -> SceneParams:
    """Scene parameters for each key (from `scene_keys`), vectorised over the batch."""
    keys = np.asarray(keys, dtype=np.uint64).reshape(-1)
    u = uniforms(keys, NUM_UNIFORMS)
    b, k = keys.shape[0], MAX_OBJECTS
    room = np.stack([_lerp(u[:, 0], *ROOM_XY), _lerp(u[:, 1], *ROOM_XY),
                     _lerp(u[:, 2], *ROOM_Z)], axis=-1)
    centre = room[:, :2] / 2.0
    n_obj = MIN_OBJECTS + np.minimum((u[:, _U_NOBJ] * (MAX_OBJECTS - MIN_OBJECTS + 1))
                                     .astype(np.int64), MAX_OBJECTS - MIN_OBJECTS)
    active = np.arange(k)[None, :] < n_obj[:, None]

    # objects: class, size, cell position, yaw, texture
    uo = u[:, _U_OBJ:_U_CAM_TRY].reshape(b, k, _PER_OBJ)
    cls = np.minimum((uo[..., 0] * NUM_OBJECT_CLASSES).astype(np.int64), NUM_OBJECT_CLASSES - 1)
    table = {f: np.array([getattr(c, f) for c in CLASS_TABLE])
             for f in ("shape", "radius", "half_height", "hue", "sat", "val", "texture", "freq",
                       "second")}
    shape = table["shape"][cls]
    rad, hh = table["radius"][cls], table["half_height"][cls]
    rx = _lerp(uo[..., 1], rad[..., 0], rad[..., 1])
    ry = np.where(shape == BOX, _lerp(uo[..., 2], rad[..., 0], rad[..., 1]), rx)
    rz = np.where(shape == SPHERE, rx, _lerp(uo[..., 3], hh[..., 0], hh[..., 1]))
    half = np.stack([rx, ry, rz], axis=-1)
    yaw = uo[..., 4] * 2.0 * np.pi
    footprint = np.where(shape == BOX, np.hypot(rx, ry), rx)
    cells = np.argsort(u[:, _U_CELLS:_U_CELLS + GRID * GRID], axis=1)[:, :k]
    cell_xy = (np.stack([cells % GRID, cells // GRID], axis=-1) - (GRID - 1) / 2.0) * CELL
    slack = np.maximum(CELL / 2.0 - footprint - 0.03, 0.0)[..., None]
    xy = centre[:, None, :] + cell_xy + (2.0 * uo[..., 5:7] - 1.0) * slack
    center = np.concatenate([xy, rz[..., None]], axis=-1)   # resting on the floor

    hue = table["hue"][cls] + (uo[..., 7] - 0.5) * 0.06
    sat = _lerp(uo[..., 8], table["sat"][cls][..., 0], table["sat"][cls][..., 1])
    val = _lerp(uo[..., 9], table["val"][cls][..., 0], table["val"][cls][..., 1])
    col_a = hsv_to_rgb(hue, sat, val)
    second = table["second"][cls][..., None]
    col_b = np.where(second >= 1.0, np.array([0.93, 0.93, 0.9]), col_a * second)
    col_b = col_b * _lerp(uo[..., 10], 0.9, 1.0)[..., None]
    surf_obj = np.zeros((b, k, NUM_SURF_PARAMS))
    surf_obj[..., SURF_COLOR_A] = col_a
    surf_obj[..., SURF_COLOR_B] = col_b
    surf_obj[..., SURF_TEX] = table["texture"][cls]
    surf_obj[..., SURF_FREQ] = _lerp(uo[..., 11], table["freq"][cls][..., 0],
                                     table["freq"][cls][..., 1])
    surf_obj[..., SURF_PHASE] = _lerp(uo[..., 12], 0.2, 0.8)
    # stripes run around the object (bands along its height); marble veins are tilted
    tilt = uo[..., 13] * 2.0 * np.pi
    marble = table["texture"][cls] == MARBLE
    surf_obj[..., 9] = np.where(marble, 0.6 * np.cos(tilt), 0.0)
    surf_obj[..., 10] = np.where(marble, 0.6 * np.sin(tilt), 0.0)
    surf_obj[..., 11] = np.where(marble, 0.8, 1.0)
    surfaces = np.concatenate([_room_surfaces(u[:, _U_SURF:_U_OBJ]), surf_obj], axis=1)

    # camera looking at object 0 (so >= 1 object is always visible) from the first of
    # CAM_TRIES random spots near it that is clear of every object and of the walls; the
    # fallback, a spot on a ring outside the object region, is always clear
    ang = u[:, _U_CAM] * 2.0 * np.pi
    ring = _lerp(u[:, _U_CAM + 1], *CAM_RING)
    cam_xy = np.stack([centre[:, 0] + ring * np.cos(ang), centre[:, 1] + ring * np.sin(ang)], -1)
    ut = u[:, _U_CAM_TRY:_U_CAM_TRY + 2 * CAM_TRIES].reshape(b, CAM_TRIES, 2)
    dist, theta = _lerp(ut[..., 0], *CAM_DIST), ut[..., 1] * 2.0 * np.pi
    tries = center[:, None, 0, :2] + np.stack([dist * np.cos(theta), dist * np.sin(theta)], -1)
    gap = np.linalg.norm(tries[:, :, None, :] - xy[:, None, :, :], axis=-1)   # [B, T, K]
    clear = np.all((gap >= footprint[:, None, :] + CAM_CLEARANCE) | ~active[:, None, :], axis=-1)
    clear &= np.all((tries >= CAM_CLEARANCE) & (tries <= room[:, None, :2] - CAM_CLEARANCE), -1)
    first = np.argmax(clear, axis=1)
    found = clear[np.arange(b), first]
    cam_xy = np.where(found[:, None], tries[np.arange(b), first], cam_xy)
    cam = np.concatenate([cam_xy, _lerp(u[:, _U_CAM + 2], *CAM_HEIGHT)[:, None]], axis=-1)
    target = center[:, 0] + (u[:, _U_TARGET:_U_TARGET + 3] - 0.5) * 0.2
    light = np.stack([_lerp(u[:, _U_LIGHT], 1.0, room[:, 0] - 1.0),
                      _lerp(u[:, _U_LIGHT + 1], 1.0, room[:, 1] - 1.0),
                      room[:, 2] - 0.25], axis=-1)
    return SceneParams(
        room=room, cam_pos=cam, cam_rot=look_at(cam, target), light_pos=light,
        ambient=_lerp(u[:, _U_LIGHT + 2], 0.25, 0.40), diffuse=_lerp(u[:, _U_LIGHT + 3], 0.7, 1.0),
        obj_shape=np.where(active, shape, -1), obj_class=np.where(active, cls, -1),
        obj_center=center, obj_yaw=yaw, obj_half=half, surfaces=surfaces)
