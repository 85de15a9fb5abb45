"""The synthetic car's sensor rig, laid out like KITTI's and scaled to the rendered image size.

Frames (KITTI raw conventions):

* ``cam0``: the unrectified reference camera; ``rect``: cam0 after ``R_rect_00``; the colour cameras 2
  (left) and 3 (right) are ``rect`` shifted along x: ``X_cam_i = X_rect + t_i`` with
  ``t_i = K^-1 P_rect_0i[:, 3]``. The renderer's camera frame is the rectified cam2 frame (OpenCV: x right,
  y down, z forward); the right camera sits at ``+baseline`` along its x axis.
* ``velo``: the scanner, x forward, y left, z up; ``X_cam0 = R X_velo + T`` (calib_velo_to_cam.txt).
* ``imu``: the GPS/IMU, x forward, y left, z up; ``X_velo = R X_imu + T`` (calib_imu_to_velo.txt).

Intrinsics are KITTI's rectified colour intrinsics of two recording dates, rescaled to the rendered
size with pixel centres kept aligned (``c' = (c + 0.5) s - 0.5``). Every number is rounded to the
digits the calibration files carry, so the files and the renderer agree exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# KITTI full-resolution rectified colour intrinsics (P_rect_02) of two recording dates, and their
# stereo baselines (docs/datasets.md 1.1-1.2): (width, height, fx, cx, cy, baseline).
_KITTI_DATES = {
    "a": (1242, 375, 721.5377, 609.5593, 172.854, 0.5327),
    "b": (1241, 376, 718.856, 607.1928, 185.2157, 0.5372),
}
CAM2_OFFSET_M = 0.06  # cam2 lies this far left of cam0 (KITTI: P_rect_02[0,3] / fx = 0.062)
# Scanner: elevation limits of the beams (HDL-64E-like field of view).
LIDAR_ELEVATION_DEG = (2.0, -24.8)


def _fmt(value: float) -> float:
    """Round to the digits the calibration files hold (they are written with ``%.9e``)."""
    return float(f"{value:.9e}")


def rotation_xyz(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation ``Rz @ Ry @ Rx`` (radians)."""
    cx, sx, cy, sy, cz, sz = (
        math.cos(rx),
        math.sin(rx),
        math.cos(ry),
        math.sin(ry),
        math.cos(rz),
        math.sin(rz),
    )
    rot_x = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    rot_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rot_z = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rot_z @ rot_y @ rot_x


def rigid(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


@dataclass(frozen=True)
class Rig:
    """Calibration of one recording date at the rendered size."""

    date: str
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    baseline: float
    r_rect: np.ndarray  # (3,3) R_rect_00
    velo_to_cam_r: np.ndarray  # (3,3)
    velo_to_cam_t: np.ndarray  # (3,)
    imu_to_velo_r: np.ndarray
    imu_to_velo_t: np.ndarray

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        return self.fx, self.fy, self.cx, self.cy

    @property
    def k(self) -> np.ndarray:
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def p_rect(self, camera: int) -> np.ndarray:
        """P_rect_0i (3,4): cameras 0/1 grey, 2/3 colour; offsets along x only."""
        tx = {0: 0.0, 1: -self.baseline, 2: CAM2_OFFSET_M, 3: CAM2_OFFSET_M - self.baseline}[camera]
        p = np.zeros((3, 4))
        p[:, :3] = self.k
        p[0, 3] = _fmt(self.fx * tx)
        return p

    def cam2_from_velo(self) -> np.ndarray:
        """4x4 map of scanner coordinates into the rectified cam2 (renderer) frame."""
        t2 = np.linalg.solve(self.k, self.p_rect(2)[:, 3])
        rotation = self.r_rect @ self.velo_to_cam_r
        return rigid(rotation, self.r_rect @ self.velo_to_cam_t + t2)

    def velo_from_imu(self) -> np.ndarray:
        return rigid(self.imu_to_velo_r, self.imu_to_velo_t)

    def cam2_from_imu(self) -> np.ndarray:
        return self.cam2_from_velo() @ self.velo_from_imu()


def make_rig(date_key: str, date: str, height: int, width: int) -> Rig:
    """The rig of recording date ``date_key`` ("a" or "b") scaled to ``height x width``."""
    full_w, full_h, fx, cx, cy, baseline = _KITTI_DATES[date_key]
    sx, sy = width / full_w, height / full_h
    # Small calibration rotations, different per date, so a converter that ignores R_rect_00 or the
    # velodyne rotation visibly misplaces points (tests/unit/test_kitti.py).
    tilt = {"a": (0.0042, -0.0074, 0.0099), "b": (-0.0031, 0.0058, -0.0083)}[date_key]
    r_rect = rotation_xyz(*tilt)
    # Scanner axes (x fwd, y left, z up) onto camera axes (x right, y down, z fwd), then a small error.
    axes = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    velo_r = rotation_xyz(0.0148, -0.0075, 0.0006) @ axes
    imu_r = rotation_xyz(0.0085, -0.0118, 0.0142)
    fmt = np.vectorize(_fmt)
    return Rig(
        date=date,
        width=width,
        height=height,
        fx=_fmt(fx * sx),
        fy=_fmt(fx * sy),
        cx=_fmt((cx + 0.5) * sx - 0.5),
        cy=_fmt((cy + 0.5) * sy - 0.5),
        baseline=baseline,
        r_rect=fmt(r_rect),
        velo_to_cam_r=fmt(velo_r),
        velo_to_cam_t=fmt(np.array([-0.00407, -0.07632, -0.27178])),
        imu_to_velo_r=fmt(imu_r),
        imu_to_velo_t=fmt(np.array([-0.80868, 0.31956, -0.79972])),
    )


def lidar_elevations(beams: int) -> np.ndarray:
    """Beam elevations in radians, descending (row 0 is the highest beam)."""
    hi, lo = LIDAR_ELEVATION_DEG
    return np.deg2rad(np.linspace(hi, lo, beams))
