"""A drive's scene of the driving world: ground bands, primitives, rigid moving objects, materials.

:func:`geosem.worlds.driving_layout.build_scene` fills it; the renderer moves the objects to a frame's
time with :meth:`DrivingScene.primitives_at`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from geosem.worlds import raycast as rc
from geosem.worlds.driving import DrivingWorldConfig
from geosem.worlds.materials import MaterialBank, Materials
from geosem.worlds.parts import PART_ID
from geosem.worlds.road import RoadFrame

ROAD, SIDEWALK, BUILDING = PART_ID["road"], PART_ID["sidewalk"], PART_ID["building"]
GARDEN_WALL, FENCE, POLE = PART_ID["garden wall"], PART_ID["fence"], PART_ID["pole"]
STREET_LIGHT, TRAFFIC_SIGN, TREE = PART_ID["street light"], PART_ID["traffic sign"], PART_ID["tree"]
HEDGE, GRASS, SKY = PART_ID["hedge"], PART_ID["grass"], PART_ID["sky"]
PERSON, CAR = PART_ID["person"], PART_ID["car"]

LAT_EXTENT_M = 45.0  # the scene exists this far either side of the road's centre line
SIDES = (-1, 1)  # left, right of the road; every per-side placement step does the left side first


@dataclass
class GroundSide:
    """Ground bands on one side of the road, piecewise constant along s (segment k covers
    ``[starts[k], starts[k+1])``): sidewalk, an optional grass strip, then the verge."""

    starts: np.ndarray
    strip_width: np.ndarray
    verge_part: np.ndarray
    sidewalk_mat: np.ndarray
    strip_mat: np.ndarray
    verge_mat: np.ndarray
    front: np.ndarray  # lateral distance from the kerb line where buildings may start

    def segment(self, s: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.starts, s, side="right") - 1, 0, len(self.starts) - 1)


@dataclass
class SceneObjects:
    """Rigid objects (cars, persons) moving along the road at constant speed (0 = static)."""

    s0: np.ndarray  # arc length at time 0
    lat: np.ndarray
    y: np.ndarray  # height of the object origin (its base)
    speed: np.ndarray  # m/s along s (negative: towards decreasing s)
    yaw_offset: np.ndarray  # heading relative to the road direction

    def poses(self, road: RoadFrame, time: float) -> tuple[np.ndarray, np.ndarray]:
        """Object origins (K,3) and yaws (K,) at ``time`` seconds."""
        s = self.s0 + self.speed * time
        x, z = road.point(s, self.lat)
        return np.stack([x, self.y, z], axis=1), road.heading(s) + self.yaw_offset


@dataclass
class DrivingScene:
    """A drive's world: ground bands, static primitives, objects, materials, ego path."""

    config: DrivingWorldConfig
    road: RoadFrame
    yaw_rate: float
    static: bool  # no moving object in this drive
    s_min: float
    s_max: float
    half_road: float
    y_road: float
    y_raised: float
    road_starts: np.ndarray
    road_mats: np.ndarray
    sides: dict[int, GroundSide]
    prims: rc.Primitives  # at time 0; rows with obj >= 0 follow their object
    prim_local: np.ndarray  # (M,3) offset of each object primitive in its object frame
    prim_local_yaw: np.ndarray  # (M,)
    objects: SceneObjects
    materials: Materials
    sky_material: int

    def primitives_at(self, time: float) -> rc.Primitives:
        """Primitives with every object moved to ``time`` (seconds)."""
        if self.objects.s0.size == 0:
            return self.prims
        origin, yaw = self.objects.poses(self.road, time)
        sel = np.flatnonzero(self.prims.obj >= 0)
        obj = self.prims.obj[sel]
        c, s = np.cos(yaw[obj]), np.sin(yaw[obj])
        local = self.prim_local[sel]
        center = self.prims.center.copy()
        center[sel, 0] = origin[obj, 0] + c * local[:, 0] + s * local[:, 2]
        center[sel, 1] = origin[obj, 1] + local[:, 1]
        center[sel, 2] = origin[obj, 2] - s * local[:, 0] + c * local[:, 2]
        yaws = self.prims.yaw.copy()
        yaws[sel] = yaw[obj] + self.prim_local_yaw[sel]
        p = self.prims
        return rc.Primitives(p.kind, center, yaws, p.half, p.part, p.material, p.obj)

    def object_motion(self, t0: float, t1: float) -> np.ndarray:
        """(K,4,4) world-frame rigid motions taking each object's points at t0 to their place at t1."""
        k = self.objects.s0.size
        out = np.tile(np.eye(4), (k, 1, 1))
        if k == 0:
            return out
        (o0, y0), (o1, y1) = self.objects.poses(self.road, t0), self.objects.poses(self.road, t1)
        # Both rotations are about the world y axis, so the relative rotation is the yaw difference.
        dyaw = y1 - y0
        c, s = np.cos(dyaw), np.sin(dyaw)
        out[:, 0, 0], out[:, 0, 2], out[:, 2, 0], out[:, 2, 2] = c, s, -s, c
        out[:, :3, 3] = o1 - np.einsum("kij,kj->ki", out[:, :3, :3], o0)
        return out


