"""Single-label dense classification (SLDC), the variant of MLDC in paper B's Appendix C.1.

Paper B's main text says only that single-label dense classification also improves depth over the
baseline, less than MLDC, and defers the definition to Appendix C.1, whose text this project does not
hold. What is well defined from the main text is implemented: the same spatially averaged softmax y_c
(B, K) as MLDC (``geosem.auxtasks.mldc``), against one label per image instead of the set of present
classes, with the single-label counterpart of BCE, cross-entropy: -ln y_c[c]. The image's label c is
its dominant class, the train id covering the most labelled pixels (ties: the smallest id), the only
single label a segmentation map determines. The probability is clamped at eps (1e-6) below, as MLDC's;
images without a labelled pixel are left out of the mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from geosem.auxtasks import register_aux_task
from geosem.auxtasks.mldc import MultiLabelDenseClassification
from geosem.labelspaces import IGNORE_INDEX


def dominant_class(labels: Tensor, num_classes: int) -> Tensor:
    """(B,) int64: the most frequent labelled train id of each image (ties: the smallest id)."""
    flat = labels.flatten(1).clone()
    flat[flat == IGNORE_INDEX] = num_classes
    counts = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device, dtype=torch.int64)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts[:, :num_classes].argmax(dim=1)  # argmax returns the first maximum


@register_aux_task("sldc")
class SingleLabelDenseClassification(MultiLabelDenseClassification):
    """SLDC: cross-entropy between the spatially averaged softmax and the image's dominant class."""

    def image_loss(self, averaged: Tensor, labels: Tensor) -> Tensor:
        target = dominant_class(labels, averaged.shape[1])
        chosen = averaged.float().gather(1, target[:, None])[:, 0].clamp_min(self.params["eps"])
        return -torch.log(chosen).mean()
