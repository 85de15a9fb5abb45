"""Write the indoor world in NYUv2's layout (read back by ``geosem.sources.nyuv2``).

Files under the world's root (``raw/synth_indoor`` in the default pipeline)::

    nyu_depth_v2_labeled.mat   MATLAB v7.3 (HDF5), as h5py shows the real file (MATLAB's axes reversed):
                                 images (N,3,W,H) uint8, depths / rawDepths (N,W,H) float32 metres,
                                 labels (N,W,H) uint16 raw object ids (1-based into names, 0 = unlabelled),
                                 instances (N,W,H) uint8, names (1,K) / scenes (1,N) / sceneTypes (1,N) cell
                                 arrays of strings, accelData (4,N) float32
    splits.mat                 MATLAB level 5: trainNdxs, testNdxs (n x 1 double, 1-based), whole rooms
                               (scenes) on one side, in NYU's 795 : 654 proportion
    classMapping40.mat         MATLAB level 5: mapClass (1 x K uint8), raw object id -> NYU-40 class
    geosem_world.json          provenance

Rooms are rendered in batches (one workflow job each) into HDF5 batch files; :func:`write_nyu_files`
gathers them into the files above.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from geosem.sources.matfile import (
    add_mat73_array,
    add_mat73_strings,
    create_mat73,
    finish_mat73,
    write_mat5,
)
from geosem.worlds import write_world_marker
from geosem.worlds.indoor import WORLD_VERSION, IndoorWorldConfig, render_room
from geosem.worlds.parts import NYU_RAW_NAMES, nyu_map_class, part_table

# Provenance name written into geosem_world.json and from there into every shard manifest's
# source_version: a stable name, no longer the module path (the world moved to geosem.worlds). It must
# stay byte-identical, or every raw file's marker and every shard variant's provenance would change.
GENERATOR = "geosem.sources.synthetic.indoor"
NYU_TEST_SHARE = 654 / 1449
_NYU_RAW_OF_PART = part_table("nyu_raw")


def world_digest(config: IndoorWorldConfig) -> str:
    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()[:12]


def batch_rooms(config: IndoorWorldConfig, batch: int, rooms_per_batch: int) -> range:
    start = batch * rooms_per_batch
    if batch < 0 or start >= config.rooms:
        raise ValueError(f"batch {batch} is outside the {config.rooms} rooms ({rooms_per_batch} per batch)")
    return range(start, min(config.rooms, start + rooms_per_batch))


def write_batch(config: IndoorWorldConfig, batch: int, rooms_per_batch: int, path: Path) -> Path:
    """Render the rooms of one batch into an HDF5 file (frames in room order)."""
    images, depths, labels, instances, poses, kinds, rooms = [], [], [], [], [], [], []
    for index in batch_rooms(config, batch, rooms_per_batch):
        room, frames = render_room(config, index)
        for frame in frames:
            images.append(frame.image)
            depths.append(frame.depth)
            labels.append(_NYU_RAW_OF_PART[frame.parts])
            objects = np.unique(frame.instance[frame.instance > 0])
            number = np.zeros(frame.instance.shape, np.uint8)
            for k, obj in enumerate(objects.tolist()):
                number[frame.instance == obj] = min(k + 1, 255)
            instances.append(number)
            poses.append(frame.pose)
            kinds.append(room.kind)
            rooms.append(index)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as handle:
            for name, data in (
                ("images", np.stack(images)),
                ("depths", np.stack(depths)),
                ("labels", np.stack(labels).astype(np.uint16)),
                ("instances", np.stack(instances)),
                ("poses", np.stack(poses)),
                ("rooms", np.array(rooms, dtype=np.int64)),
            ):
                handle.create_dataset(name, data=data, track_times=False)
            handle.attrs["kinds"] = json.dumps(kinds)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _raw_depth(depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kinect-like raw depth: holes (0) at random and beyond the sensor's reliable range."""
    raw = depth.copy()
    raw[rng.random(depth.shape) < 0.04] = 0.0
    raw[depth > 8.0] = 0.0
    return raw


@dataclass
class _Frames:
    """Every rendered frame of the world, in room order."""

    image: np.ndarray  # (N,H,W,3) uint8
    depth: np.ndarray  # (N,H,W) float32
    label: np.ndarray  # (N,H,W) uint16 raw NYU object ids
    instance: np.ndarray  # (N,H,W) uint8
    pose: np.ndarray  # (N,4,4)
    room: np.ndarray  # (N,) room index
    kinds: list[str]  # room kind of each frame


