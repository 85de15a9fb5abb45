"""KITTI's file formats, as its archives extract them: calibration, velodyne scans, depth and flow PNGs,
OXTS packets (and poses from them), the drive folders and the labelled set's mapping to raw frames."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from geosem.sources.common import read_image

EARTH_RADIUS = 6378137.0


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
    # (3,4) P_rect_02 R_rect_00 [R|T]_velo_to_cam, as monodepth2's generate_depth_map composes it: the
    # Eigen test split's ground truth is projected with this very product (geosem.sources.kitti.eigen).
    velo_to_image: np.ndarray | None = None

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
        velo_to_image=p2 @ rect @ cam0_from_velo,
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

    def sample_id(self, frame: int) -> str:
        return f"{self.name}-{frame:010d}"

    def frames(self) -> list[int]:
        """The drive's frame numbers; a frame whose left image is missing is an error naming the file.

        A sync drive numbers its frames 0..N-1 with one line of ``image_02/timestamps.txt`` and one OXTS
        packet each. Listing only the images present would silently drop a deleted one and link its
        neighbours across the gap (``prev_id`` / ``next_id``), so frame triplets would span two steps.
        """
        folder = self.path / "image_02" / "data"
        if not folder.is_dir():
            raise FileNotFoundError(f"drive {self.path} has no image_02/data")
        present = {int(p.stem) for p in folder.glob("*.png")}
        evidence: dict[int, str] = {}
        for frame in {int(p.stem) for p in (self.path / "oxts" / "data").glob("*.txt")} - present:
            evidence[frame] = "it has an OXTS packet"
        stamps = self.path / "image_02" / "timestamps.txt"
        if stamps.is_file():
            count = sum(1 for line in stamps.read_text().splitlines() if line.strip())
            for frame in set(range(count)) - present:
                evidence.setdefault(frame, f"{stamps} lists {count} frames")
        known = present | set(evidence)
        gaps = set(range(min(known), max(known) + 1)) - known if known else set()
        evidence.update(dict.fromkeys(gaps, "frames on both sides of it exist"))
        if evidence:
            lines = []
            for frame in sorted(evidence)[:5]:
                needs = [
                    f"the {column} of sample {self.sample_id(n)}"
                    for n, column in ((frame - 1, "next_id"), (frame + 1, "prev_id"))
                    if n in present
                ]
                lines.append(
                    f"{folder / f'{frame:010d}.png'} is missing ({evidence[frame]}): it is sample "
                    f"{self.sample_id(frame)}" + "".join(f" and {need}" for need in needs)
                )
            raise FileNotFoundError(
                f"drive {self.path} lacks {len(evidence)} frame image(s):\n  "
                + "\n  ".join(lines)
                + "\nFrame triplets (depth_mono) read each frame's neighbours: restore the files or "
                "extract the drive again"
            )
        return sorted(present)


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


def depth_path(root: Path, drive: Drive, frame: int) -> Path | None:
    name = f"{frame:010d}.png"
    candidates = [drive.path / "proj_depth" / "groundtruth" / "image_02" / name]
    candidates += [
        root / "data_depth_annotated" / split / drive.name / "proj_depth" / "groundtruth" / "image_02" / name
        for split in ("train", "val")
    ]
    return next((p for p in candidates if p.is_file()), None)
