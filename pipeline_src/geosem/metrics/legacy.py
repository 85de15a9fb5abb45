"""Study A's published-code metrics (DepthToSemantic ``train_utils.get_miou_and_pix_acc``), for comparison.

They differ from GeoSem's default (``geosem.metrics.segmentation``) on purpose and are used only under
the legacy protocol (docs/protocols.md 1.3-1.4). Translated to train ids (the seed code works in Cityscapes
label ids):

* Only 8 classes are scored: road, sidewalk, building, vegetation, terrain, sky, car, bicycle
  (label ids 7, 8, 11, 21, 22, 23, 26, 33).
* Per image: ``IoU_c = TP / (#pred == c + #gt == c - TP)``, where the predicted count includes pixels
  whose ground truth is ignore or an unscored class; 0/0 is NaN. The image's mIoU is the nan-mean over
  the 8 classes, and the final mIoU is the nan-mean over images (not a dataset-level confusion matrix).
* Pixel accuracy per image is ``#(pred == gt) / #(gt labelled)`` over all 19 trained classes, then
  averaged over images.
"""

from __future__ import annotations

import numpy as np

from geosem.labelspaces import IGNORE_INDEX

# Train ids of the seed code's 8 scored classes (label ids 7, 8, 11, 21, 22, 23, 26, 33).
LEGACY_SCORED_TRAIN_IDS = (0, 1, 2, 8, 9, 10, 13, 18)


class LegacyScores:
    """Accumulates the per-image legacy scores batch by batch, so an evaluation need not hold every
    prediction in memory; ``scores()`` gives what ``legacy_scores`` gives for all images at once."""

    def __init__(self) -> None:
        self.image_mious: list[float] = []
        self.image_accuracies: list[float] = []

    def update(self, predictions: np.ndarray, targets: np.ndarray) -> None:
        """Add the images of ``(N, H, W)`` (or one ``(H, W)``) prediction and target arrays."""
        predictions = np.asarray(predictions)
        targets = np.asarray(targets)
        if predictions.shape != targets.shape:
            raise ValueError(f"predictions {predictions.shape} and targets {targets.shape} differ in shape")
        if predictions.ndim == 2:
            predictions, targets = predictions[None], targets[None]
        for pred, gt in zip(predictions, targets, strict=True):
            ious = []
            for cls in LEGACY_SCORED_TRAIN_IDS:
                true_positive = np.sum((pred == cls) & (gt == cls))
                union = np.sum(pred == cls) + np.sum(gt == cls) - true_positive
                ious.append(true_positive / union if union > 0 else np.nan)
            self.image_mious.append(np.nanmean(ious) if not np.all(np.isnan(ious)) else np.nan)
            labelled = gt != IGNORE_INDEX
            if labelled.any():
                self.image_accuracies.append(np.sum((pred == gt) & labelled) / np.sum(labelled))

    def scores(self) -> dict[str, float]:
        mious, accuracies = self.image_mious, self.image_accuracies
        return {
            "miou": float(np.nanmean(mious)) if not np.all(np.isnan(mious)) else float("nan"),
            "pixel_accuracy": float(np.mean(accuracies)) if accuracies else float("nan"),
        }


def legacy_scores(predictions: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Per-image mIoU over the 8 legacy classes and per-image pixel accuracy of ``(N, H, W)`` arrays."""
    accumulator = LegacyScores()
    accumulator.update(predictions, targets)
    return accumulator.scores()
