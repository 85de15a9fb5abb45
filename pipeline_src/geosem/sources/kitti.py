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
pool. Sequence neighbours are ``prev_id``/``next_id`` within a drive.

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

import math
from dataclasses import dataclass
from pathlib import Path

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

CONVERTER_VERSION = "2"
LABEL_SPACE = "cityscapes19"
EARTH_RADIUS = 6378137.0
_ID_TO_TRAIN = cityscapes_id_to_train_id()


# ----------------------------------------------------------------------------------------------------
# File formats


def read_calib_file(path: Path) -> dict[str, np.ndarray | str]:
    """``key: values`` lines; numeric values become float64 arrays, others (calib_time) stay text."""
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} is missing")
    out: dict[str, np.ndarray | str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if ":" not in line:
            raise ValueError(f"{path}:{number}: expected 'key: values', got {line!r}")
        key, value = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(v) for v in value.split()])
        except ValueError:
            out[key.strip()] = value.strip()
    return out


def _calib_array(calib: dict[str, np.ndarray | str], key: str, size: int, path: Path) -> np.ndarray:
    value = calib.get(key)
    if not isinstance(value, np.ndarray) or value.size != size:
        raise KeyError(f"{path}: key {key!r} with {size} numbers is missing")
    return value


@dataclass(frozen=True)
class DateCalibration:
    """What the converter needs from one date's calibration files."""

    p2: np.ndarray  # (3,4) P_rect_02
    p3: np.ndarray  # (3,4) P_rect_03
    size: tuple[int, int]  # (height, width) from S_rect_02
    cam2_from_velo: np.ndarray  # (4,4)
    cam2_from_imu: np.ndarray  # (4,4)

    @property
    def intrinsics(self) -> tuple[float, float, float, float]:
        return float(self.p2[0, 0]), float(self.p2[1, 1]), float(self.p2[0, 2]), float(self.p2[1, 2])

    @property
    def baseline(self) -> float:
        return float((self.p2[0, 3] - self.p3[0, 3]) / self.p2[0, 0])


def read_date_calibration(date_dir: Path) -> DateCalibration:
    cam_path = date_dir / "calib_cam_to_cam.txt"
    velo_path = date_dir / "calib_velo_to_cam.txt"
    imu_path = date_dir / "calib_imu_to_velo.txt"
    cam, velo, imu = read_calib_file(cam_path), read_calib_file(velo_path), read_calib_file(imu_path)
    p2 = _calib_array(cam, "P_rect_02", 12, cam_path).reshape(3, 4)
    p3 = _calib_array(cam, "P_rect_03", 12, cam_path).reshape(3, 4)
    r_rect = _calib_array(cam, "R_rect_00", 9, cam_path).reshape(3, 3)
    width, height = _calib_array(cam, "S_rect_02", 2, cam_path)
    cam0_from_velo = np.eye(4)
    cam0_from_velo[:3, :3] = _calib_array(velo, "R", 9, velo_path).reshape(3, 3)
    cam0_from_velo[:3, 3] = _calib_array(velo, "T", 3, velo_path)
    velo_from_imu = np.eye(4)
    velo_from_imu[:3, :3] = _calib_array(imu, "R", 9, imu_path).reshape(3, 3)
    velo_from_imu[:3, 3] = _calib_array(imu, "T", 3, imu_path)
    rect = np.eye(4)
    rect[:3, :3] = r_rect
    # P_rect_02 = K [I | t2]: camera 2 is the rectified frame shifted by t2 = K^-1 P[:, 3].
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(p2[:, :3], p2[:, 3])
    cam2_from_velo = shift @ rect @ cam0_from_velo
    return DateCalibration(
        p2=p2,
        p3=p3,
        size=(round(height), round(width)),
        cam2_from_velo=cam2_from_velo,
        cam2_from_imu=cam2_from_velo @ velo_from_imu,
    )


def read_velodyne(path: Path) -> np.ndarray:
    """A velodyne scan: float32 (N,4) x, y, z (scanner frame), reflectance."""
    if not path.is_file():
        raise FileNotFoundError(f"velodyne scan {path} is missing")
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise ValueError(f"{path} holds {raw.size} floats, not a multiple of 4 (x, y, z, reflectance)")
    return raw.reshape(-1, 4)


def read_depth_png(path: Path) -> np.ndarray:
    """KITTI depth PNG: uint16, metres x 256, 0 = invalid -> float32 metres."""
    raw = read_image(path)
    if raw.dtype != np.uint16 or raw.ndim != 2:
        raise ValueError(f"{path} is {raw.dtype} with shape {raw.shape}, expected single-channel uint16")
    return raw.astype(np.float32) / 256.0


