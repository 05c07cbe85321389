"""Vectorised ray casting of `SceneParams` into an image and every task label (torch, CPU).

One camera ray per pixel, all scenes of a batch at once; no per-pixel Python loop.
- Rays: pinhole, fixed FOV, direction (x/f, y/f, 1) in the OpenCV camera frame, so the ray
  parameter t of a hit *is* its depth along the optical axis (depth_zbuffer).
- Room: the inside of an axis-aligned box (slab exit distance). Objects: a bounding-sphere test
  on all (object, pixel) pairs, then exact intersections on the compacted candidates only:
  spheres, finite cylinders (with caps) and cones (with base) as one quadric
  x^2 + y^2 + a z^2 + b z + c = 0 clipped to |z| <= 1 in the unit object frame, boxes by the
  slab test. The nearest hit wins.
- Normals: gradient of the implicit surface in the unit object frame mapped to the camera
  frame by M^T (M = object-from-camera linear map), then normalised. They face the camera
  (n . ray < 0); n_z itself can be slightly positive for surfaces seen obliquely near the
  image border (e.g. the ceiling at the top of a downward-looking view).
- Albedo: procedural textures (plain, 3-D checker, stripes, marble) on metric object / world
  coordinates; image = albedo * (ambient + diffuse * max(0, n.l) * attenuation), one point light,
  no shadows.
- edge_texture: Sobel gradient magnitude of the un-shaded albedo luminance (texture and
  material boundaries, including object outlines where the albedo changes; not lighting), / 4,
  clipped to [0, 1].
- keypoints2d: max of Gaussians (sigma = 1.5 px at 64 px, scaled with size, >= 1 px) at the
  projections of each object's keypoints (box corners, cylinder rims, cone apex and base,
  sphere top and equator points) that are in the image and not occluded (z-buffer test).
- scene_class: object class of the object with the most visible pixels.
Bit-for-bit deterministic per scene: only elementwise ops, min/max reductions and integer
counts, so a scene renders identically in any batch.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mtl.data import scene_geometry as geo

RENDERER_VERSION = 2
_EPS_T = 1e-4      # minimum ray parameter of a hit
CHUNK_RAYS = 1 << 17     # rays per internal chunk: small temporaries are much faster

# Quadric coefficients (a, b, c) and caps (bottom, top) per shape; boxes use the slab test.
_QUADRIC = {geo.SPHERE: (1.0, 0.0, -1.0, 0, 0), geo.CYLINDER: (0.0, 0.0, -1.0, 1, 1),
            geo.CONE: (-0.25, 0.5, -0.25, 1, 0), geo.BOX: (0.0, 0.0, 0.0, 0, 0)}


# Rows of the packed per-object parameter table (float32 [_NP, N]), gathered per ray.
_P_M, _P_OQX, _P_QA, _P_QB, _P_QC = 0, 9, 12, 13, 14
_P_CAPLO, _P_CAPHI, _P_HALF, _P_BOX = 15, 16, 17, 20
_NP = 21


def _pair_table(s: geo.SceneParams) -> dict[str, np.ndarray]:
    """Per active object (b, k), quadrics first then boxes: its camera-frame ray mapping.

    packed[_P_M:_P_M+9] is M = diag(1/half) Rz(yaw)^T R_cam (camera -> unit object frame,
    row-major), packed[_P_OQX:+3] the camera centre in the unit frame, then the quadric
    coefficients (a, b, c at the camera centre), cap flags, half extents and a box flag.
    """
    quad = np.argwhere((s.obj_shape >= 0) & (s.obj_shape != geo.BOX))
    box = np.argwhere(s.obj_shape == geo.BOX)
    b, k = np.concatenate([quad, box]).T
    r, o = s.cam_rot[b], s.cam_pos[b]                       # [N, 3, 3], [N, 3]
    c, h = s.obj_center[b, k], s.obj_half[b, k]
    cy, sy = np.cos(s.obj_yaw[b, k]), np.sin(s.obj_yaw[b, k])
    m = np.stack([(cy[:, None] * r[:, 0] + sy[:, None] * r[:, 1]) / h[:, 0:1],
                  (-sy[:, None] * r[:, 0] + cy[:, None] * r[:, 1]) / h[:, 1:2],
                  r[:, 2] / h[:, 2:3]], axis=1)             # [N, 3(row), 3(col)]
    w = o - c
    oq = np.stack([(cy * w[:, 0] + sy * w[:, 1]) / h[:, 0],
                   (-sy * w[:, 0] + cy * w[:, 1]) / h[:, 1], w[:, 2] / h[:, 2]], axis=1)
    shape = s.obj_shape[b, k]
    coef = np.array([_QUADRIC[t] for t in range(4)])[shape]
    qa, qb, qc = coef[:, 0], coef[:, 1], coef[:, 2]
    oc = -w                                                  # centre relative to the camera
    oc_cam = r[:, 0, :] * oc[:, 0:1] + r[:, 1, :] * oc[:, 1:2] + r[:, 2, :] * oc[:, 2:3]
    bound2 = (h * h).sum(1)                                  # circumscribes the unit cube
    packed = np.concatenate([
        m.reshape(-1, 9).T, oq.T,
        np.stack([qa, qb, oq[:, 0] ** 2 + oq[:, 1] ** 2 + qa * oq[:, 2] ** 2 + qb * oq[:, 2] + qc,
                  coef[:, 3], coef[:, 4]]),
        h.T, (shape == geo.BOX)[None].astype(np.float64)])
    return dict(b=b, k=k, shape=shape, half=h, packed=packed, oc_cam=oc_cam,
                kb=(oc * oc).sum(1) - bound2, n_quad=len(quad))


def _t32(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _quadric_hits(p: Tensor, d: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Nearest t of rays o_q + t d against clipped quadrics and their caps (inf = miss), and
    whether that hit is on a cap. `p` holds the packed parameter rows of each ray's object."""
    dx, dy, dz = d
    ox, oy, oz, a, b, c = p[_P_OQX], p[_P_OQX + 1], p[_P_OQX + 2], p[_P_QA], p[_P_QB], p[_P_QC]
    aa = torch.addcmul(dx * dx + dy * dy, a, dz * dz)
    bh = ox * dx + oy * dy + (a * oz + 0.5 * b) * dz
    disc = bh * bh - aa * c
    qq = -(bh + torch.copysign(torch.sqrt(disc.clamp_min(0.0)), bh))
    best = torch.full_like(dx, math.inf)
    for t in (qq / aa, c / qq):                              # numerically stable pair of roots
        z = torch.addcmul(oz, t, dz).abs_()
        ok = (t > _EPS_T) & (z <= 1.0) & (disc >= 0)
        best = torch.minimum(best, t.masked_fill_(~ok, math.inf))
    cap = torch.zeros_like(dx, dtype=torch.bool)
    for z0, flag in ((-1.0, p[_P_CAPLO]), (1.0, p[_P_CAPHI])):
        t = (z0 - oz) / dz
        x, y = torch.addcmul(ox, t, dx), torch.addcmul(oy, t, dy)
        ok = (flag > 0) & (t > _EPS_T) & (x * x + y * y <= 1.0) & (t < best)
        best = torch.where(ok, t, best)
        cap |= ok
    return best, cap


