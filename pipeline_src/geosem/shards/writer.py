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
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from geosem.labelspaces import IGNORE_INDEX, class_names
from geosem.shards.manifest import INDEX_NAME, MANIFEST_NAME, Manifest, PartEntry, sha256_of

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


def replace_directory(staging: Path, final: Path) -> None:
    """Move a finished staging directory into place, replacing any previous version only once done."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if final.exists():
        retired = final.with_name(f".{final.name}.old-{os.getpid()}")
        os.replace(final, retired)
        os.replace(staging, final)
        shutil.rmtree(retired)
    else:
        os.replace(staging, final)


class ShardWriter:
    """Collects samples into HDF5 parts and writes index.parquet and manifest.json on close.

    Everything is written into a hidden staging directory beside the target and renamed into place by
    ``close()``; an exception inside the ``with`` block removes the staging directory, so a failed
    conversion never leaves a half-written shard set behind.
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
    ) -> None:
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
        self._ids: set[str] = set()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            shutil.rmtree(self.staging, ignore_errors=True)

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
        if self._fields is None:
            self._fields = layout
        elif layout != self._fields:
            raise ValueError(
                f"sample {sample_id!r} has fields {layout}, but this shard set holds {self._fields}: "
                "a variant has one resolution and one set of fields"
            )
        self._ids.add(sample_id)
        row = {column: meta.get(column) for column in INDEX_COLUMNS}
        row["id"] = sample_id
        for name in ARRAY_FIELDS:
            row[f"has_{name}"] = name in checked
        row["pose"] = (
            None if meta.get("pose") is None else np.asarray(meta["pose"], np.float64).ravel().tolist()
        )
        if "label" in checked and self.classes:
            counts = np.bincount(checked["label"].ravel(), minlength=IGNORE_INDEX + 1)
            row["class_pixels"] = counts[: len(self.classes)].astype(np.int64).tolist()
        row["part"] = self._part_name(len(self._parts))
        row["row"] = len(self._buffer)
        self._rows.append(row)
        self._buffer.append(checked)
        if len(self._buffer) >= self.samples_per_part:
            self._flush()

    @staticmethod
    def _part_name(number: int) -> str:
        return f"part-{number:05d}.h5"

    def _flush(self) -> None:
        if not self._buffer:
            return
        name = self._part_name(len(self._parts))
        path = self.staging / name
        assert self._fields is not None
        # track_times=False keeps the bytes reproducible, so equal inputs give equal checksums under DVC.
        with h5py.File(path, "w", track_order=False) as handle:
            for field_name, layout in self._fields.items():
                stacked = np.stack([sample[field_name] for sample in self._buffer])
                handle.create_dataset(
                    field_name,
                    data=stacked,
                    chunks=(1, *layout["shape"]),
                    track_times=False,
                )
        self._parts.append(PartEntry(file=name, samples=len(self._buffer), sha256=sha256_of(path)))
        self._buffer = []

    def close(self) -> Path:
        """Write the last part, the index and the manifest, then move the set into place."""
        self._flush()
        if not self._rows:
            shutil.rmtree(self.staging, ignore_errors=True)
            raise ValueError(f"no samples were added to {self.out_dir}")
        frame = pd.DataFrame(self._rows)
        table = pa.Table.from_pandas(frame, preserve_index=False)
        pq.write_table(table, self.staging / INDEX_NAME)
        manifest = Manifest(
            dataset=self.dataset,
            variant=self.variant,
            source_version=self.source_version,
            converter_version=self.converter_version,
            label_space=self.label_space,
            classes=self.classes,
            fields=self._fields or {},
            parameters=self.parameters,
            num_samples=len(frame),
            splits={str(k): int(v) for k, v in frame["split"].value_counts().sort_index().items()},
            parts=self._parts,
            index_sha256=sha256_of(self.staging / INDEX_NAME),
        )
        (self.staging / MANIFEST_NAME).write_text(manifest.to_json())
        replace_directory(self.staging, self.out_dir)
        return self.out_dir
