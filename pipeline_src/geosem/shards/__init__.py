"""Sharded HDF5 + Parquet sample store: writer, reader, manifest and verification.

Layout of one shard set (one dataset, one preprocessing variant)::

    shards/<dataset>/<variant>/
        part-00000.h5 ...   one HDF5 file per ``samples_per_part`` samples, one chunk per sample and field
        index.parquet       one row per sample: id, split, sequence, frame, part, row, neighbours, flags, ...
        manifest.json       dataset, versions, parameters, label space, fields, sha256 (and, for parts,
                            size) of every file

The layout follows a measurement (docs/performance.md, section 3): uncompressed HDF5 with one chunk per
sample reads 13.8x faster than PNG files warm and 3.7x cold, while compression (lzf, gzip) gives back most
of that gain for a 2x smaller footprint.
"""

from geosem.shards.manifest import Manifest, read_manifest
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.shards.verify import ShardVerificationError, verify_shards
from geosem.shards.writer import DiskFullError, ShardWriter

__all__ = [
    "DiskFullError",
    "Manifest",
    "ShardDataset",
    "ShardSet",
    "ShardVerificationError",
    "ShardWriter",
    "read_manifest",
    "verify_shards",
]
