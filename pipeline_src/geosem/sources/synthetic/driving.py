"""Embedded procedural driving world (``driving-v1``), rendered by vectorised numpy ray casting.

Why it exists: GeoSem studies transfer between geometry (depth) and semantics (segmentation). A world
whose ground truth is exact and whose appearance is *not* a shortcut to the labels lets the pipeline be
tested end to end without downloads, and keeps the study honest: every surface of every class draws
its colour and texture from the same distribution, so only shape, position and depth separate classes.

Conventions (the converter and any geometry code rely on these):

* Camera frame (OpenCV): x right, y down, z forward.
* World frame: the left camera frame of frame 0 of each sequence. So x right, y down (gravity is +y),
  z forward at the start; the origin is the camera centre at frame 0. The road surface is the plane
  ``y = +camera_height_m`` (1.65 m, as on KITTI); sidewalks, grass strips and everything beyond the
  kerb lie on the raised plane ``y = camera_height_m - kerb_height_m``.
* Poses are camera-to-world 4x4 float64 matrices: ``X_world = R @ X_cam + t``. The camera never pitches
  or rolls; it yaws about the world y axis at a constant rate (positive yaw turns right, towards +x).
* Pixels: pixel (row r, column c) samples the ray through image coordinates ``(u, v) = (c, r)``, i.e.
  integer pixel centres as in OpenCV and monodepth2.
* Intrinsics at the rendered resolution are monodepth2's normalised KITTI intrinsics:
  ``fx = 0.58 * W, fy = 1.92 * H, cx = W / 2, cy = H / 2`` (about 81 x 29 degrees field of view).
* Depth is z-depth along the optical axis in metres (not ray length), float32, 0 where the ray hits
  nothing (sky). Every surface is static, so depth and poses agree exactly between frames.
* Labels are cityscapes19 train ids (``geosem.labelspaces``); 255 is reserved for ignore.
* The stereo right camera sits at ``+baseline_m`` along the camera x axis (KITTI-like rectified pair).

The road follows the camera path: a straight line, or a circular arc when the sequence's yaw rate is
non-zero. Scene content is placed in road coordinates (arc length ``s`` along the path, signed lateral
offset ``lat``, positive to the right) and exists for ``s`` in ``[-30 m, path length + view_distance_m]``
and ``|lat| <= 45 m``; rays that leave that extent see sky.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from geosem.labelspaces import CITYSCAPES19_CLASSES

WORLD_VERSION = "driving-v1"  # bump when rendering or scene layout changes
GENERATOR = "geosem.synthetic.driving"
LABEL_SPACE = "cityscapes19"
DEPTH_SCALE = 256.0  # depth PNGs: uint16 = round(metres * 256), 0 = invalid (KITTI convention)

_ID = {name: index for index, name in enumerate(CITYSCAPES19_CLASSES)}
ROAD = _ID["road"]
SIDEWALK = _ID["sidewalk"]
BUILDING = _ID["building"]
WALL = _ID["wall"]
FENCE = _ID["fence"]
POLE = _ID["pole"]
TRAFFIC_SIGN = _ID["traffic sign"]
VEGETATION = _ID["vegetation"]
TERRAIN = _ID["terrain"]
SKY = _ID["sky"]
CAR = _ID["car"]

# Fixed scene constants that are not worth a config knob.
_S_BEHIND = 30.0  # scene starts this far behind the first camera position (metres of arc length)
_LAT_EXTENT = 45.0  # ground and objects exist within this lateral distance of the road centre line
# Unit vector towards the sun in the world frame: behind-left of the camera and ~35 degrees up, which
# keeps the mean shading of the ground, of facades and of object fronts within a similar range.
_SUN = np.array([-0.5, -0.55, -0.6]) / np.linalg.norm([-0.5, -0.55, -0.6])
_EPS = 1e-6

# Property boundaries behind the sidewalk / grass strip: label, height range (m), thickness (m).
# Fences are solid thin boxes in v1 (no see-through bars).
_BOUNDARIES: dict[int, tuple[int, tuple[float, float], float]] = {
    1: (FENCE, (1.0, 1.8), 0.06),
    2: (WALL, (0.8, 2.2), 0.25),
    3: (VEGETATION, (0.8, 1.6), 0.8),  # hedge
}

# Primitive kinds. Every primitive has a centre, a yaw about the world y axis and a "half" 3-vector in its
# local frame (x lateral, y down, z along its heading): box half extents; cylinder (radius, half height,
# radius); ellipsoid radii.
_BOX, _CYLINDER, _ELLIPSOID = 0, 1, 2

# Procedural texture family, identical for every class: flat, value noise, stripes, 3-D checker.
_TEX_FLAT, _TEX_NOISE, _TEX_STRIPES, _TEX_CHECKER = 0, 1, 2, 3


@dataclass(frozen=True)
class DrivingWorldConfig:
    """Everything that determines the world; the same config always gives byte-identical output."""

    seed: int = 0
    sequences: int = 6  # number of driving sequences
    frames: int = 24  # frames per sequence
    height: int = 64
    width: int = 192
    fps: float = 10.0
    speed_mps: float = 8.0  # ego speed
    baseline_m: float = 0.54  # stereo baseline: right camera at +baseline along camera x
    render_right: bool = False
    camera_height_m: float = 1.65  # camera centre above the road surface (KITTI)
    max_yaw_rate_rps: float = 0.03  # each sequence draws a constant yaw rate in [-max, max] rad/s
    view_distance_m: float = 80.0  # scene extends this far beyond the last camera position
    road_width_m: float = 7.0
    sidewalk_width_m: float = 2.5
    kerb_height_m: float = 0.15
    building_gap_prob: float = 0.3  # chance that the gap before a building is a wide one
    trees_per_100m: float = 7.0  # per side of the road
    bushes_per_100m: float = 5.0  # per side
    poles_per_100m: float = 3.5  # street lights, per side
    signs_per_100m: float = 2.0  # traffic signs, per side
    parked_cars_per_100m: float = 7.0  # per side
    traffic_cars_per_100m: float = 3.0  # cars standing on the driving lanes, both directions together
    palette_size: int = 16  # colours shared by every class of a sequence
    ambient: float = 0.45  # ambient share of the Lambertian shading

    def __post_init__(self) -> None:
        if self.sequences < 1 or self.frames < 1:
            raise ValueError("sequences and frames must be >= 1")
        if self.height < 2 or self.width < 2:
            raise ValueError("height and width must be >= 2")
        if self.fps <= 0 or self.speed_mps < 0 or self.view_distance_m <= 0:
            raise ValueError("fps and view_distance_m must be > 0 and speed_mps >= 0")
        if not 0.0 <= self.ambient <= 1.0:
            raise ValueError("ambient must lie in [0, 1]")
        if self.palette_size < 2:
            raise ValueError("palette_size must be >= 2")
        if self.road_width_m <= 0 or self.sidewalk_width_m <= 0 or self.kerb_height_m < 0:
            raise ValueError("road_width_m and sidewalk_width_m must be > 0, kerb_height_m >= 0")
        if self.kerb_height_m >= self.camera_height_m:
            raise ValueError("kerb_height_m must be below the camera")


@dataclass
class SequenceRender:
    """One rendered sequence; arrays are indexed by frame first."""

    images: np.ndarray  # (T,H,W,3) uint8 RGB
    depth: np.ndarray  # (T,H,W) float32 z-depth in metres, 0 = invalid (sky)
    labels: np.ndarray  # (T,H,W) uint8 cityscapes19 train ids
    poses: np.ndarray  # (T,4,4) float64 camera-to-world of the left camera
    intrinsics: tuple[float, float, float, float]  # fx, fy, cx, cy at the rendered resolution
    right_images: np.ndarray | None  # (T,H,W,3) uint8 when config.render_right


def camera_intrinsics(height: int, width: int) -> tuple[float, float, float, float]:
    """monodepth2's normalised KITTI intrinsics scaled to ``height x width``: (fx, fy, cx, cy)."""
    return 0.58 * width, 1.92 * height, 0.5 * width, 0.5 * height


