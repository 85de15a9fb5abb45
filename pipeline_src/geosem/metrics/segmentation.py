"""Semantic segmentation metrics from one dataset-level confusion matrix.

Definitions (GeoSem default, as the papers describe and the Cityscapes benchmark computes them):

* The confusion matrix ``C[g, p]`` counts pixels of ground-truth class ``g`` predicted as ``p`` over
  the whole test split; pixels labelled ``ignore_index`` (255) are not counted.
* ``IoU_c = C[c, c] / (sum_p C[c, p] + sum_g C[g, c] - C[c, c])``.
* A class absent from both ground truth and prediction has an undefined IoU (0/0). It is reported as
  ``None`` and left out of the mean: absent classes are handled explicitly, not scored 0 or 1.
  A class present in the prediction only, or the ground truth only, scores 0.
* ``mIoU`` = mean of the defined IoUs; ``pixel accuracy`` = trace / total counted pixels.

The seed code of study A averages per-image IoUs over 8 of its classes instead (docs/protocols.md 1.4);
that definition is not used here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geosem.labelspaces import IGNORE_INDEX


class ConfusionMatrix:
    """A ``num_classes x num_classes`` confusion matrix: rows ground truth, columns prediction."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, prediction: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        pred = torch.as_tensor(prediction).reshape(-1).long()
        gt = torch.as_tensor(target).reshape(-1).long()
        if pred.shape != gt.shape:
            raise ValueError(f"prediction has {pred.numel()} pixels, target {gt.numel()}")
        keep = gt != self.ignore_index
        pred, gt = pred[keep], gt[keep]
        if gt.numel() and (int(gt.max()) >= self.num_classes or int(gt.min()) < 0):
            raise ValueError(
                f"target holds class ids outside [0, {self.num_classes}) other than {self.ignore_index}"
            )
        if pred.numel() and (int(pred.max()) >= self.num_classes or int(pred.min()) < 0):
            raise ValueError(f"prediction holds class ids outside [0, {self.num_classes})")
        counts = torch.bincount(gt * self.num_classes + pred, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes).cpu().numpy()

    def scores(self) -> dict[str, Any]:
        return segmentation_scores(self.matrix)


def segmentation_scores(matrix: np.ndarray) -> dict[str, Any]:
    """mIoU, pixel accuracy and per-class IoU (None where undefined) of a confusion matrix."""
    matrix = np.asarray(matrix, dtype=np.float64)
    true_positive = np.diag(matrix)
    union = matrix.sum(axis=0) + matrix.sum(axis=1) - true_positive
    defined = union > 0
    iou = np.full(len(matrix), np.nan)
    iou[defined] = true_positive[defined] / union[defined]
    total = matrix.sum()
    return {
        "miou": float(np.mean(iou[defined])) if defined.any() else float("nan"),
        "pixel_accuracy": float(true_positive.sum() / total) if total > 0 else float("nan"),
        "per_class_iou": [None if np.isnan(value) else float(value) for value in iou],
        "scored_classes": int(defined.sum()),
    }
