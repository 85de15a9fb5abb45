"""Embedded synthetic worlds: procedurally generated data with exact ground truth, no download needed.

``driving`` renders a KITTI-like driving world and ``indoor`` NYU-like rooms on the shared ray caster
``raycast``; ``kitti_writer``, ``nyu_writer`` and ``aux_writer`` write them in the real datasets' file
layouts, so the real converters (``geosem.sources.kitti`` and friends) read them.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # Lazy, so importing one world module does not load the others (and cv2) with the package.
    if name == "DrivingWorldConfig":
        from geosem.sources.synthetic.driving import DrivingWorldConfig

        return DrivingWorldConfig
    if name == "write_driving_world":
        from geosem.sources.synthetic.kitti_writer import write_driving_world

        return write_driving_world
    raise AttributeError(name)