def _yaw_matrix(yaw: float) -> np.ndarray:
    """Rotation about the (downward) y axis that maps local +z onto heading (sin yaw, 0, cos yaw)."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


class _RoadFrame:
    """Road coordinates (arc length s, signed lateral offset lat) along the camera path.

    The path starts at the world origin heading +z and has constant curvature ``kappa`` (rad/m): a
    straight line for kappa == 0, otherwise a circle of radius 1/kappa whose centre lies at
    ``(1/kappa, 0, 0)``. Positive lat is to the right of the direction of travel.
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
        # Centre line: x = R (1 - cos psi) written as 2 R sin^2(psi/2) to avoid cancellation.
        x = 2.0 * self.radius * np.sin(0.5 * psi) ** 2
        z = self.radius * np.sin(psi)
        # Lateral unit normal (to the right of travel) is (cos psi, -sin psi) in (x, z).
        return x + lat * np.cos(psi), z - lat * np.sin(psi)

    def to_road(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of :meth:`point` for world (x, z): returns (s, lat)."""
        if self.straight:
            return z, x
        r = self.radius
        dx, dz = x - r, z
        dist = np.hypot(dx, dz)
        lat = np.sign(r) * (abs(r) - dist)
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
        """Ray parameter in [t_lo, t_hi] where rays o + t d reach lateral offset ``lat`` (the kerb face)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.straight:
                t = (lat - o[0]) / dx
            else:
                r = self.radius
                rho = abs(r) - np.sign(r) * lat  # kerb circle radius around the path's centre
                qx, qz = o[0] - r, o[2]
                a = dx * dx + dz * dz
                b = 2.0 * (qx * dx + qz * dz)
                c = qx * qx + qz * qz - rho * rho
                root = np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))
                t1 = (-b - root) / (2.0 * a)
                t2 = (-b + root) / (2.0 * a)
                tol = 1e-6 * (1.0 + t_hi)
                t1_ok = (t1 >= t_lo - tol) & (t1 <= t_hi + tol)
                t = np.where(t1_ok, t1, t2)
        # The crossing exists by continuity; the clamp only guards rounding and degenerate rays.
        return np.clip(np.nan_to_num(t, nan=t_hi), t_lo, t_hi)


@dataclass
class _Materials:
    """Material table: every surface (ground band, primitive part, sky) references one row."""

    base: np.ndarray  # (n,3) float in [0,1]
    second: np.ndarray  # (n,3)
    kind: np.ndarray  # (n,) texture kind
    scale: np.ndarray  # (n,) texture period in metres
    contrast: np.ndarray  # (n,)
    direction: np.ndarray  # (n,3) unit vector for stripes
    offset: np.ndarray  # (n,3) texture-space offset so equal materials do not line up
    seed: np.ndarray  # (n,) uint64 hash seed for value noise


class _MaterialBank:
    """Draws materials. There is one draw function and it never sees the class: that is the point."""

    def __init__(self, rng: np.random.Generator, palette_size: int) -> None:
        self._rng = rng
        # One palette per sequence, uniform over the RGB cube (kept off pure black and white).
        self._palette = rng.uniform(0.06, 0.94, size=(palette_size, 3))
        self._rows: list[tuple[np.ndarray, np.ndarray, int, float, float, np.ndarray, np.ndarray, int]] = []

    def draw(self) -> int:
        rng = self._rng
        i, j = rng.integers(0, len(self._palette), size=2)
        kind = int(rng.integers(0, 4))
        scale = float(np.exp(rng.uniform(np.log(0.2), np.log(3.0))))
        contrast = float(rng.uniform(0.15, 0.7))
        direction = rng.normal(size=3)
        direction /= np.linalg.norm(direction) + 1e-12
        offset = rng.uniform(0.0, 64.0, size=3)
        seed = int(rng.integers(0, 2**31))
        self._rows.append(
            (self._palette[i], self._palette[j], kind, scale, contrast, direction, offset, seed)
        )
        return len(self._rows) - 1

    def freeze(self) -> _Materials:
        rows = self._rows
        return _Materials(
            base=np.array([r[0] for r in rows]),
            second=np.array([r[1] for r in rows]),
            kind=np.array([r[2] for r in rows], dtype=np.int64),
            scale=np.array([r[3] for r in rows]),
            contrast=np.array([r[4] for r in rows]),
            direction=np.array([r[5] for r in rows]),
            offset=np.array([r[6] for r in rows]),
            seed=np.array([r[7] for r in rows], dtype=np.uint64),
        )


@dataclass
class _GroundSide:
    """Ground bands on one side of the road, piecewise constant along s (segment k covers
    ``[starts[k], starts[k+1])``). Beyond the kerb: sidewalk, an optional grass strip, then the verge."""

    starts: np.ndarray  # (K,)
    strip_width: np.ndarray  # (K,) grass-strip width, 0 = none
    verge_label: np.ndarray  # (K,) uint8 label of everything beyond the strip
    sidewalk_mat: np.ndarray  # (K,) int
    strip_mat: np.ndarray  # (K,)
    verge_mat: np.ndarray  # (K,)
    front: np.ndarray  # (K,) lateral distance from the kerb line where buildings may start

    def segment(self, s: np.ndarray) -> np.ndarray:
        return np.clip(np.searchsorted(self.starts, s, side="right") - 1, 0, len(self.starts) - 1)


