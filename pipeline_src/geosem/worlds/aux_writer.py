"""Auxiliary segmentation sources for study B, written in the real datasets' layouts.

* ADE20K-like (``write_ade``): an outdoor/indoor mix (street views from the driving world, rooms from the
  indoor world) dressed with ADE's material style, photographed from a person's height at varied image
  sizes, labelled in ADE20K's 150 classes (0 = other). Layout of ADEChallengeData2016::

      ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_%08d.jpg
      ADEChallengeData2016/annotations/{training,validation}/ADE_{train,val}_%08d.png   uint8 0..150
      ADEChallengeData2016/objectInfo150.txt, sceneCategories.txt

* SUN RGB-D-like (``write_sun``): cluttered rooms with SUN's dressing and sensor-dependent image sizes,
  labelled in SUN's 37 classes (0 = void), in the layout of the ankurhanda/sunrgbd-meta-data mirror::

      SUNRGBD-test_images/img-%06d.jpg    ids 1 .. n_test   (the test set comes first, as in the mirror)
      SUNRGBD-train_images/img-%06d.jpg   ids n_test+1 .. n
      sunrgbd_train_test_labels/img-%06d.png   uint8 0..37, one per image id

Each dataset has its own class list and its own look, so per-dataset heads and label-space bookkeeping
are exercised; colour stays class-blind within each (one material draw for every part).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from geosem.atomic import staged_folder, swap_in
from geosem.labelspaces import ADE150_CLASSES
from geosem.worlds import indoor, write_world_marker
from geosem.worlds.driving import DrivingWorldConfig
from geosem.worlds.driving_layout import build_scene
from geosem.worlds.driving_view import render_camera
from geosem.worlds.parts import part_table

AUX_VERSION = "aux-v1"
_ADE_OF_PART = part_table("ade").astype(np.uint8)
_SUN_OF_PART = part_table("sun").astype(np.uint8)
_ADE_SIZES = ((96, 128), (128, 96), (96, 144), (112, 112))  # (height, width): ADE images vary
_SUN_SIZES = ((96, 128), (104, 136), (88, 120))  # one per sensor, roughly SUN's kv1 / kv2 / xtion shapes
JPEG_QUALITY = 92


@dataclass(frozen=True)
class AuxWorldConfig:
    seed: int = 0
    images: int = 80
    test_share: float = 0.25

    def __post_init__(self) -> None:
        if self.images < 2 or not 0.0 < self.test_share < 1.0:
            raise ValueError("images must be >= 2 and test_share in (0, 1)")

    @property
    def test_images(self) -> int:
        return min(self.images - 1, max(1, round(self.images * self.test_share)))


def _digest(config: AuxWorldConfig, name: str) -> str:
    return hashlib.sha256(json.dumps({"name": name, **asdict(config)}, sort_keys=True).encode()).hexdigest()[
        :12
    ]


def _street_view(seed: int, index: int, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A person's photo of a street of the driving world (ADE dressing): RGB and parts."""
    rng = np.random.default_rng([seed, index, 21])
    config = DrivingWorldConfig(
        seed=seed + 1000, drives=1, heldout_drives=1, frames=2, semantics_frames=1, dressing="ade"
    )
    scene = build_scene(config, index)
    s, lat = rng.uniform(0.0, 15.0), rng.uniform(-2.0, 2.0) + rng.choice([-1, 1]) * rng.uniform(0.0, 3.5)
    x, z = scene.road.point(s, lat)
    yaw = float(scene.road.heading(s)) + rng.uniform(-1.0, 1.0) + (math.pi if rng.random() < 0.3 else 0.0)
    pitch = rng.uniform(-0.2, 0.1)
    height = scene.y_raised - rng.uniform(1.4, 1.8) if abs(lat) > scene.half_road else scene.y_road - 1.6
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    pose = np.eye(4)
    pose[:3, :3] = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]]) @ np.array(
        [[1, 0, 0], [0, cp, -sp], [0, sp, cp]]
    )
    pose[:3, 3] = (float(x), height, float(z))
    h, w = size
    f = rng.uniform(0.7, 1.1) * w
    rgb, parts, _ = render_camera(
        scene, scene.primitives_at(0.0), pose, (f, f, (w - 1) / 2, (h - 1) / 2), h, w
    )
    return rgb, parts


def _room_view(
    seed: int, index: int, size: tuple[int, int], dressing: str, clutter: float
) -> tuple[np.ndarray, np.ndarray]:
    config = indoor.IndoorWorldConfig(
        seed=seed, rooms=index + 1, frames_per_room=1, dressing=dressing, clutter=clutter
    )
    room = indoor.build_room(config, index)
    pose = indoor.camera_poses(config, room, index)[0]
    h, w = size
    rng = np.random.default_rng([seed, index, 22])
    f = rng.uniform(0.75, 1.0) * w
    frame = indoor.render_view(
        room, pose, h, w, (f, f, (w - 1) / 2, (h - 1) / 2), config.ambient, config.max_depth_m
    )
    return frame.image, frame.parts


