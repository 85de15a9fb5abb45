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
boxes, televisions and floor mats. As in the driving world, every surface draws its material from one
class-blind distribution, so geometry, not colour, tells the classes apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from geosem.sources.synthetic import raycast as rc
from geosem.sources.synthetic.parts import PART_ID

WORLD_VERSION = "indoor-v1"
# NYUv2 colour camera (toolbox camera_params.m) at 640 x 480.
NYU_SIZE = (480, 640)
NYU_INTRINSICS = (518.8579, 519.4696, 325.5824, 253.7362)
_LIGHT = np.array([0.3, -0.85, 0.42]) / np.linalg.norm([0.3, -0.85, 0.42])  # towards the light (above)
ROOM_TYPES = ("bedroom", "living_room", "office", "dining_room")

DRESSINGS = rc.DRESSINGS


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
    materials: rc.Materials
    surface_mats: np.ndarray  # floor, ceiling, wall -x, wall +x, wall -z, wall +z
    footprints: list[tuple[float, float, float, float]]  # (x0, x1, z0, z1) of floor furniture


class _Layout:
    """Collects primitives and floor footprints of one room."""

    def __init__(self, rng: np.random.Generator, bank: rc.MaterialBank, width: float, depth: float) -> None:
        self.rng, self.bank = rng, bank
        self.width, self.depth = width, depth
        self.rows: list[tuple] = []
        self.footprints: list[tuple[float, float, float, float]] = []
        self.objects = 0

    def box(
        self, part: str, center: tuple, half: tuple, yaw: float, material: int, kind: int = rc.BOX
    ) -> None:
        self.rows.append((kind, *center, yaw, *half, PART_ID[part], material, self.objects))

    def new_object(self) -> None:
        self.objects += 1

    def free(self, x0: float, x1: float, z0: float, z1: float, margin: float = 0.05) -> bool:
        w, d = self.width / 2, self.depth / 2
        if x0 < -w + 0.01 or x1 > w - 0.01 or z0 < -d + 0.01 or z1 > d - 0.01:
            return False
        return all(
            x1 + margin <= a0 or x0 - margin >= a1 or z1 + margin <= b0 or z0 - margin >= b1
            for a0, a1, b0, b1 in self.footprints
        )


def _place(lay: _Layout, size_x: float, size_z: float, against_wall: bool, tries: int = 30) -> tuple | None:
    """Find a free floor spot for a footprint (size_x across, size_z deep); returns (x, z, yaw) with the
    object's front (+z local) facing into the room when against a wall."""
    rng = lay.rng
    w, d = lay.width / 2, lay.depth / 2
    for _ in range(tries):
        if against_wall:
            wall = int(rng.integers(0, 4))
            yaw = (0.0, math.pi, math.pi / 2, -math.pi / 2)[wall]  # front faces +z, -z, +x, -x
            along = rng.uniform(-1.0, 1.0)
            if wall == 0:
                x, z = along * (w - size_x / 2), -d + size_z / 2 + 0.02
            elif wall == 1:
                x, z = along * (w - size_x / 2), d - size_z / 2 - 0.02
            elif wall == 2:
                x, z = -w + size_z / 2 + 0.02, along * (d - size_x / 2)
            else:
                x, z = w - size_z / 2 - 0.02, along * (d - size_x / 2)
        else:
            yaw = rng.choice([0.0, math.pi / 2]) + rng.uniform(-0.2, 0.2)
            x, z = rng.uniform(-w + 0.8, w - 0.8), rng.uniform(-d + 0.8, d - 0.8)
        ex, ez = (size_x, size_z) if abs(math.sin(yaw)) < 0.5 else (size_z, size_x)
        # A slightly rotated footprint: its axis-aligned bound, generously.
        ex, ez = ex + 0.2 * abs(math.sin(2 * yaw)), ez + 0.2 * abs(math.sin(2 * yaw))
        box = (x - ex / 2, x + ex / 2, z - ez / 2, z + ez / 2)
        if lay.free(*box):
            lay.footprints.append(box)
            return x, z, yaw
    return None


def _local(x: float, z: float, yaw: float, lx: float, lz: float) -> tuple[float, float]:
    """World (x, z) of the point at local (lx, lz) of a frame at (x, z) turned by ``yaw``."""
    c, s = math.cos(yaw), math.sin(yaw)
    return x + c * lx + s * lz, z - s * lx + c * lz