@dataclass
class _Scene:
    """A sequence's static world: ground bands, primitives and materials."""

    road: _RoadFrame
    s_min: float
    s_max: float
    half_road: float
    sidewalk_w: float
    y_road: float
    y_raised: float
    road_starts: np.ndarray
    road_mats: np.ndarray
    sides: dict[int, _GroundSide]  # -1 = left, +1 = right
    kind: np.ndarray  # (M,)
    center: np.ndarray  # (M,3)
    yaw: np.ndarray  # (M,)
    half: np.ndarray  # (M,3)
    label: np.ndarray  # (M,) uint8
    material: np.ndarray  # (M,)
    corners: np.ndarray  # (M,8,3) world corners of each primitive's bounding box, for culling
    materials: _Materials
    sky_material: int


class _PrimitiveBuilder:
    """Collects primitives placed in road coordinates."""

    def __init__(self, road: _RoadFrame) -> None:
        self.road = road
        self.rows: list[tuple[int, float, float, float, float, float, float, float, int, int]] = []

    def add(
        self,
        kind: int,
        s: float,
        lat: float,
        y: float,
        half: tuple[float, float, float],
        label: int,
        material: int,
        yaw_offset: float = 0.0,
        local: tuple[float, float] = (0.0, 0.0),
    ) -> None:
        """Add a primitive whose frame origin is the road point (s, lat) at height y, rotated by the road
        heading plus ``yaw_offset``, then shifted by ``local`` = (x, z) in that rotated frame."""
        x, z = self.road.point(s, lat)
        yaw = float(self.road.heading(s)) + yaw_offset
        c, sn = math.cos(yaw), math.sin(yaw)
        lx, lz = local
        cx = float(x) + c * lx + sn * lz
        cz = float(z) - sn * lx + c * lz
        self.rows.append((kind, cx, y, cz, yaw, half[0], half[1], half[2], label, material))


