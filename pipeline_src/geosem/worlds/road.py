"""The road frame of a drive and the ego car's motion along it (see :mod:`geosem.worlds.driving` for
the conventions): the car drives the road's centre line at constant speed and yaw rate."""

from __future__ import annotations

import math

import numpy as np

from geosem.worlds import raycast as rc
from geosem.worlds.driving import DrivingWorldConfig


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
