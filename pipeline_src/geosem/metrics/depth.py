"""Monocular depth metrics, computed per image on valid pixels and then averaged over images.

For ground truth ``g`` and prediction ``p`` on the valid pixels of one image (``min_depth < g < max_depth``
and inside the optional crop):

* abs_rel = mean(|g - p| / g); sq_rel = mean((g - p)^2 / g)
* rmse = sqrt(mean((g - p)^2)); rmse_log = sqrt(mean((ln g - ln p)^2))
* log10 = mean(|log10 g - log10 p|)
* silog = 100 * sqrt(mean(e^2) - mean(e)^2), e = ln p - ln g
* delta_k = mean(max(g / p, p / g) < 1.25^k), k = 1, 2, 3

Predictions are optionally median-scaled per image (``median(g) / median(p)``, for scale-ambiguous
self-supervised depth) and clamped to ``[min_depth, max_depth]`` before scoring, as monodepth2's
evaluation does (docs/protocols.md section 2). Per-image averaging means RMSE is a mean of per-image RMSEs.
"""

from __future__ import annotations

import numpy as np

DEPTH_METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog", "delta1", "delta2", "delta3")
# A depth evaluation reports each metric as ``depth_<name>`` under its mode's protocol (median-scaled or
# not) and ``depth_median_scaled_<name>`` after per-image median scaling whatever the mode.
MEDIAN_SCALED_PREFIX = "depth_median_scaled_"
# Scored regions as (top, bottom, left, right) fractions of the image. garg: the crop of Garg et al. that
# monodepth2's KITTI evaluation applies (rows 0.4081-0.9919, columns 0.0359-0.9641; docs/protocols.md 2).
# eigen_nyu: the Eigen crop of NYUv2's evaluation (DINOv2's, paper B's): rows 45:471 and columns 41:601 of
# the 480x640 image, as fractions (exact at 480x640: 45/480, 471/480, 41/640, 601/640).
DEPTH_CROPS: dict[str, tuple[float, float, float, float] | None] = {
    "garg": (0.40810811, 0.99189189, 0.03594771, 0.96405229),
    "eigen_nyu": (45 / 480, 471 / 480, 41 / 640, 601 / 640),
    "none": None,
}


def _image_metrics(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    ratio = np.maximum(gt / pred, pred / gt)
    log_error = np.log(pred) - np.log(gt)
    return {
        "abs_rel": float(np.mean(np.abs(gt - pred) / gt)),
        "sq_rel": float(np.mean((gt - pred) ** 2 / gt)),
        "rmse": float(np.sqrt(np.mean((gt - pred) ** 2))),
        "rmse_log": float(np.sqrt(np.mean(log_error**2))),
        "log10": float(np.mean(np.abs(np.log10(gt) - np.log10(pred)))),
        "silog": float(100.0 * np.sqrt(max(np.mean(log_error**2) - np.mean(log_error) ** 2, 0.0))),
        "delta1": float(np.mean(ratio < 1.25)),
        "delta2": float(np.mean(ratio < 1.25**2)),
        "delta3": float(np.mean(ratio < 1.25**3)),
    }


def depth_metrics(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    min_depth: float = 1e-3,
    max_depth: float = 80.0,
    median_scaling: bool = False,
    crop: tuple[float, float, float, float] | None = None,
) -> dict[str, float]:
    """Average the per-image metrics over a batch ``(N, H, W)`` of ground truth and predictions.

    ``crop`` is (top, bottom, left, right) as fractions of the image size; images with no valid pixel
    are skipped and counted in ``images_scored``.
    """
    gt = np.asarray(gt, dtype=np.float64)
    pred = np.asarray(pred, dtype=np.float64)
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
    if gt.ndim == 2:
        gt, pred = gt[None], pred[None]
    height, width = gt.shape[-2:]
    region = np.ones((height, width), dtype=bool)
    if crop is not None:
        top, bottom, left, right = crop
        region[:] = False
        region[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = True
    per_image = []
    for g, p in zip(gt, pred, strict=True):
        valid = region & (g > min_depth) & (g < max_depth)
        if not valid.any():
            continue
        g_valid, p_valid = g[valid], p[valid]
        if median_scaling:
            p_valid = p_valid * (np.median(g_valid) / np.median(p_valid))
        p_valid = np.clip(p_valid, min_depth, max_depth)
        per_image.append(_image_metrics(g_valid, p_valid))
    result = {
        name: float(np.mean([m[name] for m in per_image])) if per_image else float("nan")
        for name in DEPTH_METRIC_NAMES
    }
    result["images_scored"] = len(per_image)
    return result