def _build_scene(config: DrivingWorldConfig, sequence_index: int) -> tuple[_Scene, float]:
    """Lay out one sequence's world. Returns the scene and the yaw rate (rad/s) of the camera."""
    rng = np.random.default_rng([config.seed, sequence_index])
    yaw_rate = float(rng.uniform(-config.max_yaw_rate_rps, config.max_yaw_rate_rps))
    kappa = yaw_rate / config.speed_mps if config.speed_mps > 0 else 0.0
    road = _RoadFrame(kappa)
    bank = _MaterialBank(rng, config.palette_size)
    prims = _PrimitiveBuilder(road)

    path_len = config.speed_mps * (config.frames - 1) / config.fps
    s_min, s_max = -_S_BEHIND, path_len + config.view_distance_m
    half_road = 0.5 * config.road_width_m
    sw = config.sidewalk_width_m
    y_road = config.camera_height_m
    y_raised = config.camera_height_m - config.kerb_height_m
    sky_material = bank.draw()

    # Road surface: patches of different material along s.
    road_starts, road_mats = [], []
    s = s_min
    while s < s_max:
        road_starts.append(s)
        road_mats.append(bank.draw())
        s += rng.uniform(15.0, 45.0)

    sides: dict[int, _GroundSide] = {}
    for side in (-1, 1):
        starts, strip_w, verge_label, mats, fronts = [], [], [], [], []
        boundaries: list[tuple[float, float, float, int]] = []  # (s0, s1, lat of the boundary, kind)
        s = s_min
        while s < s_max:
            length = rng.uniform(12.0, 40.0)
            strip = rng.uniform(1.5, 4.0) if rng.random() < 0.4 else 0.0
            verge = TERRAIN if rng.random() < 0.5 else SIDEWALK
            mats.append((bank.draw(), bank.draw(), bank.draw()))
            boundary = int(rng.choice(4, p=[0.4, 0.2, 0.2, 0.2]))  # 0 none, else a key of _BOUNDARIES
            thickness = _BOUNDARIES[boundary][2] if boundary else 0.0
            starts.append(s)
            strip_w.append(strip)
            verge_label.append(verge)
            fronts.append(sw + strip + thickness + 0.3)
            if boundary:
                boundaries.append((s, s + length, sw + strip + 0.15 + 0.5 * thickness, boundary))
            s += length
        mats_arr = np.array(mats, dtype=np.int64)
        sides[side] = _GroundSide(
            starts=np.array(starts),
            strip_width=np.array(strip_w),
            verge_label=np.array(verge_label, dtype=np.uint8),
            sidewalk_mat=mats_arr[:, 0],
            strip_mat=mats_arr[:, 1],
            verge_mat=mats_arr[:, 2],
            front=np.array(fronts),
        )
        # Fences, walls and hedges along the back of the sidewalk / strip, in pieces of <= 8 m so that
        # they follow a curved road.
        for s0, s1, off, kind in boundaries:
            label, height_range, thick = _BOUNDARIES[kind]
            height = rng.uniform(*height_range)
            material = bank.draw()
            pieces = max(1, math.ceil((s1 - s0) / 8.0))
            edges = np.linspace(s0 + 0.5, s1 - 0.5, pieces + 1)
            for a, b in itertools.pairwise(edges):
                prims.add(
                    _BOX,
                    0.5 * (a + b),
                    side * (half_road + off),
                    y_raised - 0.5 * height + 0.1,
                    (0.5 * thick, 0.5 * height + 0.1, 0.5 * (b - a)),
                    label,
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
                if row == 0:
                    near = front_lat(side, s, s + width) + rng.uniform(0.5, 5.0)
                else:
                    near = rng.uniform(24.0, 32.0)
                mid = s + 0.5 * width
                s += width
                if mid - 0.5 * width > s_max:
                    break
                prims.add(
                    _BOX,
                    mid,
                    side * (near + 0.5 * depth),
                    y_raised - 0.5 * height + 0.25,  # sunk 0.5 m into the ground: no seam at the base
                    (0.5 * depth, 0.5 * height + 0.25, 0.5 * width),
                    BUILDING,
                    bank.draw(),
                )

    def positions(rate_per_100m: float, min_gap: float) -> list[float]:
        """Sorted positions along s with exponential spacing of mean 100 / rate metres."""
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
        # Trees (trunk + crown, both vegetation): in the grass strip when there is one, else at the back
        # of the sidewalk.
        for s in positions(config.trees_per_100m, 4.0):
            k = int(g.segment(np.array([s]))[0])
            off = sw + 0.5 * g.strip_width[k] if g.strip_width[k] > 0 else sw - 0.7
            trunk_r, trunk_h = rng.uniform(0.12, 0.25), rng.uniform(1.8, 3.5)
            crown_xz, crown_y = rng.uniform(1.2, 2.6), rng.uniform(1.2, 2.8)
            prims.add(
                _CYLINDER,
                s,
                side * (half_road + off),
                y_raised - 0.5 * trunk_h + 0.1,
                (trunk_r, 0.5 * trunk_h + 0.1, trunk_r),
                VEGETATION,
                bank.draw(),
            )
            prims.add(
                _ELLIPSOID,
                s,
                side * (half_road + off),
                y_raised - trunk_h - 0.6 * crown_y,
                (crown_xz, crown_y, crown_xz * rng.uniform(0.8, 1.2)),
                VEGETATION,
                bank.draw(),
            )
        # Bushes: half-sunk ellipsoids in the strip or on the verge.
        for s in positions(config.bushes_per_100m, 2.0):
            k = int(g.segment(np.array([s]))[0])
            off = sw + 0.5 * g.strip_width[k] if g.strip_width[k] > 0 else g.front[k] + rng.uniform(0.5, 3.0)
            ry = rng.uniform(0.4, 0.9)
            prims.add(
                _ELLIPSOID,
                s,
                side * (half_road + off),
                y_raised - 0.3 * ry,
                (rng.uniform(0.5, 1.2), ry, rng.uniform(0.5, 1.5)),
                VEGETATION,
                bank.draw(),
            )
        # Street lights: a pole with an arm reaching over the road, all labelled pole.
        for s in positions(config.poles_per_100m, 8.0):
            r, h = rng.uniform(0.07, 0.14), rng.uniform(5.0, 8.0)
            arm = rng.uniform(1.0, 2.0)
            material = bank.draw()
            prims.add(
                _CYLINDER,
                s,
                side * (half_road + 0.35),
                y_raised - 0.5 * h + 0.1,
                (r, 0.5 * h + 0.1, r),
                POLE,
                material,
            )
            prims.add(
                _BOX,
                s,
                side * (half_road + 0.35 - 0.5 * arm),
                y_raised - h + 0.1,
                (0.5 * arm, 0.06, 0.06),
                POLE,
                material,
            )
        # Traffic signs: thin pole plus a flat plate facing the traffic.
        for s in positions(config.signs_per_100m, 10.0):
            r, h = rng.uniform(0.04, 0.06), rng.uniform(2.2, 3.0)
            plate = rng.uniform(0.3, 0.45)
            prims.add(
                _CYLINDER,
                s,
                side * (half_road + 0.45),
                y_raised - 0.5 * h + 0.1,
                (r, 0.5 * h + 0.1, r),
                POLE,
                bank.draw(),
            )
            prims.add(
                _BOX,
                s,
                side * (half_road + 0.45),
                y_raised - h - plate + 0.1,
                (plate, plate * rng.uniform(0.8, 1.2), 0.02),
                TRAFFIC_SIGN,
                bank.draw(),
                yaw_offset=rng.uniform(-0.3, 0.3),
                local=(0.0, -r - 0.03),
            )

    # Cars: parked along both kerbs, then a few standing in the lanes. Footprints (s0, s1, lat0, lat1)
    # must not overlap each other nor the corridor the ego camera drives through.
    footprints: list[tuple[float, float, float, float]] = []
    ego_s0, ego_s1 = -3.0, path_len + 8.0

    def add_car(s: float, lat: float, length: float, width: float, yaw_offset: float) -> None:
        body_h = rng.uniform(0.6, 0.85)
        cabin_h = rng.uniform(0.45, 0.6)
        clearance = 0.25
        body_mat, wheel_mat = bank.draw(), bank.draw()
        prims.add(
            _BOX,
            s,
            lat,
            y_road - clearance - 0.5 * body_h,
            (0.5 * width, 0.5 * body_h, 0.5 * length),
            CAR,
            body_mat,
            yaw_offset=yaw_offset,
        )
        prims.add(
            _BOX,
            s,
            lat,
            y_road - clearance - body_h - 0.5 * cabin_h,
            (0.45 * width, 0.5 * cabin_h, 0.27 * length),
            CAR,
            body_mat,
            yaw_offset=yaw_offset,
            local=(0.0, -0.08 * length),
        )
        for wx in (-1.0, 1.0):
            for wz in (-1.0, 1.0):
                prims.add(
                    _ELLIPSOID,
                    s,
                    lat,
                    y_road - 0.31,
                    (0.11, 0.31, 0.31),
                    CAR,
                    wheel_mat,
                    yaw_offset=yaw_offset,
                    local=(wx * (0.5 * width - 0.1), wz * (0.5 * length - 0.75)),
                )

    def car_fits(s: float, lat: float, length: float, width: float) -> bool:
        s0, s1, l0, l1 = s - 0.5 * length, s + 0.5 * length, lat - 0.5 * width, lat + 0.5 * width
        if s1 > ego_s0 and s0 < ego_s1 and l1 > -0.7 and l0 < 0.7:
            return False
        return all(
            not (s1 > a0 - 0.5 and s0 < a1 + 0.5 and l1 > b0 and l0 < b1) for a0, a1, b0, b1 in footprints
        )

    for side in (-1, 1):
        if config.parked_cars_per_100m <= 0:
            break
        mean_gap = max(0.6, 100.0 / config.parked_cars_per_100m - 4.3)
        s = s_min + rng.uniform(0.0, 10.0)
        while s < s_max:
            length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
            lat = side * (half_road - 0.15 - 0.5 * width)
            mid = s + 0.5 * length
            flip = math.pi if rng.random() < 0.3 else 0.0
            if car_fits(mid, lat, length, width):
                add_car(mid, lat, length, width, flip + rng.uniform(-0.05, 0.05))
                footprints.append((s, s + length, lat - 0.5 * width, lat + 0.5 * width))
            s += length + max(0.6, rng.exponential(mean_gap))

    n_traffic = int(rng.poisson(config.traffic_cars_per_100m * (s_max - s_min) / 100.0))
    for _ in range(n_traffic):
        s = rng.uniform(s_min, s_max)
        lane = int(rng.integers(0, 3))  # 0 oncoming lane, 1 ego lane (ahead only), 2 same-direction right
        lat = (-1.8, 0.0, 1.8)[lane] + rng.uniform(-0.15, 0.15)
        length, width = rng.uniform(3.8, 4.8), rng.uniform(1.7, 1.9)
        yaw_offset = (math.pi if lane == 0 else 0.0) + rng.uniform(-0.08, 0.08)
        if car_fits(s, lat, length, width):
            add_car(s, lat, length, width, yaw_offset)
            footprints.append((s - 0.5 * length, s + 0.5 * length, lat - 0.5 * width, lat + 0.5 * width))

    rows = prims.rows
    kind = np.array([r[0] for r in rows], dtype=np.int64)
    center = np.array([r[1:4] for r in rows], dtype=np.float64).reshape(-1, 3)
    yaw = np.array([r[4] for r in rows], dtype=np.float64)
    half = np.array([r[5:8] for r in rows], dtype=np.float64).reshape(-1, 3)
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=np.float64)
    local_corners = half[:, None, :] * signs[None, :, :]  # (M,8,3)
    c, sn = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    corners = np.empty_like(local_corners)
    corners[..., 0] = center[:, None, 0] + c * local_corners[..., 0] + sn * local_corners[..., 2]
    corners[..., 1] = center[:, None, 1] + local_corners[..., 1]
    corners[..., 2] = center[:, None, 2] - sn * local_corners[..., 0] + c * local_corners[..., 2]

    scene = _Scene(
        road=road,
        s_min=s_min,
        s_max=s_max,
        half_road=half_road,
        sidewalk_w=sw,
        y_road=y_road,
        y_raised=y_raised,
        road_starts=np.array(road_starts),
        road_mats=np.array(road_mats, dtype=np.int64),
        sides=sides,
        kind=kind,
        center=center,
        yaw=yaw,
        half=half,
        label=np.array([r[8] for r in rows], dtype=np.uint8),
        material=np.array([r[9] for r in rows], dtype=np.int64),
        corners=corners,
        materials=bank.freeze(),
        sky_material=sky_material,
    )
    return scene, yaw_rate