def read_flow_png(path: Path) -> np.ndarray:
    """KITTI flow PNG (3-channel uint16 R=u, G=v, B=valid; value = raw / 64 - 512) -> (H,W,2) float32
    pixels, NaN where invalid."""
    raw = read_image(path)
    if raw.dtype != np.uint16 or raw.ndim != 3 or raw.shape[2] != 3:
        raise ValueError(f"{path} is {raw.dtype} with shape {raw.shape}, expected 3-channel uint16 (flow)")
    flow = (raw[..., 2:0:-1].astype(np.float32) - 2**15) / 64.0  # OpenCV reads BGR: R = u, G = v
    flow[raw[..., 0] == 0] = np.nan
    return flow


def read_oxts(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"OXTS packet {path} is missing")
    values = path.read_text().split()
    if len(values) != 30:
        raise ValueError(f"{path} holds {len(values)} values, an OXTS packet has 30")
    return np.array([float(v) for v in values])


def _rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cr, sr, cp, sp, cy, sy = (
        math.cos(roll),
        math.sin(roll),
        math.cos(pitch),
        math.sin(pitch),
        math.cos(yaw),
        math.sin(yaw),
    )
    rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    return rz @ ry @ rx


def oxts_world_from_imu(packets: list[np.ndarray]) -> np.ndarray:
    """IMU-to-world poses (T,4,4): Mercator position with the scale of the first packet's latitude,
    origin at the first packet, orientation ``Rz(yaw) Ry(pitch) Rx(roll)`` (KITTI devkit)."""
    scale = math.cos(math.radians(packets[0][0]))
    poses = np.tile(np.eye(4), (len(packets), 1, 1))
    origin = None
    for k, packet in enumerate(packets):
        lat, lon, alt, roll, pitch, yaw = packet[:6]
        tx = scale * lon * math.pi * EARTH_RADIUS / 180.0
        ty = scale * EARTH_RADIUS * math.log(math.tan(math.radians(90.0 + lat) / 2.0))
        position = np.array([tx, ty, alt])
        origin = position if origin is None else origin
        poses[k, :3, :3] = _rotation(roll, pitch, yaw)
        poses[k, :3, 3] = position - origin
    return poses


# ----------------------------------------------------------------------------------------------------
# Discovery


@dataclass
class Drive:
    date: str
    name: str
    path: Path

    def frames(self) -> list[int]:
        folder = self.path / "image_02" / "data"
        if not folder.is_dir():
            raise FileNotFoundError(f"drive {self.path} has no image_02/data")
        return sorted(int(p.stem) for p in folder.glob("*.png"))


def _date_dirs(root: Path) -> list[Path]:
    base = root / "raw_data" if (root / "raw_data").is_dir() else root
    return sorted(p for p in base.iterdir() if p.is_dir() and (p / "calib_cam_to_cam.txt").is_file())


def find_drives(root: Path) -> dict[str, Drive]:
    drives = {}
    for date_dir in _date_dirs(root):
        for path in sorted(date_dir.glob(f"{date_dir.name}_drive_*_sync")):
            drives[path.name] = Drive(date=date_dir.name, name=path.name, path=path)
    if not drives:
        raise FileNotFoundError(f"no KITTI raw drive (<date>/<date>_drive_NNNN_sync) under {root}")
    return drives


def read_mapping(root: Path) -> list[tuple[str, str, int] | None]:
    """devkit/mapping/train_mapping.txt: (date, drive, frame) per labelled image, None for empty lines."""
    path = root / "devkit" / "mapping" / "train_mapping.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the labelled set cannot be matched to raw drives")
    out: list[tuple[str, str, int] | None] = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            out.append(None)
            continue
        if len(parts) != 3:
            raise ValueError(f"{path}:{number}: expected '<date> <drive> <frame>', got {line!r}")
        out.append((parts[0], parts[1], int(parts[2])))
    return out


def _depth_path(root: Path, drive: Drive, frame: int) -> Path | None:
    name = f"{frame:010d}.png"
    candidates = [drive.path / "proj_depth" / "groundtruth" / "image_02" / name]
    candidates += [
        root / "data_depth_annotated" / split / drive.name / "proj_depth" / "groundtruth" / "image_02" / name
        for split in ("train", "val")
    ]
    return next((p for p in candidates if p.is_file()), None)


