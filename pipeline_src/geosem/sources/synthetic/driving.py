"""Embedded procedural driving world (``driving-v2``): a stand-in for KITTI with exact ground truth.

Why it exists: GeoSem studies transfer between geometry and semantics. A world whose ground truth is
exact and whose appearance is *not* a shortcut to the labels lets the pipeline run end to end without
downloads and keeps the study honest: every surface of every class draws its colour and texture from the
same distribution, so only shape, position, depth and motion separate classes (measured in
tests/unit/test_honesty.py).

Conventions (the KITTI writer and the geometry code rely on these):

* Camera frame (OpenCV): x right, y down, z forward. The rendered (left) camera is the rectified colour
  camera 2 of :mod:`geosem.sources.synthetic.rig`; the right camera (3) sits at ``+baseline`` along x.
* World frame: the left camera frame of frame 0 of each drive (x right, y down = gravity, z forward);
  the road surface is the plane ``y = camera_height_m``; sidewalks and everything beyond the kerb lie on
  the raised plane ``y = camera_height_m - kerb_height_m``.
* Poses are camera-to-world 4x4 float64: ``X_world = R @ X_cam + t``. The car never pitches or rolls; it
  yaws about the world y axis at a constant rate per drive (positive yaw turns right, towards +x).
* Pixel (row r, column c) samples the ray through image coordinates ``(u, v) = (c, r)`` (pixel centres).
* Depth is z-depth in metres, float32, 0 where the ray hits nothing (sky).
* Labels are world *parts* (:mod:`geosem.sources.synthetic.parts`); the writers translate them.
* Dynamic objects (cars in the lanes, walking people) move rigidly along the road at constant speed.
  ``flow`` is the forward optical flow from frame t to t+1 in pixels (ego motion and object motion, also
  for pixels that leave the image or are occluded at t+1, like KITTI's ``flow_occ``); sky pixels get the
  flow of points at infinity (rotation only). ``dynamic`` marks pixels on moving objects.
* The lidar is an instantaneous 360-degree scan from the scanner of the rig: ``lidar_beams`` beams
  between +2 and -24.8 degrees, one return per (beam, azimuth step), with random and
  reflectance-dependent dropouts and Gaussian range noise; points are in the scanner frame (x forward,
  y left, z up) with a reflectance in [0, 1], as in KITTI's velodyne .bin files.

The road follows the camera path (a straight line or a circular arc). Scene content is placed in road
coordinates (arc length ``s`` along the path, signed lateral offset ``lat``, positive to the right) and
exists for ``s`` in ``[-40 m, path length + view_distance_m]`` and ``|lat| <= 45 m``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from geosem.sources.synthetic import raycast as rc
from geosem.sources.synthetic.parts import PART_ID
from geosem.sources.synthetic.rig import Rig, lidar_elevations, make_rig

WORLD_VERSION = "driving-v2"  # bump when rendering or scene layout changes

ROAD, SIDEWALK, BUILDING = PART_ID["road"], PART_ID["sidewalk"], PART_ID["building"]
GARDEN_WALL, FENCE, POLE = PART_ID["garden wall"], PART_ID["fence"], PART_ID["pole"]
STREET_LIGHT, TRAFFIC_SIGN, TREE = PART_ID["street light"], PART_ID["traffic sign"], PART_ID["tree"]
HEDGE, GRASS, SKY = PART_ID["hedge"], PART_ID["grass"], PART_ID["sky"]
PERSON, CAR = PART_ID["person"], PART_ID["car"]

_S_BEHIND = 40.0  # scene starts this far behind the first camera position (the lidar looks back)
_LAT_EXTENT = 45.0
# Unit vector towards the sun (world frame): behind-left and ~35 degrees up, which keeps the mean shading
# of the ground, of facades and of object fronts within a similar range.
_SUN = np.array([-0.5, -0.55, -0.6]) / np.linalg.norm([-0.5, -0.55, -0.6])
_SKY_DOME_M = 60.0

# Property boundaries behind the sidewalk / grass strip: part, height range (m), thickness (m).
_BOUNDARIES: dict[int, tuple[int, tuple[float, float], float]] = {
    1: (FENCE, (1.0, 1.8), 0.06),
    2: (GARDEN_WALL, (0.8, 2.2), 0.25),
    3: (HEDGE, (0.8, 1.6), 0.8),
}


@dataclass(frozen=True)
class DrivingWorldConfig:
    """Everything that determines the world; the same config always gives byte-identical output."""

    seed: int = 0
    drives: int = 8  # training drives (raw KITTI drives)
    heldout_drives: int = 8  # drives held out for the labelled test set (KITTI-semantics style)
    frames: int = 30  # frames per drive
    semantics_frames: int = 200  # labelled frames drawn from the held-out drives
    height: int = 96
    width: int = 320
    fps: float = 10.0
    speed_mps: float = 8.0  # ego speed
    camera_height_m: float = 1.65  # camera centre above the road surface (KITTI)
    max_yaw_rate_rps: float = 0.03  # each drive draws a constant yaw rate in [-max, max] rad/s
    view_distance_m: float = 80.0  # scene extends this far beyond the last camera position
    road_width_m: float = 7.0
    sidewalk_width_m: float = 2.5
    kerb_height_m: float = 0.15
    building_gap_prob: float = 0.3
    trees_per_100m: float = 7.0  # per side of the road
    bushes_per_100m: float = 5.0  # per side
    poles_per_100m: float = 3.5  # street lights, per side
    signs_per_100m: float = 2.0  # per side
    parked_cars_per_100m: float = 7.0  # per side
    traffic_cars_per_100m: float = 2.0  # cars standing in the lanes, both directions together
    moving_cars_per_100m: float = 4.0  # cars driving in the lanes, both directions together
    persons_per_100m: float = 6.0  # per side, on the sidewalks
    walking_share: float = 0.6  # share of persons that walk (the others stand)
    static_drive_share: float = 0.25  # drives where nothing moves but the ego car (a static scene)
    palette_size: int = 16  # colours shared by every class of a drive
    ambient: float = 0.45
    dressing: str = "kitti"  # material style (raycast.DRESSINGS)
    lidar_beams: int = 32
    lidar_azimuth_step_deg: float = 0.8
    lidar_dropout: float = 0.05  # random share of lost returns
    lidar_range_noise_m: float = 0.01
    lidar_max_range_m: float = 120.0

    def __post_init__(self) -> None:
        if self.drives < 1 or self.heldout_drives < 1 or self.frames < 2:
            raise ValueError("drives and heldout_drives must be >= 1 and frames >= 2")
        if not 1 <= self.semantics_frames <= self.heldout_drives * self.frames:
            raise ValueError(
                f"semantics_frames={self.semantics_frames} must lie in [1, heldout_drives * frames = "
                f"{self.heldout_drives * self.frames}]"
            )
        if self.height < 8 or self.width < 8:
            raise ValueError("height and width must be >= 8")
        if self.fps <= 0 or self.speed_mps < 0 or self.view_distance_m <= 0:
            raise ValueError("fps and view_distance_m must be > 0 and speed_mps >= 0")
        if not all(0.0 <= v <= 1.0 for v in (self.ambient, self.walking_share, self.static_drive_share)):
            raise ValueError("ambient, walking_share and static_drive_share must lie in [0, 1]")
        if not 0.0 <= self.lidar_dropout < 1.0 or self.lidar_beams < 2 or self.lidar_azimuth_step_deg <= 0:
            raise ValueError("lidar_dropout must lie in [0, 1), lidar_beams >= 2, lidar_azimuth_step_deg > 0")
        if self.palette_size < 2:
            raise ValueError("palette_size must be >= 2")
        if self.dressing not in rc.DRESSINGS:
            raise ValueError(f"dressing must be one of {sorted(rc.DRESSINGS)}")
        if self.kerb_height_m >= self.camera_height_m:
            raise ValueError("kerb_height_m must be below the camera")

    @property
    def total_drives(self) -> int:
        return self.drives + self.heldout_drives


# ----------------------------------------------------------------------------------------------------
# Drive naming and rigs: training drives are recorded on date "a", held-out drives on date "b" (with
# different intrinsics, like KITTI's recording days).

DATES = {"a": "2011_09_26", "b": "2011_10_03"}


@dataclass(frozen=True)
class DriveId:
    index: int  # 0 .. total_drives - 1
    date_key: str
    date: str
    number: int  # KITTI drive number
    heldout: bool

    @property
    def name(self) -> str:
        return f"{self.date}_drive_{self.number:04d}_sync"


def drive_ids(config: DrivingWorldConfig) -> list[DriveId]:
    """Every drive of the world: training drives first, then the held-out ones."""
    out = []
    for index in range(config.total_drives):
        heldout = index >= config.drives
        key = "b" if heldout else "a"
        number = (index - config.drives if heldout else index) + 1
        out.append(DriveId(index=index, date_key=key, date=DATES[key], number=number, heldout=heldout))
    return out


def rig_for(config: DrivingWorldConfig, date_key: str) -> Rig:
    return make_rig(date_key, DATES[date_key], config.height, config.width)


# ----------------------------------------------------------------------------------------------------
# Road frame


class RoadFrame:
    """Road coordinates (arc length s, signed lateral offset lat) along the camera path.

    The path starts at the world origin heading +z and has constant curvature ``kappa`` (rad/m): a
    straight line for kappa == 0, otherwise a circle of radius 1/kappa centred at ``(1/kappa, 0, 0)``.
    """

    def __init__(self, kappa: float) -> None:
        self.straight = abs(kappa) < 1e-7
        self.kappa = 0.0 if self.straight else kappa
        self.radius = math.inf if self.straight else 1.0 / kappa

    def heading(self, s: np.ndarray | float) -> np.ndarray | float:
        return self.kappa * s

    def point(self, s: np.ndarray | float, lat: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """World (x, z) of the road point at arc length s and lateral offset lat."""
        s = np.asarray(s, dtype=np.float64)
        lat = np.asarray(lat, dtype=np.float64)
        if self.straight:
            return lat + 0.0 * s, s + 0.0 * lat
        psi = self.kappa * s
        x = 2.0 * self.radius * np.sin(0.5 * psi) ** 2  # R (1 - cos psi) without cancellation
        z = self.radius * np.sin(psi)
        return x + lat * np.cos(psi), z - lat * np.sin(psi)

    def to_road(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`point` for world (x, z): returns (s, lat)."""
        if self.straight:
            return z, x
        r = self.radius
        dx, dz = x - r, z
        lat = np.sign(r) * (abs(r) - np.hypot(dx, dz))
        psi = np.arctan2(dz / r, -dx / r)
        return psi * r, lat

    def crossing(
        self,
        o: np.ndarray,
        dx: np.ndarray,
        dz: np.ndarray,
        lat: np.ndarray,
        t_lo: np.ndarray,
        t_hi: np.ndarray,
    ) -> np.ndarray:
        """Ray parameter in [t_lo, t_hi] where rays o + t d reach lateral offset ``lat`` (a kerb face)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.straight:
                t = (lat - o[0]) / dx
            else:
                r = self.radius
                rho = abs(r) - np.sign(r) * lat
                qx, qz = o[0] - r, o[2]
                a = dx * dx + dz * dz
                b = 2.0 * (qx * dx + qz * dz)
                c = qx * qx + qz * qz - rho * rho
                root = np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))
                t1 = (-b - root) / (2.0 * a)
                t2 = (-b + root) / (2.0 * a)
                tol = 1e-6 * (1.0 + t_hi)
                t = np.where((t1 >= t_lo - tol) & (t1 <= t_hi + tol), t1, t2)
        return np.clip(np.nan_to_num(t, nan=t_hi), t_lo, t_hi)


# ----------------------------------------------------------------------------------------------------
# Scene layout


@dataclass
class _GroundSide:
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
class _Objects:
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
    sides: dict[int, _GroundSide]
    prims: rc.Primitives  # at time 0; rows with obj >= 0 follow their object
    prim_local: np.ndarray  # (M,3) offset of each object primitive in its object frame
    prim_local_yaw: np.ndarray  # (M,)
    objects: _Objects
    materials: np.ndarray
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


class _Builder:
    """Collects primitives placed in road coordinates (static) or in an object's frame."""

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


