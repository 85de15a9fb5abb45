"""Supervised semantic segmentation as a pre-training (paper A, Table 4 "Supervised Segmentation").

The dense model (encoder + decoder + a full-resolution classifier) is trained for segmentation on a
*different* labelled dataset than the fine-tuning target, in that dataset's own label space, and then
transferred like every other init: encoder and decoder are kept and the fine-tune replaces the
classifier, since the two class spaces differ. The paper trained on MS-COCO; here the task parameter
``dataset`` names the dataset (default the embedded ADE20K-like world ``synth_ade``, 150 classes). At
full scale it is COCO-Stuff (``coco_stuff``, 171 classes; set ``dataset: coco_stuff``): the planner
reports a row that would pre-train on a synthetic world for a real-data study unavailable instead of
using the world as a stand-in.

A task parameter named ``dataset`` is how any task says "I train on another dataset than data.dataset"
(``geosem.studies.inits``): the planner plans that dataset's shard set at the pre-training resolution,
gives the run its data section (label space, classes) and a run id naming it, and writes the class count
into the task section (``num_classes``), because a fine-tune rebuilds this model from the init's task and
model sections alone before it swaps the head.

Model, loss (cross-entropy ignoring 255) and augmentation (flips) are the fine-tuning task's
(``geosem.tasks.segmentation``); the score is the dataset-level mIoU on the pre-training dataset's own
test split.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from geosem.metrics.segmentation import ConfusionMatrix
from geosem.models import build_dense_model
from geosem.shards.reader import ShardSet
from geosem.tasks import register_task
from geosem.tasks.base import ENCODER_INIT_RANDOM, HFLIP, Param, iterate_batches, param
from geosem.tasks.segmentation import Segmentation

# The pre-training classifier has the fine-tuning classifier's default shape (3x3, reflection padded), so
# that the layer the fine-tune replaces is the same kind of layer for every init.
PRETRAIN_HEAD_KERNEL = 3


@register_task("supervised_segmentation")
class SupervisedSegmentation(Segmentation):
    """Supervised segmentation on another labelled dataset (its own classes), transferred to the target."""

    # What the paper trained on, for the planner's message when a study on real data would otherwise
    # pre-train on an embedded world (a stand-in): paper A used MS-COCO; COCO-Stuff has its images.
    paper_dataset: ClassVar[str] = "coco_stuff"
    parameters: ClassVar[dict[str, Param]] = {
        "dataset": param(
            "synth_ade",
            "Labelled dataset to train on (`geosem datasets`), not the fine-tuning target; its own label "
            "space and classes. Paper A: MS-COCO, i.e. coco_stuff on real data.",
            type="string",
            pattern="^[A-Za-z0-9_]+$",
        ),
        "hflip": HFLIP,
        "encoder_init": ENCODER_INIT_RANDOM,
    }

    def build_model(self) -> nn.Module:
        params = self.params
        if "num_classes" not in params:
            raise ValueError(
                f"task {self.name!r} has no num_classes: the planner writes the class count of "
                f"{params.get('dataset')!r} into the task section"
            )
        data = self.run.get("data")  # absent when a fine-tune rebuilds this model from its init section
        if data is not None and (data["dataset"], data["num_classes"]) != (
            params["dataset"],
            params["num_classes"],
        ):
            raise ValueError(
                f"task {self.name!r} trains on {params['dataset']!r} ({params['num_classes']} classes) but "
                f"the run's data is {data['dataset']!r} ({data['num_classes']} classes)"
            )
        if params["encoder_init"] not in ("random", "imagenet"):
            raise ValueError(
                f"task.encoder_init must be 'random' or 'imagenet', got {params['encoder_init']!r}"
            )
        return build_dense_model(
            self.run["model"]["encoder"],
            params["num_classes"],
            decoder_channels=tuple(self.run["model"]["decoder_channels"]),
            head_scales=(0,),
            head_kernel=PRETRAIN_HEAD_KERNEL,
            pretrained_encoder=params["encoder_init"] == "imagenet",
            weights_file=params.get("weights_file"),
        )

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        """Dataset-level confusion-matrix scores on the pre-training dataset's test split. Not the seed
        code's per-image 8-class mIoU, whose classes are Cityscapes train ids and mean nothing here."""
        model.eval()
        matrix = ConfusionMatrix(self.params["num_classes"])
        batches = iterate_batches(shards, ids, self.fields, self.run["evaluation"]["batch_size"], self.device)
        for batch in batches:
            matrix.update(model(batch["image"])[0].argmax(dim=1).cpu(), batch["label"].cpu())
        scores = matrix.scores()
        return {
            "test_miou": scores["miou"],
            "test_pixel_accuracy": scores["pixel_accuracy"],
            "test_per_class_iou": scores["per_class_iou"],
            "test_scored_classes": scores["scored_classes"],
        }
