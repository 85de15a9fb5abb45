"""What every depth pre-training shares: the depth network, depth from its outputs, and its evaluation.

The depth network is a ``DenseModel`` (encoder + monodepth2 decoder + a sigmoid disparity head at four
scales), so a segmentation fine-tune loads its encoder and decoder and swaps the heads (paper A, Fig. 1b).
Its encoder starts from ImageNet (``encoder_init: imagenet``, monodepth2's default and the paper's
"Depth") or from scratch (``random``, the paper's "Depth-Rand").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosem.metrics.depth import DEPTH_CROPS, DEPTH_METRIC_NAMES, MEDIAN_SCALED_PREFIX, depth_metrics
from geosem.models import build_dense_model
from geosem.models.dense import DenseModel
from geosem.shards.reader import ShardSet
from geosem.tasks.base import iterate_batches, param
from geosem.tasks.photometric import sigmoid_to_depth, upsample

DEPTH_SCALES = (0, 1, 2, 3)

# monodepth2's heads start at sigmoid 0.5, i.e. a depth of about 2 min_depth (0.2 m over 0.1-100 m): every
# pixel starts several nats from the scene (log-L1 ~4 on the driving world), and a stereo warp at that
# depth shifts every pixel out of the image, so the first hundreds of steps only pull the output back
# (docs/pretraining.md, "Convergence on the embedded world"). Starting the heads' bias at a typical
# scene depth removes that phase; null keeps monodepth2's start.
INITIAL_DEPTH = param(
    10.0,
    "Depth (m) the disparity heads predict before training (their bias); null: monodepth2's bias 0 "
    "(sigmoid 0.5, about twice min_depth).",
    type=["number", "null"],
    exclusiveMinimum=0,
)


def build_depth_network(run: dict[str, Any], out_channels: int = 1) -> DenseModel:
    """The dense network of a pre-training run, its encoder initialised as ``task.encoder_init`` says."""
    params = run["task"]
    init = params.get("encoder_init", "random")
    if init not in ("random", "imagenet"):
        raise ValueError(f"task.encoder_init must be 'random' or 'imagenet', got {init!r}")
    model = build_dense_model(
        run["model"]["encoder"],
        out_channels,
        decoder_channels=tuple(run["model"]["decoder_channels"]),
        head_scales=DEPTH_SCALES,
        pretrained_encoder=init == "imagenet",
        weights_file=params.get("weights_file"),
    )
    initial_depth = params.get("initial_depth")
    if out_channels == 1 and initial_depth is not None:
        start_heads_at_depth(model, initial_depth, params["min_depth"], params["max_depth"])
    return model


def start_heads_at_depth(model: DenseModel, depth: float, min_depth: float, max_depth: float) -> None:
    """Set every head's bias to the logit whose sigmoid maps to ``depth`` (``sigmoid_to_depth``'s inverse)."""
    if not min_depth < depth < max_depth:
        raise ValueError(f"task.initial_depth {depth} must lie inside ({min_depth}, {max_depth})")
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    share = (1.0 / depth - min_disp) / (max_disp - min_disp)
    logit = float(np.log(share / (1.0 - share)))
    with torch.no_grad():
        for head in model.heads.values():
            head.bias.fill_(logit)


def depth_at_full_resolution(
    logits: dict[int, torch.Tensor], size: torch.Size | tuple[int, int], min_depth: float, max_depth: float
) -> dict[int, torch.Tensor]:
    """Depth (B,1,H,W) of every scale: sigmoid, bilinear upsampling to ``size``, then disparity to depth."""
    return {
        scale: sigmoid_to_depth(upsample(torch.sigmoid(out), size), min_depth, max_depth)
        for scale, out in logits.items()
    }


@torch.no_grad()
def evaluate_depth(
    depth_fn: Any,
    run: dict[str, Any],
    shards: ShardSet,
    ids: Sequence[str],
    device: torch.device,
    *,
    median_scaling: bool,
) -> dict[str, Any]:
    """Depth metrics (``geosem.metrics.depth``) of ``depth_fn(image) -> (B,H,W)`` on the ground truth.

    ``median_scaling``: per-image median scaling for scale-ambiguous predictions (monocular video);
    metric modes (stereo with a known baseline, lidar, dense supervision) are scored as predicted.
    Predictions are brought to the ground truth's resolution (never the ground truth to theirs), the
    region is ``evaluation.depth_crop``, and the settings are returned with the scores (``depth_eval_*``)
    so every metrics.json says how it was measured.
    """
    evaluation = run["evaluation"]
    crop = evaluation.get("depth_crop", "none")
    if crop not in DEPTH_CROPS:
        raise ValueError(f"evaluation.depth_crop must be one of {sorted(DEPTH_CROPS)}, got {crop!r}")
    gts, preds = [], []
    for batch in iterate_batches(shards, ids, ("image", "depth"), evaluation["batch_size"], device):
        gt = batch["depth"]
        preds.append(at_resolution(depth_fn(batch["image"]), gt.shape[-2:]).cpu().numpy())
        gts.append(gt.cpu().numpy())
    min_depth, max_depth = 1e-3, evaluation["max_depth"]
    settings = {"min_depth": min_depth, "max_depth": max_depth, "crop": DEPTH_CROPS[crop]}
    gt_all, pred_all = np.concatenate(gts), np.concatenate(preds)
    metrics = depth_metrics(gt_all, pred_all, median_scaling=median_scaling, **settings)
    out = {f"depth_{k}" if k != "images_scored" else "depth_images_scored": v for k, v in metrics.items()}
    out["depth_median_scaled"] = median_scaling
    # Median-scaled scores for every mode too: they compare a metric mode's depth structure with the
    # scale-ambiguous modes' on one footing (its own scale error is what the unscaled scores add).
    scaled = metrics if median_scaling else depth_metrics(gt_all, pred_all, median_scaling=True, **settings)
    out |= {f"{MEDIAN_SCALED_PREFIX}{k}": scaled[k] for k in DEPTH_METRIC_NAMES}
    out |= {"depth_eval_crop": crop, "depth_eval_min_depth": min_depth, "depth_eval_max_depth": max_depth}
    out["depth_eval_resolution"] = "x".join(str(int(side)) for side in gts[0].shape[-2:]) if gts else ""
    return out


def at_resolution(depth: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Predicted depth (B,H,W) bilinearly resized to the ground truth's ``size``, as monodepth2's
    evaluation resizes its predictions; unchanged when the sizes agree."""
    if tuple(depth.shape[-2:]) == tuple(size):
        return depth
    return F.interpolate(depth[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def dense_part(model: nn.Module) -> DenseModel:
    """The DenseModel inside a pre-training model (itself, or its ``depth`` / ``dense`` member)."""
    for candidate in (model, getattr(model, "depth", None), getattr(model, "dense", None)):
        if isinstance(candidate, DenseModel):
            return candidate
    raise TypeError(f"{type(model).__name__} holds no DenseModel to transfer")
