"""Analyses of trained models beyond the test metrics (Grad-CAM activation maps, paper A Fig. 6)."""

from geosem.analysis.gradcam import GradcamFigure, gradcam_figure, segmentation_gradcam, shallow_layer

__all__ = ["GradcamFigure", "gradcam_figure", "segmentation_gradcam", "shallow_layer"]