def build_scene(config: DrivingWorldConfig, drive_index: int) -> DrivingScene:
    """Lay out one drive's world (deterministic in ``config.seed`` and ``drive_index``)."""
    rng = np.random.default_rng([config.seed, drive_index])
    yaw_rate = float(rng.uniform(-config.max_yaw_rate_rps, config.max_yaw_rate_rps))
    static = bool(rng.random() < config.static_drive_share)  # nothing moves but the ego car
    kappa = yaw_rate / config.speed_mps if config.speed_mps > 0 else 0.0
    road = RoadFrame(kappa)
    bank = rc.MaterialBank(rng, config.palette_size, **rc.DRESSINGS[config.dressing])
    prims = _Builder(road)

    duration = (config.frames - 1) / config.fps
    path_len = config.speed_mps * duration
    s_min, s_max = -_S_BEHIND, path_len + config.view_distance_m
    half_road = 0.5 * config.road_width_m
    sw = config.sidewalk_width_m
    y_road = config.camera_height_m
    y_raised = config.camera_height_m - config.kerb_height_m
    sky_material = bank.draw()

    road_starts, road_mats = [], []
    s = s_min
    while s < s_max:
        road_starts.append(s)
        road_mats.append(bank.draw())
        s += rng.uniform(15.0, 45.0)

    sides: dict[int, _GroundSide] = {}
    for side in (-1, 1):
        starts, strip_w, verge_part, mats, fronts = [], [], [], [], []
        boundaries: list[tuple[float, float, float, int]] = []
        s = s_min
        while s < s_max:
            length = rng.uniform(12.0, 40.0)
            strip = rng.uniform(1.5, 4.0) if rng.random() < 0.4 else 0.0
            verge = GRASS if rng.random() < 0.5 else SIDEWALK
            mats.append((bank.draw(), bank.draw(), bank.draw()))
            boundary = int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))
            thickness = _BOUNDARIES[boundary][2] if boundary else 0.0
            starts.append(s)
            strip_w.append(strip)
            verge_part.append(verge)
            fronts.append(sw + strip + thickness + 0.3)
            if boundary:
                boundaries.append((s, s + length, sw + strip + 0.15 + 0.5 * thickness, boundary))
            s += length
        mats_arr = np.array(mats, dtype=np.int64)
        sides[side] = _GroundSide(
            starts=np.array(starts),
            strip_width=np.array(strip_w),
            verge_part=np.array(verge_part, dtype=np.int64),
            sidewalk_mat=mats_arr[:, 0],
            strip_mat=mats_arr[:, 1],
            verge_mat=mats_arr[:, 2],
            front=np.array(fronts),
        )
        # Fences, walls and hedges in pieces of <= 8 m so that they follow a curved road.
        for s0, s1, off, kind in boundaries:
            part, height_range, thick = _BOUNDARIES[kind]
            height = rng.uniform(*height_range)
            material = bank.draw()
            pieces = max(1, math.ceil((s1 - s0) / 8.0))
            edges = np.linspace(s0 + 0.5, s1 - 0.5, pieces + 1)
            for a, b in itertools.pairwise(edges):
                prims.add(
                    rc.BOX,
                    0.5 * (a + b),
                    side * (half_road + off),
                    y_raised - 0.5 * height + 0.1,
                    (0.5 * thick, 0.5 * height + 0.1, 0.5 * (b - a)),
                    part,
                    material,
                )

    def front_lat(side: int, s0: float, s1: float) -> float:
        g = sides[side]
        k0, k1 = g.segment(np.array([s0, s1]))
        return half_road + float(g.front[k0 : k1 + 1].max())

    # Buildings: a front row with varied setback and a sparser, taller back row.
    for side in (-1, 1):
        for row in (0, 1):
            s = s_min - rng.uniform(0.0, 10.0)
            while s < s_max:
                wide_gap = rng.random() < (config.building_gap_prob if row == 0 else 0.5)
                s += rng.uniform(8.0, 20.0) if wide_gap else rng.uniform(0.5, 4.0)
                width = rng.uniform(8.0, 24.0)
                depth = rng.uniform(8.0, 16.0) if row == 0 else rng.uniform(10.0, 20.0)
                height = rng.uniform(5.0, 24.0) if row == 0 else rng.uniform(10.0, 35.0)
                near = (
                    front_lat(side, s, s + width) + rng.uniform(0.5, 5.0) if row == 0 else rng.uniform(24, 32)
                )
                mid = s + 0.5 * width
                s += width
                if mid - 0.5 * width > s_max:
                    break
                prims.add(
                    rc.BOX,
                    mid,
                    side * (near + 0.5 * depth),
                    y_raised - 0.5 * height + 0.25,  # sunk into the ground: no seam at the base
                    (0.5 * depth, 0.5 * height + 0.25, 0.5 * width),
                    BUILDING,
                    bank.draw(),
                )

    def positions(rate_per_100m: float, min_gap: float) -> list[float]:
        out: list[float] = []
        if rate_per_100m <= 0:
            return out
        mean = 100.0 / rate_per_100m
        s = s_min + rng.uniform(0.0, mean)
        while s < s_max:
            out.append(s)
            s += max(min_gap, rng.exponential(mean))
        return out

    for side in (-1, 1):
        g = sides[side]
        # Trees: trunk + crown, crowns above head height so that people pass beneath them.
        for s in positions(config.trees_per_100m, 4.0):
            k = int(g.segment(np.array([s]))[0])
            off = sw + 0.5 * g.strip_width[k] if g.strip_width[k] > 0 else sw - 0.7
            trunk_r = rng.uniform(0.12, 0.25)
            crown_xz, crown_y = rng.uniform(1.2, 2.6), rng.uniform(1.2, 2.8)
            trunk_h = rng.uniform(2.3, 3.5) + 0.4 * crown_y
            material = bank.draw()
            prims.add(
                rc.CYLINDER,
                s,
                side * (half_road + off),
                y_raised - 0.5 * trunk_h + 0.1,
                (trunk_r, 0.5 * trunk_h + 0.1, trunk_r),
                TREE,
                material,
            )
            prims.add(
                rc.ELLIPSOID,
                s,
                side * (half_road + off),
                y_raised - trunk_h - 0.6 * crown_y,
                (crown_xz, crown_y, crown_xz * rng.uniform(0.8, 1.2)),
                TREE,
                bank.draw(),
            )
        for s in positions(config.bushes_per_100m, 2.0):
            k = int(g.segment(np.array([s]))[0])
            off = sw + 0.5 * g.strip_width[k] if g.strip_width[k] > 0 else g.front[k] + rng.uniform(0.5, 3.0)
            ry = rng.uniform(0.4, 0.9)
            prims.add(
                rc.ELLIPSOID,
                s,
                side * (half_road + off),
                y_raised - 0.3 * ry,
                (rng.uniform(0.5, 1.2), ry, rng.uniform(0.5, 1.5)),
                HEDGE,
                bank.draw(),
            )
        # Street lights: a pole with an arm reaching over the road.
        for s in positions(config.poles_per_100m, 8.0):
            r, h = rng.uniform(0.07, 0.14), rng.uniform(5.0, 8.0)
            arm = rng.uniform(1.0, 2.0)
            material = bank.draw()
            prims.add(
                rc.CYLINDER,
                s,
                side * (half_road + 0.35),
                y_raised - 0.5 * h + 0.1,
                (r, 0.5 * h + 0.1, r),
                STREET_LIGHT,
                material,
            )
            prims.add(
                rc.BOX,
                s,
                side * (half_road + 0.35 - 0.5 * arm),
                y_raised - h + 0.1,
                (0.5 * arm, 0.06, 0.06),
                STREET_LIGHT,
                material,
            )
        # Traffic signs: thin pole plus a plate facing the traffic.
        for s in positions(config.signs_per_100m, 10.0):
            r, h = rng.uniform(0.04, 0.06), rng.uniform(2.2, 3.0)
            plate = rng.uniform(0.3, 0.45)
            prims.add(
                rc.CYLINDER,
                s,
                side * (half_road + 0.45),
                y_raised - 0.5 * h + 0.1,
                (r, 0.5 * h + 0.1, r),
                POLE,
                bank.draw(),
            )
            prims.add(
                rc.BOX,
                s,
                side * (half_road + 0.45),
                y_raised - h - plate + 0.1,
                (plate, plate * rng.uniform(0.8, 1.2), 0.02),
                TRAFFIC_SIGN,
                bank.draw(),
                yaw_offset=rng.uniform(-0.3, 0.3),
                local=(0.0, -r - 0.03),
            )

    # Objects. Footprints (s0, s1, lat0, lat1), swept over the drive for moving ones, must not overlap
    # each other nor the corridor the ego car drives through.
    obj_rows: list[tuple[float, float, float, float, float]] = []  # s0, lat, y, speed, yaw_offset
    footprints: list[tuple[float, float, float, float]] = []
    ego_s0, ego_s1 = -3.0, path_len + 8.0

    def swept(s: float, lat: float, length: float, width: float, speed: float) -> tuple[float, ...]:
        a, b = s, s + speed * duration
        return min(a, b) - 0.5 * length, max(a, b) + 0.5 * length, lat - 0.5 * width, lat + 0.5 * width

    def fits(box: tuple[float, ...], ego_clear: float = 0.7) -> bool:
        s0, s1, l0, l1 = box
        if s0 < s_min + 2.0 or s1 > s_max - 2.0:
            return False
        if s1 > ego_s0 and s0 < ego_s1 and l1 > -ego_clear and l0 < ego_clear:
            return False
        return all(
            not (s1 > a0 - 0.5 and s0 < a1 + 0.5 and l1 > b0 and l0 < b1) for a0, a1, b0, b1 in footprints
        )

    def add_car(s: float, lat: float, length: float, width: float, yaw_offset: float, speed: float) -> None:
        obj = len(obj_rows)
        obj_rows.append((s, lat, y_road, speed, yaw_offset))
        body_h, cabin_h, clearance = rng.uniform(0.6, 0.85), rng.uniform(0.45, 0.6), 0.25
        body_mat, wheel_mat = bank.draw(), bank.draw()
        prims.add_to_object(
            obj,
            rc.BOX,
            (0.0, -clearance - 0.5 * body_h, 0.0),
            (0.5 * width, 0.5 * body_h, 0.5 * length),
            CAR,
            body_mat,
        )
        prims.add_to_object(
            obj,
            rc.BOX,
            (0.0, -clearance - body_h - 0.5 * cabin_h, -0.08 * length),
            (0.45 * width, 0.5 * cabin_h, 0.27 * length),
            CAR,
            body_mat,
        )
        for wx in (-1.0, 1.0):
            for wz in (-1.0, 1.0):
                prims.add_to_object(
                    obj,
                    rc.ELLIPSOID,
                    (wx * (0.5 * width - 0.1), -0.31, wz * (0.5 * length - 0.75)),
                    (0.11, 0.31, 0.31),
                    CAR,
                    wheel_mat,
                )

    def add_person(s: float, lat: float, speed: float, yaw_offset: float) -> None:
        obj = len(obj_rows)
        obj_rows.append((s, lat, y_raised, speed, yaw_offset))
        k = rng.uniform(0.9, 1.1)
        legs, torso, head = 0.84 * k, 0.6 * k, 0.25 * k
        prims.add_to_object(
            obj, rc.BOX, (0.0, -0.5 * legs, 0.0), (0.17 * k, 0.5 * legs, 0.11 * k), PERSON, bank.draw()
        )
        prims.add_to_object(
            obj,
            rc.CYLINDER,
            (0.0, -legs - 0.5 * torso, 0.0),
            (0.2 * k, 0.5 * torso, 0.2 * k),
            PERSON,
            bank.draw(),
        )
        prims.add_to_object(
            obj,
            rc.ELLIPSOID,
            (0.0, -legs - torso - 0.5 * head - 0.02, 0.0),
            (0.1 * k, 0.5 * head, 0.11 * k),
            PERSON,
            bank.draw(),
        )

    for side in (-1, 1):
        if config.parked_cars_per_100m <= 0:
            break
        mean_gap = max(0.6, 100.0 / config.parked_cars_per_100m - 4.3)
        s = s_min + rng.uniform(2.0, 10.0)
        while s < s_max:
            length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
            lat = side * (half_road - 0.15 - 0.5 * width)
            flip = math.pi if rng.random() < 0.3 else 0.0
            box = swept(s + 0.5 * length, lat, length, width, 0.0)
            if fits(box):
                add_car(s + 0.5 * length, lat, length, width, flip + rng.uniform(-0.05, 0.05), 0.0)
                footprints.append(box)
            s += length + max(0.6, rng.exponential(mean_gap))

    lanes = (-1.8, 0.0, 1.8)  # oncoming lane, ego lane (ahead only), same-direction right lane
    n_moving = 0 if static else int(rng.poisson(config.moving_cars_per_100m * (s_max - s_min) / 100.0))
    for _ in range(n_moving):
        lane = int(rng.integers(0, 3))
        length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
        lat = lanes[lane] + rng.uniform(-0.1, 0.1)
        if lane == 0:
            speed, yaw_offset = -rng.uniform(5.0, 12.0), math.pi
        elif lane == 1:  # ahead of the ego car and at least as fast: never closes the gap
            speed, yaw_offset = config.speed_mps + rng.uniform(0.0, 4.0), 0.0
        else:
            speed, yaw_offset = rng.uniform(4.0, 12.0), 0.0
        s = rng.uniform(s_min, s_max)
        if lane == 1 and s < 12.0:
            continue
        box = swept(s, lat, length, width, speed)
        if fits(box, ego_clear=0.7 if lane != 1 else -1e9):
            add_car(s, lat, length, width, yaw_offset + rng.uniform(-0.03, 0.03), speed)
            footprints.append(box)

    n_traffic = int(rng.poisson(config.traffic_cars_per_100m * (s_max - s_min) / 100.0))
    for _ in range(n_traffic):
        lane = (0, 2)[int(rng.integers(0, 2))]
        lat = lanes[lane] + rng.uniform(-0.15, 0.15)
        length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
        s = rng.uniform(s_min, s_max)
        box = swept(s, lat, length, width, 0.0)
        if fits(box):
            add_car(s, lat, length, width, (math.pi if lane == 0 else 0.0) + rng.uniform(-0.08, 0.08), 0.0)
            footprints.append(box)

    # People on the sidewalks, between the street furniture (lat 0.5 m) and the trees (sw - 0.7 m).
    for side in (-1, 1):
        for s in positions(config.persons_per_100m, 1.5):
            lat = side * (half_road + rng.uniform(0.85, min(1.35, sw - 0.5)))
            walking = rng.random() < config.walking_share and not static
            direction = 1.0 if rng.random() < 0.5 else -1.0
            speed = direction * rng.uniform(0.8, 1.6) if walking else 0.0
            yaw_offset = (0.0 if direction > 0 else math.pi) if walking else rng.uniform(-math.pi, math.pi)
            box = swept(s, lat, 0.5, 0.5, speed)
            if fits(box):
                add_person(s, lat, speed, yaw_offset)
                footprints.append(box)

    rows = prims.rows
    objects = _Objects(*(np.array([r[i] for r in obj_rows], dtype=np.float64) for i in range(5)))
    scene_prims = rc.Primitives(
        kind=np.array([r[0] for r in rows], dtype=np.int64),
        center=np.array([r[1:4] for r in rows], dtype=np.float64).reshape(-1, 3),
        yaw=np.array([r[4] for r in rows], dtype=np.float64),
        half=np.array([r[5:8] for r in rows], dtype=np.float64).reshape(-1, 3),
        part=np.array([r[8] for r in rows], dtype=np.int64),
        material=np.array([r[9] for r in rows], dtype=np.int64),
        obj=np.array([r[10] for r in rows], dtype=np.int64),
    )
    scene = DrivingScene(
        config=config,
        road=road,
        yaw_rate=yaw_rate,
        static=static,
        s_min=s_min,
        s_max=s_max,
        half_road=half_road,
        y_road=y_road,
        y_raised=y_raised,
        road_starts=np.array(road_starts),
        road_mats=np.array(road_mats, dtype=np.int64),
        sides=sides,
        prims=scene_prims,
        prim_local=np.array([r[11:14] for r in rows], dtype=np.float64).reshape(-1, 3),
        prim_local_yaw=np.array([r[14] for r in rows], dtype=np.float64),
        objects=objects,
        materials=bank.freeze(),
        sky_material=sky_material,
    )
    scene.prims = scene.primitives_at(0.0)
    return scene


