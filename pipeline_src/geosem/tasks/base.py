"""The interface every task implements, and the batch helpers tasks share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geosem.shards.reader import ShardDataset, ShardSet


@dataclass(frozen=True)
class Param:
    """One parameter a task declares: its default, what it means, and the JSON schema of its value."""

    default: Any
    description: str
    schema: dict[str, Any] = field(default_factory=dict)

    def json_schema(self) -> dict[str, Any]:
        return {**self.schema, "description": self.description, "default": self.default}


def param(default: Any, description: str, **schema: Any) -> Param:
    """``param(0.1, "Smallest depth (m)", type="number", exclusiveMinimum=0)``."""
    return Param(default, description, schema)


def declared_schema(
    parameters: dict[str, Param], doc: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The JSON schema (draft 2020-12) of a settings object holding ``parameters`` (plus ``extra``
    properties), described by the first line of ``doc``; no other key is allowed."""
    return {
        "type": "object",
        "additionalProperties": False,
        "description": doc.strip().splitlines()[0],
        "properties": {**(extra or {}), **{key: value.json_schema() for key, value in parameters.items()}},
    }


def resolve_declared(
    parameters: dict[str, Param], schema: dict[str, Any], values: dict[str, Any], where: str, owner: str
) -> dict[str, Any]:
    """``values`` checked against ``schema``, defaults of ``parameters`` filled in; an unknown key or a
    wrong value is an error naming ``where`` and the keys ``owner`` (e.g. "task 'depth_mono'") takes.
    Shared by the pre-training tasks and study B's auxiliary tasks."""
    import jsonschema  # only the planner and the settings checks need it

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(values), key=lambda error: list(error.path))
    if errors:
        problems = "; ".join(
            f"{'.'.join([where, *map(str, error.path)])}: {error.message}" for error in errors
        )
        known = ", ".join(sorted(parameters)) or "none"
        raise ValueError(f"{problems} ({owner} takes: {known})")
    return {key: value.default for key, value in parameters.items()} | dict(values)


# Parameters several tasks share.
MIN_DEPTH = param(
    0.1, "Smallest predictable depth in metres (disparity-to-depth range).", type="number", exclusiveMinimum=0
)
MAX_DEPTH = param(
    100.0,
    "Largest predictable depth in metres (disparity-to-depth range).",
    type="number",
    exclusiveMinimum=0,
)
HFLIP = param(True, "Random horizontal flips during training.", type="boolean")
ENCODER_INIT_RANDOM = param(
    "random",
    "Encoder start: random (from scratch, paper A's Depth-Rand) or imagenet (timm's weights, see "
    "pretrain.imagenet_weights).",
    type="string",
    enum=["random", "imagenet"],
)
ENCODER_INIT_IMAGENET = Param("imagenet", ENCODER_INIT_RANDOM.description, ENCODER_INIT_RANDOM.schema)


class Task(ABC):
    """A training objective: which fields it reads, the model it trains, its loss and its evaluation.

    ``parameters`` are the keys of the task's config entry (``pretrain.tasks.<init>``); the snapshot's
    ``task`` section holds them resolved, with ``name`` (the task) and, for pre-trainings, ``init``.
    """

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()
    parameters: ClassVar[dict[str, Param]] = {}
    # The shard split the task is evaluated on; None: the run's test split (data.test_split). A task
    # whose score needs something the test split lacks (flow: frame pairs) names its own
    # (``geosem.train.jobs.split_ids`` honours it and refuses a shard set without it).
    evaluation_split: ClassVar[str | None] = None

    @classmethod
    def parameter_schema(cls) -> dict[str, Any]:
        """The JSON schema (draft 2020-12) of one config entry of this task."""
        task_key = {"type": "string", "description": "The task module; empty: the entry's name."}
        return declared_schema(cls.parameters, cls.__doc__ or cls.name, {"task": task_key})

    @classmethod
    def resolve_parameters(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """``values`` validated against ``parameter_schema`` with every default filled in."""
        resolved = resolve_declared(
            cls.parameters, cls.parameter_schema(), values, where, f"task {cls.name!r}"
        )
        return {key: value for key, value in resolved.items() if key != "task"}

    def __init__(self, run: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.run = run
        self.device = torch.device(device)

    @abstractmethod
    def build_model(self) -> nn.Module: ...

    @abstractmethod
    def loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]: ...

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """Training augmentation; identity unless a task overrides it."""
        return sample

    def transfer_model(self, model: nn.Module) -> nn.Module:
        """The part of a trained model that a fine-tune starts from: a ``DenseModel`` (encoder, decoder,
        heads). Identity for tasks whose model is one; tasks with extra networks (the pose network of
        self-supervised depth) or a different decoder (flow) override it."""
        return model


def horizontal_flip(sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Flip every dense field of a sample together with probability 0.5 (the only augmentation of paper A)."""
    if rng.random() < 0.5:
        return {key: torch.flip(value, dims=(-1,)) for key, value in sample.items()}
    return sample


def iterate_batches(
    shards: ShardSet,
    ids: Sequence[str],
    fields: Sequence[str],
    batch_size: int,
    device: torch.device | str = "cpu",
) -> Iterator[dict[str, torch.Tensor]]:
    """Evaluation batches in a fixed order, without augmentation, on ``device``."""
    dataset = ShardDataset(shards, ids, fields)
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        yield {key: torch.stack([item[key] for item in items]).to(device) for key in items[0]}