# ----------------------------------------------------------------------------------------------------
# Conversion


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
        depth = _depth_path(self.root, self.drive, frame)
        if depth is not None:
            out["depth"] = resize_nearest(read_depth_png(depth), h, w)
        scan = d / "velodyne_points" / "data" / f"{frame:010d}.bin"
        if scan.is_file():
            xyz = read_velodyne(scan)[:, :3].astype(np.float64)
            cam = xyz @ self.calib.cam2_from_velo[:3, :3].T + self.calib.cam2_from_velo[:3, 3]
            out["depth_lidar"] = project_to_depth_map(cam, self.intrinsics, h, w)
        semantic = d / "semantic_02" / "data" / name
        if semantic.is_file():
            out["label"] = self.label(semantic)
        flow = d / "flow_02" / "data" / name
        if flow.is_file():
            out["flow"] = resize_flow(read_flow_png(flow), h, w)
        dynamic = d / "dynamic_02" / "data" / name
        if dynamic.is_file():
            out["dynamic"] = resize_nearest(read_image(dynamic), h, w)
        return out

    def label(self, path: Path) -> np.ndarray:
        ids = read_image(path)
        if ids.ndim != 2:
            raise ValueError(f"{path} has shape {ids.shape}: Cityscapes label ids are one channel")
        check_label_values(ids, 33, path)
        return resize_label_ids(ids, _ID_TO_TRAIN, self.height, self.width, self.label_interpolation)


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
) -> Path:
    """Convert a KITTI tree (real or the synthetic world's) into the shard set ``out_dir``.

    ``label_interpolation``: ``nearest`` (default) or ``bicubic``, the seed code's label resizing that
    only the legacy protocol of study A uses (``geosem.sources.common.resize_label_ids``). It applies to
    every label of the set and is recorded in the manifest's parameters.
    """
    if label_interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError(
            f"unknown label_interpolation {label_interpolation!r}; known: {LABEL_INTERPOLATIONS}"
        )
    root = Path(raw_dir)
    drives = find_drives(root)
    semantics = root / "data_semantics" / "training"
    if not semantics.is_dir():
        raise FileNotFoundError(f"{semantics} is missing: the labelled test split comes from it")
    mapping = read_mapping(root)
    heldout = {entry[1] for entry in mapping if entry is not None}
    unknown = heldout - set(drives)
    if unknown:
        raise FileNotFoundError(
            f"{root}: the mapping names drives that are not on disk: {sorted(unknown)[:5]}"
        )
    calibrations: dict[str, DateCalibration] = {}

    def reader(drive: Drive) -> _DriveReader:
        if drive.date not in calibrations:
            calibrations[drive.date] = read_date_calibration(drive.path.parent)
        return _DriveReader(root, drive, calibrations[drive.date], height, width, label_interpolation)

    parameters = {"height": height, "width": width, "label_interpolation": label_interpolation}
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
        train_drives = [d for name, d in drives.items() if name not in heldout]
        bar = tqdm(total=len(train_drives) + 1, desc=f"convert {dataset}", disable=not progress)
        for drive in train_drives:
            r = reader(drive)
            ids = [f"{drive.name}-{f:010d}" for f in r.frames]
            for k, frame in enumerate(r.frames):
                writer.add(
                    r.fields(frame),
                    {
                        "id": ids[k],
                        "split": "train",
                        "sequence": drive.name,
                        "frame": frame,
                        "prev_id": ids[k - 1] if k > 0 else None,
                        "next_id": ids[k + 1] if k + 1 < len(ids) else None,
                        "fx": r.intrinsics[0],
                        "fy": r.intrinsics[1],
                        "cx": r.intrinsics[2],
                        "cy": r.intrinsics[3],
                        "baseline": r.calib.baseline,
                        "pose": r.poses[frame],
                    },
                )
            bar.update(1)
        readers: dict[str, _DriveReader] = {}
        labelled = sorted(p.name for p in (semantics / "image_2").glob("*_10.png"))
        for name in labelled:
            index = int(name.split("_")[0])
            image_path, label_path = semantics / "image_2" / name, semantics / "semantic" / name
            entry = mapping[index] if index < len(mapping) else None
            image = read_rgb(image_path)
            meta: dict = {"id": f"semantics-{index:06d}_10", "split": "test", "sequence": "data_semantics"}
            arrays = {"image": resize_image(image, height, width)}
            if entry is not None:
                _, drive_name, frame = entry
                if drive_name not in readers:
                    readers[drive_name] = reader(drives[drive_name])
                r = readers[drive_name]
                arrays = r.fields(frame, image=image)
                meta.update(
                    sequence=drive_name,
                    frame=frame,
                    fx=r.intrinsics[0],
                    fy=r.intrinsics[1],
                    cx=r.intrinsics[2],
                    cy=r.intrinsics[3],
                    baseline=r.calib.baseline,
                    pose=r.poses[frame],
                )
            ids = read_image(label_path)
            check_label_values(ids, 33, label_path)
            arrays["label"] = resize_label_ids(ids, _ID_TO_TRAIN, height, width, label_interpolation)
            writer.add(arrays, meta)
        bar.update(1)
        bar.close()
    return Path(out_dir)
