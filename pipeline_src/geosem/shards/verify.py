"""Check a shard set against its manifest: every file present, every checksum and row count right."""

from __future__ import annotations

from pathlib import Path

import h5py
import pyarrow.parquet as pq

from geosem.shards.manifest import read_manifest, sha256_of


class ShardVerificationError(RuntimeError):
    """A shard set does not match its manifest; the message lists every problem found."""


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
