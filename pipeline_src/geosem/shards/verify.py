"""Check a shard set against its manifest.

Two depths:

* ``verify_shards`` (``geosem verify``, run by the workflow after each conversion): every file present,
  every sha256 and row count right. It reads every byte of the set.
* ``check_shard_set`` (every training job, before its first step): each part present with the size the
  manifest records, and the sha256 of the index. It never reads a part, so it costs a few ``stat`` calls
  and one hash of a small file however large the set is, and catches what usually goes wrong between
  conversion and training: a part truncated or appended to (a copy cut short, a full disk, another
  conversion half copied over), a part missing, an index rewritten. A byte flipped inside a part keeps
  its size and passes; finding that takes the full ``geosem verify``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import h5py
import pyarrow.parquet as pq

from geosem.shards.manifest import Manifest, read_manifest, sha256_of

log = logging.getLogger(__name__)


class ShardVerificationError(RuntimeError):
    """A shard set does not match its manifest; the message lists every problem found."""


def _size_problem(path: Path, size: int | None) -> str | None:
    actual = path.stat().st_size
    if size is None or actual == size:
        return None
    return f"{path}: {actual} bytes, manifest says {size} bytes"


def verify_shards(shard_dir: Path, check_rows: bool = True) -> int:
    """Verify a shard set and return its sample count; raise ShardVerificationError naming each fault."""
    shard_dir = Path(shard_dir)
    manifest = read_manifest(shard_dir)
    problems: list[str] = []

    index_path = shard_dir / manifest.index_file
    if not index_path.is_file():
        problems.append(f"{index_path}: missing")
    elif (actual := sha256_of(index_path)) != manifest.index_sha256:
        problems.append(f"{index_path}: sha256 {actual} != manifest {manifest.index_sha256}")

    for part in manifest.parts:
        path = shard_dir / part.file
        if not path.is_file():
            problems.append(f"{path}: missing")
            continue
        if (size := _size_problem(path, part.size)) is not None:
            problems.append(size)
        actual = sha256_of(path)
        if actual != part.sha256:
            problems.append(f"{path}: sha256 {actual} != manifest {part.sha256}")
            continue
        if check_rows:
            with h5py.File(path, "r") as handle:
                for name in manifest.fields:
                    if name not in handle:
                        problems.append(f"{path}: field {name!r} listed in the manifest is absent")
                    elif handle[name].shape[0] != part.samples:
                        problems.append(
                            f"{path}: field {name!r} has {handle[name].shape[0]} rows, "
                            f"manifest says {part.samples}"
                        )

    if not problems and index_path.is_file():
        index = pq.read_table(index_path, columns=["id", "part"]).to_pandas()
        if len(index) != manifest.num_samples:
            problems.append(f"{index_path}: {len(index)} rows, manifest says {manifest.num_samples} samples")
        if index["id"].duplicated().any():
            dupes = index.loc[index["id"].duplicated(), "id"].head(5).tolist()
            problems.append(f"{index_path}: duplicate sample ids {dupes}")
        listed = {part.file for part in manifest.parts}
        unknown = sorted(set(index["part"]) - listed)
        if unknown:
            problems.append(f"{index_path}: rows point at parts not in the manifest: {unknown}")

    if problems:
        raise ShardVerificationError(
            f"shard set {shard_dir} does not match its manifest:\n  " + "\n  ".join(problems)
        )
    return manifest.num_samples


def check_shard_set(shard_dir: Path, manifest: Manifest | None = None) -> None:
    """The cheap check a job runs before training: part sizes and the index's sha256, no part read.

    Raises ShardVerificationError naming the shard set, each file at fault and what differs.
    """
    shard_dir = Path(shard_dir)
    manifest = manifest or read_manifest(shard_dir)
    problems: list[str] = []
    index_path = shard_dir / manifest.index_file
    if not index_path.is_file():
        problems.append(f"{index_path}: missing")
    elif (actual := sha256_of(index_path)) != manifest.index_sha256:
        problems.append(f"{index_path}: sha256 {actual}, manifest says {manifest.index_sha256}")
    unsized = []
    for part in manifest.parts:
        path = shard_dir / part.file
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif part.size is None:
            unsized.append(part.file)
        elif (size := _size_problem(path, part.size)) is not None:
            problems.append(size)
    if unsized:
        # A format 1 manifest records no sizes: only presence can be checked without hashing the parts.
        log.warning(
            "%s: the manifest (format %s) records no part sizes, so %d part(s) were only checked to exist; "
            "convert the set again to get a manifest with sizes",
            shard_dir,
            manifest.format,
            len(unsized),
        )
    if problems:
        raise ShardVerificationError(
            f"shard set {shard_dir} no longer matches its manifest (checked before training: part sizes "
            "and the index's sha256):\n  " + "\n  ".join(problems) + "\n"
            f"Restore the set (dvc checkout / dvc pull) or convert it again; `geosem verify {shard_dir}` "
            "checks every checksum."
        )
