"""Semantic segmentation fine-tuning from a pre-trained (or random) dense model.

Initialisation (paper A, Fig. 1b): the pre-trained encoder and decoder are kept and the depth head, the
network's last layer, is replaced by a classifier over the label space. Defaults follow the paper, not
the seed code (docs/protocols.md 1.7): ``zero_grad`` every step (the loop), horizontal flips, labels stored
with NEAREST resizing (the converters), a seeded few-shot subset and a test split independent of N.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosem.labelspaces import IGNORE_INDEX
from geosem.metrics.legacy import LegacyScores
from geosem.metrics.segmentation import ConfusionMatrix
from geosem.models import build_deeplabv3, build_dense_model, create_encoder
from geosem.shards.reader import ShardSet
from geosem.tasks import get_task, register_task
from geosem.tasks.base import HFLIP, Param, Task, horizontal_flip, iterate_batches, param

# all: encoder and decoder from the init, new classifier, everything trained (paper A, Fig. 1b).
# frozen: as all, but the encoder gets no gradient and keeps its BatchNorm statistics (Fig. 4).
# encoder_only: encoder from the init, a fresh decoder and classifier (Table 3).
# deeplabv3: encoder from the init inside smp's DeepLabV3 (fresh ASPP head and classifier), the
#   cross-architecture transfer of Table 4 (geosem.models.deeplab: output stride 16, ASPP 6/12/18).
FINETUNE_MODES = ("all", "frozen", "encoder_only", "deeplabv3")


@register_task("segmentation")
class Segmentation(Task):
    """Semantic segmentation fine-tuning from a pre-trained, ImageNet or random init."""

    fields = ("image", "label")
    # The planner sets these from the study grid, the finetune section and the protocol.
    parameters: ClassVar[dict[str, Param]] = {
        "mode": param("all", "Fine-tuning mode.", type="string", enum=list(FINETUNE_MODES)),
        "hflip": HFLIP,
        "freeze": param(
            "full",
            "frozen mode: full (no gradient, BatchNorm in eval; the paper) or batchnorm "
            "(encoder.eval() only; the published code).",
            type="string",
            enum=["full", "batchnorm"],
        ),
        "metric": param(
            "dataset",
            "The scores tables read: dataset (one confusion matrix over the label space) or legacy (the "
            "published code's per-image mIoU over 8 classes).",
            type="string",
            enum=["dataset", "legacy"],
        ),
        "classifier_kernel": param(
            3, "Kernel of the classifier that replaces the depth head.", type="integer", enum=[1, 3]
        ),
    }

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> nn.Module:
        mode = self.params["mode"]
        if mode not in FINETUNE_MODES:
            raise ValueError(f"unknown fine-tuning mode {mode!r}; known: {FINETUNE_MODES}")
        model = self._initialised_model()
        if mode == "frozen":
            # "full": the paper's frozen encoder. "batchnorm": the seed code's ``encoder.eval()`` only, so
            # the encoder still trains and just its BatchNorm statistics stay fixed (legacy protocol).
            freeze = self.params.get("freeze", "full")
            if freeze not in ("full", "batchnorm"):
                raise ValueError(f"unknown task.freeze {freeze!r}; expected 'full' or 'batchnorm'")
            model.freeze_encoder(gradients=freeze == "batchnorm")
        return model

    def _initialised_model(self) -> nn.Module:
        init = self.run["init"]
        num_classes = self.run["data"]["num_classes"]
        deeplab = self.params["mode"] == "deeplabv3"
        if "checkpoint" not in init:
            # random, or encoder weights from a file the planner resolved (imagenet: timm's ImageNet
            # weights; an external init of pretrain.external: MoCo, DINO, ...), with a fresh decoder.
            pretrained = "weights_file" in init
            model_cfg = self.run["model"]
            if deeplab:
                encoder = create_encoder(
                    model_cfg["encoder"],
                    pretrained=pretrained,
                    weights_file=init.get("weights_file"),
                )
                return build_deeplabv3(encoder, num_classes)
            return build_dense_model(
                model_cfg["encoder"],
                num_classes,
                decoder_channels=tuple(model_cfg["decoder_channels"]),
                head_scales=(0,),
                head_kernel=self.params["classifier_kernel"],
                pretrained_encoder=pretrained,
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
        if deeplab:
            # Only the encoder crosses over: its tensors are copied one to one into smp's encoder.
            return build_deeplabv3(model.encoder, num_classes)
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
        """Both metrics on every evaluation: the dataset-level confusion-matrix scores (GeoSem's default)
        and the seed code's per-image mIoU over its 8 classes (``geosem.metrics.legacy``), suffixed
        ``_dataset`` and ``_legacy``; ``test_miou`` / ``test_pixel_accuracy`` repeat the pair that
        ``task.metric`` names, so tables and curves read one key whatever the protocol. The legacy scores
        are only meaningful in the cityscapes19 label space (its 8 classes are train ids)."""
        metric = self.params.get("metric", "dataset")
        if metric not in ("dataset", "legacy"):
            raise ValueError(f"unknown task.metric {metric!r}; expected 'dataset' or 'legacy'")
        model.eval()
        matrix = ConfusionMatrix(self.run["data"]["num_classes"])
        legacy = LegacyScores()
        batches = iterate_batches(shards, ids, self.fields, self.run["evaluation"]["batch_size"], self.device)
        for batch in batches:
            prediction = model(batch["image"])[0].argmax(dim=1).cpu()
            label = batch["label"].cpu()
            matrix.update(prediction, label)
            legacy.update(prediction.numpy(), label.numpy())
        scores = matrix.scores()
        legacy_scores = legacy.scores()
        results = {
            "test_miou_dataset": scores["miou"],
            "test_pixel_accuracy_dataset": scores["pixel_accuracy"],
            "test_miou_legacy": legacy_scores["miou"],
            "test_pixel_accuracy_legacy": legacy_scores["pixel_accuracy"],
            "test_per_class_iou": scores["per_class_iou"],
            "test_scored_classes": scores["scored_classes"],
        }
        results["test_miou"] = results[f"test_miou_{metric}"]
        results["test_pixel_accuracy"] = results[f"test_pixel_accuracy_{metric}"]
        return results
