"""Multi-label dense classification (MLDC), paper B's auxiliary task 2.

Paper B (section 3): from the segmentation outputs y_s and labels of an image, y_c = 1/(HW) sum_ij
y_s,ij is the spatial average of the per-pixel class distribution, the target is the set of classes
present in the label image, and the loss is the binary cross-entropy between the two. Here:

* y_s is the per-pixel softmax over the K classes of the head's logits (B, K, H, W), so y_c (B, K) is in
  [0, 1] as a BCE input must be.
* ``pixels``: "all" (default) averages over every pixel, H x W, exactly as the paper's formula reads;
  "valid" averages over the labelled (non-255) pixels only, so unlabelled regions (void, padding) do not
  dilute the distribution.
* The target is the multi-hot vector (B, K) of the train ids present in the image, 255 ignored.
* BCE is the mean over the B x K entries of -(t ln y + (1 - t) ln(1 - y)), with y clamped to
  [eps, 1 - eps] (eps 1e-6 by default): an average softmax can reach 0 or 1 in floating point (a class
  covering every pixel, or none), where the log is infinite; the clamp caps an entry's loss at
  -ln(eps) = 13.8. (torch's own binary_cross_entropy clamps the log at -100 instead, and refuses to run
  under autocast; this one is computed in float32 whatever the output's dtype.)
* Images without a single labelled pixel carry no class to learn and are left out of the mean; a batch
  of such images gives a zero loss.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from geosem.auxtasks import register_aux_task
from geosem.auxtasks.base import (
    LABEL_FIELD,
    AuxTask,
    averaged_softmax,
    checked_labels,
    labelled_images,
    zero_loss,
)
from geosem.labelspaces import IGNORE_INDEX
from geosem.tasks.base import Param, param

PIXELS = param(
    "all",
    "Pixels the softmax is averaged over: all (H x W, paper B's formula) or valid (labelled pixels only).",
    type="string",
    enum=["all", "valid"],
)
EPS = param(1e-6, "Clamp of the averaged probabilities to [eps, 1 - eps] before the log.", type="number")


def present_classes(labels: Tensor, num_classes: int) -> Tensor:
    """Multi-hot (B, K) float: 1 where train id k occurs in image b; ``IGNORE_INDEX`` pixels ignored."""
    flat = labels.flatten(1).clone()
    flat[flat == IGNORE_INDEX] = num_classes  # an extra bin, dropped below
    hot = torch.zeros(labels.shape[0], num_classes + 1, device=labels.device, dtype=torch.float32)
    hot.scatter_(1, flat, 1.0)
    return hot[:, :num_classes]


def binary_cross_entropy(probabilities: Tensor, target: Tensor, eps: float) -> Tensor:
    """Mean BCE of ``probabilities`` against ``target`` (same shape), in float32, log-safe by clamping."""
    p = probabilities.float().clamp(eps, 1.0 - eps)
    return -(target * torch.log(p) + (1.0 - target) * torch.log1p(-p)).mean()


@register_aux_task("mldc")
class MultiLabelDenseClassification(AuxTask):
    """MLDC: BCE between the spatially averaged softmax and the multi-hot vector of present classes."""

    parameters: ClassVar[dict[str, Param]] = {"pixels": PIXELS, "eps": EPS}

    def out_channels(self, num_classes: int) -> int:
        return num_classes

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        labels = checked_labels(self.name, batch[LABEL_FIELD], output.shape[1])
        self.check_output(output, labels)
        keep = labelled_images(labels)
        if not bool(keep.any()):
            loss = zero_loss(output)
            return loss, {f"{self.name}_loss": 0.0, f"{self.name}_images": 0.0}
        averaged = averaged_softmax(output[keep], labels[keep], self.params["pixels"])
        loss = self.image_loss(averaged, labels[keep])
        return loss, {f"{self.name}_loss": float(loss.detach()), f"{self.name}_images": float(keep.sum())}

    def image_loss(self, averaged: Tensor, labels: Tensor) -> Tensor:
        """The loss of the per-image class distributions ``averaged`` (B, K) against ``labels``."""
        target = present_classes(labels, averaged.shape[1])
        return binary_cross_entropy(averaged, target, self.params["eps"])
