"""Converter ``kitti``: KITTI raw drives + calibration + velodyne + OXTS + annotated depth + semantics.

Reads the layouts exactly as KITTI's archives extract (docs/datasets.md section 1), under one root:

* ``raw_data/<date>/`` (or ``<date>/`` directly under the root): ``calib_cam_to_cam.txt`` (``P_rect_02``,
  ``P_rect_03``, ``R_rect_00``, ``S_rect_02``), ``calib_velo_to_cam.txt`` (``R``, ``T``),
  ``calib_imu_to_velo.txt`` (``R``, ``T``) and the drives ``<date>_drive_<NNNN>_sync/`` with
  ``image_02|image_03/data/%010d.png``, ``velodyne_points/data/%010d.bin`` (float32 N x 4, scanner frame
  x forward, y left, z up) and ``oxts/data/%010d.txt``.
* annotated depth, uint16 PNG = metres x 256 (0 = invalid), at
  ``<drive>/proj_depth/groundtruth/image_02/%010d.png`` (monodepth2's merged layout) or at
  ``data_depth_annotated/{train,val}/<drive>/proj_depth/groundtruth/image_02/%010d.png``.
* ``data_semantics/training/{image_2,semantic}/%06d_10.png`` (Cityscapes *label ids* 0..33) and the
  devkit's ``devkit/mapping/train_mapping.txt`` (line i: ``<date> <drive> <frame>`` of labelled image i,
  empty when the image has no raw drive).

Splits: ``test`` is the labelled set (image and label from ``data_semantics``; right image, depth, lidar
and pose from the raw frame the mapping names); ``train`` is every frame of every raw drive that the
mapping does *not* name, so no scene of the labelled test set ever reaches pre-training or the few-shot
pool. Sequence neighbours are ``prev_id``/``next_id`` within a drive. The labelled frames stand alone
(no neighbours), so tasks that evaluate on frame pairs (flow) get their own held-out split from the
drives the mapping names: ``heldout_video`` holds ``video_frames`` frames (default 100, spread evenly
over those drives and within each, never a drive's first or last frame) with ``prev_id``/``next_id``;
their neighbours that are not themselves in it are stored as ``heldout_context`` (no links of their own,
so no reader takes them for a pair). Both come from held-out drives only, so neither ever meets
``train``; they share scenes (and may share raw frames) with ``test``, which is fine, as neither trains.

Fields: ``image``, ``right``, ``depth`` (annotated), ``depth_lidar`` (the frame's velodyne scan
projected with ``P_rect_02 R_rect_00 [R|T]`` at the stored resolution, nearest return per pixel),
``label`` (cityscapes19 train ids), and, from the GeoSem-only folders of the synthetic world,
``flow`` (``flow_02``, KITTI flow PNG coding) and ``dynamic`` (``dynamic_02``). Poses are camera-2 to
world, relative to the drive's first frame, from the OXTS packets (Mercator projection as in KITTI's
devkit) and the calibration chain; intrinsics are ``P_rect_02`` scaled to the stored size; the
baseline is ``(P_rect_02[0,3] - P_rect_03[0,3]) / fx``.

Real KITTI versus the synthetic world: real raw drives have no labels (``semantic_02`` is GeoSem-only),
so on real KITTI the train split carries no ``label`` and the few-shot pool must come from the labelled
set; real annotated depth skips the first and last 5 frames of a drive, and some labelled images have no
raw drive. A shard set keeps one set of fields for all samples (``ShardWriter``), so such frames stop the
conversion with an error naming them; on the synthetic world every frame has every field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from geosem.geometry.camera import project_to_depth_map, scale_intrinsics
from geosem.labelspaces import cityscapes_id_to_train_id
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import (
    LABEL_INTERPOLATIONS,
    check_label_values,
    read_image,
    read_rgb,
    resize_flow,
    resize_image,
    resize_label_ids,
    resize_nearest,
    source_version,
)
from geosem.sources.kitti.files import (
    DateCalibration,
    Drive,
    depth_path,
    find_drives,
    oxts_world_from_imu,
    read_date_calibration,
    read_depth_png,
    read_flow_png,
    read_mapping,
    read_oxts,
    read_velodyne,
)

# 3: the held-out video splits (heldout_video, heldout_context) and the parameter video_frames.
CONVERTER_VERSION = "3"
VIDEO_SPLIT = "heldout_video"
CONTEXT_SPLIT = "heldout_context"
VIDEO_FRAMES = 100  # evaluation pairs: enough for a stable mean EPE, cheap to evaluate every eval_every
LABEL_SPACE = "cityscapes19"
_ID_TO_TRAIN = cityscapes_id_to_train_id()


class _DriveReader:
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
        ids = read_image(path)
        if ids.ndim != 2:
            raise ValueError(f"{path} has shape {ids.shape}: Cityscapes label ids are one channel")
        check_label_values(ids, 33, path, sample=sample)
        return resize_label_ids(ids, _ID_TO_TRAIN, self.height, self.width, self.label_interpolation)


def _camera_meta(r: _DriveReader, frame: int) -> dict[str, Any]:
    """Index columns of one frame of a drive: intrinsics at the stored size, baseline, pose."""
    fx, fy, cx, cy = r.intrinsics
    return {"fx": fx, "fy": fy, "cx": cx, "cy": cy, "baseline": r.calib.baseline, "pose": r.poses[frame]}


class _Layout:
    """A checked KITTI tree: its drives, the labelled set and the mapping of labelled images to drives."""

    def __init__(self, root: Path, height: int, width: int, label_interpolation: str) -> None:
        if label_interpolation not in LABEL_INTERPOLATIONS:
            raise ValueError(
                f"unknown label_interpolation {label_interpolation!r}; known: {LABEL_INTERPOLATIONS}"
            )
        self.root, self.height, self.width = root, height, width
        self.label_interpolation = label_interpolation
        self.drives = find_drives(root)
        self.semantics = root / "data_semantics" / "training"
        if not self.semantics.is_dir():
            raise FileNotFoundError(f"{self.semantics} is missing: the labelled test split comes from it")
        self.mapping = read_mapping(root)
        self.heldout = {entry[1] for entry in self.mapping if entry is not None}
        unknown = self.heldout - set(self.drives)
        if unknown:
            raise FileNotFoundError(
                f"{root}: the mapping names drives that are not on disk: {sorted(unknown)[:5]}"
            )
        self._calibrations: dict[str, DateCalibration] = {}
        self._readers: dict[str, _DriveReader] = {}

    def reader(self, name: str) -> _DriveReader:
        """The reader of drive ``name`` (one per drive, one calibration read per recording date)."""
        if name not in self._readers:
            drive = self.drives[name]
            if drive.date not in self._calibrations:
                self._calibrations[drive.date] = read_date_calibration(drive.path.parent)
            calibration = self._calibrations[drive.date]
            self._readers[name] = _DriveReader(
                self.root, drive, calibration, self.height, self.width, self.label_interpolation
            )
        return self._readers[name]

    def write_train_drive(self, writer: ShardWriter, name: str) -> None:
        """Every frame of one training drive, linked to its neighbours."""
        r = self.reader(name)
        ids = [r.drive.sample_id(f) for f in r.frames]
        for k, frame in enumerate(r.frames):
            meta = {
                "id": ids[k],
                "split": "train",
                "sequence": name,
                "frame": frame,
                "prev_id": ids[k - 1] if k > 0 else None,
                "next_id": ids[k + 1] if k + 1 < len(ids) else None,
                **_camera_meta(r, frame),
            }
            writer.add(r.fields(frame), meta)
        # A training drive's reader is not needed again: only held-out drives feed the labelled set.
        self._readers.pop(name, None)

    def video_centres(self, total: int) -> dict[str, list[int]]:
        """Positions (into each held-out drive's frame list) of the ``heldout_video`` frames: ``total``
        spread evenly over the held-out drives (sorted by name), then evenly over each drive's frames that
        have both neighbours, as the world spreads the labelled frames."""
        names = sorted(self.heldout)
        if not names:  # a mapping without any raw frame: no held-out drive to draw pairs from
            return {}
        counts = [total // len(names) + (1 if k < total % len(names) else 0) for k in range(len(names))]
        centres = {}
        for name, count in zip(names, counts, strict=True):
            frames = len(self.reader(name).frames)
            if count == 0 or frames < 3:
                continue
            positions = np.round(np.linspace(1, frames - 2, count)).astype(int)
            centres[name] = sorted(set(positions.tolist()))
        return centres

    def write_heldout_video(self, writer: ShardWriter, total: int) -> None:
        """The ``heldout_video`` frames, linked to their neighbours, and those neighbours
        (``heldout_context``, unlinked: only a ``heldout_video`` frame is a pair to evaluate)."""
        for name, centres in self.video_centres(total).items():
            r = self.reader(name)
            ids = [r.drive.sample_id(f) for f in r.frames]
            stored = sorted({k + step for k in centres for step in (-1, 0, 1)})
            for k in stored:
                centre = k in centres
                meta = {
                    "id": ids[k],
                    "split": VIDEO_SPLIT if centre else CONTEXT_SPLIT,
                    "sequence": name,
                    "frame": r.frames[k],
                    "prev_id": ids[k - 1] if centre else None,
                    "next_id": ids[k + 1] if centre else None,
                    **_camera_meta(r, r.frames[k]),
                }
                writer.add(r.fields(r.frames[k]), meta)

    def write_labelled_set(self, writer: ShardWriter) -> None:
        """The labelled images (the test split), with their raw frame's fields where the mapping has one."""
        for name in sorted(p.name for p in (self.semantics / "image_2").glob("*_10.png")):
            index = int(name.split("_")[0])
            image_path, label_path = self.semantics / "image_2" / name, self.semantics / "semantic" / name
            entry = self.mapping[index] if index < len(self.mapping) else None
            image = read_rgb(image_path)
            sample = f"semantics-{index:06d}_10"
            meta: dict = {"id": sample, "split": "test", "sequence": "data_semantics"}
            arrays = {"image": resize_image(image, self.height, self.width)}
            if entry is not None:
                _, drive_name, frame = entry
                r = self.reader(drive_name)
                arrays = r.fields(frame, image=image)
                meta.update(sequence=drive_name, frame=frame, **_camera_meta(r, frame))
            ids = read_image(label_path)
            check_label_values(ids, 33, label_path, sample=sample)
            arrays["label"] = resize_label_ids(
                ids, _ID_TO_TRAIN, self.height, self.width, self.label_interpolation
            )
            writer.add(arrays, meta)


# The raw drives sit under raw_data/ (GeoSem's and monodepth2's layout) or directly in the root (KITTI's
# archives extracted in place), so only the labelled set and its mapping are named here.
@register_converter(
    "kitti",
    version=CONVERTER_VERSION,
    label_space=LABEL_SPACE,
    reads=("data_semantics", "devkit/mapping/train_mapping.txt"),
)
def convert_kitti(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "kitti",
    samples_per_part: int = 256,
    progress: bool = True,
    label_interpolation: str = "nearest",
    video_frames: int = VIDEO_FRAMES,
) -> Path:
    """Convert a KITTI tree (real or the synthetic world's) into the shard set ``out_dir``.

    ``label_interpolation``: ``nearest`` (default) or ``bicubic``, the seed code's label resizing that
    only the legacy protocol of study A uses (``geosem.sources.common.resize_label_ids``). It applies to
    every label of the set and is recorded in the manifest's parameters.

    ``video_frames``: how many held-out frames the ``heldout_video`` split holds (0: none; fewer when the
    held-out drives have fewer frames with both neighbours), recorded in the manifest's parameters.
    """
    if video_frames < 0:
        raise ValueError(f"video_frames must be >= 0, got {video_frames}")
    root = Path(raw_dir)
    layout = _Layout(root, height, width, label_interpolation)
    parameters = {
        "height": height,
        "width": width,
        "label_interpolation": label_interpolation,
        "video_frames": video_frames,
    }
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(root, "kitti-raw"),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE,
        parameters=parameters,
        samples_per_part=samples_per_part,
    ) as writer:
        train_drives = [name for name in layout.drives if name not in layout.heldout]
        bar = tqdm(total=len(train_drives) + 2, desc=f"convert {dataset}", disable=not progress)
        for name in train_drives:
            layout.write_train_drive(writer, name)
            bar.update(1)
        layout.write_labelled_set(writer)
        bar.update(1)
        # Last, so every train and test sample keeps the part and row it had in version 2.
        layout.write_heldout_video(writer, video_frames)
        bar.update(1)
        bar.close()
    return Path(out_dir)
