"""Pinhole camera helpers (numpy). Pixel (row r, column c) has its centre at image coordinates
``(u, v) = (c, r)``, as in OpenCV, kornia and KITTI's projection matrices."""

from __future__ import annotations

import numpy as np


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


def scale_intrinsics(
    intrinsics: tuple[float, float, float, float], from_size: tuple[int, int], to_size: tuple[int, int]
) -> tuple[float, float, float, float]:
    """Intrinsics after resizing an image from ``from_size`` to ``to_size`` (both (height, width)).

    Pixel centres stay aligned, as ``cv2.resize`` samples them: ``u' = (u + 0.5) * s - 0.5``. Scaling
    ``cx`` by ``s`` alone would shift the principal point by half a pixel minus half a new pixel.
    """
    fx, fy, cx, cy = intrinsics
    sy, sx = to_size[0] / from_size[0], to_size[1] / from_size[1]
    return fx * sx, fy * sy, (cx + 0.5) * sx - 0.5, (cy + 0.5) * sy - 0.5


def project_to_depth_map(
    points: np.ndarray, intrinsics: tuple[float, float, float, float], height: int, width: int
) -> np.ndarray:
    """Sparse z-depth map (H,W) float32 of camera-frame points (N,3); 0 where no point lands.

    Points behind the camera are dropped; each point goes to the pixel whose centre is nearest to its
    projection; where several points land on one pixel the nearest is kept (what is visible), as
    KITTI's depth tools do.
    """
    fx, fy, cx, cy = intrinsics
    z = points[:, 2]
    front = z > 1e-3
    x, y, z = points[front, 0], points[front, 1], z[front]
    u = np.rint(fx * x / z + cx).astype(np.int64)
    v = np.rint(fy * y / z + cy).astype(np.int64)
    inside = (u >= 0) & (u < width) & (v >= 0) & (v < height)
    u, v, z = u[inside], v[inside], z[inside]
    depth = np.full(height * width, np.inf, np.float64)
    np.minimum.at(depth, v * width + u, z)
    depth[np.isinf(depth)] = 0.0
    return depth.reshape(height, width).astype(np.float32)