def ego_poses(config: DrivingWorldConfig, yaw_rate: float) -> np.ndarray:
    """Camera-to-world poses (T,4,4) of the left camera driving along the road centre line."""
    road = RoadFrame(yaw_rate / config.speed_mps if config.speed_mps > 0 else 0.0)
    poses = np.tile(np.eye(4), (config.frames, 1, 1))
    for t in range(config.frames):
        s = config.speed_mps * t / config.fps
        x, z = road.point(s, 0.0)
        poses[t, :3, :3] = rc.yaw_matrix(float(road.heading(s)))
        poses[t, :3, 3] = (float(x), 0.0, float(z))
    return poses + 0.0  # turns -0.0 into +0.0


def ego_pose_at(config: DrivingWorldConfig, yaw_rate: float, time: float) -> np.ndarray:
    road = RoadFrame(yaw_rate / config.speed_mps if config.speed_mps > 0 else 0.0)
    s = config.speed_mps * time
    pose = np.eye(4)
    x, z = road.point(s, 0.0)
    pose[:3, :3] = rc.yaw_matrix(float(road.heading(s)))
    pose[:3, 3] = (float(x), 0.0, float(z))
    return pose


# ----------------------------------------------------------------------------------------------------
# Ground (the enclosure of the driving world)


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
    valid = (s >= scene.s_min) & (s <= scene.s_max) & (np.abs(lat) <= _LAT_EXTENT)
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
    r, gr, b = rc.surface_colour(tx, ty, tz, mat, scene.materials)
    return rc.to_uint8(r, gr, b, shade), part


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


