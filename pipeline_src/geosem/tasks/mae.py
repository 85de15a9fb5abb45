"""Masked image reconstruction pre-training (``mae``), two variants (docs/protocols.md 1.8):

* ``variant: seed`` (the seed code's "MAE-style" CNN inpainting): per image a seed density drawn from
  U(0.1 %, 1 %) of the pixels, each seed grown to a 7x7 zeroed patch (about 5-39 % masked); a 3-channel
  sigmoid decoder at four scales; L1 over the **whole** image.
* ``variant: patch`` (MAE proper, facebookresearch/mae): 75 % of non-overlapping square patches zeroed;
  the loss (MSE, MAE's pixel loss) over the **masked** pixels only.

Every scale's reconstruction is upsampled to full resolution. Scale weights: ``scale_weighting: seed``
copies the seed code's 1/4^(3-s) (coarsest 1, finest 1/64, which looks inverted); the default ``finest``
uses 1/4^s, full weight on the full-resolution output. The mask is drawn in ``transform`` from the
per-draw generator, so it is reproducible and resumes exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosem.models.dense import DenseModel
from geosem.shards.reader import ShardSet
from geosem.tasks import register_task
from geosem.tasks.base import ENCODER_INIT_RANDOM, Param, Task, iterate_batches, param
from geosem.tasks.depth_common import DEPTH_SCALES, build_depth_network
from geosem.tasks.photometric import upsample


def seed_patch_mask(
    size: tuple[int, int], density: float, patch: int, generator: np.random.Generator
) -> torch.Tensor:
    """Bool (H,W) mask: each pixel seeds with probability ``density``; each seed grows to patch x patch."""
    seeds = torch.from_numpy(generator.random(size) < density).float()[None, None]
    grown = F.max_pool2d(seeds, patch, stride=1, padding=patch // 2)
    return grown[0, 0] > 0


def patch_mask(
    size: tuple[int, int], patch: int, ratio: float, generator: np.random.Generator
) -> torch.Tensor:
    """Bool (H,W) mask of exactly round(ratio * patches) masked non-overlapping patch x patch squares."""
    rows, cols = size[0] // patch, size[1] // patch
    if rows * patch != size[0] or cols * patch != size[1]:
        raise ValueError(f"image size {size} is not a multiple of the MAE patch size {patch}")
    masked = np.zeros(rows * cols, dtype=bool)
    masked[generator.permutation(rows * cols)[: round(ratio * rows * cols)]] = True
    grid = torch.from_numpy(masked.reshape(rows, cols))
    return grid.repeat_interleave(patch, 0).repeat_interleave(patch, 1)


@register_task("mae")
class MaskedReconstruction(Task):
    """Masked image reconstruction: the seed code's seeded patches, or MAE's masked patches."""

    fields = ("image",)
    parameters: ClassVar[dict[str, Param]] = {
        "variant": param(
            "seed",
            "seed (7x7 patches around random seeds, loss on the whole image) or patch (MAE: masked patches, "
            "loss on them only).",
            type="string",
            enum=["seed", "patch"],
        ),
        "seed_density": param(
            [0.001, 0.01],
            "Range of the per-image seed density (share of pixels) of the seed variant.",
            type="array",
            items={"type": "number", "minimum": 0, "maximum": 1},
            minItems=2,
            maxItems=2,
        ),
        "patch": param(
            7,
            "Patch size in pixels (the seed variant's square; the patch variant's grid).",
            type="integer",
            minimum=1,
        ),
        "mask_ratio": param(
            0.75,
            "Share of patches masked by the patch variant (MAE 0.75).",
            type="number",
            exclusiveMinimum=0,
            exclusiveMaximum=1,
        ),
        "scale_weighting": param(
            "finest",
            "finest (1/4^s) or seed (the seed code's 1/4^(3-s), finest 1/64).",
            type="string",
            enum=["finest", "seed"],
        ),
        "encoder_init": ENCODER_INIT_RANDOM,
    }

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> nn.Module:
        return build_depth_network(self.run, out_channels=3)

    def transfer_model(self, model: nn.Module) -> DenseModel:
        return model

    def mask(self, size: tuple[int, int], rng: np.random.Generator) -> torch.Tensor:
        if self.params["variant"] == "seed":
            low, high = self.params["seed_density"]
            return seed_patch_mask(size, rng.uniform(low, high), self.params["patch"], rng)
        if self.params["variant"] == "patch":
            return patch_mask(size, self.params["patch"], self.params["mask_ratio"], rng)
        raise ValueError(f"mae variant must be 'seed' or 'patch', got {self.params['variant']!r}")

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return {**sample, "mask": self.mask(tuple(sample["image"].shape[-2:]), rng).float()}

    def _scale_weight(self, scale: int) -> float:
        if self.params.get("scale_weighting", "finest") == "seed":
            return 1.0 / 4 ** (3 - scale)
        return 1.0 / 4**scale

    def reconstruct(
        self, model: nn.Module, image: torch.Tensor, mask: torch.Tensor
    ) -> dict[int, torch.Tensor]:
        masked_input = image * (1.0 - mask[:, None])
        return {s: upsample(torch.sigmoid(out), image.shape[-2:]) for s, out in model(masked_input).items()}

    def _scale_losses(
        self, outputs: dict[int, torch.Tensor], image: torch.Tensor, mask: torch.Tensor
    ) -> list:
        losses = []
        for scale in DEPTH_SCALES:
            if self.params["variant"] == "seed":
                error = (outputs[scale] - image).abs().mean()
            else:
                per_pixel = ((outputs[scale] - image) ** 2).mean(1)
                error = (per_pixel * mask).sum() / mask.sum().clamp(min=1)
            losses.append(self._scale_weight(scale) * error)
        return losses

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        outputs = self.reconstruct(model, batch["image"], batch["mask"])
        total = torch.stack(self._scale_losses(outputs, batch["image"], batch["mask"])).sum()
        return total, {"masked_share": float(batch["mask"].mean())}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        """Reconstruction error on the masked pixels of test images, each with a fixed mask (seed 0+i),
        beside that of a mean predictor on the same masks (``test_masked_l1_mean``: every masked pixel is
        filled with the mean colour of its image's visible pixels), so a score says whether the network
        reconstructs more than the image's average colour."""
        model.eval()
        errors, mean_errors = [], []
        batches = iterate_batches(shards, ids, ("image",), self.run["evaluation"]["batch_size"], self.device)
        count = 0
        for batch in batches:
            image = batch["image"]
            masks = []
            for _ in range(len(image)):
                masks.append(self.mask(tuple(image.shape[-2:]), np.random.default_rng([12345, count])))
                count += 1
            mask = torch.stack(masks).float().to(image.device)
            out = self.reconstruct(model, image, mask)[0]
            masked_pixels = max(mask.sum().item(), 1.0)
            errors.append(((out - image).abs().mean(1) * mask).sum().item() / masked_pixels)
            visible = (1.0 - mask)[:, None]
            colour = (image * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True).clamp(
                min=1
            )
            mean_errors.append(((colour - image).abs().mean(1) * mask).sum().item() / masked_pixels)
        return {"test_masked_l1": float(np.mean(errors)), "test_masked_l1_mean": float(np.mean(mean_errors))}
