"""Self-supervised depth as in monodepth2 (docs/protocols.md 2): from video (``depth_mono``), from a rectified
stereo pair with a known baseline (``depth_stereo``) and from both (``depth_mono_stereo``).

The loss of a target frame, per scale s in 0..3 (monodepth2 ``trainer.py``):

1. the disparity sigmoid of scale s is bilinearly upsampled to full resolution and mapped to depth over
   [min_depth, max_depth] (``depth = 1 / (1/max + (1/min - 1/max) sigmoid)``);
2. every source frame (previous / next frame with the pose network's relative pose; the right image with
   the known stereo transform) is warped onto the target with that depth (border padding);
3. photometric error pe = 0.85 (1 - SSIM)/2 + 0.15 L1; per pixel the minimum over the sources, taken
   together with the identity errors of the unwarped sources (+1e-5 Gaussian noise to break ties):
   auto-masking of static pixels and of frames where the camera did not move;
4. plus 1e-3 / 2^s times the edge-aware smoothness of the mean-normalised disparity at scale s's own
   resolution against the target image resized to it.

The total is the mean over scales. The pose network is monodepth2's separate ResNet on frame pairs in
temporal order (``geosem.models.pose``). Stereo uses the shard's real baseline, so stereo modes learn
metric depth and are evaluated without median scaling; depth_mono is scale-ambiguous and is evaluated
with per-image median scaling (monodepth2 ``evaluate_depth.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from geosem.geometry.warp import invert_rigid, reproject, stereo_transform
from geosem.models.dense import DenseModel
from geosem.models.pose import PoseNet
from geosem.shards.reader import ShardSet
from geosem.tasks import register_task
from geosem.tasks.base import ENCODER_INIT_IMAGENET, HFLIP, MAX_DEPTH, MIN_DEPTH, Param, Task, param
from geosem.tasks.depth_common import (
    DEPTH_SCALES,
    INITIAL_DEPTH,
    build_depth_network,
    depth_at_full_resolution,
    evaluate_depth,
)
from geosem.tasks.photometric import edge_aware_smoothness, mean_normalised, photometric_error
from geosem.train.fast_path import full_precision

SMOOTHNESS_WEIGHT = 1e-3  # monodepth2 --disparity_smoothness
POSE_SCALE_MONODEPTH2 = 0.01
POSE_SCALE = param(
    POSE_SCALE_MONODEPTH2,
    "Factor on the pose decoder's output (monodepth2 0.01). With Adam it sets how fast the pose can grow: "
    "from scratch at 0.01 the translation reached 0.005 m per frame in 1000 steps where the world moves "
    "0.8 m (docs/pretraining.md).",
    type="number",
    exclusiveMinimum=0,
)
IDENTITY_NOISE = 1e-5


STEREO_SIDES = ("sample", "left")


def keep_left(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The left image as target, as stored; the right camera's neighbours are not needed."""
    out = {key: value for key, value in sample.items() if key not in ("right_prev", "right_next")}
    out["swapped"] = torch.tensor(0.0)
    return out


