"""The run snapshot: its type, how it is read, written and digested, and shard-variant names.

A snapshot (``runs/<kind>/<run_id>/run.yaml``) is the fully resolved config of one training job and the
only config its trainer reads. The planner (``geosem.studies``) writes them; the trainers, aggregation
and analysis read them through this module and nothing else, so none of them depends on the planner.

A shard variant names one preprocessing of a dataset, ``shards/<dataset>/<variant>/``: resolution,
converter version and the converter parameters that differ from their defaults. ``64x192-v3`` is a
version-3 converter at 64x192, ``64x192-v3-bicubic`` its legacy label resize, ``64x192-v3-p16`` 16
samples per part. A new converter version or another parameter value therefore writes a new folder next
to the old one and never overwrites a shard set (nor its DVC version) that earlier runs used.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NotRequired, TypedDict

import yaml

from geosem.atomic import atomic_write_text

RUN_KINDS = ("pretrain", "finetune")
SNAPSHOT_HEADER = (
    "# Resolved run snapshot written by the workflow: the only config this run's trainer reads.\n"
)


class DataSection(TypedDict):
    dataset: str
    variant: str
    shards: str
    height: int
    width: int
    label_space: str
    num_classes: int
    train_split: str
    test_split: str
    test_stride: int
    train_size: NotRequired[int]  # fine-tuning: labelled training images, 0 = all
    split_rule: NotRequired[str]  # fine-tuning: heldout (paper) or legacy (published code)


class InitSection(TypedDict):
    """Where a fine-tune's weights come from: ``random``, a weight file, or a pre-training run."""

    name: str
    weights_file: NotRequired[str]
    task: NotRequired[str]
    run_id: NotRequired[str]
    variant: NotRequired[str]
    height: NotRequired[int]  # the pre-training's resolution
    width: NotRequired[int]
    checkpoint: NotRequired[str]
    run: NotRequired[dict[str, Any]]  # the pre-training's model and task sections, to rebuild its model


class Snapshot(TypedDict):
    run_id: str
    kind: str  # one of RUN_KINDS
    seed: int
    task: dict[str, Any]  # name plus the task's parameters (geosem.tasks)
    model: dict[str, Any]
    data: DataSection
    loop: dict[str, Any]
    evaluation: dict[str, Any]
    compute: dict[str, Any]
    protocol: NotRequired[str]  # fine-tuning: paper or legacy
    init: NotRequired[InitSection]  # fine-tuning only


# Spelled out: with postponed annotations TypedDict cannot see NotRequired, so __required_keys__ lies.
REQUIRED_KEYS = ("compute", "data", "evaluation", "kind", "loop", "model", "run_id", "seed", "task")


def snapshot_digest(snapshot: Snapshot | dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a snapshot: a checkpoint records it, so a checkpoint written for
    another snapshot is never resumed."""
    return hashlib.sha256(json.dumps(snapshot, sort_keys=True).encode()).hexdigest()


def snapshot_json(snapshot: Snapshot | dict[str, Any]) -> str:
    """Canonical JSON: what the workflow passes as a rule's params, so an edit reruns exactly this run."""
    return json.dumps(snapshot, sort_keys=True)


def check_snapshot(snapshot: Any, where: str) -> Snapshot:
    """Raise naming ``where`` and the missing keys unless ``snapshot`` has a snapshot's shape."""
    if not isinstance(snapshot, dict) or "run_id" not in snapshot:
        raise ValueError(f"{where} is not a run snapshot (no run_id)")
    missing = [key for key in REQUIRED_KEYS if key not in snapshot]
    if missing:
        raise ValueError(f"{where}: run snapshot {snapshot['run_id']!r} lacks key(s) {missing}")
    if snapshot["kind"] not in RUN_KINDS:
        raise ValueError(f"{where}: unknown run kind {snapshot['kind']!r}; known: {RUN_KINDS}")
    if snapshot["kind"] == "finetune" and "init" not in snapshot:
        raise ValueError(f"{where}: fine-tuning snapshot {snapshot['run_id']!r} has no init section")
    return snapshot  # type: ignore[return-value]


def write_snapshot(snapshot: Snapshot | dict[str, Any], path: Path) -> None:
    """Write ``run.yaml`` atomically; its folder must be named by the run id."""
    path = Path(path)
    checked = check_snapshot(snapshot, str(path))
    if checked["run_id"] != path.parent.name:
        raise ValueError(f"snapshot run_id {checked['run_id']!r} does not match the folder of {path}")
    atomic_write_text(path, SNAPSHOT_HEADER + yaml.safe_dump(dict(checked), sort_keys=True))


def read_snapshot(path: Path) -> Snapshot:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"run snapshot {path} does not exist")
    return check_snapshot(yaml.safe_load(path.read_text()), str(path))


def resolution(section: DataSection | InitSection) -> str:
    """``64x192``: the height x width a data or init section records."""
    return f"{section['height']}x{section['width']}"


# Converter parameters a variant name spells out only when they differ from these defaults.
DEFAULT_SAMPLES_PER_PART = 256
DEFAULT_LABEL_INTERPOLATION = "nearest"
LABEL_INTERPOLATIONS = ("nearest", "bicubic")
# The Snakemake wildcard constraint of a variant (workflow/rules/common.smk imports it).
VARIANT_PATTERN = r"[0-9]+x[0-9]+-v[0-9A-Za-z.]+(-[A-Za-z0-9]+)*"
_VARIANT = re.compile(
    r"(?P<height>[0-9]+)x(?P<width>[0-9]+)-v(?P<version>[0-9A-Za-z.]+)"
    r"(?:-(?P<interpolation>[a-z]+))?(?:-p(?P<part>[0-9]+))?"
)


@dataclass(frozen=True)
class ShardVariant:
    """One preprocessing of a dataset, and the folder name that spells it out."""

    height: int
    width: int
    converter_version: str
    label_interpolation: str = DEFAULT_LABEL_INTERPOLATION
    samples_per_part: int = DEFAULT_SAMPLES_PER_PART

    @property
    def name(self) -> str:
        name = f"{self.height}x{self.width}-v{self.converter_version}"
        if self.label_interpolation != DEFAULT_LABEL_INTERPOLATION:
            name += f"-{self.label_interpolation}"
        if self.samples_per_part != DEFAULT_SAMPLES_PER_PART:
            name += f"-p{self.samples_per_part}"
        return name

    @classmethod
    def parse(cls, name: str) -> ShardVariant:
        match = _VARIANT.fullmatch(name)
        if match is None or (match["interpolation"] or "nearest") not in LABEL_INTERPOLATIONS:
            raise ValueError(
                f"{name!r} is not a shard variant name (HxW-v<version>[-bicubic][-p<samples per part>])"
            )
        return cls(
            height=int(match["height"]),
            width=int(match["width"]),
            converter_version=match["version"],
            label_interpolation=match["interpolation"] or DEFAULT_LABEL_INTERPOLATION,
            samples_per_part=int(match["part"] or DEFAULT_SAMPLES_PER_PART),
        )