def _table(lay: _Layout, part: str, size: tuple, height: float, against_wall: bool) -> tuple | None:
    spot = _place(lay, size[0], size[1], against_wall)
    if spot is None:
        return None
    x, z, yaw = spot
    lay.new_object()
    m, leg = lay.bank.draw(), lay.bank.draw()
    lay.box(part, (x, -height + 0.02, z), (size[0] / 2, 0.02, size[1] / 2), yaw, m)
    for sx in (-1, 1):
        for sz in (-1, 1):
            px, pz = _local(x, z, yaw, sx * (size[0] / 2 - 0.05), sz * (size[1] / 2 - 0.05))
            lay.box(part, (px, -(height - 0.04) / 2, pz), (0.025, (height - 0.04) / 2, 0.025), yaw, leg)
    return spot


def _chair(lay: _Layout, x: float, z: float, yaw: float) -> None:
    lay.new_object()
    m = lay.bank.draw()
    seat = 0.45
    lay.box("chair", (x, -seat, z), (0.22, 0.025, 0.22), yaw, m)
    bx, bz = _local(x, z, yaw, 0.0, -0.2)
    lay.box("chair", (bx, -seat - 0.25, bz), (0.22, 0.22, 0.02), yaw, m)
    for sx in (-1, 1):
        for sz in (-1, 1):
            px, pz = _local(x, z, yaw, sx * 0.19, sz * 0.19)
            lay.box("chair", (px, -seat / 2, pz), (0.02, seat / 2, 0.02), yaw, m)


def _furnish(lay: _Layout, kind: str, room_h: float, clutter: float) -> None:
    rng, bank = lay.rng, lay.bank
    # Large pieces first (they need wall space), then small ones.
    if kind == "bedroom":
        spot = _place(lay, rng.uniform(1.4, 1.8), rng.uniform(2.0, 2.2), True)
        if spot:
            x, z, yaw = spot
            lay.new_object()
            bw = 0.8
            lay.box("bed", (x, -0.15, z), (bw, 0.15, 1.05), yaw, bank.draw())
            lay.box("bed", (x, -0.4, z), (bw - 0.03, 0.1, 1.02), yaw, bank.draw())  # mattress
            hx, hz = _local(x, z, yaw, 0.0, -1.05)
            lay.box("bed", (hx, -0.55, hz), (bw, 0.55, 0.04), yaw, bank.draw())  # headboard
            for sx in (-0.4, 0.4):
                lay.new_object()
                px, pz = _local(x, z, yaw, sx, -0.8)
                lay.box("pillow", (px, -0.56, pz), (0.3, 0.07, 0.18), yaw, bank.draw(), rc.ELLIPSOID)
            for sx in (-1, 1):
                nx, nz = _local(x, z, yaw, sx * (bw + 0.35), -0.8)
                box = (nx - 0.3, nx + 0.3, nz - 0.3, nz + 0.3)
                if lay.free(*box):
                    lay.footprints.append(box)
                    lay.new_object()
                    lay.box("night stand", (nx, -0.28, nz), (0.25, 0.28, 0.22), yaw, bank.draw())
        _cabinet(lay, "cabinet", (1.0, 0.55), rng.uniform(1.6, 2.0))
        _floor_mat(lay)
    elif kind == "living_room":
        spot = _place(lay, rng.uniform(1.8, 2.4), 0.9, True)
        if spot:
            x, z, yaw = spot
            lay.new_object()
            m = bank.draw()
            half = spot and (rng.uniform(0.9, 1.2))
            lay.box("sofa", (x, -0.22, z), (half, 0.22, 0.45), yaw, m)
            bx, bz = _local(x, z, yaw, 0.0, -0.35)
            lay.box("sofa", (bx, -0.6, bz), (half, 0.2, 0.1), yaw, m)
            for sx in (-1, 1):
                ax, az = _local(x, z, yaw, sx * (half - 0.08), 0.0)
                lay.box("sofa", (ax, -0.4, az), (0.08, 0.15, 0.45), yaw, m)
            cx, cz = _local(x, z, yaw, 0.0, 1.1)
            box = (cx - 0.6, cx + 0.6, cz - 0.6, cz + 0.6)
            if lay.free(*box):
                lay.footprints.append(box)
                lay.new_object()
                lay.box("coffee table", (cx, -0.2, cz), (0.5, 0.2, 0.3), yaw, bank.draw())
        tv = _cabinet(lay, "cabinet", (1.2, 0.45), 0.5)
        if tv:
            x, z, yaw, h = tv
            lay.new_object()
            lay.box("television", (x, -h - 0.3, z), (0.5, 0.3, 0.04), yaw, bank.draw())
        _bookshelf(lay, clutter)
        _floor_mat(lay)
    elif kind == "office":
        desk = _table(lay, "desk", (rng.uniform(1.2, 1.6), 0.7), 0.74, True)
        if desk:
            x, z, yaw = desk
            cx, cz = _local(x, z, yaw, 0.0, 0.6)
            box = (cx - 0.3, cx + 0.3, cz - 0.3, cz + 0.3)
            if lay.free(*box):
                lay.footprints.append(box)
                _chair(lay, cx, cz, yaw + math.pi)
            lay.new_object()
            mx, mz = _local(x, z, yaw, 0.0, -0.15)
            lay.box("television", (mx, -0.74 - 0.2, mz), (0.27, 0.17, 0.02), yaw, bank.draw())
        _bookshelf(lay, clutter)
        _shelves(lay, clutter)
    else:  # dining room
        table = _table(lay, "table", (rng.uniform(1.2, 1.8), rng.uniform(0.8, 1.0)), 0.75, False)
        if table:
            x, z, yaw = table
            for sx, sz, turn in (
                (-0.45, 0.75, math.pi),
                (0.45, 0.75, math.pi),
                (-0.45, -0.75, 0.0),
                (0.45, -0.75, 0.0),
            ):
                cx, cz = _local(x, z, yaw, sx, sz)
                box = (cx - 0.25, cx + 0.25, cz - 0.25, cz + 0.25)
                if lay.free(*box, margin=0.0):
                    lay.footprints.append(box)
                    _chair(lay, cx, cz, yaw + turn)
        _cabinet(lay, "cabinet", (1.4, 0.5), 0.9)
        _shelves(lay, clutter)
    # Lamps and boxes anywhere.
    spot = _place(lay, 0.4, 0.4, True)
    if spot:
        x, z, _ = spot
        lay.new_object()
        h = rng.uniform(1.3, 1.7)
        lay.box("lamp", (x, -h / 2, z), (0.03, h / 2, 0.03), 0.0, bank.draw(), rc.CYLINDER)
        lay.box("lamp", (x, -h - 0.12, z), (0.2, 0.14, 0.2), 0.0, bank.draw(), rc.CYLINDER)
    for _ in range(int(rng.poisson(2.0 * clutter))):
        s = rng.uniform(0.2, 0.5)
        spot = _place(lay, s, s, bool(rng.random() < 0.7))
        if spot:
            x, z, yaw = spot
            lay.new_object()
            lay.box("box", (x, -s / 2, z), (s / 2, s / 2, s / 2), yaw, bank.draw())


