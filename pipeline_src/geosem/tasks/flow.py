"""Unsupervised optical flow with a siamese encoder: the seed code's flow pre-training
(docs/protocols.md 1.8).

One encoder with shared weights encodes frame t and frame t-1; per pyramid level their features are
concatenated and decoded by a monodepth2 decoder into a 2-channel output at four scales,
``flow = 0.4 (sigmoid - 0.5) x (W, H)`` pixels: where each pixel of frame t is found in frame t-1. Loss
per scale (upsampled to full resolution, weight 1/2^s): the photometric error
0.85 (1 - SSIM)/2 + 0.15 L1 between frame t and frame t-1 warped by the flow
(``geosem.geometry.warp.warp_with_flow``) over the pixels whose flow lands inside frame t-1, plus
``smoothness`` (default 2.0, the seed code's number) x edge-aware smoothness of each flow channel. The
smoothness acts on the flow as a fraction of the image size (the sigmoid's range), as the seed code's
does (it smooths the network output before scaling it to pixels). That does not make the weight
resolution-free: neighbouring pixels of a flow in image fractions differ by ~1/W, so the term halves when
the resolution doubles (measured on the world's ground-truth flow: 0.0049 at 32x96, 0.0025 at 64x192;
in pixels 0.290 and 0.298). And the seed code sums its photometric terms over the three colour channels
where GeoSem (as monodepth2) averages them. The balance the seed code's 2.0 strikes at 192x640 is
therefore struck by about 2.0 / 3 / 3.2 = 0.2 at 64x192 (docs/pretraining.md, "Optical flow").

Evaluation: end-point error in pixels against the flow of the static scene from the ground-truth depth
of frame t and the relative pose ``pose_to_prev`` (``flow_from_depth_pose``: where each pixel of frame t
lies in frame t-1, the direction the network predicts), over pixels with depth, off moving objects where
the set has a ``dynamic`` mask (the static flow is wrong there), averaged per pair and then over pairs.
KITTI's labelled test frames have no neighbours, so the task is evaluated on the converter's
``heldout_video`` split (``evaluation_split``): frames of the held-out drives with their neighbours. A
shard set without that split stops the job before training (``geosem.train.jobs``).

Transfer to segmentation: the encoder transfers as it is; the decoder's layers that see concatenated
features are twice as wide as a single-image decoder's, so only the decoder tensors whose shapes match
are carried over (the same tensors the seed code's position-wise loading keeps), the rest start fresh.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from geosem.geometry.warp import flow_from_depth_pose, warp_with_flow
from geosem.models.dense import DenseModel, decoder_for
from geosem.shards.reader import ShardSet
from geosem.tasks import register_task
from geosem.tasks.base import (
    ENCODER_INIT_IMAGENET,
    HFLIP,
    Param,
    Task,
    horizontal_flip,
    iterate_batches,
    param,
)
from geosem.tasks.depth_common import DEPTH_SCALES, build_depth_network
from geosem.tasks.photometric import edge_aware_smoothness, photometric_error, upsample
from geosem.train.fast_path import full_precision

FLOW_RANGE = 0.4  # flow spans +-0.2 of the image size


class SiameseFlowModel(nn.Module):
    def __init__(self, dense: DenseModel) -> None:
        super().__init__()
        self.encoder = dense.encoder
        self.decoder = decoder_for(
            dense.encoder, dense.decoder.channels, [2 * c for c in dense.encoder.channels]
        )
        self.heads = dense.heads

    def forward(self, image: torch.Tensor, other: torch.Tensor) -> dict[int, torch.Tensor]:
        """Flow (B,2,H_s,W_s) in pixels of the full image, by scale, from ``image`` to ``other``."""
        features = [
            torch.cat(pair, dim=1) for pair in zip(self.encoder(image), self.encoder(other), strict=True)
        ]
        decoded = self.decoder(features)
        size = torch.tensor(image.shape[-1:-3:-1], dtype=image.dtype, device=image.device).view(1, 2, 1, 1)
        return {
            s: FLOW_RANGE * (torch.sigmoid(self.heads[str(s)](decoded[s])) - 0.5) * size for s in DEPTH_SCALES
        }


def pair_end_point_errors(predicted: torch.Tensor, truth: torch.Tensor, valid: torch.Tensor) -> list[float]:
    """Mean end-point error (pixels) of each pair (B,2,H,W) over its ``valid`` pixels (B,H,W); a pair
    without any valid pixel is left out."""
    distance = (predicted - truth).norm(dim=1)
    return [float(d[v].mean()) for d, v in zip(distance, valid, strict=True) if v.any()]


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the pixels where ``mask`` holds (0 when it holds nowhere)."""
    mask = mask.to(values.dtype).expand_as(values)
    return (values * mask).sum() / mask.sum().clamp(min=1)


