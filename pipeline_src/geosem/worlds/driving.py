"""Embedded procedural driving world (``driving-v2``): a stand-in for KITTI with exact ground truth.

Why it exists: GeoSem studies transfer between geometry and semantics. A world whose ground truth is
exact and whose appearance is *not* a shortcut to the labels lets the pipeline run end to end without
downloads and keeps the study honest: every surface of every class draws its colour and texture from the
same distribution, so only shape, position, depth and motion separate classes (measured in
tests/unit/test_honesty.py).

Conventions (the KITTI writer and the geometry code rely on these):

* Camera frame (OpenCV): x right, y down, z forward. The rendered (left) camera is the rectified colour
  camera 2 of :mod:`geosem.worlds.rig`; the right camera (3) sits at ``+baseline`` along x.
* World frame: the left camera frame of frame 0 of each drive (x right, y down = gravity, z forward);
  the road surface is the plane ``y = camera_height_m``; sidewalks and everything beyond the kerb lie on
  the raised plane ``y = camera_height_m - kerb_height_m``.
* Poses are camera-to-world 4x4 float64: ``X_world = R @ X_cam + t``. The car never pitches or rolls; it
  yaws about the world y axis at a constant rate per drive (positive yaw turns right, towards +x).
* Pixel (row r, column c) samples the ray through image coordinates ``(u, v) = (c, r)`` (pixel centres).
* Depth is z-depth in metres, float32, 0 where the ray hits nothing (sky).
* Labels are world *parts* (:mod:`geosem.worlds.parts`); the writers translate them.
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

This module names the world: its config, drives and rigs. The world itself is made by

* :mod:`geosem.worlds.road`: the road frame and the ego car's motion along it;
* :mod:`geosem.worlds.driving_scene`: a drive's scene (ground bands, primitives, moving objects);
* :mod:`geosem.worlds.driving_layout`: ``build_scene``, which lays a drive out with the static street of
  :mod:`geosem.worlds.driving_street` and the cars and people of :mod:`geosem.worlds.driving_traffic`;
* :mod:`geosem.worlds.driving_view`: ray casting against the ground and the primitives, shading;
* :mod:`geosem.worlds.driving_frames`: ``DriveRenderer``, every sensor of a frame (stereo views, depth,
  labels, flow, lidar).
"""

from __future__ import annotations

from dataclasses import dataclass

from geosem.worlds.materials import DRESSINGS
from geosem.worlds.rig import Rig, make_rig

WORLD_VERSION = "driving-v2"  # bump when rendering or scene layout changes


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
    dressing: str = "kitti"  # material style (materials.DRESSINGS)
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
        if self.dressing not in DRESSINGS:
            raise ValueError(f"dressing must be one of {sorted(DRESSINGS)}")
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
