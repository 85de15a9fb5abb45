"""Camera geometry shared by converters, tasks and tests: intrinsics scaling, projection, warping."""

from __future__ import annotations

from geosem.geometry.camera import (
    intrinsics_matrix,
    project_to_depth_map,
    scale_intrinsics,
)
from geosem.geometry.warp import flow_from_depth_pose, warp_with_depth, warp_with_flow

__all__ = [
    "flow_from_depth_pose",
    "intrinsics_matrix",
    "project_to_depth_map",
    "scale_intrinsics",
    "warp_with_depth",
    "warp_with_flow",
]