def write_nyu_files(config: IndoorWorldConfig, batch_paths: list[Path], root: Path) -> Path:
    """Gather rendered batches into NYUv2's labelled .mat, splits.mat and classMapping40.mat."""
    frames = _read_batches(config, batch_paths)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mat = _write_labelled_mat(frames, np.random.default_rng([config.seed, 77]), root)
    _write_splits(config, frames.room, root)
    write_mat5(root / "classMapping40.mat", {"mapClass": nyu_map_class().reshape(1, -1)})
    write_world_marker(root, GENERATOR, WORLD_VERSION, world_digest(config), config, "nyuv2")
    return mat


def _read_batches(config: IndoorWorldConfig, batch_paths: list[Path]) -> _Frames:
    images, depths, labels, instances, poses, kinds, rooms = [], [], [], [], [], [], []
    for path in batch_paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"indoor batch {path} is missing: render it first")
        with h5py.File(path, "r") as handle:
            images.append(handle["images"][...])
            depths.append(handle["depths"][...])
            labels.append(handle["labels"][...])
            instances.append(handle["instances"][...])
            poses.append(handle["poses"][...])
            rooms.append(handle["rooms"][...])
            kinds += json.loads(handle.attrs["kinds"])
    room = np.concatenate(rooms)
    if sorted(set(room.tolist())) != list(range(config.rooms)):
        raise ValueError(f"batches {batch_paths} do not hold exactly rooms 0..{config.rooms - 1}")
    order = np.argsort(room, kind="stable")
    return _Frames(
        image=np.concatenate(images)[order],
        depth=np.concatenate(depths)[order],
        label=np.concatenate(labels)[order],
        instance=np.concatenate(instances)[order],
        pose=np.concatenate(poses)[order],
        room=room[order],
        kinds=[kinds[i] for i in order],
    )


def _write_labelled_mat(frames: _Frames, rng: np.random.Generator, root: Path) -> Path:
    """nyu_depth_v2_labeled.mat, atomically; ``rng`` draws the raw depths' holes."""
    mat = root / "nyu_depth_v2_labeled.mat"
    tmp = root / f".{mat.name}.tmp-{os.getpid()}"
    room, kinds = frames.room, frames.kinds
    try:
        with create_mat73(tmp) as handle:
            # h5py shows MATLAB's arrays with the axis order reversed: (N,H,W,C) -> (N,C,W,H).
            for name, array in (
                ("images", frames.image.transpose(0, 3, 2, 1)),
                ("depths", frames.depth.transpose(0, 2, 1)),
                ("rawDepths", np.stack([_raw_depth(d, rng) for d in frames.depth]).transpose(0, 2, 1)),
                ("labels", frames.label.transpose(0, 2, 1)),
                ("instances", frames.instance.transpose(0, 2, 1)),
            ):
                add_mat73_array(handle, name, np.ascontiguousarray(array), compression=True)
            # Gravity in each camera frame (world y is down) and the tilt angle: the accelerometer.
            gravity = frames.pose[:, :3, :3].transpose(0, 2, 1) @ np.array([0.0, 1.0, 0.0])
            tilt = np.degrees(np.arccos(np.clip(gravity[:, 1], -1.0, 1.0)))
            accel = np.concatenate([gravity, tilt[:, None]], axis=1).astype(np.float32)
            add_mat73_array(handle, "accelData", np.ascontiguousarray(accel.T))
            add_mat73_strings(handle, "names", list(NYU_RAW_NAMES))
            add_mat73_strings(handle, "scenes", [f"{kinds[i]}_{room[i] + 1:04d}" for i in range(len(room))])
            add_mat73_strings(handle, "sceneTypes", kinds)
        finish_mat73(tmp)
        os.replace(tmp, mat)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return mat


def _write_splits(config: IndoorWorldConfig, room: np.ndarray, root: Path) -> None:
    """splits.mat: whole rooms go to one split, like NYU's scene-disjoint split."""
    n_test = min(config.rooms - 1, max(1, round(config.rooms * NYU_TEST_SHARE))) if config.rooms > 1 else 0
    test_rooms = set(np.random.default_rng([config.seed, 78]).permutation(config.rooms)[:n_test].tolist())
    index = np.arange(1, len(room) + 1, dtype=np.float64)
    is_test = np.isin(room, sorted(test_rooms))
    write_mat5(
        root / "splits.mat",
        {"trainNdxs": index[~is_test].reshape(-1, 1), "testNdxs": index[is_test].reshape(-1, 1)},
    )