def _cabinet(lay: _Layout, part: str, size: tuple, height: float) -> tuple | None:
    spot = _place(lay, *size, True)
    if spot is None:
        return None
    x, z, yaw = spot
    lay.new_object()
    lay.box(part, (x, -height / 2, z), (size[0] / 2, height / 2, size[1] / 2), yaw, lay.bank.draw())
    return x, z, yaw, height


def _bookshelf(lay: _Layout, clutter: float) -> None:
    rng = lay.rng
    width, height, depth = rng.uniform(0.8, 1.2), rng.uniform(1.6, 2.0), 0.32
    spot = _place(lay, width, depth, True)
    if spot is None:
        return
    x, z, yaw = spot
    lay.new_object()
    m = lay.bank.draw()
    bx, bz = _local(x, z, yaw, 0.0, -depth / 2 + 0.01)
    lay.box("bookshelf", (bx, -height / 2, bz), (width / 2, height / 2, 0.01), yaw, m)
    for sx in (-1, 1):
        px, pz = _local(x, z, yaw, sx * (width / 2 - 0.01), 0.0)
        lay.box("bookshelf", (px, -height / 2, pz), (0.01, height / 2, depth / 2), yaw, m)
    levels = 4
    for k in range(levels + 1):
        y = -0.02 - k * (height - 0.04) / levels
        lay.box("bookshelf", (x, y, z), (width / 2, 0.01, depth / 2), yaw, m)
        if k == levels:
            break
        # A row of books standing on this board.
        pos = -width / 2 + 0.03
        while pos < width / 2 - 0.08 and rng.random() < 0.93 ** (1.0 / max(clutter, 1e-3)):
            w = rng.uniform(0.02, 0.06)
            h = rng.uniform(0.15, min(0.3, (height - 0.04) / levels - 0.04))
            px, pz = _local(x, z, yaw, pos + w / 2, 0.02)
            lay.new_object()
            lay.box(
                "book",
                (px, y - 0.01 - h / 2, pz),
                (w / 2, h / 2, rng.uniform(0.08, 0.13)),
                yaw,
                lay.bank.draw(),
            )
            pos += w + rng.uniform(0.0, 0.03)


def _shelves(lay: _Layout, clutter: float) -> None:
    """Open wall shelves: boards on brackets, holding books and boxes."""
    rng = lay.rng
    width = rng.uniform(0.8, 1.4)
    spot = _place(lay, width, 0.3, True)
    if spot is None:
        return
    x, z, yaw = spot
    lay.new_object()
    m = lay.bank.draw()
    for k in range(int(rng.integers(2, 4))):
        y = -1.0 - 0.35 * k
        lay.box("shelves", (x, y, z), (width / 2, 0.015, 0.14), yaw, m)
        if rng.random() < 0.6 * clutter:
            px, pz = _local(x, z, yaw, rng.uniform(-width / 3, width / 3), 0.0)
            s = rng.uniform(0.1, 0.2)
            lay.new_object()
            lay.box("box", (px, y - 0.015 - s / 2, pz), (s / 2, s / 2, s / 2), yaw, lay.bank.draw())


