"""The ``eigen`` protocol of the KITTI converter: real KITTI with the standard split lists.

Splits (docs/datasets.md 1.6):

* ``train``: the frames of the pre-training list (``train_list``: eigen_zhou or eigen_full), each linked
  to its neighbours (``prev_id`` / ``next_id``, frame index - 1 / + 1) where the drive has them;
* ``val``: the list's validation frames that are not train frames, linked the same way;
* ``pretrain_context``: neighbours of those frames that no list names, stored without links of their
  own so that no reader takes one for a triplet centre;
* ``eigen_test``: the 697 Eigen test frames, ``depth`` = the projected velodyne scan
  (``geosem.sources.kitti.eigen``), no links;
* ``labelled_pool`` / ``labelled_test``: the labelled images of KITTI semantics, split by a seeded
  partition (``labelled_partition``), with their raw frame's fields where the drive is on disk.

Real frames carry what KITTI has: ``depth`` (annotated) only where ``data_depth_annotated`` has the
frame (``has_depth`` false on a drive's first and last 5 frames), no ``label`` on raw frames. A drive
that is the source of a labelled image (devkit mapping) and also a pre-training drive is left out of
pre-training entirely, and reported (log and manifest).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from geosem.shards.writer import ShardWriter
from geosem.sources.common import read_rgb, resize_image
from geosem.sources.kitti.drive import DriveCache, DriveReader, camera_meta, read_label
from geosem.sources.kitti.eigen import eigen_depth_map
from geosem.sources.kitti.files import find_drives, read_mapping, read_velodyne
from geosem.sources.kitti.splits import TEST_LIST, SplitLists, labelled_partition, pretraining_overlap
from geosem.worlds import WORLD_MARKER

log = logging.getLogger(__name__)

TRAIN_SPLIT, VAL_SPLIT, CONTEXT_SPLIT = "train", "val", "pretrain_context"
EIGEN_TEST_SPLIT = "eigen_test"
POOL_SPLIT, LABELLED_TEST_SPLIT = "labelled_pool", "labelled_test"
LABELLED_POOL_SIZE = 128  # study A's largest few-shot N (16..128); leaves 72 test images
LABELLED_SEED = 0


def labelled_sample_id(index: int) -> str:
    return f"semantics-{index:06d}_10"


class EigenLayout:
    """A real KITTI tree checked against the split lists: which drives and frames go where."""

    def __init__(
        self,
        root: Path,
        height: int,
        width: int,
        label_interpolation: str,
        lists: SplitLists,
        pool_size: int,
        seed: int,
    ) -> None:
        self.root, self.height, self.width = root, height, width
        self.label_interpolation = label_interpolation
        self.lists = lists
        self.drives = find_drives(root)
        self.semantics = root / "data_semantics" / "training"
        if not (self.semantics / "image_2").is_dir():
            raise FileNotFoundError(
                f"{self.semantics / 'image_2'} is missing: the labelled splits come from it"
            )
        self.mapping = read_mapping(root)
        self.labelled = sorted(
            int(p.name.split("_")[0]) for p in (self.semantics / "image_2").glob("*_10.png")
        )
        self.pool, self.test = labelled_partition(self.labelled, pool_size, seed)
        sources: dict[str, list[str]] = {}
        for index in self.labelled:
            entry = self.mapping[index] if index < len(self.mapping) else None
            if entry is not None:
                sources.setdefault(entry[1], []).append(labelled_sample_id(index))
        self.overlap = pretraining_overlap(sources, lists.pretraining_drives)
        self.pretraining = sorted(lists.pretraining_drives - set(self.overlap))
        needed = set(self.pretraining) | set(lists.test)
        missing = sorted(needed - set(self.drives))
        if missing:
            raise FileNotFoundError(
                f"{root}: {len(missing)} drive(s) of the {lists.train_list} / {TEST_LIST} lists are "
                f"not on disk: {missing[:5]}{' ...' if len(missing) > 5 else ''}. Extract every drive of "
                "monodepth2's splits/kitti_archives_to_download.txt (docs/datasets.md 1.1); a GeoSem world "
                f"that lost its marker file ({WORLD_MARKER}) converts with protocol='world'"
            )
        self.cache = DriveCache(root, self.drives, height, width, label_interpolation)

    def report(self) -> dict[str, Any]:
        """The KITTI-2015 overlap: labelled scenes whose drive is a pre-training drive, and what was
        left out of pre-training for it (frames of the list, per drive)."""
        excluded = {
            drive: len(self.lists.train.get(drive, set()) | self.lists.val.get(drive, set()))
            for drive in self.overlap
        }
        return {"drives": self.overlap, "excluded_list_frames": excluded}

    def reader(self, name: str) -> DriveReader:
        return self.cache.reader(name)

    def _check_listed(self, r: DriveReader, frames: set[int], what: str) -> None:
        absent = sorted(frames - set(r.frames))
        if absent:
            raise FileNotFoundError(
                f"drive {r.drive.path}: the {what} list names frame(s) {absent[:5]} that the drive does not "
                f"have (it holds frames {r.frames[0]}..{r.frames[-1]})"
            )

    def write_pretraining_drive(self, writer: ShardWriter, name: str) -> None:
        """The listed train and val frames of one drive, linked to their neighbours, and the neighbours
        no list names (``pretrain_context``, unlinked), in frame order."""
        r = self.reader(name)
        train, val = self.lists.train.get(name, set()), self.lists.val.get(name, set())
        self._check_listed(r, train | val, self.lists.train_list)
        on_disk = set(r.frames)
        listed = train | val
        stored = sorted(listed | ({f + step for f in listed for step in (-1, 1)} & on_disk))
        for frame in stored:
            linked = frame in listed
            split = TRAIN_SPLIT if frame in train else VAL_SPLIT if frame in val else CONTEXT_SPLIT
            meta = {
                "id": r.drive.sample_id(frame),
                "split": split,
                "sequence": name,
                "frame": frame,
                "prev_id": r.drive.sample_id(frame - 1) if linked and frame - 1 in on_disk else None,
                "next_id": r.drive.sample_id(frame + 1) if linked and frame + 1 in on_disk else None,
                **camera_meta(r, frame),
            }
            writer.add(r.fields(frame), meta)
        self.cache.release(name)

    def write_eigen_test(self, writer: ShardWriter) -> None:
        """The Eigen test frames, ``depth`` replaced by the projected scan (monodepth2's ground truth)."""
        for name in sorted(self.lists.test):
            r = self.reader(name)
            frames = self.lists.test[name]
            self._check_listed(r, frames, TEST_LIST)
            for frame in sorted(frames):
                scan = r.drive.path / "velodyne_points" / "data" / f"{frame:010d}.bin"
                arrays = r.fields(frame)
                arrays["depth"] = eigen_depth_map(read_velodyne(scan), r.calib, self.height, self.width)
                meta = {
                    "id": r.drive.sample_id(frame),
                    "split": EIGEN_TEST_SPLIT,
                    "sequence": name,
                    "frame": frame,
                    **camera_meta(r, frame),
                }
                writer.add(arrays, meta)
            self.cache.release(name)

    def write_labelled(self, writer: ShardWriter) -> int:
        """The labelled images in index order (pool and test interleaved, so the union of both splits in
        index order is the whole labelled set, as the legacy protocol reads it). Returns how many had no
        raw drive on disk (image and label only)."""
        pool, without_raw = set(self.pool), 0
        for index in self.labelled:
            name = f"{index:06d}_10.png"
            sample = labelled_sample_id(index)
            image = read_rgb(self.semantics / "image_2" / name)
            entry = self.mapping[index] if index < len(self.mapping) else None
            meta: dict[str, Any] = {
                "id": sample,
                "split": POOL_SPLIT if index in pool else LABELLED_TEST_SPLIT,
                "sequence": "data_semantics",
            }
            if entry is not None and entry[1] in self.drives:
                _, drive_name, frame = entry
                r = self.reader(drive_name)
                arrays = r.fields(frame, image=image)
                meta.update(sequence=drive_name, frame=frame, **camera_meta(r, frame))
            else:
                without_raw += 1
                arrays = {"image": resize_image(image, self.height, self.width)}
            arrays["label"] = read_label(
                self.semantics / "semantic" / name, sample, self.height, self.width, self.label_interpolation
            )
            writer.add(arrays, meta)
        return without_raw


def stored_fields(height: int, width: int) -> dict[str, tuple[int, ...]]:
    """Every field a real KITTI sample may carry, for the writer's declaration of optional fields
    (``flow`` / ``dynamic`` only in a tree that has the GeoSem-only folders)."""
    plane = (height, width)
    return {
        "image": (*plane, 3),
        "right": (*plane, 3),
        "depth": plane,
        "depth_lidar": plane,
        "label": plane,
        "flow": (*plane, 2),
        "dynamic": plane,
    }


def write_eigen_protocol(writer: ShardWriter, layout: EigenLayout, bar: Any) -> None:
    """Pre-training drives, then the Eigen test frames, then the labelled images."""
    if layout.overlap:
        # A warning, not an error: the scenes are left out, and the manifest says which and how many.
        excluded = layout.report()["excluded_list_frames"]
        log.warning(
            "KITTI-2015 overlap: %d labelled-set drive(s) are %s pre-training drives and are left out of "
            "pre-training: %s",
            len(layout.overlap),
            layout.lists.train_list,
            "; ".join(
                f"{drive} ({len(ids)} labelled image(s), {excluded[drive]} list frames excluded)"
                for drive, ids in layout.overlap.items()
            ),
        )
    for name in layout.pretraining:
        layout.write_pretraining_drive(writer, name)
        bar.update(1)
    layout.write_eigen_test(writer)
    bar.update(1)
    without_raw = layout.write_labelled(writer)
    if without_raw:
        log.info(
            "%d labelled image(s) have no raw drive on disk (or none in the mapping): stored with image and "
            "label only",
            without_raw,
        )
    bar.update(1)
