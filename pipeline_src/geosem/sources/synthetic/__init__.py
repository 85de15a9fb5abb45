"""Embedded synthetic worlds: procedurally generated data with exact ground truth, no download needed."""

from __future__ import annotations

from geosem.sources.synthetic.driving import (
    CITYSCAPES19_CLASSES,
    DEPTH_SCALE,
    GENERATOR,
    LABEL_SPACE,
    WORLD_VERSION,
    DrivingWorldConfig,
    SequenceRender,
    camera_intrinsics,
    render_sequence,
    sequence_poses,
    write_driving_world,
)

__all__ = [
    "CITYSCAPES19_CLASSES",
    "DEPTH_SCALE",
    "GENERATOR",
    "LABEL_SPACE",
    "WORLD_VERSION",
    "DrivingWorldConfig",
    "SequenceRender",
    "camera_intrinsics",
    "render_sequence",
    "sequence_poses",
    "write_driving_world",
]
