"""A timm Vision Transformer as a dense encoder: tokens of four evenly spaced blocks as feature maps.

The DPT decoder (``geosem.models.dpt``) turns these into a multi-scale pyramid. The encoder keeps the
contract of ``geosem.models.encoders.Encoder`` (``.body``, ``.channels``, ``.reductions``, the ImageNet
normalisation inside ``forward``, a list of NCHW tensors out), so ``DenseModel`` and the pre-training
tasks need not know which kind of encoder they hold.

* ``dynamic_img_size=True``: timm interpolates the position embedding to the input's token grid, so any
  input whose sides are multiples of the patch size works (e.g. KITTI's 192x640 or the 64x96 fixture),
  not only the 224x224 of ImageNet pre-training.
* Blocks: ``d/4 - 1, d/2 - 1, 3d/4 - 1, d - 1`` of ``d`` blocks, i.e. [2, 5, 8, 11] for ViT-S/B and
  [5, 11, 17, 23] for ViT-L, DPT's hooks (docs/protocols.md 3.1). Raw block outputs, without the final norm,
  as DINOv2's DPT head reads them (``norm=False``).
* Readout: every level is returned as the patch tokens concatenated with the class token broadcast over
  the grid (2 x embed_dim channels), so DPT's "project" readout (Linear(2E -> E) + GELU on
  [token, CLS]) becomes a 1x1 convolution in the decoder. The encoder itself stays weight-free beyond
  timm's, and its outputs stay plain tensors (the siamese flow model concatenates them per level).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from timm.models import model_entrypoint
from torch import nn

from geosem.models.encoders import normalisation_buffers, resolve_imagenet_weights

VIT_LEVELS = 4
# The DPT reassemble stage maps tokens to strides 4, 8, 16, 32 with x4 / x2 transposed convolutions,
# identity and a stride-2 convolution: exact only for 16-pixel patches.
VIT_PATCH = 16


def is_vit(name: str) -> bool:
    """Whether timm model ``name`` is a plain Vision Transformer (timm's ``vision_transformer`` module:
    ``vit_tiny_patch16_224``, ``vit_small_patch16_224``, ...), which gets the ViT encoder + DPT decoder."""
    try:
        return model_entrypoint(name).__module__ == "timm.models.vision_transformer"
    except (RuntimeError, KeyError):  # not a timm model: create_encoder reports it
        return False


def vit_block_indices(depth: int, levels: int = VIT_LEVELS) -> list[int]:
    """``levels`` evenly spaced block indices ending at the last block ([2, 5, 8, 11] for 12 blocks)."""
    if depth < levels:
        raise ValueError(f"a ViT with {depth} blocks cannot give {levels} distinct feature levels")
    return [round((level + 1) * depth / levels) - 1 for level in range(levels)]


class ViTEncoder(nn.Module):
    """Tokens of four ViT blocks as (B, 2E, H/16, W/16) maps ([patch token, class token]), fine to coarse
    by block depth (all at the same stride: the DPT decoder resamples them)."""

    def __init__(self, name: str, pretrained: bool = False, weights_file: Path | None = None) -> None:
        super().__init__()
        self.name = name
        if pretrained and weights_file is None:
            weights_file = resolve_imagenet_weights(name)  # a local file, never a download
        overlay = {"file": str(weights_file)} if pretrained else None
        self.body = timm.create_model(
            name,
            pretrained=pretrained,
            pretrained_cfg_overlay=overlay,
            dynamic_img_size=True,
            num_classes=0,
        )
        self.patch = int(self.body.patch_embed.patch_size[0])
        if tuple(self.body.patch_embed.patch_size) != (VIT_PATCH, VIT_PATCH):
            raise ValueError(
                f"encoder {name!r} has {self.body.patch_embed.patch_size} patches; the DPT decoder "
                f"reassembles {VIT_PATCH}x{VIT_PATCH}-patch tokens only"
            )
        if getattr(self.body, "cls_token", None) is None:
            raise ValueError(f"encoder {name!r} has no class token, which DPT's 'project' readout reads")
        self.indices = vit_block_indices(len(self.body.blocks))
        # The final norm and the classifier are never used: drop them so that no dead parameter sits in
        # the optimiser or the checkpoint.
        self.body.prune_intermediate_layers(self.indices, prune_norm=True, prune_head=True)
        embed = int(self.body.embed_dim)
        self.channels: list[int] = [2 * embed] * VIT_LEVELS
        self.reductions: list[int] = [self.patch] * VIT_LEVELS
        normalisation_buffers(self, name)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        height, width = image.shape[-2:]
        if height % self.patch or width % self.patch:
            # timm would silently drop the border rows / columns that do not fill a patch.
            raise ValueError(
                f"{self.name}: input {height}x{width} must have sides that are multiples of {self.patch}"
            )
        levels = self.body.forward_intermediates(
            (image - self.mean) / self.std,
            indices=self.indices,
            return_prefix_tokens=True,
            norm=False,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        outputs = []
        for tokens, prefix in levels:
            cls = prefix[:, 0, :, None, None].expand(-1, -1, *tokens.shape[-2:])
            outputs.append(torch.cat([tokens, cls], dim=1))
        return outputs
