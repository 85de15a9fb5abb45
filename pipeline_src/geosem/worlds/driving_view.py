"""What a view of the driving world sees: rays against the ground (road, kerbs, raised bands) and the
scene's primitives, then shading into RGB and part ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from geosem.worlds import raycast as rc
from geosem.worlds.driving_scene import GRASS, LAT_EXTENT_M, ROAD, SIDEWALK, SKY, DrivingScene
from geosem.worlds.materials import surface_colour, to_uint8

# Unit vector towards the sun (world frame): behind-left and ~35 degrees up, which keeps the mean shading
# of the ground, of facades and of object fronts within a similar range.
_SUN = np.array([-0.5, -0.55, -0.6]) / np.linalg.norm([-0.5, -0.55, -0.6])
_SKY_DOME_M = 60.0


def _ground(
    scene: DrivingScene, origin: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Ground hits of world rays (all pointing down, float64): t (inf = none), part, material and the
    x/z of the normal for kerb faces (0 elsewhere: the planes face straight up)."""
    n = dx.size
    road, half = scene.road, scene.half_road
    t_hi = (scene.y_raised - origin[1]) / dy
    s_hi, lat_hi = road.to_road(origin[0] + t_hi * dx, origin[2] + t_hi * dz)
    t_lo = (scene.y_road - origin[1]) / dy
    raised = np.abs(lat_hi) >= half
    t = np.where(raised, t_hi, t_lo)
    s, lat = s_hi.copy(), lat_hi.copy()
    low = np.flatnonzero(~raised)
    if low.size:
        s[low], lat[low] = road.to_road(origin[0] + t_lo[low] * dx[low], origin[2] + t_lo[low] * dz[low])
    kerb = np.flatnonzero(~raised & (np.abs(lat) >= half))
    normal_x = np.zeros(n)
    normal_z = np.zeros(n)
    if kerb.size:
        kerb_lat = np.sign(lat[kerb]) * half
        tk = road.crossing(origin, dx[kerb], dz[kerb], kerb_lat, t_hi[kerb], t_lo[kerb])
        t[kerb] = tk
        s[kerb] = road.to_road(origin[0] + tk * dx[kerb], origin[2] + tk * dz[kerb])[0]
        lat[kerb] = kerb_lat
        psi = road.heading(s[kerb])
        sgn = -np.sign(kerb_lat)  # the kerb face looks back towards the road centre line
        normal_x[kerb] = sgn * np.cos(psi)
        normal_z[kerb] = -sgn * np.sin(psi)
    valid = (s >= scene.s_min) & (s <= scene.s_max) & (np.abs(lat) <= LAT_EXTENT_M)
    part = np.full(n, ROAD, dtype=np.int64)
    mat = scene.road_mats[np.clip(np.searchsorted(scene.road_starts, s, side="right") - 1, 0, None)]
    off = np.abs(lat) - half
    for side in (-1, 1):
        sel = np.flatnonzero((np.sign(lat) == side) & (off >= 0))
        if sel.size == 0:
            continue
        g = scene.sides[side]
        k = g.segment(s[sel])
        o = off[sel]
        in_sw = o < scene.config.sidewalk_width_m
        in_strip = ~in_sw & (o < scene.config.sidewalk_width_m + g.strip_width[k])
        part[sel] = np.where(in_sw, SIDEWALK, np.where(in_strip, GRASS, g.verge_part[k]))
        mat[sel] = np.where(in_sw, g.sidewalk_mat[k], np.where(in_strip, g.strip_mat[k], g.verge_mat[k]))
    t = np.where(valid, t, np.inf)
    return t, part, mat, np.stack([normal_x, normal_z], axis=1)


@dataclass
class ViewHits:
    """Visibility of one view: t per ray (inf = nothing), primitive per ray (-1 = ground or sky) and the
    ground's part/material for the rays that see the ground."""

    t: np.ndarray  # (N,) float32
    code: np.ndarray  # (N,) int64 primitive index or raycast.ENCLOSURE
    ground: np.ndarray  # indices of rays whose visible surface is the ground
    ground_part: np.ndarray
    ground_mat: np.ndarray
    ground_normal_xz: np.ndarray

    @property
    def prim(self) -> np.ndarray:
        return np.where(self.code == rc.ENCLOSURE, -1, self.code)


