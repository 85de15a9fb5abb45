"""One KITTI raw drive read at the stored size: the fields of a frame, its index columns, the labels.

Shared by both protocols of the converter (``world`` and ``eigen``, see the package docstring), so a raw
frame becomes the same arrays whichever split it lands in.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geosem.geometry.camera import project_to_depth_map, scale_intrinsics
from geosem.labelspaces import cityscapes_id_to_train_id
from geosem.sources.common import (
    check_label_values,
    read_image,
    read_rgb,
    resize_flow,
    resize_image,
    resize_label_ids,
    resize_nearest,
)
from geosem.sources.kitti.files import (
    DateCalibration,
    Drive,
    depth_path,
    oxts_world_from_imu,
    read_date_calibration,
    read_depth_png,
    read_flow_png,
    read_oxts,
    read_velodyne,
)

LABEL_SPACE = "cityscapes19"
ID_TO_TRAIN = cityscapes_id_to_train_id()
MAX_LABEL_ID = 33  # Cityscapes label ids 0..33 (docs/datasets.md 2.3); -1 never occurs in a PNG


class DriveReader:
    """Per-drive state: calibration, poses, and the fields of one frame at the stored size."""

    def __init__(
        self,
        root: Path,
        drive: Drive,
        calib: DateCalibration,
        height: int,
        width: int,
        label_interpolation: str = "nearest",
    ) -> None:
        self.root, self.drive, self.calib = root, drive, calib
        self.height, self.width = height, width
        self.label_interpolation = label_interpolation
        self.frames = drive.frames()
        packets = [read_oxts(drive.path / "oxts" / "data" / f"{f:010d}.txt") for f in self.frames]
        world_from_cam = oxts_world_from_imu(packets) @ np.linalg.inv(calib.cam2_from_imu)
        self.poses = {
            f: np.linalg.inv(world_from_cam[0]) @ world_from_cam[k] for k, f in enumerate(self.frames)
        }
        self.intrinsics = scale_intrinsics(calib.intrinsics, calib.size, (height, width))

    def fields(self, frame: int, image: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The frame's fields; a field whose file is absent (annotated depth of a drive's first and last
        5 frames, a right image, the GeoSem-only folders on real KITTI) is left out, never faked."""
        d, h, w, name = self.drive.path, self.height, self.width, f"{frame:010d}.png"
        left = read_rgb(d / "image_02" / "data" / name) if image is None else image
        if left.shape[:2] != self.calib.size:
            raise ValueError(
                f"{d / 'image_02' / 'data' / name} is {left.shape[1]}x{left.shape[0]}, but S_rect_02 of "
                f"{self.drive.date} says {self.calib.size[1]}x{self.calib.size[0]}"
            )
        out = {"image": resize_image(left, h, w)}
        right = d / "image_03" / "data" / name
        if right.is_file():
            out["right"] = resize_image(read_rgb(right), h, w)
        depth = depth_path(self.root, self.drive, frame)
        if depth is not None:
            out["depth"] = resize_nearest(read_depth_png(depth), h, w)
        scan = d / "velodyne_points" / "data" / f"{frame:010d}.bin"
        if scan.is_file():
            xyz = read_velodyne(scan)[:, :3].astype(np.float64)
            cam = xyz @ self.calib.cam2_from_velo[:3, :3].T + self.calib.cam2_from_velo[:3, 3]
            out["depth_lidar"] = project_to_depth_map(cam, self.intrinsics, h, w)
        semantic = d / "semantic_02" / "data" / name
        if semantic.is_file():
            out["label"] = self.label(semantic, self.drive.sample_id(frame))
        flow = d / "flow_02" / "data" / name
        if flow.is_file():
            out["flow"] = resize_flow(read_flow_png(flow), h, w)
        dynamic = d / "dynamic_02" / "data" / name
        if dynamic.is_file():
            out["dynamic"] = resize_nearest(read_image(dynamic), h, w)
        return out

    def label(self, path: Path, sample: str) -> np.ndarray:
        return read_label(path, sample, self.height, self.width, self.label_interpolation)


def read_label(path: Path, sample: str, height: int, width: int, interpolation: str) -> np.ndarray:
    """Cityscapes label ids of a PNG -> cityscapes19 train ids at the stored size (255 = ignore)."""
    ids = read_image(path)
    if ids.ndim != 2:
        raise ValueError(f"{path} has shape {ids.shape}: Cityscapes label ids are one channel")
    check_label_values(ids, MAX_LABEL_ID, path, sample=sample)
    return resize_label_ids(ids, ID_TO_TRAIN, height, width, interpolation)


def camera_meta(r: DriveReader, frame: int) -> dict[str, Any]:
    """Index columns of one frame of a drive: intrinsics at the stored size, baseline, pose."""
    fx, fy, cx, cy = r.intrinsics
    return {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "baseline": r.calib.baseline, "pose": r.poses[frame]}


class DriveCache:
    """One reader per drive and one calibration read per recording date."""

    def __init__(
        self, root: Path, drives: dict[str, Drive], height: int, width: int, label_interpolation: str
    ) -> None:
        self.root, self.drives = root, drives
        self.height, self.width, self.label_interpolation = height, width, label_interpolation
        self._calibrations: dict[str, DateCalibration] = {}
        self._readers: dict[str, DriveReader] = {}

    def calibration(self, date: str, date_dir: Path) -> DateCalibration:
        if date not in self._calibrations:
            self._calibrations[date] = read_date_calibration(date_dir)
        return self._calibrations[date]

    def reader(self, name: str) -> DriveReader:
        if name not in self._readers:
            drive = self.drives[name]
            calibration = self.calibration(drive.date, drive.path.parent)
            self._readers[name] = DriveReader(
                self.root, drive, calibration, self.height, self.width, self.label_interpolation
            )
        return self._readers[name]

    def release(self, name: str) -> None:
        """Forget a drive's reader (its poses) once no later split reads the drive again."""
        self._readers.pop(name, None)
