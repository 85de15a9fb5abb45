"""Supervised monocular depth from dense ground truth (paper A, Table 2: "Depth (supervised)").

The network predicts a sigmoid disparity at four scales, mapped to depth as monodepth2 does:
``depth = 1 / (1 / max + (1 / min - 1 / max) * sigmoid)``. Every scale is upsampled to full resolution
and scored with L1 on log depth over valid ground-truth pixels, a scale-aware loss (the absolute scale
of the scene is learned, unlike the scale-ambiguous self-supervised setting).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosem.metrics.depth import depth_metrics
from geosem.models import build_dense_model
from geosem.shards.reader import ShardSet
from geosem.tasks import register_task
from geosem.tasks.base import Task, horizontal_flip, iterate_batches


def sigmoid_to_depth(sigmoid: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return 1.0 / (min_disp + (max_disp - min_disp) * sigmoid)


@register_task("depth_supervised")
class DepthSupervised(Task):
    fields = ("image", "depth")

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> nn.Module:
        model_cfg = self.run["model"]
        return build_dense_model(
            model_cfg["encoder"],
            1,
            decoder_channels=tuple(model_cfg["decoder_channels"]),
            head_scales=(0, 1, 2, 3),
        )

    def predict_depth(self, model: nn.Module, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """Depth at full resolution for every scale the model predicts."""
        size = image.shape[-2:]
        out = {}
        for scale, logits in model(image).items():
            sigmoid = torch.sigmoid(logits)
            if sigmoid.shape[-2:] != size:
                sigmoid = F.interpolate(sigmoid, size=size, mode="bilinear", align_corners=False)
            out[scale] = sigmoid_to_depth(sigmoid, self.params["min_depth"], self.params["max_depth"])[:, 0]
        return out

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        gt = batch["depth"]
        valid = (gt > self.params["min_depth"]) & (gt < self.params["max_depth"])
        if not valid.any():
            raise ValueError("a training batch has no valid ground-truth depth pixel")
        log_gt = torch.log(gt[valid])
        per_scale = [
            (torch.log(depth[valid]) - log_gt).abs().mean()
            for depth in self.predict_depth(model, batch["image"]).values()
        ]
        return torch.stack(per_scale).mean(), {}

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return horizontal_flip(sample, rng) if self.params.get("hflip", True) else sample

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        model.eval()
        gts, preds = [], []
        batches = iterate_batches(shards, ids, self.fields, self.run["evaluation"]["batch_size"], self.device)
        for batch in batches:
            preds.append(self.predict_depth(model, batch["image"])[0].cpu().numpy())
            gts.append(batch["depth"].cpu().numpy())
        cap = self.run["evaluation"]["max_depth"]
        metrics = depth_metrics(
            np.concatenate(gts), np.concatenate(preds), min_depth=1e-3, max_depth=cap, median_scaling=False
        )
        return {
            f"depth_{k}" if k != "images_scored" else "depth_images_scored": v for k, v in metrics.items()
        }