def cast_view(
    scene: DrivingScene,
    prims: rc.Primitives,
    origin: np.ndarray,
    grid: rc.RayGrid,
    rects: rc.Rects,
    frames: rc.LocalFrames | None = None,
) -> ViewHits:
    """Primitives first; then the ground only for downward rays not already hidden at the raised plane
    (the first ground surface a downward ray can reach), which skips most pixels under near objects."""
    rows, cols = grid.shape
    keys = rc.empty_keys(rows * cols).reshape(rows, cols)
    rc.cast_primitives(frames or rc.local_frames(prims, origin), rects, grid, keys)
    flat_keys = keys.reshape(-1)
    t_prim, _ = rc.unpack(flat_keys)
    dy = grid.dy.reshape(-1)
    down = np.flatnonzero(dy > 1e-6)
    t_plane = (scene.y_raised - origin[1]) / dy[down]
    candidates = down[t_prim[down] > t_plane]
    g_t, g_part, g_mat, g_normal = _ground(
        scene,
        origin,
        grid.dx.reshape(-1)[candidates].astype(np.float64),
        dy[candidates].astype(np.float64),
        grid.dz.reshape(-1)[candidates].astype(np.float64),
    )
    g_t32 = g_t.astype(np.float32)
    wins = g_t32 < t_prim[candidates]
    ground = candidates[wins]
    flat_keys[ground] = rc.pack(g_t32[wins], rc.ENCLOSURE)
    t, code = rc.unpack(flat_keys)
    return ViewHits(
        t=t,
        code=code,
        ground=ground,
        ground_part=g_part[wins],
        ground_mat=g_mat[wins],
        ground_normal_xz=g_normal[wins],
    )


def shade_view(
    scene: DrivingScene, prims: rc.Primitives, origin: np.ndarray, grid: rc.RayGrid, hits: ViewHits
) -> tuple[np.ndarray, np.ndarray]:
    """RGB (N,3) uint8 and part ids (N,) int64 of a camera view."""
    n = hits.t.size
    ambient = scene.config.ambient
    f32 = np.float32
    part = np.full(n, SKY, dtype=np.int64)
    mat = np.full(n, scene.sky_material, dtype=np.int64)
    tx, ty, tz = np.empty(n, f32), np.empty(n, f32), np.empty(n, f32)
    shade = np.empty(n, f32)

    surf = rc.primitive_surface(prims, origin, grid, hits.t, hits.code, _SUN, ambient)
    part[surf.index] = prims.part[surf.prim]
    mat[surf.index] = prims.material[surf.prim]
    tx[surf.index], ty[surf.index], tz[surf.index] = surf.lx, surf.ly, surf.lz
    shade[surf.index] = surf.shade

    dx, dy, dz = grid.dx.reshape(-1), grid.dy.reshape(-1), grid.dz.reshape(-1)
    g = hits.ground
    part[g] = hits.ground_part
    mat[g] = hits.ground_mat
    tg = hits.t[g]
    tx[g], ty[g], tz[g] = (
        f32(origin[0]) + tg * dx[g],
        f32(origin[1]) + tg * dy[g],
        f32(origin[2]) + tg * dz[g],
    )
    up_shade = ambient + (1.0 - ambient) * max(-float(_SUN[1]), 0.0)
    nx, nz = hits.ground_normal_xz[:, 0], hits.ground_normal_xz[:, 1]
    kerb_shade = ambient + (1.0 - ambient) * np.maximum(nx * _SUN[0] + nz * _SUN[2], 0.0)
    shade[g] = np.where((nx != 0) | (nz != 0), kerb_shade, up_shade)

    sky = np.flatnonzero(hits.t == np.inf)
    if sky.size:
        sx, sy, sz = dx[sky], dy[sky], dz[sky]
        k = f32(_SKY_DOME_M) / np.sqrt(sx * sx + sy * sy + sz * sz)
        # A dome fixed in the world: the sky keeps its texture as the car moves and turns.
        tx[sky], ty[sky], tz[sky] = k * sx, k * sy, k * sz
        shade[sky] = f32(0.68) + f32(0.25) * np.clip(-sy * k / f32(_SKY_DOME_M * 0.35), 0.0, 1.0)
    r, gr, b = surface_colour(tx, ty, tz, mat, scene.materials)
    return to_uint8(r, gr, b, shade), part


def render_camera(
    scene: DrivingScene,
    prims: rc.Primitives,
    pose: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    height: int,
    width: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Any pinhole camera in the scene: RGB (H,W,3) uint8, parts (H,W) uint8, z-depth (H,W) float32."""
    rays = rc.pinhole_rays(height, width, intrinsics)
    grid = rc.RayGrid.rotated(rays, pose[:3, :3])
    rects = rc.pinhole_rects(prims.corners(), pose[:3, 3], pose[:3, :3], intrinsics, height, width)
    hits = cast_view(scene, prims, pose[:3, 3], grid, rects)
    rgb, part = shade_view(scene, prims, pose[:3, 3], grid, hits)
    depth = np.where(np.isfinite(hits.t), hits.t, 0.0).astype(np.float32)
    return (
        rgb.reshape(height, width, 3),
        part.reshape(height, width).astype(np.uint8),
        depth.reshape(height, width),
    )
