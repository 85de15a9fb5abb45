"""Encoders come from timm (``features_only``), so any timm backbone with a feature pyramid plugs in."""

from __future__ import annotations

import timm
import torch
from torch import nn

# ImageNet statistics, applied inside the model so that a random and an ImageNet init see the same input
# normalisation (the seed code of study A normalised twice for ImageNet inits: protocols.md 1.5).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Encoder(nn.Module):
    """A timm feature pyramid with the input normalisation folded in; returns features fine to coarse."""

    def __init__(self, name: str, pretrained: bool = False) -> None:
        super().__init__()
        self.name = name
        self.body = timm.create_model(name, features_only=True, pretrained=pretrained)
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.body((image - self.mean) / self.std)


def create_encoder(name: str, pretrained: bool = False) -> Encoder:
    """Build an encoder by timm name; ``pretrained=True`` needs the weights in the local timm/HF cache."""
    if name not in timm.list_models():
        raise KeyError(f"unknown encoder {name!r}: not a timm model name")
    return Encoder(name, pretrained=pretrained)
