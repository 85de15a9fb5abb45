"""Converter for the embedded synthetic driving world (raw layout of ``geosem.sources.synthetic.driving``).

The world is treated like any downloaded dataset: its raw files are read from disk, resized to the
variant's resolution, split by sequence and written as a shard set. Whole sequences are held out for
the test split, so no test scene is ever seen by depth pre-training or by the few-shot training pool.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from geosem.labelspaces import IGNORE_INDEX
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter

DATASET = "synth_driving"
CONVERTER_VERSION = "1"
DEPTH_SCALE = 256.0  # KITTI convention: uint16 PNG = metres x 256, 0 = invalid


def _read_png(path: Path, flags: int) -> np.ndarray:
    array = cv2.imread(str(path), flags)
    if array is None:
        raise FileNotFoundError(f"cannot read image {path} (missing or not a PNG)")
    return array


def _resize_depth(depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize keeps invalid (0) pixels invalid instead of blending them into edges."""
    if depth.shape[::-1] == size:
        return depth
    return cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)


def _resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[1::-1] == size:
        return image
    downscale = size[0] < image.shape[1]
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if downscale else cv2.INTER_LINEAR)


def _resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # Labels are categorical: NEAREST only (protocols.md 1.7.2: bicubic invents label ids at boundaries).
    if label.shape[::-1] == size:
        return label
    return cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)


@register_converter(DATASET)
def convert_synth_driving(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    test_sequences: int,
    samples_per_part: int = 256,
    progress: bool = True,
) -> Path:
    """Convert the raw world into ``out_dir``; the last ``test_sequences`` sequences form the test split."""
    world_file = raw_dir / "world.json"
    if not world_file.is_file():
        raise FileNotFoundError(f"{world_file} is missing: render the world first (geosem world)")
    world = json.loads(world_file.read_text())
    sequences: list[str] = list(world["sequences"])
    if not 0 < test_sequences < len(sequences):
        raise ValueError(
            f"test_sequences={test_sequences} must leave both splits non-empty "
            f"({len(sequences)} sequences in {raw_dir})"
        )
    # The source version pins the exact world: generator version plus a digest of its configuration.
    config_digest = hashlib.sha256(json.dumps(world["config"], sort_keys=True).encode()).hexdigest()[:12]
    source_version = f"{world['version']}+{config_digest}"
    size = (width, height)
    parameters = {"height": height, "width": width, "test_sequences": test_sequences}

    with ShardWriter(
        out_dir,
        dataset=DATASET,
        variant=out_dir.name,
        source_version=source_version,
        converter_version=CONVERTER_VERSION,
        label_space=world["label_space"],
        parameters=parameters,
        samples_per_part=samples_per_part,
    ) as writer:
        for number, sequence in enumerate(tqdm(sequences, desc="convert", disable=not progress)):
            seq_dir = raw_dir / sequence
            camera = json.loads((seq_dir / "camera.json").read_text())
            poses = np.loadtxt(seq_dir / "poses.txt", ndmin=2)
            frames = sorted(p.stem for p in (seq_dir / "image").glob("*.png"))
            if len(poses) != len(frames):
                raise ValueError(f"{seq_dir / 'poses.txt'} has {len(poses)} poses for {len(frames)} frames")
            split = "test" if number >= len(sequences) - test_sequences else "train"
            scale_x, scale_y = width / camera["width"], height / camera["height"]
            ids = [f"{sequence}-{frame}" for frame in frames]
            for t, frame in enumerate(frames):
                image = cv2.cvtColor(
                    _read_png(seq_dir / "image" / f"{frame}.png", cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
                )
                depth_png = _read_png(seq_dir / "depth" / f"{frame}.png", cv2.IMREAD_UNCHANGED)
                if depth_png.dtype != np.uint16:
                    raise ValueError(f"{seq_dir / 'depth' / frame}.png is {depth_png.dtype}, expected uint16")
                label = _read_png(seq_dir / "label" / f"{frame}.png", cv2.IMREAD_UNCHANGED)
                bad = (label >= len(writer.classes)) & (label != IGNORE_INDEX)
                if bad.any():
                    raise ValueError(
                        f"{seq_dir / 'label' / frame}.png holds label ids {np.unique(label[bad]).tolist()} "
                        f"outside {world['label_space']}"
                    )
                pose = np.eye(4)
                pose[:3, :] = poses[t].reshape(3, 4)
                arrays = {
                    "image": _resize_image(image, size),
                    "depth": _resize_depth(depth_png.astype(np.float32) / DEPTH_SCALE, size),
                    "label": _resize_label(label, size),
                }
                writer.add(
                    arrays,
                    {
                        "id": ids[t],
                        "split": split,
                        "sequence": sequence,
                        "frame": t,
                        "prev_id": ids[t - 1] if t > 0 else None,
                        "next_id": ids[t + 1] if t + 1 < len(ids) else None,
                        "fx": camera["fx"] * scale_x,
                        "fy": camera["fy"] * scale_y,
                        "cx": camera["cx"] * scale_x,
                        "cy": camera["cy"] * scale_y,
                        "baseline": camera.get("baseline_m"),
                        "pose": pose,
                    },
                )
    return out_dir
