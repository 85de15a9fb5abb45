"""Every sensor of a driving-world frame: stereo views, depth, labels, instances, flow and lidar."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from geosem.worlds import raycast as rc
from geosem.worlds.driving import DriveId, DrivingWorldConfig, rig_for
from geosem.worlds.driving_layout import build_scene
from geosem.worlds.driving_view import ViewHits, cast_view, shade_view
from geosem.worlds.rig import lidar_elevations
from geosem.worlds.road import ego_pose_at


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
