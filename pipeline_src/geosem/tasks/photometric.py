"""Photometric losses shared by the self-supervised tasks (monodepth2 ``trainer.py``/``layers.py``).

* ``ssim``: monodepth2's SSIM, i.e. 3x3 *average* pooling of a reflection-padded image with
  C1 = 0.01^2 and C2 = 0.03^2. kornia's ``metrics.ssim`` / ``losses.ssim_loss`` weight the window with a
  Gaussian (sigma 1.5), a different loss (measured in docs/pretraining.md), so it
  is written out here.
* ``photometric_error``: 0.85 * (1 - SSIM) / 2 + 0.15 * L1, averaged over channels, per pixel (clamped
  like monodepth2: the SSIM term lies in [0, 1]).
* ``edge_aware_smoothness``: |d/dx d| exp(-|d/dx I|) + |d/dy d| exp(-|d/dy I|), mean over pixels.
* ``sigmoid_to_depth``: monodepth2's ``disp_to_depth``: the sigmoid spans disparities 1/max..1/min.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
SSIM_WEIGHT = 0.85


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel SSIM (B,C,H,W) of two images in [0, 1] over 3x3 windows, reflection-padded."""
    channels = x.shape[1]
    # monodepth2's ReflectionPad2d(1) + AvgPool2d(3, 1) over the five statistics' inputs stacked along
    # channels, as one grouped 3x3 convolution with weights 1/9: equal to the pooling to 2e-7 and 6x
    # faster on a CPU (7.7 vs 45 ms for 8x15x64x192, docs/pretraining.md).
    stacked = F.pad(torch.cat([x, y, x * x, y * y, x * y], dim=1), (1, 1, 1, 1), mode="reflect")
    weight = torch.full((stacked.shape[1], 1, 3, 3), 1.0 / 9.0, dtype=x.dtype, device=x.device)
    mu_x, mu_y, xx, yy, xy = F.conv2d(stacked, weight, groups=stacked.shape[1]).split(channels, dim=1)
    sigma_x = xx - mu_x**2
    sigma_y = yy - mu_y**2
    sigma_xy = xy - mu_x * mu_y
    numerator = (2 * mu_x * mu_y + SSIM_C1) * (2 * sigma_xy + SSIM_C2)
    denominator = (mu_x**2 + mu_y**2 + SSIM_C1) * (sigma_x + sigma_y + SSIM_C2)
    return numerator / denominator


def photometric_error(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """monodepth2's reprojection error (B,1,H,W): 0.85 (1 - SSIM)/2 + 0.15 L1, channel means."""
    l1 = (predicted - target).abs().mean(1, keepdim=True)
    structure = torch.clamp((1 - ssim(predicted, target)) / 2, 0, 1).mean(1, keepdim=True)
    return SSIM_WEIGHT * structure + (1 - SSIM_WEIGHT) * l1


def edge_aware_smoothness(values: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Edge-aware first-order smoothness of ``values`` (B,C,H,W) weighted by the image gradients."""
    grad_x = (values[..., :, :-1] - values[..., :, 1:]).abs()
    grad_y = (values[..., :-1, :] - values[..., 1:, :]).abs()
    image_x = (image[..., :, :-1] - image[..., :, 1:]).abs().mean(1, keepdim=True)
    image_y = (image[..., :-1, :] - image[..., 1:, :]).abs().mean(1, keepdim=True)
    return (grad_x * torch.exp(-image_x)).mean() + (grad_y * torch.exp(-image_y)).mean()


def mean_normalised(disparity: torch.Tensor) -> torch.Tensor:
    """Disparity divided by its per-image mean, so smoothness cannot be lowered by shrinking depth scale."""
    return disparity / (disparity.mean(dim=(2, 3), keepdim=True) + 1e-7)


def sigmoid_to_depth(sigmoid: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """Map a sigmoid output to depth over [min_depth, max_depth] linearly in disparity (monodepth2)."""
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    return 1.0 / (min_disp + (max_disp - min_disp) * sigmoid)


def upsample(x: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bilinear upsampling to ``size`` (monodepth2 upsamples every scale before warping)."""
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
