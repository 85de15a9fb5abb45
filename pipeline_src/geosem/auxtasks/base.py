"""The interface of study B's auxiliary tasks, and the label helpers the label tasks share.

An auxiliary task is the objective of the auxiliary step of study B's alternating scheme (paper B,
eq. (5)): a dense head on the shared decoder predicts ``out_channels(num_classes)`` channels at the
auxiliary image's size, and ``loss`` compares them with the batch. The network itself is not the
task's business (the study's model holds one head per ``<task>.<dataset>``), so the interface is small:
which shard fields the task reads, how many channels its head predicts, and its loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor

from geosem.labelspaces import IGNORE_INDEX
from geosem.tasks.base import Param, declared_schema, resolve_declared

# The shard field holding train ids (geosem.shards.writer: uint8 HxW, 255 = ignore); ShardDataset hands
# it over as int64 (H, W).
LABEL_FIELD = "label"
IMAGE_FIELD = "image"


class AuxTask(ABC):
    """An auxiliary objective: the fields it reads, its head's channel count and its loss.

    ``parameters`` are the task's declared settings (``geosem.tasks.base.Param``, like the tasks of the
    pre-training zoo); an instance holds them resolved, defaults filled in, in ``self.params``.
    """

    name: ClassVar[str] = ""
    fields: ClassVar[tuple[str, ...]] = (IMAGE_FIELD, LABEL_FIELD)
    needs_labels: ClassVar[bool] = True
    parameters: ClassVar[dict[str, Param]] = {}

    def __init__(self, **values: Any) -> None:
        self.params = self.resolve_parameters(values, f"auxiliary task {self.name!r}")

    @classmethod
    def parameter_schema(cls) -> dict[str, Any]:
        """The JSON schema (draft 2020-12) of the task's settings."""
        return declared_schema(cls.parameters, cls.__doc__ or cls.name)

    @classmethod
    def resolve_parameters(cls, values: dict[str, Any], where: str) -> dict[str, Any]:
        """``values`` validated against ``parameter_schema``, every default filled in; an unknown key or
        a wrong value is an error naming ``where`` and the keys the task takes."""
        return resolve_declared(
            cls.parameters, cls.parameter_schema(), values, where, f"auxiliary task {cls.name!r}"
        )

    @abstractmethod
    def out_channels(self, num_classes: int) -> int:
        """Channels of the task's head for an auxiliary dataset of ``num_classes`` classes."""

    @abstractmethod
    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """The scalar loss of the head's ``output`` (B, C, H, W) on ``batch`` and what to log."""

    def check_output(self, output: Tensor, target: Tensor) -> None:
        """Refuse an output whose batch or spatial size differs from the target's (B, [C,] H, W)."""
        if output.ndim != 4 or output.shape[0] != target.shape[0] or output.shape[-2:] != target.shape[-2:]:
            raise ValueError(
                f"auxiliary task {self.name!r}: head output {tuple(output.shape)} does not match the "
                f"batch's {tuple(target.shape)}; predict (B, C, H, W) at the auxiliary image's size"
            )


def checked_labels(task: str, labels: Tensor, num_classes: int) -> Tensor:
    """``labels`` (B, H, W) as int64, refusing a train id that is neither a class (< ``num_classes``,
    the head's channel count) nor ``IGNORE_INDEX``: a head / label-space mismatch, named."""
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    labels = labels.long()
    bad = ((labels >= num_classes) & (labels != IGNORE_INDEX)) | (labels < 0)
    if bool(bad.any()):
        found = sorted({int(v) for v in labels[bad].unique()[:8]})
        raise ValueError(
            f"auxiliary task {task!r}: labels {found} outside the head's {num_classes} classes "
            f"(and not the ignore value {IGNORE_INDEX}); does the head match the dataset's label space?"
        )
    return labels


def averaged_softmax(logits: Tensor, labels: Tensor, pixels: str) -> Tensor:
    """Per-image class distribution (B, K): the per-pixel softmax averaged over the image.

    ``pixels`` "all": over every pixel (paper B's y_c = 1/(HW) sum_ij y_s,ij); "valid": over the
    labelled (non-ignore) pixels only. An image without a valid pixel gets zeros under "valid".
    """
    probabilities = torch.softmax(logits, dim=1)
    if pixels == "all":
        return probabilities.mean(dim=(-2, -1))
    if pixels != "valid":
        raise ValueError(f"pixels must be 'all' or 'valid', got {pixels!r}")
    weight = (labels != IGNORE_INDEX).to(probabilities.dtype)[:, None]
    total = (probabilities * weight).sum(dim=(-2, -1))
    return total / weight.sum(dim=(-2, -1)).clamp_min(1.0)


def labelled_images(labels: Tensor) -> Tensor:
    """(B,) bool: which images carry at least one labelled pixel (the others hold no class to learn)."""
    return (labels != IGNORE_INDEX).flatten(1).any(dim=1)


def zero_loss(output: Tensor) -> Tensor:
    """A zero loss attached to ``output``'s graph: a batch with nothing to learn still backpropagates
    (zero gradients) instead of failing or producing NaN."""
    return output.sum() * 0.0
