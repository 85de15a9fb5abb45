"""Read a shard set: the index for planning, a torch Dataset for training.

Each process (the main one and every DataLoader worker) opens its own HDF5 handles lazily; handles
are never shared across a fork, which HDF5 does not allow.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import Dataset

from geosem.shards.manifest import Manifest, read_manifest, sha256_of
from geosem.shards.verify import ShardVerificationError, check_shard_set


class MissingFieldError(KeyError):
    """A sample was asked for a field it does not carry (its index flag ``has_<field>`` is false), or a
    field its shard set does not hold at all. A KeyError, as before optional fields existed."""

    def __str__(self) -> str:  # KeyError would print the message quoted, as if it were the key
        return str(self.args[0]) if self.args else ""


class ShardSet:
    """A shard set on disk: its manifest, its index, and random access to one sample's arrays."""

    def __init__(self, shard_dir: Path) -> None:
        self.root = Path(shard_dir)
        self.manifest: Manifest = read_manifest(self.root)
        self.index: pd.DataFrame = self._read_index()
        self._row_of = {sample_id: i for i, sample_id in enumerate(self.index["id"])}
        self._handles: dict[str, h5py.File] = {}
        self._pid = os.getpid()

    def _read_index(self) -> pd.DataFrame:
        path = self.root / self.manifest.index_file
        try:
            return pq.read_table(path).to_pandas()
        except (OSError, pa.ArrowException) as error:
            # Say whether the file is still the one the converter wrote: a damaged copy, not a bug.
            state = "missing" if not path.is_file() else f"sha256 {sha256_of(path)}"
            raise ShardVerificationError(
                f"shard set {self.root}: cannot read its index ({error}):\n  {path}: {state}, manifest "
                f"says sha256 {self.manifest.index_sha256}\nRestore the set (dvc checkout / dvc pull) or "
                "convert it again"
            ) from error

    def check_manifest(self) -> None:
        """Refuse a set that no longer matches its manifest: part sizes and the index's sha256, no part
        read (``geosem.shards.verify.check_shard_set``), cheap enough for the start of every job."""
        check_shard_set(self.root, self.manifest)

    def __len__(self) -> int:
        return len(self.index)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        return state

    def _handle(self, part: str) -> h5py.File:
        if self._pid != os.getpid():  # forked into a worker: drop the parent's handles
            self._handles = {}
            self._pid = os.getpid()
        handle = self._handles.get(part)
        if handle is None:
            path = self.root / part
            if not path.is_file():
                raise FileNotFoundError(
                    f"shard part {path} listed in {self.root / 'index.parquet'} is missing"
                )
            handle = h5py.File(path, "r")
            self._handles[part] = handle
        return handle

    def ids(self, split: str | None = None, having: Sequence[str] = ()) -> list[str]:
        """Sample ids of ``split`` (None: all) in index order; ``having``: only samples whose
        ``has_<field>`` flag is true for every field named (e.g. a depth-supervised training set on
        real KITTI, whose first and last 5 frames of a drive have no annotated depth)."""
        keep = np.ones(len(self.index), dtype=bool)
        if split is not None:
            keep &= (self.index["split"] == split).to_numpy()
        for name in having:
            keep &= self.has(name)
        return self.index.loc[keep, "id"].tolist()

    def has(self, name: str) -> np.ndarray:
        """Per-sample flag (index order): does the sample carry stored field ``name``?"""
        column = f"has_{name}"
        if column not in self.index.columns:
            return np.zeros(len(self.index), dtype=bool)
        return self.index[column].fillna(False).to_numpy(dtype=bool)

    def row(self, sample_id: str) -> pd.Series:
        try:
            return self.index.iloc[self._row_of[sample_id]]
        except KeyError:
            raise KeyError(f"sample {sample_id!r} is not in shard set {self.root}") from None

    def read(self, sample_id: str, fields: Sequence[str]) -> dict[str, np.ndarray]:
        """Arrays of one sample; a field the sample lacks raises MissingFieldError (a KeyError) naming
        sample and field. Checked on the index before any part is opened: a lacking sample's row of the
        field is an unwritten chunk that HDF5 would read back as zeros."""
        row = self.row(sample_id)
        for name in fields:
            if not row.get(f"has_{name}", False):
                held = name in self.manifest.fields
                why = (
                    f"index column has_{name} is false: select samples with ShardSet.ids(..., "
                    f"having=[{name!r}]) or ShardDataset(..., skip_missing=True)"
                    if held
                    else f"the set holds no field {name!r} at all (fields: {sorted(self.manifest.fields)})"
                )
                where = f"sample {sample_id!r} (split {row['split']!r}) in {self.root}"
                raise MissingFieldError(f"{where} has no field {name!r}: {why}")
        handle = self._handle(row["part"])
        arrays = {}
        for name in fields:
            if name not in handle:
                raise MissingFieldError(
                    f"sample {sample_id!r} in {self.root}: field {name!r} is flagged present but "
                    f"{row['part']} holds no such dataset; run geosem verify {self.root}"
                )
            arrays[name] = handle[name][int(row["row"])]
        return arrays

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}


def _present(value: Any) -> bool:
    return isinstance(value, str) and value != ""


def _intrinsics(shards: ShardSet, row: pd.Series) -> torch.Tensor:
    return torch.tensor(
        [[row["fx"], 0.0, row["cx"]], [0.0, row["fy"], row["cy"]], [0.0, 0.0, 1.0]], dtype=torch.float32
    )