def _floor_mat(lay: _Layout) -> None:
    rng = lay.rng
    sx, sz = rng.uniform(1.0, 2.0), rng.uniform(0.7, 1.4)
    x = rng.uniform(-lay.width / 2 + sx / 2 + 0.1, lay.width / 2 - sx / 2 - 0.1)
    z = rng.uniform(-lay.depth / 2 + sz / 2 + 0.1, lay.depth / 2 - sz / 2 - 0.1)
    lay.new_object()
    # Thin enough to lie on the floor, thick enough to stay in front of it in a float32 depth test.
    lay.box("floor mat", (x, -0.006, z), (sx / 2, 0.006, sz / 2), 0.0, lay.bank.draw())


def _wall_items(lay: _Layout, room_h: float) -> None:
    """Windows, a door, pictures and curtains: thin boxes standing 2 cm out of the walls."""
    rng, bank = lay.rng, lay.bank
    w, d = lay.width / 2, lay.depth / 2

    def on_wall(
        wall: int, along: float, y: float, size: tuple[float, float], part: str, thick: float
    ) -> None:
        yaw = (0.0, 0.0, math.pi / 2, math.pi / 2)[wall]
        if wall == 0:
            center = (along, y, -d + thick)
        elif wall == 1:
            center = (along, y, d - thick)
        elif wall == 2:
            center = (-w + thick, y, along)
        else:
            center = (w - thick, y, along)
        lay.new_object()
        lay.box(part, center, (size[0] / 2, size[1] / 2, thick), yaw, bank.draw())

    walls = list(rng.permutation(4))
    door_wall = int(walls[0])
    span = lay.width if door_wall < 2 else lay.depth
    on_wall(door_wall, rng.uniform(-span / 2 + 0.6, span / 2 - 0.6), -1.02, (0.85, 2.04), "door", 0.03)
    for wall in walls[1:3]:
        span = lay.width if wall < 2 else lay.depth
        along = rng.uniform(-span / 2 + 1.0, span / 2 - 1.0) if span > 2.2 else 0.0
        win_w, win_h = rng.uniform(0.8, 1.4), rng.uniform(1.0, 1.4)
        on_wall(int(wall), along, -0.9 - win_h / 2, (win_w, win_h), "window", 0.02)
        if rng.random() < 0.5:
            on_wall(int(wall), along - win_w / 2 - 0.15, -1.2, (0.25, 2.3), "curtain", 0.05)
    for _ in range(int(rng.integers(1, 4))):
        wall = int(rng.integers(0, 4))
        span = lay.width if wall < 2 else lay.depth
        size = (rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.7))
        on_wall(
            wall, rng.uniform(-span / 2 + 0.5, span / 2 - 0.5), -rng.uniform(1.3, 1.8), size, "picture", 0.015
        )


def build_room(config: IndoorWorldConfig, room_index: int) -> Room:
    rng = np.random.default_rng([config.seed, room_index, 2])
    dressing = DRESSINGS[config.dressing]
    bank = rc.MaterialBank(rng, config.palette_size, **dressing)
    kind = ROOM_TYPES[int(rng.integers(0, len(ROOM_TYPES)))]
    width, depth, height = rng.uniform(3.2, 6.0), rng.uniform(3.5, 7.0), rng.uniform(2.4, 3.0)
    surface_mats = np.array([bank.draw() for _ in range(6)], dtype=np.int64)
    lay = _Layout(rng, bank, width, depth)
    _furnish(lay, kind, height, config.clutter)
    _wall_items(lay, height)
    rows = lay.rows
    prims = rc.Primitives(
        kind=np.array([r[0] for r in rows], dtype=np.int64),
        center=np.array([r[1:4] for r in rows], dtype=np.float64).reshape(-1, 3),
        yaw=np.array([r[4] for r in rows], dtype=np.float64),
        half=np.array([r[5:8] for r in rows], dtype=np.float64).reshape(-1, 3),
        part=np.array([r[8] for r in rows], dtype=np.int64),
        material=np.array([r[9] for r in rows], dtype=np.int64),
        obj=np.array([r[10] for r in rows], dtype=np.int64),
    )
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
    r, g, b = rc.surface_colour(tx, ty, tz, mat, room.materials)
    rgb = rc.to_uint8(r, g, b, shade).reshape(height, width, 3)
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
