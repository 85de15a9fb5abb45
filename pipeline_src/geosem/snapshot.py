"""The run snapshot: its type, how it is read, written and digested, and shard-variant names.

A snapshot (``runs/<kind>/<run_id>/run.yaml``) is the fully resolved config of one training job and the
only config its trainer reads. The planner (``geosem.studies``) writes them; the trainers, aggregation
and analysis read them through this module and nothing else, so none of them depends on the planner.
Study B's runs (kind ``auxdepth``, ``AuxDepthSnapshot``) have sections of their own (backbone, depth,
aux, loop) in place of task, model, data and evaluation.

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

RUN_KINDS = ("pretrain", "finetune", "auxdepth")
SNAPSHOT_HEADER = (
    "# Resolved run snapshot written by the workflow: the only config this run's trainer reads.\n"
)


# The loop keys of pre-training and fine-tuning snapshots.
LOOP_KEYS = ("steps", "batch_size", "lr", "weight_decay", "lr_schedule", "eval_every", "checkpoint_every")


# Only a step schedule reads these: other snapshots leave them out, so adding them changed no run.
STEP_SCHEDULE_KEYS = ("lr_step_at", "lr_step_factor")


def loop_section(section: dict[str, Any]) -> dict[str, Any]:
    """A pre-training or fine-tuning snapshot's ``loop`` section from a config section holding its keys."""
    loop = {key: section[key] for key in LOOP_KEYS}
    if section["lr_schedule"] == "step":
        loop.update({key: section[key] for key in STEP_SCHEDULE_KEYS})
    return loop


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


class BackboneSection(TypedDict):
    """Study B's frozen backbone: a timm ViT name, its weights ("" = random init) and their key layout."""

    name: str
    weights: str
    layout: str
    kwargs: dict[str, Any]  # timm keyword arguments (a small test ViT: embed_dim, depth, num_heads)


class DepthDataSection(TypedDict):
    """Study B's depth dataset, its training subset, augmentation, range and evaluation."""

    dataset: str
    shards: str
    train_split: str
    test_split: str
    fraction: float  # < 1: a seeded, nested subset of the training ids
    crop: list[int]  # training crop (height, width); auxiliary images are resized to it
    augment: str
    min_depth: float
    max_depth: float
    eval_crop: str
    eval_max_depth: float
    flip_tta: bool


class AuxDatasetSection(TypedDict):
    dataset: str
    shards: str
    split: str
    num_classes: int


class AuxSection(TypedDict):
    """The auxiliary task (``none``: the baseline), its datasets (one head each) and the rate split."""

    task: str
    datasets: list[AuxDatasetSection]
    alpha: float
    beta: float | None  # set: the beta variant (depth steps unscaled, auxiliary steps x beta)


class AuxDepthSnapshot(TypedDict):
    """``runs/auxdepth/<run_id>/run.yaml``: one run of study B's alternating trainer."""

    run_id: str
    kind: str  # "auxdepth"
    seed: int
    backbone: BackboneSection
    depth: DepthDataSection
    aux: AuxSection
    loop: dict[str, Any]  # AUXDEPTH_SECTION_KEYS["loop"]
    compute: NotRequired[dict[str, Any]]  # num_workers
    decoder: NotRequired[dict[str, Any]]  # channels (default 256, DINOv2's DPTHead)


AUXDEPTH_REQUIRED_KEYS = ("aux", "backbone", "depth", "kind", "loop", "run_id", "seed")
# The keys each section of an auxdepth snapshot must carry (the trainer reads every one).
AUXDEPTH_SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "backbone": ("name", "weights", "layout", "kwargs"),
    "depth": (
        "dataset",
        "shards",
        "train_split",
        "test_split",
        "fraction",
        "crop",
        "augment",
        "min_depth",
        "max_depth",
        "eval_crop",
        "eval_max_depth",
        "flip_tta",
    ),
    "aux": ("task", "datasets", "alpha", "beta"),
    "loop": (
        "steps",
        "batch_size",
        "aux_batch_size",
        "lr",
        "head_lr",
        "gamma",
        "weight_decay",
        "warmup_steps",
        "grad_clip",
        "eval_every",
        "checkpoint_every",
        "gradient_loss",
        "gradient_weight",
    ),
}
AUX_DATASET_KEYS = ("dataset", "shards", "split", "num_classes")


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
    auxdepth = snapshot.get("kind") == "auxdepth"
    missing = [key for key in (AUXDEPTH_REQUIRED_KEYS if auxdepth else REQUIRED_KEYS) if key not in snapshot]
    if missing:
        raise ValueError(f"{where}: run snapshot {snapshot['run_id']!r} lacks key(s) {missing}")
    if snapshot["kind"] not in RUN_KINDS:
        raise ValueError(f"{where}: unknown run kind {snapshot['kind']!r}; known: {RUN_KINDS}")
    if snapshot["kind"] == "finetune" and "init" not in snapshot:
        raise ValueError(f"{where}: fine-tuning snapshot {snapshot['run_id']!r} has no init section")
    if auxdepth:
        _check_auxdepth_sections(snapshot, where)
    return snapshot  # type: ignore[return-value]


def _check_auxdepth_sections(snapshot: dict[str, Any], where: str) -> None:
    """Raise naming ``where`` and the section's missing keys unless every auxdepth section is whole."""
    run_id = snapshot["run_id"]
    for section, keys in AUXDEPTH_SECTION_KEYS.items():
        value = snapshot[section]
        if not isinstance(value, dict):
            raise ValueError(f"{where}: auxdepth snapshot {run_id!r}: {section} is not a mapping")
        missing = [key for key in keys if key not in value]
        if missing:
            raise ValueError(f"{where}: auxdepth snapshot {run_id!r}: {section} lacks key(s) {missing}")
    datasets = snapshot["aux"]["datasets"]
    if not isinstance(datasets, list):
        raise ValueError(f"{where}: auxdepth snapshot {run_id!r}: aux.datasets is not a list")
    for i, entry in enumerate(datasets):
        missing = [key for key in AUX_DATASET_KEYS if not isinstance(entry, dict) or key not in entry]
        if missing:
            raise ValueError(
                f"{where}: auxdepth snapshot {run_id!r}: aux.datasets[{i}] lacks key(s) {missing}"
            )


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


def read_auxdepth_snapshot(path: Path) -> AuxDepthSnapshot:
    """``read_snapshot`` of a study-B run; another kind is an error naming the file."""
    snapshot = read_snapshot(path)
    if snapshot["kind"] != "auxdepth":
        raise ValueError(f"{path} is a {snapshot['kind']} run snapshot, not auxdepth")
    return snapshot  # type: ignore[return-value]


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