# ----------------------------------------------------------------------------------------------------
# Frames


@dataclass
class DrivingFrame:
    """Everything the world knows about one frame of a drive (left camera unless said otherwise)."""

    index: int
    time: float
    pose: np.ndarray  # (4,4) camera-to-world of the left camera
    image: np.ndarray  # (H,W,3) uint8 RGB
    right: np.ndarray  # (H,W,3) uint8 RGB of the right camera
    depth: np.ndarray  # (H,W) float32 z-depth, 0 = sky
    right_depth: np.ndarray  # (H,W) float32
    parts: np.ndarray  # (H,W) uint8 part ids
    instance: np.ndarray  # (H,W) int64 object id + 1 (0 = no object)
    dynamic: np.ndarray  # (H,W) uint8, 1 on moving objects
    flow: np.ndarray  # (H,W,2) float32 forward flow to the next frame, pixels
    lidar: np.ndarray  # (N,4) float32 x, y, z (scanner frame), reflectance


class DriveRenderer:
    """Renders the frames of one drive; construct once per drive, then call :meth:`frame`."""

    def __init__(self, config: DrivingWorldConfig, drive: DriveId) -> None:
        self.config = config
        self.drive = drive
        self.rig = rig_for(config, drive.date_key)
        self.scene = build_scene(config, drive.index)
        self.rays = rc.pinhole_rays(config.height, config.width, self.rig.intrinsics)
        self.velo_from_cam = np.linalg.inv(self.rig.cam2_from_velo())
        self.elevations = lidar_elevations(config.lidar_beams)
        self.columns = round(360.0 / config.lidar_azimuth_step_deg)
        self.az_step = 2 * math.pi / self.columns
        azimuths = -math.pi + (np.arange(self.columns) + 0.5) * self.az_step
        el = self.elevations[:, None]
        # Unit scanner-frame rays (beams x azimuths): x forward, y left, z up.
        self.lidar_rays = np.stack(
            [np.cos(el) * np.cos(azimuths), np.cos(el) * np.sin(azimuths), np.sin(el) + 0 * azimuths], axis=-1
        )
        self.noise = np.random.default_rng([config.seed, drive.index, 7])
        self.pixel_v, self.pixel_u = (
            a.astype(np.float64) for a in np.divmod(np.arange(config.height * config.width), config.width)
        )

    def pose(self, t: int) -> np.ndarray:
        return ego_pose_at(self.config, self.scene.yaw_rate, t / self.config.fps)

    def camera(
        self, prims: rc.Primitives, pose: np.ndarray, corners: np.ndarray
    ) -> tuple[ViewHits, rc.RayGrid, np.ndarray, np.ndarray]:
        """Render one camera view: hits, ray grid, RGB (N,3) uint8 and part ids (N,)."""
        grid = rc.RayGrid.rotated(self.rays, pose[:3, :3])
        rects = rc.pinhole_rects(
            corners, pose[:3, 3], pose[:3, :3], self.rig.intrinsics, self.config.height, self.config.width
        )
        hits = cast_view(self.scene, prims, pose[:3, 3], grid, rects)
        rgb, part = shade_view(self.scene, prims, pose[:3, 3], grid, hits)
        return hits, grid, rgb, part

    def frame(self, t: int) -> DrivingFrame:
        config, scene = self.config, self.scene
        h, w = config.height, config.width
        time = t / config.fps
        prims = scene.primitives_at(time)
        pose = self.pose(t)
        corners = prims.corners()
        hits, grid, rgb, part = self.camera(prims, pose, corners)
        to_right = np.eye(4)
        to_right[0, 3] = self.rig.baseline
        r_hits, _, r_rgb, _ = self.camera(prims, pose @ to_right, corners)

        depth = np.where(np.isfinite(hits.t), hits.t, 0.0).astype(np.float32)
        right_depth = np.where(np.isfinite(r_hits.t), r_hits.t, 0.0).astype(np.float32)
        obj = np.where(hits.prim >= 0, prims.obj[np.maximum(hits.prim, 0)], -1)
        moving = np.concatenate([scene.objects.speed != 0, [False]])
        dynamic = moving[obj].astype(np.uint8)  # obj -1 reads the trailing False
        flow = self._flow(pose, grid, hits.t, obj, time)
        return DrivingFrame(
            index=t,
            time=time,
            pose=pose,
            image=rgb.reshape(h, w, 3),
            right=r_rgb.reshape(h, w, 3),
            depth=depth.reshape(h, w),
            right_depth=right_depth.reshape(h, w),
            parts=part.reshape(h, w).astype(np.uint8),
            instance=(obj + 1).reshape(h, w),
            dynamic=dynamic.reshape(h, w),
            flow=flow.reshape(h, w, 2),
            lidar=self._lidar(prims, pose, corners),
        )

    def _flow(
        self, pose: np.ndarray, grid: rc.RayGrid, t: np.ndarray, obj: np.ndarray, time: float
    ) -> np.ndarray:
        """Forward flow: move each visible point with its object from t to t+1, project into t+1."""
        config = self.config
        nxt = ego_pose_at(config, self.scene.yaw_rate, time + 1.0 / config.fps)
        dx, dy, dz = (d.reshape(-1).astype(np.float64) for d in (grid.dx, grid.dy, grid.dz))
        finite = t < np.inf
        tt = np.where(finite, t, 0.0)
        x, y, z = pose[0, 3] + tt * dx, pose[1, 3] + tt * dy, pose[2, 3] + tt * dz
        motion = self.scene.object_motion(time, time + 1.0 / config.fps)
        on = np.flatnonzero(obj >= 0)
        if on.size:
            m = motion[obj[on]]
            px, py, pz = x[on], y[on], z[on]
            x[on] = m[:, 0, 0] * px + m[:, 0, 1] * py + m[:, 0, 2] * pz + m[:, 0, 3]
            y[on] = m[:, 1, 0] * px + m[:, 1, 1] * py + m[:, 1, 2] * pz + m[:, 1, 3]
            z[on] = m[:, 2, 0] * px + m[:, 2, 1] * py + m[:, 2, 2] * pz + m[:, 2, 3]
        # Into the next camera: R^T (X - o). Sky rays are points at infinity: rotation only.
        rel = [np.where(finite, c - nxt[k, 3], d) for k, (c, d) in enumerate(((x, dx), (y, dy), (z, dz)))]
        r = nxt[:3, :3]
        cx_, cy_, cz_ = (r[0, k] * rel[0] + r[1, k] * rel[1] + r[2, k] * rel[2] for k in range(3))
        fx, fy, cx, cy = self.rig.intrinsics
        with np.errstate(divide="ignore", invalid="ignore"):
            flow_u = fx * cx_ / cz_ + cx - self.pixel_u
            flow_v = fy * cy_ / cz_ + cy - self.pixel_v
        flow = np.stack([flow_u, flow_v], axis=1).astype(np.float32)
        flow[cz_ <= 1e-3] = np.nan  # behind the next camera: no flow exists
        return flow

    def _lidar(self, prims: rc.Primitives, pose: np.ndarray, corners_world: np.ndarray) -> np.ndarray:
        config = self.config
        world_from_velo = pose @ self.rig.cam2_from_velo()
        rot, origin = world_from_velo[:3, :3], world_from_velo[:3, 3]
        grid = rc.RayGrid.rotated(self.lidar_rays, rot)
        velo_from_world = np.linalg.inv(world_from_velo)
        corners = corners_world @ velo_from_world[:3, :3].T + velo_from_world[:3, 3]
        frames = rc.local_frames(prims, origin)
        # World y points down: heights above the sensor are origin_y - centre_y.
        tilt = math.acos(min(1.0, abs(float(-rot[1, 2]))))
        rects = rc.spherical_rects(
            frames, origin[1] - prims.center[:, 1], corners, tilt, self.elevations, self.az_step, self.columns
        )
        hits = cast_view(self.scene, prims, origin, grid, rects, frames)
        rng = self.noise
        t = hits.t.astype(np.float64)
        mat = np.full(t.size, -1, dtype=np.int64)
        mat[hits.prim >= 0] = prims.material[hits.prim[hits.prim >= 0]]
        mat[hits.ground] = hits.ground_mat
        reflectance = np.zeros(t.size)
        hit = np.flatnonzero(np.isfinite(t) & (t < config.lidar_max_range_m))
        reflectance[hit] = 0.2 + 0.6 * self.scene.materials.luminance(mat[hit])
        # Dropouts: random losses, plus dark surfaces far away returning too little light.
        p_drop = config.lidar_dropout + 0.5 * (1.0 - reflectance[hit]) * (t[hit] / config.lidar_max_range_m)
        keep = hit[rng.random(hit.size) >= p_drop]
        noise = rng.normal(0.0, config.lidar_range_noise_m, size=keep.size)
        rng_m = t[keep] + noise
        xyz = self.lidar_rays.reshape(-1, 3)[keep] * rng_m[:, None]
        out = np.empty((keep.size, 4), np.float32)
        out[:, :3] = xyz
        out[:, 3] = np.round(reflectance[keep], 2)
        return out


def render_drive(config: DrivingWorldConfig, drive: DriveId) -> Iterator[DrivingFrame]:
    """Frames 0 .. frames-1 of one drive, in order."""
    renderer = DriveRenderer(config, drive)
    for t in range(config.frames):
        yield renderer.frame(t)
