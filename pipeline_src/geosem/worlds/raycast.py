"""Vectorised ray casting shared by the synthetic worlds (driving and indoor).

A *view* is a grid of rays (rows x cols) from one origin: a pinhole camera (rays through pixel centres
with unit camera z, so the hit parameter t is the z-depth) or a spinning lidar (unit rays, t is the
range). Geometry is a set of primitives (boxes, vertical capped cylinders, ellipsoids; each rotated
about the world's vertical axis only) plus a world-specific *enclosure* (the driving world's ground,
the indoor world's room), intersected by the world module.

Speed (measured in BENCHMARKS.md, "World generation"): every primitive is tested only against the rays
inside a conservative screen rectangle of its bounding box. Large rectangles are tested one primitive at
a time, nearest first, skipping primitives already hidden behind what was drawn (one cheap max over the
rectangle); small rectangles are flattened into one batch of (ray, primitive) pairs. The depth test of
both paths is a single integer minimum on packed keys ``(float32 bits of t) << 32 | code`` (positive
floats order like their bit patterns), so no sort is needed. Shading is deferred: planar faces take a
per-face shade computed once per frame, and only curved surfaces get per-pixel normals; colours come
from :mod:`geosem.worlds.materials`.

``code`` of a hit is ``primitive * 8 + face``: faces 0..5 are the box faces (axis * 2 + 1 when the
outward normal points along -axis), caps of cylinders use the y faces, and :data:`FACE_CURVED` marks
cylinder sides and ellipsoids. :data:`ENCLOSURE` marks the enclosure (or nothing, when t is inf).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BOX, CYLINDER, ELLIPSOID = 0, 1, 2
FACE_CURVED = 6
ENCLOSURE = 0xFFFFFFFF
_LOW32 = np.int64(0xFFFFFFFF)
_EPS = np.float32(1e-4)
_INF_KEY = (np.int64(np.array(np.inf, np.float32).view(np.int32)) << np.int64(32)) | _LOW32
# Rectangles up to this many rays go to the batched pair path; measured on 96x320 driving frames
# (benchmarks/world_speed.py --threshold, 7 repetitions): 1500 was fastest among 200, 400, 800, 1500,
# 3000, 6000 (5.3 ms per view against 6.1 for 800 and 8.5 for 3000).
SMALL_RECT = 1500


@dataclass
class Primitives:
    """Primitives in the world frame at one instant. ``half``: box half extents; cylinder (radius,
    half height, radius); ellipsoid radii. Local axes: x lateral, y down, z along the heading ``yaw``."""

    kind: np.ndarray  # (M,) int64
    center: np.ndarray  # (M,3) float64
    yaw: np.ndarray  # (M,) float64, rotation about the world y axis
    half: np.ndarray  # (M,3) float64
    part: np.ndarray  # (M,) int64 world part id (geosem.worlds.parts)
    material: np.ndarray  # (M,) int64 row of the material table
    obj: np.ndarray  # (M,) int64 object id (cars, persons, furniture), -1 for none

    def __len__(self) -> int:
        return int(self.kind.size)

    def corners(self) -> np.ndarray:
        """World corners (M,8,3) of every primitive's oriented bounding box."""
        signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
        local = self.half[:, None, :] * signs[None, :, :]
        c, s = np.cos(self.yaw)[:, None], np.sin(self.yaw)[:, None]
        out = np.empty_like(local)
        out[..., 0] = self.center[:, None, 0] + c * local[..., 0] + s * local[..., 2]
        out[..., 1] = self.center[:, None, 1] + local[..., 1]
        out[..., 2] = self.center[:, None, 2] - s * local[..., 0] + c * local[..., 2]
        return out


PrimitiveRow = tuple  # (kind, cx, cy, cz, yaw, hx, hy, hz, part, material, obj)


def primitives_from_rows(rows: list[PrimitiveRow]) -> Primitives:
    """Stack the rows the world builders collect (one per primitive) into ``Primitives``."""
    return Primitives(
        kind=np.array([r[0] for r in rows], dtype=np.int64),
        center=np.array([r[1:4] for r in rows], dtype=np.float64).reshape(-1, 3),
        yaw=np.array([r[4] for r in rows], dtype=np.float64),
        half=np.array([r[5:8] for r in rows], dtype=np.float64).reshape(-1, 3),
        part=np.array([r[8] for r in rows], dtype=np.int64),
        material=np.array([r[9] for r in rows], dtype=np.int64),
        obj=np.array([r[10] for r in rows], dtype=np.int64),
    )


def yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about the (downward) y axis that maps local +z onto heading (sin yaw, 0, cos yaw)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


# ----------------------------------------------------------------------------------------------------
# Ray grids and screen rectangles


def pinhole_rays(height: int, width: int, intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    """Camera-frame rays (H,W,3) float64 with z = 1 through pixel centres (u, v) = (col, row)."""
    fx, fy, cx, cy = intrinsics
    grid = np.ones((height, width, 3))
    grid[..., 0] = ((np.arange(width) - cx) / fx)[None, :]
    grid[..., 1] = ((np.arange(height) - cy) / fy)[:, None]
    return grid


@dataclass
class Rects:
    """Index rectangles ``[r0, r1) x [c0, c1)`` of the ray grid that may see primitive ``prim``."""

    prim: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    near: np.ndarray  # lower bound of t over the primitive (for front-to-back order and skipping)


def pinhole_rects(
    corners: np.ndarray,
    origin: np.ndarray,
    rotation: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    height: int,
    width: int,
) -> Rects:
    """Screen rectangles of the projected bounding boxes, clipped at a near plane: a box reaching
    behind the camera is bounded by its corners in front plus the points where its edges cross the
    near plane (a box beside the car would otherwise claim the whole screen). Boxes fully behind the
    camera or off screen are dropped."""
    fx, fy, cx, cy = intrinsics
    z_near = 0.05
    # First drop boxes whose bounding sphere lies wholly outside one side of the view frustum (most of
    # the scene behind and beside the car): cheap, and their rectangles would be empty anyway.
    center = corners.mean(axis=1)
    radius = np.linalg.norm(corners[:, 0] - center, axis=1)
    c_cam = (center - origin) @ rotation
    planes = np.array(
        [
            [fx, 0.0, cx + 0.5],
            [-fx, 0.0, width - 0.5 - cx],
            [0.0, fy, cy + 0.5],
            [0.0, -fy, height - 0.5 - cy],
        ]
    )
    planes /= np.linalg.norm(planes, axis=1, keepdims=True)
    inside = ((c_cam @ planes.T) >= -radius[:, None]).all(axis=1) & (c_cam[:, 2] >= z_near - radius)
    candidates = np.flatnonzero(inside)
    corners = corners[candidates]
    cam = (corners - origin) @ rotation  # world -> camera: R^T (p - o), as row vectors
    a, b = cam[:, _EDGE_A], cam[:, _EDGE_B]  # (M,12,3) edge end points
    za, zb = a[..., 2], b[..., 2]
    crosses = (za > z_near) != (zb > z_near)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(crosses, (z_near - za) / (zb - za), 0.0)
    clip = a + f[..., None] * (b - a)
    points = np.concatenate([cam, clip], axis=1)  # (M,20,3)
    valid = np.concatenate([cam[..., 2] > z_near, crosses], axis=1)
    zs = np.where(valid, np.maximum(points[..., 2], z_near), 1.0)
    u = fx * points[..., 0] / zs + cx
    v = fy * points[..., 1] / zs + cy
    big = 1e9
    c0 = np.floor(np.clip(np.where(valid, u, big).min(axis=1), -1, width + 1))
    c1 = np.floor(np.clip(np.where(valid, u, -big).max(axis=1), -1, width + 1)) + 2
    r0 = np.floor(np.clip(np.where(valid, v, big).min(axis=1), -1, height + 1))
    r1 = np.floor(np.clip(np.where(valid, v, -big).max(axis=1), -1, height + 1)) + 2
    c0, c1 = np.clip(c0, 0, width).astype(np.int64), np.clip(c1, 0, width).astype(np.int64)
    r0, r1 = np.clip(r0, 0, height).astype(np.int64), np.clip(r1, 0, height).astype(np.int64)
    keep = np.flatnonzero(valid.any(axis=1) & (c1 > c0) & (r1 > r0))
    near = np.maximum(np.where(valid, points[..., 2], np.inf).min(axis=1), 0.0)
    return Rects(prim=candidates[keep], r0=r0[keep], r1=r1[keep], c0=c0[keep], c1=c1[keep], near=near[keep])


# The 12 edges of a box whose corners are indexed ix * 4 + iy * 2 + iz (Primitives.corners order).
_EDGE_A = np.array([i for bit in (4, 2, 1) for i in range(8) if not i & bit])
_EDGE_B = _EDGE_A + np.repeat([4, 2, 1], 4)


def _azimuth_arcs(corners_sensor: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuth arc of every box's corners (M,8,3) in the sensor frame: start, length (radians) and
    whether the sensor lies outside the box's footprint (the widest gap between corners exceeds pi)."""
    az = np.arctan2(corners_sensor[..., 1], corners_sensor[..., 0])  # (M,8)
    order = np.sort(az, axis=1)
    gaps = np.diff(np.concatenate([order, order[:, :1] + 2 * np.pi], axis=1), axis=1)
    widest = gaps.argmax(axis=1)
    rows = np.arange(az.shape[0])
    outside = gaps[rows, widest] > np.pi
    lo = order[rows, (widest + 1) % 8]  # the visible arc runs from after the widest gap ...
    hi = order[rows, widest]  # ... round to its start
    return lo, np.mod(hi - lo, 2 * np.pi), outside


def spherical_rects(
    frames: LocalFrames,
    center_height: np.ndarray,
    corners_sensor: np.ndarray,
    tilt: float,
    elevations: np.ndarray,
    azimuth_step: float,
    columns: int,
) -> Rects:
    """Rectangles of a spinning-lidar grid (rows: beams at ``elevations`` radians, descending; columns:
    azimuth ``-pi + (j + 0.5) * step``).

    Azimuth limits come from the box corners in the sensor frame (x forward, y left, z up): exact for a
    convex box seen from outside its footprint; a box around the sensor gets every column. Elevation
    limits are bounded in the world: the box's top and bottom heights above the sensor
    (``center_height`` -+ half height, world up) over the nearest and farthest horizontal distance of
    its footprint, widened by the sensor's ``tilt`` from the world vertical and by one beam. Intervals
    across the +-pi seam are split in two.
    """
    lo, span, outside = _azimuth_arcs(corners_sensor)
    # Footprint distances in the world's horizontal plane (the frames' local x/z).
    ox, oz = frames.ox.astype(np.float64), frames.oz.astype(np.float64)
    hx, hz, hy = (a.astype(np.float64) for a in (frames.hx, frames.hz, frames.hy))
    rho_min = np.hypot(np.maximum(np.abs(ox) - hx, 0.0), np.maximum(np.abs(oz) - hz, 0.0))
    rho_max = np.hypot(np.abs(ox) + hx, np.abs(oz) + hz)
    top, bottom = center_height + hy, center_height - hy
    with np.errstate(divide="ignore"):
        el_hi = np.where(top > 0, np.arctan2(top, rho_min), np.arctan2(top, rho_max))
        el_lo = np.where(bottom < 0, np.arctan2(bottom, rho_min), np.arctan2(bottom, rho_max))
    el_hi, el_lo = el_hi + tilt, el_lo - tilt
    # Beams are sorted by descending elevation: rows whose elevation lies within [el_lo, el_hi].
    desc = -elevations
    r0 = np.searchsorted(desc, -el_hi, side="left") - 1
    r1 = np.searchsorted(desc, -el_lo, side="right") + 1
    r0, r1 = np.clip(r0, 0, elevations.size), np.clip(r1, 0, elevations.size)
    first = np.floor((lo + np.pi) / azimuth_step - 0.5).astype(np.int64) - 1
    count = np.ceil(span / azimuth_step).astype(np.int64) + 3
    first = np.where(outside, first, 0)
    count = np.where(outside, np.minimum(count, columns), columns)
    dist = np.hypot(rho_min, np.where(bottom > 0, bottom, np.where(top < 0, top, 0.0)))
    keep = r1 > r0
    prims, rr0, rr1, cc0, cc1, near = [], [], [], [], [], []
    for shift in (0, columns):  # the part left of column 0 wraps to the right end of the grid
        start = first % columns - shift
        stop = start + count
        a, b = np.clip(start, 0, columns), np.clip(stop, 0, columns)
        idx = np.flatnonzero(keep & (b > a))
        prims.append(idx)
        rr0.append(r0[idx])
        rr1.append(r1[idx])
        cc0.append(a[idx])
        cc1.append(b[idx])
        near.append(dist[idx])
    return Rects(
        prim=np.concatenate(prims),
        r0=np.concatenate(rr0),
        r1=np.concatenate(rr1),
        c0=np.concatenate(cc0),
        c1=np.concatenate(cc1),
        near=np.concatenate(near),
    )


# ----------------------------------------------------------------------------------------------------
# Intersection kernels, in each primitive's local frame, float32. Return t (inf for a miss); the face
# is found later for the visible rays only.


def _box(o: tuple, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, h: tuple) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        inv = np.float32(1.0) / dx
        a, b = (-h[0] - o[0]) * inv, (h[0] - o[0]) * inv
        t_near, t_far = np.minimum(a, b), np.maximum(a, b)
        for axis, d in ((1, dy), (2, dz)):
            inv = np.float32(1.0) / d
            a, b = (-h[axis] - o[axis]) * inv, (h[axis] - o[axis]) * inv
            np.maximum(t_near, np.minimum(a, b), out=t_near)
            np.minimum(t_far, np.maximum(a, b), out=t_far)
        t_near[(t_near > t_far) | (t_near <= _EPS)] = np.inf
    return t_near


def _cylinder(o: tuple, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, h: tuple) -> np.ndarray:
    r, hy = h[0], h[1]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        a = dx * dx + dz * dz
        b = np.float32(2.0) * (o[0] * dx + o[2] * dz)
        c = o[0] * o[0] + o[2] * o[2] - r * r
        disc = b * b - np.float32(4.0) * a * c
        t = (-b - np.sqrt(np.maximum(disc, np.float32(0.0)))) / (np.float32(2.0) * a)
        t[(disc < 0) | (t <= _EPS) | (np.abs(o[1] + t * dy) > hy)] = np.inf
        # A ray going down (dy > 0) can only enter through the top cap (y = -hy), and vice versa.
        t_cap = (np.where(dy > 0, -hy, hy) - o[1]) / dy
        px, pz = o[0] + t_cap * dx, o[2] + t_cap * dz
        cap = (t_cap > _EPS) & (px * px + pz * pz <= r * r) & (t_cap < t)
        t[cap] = t_cap[cap]
    return t


def _ellipsoid(o: tuple, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, h: tuple) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        ox, oy, oz = o[0] / h[0], o[1] / h[1], o[2] / h[2]
        ux, uy, uz = dx / h[0], dy / h[1], dz / h[2]
        a = ux * ux + uy * uy + uz * uz
        b = np.float32(2.0) * (ox * ux + oy * uy + oz * uz)
        c = ox * ox + oy * oy + oz * oz - np.float32(1.0)
        disc = b * b - np.float32(4.0) * a * c
        t = (-b - np.sqrt(np.maximum(disc, np.float32(0.0)))) / (np.float32(2.0) * a)
        t[(disc < 0) | (t <= _EPS)] = np.inf
    return t


_KERNELS: dict[int, Callable[..., np.ndarray]] = {BOX: _box, CYLINDER: _cylinder, ELLIPSOID: _ellipsoid}


def pack(t: np.ndarray, code: np.ndarray | int) -> np.ndarray:
    """Depth-test keys: float32 bits of t (non-negative, so ordered like t) above a 32-bit code."""
    t32 = np.ascontiguousarray(t, dtype=np.float32)
    return (t32.view(np.int32).astype(np.int64) << np.int64(32)) | (np.asarray(code, np.int64) & _LOW32)


def unpack(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`pack`: (t float32, code int64)."""
    t = (keys >> np.int64(32)).astype(np.int32).view(np.float32)
    return t, keys & _LOW32


def empty_keys(n: int) -> np.ndarray:
    return np.full(n, _INF_KEY, np.int64)


@dataclass
class LocalFrames:
    """Per-primitive float32 columns for one view: local ray origin, yaw cos/sin, half extents."""

    ox: np.ndarray
    oy: np.ndarray
    oz: np.ndarray
    hx: np.ndarray
    hy: np.ndarray
    hz: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    kind: np.ndarray


def local_frames(prims: Primitives, origin: np.ndarray) -> LocalFrames:
    cos_yaw, sin_yaw = np.cos(prims.yaw), np.sin(prims.yaw)
    rel = origin - prims.center
    f32 = np.float32
    return LocalFrames(
        ox=(cos_yaw * rel[:, 0] - sin_yaw * rel[:, 2]).astype(f32),
        oy=rel[:, 1].astype(f32),
        oz=(sin_yaw * rel[:, 0] + cos_yaw * rel[:, 2]).astype(f32),
        hx=np.ascontiguousarray(prims.half[:, 0], f32),
        hy=np.ascontiguousarray(prims.half[:, 1], f32),
        hz=np.ascontiguousarray(prims.half[:, 2], f32),
        cos=cos_yaw.astype(f32),
        sin=sin_yaw.astype(f32),
        kind=prims.kind,
    )


@dataclass
class RayGrid:
    """World-frame ray directions of one view as contiguous float32 (rows, cols) arrays."""

    dx: np.ndarray
    dy: np.ndarray
    dz: np.ndarray

    @classmethod
    def from_array(cls, dirs: np.ndarray) -> RayGrid:
        return cls(*(np.ascontiguousarray(dirs[..., k], dtype=np.float32) for k in range(3)))

    @classmethod
    def rotated(cls, rays: np.ndarray, rotation: np.ndarray) -> RayGrid:
        """World directions ``rotation @ ray`` of sensor-frame rays (rows, cols, 3)."""
        r = rotation.astype(np.float32)
        x, y, z = (np.ascontiguousarray(rays[..., k], dtype=np.float32) for k in range(3))
        return cls(*(r[k, 0] * x + r[k, 1] * y + r[k, 2] * z for k in range(3)))

    @property
    def shape(self) -> tuple[int, int]:
        return self.dx.shape  # type: ignore[return-value]


def cast_primitives(
    frames: LocalFrames, rects: Rects, grid: RayGrid, keys: np.ndarray, small_rect: int = SMALL_RECT
) -> None:
    """Depth-test every primitive against the rays of its rectangle; ``keys`` (rows, cols) is updated
    in place with codes = primitive index."""
    if rects.prim.size == 0:
        return
    cols = keys.shape[1]
    area = (rects.r1 - rects.r0) * (rects.c1 - rects.c0)
    dx, dy, dz = grid.dx, grid.dy, grid.dz

    large = np.flatnonzero(area > small_rect)
    large = large[np.argsort(rects.near[large], kind="stable")]
    near = rects.near.tolist()
    for j in large.tolist():
        i = int(rects.prim[j])
        a0, a1, b0, b1 = int(rects.r0[j]), int(rects.r1[j]), int(rects.c0[j]), int(rects.c1[j])
        block = keys[a0:a1, b0:b1]
        farthest = np.int32(block.max() >> np.int64(32)).view(np.float32)
        if near[j] >= farthest:
            continue  # everything in the rectangle is already nearer: fully hidden
        c, s = frames.cos[i], frames.sin[i]
        bx, bz = dx[a0:a1, b0:b1], dz[a0:a1, b0:b1]
        o = (frames.ox[i], frames.oy[i], frames.oz[i])
        h = (frames.hx[i], frames.hy[i], frames.hz[i])
        t = _KERNELS[int(frames.kind[i])](o, c * bx - s * bz, dy[a0:a1, b0:b1], s * bx + c * bz, h)
        # A miss keeps the enclosure code, so an untouched ray still reads as "nothing hit".
        code = np.where(t < np.float32(np.inf), np.int64(i), ENCLOSURE)
        np.minimum(block, pack(t, code), out=block)

    small = np.flatnonzero(area <= small_rect)
    if small.size == 0:
        return
    # Rectangles grouped by primitive kind, so that each kernel reads a contiguous slice of the pairs;
    # pairs are generated row segment by row segment (no integer division per pair).
    small = small[np.argsort(frames.kind[rects.prim[small]], kind="stable")]
    heights = rects.r1[small] - rects.r0[small]
    widths = rects.c1[small] - rects.c0[small]
    seg_rect = np.repeat(small, heights)
    seg_row = rects.r0[seg_rect] + np.arange(seg_rect.size) - np.repeat(np.cumsum(heights) - heights, heights)
    seg_len = np.repeat(widths, heights)
    seg_first = np.cumsum(seg_len) - seg_len
    total = int(seg_len.sum())
    pix = np.repeat(seg_row * cols + rects.c0[seg_rect] - seg_first, seg_len) + np.arange(total)
    prim = np.repeat(rects.prim[small], widths * heights)
    px, py, pz = dx.reshape(-1)[pix], dy.reshape(-1)[pix], dz.reshape(-1)[pix]
    c, s = frames.cos[prim], frames.sin[prim]
    lx = c * px - s * pz
    lz = s * px + c * pz
    t = np.empty(total, np.float32)
    kinds = frames.kind[prim]
    bounds = np.searchsorted(kinds, [BOX, CYLINDER, ELLIPSOID, ELLIPSOID + 1])
    for kind, kernel in _KERNELS.items():
        lo, hi = int(bounds[kind]), int(bounds[kind + 1])
        if hi > lo:
            ids = prim[lo:hi]
            o = (frames.ox[ids], frames.oy[ids], frames.oz[ids])
            h = (frames.hx[ids], frames.hy[ids], frames.hz[ids])
            t[lo:hi] = kernel(o, lx[lo:hi], py[lo:hi], lz[lo:hi], h)
    hit = np.flatnonzero(t < np.float32(np.inf))
    np.minimum.at(keys.reshape(-1), pix[hit], pack(t[hit], prim[hit]))


@dataclass
class PrimitiveSurface:
    """Shading inputs of the rays that hit primitives (1-D float32 columns)."""

    index: np.ndarray  # (K,) flat ray indices
    prim: np.ndarray  # (K,)
    lx: np.ndarray  # point in the primitive frame = texture coordinates
    ly: np.ndarray
    lz: np.ndarray
    shade: np.ndarray


def primitive_surface(
    prims: Primitives,
    origin: np.ndarray,
    grid: RayGrid,
    t: np.ndarray,
    code: np.ndarray,
    sun: np.ndarray,
    ambient: float,
) -> PrimitiveSurface:
    """Texture coordinates and Lambertian shade of primitive hits. The normal is found in the local
    frame (box: the face whose normalised coordinate is +-1; cylinder: cap or radial side; ellipsoid:
    gradient) and dotted with the sun turned into that frame."""
    f32 = np.float32
    index = np.flatnonzero(code != ENCLOSURE)
    prim = code[index]
    tt = t[index]
    cos_yaw, sin_yaw = np.cos(prims.yaw), np.sin(prims.yaw)
    c, s = cos_yaw.astype(f32)[prim], sin_yaw.astype(f32)[prim]
    rx = (origin[0] - prims.center[:, 0]).astype(f32)[prim] + tt * grid.dx.reshape(-1)[index]
    ry = (origin[1] - prims.center[:, 1]).astype(f32)[prim] + tt * grid.dy.reshape(-1)[index]
    rz = (origin[2] - prims.center[:, 2]).astype(f32)[prim] + tt * grid.dz.reshape(-1)[index]
    lx, ly, lz = c * rx - s * rz, ry, s * rx + c * rz
    # The sun in each primitive's frame (M,): dot products there equal world-frame ones.
    sun_x = (cos_yaw * sun[0] - sin_yaw * sun[2]).astype(f32)[prim]
    sun_y = f32(sun[1])
    sun_z = (sin_yaw * sun[0] + cos_yaw * sun[2]).astype(f32)[prim]
    hx, hy, hz = (prims.half[:, k].astype(f32)[prim] for k in range(3))
    kind = prims.kind[prim]
    cos_sun = np.empty(prim.size, f32)
    # Boxes: the face whose normalised coordinate is largest in magnitude, facing along its sign.
    sel = np.flatnonzero(kind == BOX)
    if sel.size:
        nx, ny, nz = lx[sel] / hx[sel], ly[sel] / hy[sel], lz[sel] / hz[sel]
        ax, ay, az = np.abs(nx), np.abs(ny), np.abs(nz)
        cos_sun[sel] = np.where(
            (ax >= ay) & (ax >= az),
            np.sign(nx) * sun_x[sel],
            np.where(ay >= az, np.sign(ny) * sun_y, np.sign(nz) * sun_z[sel]),
        )
    # Cylinders: a cap or the radial side, whichever the point is closer to.
    sel = np.flatnonzero(kind == CYLINDER)
    if sel.size:
        nx, ny, nz = lx[sel] / hx[sel], ly[sel] / hy[sel], lz[sel] / hz[sel]
        radial = np.sqrt(nx * nx + nz * nz)
        side = (nx * sun_x[sel] + nz * sun_z[sel]) / np.maximum(radial, f32(1e-12))
        cap = np.abs(np.abs(ny) - f32(1.0)) < np.abs(radial - f32(1.0))
        cos_sun[sel] = np.where(cap, np.sign(ny) * sun_y, side)
    # Ellipsoids: the gradient of the implicit function.
    sel = np.flatnonzero(kind == ELLIPSOID)
    if sel.size:
        nx, ny, nz = (
            lx[sel] / (hx[sel] * hx[sel]),
            ly[sel] / (hy[sel] * hy[sel]),
            lz[sel] / (hz[sel] * hz[sel]),
        )
        norm = np.sqrt(nx * nx + ny * ny + nz * nz)
        cos_sun[sel] = (nx * sun_x[sel] + ny * sun_y + nz * sun_z[sel]) / np.maximum(norm, f32(1e-12))
    shade = f32(ambient) + f32(1.0 - ambient) * np.maximum(cos_sun, f32(0.0))
    return PrimitiveSurface(index=index, prim=prim, lx=lx, ly=ly, lz=lz, shade=shade)
