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

Splits of the ``world`` protocol: ``test`` is the labelled set (image and label from ``data_semantics``;
right image, depth, lidar and pose from the raw frame the mapping names); ``train`` is every frame of
every raw drive that the mapping does *not* name, so no scene of the labelled test set ever reaches
pre-training or the few-shot pool. Sequence neighbours are ``prev_id``/``next_id`` within a drive. The
labelled frames stand alone (no neighbours), so tasks that evaluate on frame pairs (flow) get their own
held-out split from the drives the mapping names: ``heldout_video`` holds ``video_frames`` frames (default
100, spread evenly over those drives and within each, never a drive's first or last frame) with
``prev_id``/``next_id``; their neighbours that are not themselves in it are stored as ``heldout_context``
(no links of their own, so no reader takes them for a pair). Both come from held-out drives only, so
neither ever meets ``train``; they share scenes (and may share raw frames) with ``test``, which is fine,
as neither trains.

Fields: ``image``, ``right``, ``depth`` (annotated), ``depth_lidar`` (the frame's velodyne scan
projected with ``P_rect_02 R_rect_00 [R|T]`` at the stored resolution, nearest return per pixel),
``label`` (cityscapes19 train ids), and, from the GeoSem-only folders of the synthetic world,
``flow`` (``flow_02``, KITTI flow PNG coding) and ``dynamic`` (``dynamic_02``). Poses are camera-2 to
world, relative to the drive's first frame, from the OXTS packets (Mercator projection as in KITTI's
devkit) and the calibration chain; intrinsics are ``P_rect_02`` scaled to the stored size; the
baseline is ``(P_rect_02[0,3] - P_rect_03[0,3]) / fx``.

Two protocols (``protocol``), both writing the fields above (those a frame has):

* ``world`` (the synthetic driving world; chosen by ``auto`` when the tree has a GeoSem world marker):
  the splits above, and every frame must carry every field (a missing file in a world is damage, and
  stops the conversion naming the sample). Its output is byte for byte what version 3 wrote before the
  ``eigen`` protocol existed.
* ``eigen`` (real KITTI; ``auto`` otherwise): monodepth2's split lists (``train_list`` eigen_zhou or
  eigen_full for ``train`` / ``val``, ``eigen_test`` with the projected velodyne scan as ground truth),
  the labelled images partitioned into ``labelled_pool`` / ``labelled_test``, optional fields (real raw
  frames have no label, and no annotated depth on a drive's first and last 5 frames: ``has_depth``
  false, image and neighbours kept), and the labelled scenes whose drive is a pre-training drive (the
  KITTI-2015 overlap) left out of pre-training and reported (``geosem.sources.kitti.real``).
