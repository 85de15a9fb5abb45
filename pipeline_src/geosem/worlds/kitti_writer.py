"""Write the synthetic driving world in KITTI's real layouts (read back by ``geosem.sources.kitti``).

Tree under the world's root (``raw/synth_driving`` in the default pipeline)::

    raw_data/<date>/calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt
    raw_data/<date>/<date>_drive_<NNNN>_sync/
        image_02/data/%010d.png, image_02/timestamps.txt        left colour camera (rectified)
        image_03/data/%010d.png, image_03/timestamps.txt        right colour camera
        velodyne_points/data/%010d.bin (+ timestamps*.txt)      float32 N x 4: x fwd, y left, z up, refl.
        oxts/data/%010d.txt, oxts/timestamps.txt, dataformat.txt   GPS/IMU packets (30 values, KITTI order)
        proj_depth/groundtruth/image_0{2,3}/%010d.png           depth uint16 = metres x 256, 0 = invalid
                                                                (KITTI depth's layout merged into the
                                                                drive, as monodepth2 expects it)
        semantic_02/data/%010d.png    GeoSem-only: Cityscapes label ids of image_02 (KITTI semantics coding)
        instance_02/data/%010d.png    GeoSem-only: uint16 label id * 256 + instance (KITTI semantics coding)
        flow_02/data/%010d.png        GeoSem-only: forward flow t -> t+1 (KITTI flow 2015 PNG coding)
        dynamic_02/data/%010d.png     GeoSem-only: uint8, 1 on moving objects
    data_semantics/training/{image_2,semantic,semantic_rgb,instance}/%06d_10.png
                                      the labelled set, frames of the held-out drives only
    devkit/mapping/train_mapping.txt  line i: "<date> <drive> <frame:010d>" of labelled image i (as in
                                      KITTI's stereo/flow 2015 devkit, whose frames the semantics share)
    geosem_world.json                 generator, version and config: provenance for the converter

The GeoSem-only folders are what real KITTI lacks: exact labels of every raw frame, flow and motion.
Differences from real KITTI, on purpose: every frame has ground-truth depth (real annotated depth skips
5 frames at each end), the depth is dense except for the sky, there are no grey cameras 00/01, and a
scan is instantaneous (no rolling motion during the sweep).

Every drive is written into a hidden staging folder and renamed into place, so a failed job leaves
nothing half written; the same config always gives byte-identical files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from geosem.atomic import atomic_write_text, staged_folder
from geosem.labelspaces import CITYSCAPES_COLOURS
from geosem.worlds import write_world_marker
from geosem.worlds.driving import DATES, WORLD_VERSION, DriveId, DrivingWorldConfig, drive_ids, rig_for
from geosem.worlds.driving_frames import DriveRenderer, DrivingFrame
from geosem.worlds.parts import part_table
from geosem.worlds.rig import Rig

# Provenance name written into geosem_world.json and from there into every shard manifest's
# source_version: a stable name, no longer the module path (the world moved to geosem.worlds). It must
# stay byte-identical, or every raw file's marker and every shard variant's provenance would change.
GENERATOR = "geosem.sources.synthetic.driving"
DEPTH_SCALE = 256.0
FLOW_SCALE = 64.0
FLOW_OFFSET = 2**15
EARTH_RADIUS = 6378137.0  # metres, the value KITTI's devkit uses for its Mercator projection
_CITYSCAPES_OF_PART = part_table("cityscapes").astype(np.uint8)
# Recording start of each date (image timestamps count from here, 10 Hz, one drive after the other).
_START = {"a": dt.datetime(2011, 9, 26, 13, 2, 25), "b": dt.datetime(2011, 10, 3, 12, 55, 34)}

OXTS_FIELDS = (
    "lat: latitude of the oxts-unit (deg)",
    "lon: longitude of the oxts-unit (deg)",
    "alt: altitude of the oxts-unit (m)",
    "roll: roll angle (rad), 0 = level, positive = left side up, range: -pi .. +pi",
    "pitch: pitch angle (rad), 0 = level, positive = front down, range: -pi/2 .. +pi/2",
    "yaw: heading (rad), 0 = east, positive = counter clockwise, range: -pi .. +pi",
    "vn: velocity towards north (m/s)",
    "ve: velocity towards east (m/s)",
    "vf: forward velocity, i.e. parallel to earth-surface (m/s)",
    "vl: leftward velocity, i.e. parallel to earth-surface (m/s)",
    "vu: upward velocity, i.e. perpendicular to earth-surface (m/s)",
    "ax: acceleration in x, i.e. in direction of vehicle front (m/s^2)",
    "ay: acceleration in y, i.e. in direction of vehicle left (m/s^2)",
    "az: acceleration in z, i.e. in direction of vehicle top (m/s^2)",
    "af: forward acceleration (m/s^2)",
    "al: leftward acceleration (m/s^2)",
    "au: upward acceleration (m/s^2)",
    "wx: angular rate around x (rad/s)",
    "wy: angular rate around y (rad/s)",
    "wz: angular rate around z (rad/s)",
    "wf: angular rate around forward axis (rad/s)",
    "wl: angular rate around leftward axis (rad/s)",
    "wu: angular rate around upward axis (rad/s)",
    "pos_accuracy: velocity accuracy (north/east in m)",
    "vel_accuracy: velocity accuracy (north/east in m/s)",
    "navstat: navigation status",
    "numsats: number of satellites tracked by primary GPS receiver",
    "posmode: position mode of primary GPS receiver",
    "velmode: velocity mode of primary GPS receiver",
    "orimode: orientation mode of primary GPS receiver",
)


def world_digest(config: DrivingWorldConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]


def _vec(values: np.ndarray) -> str:
    return " ".join(f"{v:.9e}" for v in np.asarray(values, dtype=np.float64).reshape(-1))


def _write_png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def _timestamps(date_key: str, drive: DriveId, frames: int, fps: float, offset_s: float = 0.0) -> str:
    start = _START[date_key] + dt.timedelta(seconds=60.0 * drive.number + offset_s)
    lines = []
    for t in range(frames):
        stamp = start + dt.timedelta(microseconds=round(1e6 * t / fps))
        lines.append(stamp.strftime("%Y-%m-%d %H:%M:%S.%f") + "000")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Calibration


def calib_texts(rig: Rig) -> dict[str, str]:
    """The three calibration files of a date, as KITTI lays them out (values written with %.9e)."""
    size = _vec([rig.width, rig.height])
    lines = ["calib_time: 09-Jan-2012 13:57:47", "corner_dist: 9.950000e-02"]
    for camera in range(4):
        p = rig.p_rect(camera)
        t_unrect = np.array([p[0, 3] / rig.fx, 0.0, 0.0])
        lines += [
            f"S_{camera:02d}: {size}",
            f"K_{camera:02d}: {_vec(rig.k)}",
            f"D_{camera:02d}: {_vec(np.zeros(5))}",
            f"R_{camera:02d}: {_vec(np.eye(3))}",
            f"T_{camera:02d}: {_vec(t_unrect)}",
            f"S_rect_{camera:02d}: {size}",
            f"R_rect_{camera:02d}: {_vec(rig.r_rect if camera == 0 else np.eye(3))}",
            f"P_rect_{camera:02d}: {_vec(p)}",
        ]
    cam_to_cam = "\n".join(lines) + "\n"
    velo_to_cam = (
        "calib_time: 15-Mar-2012 11:37:16\n"
        f"R: {_vec(rig.velo_to_cam_r)}\nT: {_vec(rig.velo_to_cam_t)}\n"
        f"delta_f: {_vec(np.zeros(2))}\ndelta_c: {_vec(np.zeros(2))}\n"
    )
    imu_to_velo = (
        f"calib_time: 25-May-2012 16:47:16\nR: {_vec(rig.imu_to_velo_r)}\nT: {_vec(rig.imu_to_velo_t)}\n"
    )
    return {
        "calib_cam_to_cam.txt": cam_to_cam,
        "calib_velo_to_cam.txt": velo_to_cam,
        "calib_imu_to_velo.txt": imu_to_velo,
    }


def write_calibration(config: DrivingWorldConfig, date_key: str, root: Path) -> Path:
    """Write ``raw_data/<date>/calib_*.txt`` for one recording date; returns the date folder."""
    rig = rig_for(config, date_key)
    folder = Path(root) / "raw_data" / DATES[date_key]
    for name, text in calib_texts(rig).items():
        atomic_write_text(folder / name, text)
    return folder


# ----------------------------------------------------------------------------------------------------
# OXTS: camera poses of the world -> GPS/IMU packets (Mercator projection as in KITTI's devkit)


def _enu_from_world(heading: float) -> np.ndarray:
    """Rotation from the world frame (x right, y down, z forward at frame 0) to east-north-up, for a
    drive whose first heading is ``heading`` radians counter-clockwise from east."""
    c, s = math.cos(heading), math.sin(heading)
    # Columns: where world x (right), y (down) and z (forward) point in ENU.
    return np.array([[s, 0.0, c], [-c, 0.0, s], [0.0, -1.0, 0.0]])


def oxts_packets(config: DrivingWorldConfig, drive: DriveId, poses: np.ndarray, yaw_rate: float) -> list[str]:
    """One OXTS line per frame whose pose chain (oxts -> imu -> velo -> cam2) reproduces ``poses``."""
    rng = np.random.default_rng([config.seed, drive.index, 11])
    lat0, lon0, alt0 = (
        49.0 + rng.uniform(-0.02, 0.02),
        8.43 + rng.uniform(-0.02, 0.02),
        112.0 + rng.uniform(0, 8),
    )
    heading = rng.uniform(-math.pi, math.pi)
    rig = rig_for(config, drive.date_key)
    cam2_from_imu = rig.cam2_from_imu()
    rot = _enu_from_world(heading)
    scale = math.cos(math.radians(lat0))
    tx0 = scale * lon0 * math.pi * EARTH_RADIUS / 180.0
    ty0 = scale * EARTH_RADIUS * math.log(math.tan(math.radians(90.0 + lat0) / 2.0))
    world_imu = poses @ cam2_from_imu  # (T,4,4) IMU-to-world
    lines = []
    dt_s = 1.0 / config.fps
    for t in range(poses.shape[0]):
        r = rot @ world_imu[t, :3, :3]
        p = rot @ (world_imu[t, :3, 3] - world_imu[0, :3, 3])
        tx, ty, alt = tx0 + p[0], ty0 + p[1], alt0 + p[2]
        lon = tx * 180.0 / (scale * math.pi * EARTH_RADIUS)
        lat = 360.0 / math.pi * math.atan(math.exp(ty / (scale * EARTH_RADIUS))) - 90.0
        roll = math.atan2(r[2, 1], r[2, 2])
        pitch = -math.asin(max(-1.0, min(1.0, r[2, 0])))
        yaw = math.atan2(r[1, 0], r[0, 0])
        # Velocities from the neighbouring poses (informative only; the converter uses positions).
        k = min(t + 1, poses.shape[0] - 1)
        j = k - 1 if k > 0 else 0
        v_enu = rot @ (world_imu[k, :3, 3] - world_imu[j, :3, 3]) / dt_s if k != j else np.zeros(3)
        v_body = r.T @ v_enu
        values = [lat, lon, alt, roll, pitch, yaw, v_enu[1], v_enu[0], v_body[0], v_body[1], v_enu[2]]
        values += [0.0] * 6 + [0.0, 0.0, -yaw_rate, 0.0, 0.0, -yaw_rate]
        values += [0.05, 0.02, 4, 11, 5, 5, 6]
        lines.append(" ".join(f"{v:.15g}" if isinstance(v, float) else str(v) for v in values))
    return lines


# ----------------------------------------------------------------------------------------------------
# Drives


def encode_flow(flow: np.ndarray) -> np.ndarray:
    """KITTI flow PNG (H,W,3) uint16 in OpenCV's BGR order: B = valid, G = v, R = u, each
    ``value * 64 + 2^15``; NaN (no flow) and values beyond the PNG's +-512 px range are invalid."""
    valid = np.isfinite(flow).all(axis=-1) & (np.abs(np.nan_to_num(flow)) < 511.0).all(axis=-1)
    coded = np.clip(np.round(np.nan_to_num(flow) * FLOW_SCALE + FLOW_OFFSET), 0, 65535).astype(np.uint16)
    out = np.zeros((*flow.shape[:2], 3), np.uint16)
    out[..., 2] = np.where(valid, coded[..., 0], 0)
    out[..., 1] = np.where(valid, coded[..., 1], 0)
    out[..., 0] = valid
    return out


