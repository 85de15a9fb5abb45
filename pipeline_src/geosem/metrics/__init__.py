"""Metrics, one documented module per family: segmentation (confusion matrix) and depth."""

from geosem.metrics.depth import DEPTH_METRIC_NAMES, depth_metrics
from geosem.metrics.segmentation import ConfusionMatrix, segmentation_scores

__all__ = ["DEPTH_METRIC_NAMES", "ConfusionMatrix", "depth_metrics", "segmentation_scores"]
