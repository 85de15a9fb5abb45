"""Semantic segmentation fine-tuning from a pre-trained (or random) dense model.

Initialisation (paper A, Fig. 1b): the pre-trained encoder and decoder are kept and the depth head, the
network's last layer, is replaced by a classifier over the label space. Defaults follow the paper, not
the seed code (protocols.md 1.7): ``zero_grad`` every step (the loop), horizontal flips, labels stored
with NEAREST resizing (the converters), a seeded few-shot subset and a test split independent of N.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosem.labelspaces import IGNORE_INDEX
from geosem.metrics.segmentation import ConfusionMatrix
from geosem.models import build_dense_model
from geosem.shards.reader import ShardSet
from geosem.tasks import get_task, register_task
from geosem.tasks.base import Task, horizontal_flip, iterate_batches

# all: encoder and decoder from the init, new classifier, everything trained (paper A, Fig. 1b).
# frozen: as all, but the encoder gets no gradient and keeps its BatchNorm statistics (Fig. 4).
# encoder_only: encoder from the init, a fresh decoder and classifier (Table 3).
FINETUNE_MODES = ("all", "frozen", "encoder_only")


@register_task("segmentation")
class Segmentation(Task):
    fields = ("image", "label")

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> nn.Module:
        mode = self.params["mode"]
        if mode not in FINETUNE_MODES:
            raise ValueError(f"unknown fine-tuning mode {mode!r}; known: {FINETUNE_MODES}")
        model = self._initialised_model()
        if mode == "frozen":
            model.freeze_encoder()
        return model

    def _initialised_model(self) -> nn.Module:
        init = self.run["init"]
        num_classes = self.run["data"]["num_classes"]
        if init["name"] in ("random", "imagenet"):
            # imagenet: timm's ImageNet encoder from the local file the planner resolved, fresh decoder.
            model_cfg = self.run["model"]
            return build_dense_model(
                model_cfg["encoder"],
                num_classes,
                decoder_channels=tuple(model_cfg["decoder_channels"]),
                head_scales=(0,),
                head_kernel=self.params["classifier_kernel"],
                pretrained_encoder=init["name"] == "imagenet",
                weights_file=init.get("weights_file"),
            )
        # A pre-trained init: rebuild the pre-training architecture, load its weights exactly, then swap
        # the head. strict loading: a checkpoint that does not match the architecture is an error.
        checkpoint = Path(init["checkpoint"])
        if not checkpoint.is_file():
            raise FileNotFoundError(
                f"pre-trained model {checkpoint} of run {init['run_id']!r} is missing: "
                "run its pretrain job first"
            )
        pretrain_task = get_task(init["task"])(init["run"])
        model = pretrain_task.build_model()
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["model"]
        model.load_state_dict(state, strict=True)
        # Keep what transfers (encoder, decoder, heads); a pose network or a two-frame flow decoder stays.
        model = pretrain_task.transfer_model(model)
        if self.params["mode"] == "encoder_only":
            model.reset_decoder()
        model.replace_heads(num_classes, (0,), self.params["classifier_kernel"])
        return model

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["image"])[0]
        return F.cross_entropy(logits, batch["label"], ignore_index=IGNORE_INDEX), {}

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return horizontal_flip(sample, rng) if self.params["hflip"] else sample

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        model.eval()
        matrix = ConfusionMatrix(self.run["data"]["num_classes"])
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