def _box_hits(p: Tensor, d: tuple[Tensor, Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """Entry t of rays into the unit cube (slab test; inf = miss); no caps."""
    t_in = t_out = None
    for i, di in enumerate(d):
        inv = 1.0 / di
        t1, t2 = (-1.0 - p[_P_OQX + i]) * inv, (1.0 - p[_P_OQX + i]) * inv
        lo, hi = torch.minimum(t1, t2), torch.maximum(t1, t2)
        t_in = lo if t_in is None else torch.maximum(t_in, lo)
        t_out = hi if t_out is None else torch.minimum(t_out, hi)
    ok = (t_in <= t_out) & (t_in > _EPS_T)
    return t_in.masked_fill_(~ok, math.inf), torch.zeros_like(ok)


def _unit_dirs(p: Tensor, ux: Tensor, uy: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Ray directions in the unit object frame for camera directions (ux, uy, 1)."""
    return tuple(torch.addcmul(p[_P_M + 3 * i + 2], p[_P_M + 3 * i], ux)
                 .addcmul_(p[_P_M + 3 * i + 1], uy) for i in range(3))


def _texture(coord: Tensor, par: Tensor) -> Tensor:
    """Texture mix in [0, 1] per point: coord [3, N] (metres), par [NUM_SURF_PARAMS, N]."""
    tex, freq, phase = par[geo.SURF_TEX], par[geo.SURF_FREQ], par[geo.SURF_PHASE]
    x, y, z = coord[0], coord[1], coord[2]
    checker = sum(torch.floor(torch.addcmul(phase, freq, v)) for v in (x, y, z))
    along = par[9] * x + par[10] * y + par[11] * z
    wave = torch.addcmul(phase, freq, along)
    stripes = torch.floor(wave)
    swirl = torch.sin(freq * (1.4 * x + 2.6 * y + 2.2 * z)).mul_(2.5)
    marble = torch.sin(wave.mul(2.0 * math.pi).add_(swirl)).mul_(0.5).add_(0.5)

    def parity(v: Tensor) -> Tensor:
        return v - 2.0 * torch.floor(v * 0.5)

    return (parity(checker) * (tex == geo.CHECKER) + parity(stripes) * (tex == geo.STRIPES)
            + marble * (tex == geo.MARBLE))


def _sobel(lum: Tensor) -> Tensor:
    """Sobel gradient magnitude of [B, H, W] (replicate padding), by shifted sums."""
    p = F.pad(lum[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    h, w = lum.shape[1:]

    def at(i: int, j: int) -> Tensor:
        return p[:, i:i + h, j:j + w]

    gx = (at(0, 2) + 2 * at(1, 2) + at(2, 2)) - (at(0, 0) + 2 * at(1, 0) + at(2, 0))
    gy = (at(2, 0) + 2 * at(2, 1) + at(2, 2)) - (at(0, 0) + 2 * at(0, 1) + at(0, 2))
    return torch.sqrt(gx * gx + gy * gy)


def _keypoints(s: geo.SceneParams, pairs: dict[str, np.ndarray], depth: np.ndarray, size: int
               ) -> tuple[Tensor, dict[str, np.ndarray]]:
    """Heat-map [B, H, W] of the visible keypoints and (for tests) their projections."""
    kp = geo.KEYPOINTS[pairs["shape"]] * pairs["half"][:, None, :]          # [N, 8, 3] scaled
    valid = geo.KEYPOINT_VALID[pairs["shape"]]
    b, k = pairs["b"], pairs["k"]
    cy, sy = np.cos(s.obj_yaw[b, k])[:, None], np.sin(s.obj_yaw[b, k])[:, None]
    c = s.obj_center[b, k]
    world = np.stack([c[:, 0:1] + cy * kp[..., 0] - sy * kp[..., 1],
                      c[:, 1:2] + sy * kp[..., 0] + cy * kp[..., 1],
                      c[:, 2:3] + kp[..., 2]], axis=-1) - s.cam_pos[b][:, None, :]
    r = s.cam_rot[b]                                                     # columns = cam axes
    x, y, z = (r[:, None, 0, j] * world[..., 0] + r[:, None, 1, j] * world[..., 1]
               + r[:, None, 2, j] * world[..., 2] for j in range(3))
    f, c0 = geo.focal_length(size), (size - 1) / 2.0
    zs = np.where(z > 1e-3, z, 1.0)
    u, v = f * x / zs + c0, f * y / zs + c0
    ui, vi = np.floor(u + 0.5).astype(np.int64), np.floor(v + 0.5).astype(np.int64)
    inside = valid & (z > 1e-3) & (ui >= 0) & (ui < size) & (vi >= 0) & (vi < size)
    bb = np.broadcast_to(b[:, None], z.shape)
    zbuf = depth[bb, np.clip(vi, 0, size - 1), np.clip(ui, 0, size - 1)]
    visible = inside & (z <= zbuf * 1.03 + 0.03)        # not behind the visible surface
    sigma = max(1.0, 1.5 * size / 64.0)
    off = np.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1)
    sel = np.nonzero(visible)
    xs, ys = np.broadcast_arrays(ui[sel][:, None, None] + off[None, None, :],
                                 vi[sel][:, None, None] + off[None, :, None])
    val = np.exp(-((xs - u[sel][:, None, None]) ** 2 + (ys - v[sel][:, None, None]) ** 2)
                 / (2 * sigma ** 2))
    ok = (xs >= 0) & (xs < size) & (ys >= 0) & (ys < size)
    idx = (bb[sel][:, None, None] * size + ys) * size + xs
    heat = torch.zeros(s.batch * size * size)
    heat.scatter_reduce_(0, torch.from_numpy(idx[ok]), _t32(val[ok]), reduce="amax")
    info = dict(u=u, v=v, z=z, visible=visible, b=b, k=k)
    return heat.view(s.batch, size, size), info


def _pixel_dirs(size: int) -> tuple[Tensor, Tensor]:
    """Camera-frame ray directions (ux, uy, 1) of pixel p = v * size + u, as ux [P], uy [P]."""
    f, c0 = geo.focal_length(size), (size - 1) / 2.0
    g = (torch.arange(size, dtype=torch.float64) - c0) / f
    return g.repeat(size).float(), g.repeat_interleave(size).float()


def _room(rot: Tensor, cam: Tensor, room: Tensor, ux: Tensor, uy: Tensor
          ) -> tuple[list[Tensor], Tensor, Tensor, Tensor]:
    """World ray directions, exit distance from the room box, surface id, camera-frame normal."""
    dw = [torch.addcmul(rot[:, i, 2:3], rot[:, i, 0:1], ux).addcmul_(rot[:, i, 1:2], uy)
          for i in range(3)]
    ts = []
    for i in range(3):                       # inside the box one slab distance is < 0
        inv = 1.0 / dw[i]
        o = cam[:, i:i + 1]
        ts.append(torch.maximum(inv * -o, inv * (room[:, i:i + 1] - o)))
    txy = torch.minimum(ts[0], ts[1])
    t = torch.minimum(txy, ts[2])
    on_z = ts[2] <= txy
    on_x = (ts[0] <= ts[1]) & ~on_z
    on_y = ~(on_z | on_x)
    surf = (torch.sign(dw[2]) * on_z).add_(1.0).long()     # floor 0, wall 1, ceiling 2
    n_world = [-torch.sign(dw[i]) * m for i, m in enumerate((on_x, on_y, on_z))]
    normal = torch.stack([sum(rot[:, i, j:j + 1] * n_world[i] for i in range(3)) for j in range(3)])
    return dw, t, surf, normal


def _objects(pairs: dict[str, np.ndarray], B: int, ux: Tensor, uy: Tensor
             ) -> tuple[Tensor, Tensor]:
    """Nearest object hit per pixel: t [B*P] (inf = none) and code [B*P] = 2 * pair + cap."""
    P, npair = ux.shape[0], len(pairs["b"])
    occ, kb = _t32(pairs["oc_cam"]), _t32(pairs["kb"])
    dot = torch.addcmul(occ[:, 2:3], occ[:, 0:1], ux).addcmul_(occ[:, 1:2], uy)
    dd = torch.addcmul(ux * ux, uy, uy).add_(1.0)
    cand = ((dot > 0) & (dot * dot >= kb[:, None] * dd)) | (kb < 0)[:, None]
    pair_np, pix_np = np.nonzero(cand.numpy())
    pair, pix = torch.from_numpy(pair_np), torch.from_numpy(pix_np)
    split = int(np.searchsorted(pair_np, pairs["n_quad"]))
    packed = _t32(pairs["packed"])
    t_hit, cap = torch.empty(len(pair)), torch.empty(len(pair), dtype=torch.bool)
    for sl, hits in ((slice(0, split), _quadric_hits), (slice(split, None), _box_hits)):
        if sl.start != (sl.stop if sl.stop is not None else len(pair)):
            par = packed.index_select(1, pair[sl])
            px = pix[sl]
            t_hit[sl], cap[sl] = hits(par, _unit_dirs(par, ux[px], uy[px]))
    gidx = torch.from_numpy(pairs["b"][pair_np] * P + pix_np)
    t_obj = torch.full((B * P,), math.inf).scatter_reduce_(0, gidx, t_hit, "amin")
    win = (t_hit == t_obj[gidx]) & (t_hit < math.inf)
    code = (pair[win] * 2 + cap[win]).long()
    best = torch.full((B * P,), 2 * npair, dtype=torch.int64)
    return t_obj, best.scatter_reduce_(0, gidx[win], code, "amin")   # ties: lowest pair


def _object_surfaces(packed: Tensor, pp: Tensor, on_cap: Tensor, t: Tensor, ux: Tensor,
                     uy: Tensor) -> tuple[Tensor, Tensor]:
    """Camera-frame unit normals [3, N] and object-frame metric coordinates [3, N] of hits."""
    par = packed.index_select(1, pp)
    q = [torch.addcmul(par[_P_OQX + i], t, di) for i, di in enumerate(_unit_dirs(par, ux, uy))]
    side, cap = ~on_cap, on_cap.float()
    # quadric gradient / 2 = (x, y, a z + b / 2); caps (0, 0, sign z)
    nq = [q[0] * side, q[1] * side,
          torch.addcmul(0.5 * par[_P_QB], par[_P_QA], q[2]) * side + torch.sign(q[2]) * cap]
    # boxes: the face of the largest |coordinate|
    aq = [v.abs() for v in q]
    fx = (aq[0] >= aq[1]) & (aq[0] >= aq[2])
    fy = (aq[1] > aq[0]) & (aq[1] >= aq[2])
    faces = (fx, fy, ~(fx | fy))
    is_box = par[_P_BOX]
    nu = [torch.lerp(nq[i], torch.sign(q[i]) * faces[i], is_box) for i in range(3)]
    n = torch.stack([sum(par[_P_M + 3 * i + j] * nu[i] for i in range(3)) for j in range(3)])
    n = n * torch.rsqrt((n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).clamp_min(1e-24))
    return n, torch.stack([q[i] * par[_P_HALF + i] for i in range(3)])


def _render_chunk(s: geo.SceneParams, size: int, debug: bool) -> dict:
    """Render one chunk of scenes (see `render`): geometry, then labels, then shading."""
    B, K, P, S = s.batch, geo.MAX_OBJECTS, size * size, geo.NUM_SURFACES
    ux, uy = _pixel_dirs(size)
    rot, cam = _t32(s.cam_rot), _t32(s.cam_pos)
    dw, t_room, surf, normal = _room(rot, cam, _t32(s.room), ux, uy)
    pairs = _pair_table(s)
    t_obj, code = _objects(pairs, B, ux, uy)
    t_room, surf, normal = t_room.reshape(-1), surf.reshape(-1), normal.reshape(3, -1)
    is_obj = t_obj < t_room
    depth = torch.minimum(t_obj, t_room)
    # texture coordinates: world hit point for the room, object frame (metres) for objects
    coord = torch.stack([torch.addcmul(cam[:, i:i + 1], depth.view(B, P), dw[i])
                         for i in range(3)]).reshape(3, -1)
    oi_np = np.flatnonzero(is_obj.numpy())
    oi = torch.from_numpy(oi_np)
    code_o = code[oi]
    pp, on_cap = code_o // 2, (code_o % 2).bool()
    pix = torch.from_numpy(oi_np % P)
    packed = _t32(pairs["packed"])
    n_obj, c_obj = _object_surfaces(packed, pp, on_cap, t_obj[oi], ux[pix], uy[pix])
    normal[:, oi], coord[:, oi] = n_obj, c_obj
    k_of_pair = torch.from_numpy(pairs["k"])
    cls = torch.from_numpy(s.obj_class[pairs["b"], pairs["k"]])
    surface, seg = surf.clone(), surf.clone()
    surface[oi] = geo.NUM_ROOM_CLASSES + k_of_pair[pp]
    seg[oi] = geo.NUM_ROOM_CLASSES + cls[pp]

    # albedo from the surface's texture parameters, Lambert shading in the camera frame
    sid = (torch.arange(B)[:, None] * S + surface.view(B, P)).reshape(-1)
    table = _t32(s.surfaces.reshape(B * S, -1).T)
    par = table.index_select(1, sid)
    mix = _texture(coord, par)
    albedo = torch.addcmul(par[0:3], mix, par[3:6] - par[0:3])            # [3, B*P]
    lrel = _t32(s.light_pos - s.cam_pos)
    lcam = sum(rot[:, i, :] * lrel[:, i:i + 1] for i in range(3))            # R^T (L - o)
    d = depth.view(B, P)
    lv = [(lcam[:, j:j + 1] - x).reshape(-1) for j, x in enumerate((d * ux, d * uy, d))]
    dist2 = lv[0] * lv[0] + lv[1] * lv[1] + lv[2] * lv[2]
    ndotl = (normal[0] * lv[0] + normal[1] * lv[1] + normal[2] * lv[2]) * torch.rsqrt(dist2)
    gain = _t32(s.diffuse * 1.6)[:, None] / (1.0 + dist2.view(B, P) / 36.0)
    shade = (ndotl.clamp_min_(0.0).view(B, P) * gain).add_(_t32(s.ambient)[:, None])
    image = (albedo.view(3, B, P) * shade).clamp_(0.0, 1.0)

    def chw(x: Tensor) -> Tensor:
        return x.reshape(3, B, size, size).transpose(0, 1).contiguous()

    alb = chw(albedo)
    lum = 0.299 * alb[:, 0] + 0.587 * alb[:, 1] + 0.114 * alb[:, 2]
    depth_img = depth.view(B, size, size)
    heat, kp_info = _keypoints(s, pairs, depth_img.numpy(), size)
    b_np = oi_np // P
    counts = np.bincount(b_np * K + pairs["k"][pp.numpy()], minlength=B * K).reshape(B, K)
    top = counts.argmax(1)                                  # first of equal counts
    out = {"image": chw(image), "segment_semantic": seg.view(B, size, size),
           "depth_zbuffer": depth_img, "normal": chw(normal),
           "edge_texture": (_sobel(lum) / 4.0).clamp_(0.0, 1.0), "keypoints2d": heat,
           "scene_class": torch.from_numpy(s.obj_class[np.arange(B), top].astype(np.int64))}
    if debug:
        slot = torch.full((B * P,), -1, dtype=torch.int64)
        slot[oi] = k_of_pair[pp]
        out.update(object_slot=slot.view(B, size, size), surface=surface.view(B, size, size),
                   visible_pixels=torch.from_numpy(counts), albedo=alb, keypoints=kp_info)
    return out


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch single-threaded: the chunks are small, and on a busy machine intra-op
    threads spin-wait (measured 20-45 images/s with 2 threads vs ~600 with 1 under load)."""
    before = torch.get_num_threads()
    if before != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if before != 1:
            torch.set_num_threads(before)


@torch.inference_mode()
def render(scenes: geo.SceneParams, size: int, *, debug: bool = False) -> dict:
    """Render a batch of scenes at `size` x `size` pixels into the image and every label.

    Returns image float32 [B,3,H,W] in [0,1], segment_semantic int64 [B,H,W] (floor 0, wall 1,
    ceiling 2, object class c -> 3 + c), depth_zbuffer float32 [B,H,W] (metres along the
    optical axis), normal float32 [B,3,H,W] (camera frame, unit, facing the camera),
    edge_texture and keypoints2d float32 [B,H,W] in [0,1], scene_class int64 [B].
    debug=True adds object_slot [B,H,W] (-1 = room), surface [B,H,W], visible_pixels [B,K],
    albedo [B,3,H,W] and "keypoints" (numpy projections u, v, z, visible per object b, k).
    Works in chunks of about 2^17 rays (small temporaries are much faster than large ones),
    with torch single-threaded for the duration of the call.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 2:
        raise ValueError(f"size: must be an int >= 2, got {size!r}")
    if scenes.batch < 1:
        raise ValueError("scenes: the batch is empty; pass at least one scene")
    step = max(1, CHUNK_RAYS // (size * size))
    with one_thread():
        parts = [_render_chunk(scenes.take(slice(i, i + step)), size, debug)
                 for i in range(0, scenes.batch, step)]
    if len(parts) == 1:
        return parts[0]
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "keypoints"}
    if debug:
        offsets = np.cumsum([0] + [p["scene_class"].shape[0] for p in parts])
        info = {k: np.concatenate([p["keypoints"][k] + o if k == "b" else p["keypoints"][k]
                                   for p, o in zip(parts, offsets)]) for k in parts[0]["keypoints"]}
        out["keypoints"] = info
    return out
