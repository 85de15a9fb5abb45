"""Furniture and wall items of the indoor world's rooms (:mod:`geosem.worlds.indoor`).

A room's layout draws from one numpy generator seeded by ``(seed, room index)`` (the material bank draws
from it too), in a fixed order: furniture by room kind, then lamp and boxes, then the wall items. That
order is the room: reordering two steps, or two draws within one, changes the rendered files
(tests/unit/test_world_digests.py).
"""

from __future__ import annotations

import math

import numpy as np

from geosem.worlds import raycast as rc
from geosem.worlds.materials import MaterialBank
from geosem.worlds.parts import PART_ID


class RoomLayout:
    """Collects primitives and floor footprints of one room."""

    def __init__(self, rng: np.random.Generator, bank: MaterialBank, width: float, depth: float) -> None:
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


def _place(
    lay: RoomLayout, size_x: float, size_z: float, against_wall: bool, tries: int = 30
) -> tuple | None:
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


def _table(lay: RoomLayout, part: str, size: tuple, height: float, against_wall: bool) -> tuple | None:
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


def _chair(lay: RoomLayout, x: float, z: float, yaw: float) -> None:
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


def furnish(lay: RoomLayout, kind: str, clutter: float) -> None:
    """Furniture by room kind, then a lamp and boxes anywhere. Large pieces come first (they need wall
    space), then small ones; ``clutter`` scales the number of small objects."""
    _ROOM_FURNITURE[kind](lay, clutter)
    _lamp(lay)
    _boxes(lay, clutter)


def _bedroom(lay: RoomLayout, clutter: float) -> None:
    _bed(lay)
    _cabinet(lay, "cabinet", (1.0, 0.55), lay.rng.uniform(1.6, 2.0))
    _floor_mat(lay)


def _living_room(lay: RoomLayout, clutter: float) -> None:
    _sofa(lay)
    _tv_cabinet(lay)
    _bookshelf(lay, clutter)
    _floor_mat(lay)


def _office(lay: RoomLayout, clutter: float) -> None:
    _desk(lay)
    _bookshelf(lay, clutter)
    _shelves(lay, clutter)


def _dining_room(lay: RoomLayout, clutter: float) -> None:
    _dining_table(lay)
    _cabinet(lay, "cabinet", (1.4, 0.5), 0.9)
    _shelves(lay, clutter)


def _bed(lay: RoomLayout) -> None:
    """A bed against a wall: frame, mattress, headboard, two pillows, night stands where there is room."""
    rng, bank = lay.rng, lay.bank
    spot = _place(lay, rng.uniform(1.4, 1.8), rng.uniform(2.0, 2.2), True)
    if not spot:
        return
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


def _sofa(lay: RoomLayout) -> None:
    """A sofa against a wall (seat, back, arms) and a coffee table in front of it if there is room."""
    rng, bank = lay.rng, lay.bank
    spot = _place(lay, rng.uniform(1.8, 2.4), 0.9, True)
    if not spot:
        return
    x, z, yaw = spot
    lay.new_object()
    m = bank.draw()
    half = rng.uniform(0.9, 1.2)
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


def _tv_cabinet(lay: RoomLayout) -> None:
    """A low cabinet against a wall with a television standing on it."""
    tv = _cabinet(lay, "cabinet", (1.2, 0.45), 0.5)
    if tv:
        x, z, yaw, h = tv
        lay.new_object()
        lay.box("television", (x, -h - 0.3, z), (0.5, 0.3, 0.04), yaw, lay.bank.draw())


def _desk(lay: RoomLayout) -> None:
    """A desk against a wall, a chair in front of it if there is room, a monitor (television) on it."""
    desk = _table(lay, "desk", (lay.rng.uniform(1.2, 1.6), 0.7), 0.74, True)
    if not desk:
        return
    x, z, yaw = desk
    cx, cz = _local(x, z, yaw, 0.0, 0.6)
    box = (cx - 0.3, cx + 0.3, cz - 0.3, cz + 0.3)
    if lay.free(*box):
        lay.footprints.append(box)
        _chair(lay, cx, cz, yaw + math.pi)
    lay.new_object()
    mx, mz = _local(x, z, yaw, 0.0, -0.15)
    lay.box("television", (mx, -0.74 - 0.2, mz), (0.27, 0.17, 0.02), yaw, lay.bank.draw())


def _dining_table(lay: RoomLayout) -> None:
    """A table in the open room with up to four chairs around it, two on each long side."""
    rng = lay.rng
    table = _table(lay, "table", (rng.uniform(1.2, 1.8), rng.uniform(0.8, 1.0)), 0.75, False)
    if not table:
        return
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


def _lamp(lay: RoomLayout) -> None:
    """A floor lamp against a wall: stand and shade."""
    spot = _place(lay, 0.4, 0.4, True)
    if spot:
        x, z, _ = spot
        lay.new_object()
        h = lay.rng.uniform(1.3, 1.7)
        lay.box("lamp", (x, -h / 2, z), (0.03, h / 2, 0.03), 0.0, lay.bank.draw(), rc.CYLINDER)
        lay.box("lamp", (x, -h - 0.12, z), (0.2, 0.14, 0.2), 0.0, lay.bank.draw(), rc.CYLINDER)


def _boxes(lay: RoomLayout, clutter: float) -> None:
    """Boxes on the floor, most of them against a wall."""
    rng = lay.rng
    for _ in range(int(rng.poisson(2.0 * clutter))):
        s = rng.uniform(0.2, 0.5)
        spot = _place(lay, s, s, bool(rng.random() < 0.7))
        if spot:
            x, z, yaw = spot
            lay.new_object()
            lay.box("box", (x, -s / 2, z), (s / 2, s / 2, s / 2), yaw, lay.bank.draw())


_ROOM_FURNITURE = {
    "bedroom": _bedroom,
    "living_room": _living_room,
    "office": _office,
    "dining_room": _dining_room,
}


def _cabinet(lay: RoomLayout, part: str, size: tuple, height: float) -> tuple | None:
    spot = _place(lay, *size, True)
    if spot is None:
        return None
    x, z, yaw = spot
    lay.new_object()
    lay.box(part, (x, -height / 2, z), (size[0] / 2, height / 2, size[1] / 2), yaw, lay.bank.draw())
    return x, z, yaw, height


def _bookshelf(lay: RoomLayout, clutter: float) -> None:
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


def _shelves(lay: RoomLayout, clutter: float) -> None:
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


def _floor_mat(lay: RoomLayout) -> None:
    rng = lay.rng
    sx, sz = rng.uniform(1.0, 2.0), rng.uniform(0.7, 1.4)
    x = rng.uniform(-lay.width / 2 + sx / 2 + 0.1, lay.width / 2 - sx / 2 - 0.1)
    z = rng.uniform(-lay.depth / 2 + sz / 2 + 0.1, lay.depth / 2 - sz / 2 - 0.1)
    lay.new_object()
    # Thin enough to lie on the floor, thick enough to stay in front of it in a float32 depth test.
    lay.box("floor mat", (x, -0.006, z), (sx / 2, 0.006, sz / 2), 0.0, lay.bank.draw())


def wall_items(lay: RoomLayout) -> None:
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
