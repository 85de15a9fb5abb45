"""Write a shard set atomically: parts, index and manifest appear together or not at all.

Array fields of a sample (``ARRAY_FIELDS``; absent ones are omitted, never faked):

* ``image``, ``right``: uint8 HxWx3 RGB of the (left) camera and of its rectified stereo partner.
* ``depth``: float32 HxW z-depth in metres of the left camera, 0 = invalid (dense or semi-dense GT).
* ``depth_lidar``: float32 HxW, the sparse lidar scan projected into the left camera (metres, nearest
  return per pixel), 0 = no return.
* ``label``: uint8 HxW train ids of the dataset's label space, 255 = ignore.
* ``flow``: float32 HxWx2 forward optical flow (u, v) in pixels from this frame to the next (``next_id``),
  NaN where it does not exist.
* ``dynamic``: uint8 HxW, 1 on pixels of independently moving objects.

Index columns (``INDEX_COLUMNS``, one row per sample): id, split, sequence, frame, sequence neighbours
``prev_id``/``next_id`` (ids, not copies), intrinsics ``fx fy cx cy`` at the stored resolution,
``baseline`` (m) of the stereo pair; plus ``pose`` (camera-to-world, 16 floats), ``has_<field>`` flags,
the part file and row, and per-class pixel counts.

Optional fields, where a converter declares them (``ShardWriter(fields=...)``): a sample may lack a field
of its set (a real KITTI frame without annotated depth, a raw frame without a label). Its ``has_<field>``
flag is then false and its row of that field's HDF5 dataset is never written: the chunk stays unallocated
(no bytes on disk; HDF5 reads it back as zeros, which no reader returns, ``ShardSet.read`` refuses it).
Every part still holds every field of the manifest with one row per sample, so the manifest's row counts
hold for every field. Without a declaration every sample must carry the same fields (all flags true), and
such a set is written exactly as before optional fields existed (same bytes).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geosem.atomic import swap_in
from geosem.labelspaces import IGNORE_INDEX, class_names
from geosem.shards.manifest import INDEX_NAME, MANIFEST_NAME, Manifest, PartEntry

# Array fields a sample may carry (design.md, "Sample schema"). Absent fields are omitted, never faked.
ARRAY_FIELDS: dict[str, np.dtype] = {
    "image": np.dtype(np.uint8),
    "right": np.dtype(np.uint8),
    "depth": np.dtype(np.float32),
    "depth_lidar": np.dtype(np.float32),
    "label": np.dtype(np.uint8),
    "flow": np.dtype(np.float32),
    "dynamic": np.dtype(np.uint8),
}

# Per-sample scalar metadata kept in the index rather than in HDF5, so that planning never opens a part.
INDEX_COLUMNS = ("id", "split", "sequence", "frame", "prev_id", "next_id", "fx", "fy", "cx", "cy", "baseline")


class DiskFullError(OSError):
    """The file system of a shard set ran out of space (ENOSPC) or quota (EDQUOT) while it was written."""


class ShardWriter:
    """Collects samples into HDF5 parts and writes index.parquet and manifest.json on close.

    Everything is written into a hidden staging directory beside the target and renamed into place by
    ``close()``; an exception inside the ``with`` block or in ``close()`` removes the staging directory,
    so a failed conversion never leaves a half-written shard set behind and keeps the previous one.

    Labels are checked against the label space here, for every converter: a train id that is neither a
    class of the space nor 255 (ignore) stops the conversion naming the sample and the id.
    """

    def __init__(
        self,
        out_dir: Path,
        *,
        dataset: str,
        variant: str,
        source_version: str,
        converter_version: str,
        label_space: str | None,
        parameters: dict[str, Any],
        samples_per_part: int = 256,
        fields: Mapping[str, Sequence[int]] | None = None,
    ) -> None:
        """``fields``: optional fields. None (every converter before real KITTI): every sample carries
        exactly the fields of the first one, and a sample that lacks one or adds one stops the conversion
        naming it (in a synthetic world a missing file is damage). A mapping declares the fields the set
        may hold, name -> per-sample shape (dtype from ``ARRAY_FIELDS``): each sample then carries any
        non-empty subset of them (``has_<field>`` false for the others), a field may first appear after
        parts were written (every part holds every declared field), and the manifest lists the declared
        fields that some sample carries."""
        self.out_dir = Path(out_dir)
        self.staging = self.out_dir.with_name(f".{self.out_dir.name}.tmp-{os.getpid()}")
        if self.staging.exists():
            shutil.rmtree(self.staging)
        self.staging.mkdir(parents=True)
        self.dataset = dataset
        self.variant = variant
        self.source_version = source_version
        self.converter_version = converter_version
        self.label_space = label_space
        self.classes = list(class_names(label_space)) if label_space else []
        self.parameters = parameters
        self.samples_per_part = samples_per_part
        self._buffer: list[dict[str, np.ndarray]] = []
        self._rows: list[dict[str, Any]] = []
        self._parts: list[PartEntry] = []
        self._fields: dict[str, dict[str, Any]] | None = None
        self._declared = fields is not None
        if fields is not None:
            unknown = sorted(set(fields) - set(ARRAY_FIELDS))
            if unknown:
                raise KeyError(
                    f"{self.out_dir}: unknown declared fields {unknown}; known {sorted(ARRAY_FIELDS)}"
                )
            self._fields = {
                name: {"dtype": str(ARRAY_FIELDS[name]), "shape": [int(side) for side in shape]}
                for name, shape in fields.items()
            }
        self._carried: set[str] = set()  # fields at least one sample carries: the manifest lists these
        self._ids: set[str] = set()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        try:
            self.close()
        except BaseException:
            shutil.rmtree(self.staging, ignore_errors=True)  # e.g. the disk filled up writing the index
            raise

    def add(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """Add one sample: ``arrays`` maps field names to arrays, ``meta`` holds the index columns."""
        sample_id = str(meta["id"])
        if sample_id in self._ids:
            raise ValueError(f"duplicate sample id {sample_id!r} in {self.out_dir}")
        unknown = set(arrays) - set(ARRAY_FIELDS)
        if unknown:
            raise KeyError(
                f"sample {sample_id!r}: unknown fields {sorted(unknown)}; known {sorted(ARRAY_FIELDS)}"
            )
        checked = {
            name: np.ascontiguousarray(value, dtype=ARRAY_FIELDS[name]) for name, value in arrays.items()
        }
        layout = {
            name: {"dtype": str(value.dtype), "shape": list(value.shape)} for name, value in checked.items()
        }
        if not layout:
            raise ValueError(f"sample {sample_id!r} in {self.out_dir} carries no array field")
        if self._fields is None:
            self._fields = layout
        else:
            self._check_layout(sample_id, layout)
        self._carried.update(layout)
        counts: np.ndarray | None = None
        if "label" in checked and self.classes:
            counts = np.bincount(checked["label"].ravel(), minlength=IGNORE_INDEX + 1)
            self._check_label(sample_id, counts)
        self._ids.add(sample_id)
        row = {column: meta.get(column) for column in INDEX_COLUMNS}
        row["id"] = sample_id
        for name in ARRAY_FIELDS:
            row[f"has_{name}"] = name in checked
        row["pose"] = (
            None if meta.get("pose") is None else np.asarray(meta["pose"], np.float64).ravel().tolist()
        )
        if counts is not None:
            row["class_pixels"] = counts[: len(self.classes)].astype(np.int64).tolist()
        row["part"] = self._part_name(len(self._parts))
        row["row"] = len(self._buffer)
        self._rows.append(row)
        self._buffer.append(checked)
        if len(self._buffer) >= self.samples_per_part:
            self._flush()

    def _check_layout(self, sample_id: str, layout: dict[str, dict[str, Any]]) -> None:
        """Each field a sample carries has the set's dtype and shape (a variant has one resolution) and
        is a field of the set; without declared fields a sample also carries every field of the set."""
        assert self._fields is not None
        if not self._declared and layout != self._fields:
            lacking = sorted(set(self._fields) - set(layout))
            extra = sorted(set(layout) - set(self._fields))
            what = "".join(
                [
                    f", lacks {lacking}" if lacking else "",
                    f", adds {extra}" if extra else "",
                ]
            )
            raise ValueError(
                f"sample {sample_id!r} has fields {layout}{what}, but this shard set holds {self._fields}: "
                "a variant has one resolution and, unless the converter declares optional fields "
                "(ShardWriter(fields=...)), one set of fields"
            )
        extra = sorted(set(layout) - set(self._fields))
        if extra:
            raise ValueError(
                f"sample {sample_id!r} in {self.out_dir} carries field(s) {extra}, which this shard set was "
                f"not declared with ({sorted(self._fields)})"
            )
        for name, spec in layout.items():
            if spec != self._fields[name]:
                raise ValueError(
                    f"sample {sample_id!r} has field {name!r} as {spec}, but this shard set holds it as "
                    f"{self._fields[name]}: a variant has one resolution and one layout per field"
                )

    def _check_label(self, sample_id: str, counts: np.ndarray) -> None:
        """``counts``: pixels per train id of the sample's label (uint8, so ids 0..255)."""
        ids = np.flatnonzero(counts)
        bad = ids[(ids >= len(self.classes)) & (ids != IGNORE_INDEX)]
        if bad.size:
            raise ValueError(
                f"sample {sample_id!r} in {self.out_dir}: label holds train id(s) {bad.tolist()[:10]} "
                f"outside label space {self.label_space!r} (ids 0..{len(self.classes) - 1}, "
                f"{IGNORE_INDEX} = ignore)"
            )

    @staticmethod
    def _part_name(number: int) -> str:
        return f"part-{number:05d}.h5"

    def _write_file(self, path: Path, data: bytes | memoryview) -> None:
        """Write one file of the set with plain Python I/O, so a full disk is one clean ENOSPC naming it.

        HDF5 is never pointed at the disk: on ENOSPC it fails while closing the file and h5py then
        crashes the process with a segmentation fault (h5py/h5py#914), which would leave the staging
        folder behind and say nothing useful. Parts are built in memory instead (``_flush``).
        """
        try:
            with open(path, "wb") as handle:
                handle.write(data)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            full = "no space left on the device" if error.errno == errno.ENOSPC else "disk quota exceeded"
            free = shutil.disk_usage(self.staging).free
            raise DiskFullError(
                error.errno,
                f"disk full: {full} while writing shard set {self.out_dir} ({len(data)} bytes to write, "
                f"{free} bytes free on the device); the previous set there, if any, is untouched. Free "
                "space or write the set elsewhere, then convert again",
                str(path),
            ) from error

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = self._part_name(len(self._parts))
        assert self._fields is not None
        samples = len(self._buffer)
        # The part is built in memory (see _write_file). Each field leaves the buffer as it is stacked, so
        # the peak stays near one part's size. track_times=False keeps the bytes reproducible, so equal
        # inputs give equal checksums under DVC.
        image = io.BytesIO()
        with h5py.File(image, "w", track_order=False) as handle:
            for field_name, layout in self._fields.items():
                chunks = (1, *layout["shape"])
                present = [k for k, sample in enumerate(self._buffer) if field_name in sample]
                if len(present) == samples:
                    # Every sample carries it: the one call the format always made, so such sets keep
                    # their bytes (and their DVC checksums) whatever optional fields other sets have.
                    stacked = np.stack([sample.pop(field_name) for sample in self._buffer])
                    handle.create_dataset(field_name, data=stacked, chunks=chunks, track_times=False)
                    del stacked
                    continue
                # Some samples lack it: one row per sample all the same (row = the sample's row), but
                # only the carried rows are written, so the others' chunks are never allocated.
                dataset = handle.create_dataset(
                    field_name,
                    shape=(samples, *layout["shape"]),
                    dtype=layout["dtype"],
                    chunks=chunks,
                    fillvalue=0,
                    track_times=False,
                )
                for k in present:
                    dataset[k] = self._buffer[k].pop(field_name)
        self._buffer = []
        data = image.getbuffer()
        self._write_file(self.staging / name, data)
        self._parts.append(
            PartEntry(file=name, samples=samples, sha256=hashlib.sha256(data).hexdigest(), size=len(data))
        )
        del data
        image.close()

    def close(self) -> Path:
        """Write the last part, the index and the manifest, then move the set into place."""
        self._flush()
        if not self._rows:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise ValueError(f"no samples were added to {self.out_dir}")
        self._check_neighbours()
        frame = pd.DataFrame(self._rows)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        index = memoryview(sink.getvalue())
        self._write_file(self.staging / INDEX_NAME, index)
        manifest = Manifest(
            dataset=self.dataset,
            variant=self.variant,
            source_version=self.source_version,
            converter_version=self.converter_version,
            label_space=self.label_space,
            classes=self.classes,
            # Declared fields no sample carries are left out: readers test "field in manifest.fields"
            # for what a set holds (flow: "dynamic").
            fields={name: spec for name, spec in (self._fields or {}).items() if name in self._carried},
            parameters=self.parameters,
            num_samples=len(frame),
            splits={str(k): int(v) for k, v in frame["split"].value_counts().sort_index().items()},
            parts=self._parts,
            index_sha256=hashlib.sha256(index).hexdigest(),
        )
        self._write_file(self.staging / MANIFEST_NAME, manifest.to_json().encode())
        swap_in(self.staging, self.out_dir)
        return self.out_dir

    def _check_neighbours(self) -> None:
        """Every ``prev_id`` / ``next_id`` must be a sample of the set: readers of frame triplets follow
        them (``ShardDataset``'s ``*_prev`` / ``*_next`` fields); a dangling one would fail in training."""
        for row in self._rows:
            for column in ("prev_id", "next_id"):
                neighbour = row.get(column)
                if neighbour not in (None, "") and str(neighbour) not in self._ids:
                    raise ValueError(
                        f"sample {row['id']!r} in {self.out_dir}: its {column} {neighbour!r} is not a sample "
                        "of this shard set (was its frame missing from the source?)"
                    )