def _jpeg(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(
        str(path), np.ascontiguousarray(rgb[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
    ):
        raise OSError(f"could not write {path}")


def _png(path: Path, array: np.ndarray) -> None:
    if not cv2.imwrite(str(path), array):
        raise OSError(f"could not write {path}")


def write_ade(config: AuxWorldConfig, root: Path) -> Path:
    """ADEChallengeData2016 under ``root``; the last ``test_images`` images form ``validation``."""
    root = Path(root)
    final = root / "ADEChallengeData2016"
    rng = np.random.default_rng([config.seed, 31])
    n_val = config.test_images
    pixels = np.zeros(151, np.int64)
    present = {"training": np.zeros(151, np.int64), "validation": np.zeros(151, np.int64)}
    scenes = []
    with staged_folder(final) as staging:
        for split in ("training", "validation"):
            (staging / "images" / split).mkdir(parents=True)
            (staging / "annotations" / split).mkdir(parents=True)
        train_count = 0
        for index in range(config.images):
            split = "validation" if index >= config.images - n_val else "training"
            number = index + 1 if split == "training" else index - (config.images - n_val) + 1
            stem = f"ADE_{'train' if split == 'training' else 'val'}_{number:08d}"
            size = _ADE_SIZES[int(rng.integers(0, len(_ADE_SIZES)))]
            if rng.random() < 0.5:
                rgb, parts = _street_view(config.seed, index, size)
                scenes.append(f"{stem} street")
            else:
                rgb, parts = _room_view(config.seed + 500, index, size, "ade", 1.0)
                scenes.append(f"{stem} room")
            label = _ADE_OF_PART[parts]
            _jpeg(staging / "images" / split / f"{stem}.jpg", rgb)
            _png(staging / "annotations" / split / f"{stem}.png", label)
            counts = np.bincount(label.reshape(-1), minlength=151)
            pixels += counts
            present[split] += counts > 0
            train_count += split == "training"
        total = max(int(pixels[1:].sum()), 1)
        lines = ["Idx\tRatio\tTrain\tVal\tName"] + [
            f"{k}\t{pixels[k] / total:.4f}\t{present['training'][k]}\t{present['validation'][k]}\t{name}"
            for k, name in enumerate(ADE150_CLASSES, start=1)
        ]
        (staging / "objectInfo150.txt").write_text("\n".join(lines) + "\n")
        (staging / "sceneCategories.txt").write_text("\n".join(scenes) + "\n")
    _marker(root, config, "ade", "ade20k")
    return final


def write_sun(config: AuxWorldConfig, root: Path) -> Path:
    """The SUN RGB-D mirror layout under ``root``: image ids 1..n_test are the test set."""
    root = Path(root)
    rng = np.random.default_rng([config.seed, 41])
    n_test = config.test_images
    folders = ("SUNRGBD-test_images", "SUNRGBD-train_images", "sunrgbd_train_test_labels")
    staging = root / f".sun.tmp-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    try:
        for folder in folders:
            (staging / folder).mkdir(parents=True)
        for index in range(config.images):
            image_id = index + 1
            folder = "SUNRGBD-test_images" if image_id <= n_test else "SUNRGBD-train_images"
            size = _SUN_SIZES[int(rng.integers(0, len(_SUN_SIZES)))]
            rgb, parts = _room_view(config.seed + 900, index, size, "sun", 1.8)
            _jpeg(staging / folder / f"img-{image_id:06d}.jpg", rgb)
            _png(staging / "sunrgbd_train_test_labels" / f"img-{image_id:06d}.png", _SUN_OF_PART[parts])
        for folder in folders:
            swap_in(staging / folder, root / folder)
        shutil.rmtree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _marker(root, config, "sun", "sunrgbd")
    return root


# Provenance name of the markers (``<prefix>.ade`` / ``<prefix>.sun``), read into every shard manifest's
# source_version: a stable name, no longer the module path (the world moved to geosem.worlds). It must
# stay byte-identical, or every raw file's marker and every shard variant's provenance would change.
GENERATOR_PREFIX = "geosem.sources.synthetic.aux_writer"


def _marker(root: Path, config: AuxWorldConfig, name: str, layout: str) -> None:
    write_world_marker(root, f"{GENERATOR_PREFIX}.{name}", AUX_VERSION, _digest(config, name), config, layout)
