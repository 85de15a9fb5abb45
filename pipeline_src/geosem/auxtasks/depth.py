"""Study B's depth objective (DINOv2's recipe), its augmentation, the auxiliary resize, and evaluation.

Loss: DINOv2's depth heads train with SigLoss (weight 1) plus a GradientLoss (weight 0.5). SigLoss is
sqrt(Var(g) + 0.15 mean(g)^2) with g = ln(p + 1e-3) - ln(t + 1e-3) over every valid pixel of the batch,
Var unbiased (torch.var's default, as DINOv2 computes it), and sqrt(0.15 mean(g)^2) during a warm-up
(DINOv2: its first 100 calls; here the first ``warm_up_steps`` steps, a function of the step so that a
resumed run computes the same loss). DINOv2's GradientLoss indexes its (N, 1, H, W) input as if it were
(H, W): it subsamples batch and channel axes and differences images of the batch two apart, which is
exactly 0 for batches of 1 or 2 samples per GPU, the recipe's 2. ``gradient_loss`` offers:

* "off" (the default): SigLoss alone. This is the loss DINOv2's recipe (and so paper B, which adopts
  it) effectively trains with, at any batch size; copying the quirk would add, at our batches of more
  than 2, a cross-image term the published recipe never had in effect.
* "dinov2": the quirk reproduced (strides 2, 4, 6 and differences two apart along the batch axis,
  normalised by the valid-pixel count of the slice), for checking that claim.
* "intended": the multi-scale gradient-matching loss the code is meant to be (MegaDepth's): at scales
  1/2^i, i = 0..3 (strided subsampling of H and W), the residual R = ln(p + eps) - ln(t + eps) on valid
  pixels; sum of |R(x+1) - R(x)| over horizontally and vertically adjacent valid pairs, divided by the
  image's valid pixels at that scale, averaged over the images that have any, summed over the scales.
  R changes only where the prediction's shape differs from the target's: p = c t gives 0 (exactly with
  eps 0). Behind the flag, for ablation.

Augmentation (``augment_depth_sample``): DINOv2's NYU pipeline at the shard's resolution: rotation by
U(-2.5, 2.5) degrees with p 0.5 (image bilinear, depth nearest, zero = invalid outside), horizontal flip
p 0.5, a random crop to ``crop``, and with p 0.5 colour augmentation (gamma U(0.9, 1.1), brightness
U(0.75, 1.25), per-channel colour U(0.9, 1.1)) applied to the [0, 1] image and clipped; "kitti" the same
with brightness U(0.9, 1.1). Dataset crops (NYU's white border, KITTI's KB crop) belong to the shards.
Every number is drawn from the given generator, all of them on every call in one order, so a sample's
augmentation is a pure function of its generator (exact resume).

Auxiliary samples (``resize_aux_sample``) are resized, whole, to the depth crop: every auxiliary batch
then has the depth batch's size (one token grid for the frozen backbone and the shared decoder), and no
class of the image is cut away, which matters to MLDC's target (the classes present). The aspect ratio
may change; images are resampled bilinearly (antialiased), labels by nearest neighbour.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from geosem.labelspaces import IGNORE_INDEX
from geosem.metrics.depth import DEPTH_CROPS, DEPTH_METRIC_NAMES, depth_metrics
from geosem.shards.reader import ShardSet
from geosem.tasks.base import iterate_batches

GRADIENT_LOSSES = ("intended", "dinov2", "off")
DEFAULT_GRADIENT_LOSS = "off"
LOG_EPS = 1e-3  # DINOv2's eps inside both logs ("avoid grad explode")
INTENDED_SCALES = 4


def _as_nchw(depth: Tensor) -> Tensor:
    """Depth maps (N, H, W) or (N, 1, H, W) as (N, 1, H, W)."""
    if depth.ndim == 3:
        return depth[:, None]
    if depth.ndim == 4 and depth.shape[1] == 1:
        return depth
    raise ValueError(f"depth maps must be (N, H, W) or (N, 1, H, W), got {tuple(depth.shape)}")


def _log_residual(pred: Tensor, target: Tensor, valid: Tensor, eps: float) -> Tensor:
    """ln(p + eps) - ln(t + eps) on valid pixels, 0 elsewhere (invalid values never reach a log, so
    neither their value nor their gradient can be NaN)."""
    one = torch.ones((), dtype=pred.dtype, device=pred.device)
    p = torch.where(valid, pred, one)
    t = torch.where(valid, target.to(pred.dtype), one)
    return torch.where(valid, torch.log(p + eps) - torch.log(t + eps), 0.0)


def sig_loss(
    pred: Tensor,
    target: Tensor,
    valid: Tensor,
    *,
    variance_focus: float = 0.15,
    warm_up: bool = False,
    eps: float = LOG_EPS,
) -> Tensor:
    """DINOv2's SigLoss over the valid pixels of the whole batch (module docstring). No valid pixel:
    a zero loss on the graph; one valid pixel: its variance taken as 0 (unbiased Var is undefined)."""
    if pred.shape != target.shape or valid.shape != target.shape:
        raise ValueError(
            f"sig_loss: prediction {tuple(pred.shape)}, target {tuple(target.shape)} and valid "
            f"{tuple(valid.shape)} must have one shape"
        )
    g = torch.log(pred[valid] + eps) - torch.log(target[valid].to(pred.dtype) + eps)
    if g.numel() == 0:
        return pred.sum() * 0.0
    bias = variance_focus * g.mean() ** 2
    if warm_up:
        return torch.sqrt(bias)
    variance = torch.var(g) if g.numel() > 1 else g.sum() * 0.0
    return torch.sqrt(variance + bias)


def _dinov2_gradient_loss(pred: Tensor, target: Tensor, valid: Tensor, eps: float) -> Tensor:
    """DINOv2's GradientLoss as it runs on (N, 1, H, W): its 2-D indexing lands on the batch and channel
    axes (strides 2i for i = 1..3, differences two apart), each slice normalised by its valid count."""
    residual = _log_residual(pred, target, valid, eps)
    mask = valid.to(pred.dtype)
    total = pred.sum() * 0.0
    slices = [(slice(None), slice(None))] + [
        (slice(None, None, 2 * i), slice(None, None, 2 * i)) for i in (1, 2, 3)
    ]
    for index in slices:
        r, m = residual[index], mask[index]
        count = m.sum()
        if float(count) == 0.0:
            continue  # DINOv2 divides 0 by 0 here; an empty slice adds nothing instead
        v = torch.abs(r[0:-2] - r[2:]) * m[0:-2] * m[2:]
        h = torch.abs(r[:, 0:-2] - r[:, 2:]) * m[:, 0:-2] * m[:, 2:]
        total = total + (h.sum() + v.sum()) / count
    return total


def _intended_gradient_loss(pred: Tensor, target: Tensor, valid: Tensor, eps: float) -> Tensor:
    """Multi-scale gradient matching of the log-depth residual over H and W, per image (docstring)."""
    total = pred.sum() * 0.0
    for level in range(INTENDED_SCALES):
        step = 2**level
        p, t, v = (x[..., ::step, ::step] for x in (pred, target, valid))
        r = _log_residual(p, t, v, eps)
        m = v.to(pred.dtype)
        h = (torch.abs(r[..., :, 1:] - r[..., :, :-1]) * m[..., :, 1:] * m[..., :, :-1]).sum(dim=(-3, -2, -1))
        w = (torch.abs(r[..., 1:, :] - r[..., :-1, :]) * m[..., 1:, :] * m[..., :-1, :]).sum(dim=(-3, -2, -1))
        count = m.sum(dim=(-3, -2, -1))
        scored = count > 0
        if bool(scored.any()):
            total = total + ((h + w)[scored] / count[scored]).mean()
    return total


def gradient_loss(
    pred: Tensor, target: Tensor, valid: Tensor, variant: str = DEFAULT_GRADIENT_LOSS, *, eps: float = LOG_EPS
) -> Tensor:
    """The gradient term of the depth loss: ``variant`` "intended", "dinov2" or "off" (module docstring).
    Depth maps (N, H, W) or (N, 1, H, W); ``valid`` of the same shape."""
    if variant not in GRADIENT_LOSSES:
        raise ValueError(f"gradient loss must be one of {list(GRADIENT_LOSSES)}, got {variant!r}")
    pred, target, valid = _as_nchw(pred), _as_nchw(target), _as_nchw(valid)
    if pred.shape != target.shape or valid.shape != target.shape:
        raise ValueError(
            f"gradient_loss: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    if variant == "off":
        return pred.sum() * 0.0
    if variant == "dinov2":
        return _dinov2_gradient_loss(pred, target, valid, eps)
    return _intended_gradient_loss(pred, target, valid, eps)


@dataclass(frozen=True)
class DepthObjective:
    """Study B's depth loss: SigLoss (warm-up for the first ``warm_up_steps`` steps) plus
    ``gradient_weight`` x the ``gradient_loss`` variant, on pixels with min_depth < target < max_depth."""

    min_depth: float
    max_depth: float
    gradient_loss: str = DEFAULT_GRADIENT_LOSS
    gradient_weight: float = 0.5
    warm_up_steps: int = 100

    def __post_init__(self) -> None:
        if self.gradient_loss not in GRADIENT_LOSSES:
            raise ValueError(
                f"gradient_loss must be one of {list(GRADIENT_LOSSES)}, got {self.gradient_loss!r}"
            )
        if not 0 <= self.min_depth < self.max_depth:
            raise ValueError(f"need 0 <= min_depth < max_depth, got {self.min_depth}, {self.max_depth}")

    def valid(self, target: Tensor) -> Tensor:
        return (target > self.min_depth) & (target < self.max_depth)

    def loss(self, pred: Tensor, batch: dict[str, Tensor], step: int) -> tuple[Tensor, dict[str, float]]:
        """The loss of ``pred`` (B, 1, H, W) on ``batch["depth"]`` at global step ``step``, and its logs."""
        target = _as_nchw(batch["depth"]).to(pred.dtype)
        if pred.shape != target.shape:
            raise ValueError(
                f"depth prediction {tuple(pred.shape)} does not match the batch's depth "
                f"{tuple(target.shape)}; predict at the ground truth's size"
            )
        valid = self.valid(target)
        sig = sig_loss(pred, target, valid, warm_up=step < self.warm_up_steps)
        grad = gradient_loss(pred, target, valid, self.gradient_loss)
        total = sig + self.gradient_weight * grad
        logs = {
            "depth_loss": float(total.detach()),
            "depth_sig_loss": float(sig.detach()),
            "depth_gradient_loss": float(grad.detach()),
            "depth_valid_fraction": float(valid.float().mean()),
        }
        return total, logs


# --- augmentation ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthRecipe:
    """One training augmentation recipe (probabilities and ranges as DINOv2's configs give them)."""

    rotate_p: float = 0.5
    degrees: float = 2.5
    flip_p: float = 0.5
    random_crop: bool = True
    colour_p: float = 0.5
    gamma: tuple[float, float] = (0.9, 1.1)
    brightness: tuple[float, float] = (0.75, 1.25)
    colour: tuple[float, float] = (0.9, 1.1)


DEPTH_RECIPES = {
    "nyu": DepthRecipe(),
    "kitti": DepthRecipe(brightness=(0.9, 1.1)),
    "none": DepthRecipe(rotate_p=0.0, flip_p=0.0, random_crop=False, colour_p=0.0),
}
_SAMPLE_FIELDS = ("image", "depth", "label")


def _crop_offsets(size: tuple[int, int], crop: tuple[int, int], draws: np.ndarray | None) -> tuple[int, int]:
    """Top-left corner of a crop: uniform over every position (``draws`` in [0, 1)), or centred."""
    (height, width), (crop_h, crop_w) = size, crop
    if crop_h > height or crop_w > width:
        raise ValueError(f"crop {crop_h}x{crop_w} is larger than the sample's {height}x{width}")
    if draws is None:
        return (height - crop_h) // 2, (width - crop_w) // 2
    return int(draws[0] * (height - crop_h + 1)), int(draws[1] * (width - crop_w + 1))


def _geometric(
    value: Tensor, name: str, angle: float | None, flip: bool, box: tuple[int, int, int, int]
) -> Tensor:
    """Rotate (bilinear for the image, nearest for depth / labels, filled with their invalid value),
    flip and crop one field; ``box`` = (top, left, height, width)."""
    if angle is not None:
        image = name == "image"
        fill = 0.0 if name != "label" else float(IGNORE_INDEX)
        mode = InterpolationMode.BILINEAR if image else InterpolationMode.NEAREST
        flat = value if value.ndim == 3 else value[None]
        value = TF.rotate(flat, angle, interpolation=mode, fill=fill).reshape(value.shape)
    if flip:
        value = torch.flip(value, dims=(-1,))
    top, left, height, width = box
    return value[..., top : top + height, left : left + width].contiguous()


def augment_depth_sample(
    sample: dict[str, Tensor], rng: np.random.Generator, recipe: str, crop: tuple[int, int]
) -> dict[str, Tensor]:
    """One training sample augmented by ``recipe`` ("nyu", "kitti" or "none") and cropped to ``crop``
    (H, W). Fields: "image" (3, H, W) float in [0, 1], "depth" (H, W) or (1, H, W) as given, optionally
    "label" (H, W); all move together. Every draw comes from ``rng``."""
    if recipe not in DEPTH_RECIPES:
        raise ValueError(f"depth augmentation recipe must be one of {sorted(DEPTH_RECIPES)}, got {recipe!r}")
    unknown = sorted(set(sample) - set(_SAMPLE_FIELDS))
    if unknown or "image" not in sample or "depth" not in sample:
        raise KeyError(f"a depth sample holds image, depth and optionally label; got fields {sorted(sample)}")
    spec = DEPTH_RECIPES[recipe]
    size = (int(sample["image"].shape[-2]), int(sample["image"].shape[-1]))
    if recipe == "none":
        angle, flip, offsets, colour = None, False, _crop_offsets(size, crop, None), None
    else:
        # Every number drawn, in one fixed order, whatever is applied: a choice never shifts later draws.
        # u: rotate?, flip?, crop top, crop left, colour?
        u = rng.random(5)
        degrees = float(rng.uniform(-spec.degrees, spec.degrees))
        gamma, brightness = float(rng.uniform(*spec.gamma)), float(rng.uniform(*spec.brightness))
        colours = rng.uniform(*spec.colour, size=3)
        angle = degrees if u[0] < spec.rotate_p else None
        flip = bool(u[1] < spec.flip_p)
        offsets = _crop_offsets(size, crop, u[2:4] if spec.random_crop else None)
        colour = (gamma, brightness, colours) if u[4] < spec.colour_p else None
    box = (*offsets, *crop)
    out = {name: _geometric(value, name, angle, flip, box) for name, value in sample.items()}
    if colour is not None:
        gamma, brightness, colours = colour
        scale = torch.as_tensor(colours, dtype=out["image"].dtype)[:, None, None] * brightness
        out["image"] = (out["image"].clamp_min(0.0) ** gamma * scale).clamp(0.0, 1.0)
    return out


def resize_aux_sample(
    sample: dict[str, Tensor], size: tuple[int, int], rng: np.random.Generator, *, flip_p: float = 0.5
) -> dict[str, Tensor]:
    """An auxiliary sample resized to ``size`` (the depth crop, H x W; module docstring) and flipped
    with probability ``flip_p`` (one draw from ``rng``). "image" (3, H, W) bilinear, antialiased;
    "label" (H, W) nearest; other fields are refused."""
    unknown = sorted(set(sample) - {"image", "label"})
    if unknown:
        raise KeyError(f"an auxiliary sample holds image and optionally label; got fields {sorted(sample)}")
    flip = bool(rng.random() < flip_p)
    out: dict[str, Tensor] = {}
    image = sample["image"]
    if tuple(image.shape[-2:]) != tuple(size):
        image = F.interpolate(
            image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=True
        )[0]
        image = image.clamp(0.0, 1.0)
    out["image"] = image
    if "label" in sample:
        label = sample["label"]
        if tuple(label.shape[-2:]) != tuple(size):
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest-exact")[0, 0]
            label = label.to(sample["label"].dtype)
        out["label"] = label
    if flip:
        out = {name: torch.flip(value, dims=(-1,)) for name, value in out.items()}
    return out


# --- evaluation -----------------------------------------------------------------------------------------


def _predict_at(predict: Callable[[Tensor], Tensor], image: Tensor, size: tuple[int, int]) -> Tensor:
    """``predict(image)`` as (B, H, W) at the ground truth's ``size`` (bilinear if it differs)."""
    depth = _as_nchw(predict(image)).float()
    if tuple(depth.shape[-2:]) != tuple(size):
        depth = F.interpolate(depth, size=size, mode="bilinear", align_corners=False)
    return depth[:, 0]


@torch.no_grad()
def evaluate_depth(
    predict: Callable[[Tensor], Tensor],
    shards: ShardSet,
    ids: Sequence[str],
    *,
    crop: str,
    min_depth: float,
    max_depth: float,
    flip_tta: bool,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Metric depth scores of ``predict(image (B,3,H,W)) -> depth (B,1,H,W)`` on ``ids`` of ``shards``.

    With ``flip_tta`` the prediction is the mean of the prediction and the flipped-back prediction of
    the flipped image (DINOv2's test-time flip). Scored by ``geosem.metrics.depth.depth_metrics`` with
    no median scaling, on ``DEPTH_CROPS[crop]`` and min_depth < gt < max_depth, predictions clamped to
    the caps. Returns ``depth_<metric>``, ``depth_abs_rel_x1e4`` (paper B's unit), ``depth_images_scored``
    and the settings as ``depth_eval_*``.
    """
    if crop not in DEPTH_CROPS:
        raise ValueError(f"depth evaluation crop must be one of {sorted(DEPTH_CROPS)}, got {crop!r}")
    gts, preds = [], []
    for batch in iterate_batches(shards, ids, ("image", "depth"), batch_size, device):
        gt = batch["depth"]
        size = (int(gt.shape[-2]), int(gt.shape[-1]))
        depth = _predict_at(predict, batch["image"], size)
        if flip_tta:
            flipped = _predict_at(predict, torch.flip(batch["image"], dims=(-1,)), size)
            depth = 0.5 * (depth + torch.flip(flipped, dims=(-1,)))
        preds.append(depth.cpu().numpy())
        gts.append(gt.reshape(depth.shape).cpu().numpy())
    if not gts:
        raise ValueError(f"depth evaluation on {shards.root}: no samples to score (ids is empty)")
    scores = depth_metrics(
        np.concatenate(gts),
        np.concatenate(preds),
        min_depth=min_depth,
        max_depth=max_depth,
        median_scaling=False,
        crop=DEPTH_CROPS[crop],
    )
    out: dict[str, Any] = {f"depth_{name}": scores[name] for name in DEPTH_METRIC_NAMES}
    out["depth_abs_rel_x1e4"] = scores["abs_rel"] * 1e4
    out["depth_images_scored"] = scores["images_scored"]
    out |= {
        "depth_eval_crop": crop,
        "depth_eval_min_depth": min_depth,
        "depth_eval_max_depth": max_depth,
        "depth_eval_flip_tta": flip_tta,
        "depth_eval_images": len(ids),
        "depth_eval_median_scaled": False,
        "depth_eval_resolution": "x".join(str(side) for side in gts[0].shape[-2:]),
    }
    return out
