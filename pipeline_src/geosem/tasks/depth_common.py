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
from torch import nn

from geosem.metrics.depth import depth_metrics
from geosem.models import build_dense_model
from geosem.models.dense import DenseModel
from geosem.shards.reader import ShardSet
from geosem.tasks.base import iterate_batches
from geosem.tasks.photometric import sigmoid_to_depth, upsample

DEPTH_SCALES = (0, 1, 2, 3)


def build_depth_network(run: dict[str, Any], out_channels: int = 1) -> DenseModel:
    """The dense network of a pre-training run, its encoder initialised as ``task.encoder_init`` says."""
    params = run["task"]
    init = params.get("encoder_init", "random")
    if init not in ("random", "imagenet"):
        raise ValueError(f"task.encoder_init must be 'random' or 'imagenet', got {init!r}")
    return build_dense_model(
        run["model"]["encoder"],
        out_channels,
        decoder_channels=tuple(run["model"]["decoder_channels"]),
        head_scales=DEPTH_SCALES,
        pretrained_encoder=init == "imagenet",
        weights_file=params.get("weights_file"),
    )


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
    """
    gts, preds = [], []
    for batch in iterate_batches(shards, ids, ("image", "depth"), run["evaluation"]["batch_size"], device):
        preds.append(depth_fn(batch["image"]).cpu().numpy())
        gts.append(batch["depth"].cpu().numpy())
    metrics = depth_metrics(
        np.concatenate(gts),
        np.concatenate(preds),
        min_depth=1e-3,
        max_depth=run["evaluation"]["max_depth"],
        median_scaling=median_scaling,
    )
    out = {f"depth_{k}" if k != "images_scored" else "depth_images_scored": v for k, v in metrics.items()}
    out["depth_median_scaled"] = median_scaling
    return out


def dense_part(model: nn.Module) -> DenseModel:
    """The DenseModel inside a pre-training model (itself, or its ``depth`` / ``dense`` member)."""
    for candidate in (model, getattr(model, "depth", None), getattr(model, "dense", None)):
        if isinstance(candidate, DenseModel):
            return candidate
    raise TypeError(f"{type(model).__name__} holds no DenseModel to transfer")