def sequence_poses(config: DrivingWorldConfig, yaw_rate: float) -> np.ndarray:
    """Camera-to-world poses (T,4,4) of the left camera driving along the road centre line."""
    road = _RoadFrame(yaw_rate / config.speed_mps if config.speed_mps > 0 else 0.0)
    poses = np.tile(np.eye(4), (config.frames, 1, 1))
    for t in range(config.frames):
        s = config.speed_mps * t / config.fps
        x, z = road.point(s, 0.0)
        poses[t, :3, :3] = _yaw_matrix(float(road.heading(s)))
        poses[t, :3, 3] = (float(x), 0.0, float(z))
    return poses + 0.0  # turns -0.0 from the rotation into +0.0, for tidy poses.txt files


# ----------------------------------------------------------------------------------------------------
# Ray casting. Ray directions are kept unnormalised with unit z in the camera frame, so the ray parameter
# t of any hit *is* the z-depth of that hit.


def _intersect_ground(scene: _Scene, origin: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, ...]:
    """Ground hits for world rays d (N,3): t (inf = none), label, material, normal (N,3)."""
    n = d.shape[0]
    t_out = np.full(n, np.inf)
    label = np.full(n, SKY, dtype=np.uint8)
    material = np.full(n, scene.sky_material, dtype=np.int64)
    normal = np.zeros((n, 3))
    normal[:, 1] = -1.0
    down = np.nonzero(d[:, 1] > 1e-9)[0]
    if down.size == 0:
        return t_out, label, material, normal
    dx, dy, dz = d[down, 0], d[down, 1], d[down, 2]
    road = scene.road
    half = scene.half_road
    # Raised plane (sidewalks and beyond) is crossed first by a downward ray; it only counts outside the
    # road band. Otherwise the ray reaches the road plane, or, past the kerb line, the kerb's vertical face.
    t_hi = (scene.y_raised - origin[1]) / dy
    s_hi, lat_hi = road.to_road(origin[0] + t_hi * dx, origin[2] + t_hi * dz)
    t_lo = (scene.y_road - origin[1]) / dy
    s_lo, lat_lo = road.to_road(origin[0] + t_lo * dx, origin[2] + t_lo * dz)
    raised = np.abs(lat_hi) >= half
    on_road = ~raised & (np.abs(lat_lo) < half)
    kerb = ~raised & ~on_road
    t = np.where(raised, t_hi, t_lo)
    s = np.where(raised, s_hi, s_lo)
    lat = np.where(raised, lat_hi, lat_lo)
    if kerb.any():
        kerb_lat = np.sign(lat_lo[kerb]) * half
        tk = road.crossing(origin, dx[kerb], dz[kerb], kerb_lat, t_hi[kerb], t_lo[kerb])
        t[kerb] = tk
        s[kerb], lat[kerb] = road.to_road(origin[0] + tk * dx[kerb], origin[2] + tk * dz[kerb])
        lat[kerb] = kerb_lat  # exact, so the band lookup below classifies the face as sidewalk
    valid = (s >= scene.s_min) & (s <= scene.s_max) & (np.abs(lat) <= _LAT_EXTENT)

    lab = np.full(down.size, ROAD, dtype=np.uint8)
    mat = scene.road_mats[np.clip(np.searchsorted(scene.road_starts, s, side="right") - 1, 0, None)]
    off = np.abs(lat) - half  # distance beyond the kerb line
    for side in (-1, 1):
        sel = (np.sign(lat) == side) & (off >= 0)
        if not sel.any():
            continue
        g = scene.sides[side]
        k = g.segment(s[sel])
        o = off[sel]
        in_sw = o < scene.sidewalk_w
        in_strip = ~in_sw & (o < scene.sidewalk_w + g.strip_width[k])
        lab[sel] = np.where(in_sw, SIDEWALK, np.where(in_strip, TERRAIN, g.verge_label[k]))
        mat[sel] = np.where(in_sw, g.sidewalk_mat[k], np.where(in_strip, g.strip_mat[k], g.verge_mat[k]))

    idx = down[valid]
    t_out[idx] = t[valid]
    label[idx] = lab[valid]
    material[idx] = mat[valid]
    kv = kerb & valid
    if kv.any():
        # Kerb face normal points back towards the road centre line: -sign(lat) * lateral unit vector.
        psi = road.heading(s[kv])
        sgn = -np.sign(lat[kv])
        kidx = down[kv]
        normal[kidx, 0] = sgn * np.cos(psi)
        normal[kidx, 1] = 0.0
        normal[kidx, 2] = -sgn * np.sin(psi)
    return t_out, label, material, normal