def _relative_pose(neighbour: str) -> Callable[[ShardSet, pd.Series], torch.Tensor]:
    """Ground-truth ``src_from_dst`` = inv(P_src) @ P_dst: this frame's camera points into the neighbour's."""

    def read(shards: ShardSet, row: pd.Series) -> torch.Tensor:
        dst = np.asarray(row["pose"], dtype=np.float64).reshape(4, 4)
        src = np.asarray(shards.row(row[neighbour])["pose"], dtype=np.float64).reshape(4, 4)
        return torch.from_numpy(np.linalg.inv(src) @ dst).float()

    return read


# Fields a sample can carry besides the stored arrays. "<field>_prev" / "<field>_next" read a stored field
# of the sequence neighbour (index columns prev_id / next_id); the others come from the index row.
_NEIGHBOUR_COLUMNS = {"_prev": "prev_id", "_next": "next_id"}
_INDEX_FIELDS: dict[str, Callable[[ShardSet, pd.Series], torch.Tensor]] = {
    "K": _intrinsics,
    "baseline": lambda shards, row: torch.tensor(float(row["baseline"]), dtype=torch.float32),
    "pose_to_prev": _relative_pose("prev_id"),
    "pose_to_next": _relative_pose("next_id"),
}

Transform = Callable[[dict[str, torch.Tensor], np.random.Generator], dict[str, torch.Tensor]]


class ShardDataset(Dataset):
    """A torch Dataset over some samples of a shard set, returning CHW float images and HW targets.

    ``image`` becomes float32 in [0, 1] CHW, ``depth`` float32 HW, ``label`` int64 HW. Context fields:
    ``image_prev`` / ``image_next`` (any stored field + ``_prev`` / ``_next``: the sequence neighbour's,
    samples without that neighbour are dropped from ``ids``), ``K`` (3x3 intrinsics), ``baseline`` and
    ``pose_to_prev`` / ``pose_to_next`` (4x4 ground-truth transforms of this camera's points into the
    neighbour's camera). ``skip_missing``: leave out samples lacking a stored field that is read (their
    own, or a neighbour's for ``*_prev`` / ``*_next``; index flags ``has_<field>``) instead of failing
    when one is read (``MissingFieldError``). A key is an index
    or ``(index, draw)``; the transform gets a generator seeded from (seed, draw), so augmentation is
    reproducible whatever the worker count or resume point (the loop numbers every sample draw).
    """

    def __init__(
        self,
        shards: ShardSet | Path,
        ids: Sequence[str],
        fields: Sequence[str] = ("image", "label"),
        transform: Transform | None = None,
        seed: int = 0,
        skip_missing: bool = False,
    ) -> None:
        self.shards = shards if isinstance(shards, ShardSet) else ShardSet(shards)
        self.fields = tuple(fields)
        self.transform = transform
        self.seed = seed
        # Samples lacking a neighbour that a context field needs (the first / last frame of a sequence)
        # are left out here, so every task sees only samples it can use (monodepth2 trains on triplets).
        needed = [
            column for suffix, column in _NEIGHBOUR_COLUMNS.items() if any(f.endswith(suffix) for f in fields)
        ]
        self.ids = [i for i in ids if all(_present(self.shards.row(i)[c]) for c in needed)]
        if skip_missing:
            self.ids = [i for i in self.ids if self._carries(i)]

    def _carries(self, sample_id: str) -> bool:
        """Whether the sample (and the neighbours its context fields read) carries every stored field."""
        row = self.shards.row(sample_id)
        for name in self.fields:
            if name in _INDEX_FIELDS:
                continue
            owner, stored = row, name
            for suffix, column in _NEIGHBOUR_COLUMNS.items():
                if name.endswith(suffix):
                    owner, stored = self.shards.row(row[column]), name[: -len(suffix)]
            if not owner.get(f"has_{stored}", False):
                return False
        return True

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = key if isinstance(key, tuple) else (key, key)
        sample_id = self.ids[index]
        stored = [
            f for f in self.fields if f not in _INDEX_FIELDS and not f.endswith(tuple(_NEIGHBOUR_COLUMNS))
        ]
        arrays = self.shards.read(sample_id, stored)
        row = self.shards.row(sample_id)
        for name in self.fields:
            for suffix, column in _NEIGHBOUR_COLUMNS.items():
                if name.endswith(suffix) and name not in _INDEX_FIELDS:
                    stored_name = name[: -len(suffix)]
                    arrays[name] = self.shards.read(row[column], [stored_name])[stored_name]
        sample: dict[str, torch.Tensor] = {}
        for name in self.fields:
            if name in _INDEX_FIELDS:
                sample[name] = _INDEX_FIELDS[name](self.shards, row)
        for name, value in arrays.items():
            if name in ("image", "right") or name.startswith(("image_", "right_")):
                sample[name] = torch.from_numpy(value).permute(2, 0, 1).float().div_(255.0)
            elif name == "label":
                sample[name] = torch.from_numpy(value.astype(np.int64))
            else:
                sample[name] = torch.from_numpy(np.asarray(value, dtype=np.float32))
        if self.transform is not None:
            rng = np.random.default_rng([self.seed, draw])
            sample = self.transform(sample, rng)
        return sample
