"""The manifest of a shard set: what it holds, where it came from, and the checksum of every file."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
INDEX_NAME = "index.parquet"
# Format 2 records each part's size in bytes (``PartEntry.size``), which the start-of-job check
# (``geosem.shards.verify.check_shard_set``) compares without reading the parts. Format 1 manifests (no
# sizes) stay readable; a format newer than this code is refused rather than half understood.
MANIFEST_FORMAT = 2


def sha256_of(path: Path, block_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks so multi-GB parts do not need to fit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(block_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class PartEntry:
    file: str
    samples: int
    sha256: str
    size: int | None = None  # bytes; None in a format 1 manifest


@dataclass
class Manifest:
    dataset: str
    variant: str
    source_version: str
    converter_version: str
    label_space: str | None
    classes: list[str]
    fields: dict[str, dict[str, Any]]
    parameters: dict[str, Any]
    num_samples: int
    splits: dict[str, int]
    parts: list[PartEntry] = field(default_factory=list)
    index_file: str = INDEX_NAME
    index_sha256: str = ""
    format: int = MANIFEST_FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Manifest:
        written = data.get("format", 1)
        if not isinstance(written, int) or written > MANIFEST_FORMAT:
            raise ValueError(
                f"manifest format {written!r} is newer than this GeoSem reads (up to {MANIFEST_FORMAT}): "
                "update GeoSem or convert the shard set again"
            )
        parts = [PartEntry(**entry) for entry in data.get("parts", [])]
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__ and k != "parts"}
        return cls(parts=parts, **known)


def read_manifest(shard_dir: Path) -> Manifest:
    """Read ``manifest.json`` of a shard set, naming the file when it is missing or malformed."""
    path = Path(shard_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"no shard manifest at {path}: is {shard_dir} a shard set (run the converter)?"
        )
    try:
        return Manifest.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as error:
        raise ValueError(f"malformed shard manifest {path}: {error}") from error
