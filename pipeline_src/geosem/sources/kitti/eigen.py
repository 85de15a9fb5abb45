"""Ground truth of the Eigen test split: the velodyne scan projected as monodepth2's ``export_gt_depth.py
--split eigen`` does (``kitti_utils.generate_depth_map(calib_dir, velo, cam=2, vel_depth=True)``).

The rules, each kept because published Eigen-split numbers were measured with them:

* projection ``P_rect_02 @ R_rect_00 @ [R|T]`` (``calib_cam_to_cam.txt``, ``calib_velo_to_cam.txt``);
* points with a negative scanner x (behind the scanner) are dropped, as are points on or behind the
  camera plane (monodepth2 divides by their z without a check; real scans have none there);
* pixel ``round(u) - 1``, ``round(v) - 1`` (numpy's round, halves to even; the "- 1" matches KITTI's
  MATLAB code), kept when inside the ``S_rect_02`` image;
* the depth stored is the point's scanner x (``vel_depth=True``), not its camera-2 z: the scanner sits
  about 0.27 m behind the cameras, so this depth is that much larger than the camera's;
* where several points share a pixel the smallest depth wins.

monodepth2 keeps the map at the full ``S_rect_02`` size and upsamples predictions to it. A shard set has
one resolution, so the map is then placed into the stored grid: a full-resolution pixel goes to the
stored pixel that contains its centre, the smallest depth winning again. At the full size (``height``,
``width`` = ``S_rect_02``) that is monodepth2's map exactly.
"""

from __future__ import annotations

import numpy as np

from geosem.sources.kitti.files import DateCalibration


def eigen_depth_full(scan: np.ndarray, calib: DateCalibration) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, depth) of the scan's points in monodepth2's full-resolution map, before collisions."""
    if calib.velo_to_image is None:
        raise ValueError("the calibration carries no velodyne-to-image projection (read_date_calibration)")
    points = np.asarray(scan, dtype=np.float64)[:, :3]
    points = points[points[:, 0] >= 0]
    homogeneous = np.concatenate([points, np.ones((len(points), 1))], axis=1)
    projected = homogeneous @ calib.velo_to_image.T
    ahead = projected[:, 2] > 0
    projected, points = projected[ahead], points[ahead]
    cols = np.round(projected[:, 0] / projected[:, 2]) - 1
    rows = np.round(projected[:, 1] / projected[:, 2]) - 1
    height, width = calib.size
    inside = (cols >= 0) & (rows >= 0) & (cols < width) & (rows < height)
    return rows[inside].astype(np.int64), cols[inside].astype(np.int64), points[inside, 0]


def eigen_depth_map(scan: np.ndarray, calib: DateCalibration, height: int, width: int) -> np.ndarray:
    """float32 (height, width) ground truth of one Eigen test frame, 0 = no point (module docstring)."""
    rows, cols, depth = eigen_depth_full(scan, calib)
    full_height, full_width = calib.size
    # The stored pixel whose area holds the full-resolution pixel's centre (the same pixel-centre
    # convention as the stored intrinsics, c' = (c + 0.5) s - 0.5).
    r = np.minimum(((rows + 0.5) * height / full_height).astype(np.int64), height - 1)
    c = np.minimum(((cols + 0.5) * width / full_width).astype(np.int64), width - 1)
    out = np.full(height * width, np.inf)
    np.minimum.at(out, r * width + c, depth)
    out[np.isinf(out)] = 0.0
    return out.reshape(height, width).astype(np.float32)
