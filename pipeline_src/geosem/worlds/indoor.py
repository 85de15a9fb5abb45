"""Embedded procedural indoor world (``indoor-v1``): furnished rooms seen by a handheld camera, a
stand-in for NYUv2 (study B's depth data) with exact depth and labels.

Conventions: world frame with y down (gravity +y), the floor is the plane y = 0 and the ceiling
y = -room height; the room spans ``|x| <= width / 2``, ``|z| <= depth / 2``. Cameras are OpenCV-style
(x right, y down, z forward) with full 6-DoF poses (camera-to-world), NYU's Kinect intrinsics scaled to
the rendered size. Depth is z-depth in metres capped at ``max_depth_m`` (10 m, NYU's range); every pixel
sees a surface (closed room), so depth is dense, like NYUv2's in-painted depths.

Rooms hold walls, floor and ceiling plus windows, doors, pictures and curtains on the walls, and
furniture by room type (bedroom, living room, office, dining room): beds with pillows, night stands,
sofas, tables and coffee tables, desks, chairs, bookshelves with books, shelves, cabinets, lamps,
boxes, televisions and floor mats (placed by :mod:`geosem.worlds.furniture`). As in the driving world,
every surface draws its material from one class-blind distribution, so geometry, not colour, tells the
classes apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geosem.worlds import raycast as rc
from geosem.worlds.furniture import RoomLayout, furnish, wall_items
from geosem.worlds.materials import DRESSINGS, MaterialBank, Materials, surface_colour, to_uint8
from geosem.worlds.parts import PART_ID

WORLD_VERSION = "indoor-v1"
# NYUv2 colour camera (toolbox camera_params.m) at 640 x 480.
NYU_SIZE = (480, 640)
NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)
_LIGHT = np.array([0.3, -0.85, 0.42]) / np.linalg.norm([0.3, -0.85, 0.42])  # towards the light (above)
ROOM_TYPES = ("bedroom", "living_room", "office", "dining_room")


@dataclass(frozen=True)
class IndoorWorldConfig:
    """Everything that determines the indoor world; same config, byte-identical output."""

    seed: int = 0
    rooms: int = 24
    frames_per_room: int = 6
    height: int = 96
    width: int = 128
    max_depth_m: float = 10.0
    palette_size: int = 16
    ambient: float = 0.5
    dressing: str = "nyu"
    clutter: float = 1.0  # scales the number of small objects (boxes, books, pillows)

    def __post_init__(self) -> None:
        if self.rooms < 1 or self.frames_per_room < 1:
            raise ValueError("rooms and frames_per_room must be >= 1")
        if self.height < 8 or self.width < 8:
            raise ValueError("height and width must be >= 8")
        if self.dressing not in DRESSINGS:
            raise ValueError(f"dressing must be one of {sorted(DRESSINGS)}")

    @property
    def frames(self) -> int:
        return self.rooms * self.frames_per_room


def nyu_intrinsics(height: int, width: int) -> tuple[float, float, float, float]:
    """NYU's colour intrinsics scaled to ``height x width`` with pixel centres aligned."""
    fx, fy, cx, cy = NYU_INTRINSICS
    sy, sx = height / NYU_SIZE[0], width / NYU_SIZE[1]
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


@dataclass
class Room:
    kind: str
    width: float
    depth: float
    height: float
    prims: rc.Primitives
    materials: Materials
    surface_mats: np.ndarray  # floor, ceiling, wall -x, wall +x, wall -z, wall +z
    footprints: list[tuple[float, float, float, float]]  # (x0, x1, z0, z1) of floor furniture


def build_room(config: IndoorWorldConfig, room_index: int) -> Room:
    rng = np.random.default_rng([config.seed, room_index, 2])
    dressing = DRESSINGS[config.dressing]
    bank = MaterialBank(rng, config.palette_size, **dressing)
    kind = ROOM_TYPES[int(rng.integers(0, len(ROOM_TYPES)))]
    width, depth, height = rng.uniform(3.2, 6.0), rng.uniform(3.5, 7.0), rng.uniform(2.4, 3.0)
    surface_mats = np.array([bank.draw() for _ in range(6)], dtype=np.int64)
    lay = RoomLayout(rng, bank, width, depth)
    furnish(lay, kind, config.clutter)
    wall_items(lay)
    prims = rc.primitives_from_rows(lay.rows)
    return Room(kind, width, depth, height, prims, bank.freeze(), surface_mats, lay.footprints)


