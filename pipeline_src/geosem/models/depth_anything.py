"""Depth Anything's released checkpoints: where they are published and how their encoder maps to timm.

Depth Anything (Yang et al. 2024) fine-tunes a DINOv2 ViT for relative depth with a DPT head. Its
released files (V1: ``LiheYoung/depth_anything_vit{s,b,l}14/pytorch_model.bin``; V2:
``depth-anything/Depth-Anything-V2-{Small,Base,Large}/depth_anything_v2_vit{s,b,l}.pth``) are one
plain state dict holding

* the encoder under ``pretrained.``, in Meta's DINOv2 key layout (``cls_token``, ``pos_embed``,
  ``mask_token``, ``patch_embed.*``, ``blocks.N.*``, ``norm.*``), and
* the DPT depth head under ``depth_head.`` (projections, resize layers, refinenets, output convs).

Study B freezes the encoder and trains its own decoder, so the head is dropped; the encoder is then
converted from Meta's layout to timm's by timm's own DINOv2 conversion (``geosem.models.dinov2``).
There is no Depth Anything release for ViT-g.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geosem.models.checkpoint_layouts import SHOWN_KEYS, CheckpointLayoutError

ENCODER_PREFIX = "pretrained."
HEAD_PREFIX = "depth_head."

# timm model name -> (Hugging Face repo, file) of each release, V1 first (the paper's Table 4 backbone).
RELEASES: dict[str, list[tuple[str, str]]] = {
    "vit_small_patch14_dinov2": [
        ("LiheYoung/depth_anything_vits14", "pytorch_model.bin"),
        ("depth-anything/Depth-Anything-V2-Small", "depth_anything_v2_vits.pth"),
    ],
    "vit_base_patch14_dinov2": [
        ("LiheYoung/depth_anything_vitb14", "pytorch_model.bin"),
        ("depth-anything/Depth-Anything-V2-Base", "depth_anything_v2_vitb.pth"),
    ],
    "vit_large_patch14_dinov2": [
        ("LiheYoung/depth_anything_vitl14", "pytorch_model.bin"),
        ("depth-anything/Depth-Anything-V2-Large", "depth_anything_v2_vitl.pth"),
    ],
}


def release_files(name: str) -> list[tuple[str, str]]:
    """(Hugging Face repo, file name) of Depth Anything's releases for timm model ``name``; [] if none."""
    return list(RELEASES.get(name.split(".")[0], []))


def encoder_tensors(checkpoint: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The encoder of a Depth Anything checkpoint, still in Meta's DINOv2 key names.

    ``pretrained.`` is stripped and ``depth_head.*`` dropped; any other key means the file is not a
    Depth Anything release, and the error names the file and the first such keys."""
    encoder: dict[str, torch.Tensor] = {}
    foreign: list[str] = []
    for key, value in checkpoint.items():
        key = str(key)
        if key.startswith(ENCODER_PREFIX) and isinstance(value, torch.Tensor):
            encoder[key.removeprefix(ENCODER_PREFIX)] = value
        elif not key.startswith(HEAD_PREFIX):
            foreign.append(key)
    if foreign or not encoder:
        shown = ", ".join(foreign[:SHOWN_KEYS]) or "none"
        raise CheckpointLayoutError(
            f"{path}: not a Depth Anything checkpoint (encoder under {ENCODER_PREFIX!r}, head under "
            f"{HEAD_PREFIX!r}); {len(encoder)} encoder tensors, other keys: {shown}"
        )
    return encoder
