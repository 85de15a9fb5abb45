"""The interface every task implements, and the batch helpers tasks share."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geosem.shards.reader import ShardDataset, ShardSet


class Task(ABC):
    """A training objective: which fields it reads, the model it trains, its loss and its evaluation."""

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = ()

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