def swap_sides(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The right image as target and the left one as its stereo partner (temporal neighbours from the
    right camera too, where the sample has them). Rectified cameras share their intrinsics."""
    out = {key: value for key, value in sample.items() if key not in ("right_prev", "right_next")}
    out["image"], out["right"] = sample["right"], sample["image"]
    for step in ("prev", "next"):
        if f"right_{step}" in sample:
            out[f"image_{step}"] = sample[f"right_{step}"]
    out["swapped"] = torch.tensor(1.0)
    return out


def flip_sample(sample: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Mirror every image-like field; the principal point moves to W - 1 - cx; poses are left as they are
    (the pose network sees mirrored frames and predicts mirrored motion, as in monodepth2)."""
    out = {}
    width = sample["image"].shape[-1]
    for key, value in sample.items():
        if key == "K":
            value = value.clone()
            value[0, 2] = width - 1 - value[0, 2]
            out[key] = value
        elif value.dim() >= 2 and value.shape[-1] == width:
            out[key] = torch.flip(value, dims=(-1,))
        else:
            out[key] = value
    out["flipped"] = torch.tensor(1.0)
    return out


COLOUR_FRAMES = ("image", "image_prev", "image_next", "right")


def colour_jitter(sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """monodepth2's colour augmentation: with probability 0.5 one torchvision ``ColorJitter`` draw
    (brightness, contrast, saturation 0.8-1.2, hue +-0.1, in a random order), identical for every frame
    of the sample. Returned as ``<frame>_aug`` fields: the networks see them, the losses the originals."""
    frames = [key for key in COLOUR_FRAMES if key in sample]
    if rng.random() >= 0.5:
        return {**sample, **{f"{key}_aug": sample[key] for key in frames}}
    brightness, contrast, saturation = rng.uniform(0.8, 1.2, size=3)
    hue = rng.uniform(-0.1, 0.1)
    order = rng.permutation(4)
    adjust = (
        lambda x: TF.adjust_brightness(x, float(brightness)),
        lambda x: TF.adjust_contrast(x, float(contrast)),
        lambda x: TF.adjust_saturation(x, float(saturation)),
        lambda x: TF.adjust_hue(x, float(hue)),
    )
    out = dict(sample)
    for key in frames:
        image = sample[key]
        for index in order:
            image = adjust[index](image)
        out[f"{key}_aug"] = image
    return out


class SelfSupervisedDepthModel(nn.Module):
    """The depth network and, for video, the pose network. One ``forward`` so that DDP sees every use."""

    def __init__(self, depth: DenseModel, pose: PoseNet | None) -> None:
        super().__init__()
        self.depth = depth
        self.pose = pose

    def forward(
        self, image: torch.Tensor, pairs: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()
    ) -> tuple[dict[int, torch.Tensor], list[torch.Tensor]]:
        """Disparity logits by scale, and ``second_from_first`` for each (first, second) frame pair."""
        poses = [self.pose(first, second) for first, second in pairs] if self.pose is not None else []
        return self.depth(image), poses


class PhotometricDepth(Task):
    """monodepth2's training objective; the subclasses choose the source frames."""

    use_video: ClassVar[bool] = False
    use_stereo: ClassVar[bool] = False
    parameters: ClassVar[dict[str, Param]] = {
        "min_depth": MIN_DEPTH,
        "max_depth": MAX_DEPTH,
        "initial_depth": INITIAL_DEPTH,
        "hflip": HFLIP,
        "smoothness": param(
            SMOOTHNESS_WEIGHT, "Edge-aware smoothness weight (divided by 2^scale).", type="number", minimum=0
        ),
        "colour_jitter": param(
            True,
            "monodepth2's colour jitter (p 0.5; brightness, contrast, saturation 0.8-1.2, hue 0.1), the same "
            "for all frames of a sample, seen by the networks only.",
            type="boolean",
        ),
        # monodepth2 starts depth and pose networks from ImageNet (the paper's "Depth").
        "encoder_init": ENCODER_INIT_IMAGENET,
    }

    @property
    def params(self) -> dict[str, Any]:
        return self.run["task"]

    @property
    def median_scaling(self) -> bool:
        return not self.use_stereo  # only a known baseline fixes the scale

    def _draw_side(self, rng: np.random.Generator) -> bool:
        """Whether this sample trains on the right camera (``stereo_side: sample``, with p 0.5)."""
        side = self.params.get("stereo_side", "left")
        if side not in STEREO_SIDES:
            raise ValueError(f"task.stereo_side must be one of {STEREO_SIDES}, got {side!r}")
        return side == "sample" and rng.random() < 0.5

    def build_model(self) -> nn.Module:
        pose = None
        if self.use_video:
            pretrained = self.params.get("encoder_init", "random") == "imagenet"
            encoder, weights = self.run["model"]["encoder"], self.params.get("weights_file")
            pose = PoseNet(encoder, pretrained, weights, self.params.get("pose_scale", POSE_SCALE_MONODEPTH2))
        return SelfSupervisedDepthModel(build_depth_network(self.run), pose)

    def transfer_model(self, model: nn.Module) -> DenseModel:
        return model.depth

    def transform(self, sample: dict[str, torch.Tensor], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        # The seed of this sample's identity-loss noise comes from the per-draw generator, not from torch's
        # global one: the DataLoader draws from the global generator whenever it starts iterating (also
        # on resume), so global-generator noise would differ after a resume.
        noise_seed = torch.tensor(int(rng.integers(2**62)), dtype=torch.int64)
        if self.use_stereo:
            # monodepth2 trains on both cameras: the target side is drawn per sample.
            sample = swap_sides(sample) if self._draw_side(rng) else keep_left(sample)
        if self.params.get("hflip", True) and rng.random() < 0.5:
            sample = flip_sample(sample)
        else:
            sample = {**sample, "flipped": torch.tensor(0.0)}
        if self.params.get("colour_jitter", True):
            sample = colour_jitter(sample, rng)
        return {**sample, "noise_seed": noise_seed}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        target = batch["image"]

        def net_input(key: str) -> torch.Tensor:  # the colour-jittered frame where there is one
            return batch.get(f"{key}_aug", batch[key])

        pairs = []
        if self.use_video:
            # Pairs in temporal order (monodepth2 pose_model_input "pairs"): (prev, target), (target, next).
            pairs = [
                (net_input("image_prev"), net_input("image")),
                (net_input("image"), net_input("image_next")),
            ]
        logits, poses = model(net_input("image"), pairs)
        sources: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.use_video:
            # (prev, target) gives prev -> target; the warp needs target -> prev: its inverse.
            sources.append((batch["image_prev"], invert_rigid(poses[0])))
            sources.append((batch["image_next"], poses[1]))
        if self.use_stereo:
            transform = stereo_transform(batch["baseline"], batch["flipped"], batch.get("swapped"))
            sources.append((batch["right"], transform))
        return photometric_depth_loss(
            logits,
            target,
            sources,
            batch["K"],
            self.params["min_depth"],
            self.params["max_depth"],
            self.params.get("smoothness", SMOOTHNESS_WEIGHT),
            batch.get("noise_seed"),
        )

    def predict_depth(self, model: nn.Module, image: torch.Tensor) -> torch.Tensor:
        logits = model.depth(image)
        full = depth_at_full_resolution(
            {0: logits[0]}, image.shape[-2:], self.params["min_depth"], self.params["max_depth"]
        )
        return full[0][:, 0]

    def evaluate(self, model: nn.Module, shards: ShardSet, ids: Sequence[str]) -> dict[str, Any]:
        model.eval()
        return evaluate_depth(
            lambda image: self.predict_depth(model, image),
            self.run,
            shards,
            ids,
            self.device,
            median_scaling=self.median_scaling,
        )


def photometric_depth_loss(
    logits: dict[int, torch.Tensor],
    target: torch.Tensor,
    sources: Sequence[tuple[torch.Tensor, torch.Tensor]],
    intrinsics: torch.Tensor,
    min_depth: float,
    max_depth: float,
    smoothness: float = SMOOTHNESS_WEIGHT,
    noise_seeds: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """monodepth2's loss over every scale (module docstring); ``sources`` holds (image, src_from_dst).

    ``noise_seeds`` (B,): seeds of each sample's identity-loss noise (from ``transform``), so the noise is
    a function of the sample draw and a resumed run repeats it; without them torch's global generator.
    """
    # Geometry and loss in fp32 under a bf16 fast path (geosem.train.fast_path.full_precision).
    with full_precision(target):
        logits = {scale: value.float() for scale, value in logits.items()}
        return _photometric_depth_loss(
            logits, target, sources, intrinsics, min_depth, max_depth, smoothness, noise_seeds
        )


def _photometric_depth_loss(
    logits: dict[int, torch.Tensor],
    target: torch.Tensor,
    sources: Sequence[tuple[torch.Tensor, torch.Tensor]],
    intrinsics: torch.Tensor,
    min_depth: float,
    max_depth: float,
    smoothness: float,
    noise_seeds: torch.Tensor | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    size = target.shape[-2:]
    depths = depth_at_full_resolution(logits, size, min_depth, max_depth)
    # Identity errors do not depend on the scale: compute them once.
    identity = torch.cat([photometric_error(image, target) for image, _ in sources], dim=1)
    identity = identity + _identity_noise(identity, noise_seeds) * IDENTITY_NOISE
    per_scale = []
    logs: dict[str, float] = {}
    for scale in DEPTH_SCALES:
        reprojection = torch.cat(
            [
                photometric_error(reproject(image, depths[scale], transform, intrinsics), target)
                for image, transform in sources
            ],
            dim=1,
        )
        combined = torch.cat([identity, reprojection], dim=1)
        minimum, chosen = combined.min(dim=1)
        disparity = torch.sigmoid(logits[scale])
        colour = F.interpolate(target, size=disparity.shape[-2:], mode="area") if scale else target
        smooth = edge_aware_smoothness(mean_normalised(disparity), colour)
        per_scale.append(minimum.mean() + smoothness * smooth / 2**scale)
        if scale == 0:
            logs["automask_share"] = float((chosen < identity.shape[1]).float().mean())
            logs["photometric"] = minimum.mean().item()
    return torch.stack(per_scale).mean(), logs


def _identity_noise(like: torch.Tensor, seeds: torch.Tensor | None) -> torch.Tensor:
    if seeds is None:
        return torch.randn_like(like)
    noise = []
    for seed in seeds.tolist():
        generator = torch.Generator().manual_seed(int(seed))
        noise.append(torch.randn(like.shape[1:], generator=generator, dtype=like.dtype))
    return torch.stack(noise).to(like.device)


@register_task("depth_mono")
class DepthMono(PhotometricDepth):
    """Monocular video: frames t-1 and t+1 with the pose network (monodepth2 M)."""

    fields = ("image", "image_prev", "image_next", "K")
    use_video = True
    parameters: ClassVar[dict[str, Param]] = {
        **PhotometricDepth.parameters,
        "pose_scale": POSE_SCALE,
    }


STEREO_PARAMETERS: dict[str, Param] = {
    **PhotometricDepth.parameters,
    "stereo_side": param(
        "sample",
        "Target camera: sample (left or right with p 0.5 per sample, as monodepth2 trains) or left only.",
        type="string",
        enum=list(STEREO_SIDES),
    ),
}


@register_task("depth_stereo")
class DepthStereo(PhotometricDepth):
    """Rectified stereo with the known baseline, no pose network (monodepth2 S)."""

    fields = ("image", "right", "K", "baseline")
    use_stereo = True
    parameters: ClassVar[dict[str, Param]] = STEREO_PARAMETERS


@register_task("depth_mono_stereo")
class DepthMonoStereo(PhotometricDepth):
    """Video and stereo together (monodepth2 MS): three sources in one per-pixel minimum."""

    # The right camera's neighbours too: a sample drawn with the right image as target takes its
    # temporal sources from the same camera.
    fields = ("image", "image_prev", "image_next", "right", "right_prev", "right_next", "K", "baseline")
    use_video = True
    use_stereo = True
    parameters: ClassVar[dict[str, Param]] = {**STEREO_PARAMETERS, "pose_scale": POSE_SCALE}