"""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm import tqdm

from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import LABEL_INTERPOLATIONS, source_version
from geosem.sources.kitti.drive import LABEL_SPACE, DriveReader
from geosem.sources.kitti.real import (
    LABELLED_POOL_SIZE,
    LABELLED_SEED,
    EigenLayout,
    stored_fields,
    write_eigen_protocol,
)
from geosem.sources.kitti.splits import TRAIN_LISTS, load_split_lists
from geosem.sources.kitti.world import CONTEXT_SPLIT, VIDEO_SPLIT, WorldLayout, write_world_protocol
from geosem.worlds import WORLD_MARKER

# 3: the held-out video splits (heldout_video, heldout_context) and the parameter video_frames. The eigen
# protocol came without a new version: the world's shards (the only v3 sets, real KITTI stopped the
# converter before) keep their bytes, and every eigen-protocol set names its protocol in the manifest.
CONVERTER_VERSION = "3"
VIDEO_FRAMES = 100  # evaluation pairs: enough for a stable mean EPE, cheap to evaluate every eval_every
PROTOCOLS = ("auto", "world", "eigen")
DEFAULT_TRAIN_LIST = TRAIN_LISTS[0]  # eigen_zhou: monodepth2's monocular training list

# Kept under its former name: tests and tools build a drive reader from it.
_DriveReader = DriveReader

__all__ = ["CONTEXT_SPLIT", "CONVERTER_VERSION", "LABEL_SPACE", "VIDEO_SPLIT", "convert_kitti"]

log = logging.getLogger(__name__)


def resolve_protocol(root: Path, protocol: str) -> str:
    """``auto``: ``world`` for a GeoSem synthetic world (its marker file), ``eigen`` for anything else."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
    if protocol != "auto":
        return protocol
    return "world" if (root / WORLD_MARKER).is_file() else "eigen"


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
    protocol: str = "auto",
    train_list: str = DEFAULT_TRAIN_LIST,
    split_dir: Path | None = None,
    labelled_pool_size: int = LABELLED_POOL_SIZE,
    labelled_seed: int = LABELLED_SEED,
) -> Path:
    """Convert a KITTI tree (real or the synthetic world's) into the shard set ``out_dir``.

    ``label_interpolation``: ``nearest`` (default) or ``bicubic``, the seed code's label resizing that
    only the legacy protocol of study A uses (``geosem.sources.common.resize_label_ids``). It applies to
    every label of the set and is recorded in the manifest's parameters.

    ``protocol``: ``auto`` (default), ``world`` or ``eigen`` (module docstring).

    ``world`` only: ``video_frames``, how many held-out frames the ``heldout_video`` split holds (0: none;
    fewer when the held-out drives have fewer frames with both neighbours).

    ``eigen`` only: ``train_list`` (``eigen_zhou``, default, or ``eigen_full``), ``split_dir`` (a folder
    of list files named as the shipped ones, default the shipped ``splits/``), ``labelled_pool_size``
    (default 128) and ``labelled_seed`` (default 0) of the labelled partition.

    Every parameter that applies is recorded in the manifest's parameters (a custom list folder by its
    lists' sha256, not its path); the eigen protocol adds ``pretraining_overlap``, the report of
    labelled scenes left out of pre-training.
    """
    if label_interpolation not in LABEL_INTERPOLATIONS:
        raise ValueError(
            f"unknown label_interpolation {label_interpolation!r}; known: {LABEL_INTERPOLATIONS}"
        )
    if video_frames < 0:
        raise ValueError(f"video_frames must be >= 0, got {video_frames}")
    root = Path(raw_dir)
    chosen = resolve_protocol(root, protocol)
    common = {
        "dataset": dataset,
        "variant": Path(out_dir).name,
        "source_version": source_version(root, "kitti-raw"),
        "converter_version": CONVERTER_VERSION,
        "label_space": LABEL_SPACE,
        "samples_per_part": samples_per_part,
    }
    if chosen == "world":
        eigen_only = {
            "train_list": train_list != DEFAULT_TRAIN_LIST,
            "split_dir": split_dir is not None,
            "labelled_pool_size": labelled_pool_size != LABELLED_POOL_SIZE,
            "labelled_seed": labelled_seed != LABELLED_SEED,
        }
        given = sorted(name for name, changed in eigen_only.items() if changed)
        if given:
            raise ValueError(f"{root}: parameter(s) {given} apply to protocol 'eigen', not 'world'")
        world = WorldLayout(root, height, width, label_interpolation)
        # The world's parameters exactly as version 3 recorded them: its manifests keep their bytes.
        parameters = {
            "height": height,
            "width": width,
            "label_interpolation": label_interpolation,
            "video_frames": video_frames,
        }
        with ShardWriter(out_dir, parameters=parameters, **common) as writer:
            total = len([name for name in world.drives if name not in world.heldout]) + 2
            bar = tqdm(total=total, desc=f"convert {dataset}", disable=not progress)
            write_world_protocol(writer, world, video_frames, bar)
            bar.close()
        return Path(out_dir)

    if video_frames != VIDEO_FRAMES:
        raise ValueError(f"{root}: video_frames applies to protocol 'world', not 'eigen'")
    lists = load_split_lists(train_list, split_dir)
    layout = EigenLayout(root, height, width, label_interpolation, lists, labelled_pool_size, labelled_seed)
    parameters = {
        "height": height,
        "width": width,
        "label_interpolation": label_interpolation,
        "protocol": "eigen",
        "train_list": train_list,
        "split_lists_sha256": lists.sha256,
        "labelled_pool_size": labelled_pool_size,
        "labelled_seed": labelled_seed,
        "pretraining_overlap": layout.report(),
    }
    with ShardWriter(out_dir, parameters=parameters, fields=stored_fields(height, width), **common) as writer:
        bar = tqdm(total=len(layout.pretraining) + 2, desc=f"convert {dataset}", disable=not progress)
        write_eigen_protocol(writer, layout, bar)
        bar.close()
    return Path(out_dir)
