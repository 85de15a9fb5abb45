"""Depth from ground truth: dense (``depth_supervised``, paper A Table 2 "Depth (supervised)"), sparse
projected lidar (``depth_lidar``) and dense on small random crops (``depth_cropped``).

The network predicts a sigmoid disparity at four scales, mapped to depth as monodepth2 does:
``depth = 1 / (1 / max + (1 / min - 1 / max) * sigmoid)``. Every scale is upsampled to full resolution
and scored with L1 on log depth over the valid ground-truth pixels (inside (min_depth, max_depth)); a
scale-aware loss, so these modes are evaluated without median scaling.

* ``depth_lidar``: the target is the sparse lidar map (field ``depth_lidar``, 0 = no return); the loss
  is masked to the returns. Evaluation uses the dense ``depth`` ground truth where the shards have it.
* ``depth_cropped``: every training sample is a random ``crop`` (height, width) patch of image and depth,
  so the network cannot read depth off the image row (no position information); evaluation on whole
  images. The crop must move in both axes, so the task pre-trains on images ``image_scale`` times the
  study's size: the network's smallest crop, 64 pixels, cannot move down the CPU studies' 64-pixel-high
  images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geosem.shards.reader import ShardSet
from geosem.tasks import register_task
from geosem.tasks.base import (
    ENCODER_INIT_RANDOM,
    HFLIP,
    MAX_DEPTH,
    MIN_DEPTH,
    Param,
    Task,
    horizontal_flip,
    param,
)
from geosem.tasks.depth_common import (
    INITIAL_DEPTH,
    build_depth_network,
    depth_at_full_resolution,
    evaluate_depth,
)
from geosem.tasks.photometric import sigmoid_to_depth

__all__ = ["DepthCropped", "DepthLidar", "DepthSupervised", "sigmoid_to_depth"]


@register_task("depth_supervised")
class DepthSupervised(Task):
    """Supervised depth from dense ground truth (L1 on log depth at four scales)."""

    fields: ClassVar[tuple[str, ...]] = ("image", "depth")
    target: ClassVar[str] = "depth"
    parameters: ClassVar[dict[str, Param]] = {
        "min_depth": MIN_DEPTH,
        "max_depth": MAX_DEPTH,
        "initial_depth": INITIAL_DEPTH,
        "hflip": HFLIP,
        "encoder_init": ENCODER_INIT_RANDOM,
    }

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> nn.Module:
        return build_depth_network(self.run)

    def predict_depth(self, model: nn.Module, image: torch.Tensor) -> dict[int, torch.Tensor]:
        """Depth (B,H,W) at full resolution for every scale the model predicts."""
        full = depth_at_full_resolution(
            model(image), image.shape[-2:], self.params["min_depth"], self.params["max_depth"]
        )
        return {scale: depth[:, 0] for scale, depth in full.items()}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        gt = batch[self.target]
        valid = (gt > self.params["min_depth"]) & (gt < self.params["max_depth"])
        if not valid.any():
            raise ValueError(f"a training batch has no valid {self.target!r} pixel")
        log_gt = torch.log(gt[valid])
        per_scale = [
            (torch.log(depth[valid]) - log_gt).abs().mean()
            for depth in self.predict_depth(model, batch["image"]).values()
        ]
        return torch.stack(per_scale).mean(), {"valid_share": float(valid.float().mean())}

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return horizontal_flip(sample, rng) if self.params.get("hflip", True) else sample

    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        model.eval()
        return evaluate_depth(
            lambda image: self.predict_depth(model, image)[0],
            self.run,
            shards,
            ids,
            self.device,
            median_scaling=False,
        )


@register_task("depth_lidar")
class DepthLidar(DepthSupervised):
    """Supervised depth from the sparse projected lidar (field depth_lidar), loss masked to the returns."""

    fields = ("image", "depth_lidar")
    target = "depth_lidar"


@register_task("depth_cropped")
class DepthCropped(DepthSupervised):
    """Supervised depth on random small crops (no position information); evaluated on whole images."""

    parameters: ClassVar[dict[str, Param]] = {
        **DepthSupervised.parameters,
        "crop": param(
            [64, 64],
            "Crop height and width in pixels (multiples of 32, at least 64, smaller than the images).",
            type="array",
            items={"type": "integer", "minimum": 64, "multipleOf": 32},
            minItems=2,
            maxItems=2,
        ),
        # 64 pixels is the smallest crop the network takes and the CPU studies' images are 64 high: the
        # pre-training needs larger images than the fine-tune (the encoder is resolution-agnostic).
        "image_scale": param(
            1.5,
            "Pre-training images: the study's pre-training resolution times this, rounded to multiples of "
            "32 (1.5: 64x192 -> 96x288); the fine-tune keeps the study's resolution.",
            type="number",
            minimum=1,
        ),
    }

    @staticmethod
    def check_crop(crop: Sequence[int], height: int, width: int, where: str) -> None:
        """Refuse a crop the network cannot take, or one that does not move in both axes over ``height`` x
        ``width`` images: a crop as tall (wide) as the image always starts at row (column) 0, so its rows
        still tell the depth, which is what depth_cropped exists to hide."""
        crop_h, crop_w = crop
        if min(crop_h, crop_w) < 64 or crop_h % 32 or crop_w % 32:
            # The encoder reduces by 32 and the decoder's reflection padding needs 2 pixels at 1/32.
            raise ValueError(f"{where}: crop {crop_h}x{crop_w} must be multiples of 32 and at least 64")
        if crop_h >= height or crop_w >= width:
            raise ValueError(
                f"{where}: crop {crop_h}x{crop_w} is not smaller than the {height}x{width} images in both "
                "axes, so its position (the image row) still tells the depth; raise image_scale or shrink "
                "the crop"
            )

    @classmethod
    def plan_resolution(
        cls, task: dict[str, Any], resolution: tuple[int, int], where: str
    ) -> tuple[int, int]:
        """The (height, width) the pre-training trains on, given the study's pre-training ``resolution``
        and the resolved task section; a crop that would not move in both axes stops the plan here,
        before any job, naming ``where`` (the init's config entry)."""
        scale = task["image_scale"]
        # As a study's scaled resolutions (geosem.studies.grid.resolutions): multiples of 32, at least 64.
        height, width = (max(64, 32 * round(side * scale / 32)) for side in resolution)
        cls.check_crop(task["crop"], height, width, where)
        return height, width

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        sample = super().transform(sample, rng)
        height, width = sample["image"].shape[-2:]
        crop_h, crop_w = self.params["crop"]
        # The planner checked the planned resolution; this catches a run.yaml written by hand.
        self.check_crop((crop_h, crop_w), height, width, f"task {self.params.get('init', 'depth_cropped')}")
        top = int(rng.integers(0, height - crop_h + 1))
        left = int(rng.integers(0, width - crop_w + 1))
        return {key: value[..., top : top + crop_h, left : left + crop_w] for key, value in sample.items()}