def _distance_to_walls(x: float, z: float, heading: float, half_w: float, half_d: float) -> float:
    dx, dz = math.sin(heading), math.cos(heading)
    tx = (math.copysign(half_w, dx) - x) / dx if abs(dx) > 1e-9 else math.inf
    tz = (math.copysign(half_d, dz) - z) / dz if abs(dz) > 1e-9 else math.inf
    return min(tx, tz)


def camera_poses(config: IndoorWorldConfig, room: Room, room_index: int) -> np.ndarray:
    """A handheld 6-DoF walk through the free floor: (frames_per_room, 4, 4) camera-to-world poses."""
    rng = np.random.default_rng([config.seed, room_index, 3])
    w, d = room.width / 2 - 0.5, room.depth / 2 - 0.5

    def free(x: float, z: float) -> bool:
        return all(
            not (a0 - 0.35 < x < a1 + 0.35 and b0 - 0.35 < z < b1 + 0.35)
            for a0, a1, b0, b1 in room.footprints
        )

    x, z = 0.0, 0.0
    for _ in range(200):
        x, z = rng.uniform(-w, w), rng.uniform(-d, d)
        if free(x, z):
            break
    yaw = rng.uniform(-math.pi, math.pi)
    poses = []
    for _ in range(config.frames_per_room):
        height = rng.uniform(1.2, 1.7)
        pitch = rng.uniform(-0.45, 0.15)  # mostly looking down a little, like a person filming a room
        roll = rng.uniform(-0.1, 0.1)
        # Of a few random headings, look along the one with the most room in front (a person filming
        # a room does not face the wall from half a metre).
        candidates = yaw + rng.uniform(-1.2, 1.2, size=6)
        room_ahead = [_distance_to_walls(x, z, float(c), room.width / 2, room.depth / 2) for c in candidates]
        yaw = float(candidates[int(np.argmax(room_ahead))])
        cy, sy, cp, sp, cr, sr = (
            math.cos(yaw),
            math.sin(yaw),
            math.cos(pitch),
            math.sin(pitch),
            math.cos(roll),
            math.sin(roll),
        )
        r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])  # positive pitch looks down (+y)
        r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        pose = np.eye(4)
        pose[:3, :3] = r_yaw @ r_pitch @ r_roll
        pose[:3, 3] = (x, -height, z)
        poses.append(pose)
        for _ in range(50):  # step 0.2 - 0.6 m to a free spot
            step, heading = rng.uniform(0.2, 0.6), rng.uniform(-math.pi, math.pi)
            nx, nz = x + step * math.sin(heading), z + step * math.cos(heading)
            if -w < nx < w and -d < nz < d and free(nx, nz):
                x, z = nx, nz
                break
    return np.stack(poses)


@dataclass
class IndoorFrame:
    image: np.ndarray  # (H,W,3) uint8 RGB
    depth: np.ndarray  # (H,W) float32 metres, capped
    parts: np.ndarray  # (H,W) uint8
    instance: np.ndarray  # (H,W) int64 object id + 1, 0 = room surface
    pose: np.ndarray
    intrinsics: tuple[float, float, float, float]


def _enclosure(room: Room, origin: np.ndarray, grid: rc.RayGrid) -> tuple[np.ndarray, np.ndarray]:
    """Exit distance of every ray from the room box, and which surface it exits through
    (0 floor, 1 ceiling, 2 wall -x, 3 wall +x, 4 wall -z, 5 wall +x)."""
    f32 = np.float32
    best = np.full(grid.dx.size, np.inf, f32)
    face = np.zeros(grid.dx.size, np.int64)
    limits = (
        (grid.dy.reshape(-1), origin[1], 0.0, -room.height, 0),
        (grid.dx.reshape(-1), origin[0], room.width / 2, -room.width / 2, 2),
        (grid.dz.reshape(-1), origin[2], room.depth / 2, -room.depth / 2, 4),
    )
    with np.errstate(divide="ignore"):
        for d, o, high, low, first in limits:
            # Moving towards +axis the ray leaves through the high plane, else through the low one.
            plane = np.where(d > 0, f32(high), f32(low))
            t = (plane - f32(o)) / d
            t[~np.isfinite(t) | (t <= 0)] = np.inf
            better = t < best
            best = np.where(better, t, best)
            if first == 0:
                face = np.where(better, np.where(d > 0, 0, 1), face)
            else:
                face = np.where(better, np.where(d > 0, first + 1, first), face)
    return best, face