@register_task("flow")
class Flow(Task):
    """Siamese unsupervised optical flow (the seed code's setup; ImageNet start by default)."""

    fields = ("image", "image_prev")
    # The KITTI converter's frames of the held-out drives with their neighbours (sources/kitti).
    evaluation_split = "heldout_video"
    parameters: ClassVar[dict[str, Param]] = {
        "smoothness": param(
            2.0, "Edge-aware smoothness weight per flow channel (seed code 2.0).", type="number", minimum=0
        ),
        "hflip": HFLIP,
        "encoder_init": ENCODER_INIT_IMAGENET,
    }

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    def build_model(self) -> nn.Module:
        return SiameseFlowModel(build_depth_network(self.run, out_channels=2))

    def transfer_model(self, model: nn.Module) -> DenseModel:
        dense = DenseModel(
            model.encoder,
            decoder_for(model.encoder, model.decoder.channels),
            2,
            DEPTH_SCALES,
        )
        dense.heads.load_state_dict(model.heads.state_dict())
        fresh = dense.decoder.state_dict()
        trained = model.decoder.state_dict()
        dense.decoder.load_state_dict(
            {k: trained[k] if trained[k].shape == v.shape else v for k, v in fresh.items()}
        )
        return dense

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        return horizontal_flip(sample, rng) if self.params.get("hflip", True) else sample

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        image, prev = batch["image"], batch["image_prev"]
        size = torch.tensor(image.shape[-1:-3:-1], dtype=image.dtype, device=image.device).view(1, 2, 1, 1)
        total = image.new_zeros(())
        logs: dict[str, float] = {}
        for scale, flow in model(image, prev).items():
            # The warp and the loss in fp32 under a bf16 fast path: bf16 rounds pixel coordinates.
            with full_precision(image):
                # Flow in pixels of the full image already; upsampling keeps its values (no rescaling).
                flow = upsample(flow.float(), image.shape[-2:])
                warped, inside = warp_with_flow(prev, flow)
                # Only pixels whose flow lands inside frame t-1 have a source; the zero padding outside
                # would add an error no flow can fix (and pull the flow back into the image).
                error = masked_mean(photometric_error(warped, image), inside)
                smooth = edge_aware_smoothness(flow / size, image)
                total = total + (error + self.params["smoothness"] * smooth) / 2**scale
            if scale == 0:
                logs["photometric"] = error.item()
        return total, logs

    @torch.no_grad()
    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        """End-point error against the flow of the static scene from ground-truth depth and pose, and
        that of a zero flow (``test_flow_epe_zero``), over the pairs among ``ids`` (module docstring)."""
        model.eval()
        moving = "dynamic" in shards.manifest.fields  # real KITTI has no motion mask
        fields = ("image", "image_prev", "depth", "K", "pose_to_prev", *(("dynamic",) if moving else ()))
        errors: list[float] = []
        zero: list[float] = []
        for batch in iterate_batches(shards, ids, fields, self.run["evaluation"]["batch_size"], self.device):
            depth = batch["depth"][:, None]
            truth = flow_from_depth_pose(depth, batch["pose_to_prev"], batch["K"])
            valid = (depth[:, 0] > 0) & torch.isfinite(truth).all(1)
            if moving:
                valid &= batch["dynamic"] == 0
            predicted = model(batch["image"], batch["image_prev"])[0]
            errors += pair_end_point_errors(predicted, truth, valid)
            zero += pair_end_point_errors(torch.zeros_like(truth), truth, valid)
        if not errors:
            # A score of nothing would read as "flow not evaluated" only to whoever opens metrics.json.
            raise ValueError(
                f"flow: none of the {len(ids)} evaluation ids in {shards.root} is a frame pair with ground "
                f"truth (prev_id, depth, pose); flow is evaluated on split {self.evaluation_split!r}"
            )
        return {
            "test_flow_epe": float(np.mean(errors)),
            "test_flow_epe_zero": float(np.mean(zero)),
            "test_flow_pairs": len(errors),
        }
