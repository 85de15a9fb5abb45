"""The ``world`` protocol of the KITTI converter: splits by drive, as the synthetic driving world needs.

``train`` is every frame of every raw drive the labelled set's mapping does *not* name; ``test`` the
labelled images; ``heldout_video`` / ``heldout_context`` frame pairs of the drives the mapping names
(the package docstring). Byte for byte what converter version 3 wrote before the ``eigen`` protocol
existed: the embedded world's shard sets and their DVC versions stay valid.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from geosem.shards.writer import ShardWriter
from geosem.sources.common import read_rgb, resize_image
from geosem.sources.kitti.drive import DriveCache, DriveReader, camera_meta, read_label
from geosem.sources.kitti.files import find_drives, read_mapping

VIDEO_SPLIT = "heldout_video"
CONTEXT_SPLIT = "heldout_context"


class WorldLayout:
    """A checked KITTI tree: its drives, the labelled set and the mapping of labelled images to drives."""

    def __init__(self, root: Path, height: int, width: int, label_interpolation: str) -> None:
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
        self.cache = DriveCache(root, self.drives, height, width, label_interpolation)

    def reader(self, name: str) -> DriveReader:
        return self.cache.reader(name)

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
                **camera_meta(r, frame),
            }
            writer.add(r.fields(frame), meta)
        # A training drive's reader is not needed again: only held-out drives feed the labelled set.
        self.cache.release(name)

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
                    **camera_meta(r, r.frames[k]),
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
                meta.update(sequence=drive_name, frame=frame, **camera_meta(r, frame))
            arrays["label"] = read_label(
                label_path, sample, self.height, self.width, self.label_interpolation
            )
            writer.add(arrays, meta)


def write_world_protocol(writer: ShardWriter, layout: WorldLayout, video_frames: int, bar: object) -> None:
    """train drives, then the labelled set, then the held-out video (so train and test samples keep the
    part and row they had in converter version 2)."""
    train_drives = [name for name in layout.drives if name not in layout.heldout]
    for name in train_drives:
        layout.write_train_drive(writer, name)
        bar.update(1)  # type: ignore[attr-defined]
    layout.write_labelled_set(writer)
    bar.update(1)  # type: ignore[attr-defined]
    layout.write_heldout_video(writer, video_frames)
    bar.update(1)  # type: ignore[attr-defined]