_SURFACE_PARTS = np.array([PART_ID["floor"], PART_ID["ceiling"]] + [PART_ID["room wall"]] * 4, dtype=np.int64)
_SURFACE_NORMALS = np.array(
    [[0, -1, 0], [0, 1, 0], [1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1]], dtype=np.float64
)  # inward normals of floor, ceiling, walls


def render_view(
    room: Room,
    pose: np.ndarray,
    height: int,
    width: int,
    intrinsics: tuple[float, float, float, float],
    ambient: float,
    max_depth: float,
) -> IndoorFrame:
    rays = rc.pinhole_rays(height, width, intrinsics)
    grid = rc.RayGrid.rotated(rays, pose[:3, :3])
    origin = pose[:3, 3]
    keys = rc.empty_keys(height * width).reshape(height, width)
    rects = rc.pinhole_rects(room.prims.corners(), origin, pose[:3, :3], intrinsics, height, width)
    rc.cast_primitives(rc.local_frames(room.prims, origin), rects, grid, keys)
    flat = keys.reshape(-1)
    t_prim, _ = rc.unpack(flat)
    t_room, face = _enclosure(room, origin, grid)
    walls = np.flatnonzero(t_room < t_prim)
    flat[walls] = rc.pack(t_room[walls], rc.ENCLOSURE)
    t, code = rc.unpack(flat)
    n = t.size
    f32 = np.float32
    part = np.empty(n, np.int64)
    mat = np.empty(n, np.int64)
    tx, ty, tz, shade = (np.empty(n, f32) for _ in range(4))
    surf = rc.primitive_surface(room.prims, origin, grid, t, code, _LIGHT, ambient)
    part[surf.index] = room.prims.part[surf.prim]
    mat[surf.index] = room.prims.material[surf.prim]
    tx[surf.index], ty[surf.index], tz[surf.index] = surf.lx, surf.ly, surf.lz
    shade[surf.index] = surf.shade
    fw = face[walls]
    part[walls] = _SURFACE_PARTS[fw]
    mat[walls] = room.surface_mats[fw]
    tw = t[walls]
    tx[walls] = f32(origin[0]) + tw * grid.dx.reshape(-1)[walls]
    ty[walls] = f32(origin[1]) + tw * grid.dy.reshape(-1)[walls]
    tz[walls] = f32(origin[2]) + tw * grid.dz.reshape(-1)[walls]
    surface_shade = (ambient + (1.0 - ambient) * np.maximum(_SURFACE_NORMALS @ _LIGHT, 0.0)).astype(f32)
    shade[walls] = surface_shade[fw]
    r, g, b = surface_colour(tx, ty, tz, mat, room.materials)
    rgb = to_uint8(r, g, b, shade).reshape(height, width, 3)
    obj = np.where(code == rc.ENCLOSURE, -1, room.prims.obj[np.minimum(code, len(room.prims) - 1)])
    depth = np.minimum(t, f32(max_depth)).reshape(height, width)
    return IndoorFrame(
        image=rgb,
        depth=depth.astype(np.float32),
        parts=part.reshape(height, width).astype(np.uint8),
        instance=(obj + 1).reshape(height, width),
        pose=pose,
        intrinsics=intrinsics,
    )


def render_room(config: IndoorWorldConfig, room_index: int) -> tuple[Room, list[IndoorFrame]]:
    """Every frame of one room (deterministic in ``config.seed`` and ``room_index``)."""
    room = build_room(config, room_index)
    intrinsics = nyu_intrinsics(config.height, config.width)
    frames = [
        render_view(room, pose, config.height, config.width, intrinsics, config.ambient, config.max_depth_m)
        for pose in camera_poses(config, room, room_index)
    ]
    return room, frames