def _depth_png(depth: np.ndarray) -> np.ndarray:
    return np.clip(np.round(depth.astype(np.float64) * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def instance_map(frame: DrivingFrame) -> np.ndarray:
    """KITTI-semantics instance coding: label id * 256 + instance number (1.. per image, 0 = none)."""
    ids = _CITYSCAPES_OF_PART[frame.parts].astype(np.uint16)
    objects = np.unique(frame.instance[frame.instance > 0])
    number = np.zeros(frame.instance.shape, np.uint16)
    for k, obj in enumerate(objects.tolist()):
        number[frame.instance == obj] = min(k + 1, 255)
    return ids * 256 + number


_DRIVE_FOLDERS = (
    "image_02/data",
    "image_03/data",
    "velodyne_points/data",
    "oxts/data",
    "proj_depth/groundtruth/image_02",
    "proj_depth/groundtruth/image_03",
    "semantic_02/data",
    "instance_02/data",
    "flow_02/data",
    "dynamic_02/data",
)
# Clock offsets (s) of each sensor's timestamp files from the camera's: OXTS, scanner, sweep start / end.
_TIMESTAMP_OFFSETS = (
    ("image_02/timestamps.txt", 0.0),
    ("image_03/timestamps.txt", 0.0),
    ("oxts/timestamps.txt", -0.004),
    ("velodyne_points/timestamps.txt", -0.001),
    ("velodyne_points/timestamps_start.txt", -0.05),
    ("velodyne_points/timestamps_end.txt", 0.05),
)


def write_drive(
    config: DrivingWorldConfig,
    drive: DriveId,
    root: Path,
    on_frame: Callable[[int], None] | None = None,
) -> Path:
    """Render one drive and write it into ``raw_data/<date>/<drive>`` under ``root``, atomically."""
    final = Path(root) / "raw_data" / drive.date / drive.name
    with staged_folder(final) as staging:
        for folder in _DRIVE_FOLDERS:
            (staging / folder).mkdir(parents=True)
        renderer = DriveRenderer(config, drive)
        poses = []
        for t in range(config.frames):
            frame = renderer.frame(t)
            _write_frame(staging, t, frame)
            poses.append(frame.pose)
            if on_frame is not None:
                on_frame(t)
        for name, offset in _TIMESTAMP_OFFSETS:
            (staging / name).write_text(_timestamps(drive.date_key, drive, config.frames, config.fps, offset))
        (staging / "oxts" / "dataformat.txt").write_text("\n".join(OXTS_FIELDS) + "\n")
        for t, line in enumerate(oxts_packets(config, drive, np.stack(poses), renderer.scene.yaw_rate)):
            (staging / "oxts/data" / f"{t:010d}.txt").write_text(line + "\n")
    return final


def _write_frame(drive_dir: Path, t: int, frame: DrivingFrame) -> None:
    """Every per-frame file of frame ``t``: images, depth, labels, instances, flow, motion mask, scan."""
    name = f"{t:010d}.png"
    _write_png(drive_dir / "image_02/data" / name, np.ascontiguousarray(frame.image[..., ::-1]))
    _write_png(drive_dir / "image_03/data" / name, np.ascontiguousarray(frame.right[..., ::-1]))
    _write_png(drive_dir / "proj_depth/groundtruth/image_02" / name, _depth_png(frame.depth))
    _write_png(drive_dir / "proj_depth/groundtruth/image_03" / name, _depth_png(frame.right_depth))
    _write_png(drive_dir / "semantic_02/data" / name, _CITYSCAPES_OF_PART[frame.parts])
    _write_png(drive_dir / "instance_02/data" / name, instance_map(frame))
    _write_png(drive_dir / "flow_02/data" / name, encode_flow(frame.flow))
    _write_png(drive_dir / "dynamic_02/data" / name, frame.dynamic)
    frame.lidar.astype(np.float32).tofile(drive_dir / "velodyne_points/data" / f"{t:010d}.bin")


# ----------------------------------------------------------------------------------------------------
# The labelled set (KITTI semantics) and the world marker


def semantics_selection(config: DrivingWorldConfig) -> list[tuple[DriveId, int]]:
    """The (held-out drive, frame) of each labelled image, in labelled-index order.

    Frames are spread evenly over the held-out drives and within each drive; the order is shuffled
    (seeded), as KITTI's labelled images are not in drive order, so a reader must use the mapping.
    """
    heldout = [d for d in drive_ids(config) if d.heldout]
    n = config.semantics_frames
    counts = [n // len(heldout) + (1 if k < n % len(heldout) else 0) for k in range(len(heldout))]
    chosen = []
    for drive, count in zip(heldout, counts, strict=True):
        if count == 0:
            continue
        frames = np.unique(np.round(np.linspace(0, config.frames - 1, count)).astype(int))
        chosen += [(drive, int(f)) for f in frames]
    order = np.random.default_rng([config.seed, 404]).permutation(len(chosen))
    return [chosen[i] for i in order]


def _semantic_rgb(label_ids: np.ndarray) -> np.ndarray:
    lut = np.zeros((256, 3), np.uint8)
    for label_id, colour in CITYSCAPES_COLOURS.items():
        lut[label_id] = colour[::-1]  # BGR for OpenCV
    return lut[label_ids]


def _read(path: Path, flags: int) -> np.ndarray:
    array = cv2.imread(str(path), flags)
    if array is None:
        raise FileNotFoundError(f"cannot read {path}: render its drive first")
    return array


def write_semantics(config: DrivingWorldConfig, root: Path) -> Path:
    """Write ``data_semantics`` and ``devkit/mapping`` from the already written held-out drives."""
    root = Path(root)
    final = root / "data_semantics"
    with staged_folder(final) as staging:
        for folder in ("image_2", "semantic", "semantic_rgb", "instance"):
            (staging / "training" / folder).mkdir(parents=True)
        mapping = []
        for index, (drive, t) in enumerate(semantics_selection(config)):
            source = root / "raw_data" / drive.date / drive.name
            frame = f"{t:010d}.png"
            name = f"{index:06d}_10.png"
            shutil.copyfile(source / "image_02/data" / frame, staging / "training/image_2" / name)
            label_ids = _read(source / "semantic_02/data" / frame, cv2.IMREAD_UNCHANGED)
            shutil.copyfile(source / "semantic_02/data" / frame, staging / "training/semantic" / name)
            shutil.copyfile(source / "instance_02/data" / frame, staging / "training/instance" / name)
            _write_png(staging / "training/semantic_rgb" / name, _semantic_rgb(label_ids))
            mapping.append(f"{drive.date} {drive.name} {t:010d}")
    atomic_write_text(root / "devkit" / "mapping" / "train_mapping.txt", "\n".join(mapping) + "\n")
    write_world_marker(root, GENERATOR, WORLD_VERSION, world_digest(config), config, "kitti")
    return final


def write_driving_world(config: DrivingWorldConfig, root: Path, progress: bool = False) -> Path:
    """Everything in one call (tests, ad-hoc use); the workflow runs one job per drive instead."""
    from tqdm import tqdm

    root = Path(root)
    for key in sorted({d.date_key for d in drive_ids(config)}):
        write_calibration(config, key, root)
    for drive in drive_ids(config):
        with tqdm(total=config.frames, desc=drive.name, disable=not progress) as bar:
            write_drive(config, drive, root, on_frame=lambda _t: bar.update(1))
    write_semantics(config, root)
    return root
