"""Semantic segmentation as an auxiliary task (paper B, section 3, task 1): per-pixel cross-entropy."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from geosem.auxtasks import register_aux_task
from geosem.auxtasks.base import LABEL_FIELD, AuxTask, checked_labels, labelled_images, zero_loss
from geosem.labelspaces import IGNORE_INDEX


@register_aux_task("segmentation")
class Segmentation(AuxTask):
    """Semantic segmentation: cross-entropy of the logits (B, K, H, W) over the labelled pixels.

    Pixels labelled ``IGNORE_INDEX`` (255) take no part; the loss is the mean over the labelled pixels of
    the whole batch (torch's ``cross_entropy`` with ``ignore_index``). A batch without any labelled
    pixel gives a zero loss (zero gradients) rather than NaN.
    """

    def out_channels(self, num_classes: int) -> int:
        return num_classes

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        labels = checked_labels(self.name, batch[LABEL_FIELD], output.shape[1])
        self.check_output(output, labels)
        if not bool(labelled_images(labels).any()):
            loss = zero_loss(output)
        else:
            loss = F.cross_entropy(output, labels, ignore_index=IGNORE_INDEX)
        return loss, {f"{self.name}_loss": float(loss.detach())}