def _intersect_box(
    o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """Slab test in the box's local frame; o is the local ray origin, h the half extents."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t_near = np.full(dx.shape, -np.inf)
        t_far = np.full(dx.shape, np.inf)
        for axis, dv in ((0, dx), (1, dy), (2, dz)):
            inv = 1.0 / dv
            t1 = (-h[axis] - o[axis]) * inv
            t2 = (h[axis] - o[axis]) * inv
            np.maximum(t_near, np.minimum(t1, t2), out=t_near)
            np.minimum(t_far, np.maximum(t1, t2), out=t_far)
    hit = (t_near <= t_far) & (t_near > _EPS)
    return np.where(hit, t_near, np.inf)


def _intersect_cylinder(
    o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """Vertical capped cylinder along the local y axis: radius h[0], half height h[1]."""
    r, hy = h[0], h[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        a = dx * dx + dz * dz
        b = 2.0 * (o[0] * dx + o[2] * dz)
        c = o[0] * o[0] + o[2] * o[2] - r * r
        disc = b * b - 4.0 * a * c
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
        y_side = o[1] + t_side * dy
        side_ok = (disc >= 0) & (t_side > _EPS) & (np.abs(y_side) <= hy)
        t = np.where(side_ok, t_side, np.inf)
        for cap in (-hy, hy):
            t_cap = (cap - o[1]) / dy
            px, pz = o[0] + t_cap * dx, o[2] + t_cap * dz
            cap_ok = (t_cap > _EPS) & (px * px + pz * pz <= r * r)
            t = np.where(cap_ok & (t_cap < t), t_cap, t)
    return t


def _intersect_ellipsoid(
    o: np.ndarray, dx: np.ndarray, dy: np.ndarray, dz: np.ndarray, h: np.ndarray
) -> np.ndarray:
    """Axis-aligned (local frame) ellipsoid with radii h, via scaling to the unit sphere."""
    ox, oy, oz = o / h
    ux, uy, uz = dx / h[0], dy / h[1], dz / h[2]
    a = ux * ux + uy * uy + uz * uz
    b = 2.0 * (ox * ux + oy * uy + oz * uz)
    c = ox * ox + oy * oy + oz * oz - 1.0
    disc = b * b - 4.0 * a * c
    t = (-b - np.sqrt(np.maximum(disc, 0.0))) / (2.0 * a)
    return np.where((disc >= 0) & (t > _EPS), t, np.inf)


_INTERSECT = {_BOX: _intersect_box, _CYLINDER: _intersect_cylinder, _ELLIPSOID: _intersect_ellipsoid}
_SMALL_AREA = 400  # screen rectangles up to this many pixels are intersected in one batch per frame


def _intersect_primitives(
    scene: _Scene,
    origin: np.ndarray,
    rotation: np.ndarray,
    d: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    t_best: np.ndarray,
    prim_id: np.ndarray,
) -> None:
    """Z-buffer primitives into t_best / prim_id (both (H,W), updated in place).

    Each primitive is only tested against the pixels inside the projection of its bounding box, which
    also culls everything behind the camera or outside the view.
    """
    if scene.kind.size == 0:
        return
    fx, fy, cx, cy = intrinsics
    height, width = t_best.shape
    cam = (scene.corners - origin) @ rotation  # world -> camera: R^T (p - o), as row vectors
    z = cam[..., 2]
    front = z > 1e-3
    any_front = front.any(axis=1)
    all_front = front.all(axis=1)
    zs = np.where(front, z, 1.0)
    u = fx * cam[..., 0] / zs + cx
    v = fy * cam[..., 1] / zs + cy
    c0 = np.where(all_front, np.floor(np.where(front, u, np.inf).min(axis=1)), 0)
    c1 = np.where(all_front, np.floor(np.where(front, u, -np.inf).max(axis=1)) + 2, width)
    r0 = np.where(all_front, np.floor(np.where(front, v, np.inf).min(axis=1)), 0)
    r1 = np.where(all_front, np.floor(np.where(front, v, -np.inf).max(axis=1)) + 2, height)
    c0, c1 = np.clip(c0, 0, width).astype(np.int64), np.clip(c1, 0, width).astype(np.int64)
    r0, r1 = np.clip(r0, 0, height).astype(np.int64), np.clip(r1, 0, height).astype(np.int64)
    visible = any_front & (c1 > c0) & (r1 > r0)
    area = (c1 - c0) * (r1 - r0)
    cos_yaw, sin_yaw = np.cos(scene.yaw), np.sin(scene.yaw)
    rel = origin - scene.center
    # Local ray origins of all primitives at once: R_yaw^T (origin - centre).
    o_local = np.stack(
        [cos_yaw * rel[:, 0] - sin_yaw * rel[:, 2], rel[:, 1], sin_yaw * rel[:, 0] + cos_yaw * rel[:, 2]],
        axis=1,
    )
    dx, dy, dz = d[..., 0], d[..., 1], d[..., 2]

    # Large screen rectangles (buildings, near objects): one vectorised test per primitive, nearest first
    # (by the closest bounding-box corner) so that a primitive whose bounding box lies behind everything
    # already drawn in its rectangle is skipped.
    z_min = np.where(all_front, z.min(axis=1), 0.0)
    large = np.nonzero(visible & (area > _SMALL_AREA))[0]
    large = large[np.argsort(z_min[large], kind="stable")]
    kinds, z_near = scene.kind.tolist(), z_min.tolist()
    rows0, rows1, cols0, cols1 = r0.tolist(), r1.tolist(), c0.tolist(), c1.tolist()
    for i in large.tolist():
        a0, a1, b0, b1 = rows0[i], rows1[i], cols0[i], cols1[i]
        tb = t_best[a0:a1, b0:b1]
        if z_near[i] >= tb.max():
            continue  # fully occluded
        c, s = cos_yaw[i], sin_yaw[i]
        bx, bz = dx[a0:a1, b0:b1], dz[a0:a1, b0:b1]
        t = _INTERSECT[kinds[i]](
            o_local[i], c * bx - s * bz, dy[a0:a1, b0:b1], s * bx + c * bz, scene.half[i]
        )
        closer = t < tb
        if closer.any():
            tb[closer] = t[closer]
            prim_id[a0:a1, b0:b1][closer] = i

    # Small rectangles (poles, wheels, far objects): all (primitive, pixel) pairs in one batch, because
    # per-primitive numpy overhead would dominate their few pixels.
    small = np.nonzero(visible & (area <= _SMALL_AREA))[0]
    if small.size == 0:
        return
    sizes = area[small]
    starts = np.cumsum(sizes) - sizes
    pair_prim = np.repeat(small, sizes)
    offset = np.arange(int(sizes.sum())) - np.repeat(starts, sizes)
    rect_w = np.repeat((c1 - c0)[small], sizes)
    pix = (
        (np.repeat(r0[small], sizes) + offset // rect_w) * width
        + np.repeat(c0[small], sizes)
        + offset % rect_w
    )
    flat_d = d.reshape(-1, 3)[pix]
    c, s = cos_yaw[pair_prim], sin_yaw[pair_prim]
    lx, ly, lz = c * flat_d[:, 0] - s * flat_d[:, 2], flat_d[:, 1], s * flat_d[:, 0] + c * flat_d[:, 2]
    t = np.full(pix.size, np.inf)
    pair_kind = scene.kind[pair_prim]
    for kind, intersect in _INTERSECT.items():
        sel = np.nonzero(pair_kind == kind)[0]
        if sel.size:
            ids = pair_prim[sel]
            t[sel] = intersect(o_local[ids].T, lx[sel], ly[sel], lz[sel], scene.half[ids].T)
    flat_t, flat_id = t_best.reshape(-1), prim_id.reshape(-1)
    closer = np.nonzero(t < flat_t[pix])[0]
    if closer.size == 0:
        return
    pix, t, pair_prim = pix[closer], t[closer], pair_prim[closer]
    order = np.lexsort((t, pix))  # per pixel, nearest candidate first
    pix, t, pair_prim = pix[order], t[order], pair_prim[order]
    first = np.ones(pix.size, dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    flat_t[pix[first]] = t[first]
    flat_id[pix[first]] = pair_prim[first]


def _hash01(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Deterministic integer hash of lattice points to [0, 1) (uint64 arithmetic wraps by design)."""
    h = ix.astype(np.uint64) * np.uint64(0x9E3779B185EBCA87)
    h ^= iy.astype(np.uint64) * np.uint64(0xC2B2AE3D27D4EB4F)
    h ^= iz.astype(np.uint64) * np.uint64(0x165667B19E3779F9)
    h ^= seed * np.uint64(0x27D4EB2F165667C5)
    h ^= h >> np.uint64(29)
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h ^= h >> np.uint64(32)
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2.0**53)