class PrimitiveRows:
    """Collects primitives placed in road coordinates (static) or in an object's frame, one row each:
    kind, centre (3), yaw, half sizes (3), part, material, object (-1 = static), offset in the object's
    frame (3), yaw in the object's frame."""

    def __init__(self, road: RoadFrame) -> None:
        self.road = road
        self.rows: list[tuple] = []

    def add(
        self,
        kind: int,
        s: float,
        lat: float,
        y: float,
        half: tuple[float, float, float],
        part: int,
        material: int,
        yaw_offset: float = 0.0,
        local: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """A static primitive whose frame origin is the road point (s, lat) at height y, rotated by the
        road heading plus ``yaw_offset``, then shifted by ``local`` = (x, z) in that rotated frame."""
        x, z = self.road.point(s, lat)
        yaw = float(self.road.heading(s)) + yaw_offset
        c, sn = math.cos(yaw), math.sin(yaw)
        cx = float(x) + c * local[0] + sn * local[1]
        cz = float(z) - sn * local[0] + c * local[1]
        self.rows.append((kind, cx, y, cz, yaw, *half, part, material, -1, 0.0, 0.0, 0.0, 0.0))

    def add_to_object(
        self,
        obj: int,
        kind: int,
        offset: tuple[float, float, float],
        half: tuple[float, float, float],
        part: int,
        material: int,
        local_yaw: float = 0.0,
    ) -> None:
        """A primitive rigidly attached to object ``obj`` at ``offset`` (x lateral, y down, z forward)."""
        self.rows.append((kind, 0.0, 0.0, 0.0, 0.0, *half, part, material, obj, *offset, local_yaw))

    def primitives(self) -> rc.Primitives:
        """The collected primitives; those of objects still at the origin (see
        :meth:`DrivingScene.primitives_at`)."""
        return rc.primitives_from_rows(self.rows)

    def object_offsets(self) -> tuple[np.ndarray, np.ndarray]:
        """Offset (M,3) and yaw (M,) of every primitive in its object's frame (0 for static ones)."""
        rows = self.rows
        offsets = np.array([r[11:14] for r in rows], dtype=np.float64).reshape(-1, 3)
        return offsets, np.array([r[14] for r in rows], dtype=np.float64)


ObjectRow = tuple[float, float, float, float, float]  # s0, lat, y, speed, yaw_offset
Footprint = tuple[float, float, float, float]  # s0, s1, lat0, lat1


@dataclass
class StreetLayout:
    """A drive's scene while :func:`geosem.worlds.driving_layout.build_scene` lays it out: what the
    placement steps share, and the generator every one of them draws from."""

    config: DrivingWorldConfig
    rng: np.random.Generator
    bank: MaterialBank
    road: RoadFrame
    prims: PrimitiveRows
    duration: float  # seconds from the first to the last frame
    path_len: float  # metres the ego car drives
    s_min: float
    s_max: float
    half_road: float
    y_road: float
    y_raised: float
    sides: dict[int, GroundSide] = field(default_factory=dict)
    objects: list[ObjectRow] = field(default_factory=list)
    # Footprints of the placed objects, swept over the drive for moving ones: no two may overlap.
    footprints: list[Footprint] = field(default_factory=list)

    @property
    def sidewalk(self) -> float:
        return self.config.sidewalk_width_m

    def front_lat(self, side: int, s0: float, s1: float) -> float:
        """Lateral offset where buildings may start along ``[s0, s1]`` on ``side``."""
        g = self.sides[side]
        k0, k1 = g.segment(np.array([s0, s1]))
        return self.half_road + float(g.front[k0 : k1 + 1].max())

    def positions(self, rate_per_100m: float, min_gap: float) -> list[float]:
        """Arc lengths of a Poisson-like process along the scene, at least ``min_gap`` apart."""
        out: list[float] = []
        if rate_per_100m <= 0:
            return out
        mean = 100.0 / rate_per_100m
        s = self.s_min + self.rng.uniform(0.0, mean)
        while s < self.s_max:
            out.append(s)
            s += max(min_gap, self.rng.exponential(mean))
        return out

    def swept(self, s: float, lat: float, length: float, width: float, speed: float) -> Footprint:
        """The footprint an object covers over the whole drive."""
        a, b = s, s + speed * self.duration
        return min(a, b) - 0.5 * length, max(a, b) + 0.5 * length, lat - 0.5 * width, lat + 0.5 * width

    def fits(self, box: Footprint, ego_clear: float = 0.7) -> bool:
        """Whether a footprint lies in the scene, out of the ego car's corridor and clear of the others."""
        s0, s1, l0, l1 = box
        if s0 < self.s_min + 2.0 or s1 > self.s_max - 2.0:
            return False
        ego_s0, ego_s1 = -3.0, self.path_len + 8.0
        if s1 > ego_s0 and s0 < ego_s1 and l1 > -ego_clear and l0 < ego_clear:
            return False
        return all(
            not (s1 > a0 - 0.5 and s0 < a1 + 0.5 and l1 > b0 and l0 < b1)
            for a0, a1, b0, b1 in self.footprints
        )
