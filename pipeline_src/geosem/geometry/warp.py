"""Differentiable warps between views (torch, via kornia): by depth and relative pose, and by flow.

Shapes follow kornia: images (B,C,H,W), depth (B,1,H,W), poses (B,4,4), intrinsics (B,3,3).
"""

from __future__ import annotations

import torch
from kornia.geometry.camera.perspective import project_points
from kornia.geometry.depth import depth_to_3d_v2, warp_frame_depth
from kornia.geometry.linalg import transform_points
from kornia.geometry.transform import remap


def _grid(height: int, width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    v, u = torch.meshgrid(
        torch.arange(height, dtype=like.dtype, device=like.device),
        torch.arange(width, dtype=like.dtype, device=like.device),
        indexing="ij",
    )
    return u, v


def warp_with_depth(
    image_src: torch.Tensor, depth_dst: torch.Tensor, src_from_dst: torch.Tensor, intrinsics: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``image_src`` onto the destination view whose depth is ``depth_dst``.

    ``src_from_dst`` maps destination-camera points into the source camera (for consecutive frames of a
    sequence with camera-to-world poses P: ``inv(P_src) @ P_dst``; for a rectified stereo pair with the
    source camera at +baseline along x: a translation by -baseline along x). Returns the warped image and
    a mask (B,1,H,W) of pixels with valid depth whose projection lands inside the source image.
    """
    warped = warp_frame_depth(image_src, depth_dst, src_from_dst, intrinsics)
    points = depth_to_3d_v2(depth_dst[:, 0], intrinsics)  # (B,H,W,3)
    in_src = transform_points(src_from_dst[:, None], points)
    uv = project_points(in_src, intrinsics[:, None, None])
    height, width = depth_dst.shape[-2:]
    inside = (uv[..., 0] >= 0) & (uv[..., 0] <= width - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= height - 1)
    valid = inside & (depth_dst[:, 0] > 0) & (in_src[..., 2] > 1e-3)
    return warped, valid[:, None]


def flow_from_depth_pose(
    depth: torch.Tensor, next_from_current: torch.Tensor, intrinsics: torch.Tensor
) -> torch.Tensor:
    """Optical flow (B,2,H,W) of a static scene seen with ``depth`` when the camera moves so that
    current-camera points map to next-camera points by ``next_from_current``."""
    points = depth_to_3d_v2(depth[:, 0], intrinsics)
    uv = project_points(transform_points(next_from_current[:, None], points), intrinsics[:, None, None])
    u, v = _grid(depth.shape[-2], depth.shape[-1], depth)
    return torch.stack([uv[..., 0] - u, uv[..., 1] - v], dim=1)


def warp_with_flow(image_next: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Resample ``image_next`` at ``pixel + flow`` (forward flow of the current frame), i.e. bring the
    next frame back onto the current pixel grid. Returns the warped image and the in-image mask."""
    height, width = flow.shape[-2:]
    u, v = _grid(height, width, flow)
    map_x, map_y = u + flow[:, 0], v + flow[:, 1]
    warped = remap(
        image_next, map_x, map_y, mode="bilinear", align_corners=True, normalized_coordinates=False
    )
    finite = torch.isfinite(map_x) & torch.isfinite(map_y)
    inside = finite & (map_x >= 0) & (map_x <= width - 1) & (map_y >= 0) & (map_y <= height - 1)
    return warped, inside[:, None]


def reproject(
    image_src: torch.Tensor, depth_dst: torch.Tensor, src_from_dst: torch.Tensor, intrinsics: torch.Tensor
) -> torch.Tensor:
    """Warp ``image_src`` onto the destination view with border padding, as monodepth2's grid_sample.

    ``geosem.geometry.warp.warp_with_depth`` is the same warp with zero padding (kornia's
    ``warp_frame_depth`` has no padding option); zeros make every pixel that leaves the source image an
    error of the full image intensity, which monodepth2 avoids by repeating the border. Same kornia
    primitives, only the padding differs (tests/unit/test_losses.py checks they agree inside the image).
    """
    points = depth_to_3d_v2(depth_dst[:, 0], intrinsics)
    uv = project_points(transform_points(src_from_dst[:, None], points), intrinsics[:, None, None])
    return remap(
        image_src, uv[..., 0], uv[..., 1], mode="bilinear", padding_mode="border", align_corners=True
    )


def invert_rigid(transform: torch.Tensor) -> torch.Tensor:
    """Inverse of (B,4,4) rigid transforms: [R^T, -R^T t]."""
    rotation_t = transform[:, :3, :3].transpose(1, 2)
    inverse = torch.eye(4, dtype=transform.dtype, device=transform.device).repeat(len(transform), 1, 1)
    inverse[:, :3, :3] = rotation_t
    inverse[:, :3, 3] = -(rotation_t @ transform[:, :3, 3:])[..., 0]
    return inverse


def stereo_transform(
    baseline: torch.Tensor, flipped: torch.Tensor, swapped: torch.Tensor | None = None
) -> torch.Tensor:
    """``src_from_dst`` of the stereo partner: for the left target the right camera at +baseline along x,
    a shift by -baseline.

    A horizontally flipped pair mirrors the rig, and a swapped pair (the right image as target) puts the
    partner on the left: each turns the sign (monodepth2 flips the sign of stereo_T for the left side and
    again under a flip); both together cancel.
    """
    transform = torch.eye(4, dtype=baseline.dtype, device=baseline.device).repeat(len(baseline), 1, 1)
    partner_left = flipped > 0.5
    if swapped is not None:
        partner_left = partner_left ^ (swapped > 0.5)
    sign = torch.where(partner_left, 1.0, -1.0).to(baseline.dtype)
    transform[:, 0, 3] = sign * baseline
    return transform