def _value_noise(q: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """Trilinearly interpolated 3-D value noise with a smoothstep fade; q is (N,3) in texture units."""
    base = np.floor(q)
    f = q - base
    f = f * f * (3.0 - 2.0 * f)
    i = base.astype(np.int64)
    out = np.zeros(q.shape[0])
    for ox in (0, 1):
        wx = f[:, 0] if ox else 1.0 - f[:, 0]
        for oy in (0, 1):
            wy = f[:, 1] if oy else 1.0 - f[:, 1]
            for oz in (0, 1):
                wz = f[:, 2] if oz else 1.0 - f[:, 2]
                out += wx * wy * wz * _hash01(i[:, 0] + ox, i[:, 1] + oy, i[:, 2] + oz, seed)
    return out


def _surface_colour(points: np.ndarray, mats: np.ndarray, table: _Materials) -> np.ndarray:
    """Unshaded RGB in [0,1] of surface points (N,3) given in each surface's texture coordinates."""
    kind = table.kind[mats]
    q = points / table.scale[mats][:, None] + table.offset[mats]
    value = np.zeros(points.shape[0])
    sel = kind == _TEX_NOISE
    if sel.any():
        seeds = table.seed[mats[sel]]
        noise = 0.6 * _value_noise(q[sel], seeds) + 0.4 * _value_noise(
            2.7 * q[sel] + 13.0, seeds + np.uint64(1)
        )
        value[sel] = np.clip(1.8 * (noise - 0.5) + 0.5, 0.0, 1.0)
    sel = kind == _TEX_STRIPES
    if sel.any():
        phase = np.einsum("ij,ij->i", q[sel], table.direction[mats[sel]])
        value[sel] = (phase - np.floor(phase)) < 0.5
    sel = kind == _TEX_CHECKER
    if sel.any():
        value[sel] = np.floor(q[sel]).sum(axis=1) % 2.0
    w = (table.contrast[mats] * value)[:, None]
    return table.base[mats] * (1.0 - w) + table.second[mats] * w


def _ray_grid(height: int, width: int, intrinsics: tuple[float, float, float, float]) -> np.ndarray:
    """Camera-frame ray directions (H,W,3) with z = 1 through integer pixel centres (u, v) = (col, row)."""
    fx, fy, cx, cy = intrinsics
    grid = np.ones((height, width, 3))
    grid[..., 0] = ((np.arange(width) - cx) / fx)[None, :]
    grid[..., 1] = ((np.arange(height) - cy) / fy)[:, None]
    return grid


def _render_view(
    scene: _Scene,
    pose: np.ndarray,
    rays_cam: np.ndarray,
    intrinsics: tuple[float, float, float, float],
    ambient: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one camera: (rgb uint8 HxWx3, depth float32 HxW, labels uint8 HxW)."""
    height, width = rays_cam.shape[:2]
    rotation, origin = pose[:3, :3], pose[:3, 3]
    d = rays_cam @ rotation.T  # world-frame directions, still with unit camera z
    flat = d.reshape(-1, 3)
    t_ground, g_label, g_mat, g_normal = _intersect_ground(scene, origin, flat)
    t_best = t_ground.reshape(height, width).copy()
    prim_id = np.full((height, width), -1, dtype=np.int64)
    _intersect_primitives(scene, origin, rotation, d, intrinsics, t_best, prim_id)  # in place

    t = t_best.reshape(-1)
    pid = prim_id.reshape(-1)
    hit = np.isfinite(t)
    points = origin + np.where(hit, t, 0.0)[:, None] * flat
    # Full-size gathers with a clamped id are cheaper than boolean indexing; np.where picks per pixel.
    on_prim = pid >= 0
    ids = np.maximum(pid, 0)
    label = np.where(on_prim, scene.label[ids], g_label)
    mat = np.where(on_prim, scene.material[ids], g_mat)
    c, s = np.cos(scene.yaw[ids]), np.sin(scene.yaw[ids])
    rel = points - scene.center[ids]
    local = np.stack([c * rel[:, 0] - s * rel[:, 2], rel[:, 1], s * rel[:, 0] + c * rel[:, 2]], axis=1)
    half = scene.half[ids]
    kinds = np.where(on_prim, scene.kind[ids], -1)
    ratio = local / half
    # Box: the face whose normalised coordinate is +-1. Cylinder: cap or radial side, whichever the
    # hit point is closer to. Ellipsoid: gradient of the implicit function.
    axis = np.argmax(np.abs(ratio), axis=1)
    n_box = np.zeros_like(local)
    rows = np.arange(axis.size)
    n_box[rows, axis] = np.sign(ratio[rows, axis])
    radial = np.hypot(ratio[:, 0], ratio[:, 2])
    on_cap = np.abs(np.abs(ratio[:, 1]) - 1.0) < np.abs(radial - 1.0)
    n_cyl = np.where(
        on_cap[:, None],
        np.stack([np.zeros_like(radial), np.sign(ratio[:, 1]), np.zeros_like(radial)], axis=1),
        local * np.array([1.0, 0.0, 1.0]),
    )
    n_ell = local / half**2
    n_local = np.where((kinds == _BOX)[:, None], n_box, np.where((kinds == _CYLINDER)[:, None], n_cyl, n_ell))
    n_local /= np.maximum(np.linalg.norm(n_local, axis=1, keepdims=True), 1e-12)
    # local -> world: inverse of the yaw rotation used above.
    n_world = np.stack(
        [c * n_local[:, 0] + s * n_local[:, 2], n_local[:, 1], -s * n_local[:, 0] + c * n_local[:, 2]], axis=1
    )
    normal = np.where(on_prim[:, None], n_world, g_normal)
    # Primitives are textured in object-local coordinates, ground bands in world coordinates: either way a
    # surface point keeps its colour from frame to frame.
    texture_points = np.where(on_prim[:, None], local, points)

    sky = ~hit
    unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
    # The sky's texture lives on a virtual dome of radius 60 m that is fixed in the world.
    texture_points = np.where(sky[:, None], 60.0 * unit, texture_points)
    colour = _surface_colour(texture_points, mat, scene.materials)

    # Lambertian shading with normals turned towards the camera; the sky gets a vertical gradient of its
    # palette colour instead (brighter towards the zenith), with a similar mean brightness.
    facing = np.einsum("ij,ij->i", normal, flat) > 0
    shade = ambient + (1.0 - ambient) * np.maximum(np.where(facing, -(normal @ _SUN), normal @ _SUN), 0.0)
    gradient = 0.68 + 0.25 * np.clip(-unit[:, 1] / 0.35, 0.0, 1.0)
    shade = np.where(sky, gradient, shade)
    rgb = np.clip(colour * shade[:, None] * 255.0 + 0.5, 0.0, 255.0).astype(np.uint8)

    depth = np.where(hit, t, 0.0).astype(np.float32)
    label = np.where(sky, SKY, label).astype(np.uint8)
    return rgb.reshape(height, width, 3), depth.reshape(height, width), label.reshape(height, width)


def render_sequence(
    config: DrivingWorldConfig, sequence_index: int, on_frame: Callable[[int], None] | None = None
) -> SequenceRender:
    """Render every frame of one sequence (deterministic in ``config`` and ``sequence_index``).

    ``on_frame(t)`` is called after frame t is done, for progress reporting.
    """
    if sequence_index < 0:
        raise ValueError("sequence_index must be >= 0")
    scene, yaw_rate = _build_scene(config, sequence_index)
    poses = sequence_poses(config, yaw_rate)
    intrinsics = camera_intrinsics(config.height, config.width)
    rays = _ray_grid(config.height, config.width, intrinsics)
    shape = (config.frames, config.height, config.width)
    images = np.empty((*shape, 3), dtype=np.uint8)
    depth = np.empty(shape, dtype=np.float32)
    labels = np.empty(shape, dtype=np.uint8)
    right = np.empty((*shape, 3), dtype=np.uint8) if config.render_right else None
    to_right = np.eye(4)
    to_right[0, 3] = config.baseline_m  # right camera centre at +baseline along the left camera's x
    for t in range(config.frames):
        images[t], depth[t], labels[t] = _render_view(scene, poses[t], rays, intrinsics, config.ambient)
        if right is not None:
            right[t] = _render_view(scene, poses[t] @ to_right, rays, intrinsics, config.ambient)[0]
        if on_frame is not None:
            on_frame(t)
    return SequenceRender(
        images=images, depth=depth, labels=labels, poses=poses, intrinsics=intrinsics, right_images=right
    )


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _write_sequence(seq_dir: Path, render: SequenceRender, config: DrivingWorldConfig) -> None:
    fx, fy, cx, cy = render.intrinsics
    camera = {
        "fx": fx,
        "fy": fy,
        "cx": cx,
        "cy": cy,
        "baseline_m": config.baseline_m,
        "height": config.height,
        "width": config.width,
    }
    folders = ["image", "depth", "label"] + (["right"] if render.right_images is not None else [])
    for folder in folders:
        (seq_dir / folder).mkdir(parents=True)
    (seq_dir / "camera.json").write_text(json.dumps(camera, indent=2, sort_keys=True) + "\n")
    # KITTI odometry style: the top 3x4 of each camera-to-world matrix, row-major, one frame per line.
    lines = [" ".join(f"{v:.9e}" for v in pose[:3, :].reshape(-1)) for pose in render.poses]
    (seq_dir / "poses.txt").write_text("\n".join(lines) + "\n")
    depth_png = np.clip(np.round(render.depth.astype(np.float64) * DEPTH_SCALE), 0, 65535).astype(np.uint16)
    for t in range(render.images.shape[0]):
        name = f"{t:06d}.png"
        _write_png(seq_dir / "image" / name, np.ascontiguousarray(render.images[t, ..., ::-1]))  # RGB -> BGR
        if render.right_images is not None:
            _write_png(seq_dir / "right" / name, np.ascontiguousarray(render.right_images[t, ..., ::-1]))
        _write_png(seq_dir / "depth" / name, depth_png[t])
        _write_png(seq_dir / "label" / name, render.labels[t])


def write_driving_world(config: DrivingWorldConfig, out_dir: Path, progress: bool = True) -> None:
    """Render the whole world into ``out_dir`` atomically (see the module docstring for conventions).

    Everything is written into a temporary sibling directory with ``world.json`` last, then renamed into
    place, so a reader never sees a half-written world; an existing ``out_dir`` is replaced only once
    the new one is complete.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        names = []
        for index in range(config.sequences):
            name = f"seq_{index:03d}"
            with tqdm(total=config.frames, desc=f"world {name}", unit="frame", disable=not progress) as bar:
                render = render_sequence(config, index, on_frame=lambda _t: bar.update(1))
            _write_sequence(tmp / name, render, config)
            names.append(name)
        world = {
            "generator": GENERATOR,
            "version": WORLD_VERSION,
            "config": asdict(config),
            "label_space": LABEL_SPACE,
            "sequences": names,
        }
        (tmp / "world.json").write_text(json.dumps(world, indent=2, sort_keys=True) + "\n")
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f"{out_dir.name}.old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
