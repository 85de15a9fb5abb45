"""monodepth2's pose network: a separate ResNet on a 6-channel frame pair and a small conv decoder.

``separate_resnet`` / ``pairs`` (docs/protocols.md 2): the two frames are stacked along channels (temporal
order), a ResNet encodes them (timm adapts an ImageNet conv1 to 6 channels by repeating its weights and
scaling them by 3/6, i.e. monodepth2's "duplicated and halved"), and the decoder (1x1 squeeze to 256,
two 3x3 convs + ReLU, 1x1 to 6) is averaged over space and scaled by ``output_scale`` (monodepth2 0.01):
axis-angle and translation. With Adam the scale sets how fast the pose can grow: from scratch, 0.01 left
the translation at 0.005 m per frame after 1000 steps where the world moves 0.8 m
(docs/pretraining.md).
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from torch import nn

from geosem.models.encoders import normalisation_buffers, resolve_imagenet_weights
from geosem.models.vit import is_vit


class PoseNet(nn.Module):
    def __init__(
        self,
        encoder: str = "resnet18",
        pretrained: bool = False,
        weights_file: Path | str | None = None,
        output_scale: float = 0.01,
    ) -> None:
        super().__init__()
        self.output_scale = output_scale
        if pretrained and weights_file is None:
            weights_file = resolve_imagenet_weights(encoder)  # a local file, never a download
        overlay = {"file": str(weights_file)} if pretrained else None
        # A ViT depth encoder gets a ViT pose encoder (its last block's tokens as a map, via timm's
        # feature getter); dynamic_img_size lets it take the training resolution instead of 224x224.
        vit = {"dynamic_img_size": True} if is_vit(encoder) else {}
        self.body = timm.create_model(
            encoder,
            features_only=True,
            in_chans=6,
            out_indices=(-1,),
            pretrained=pretrained,
            pretrained_cfg_overlay=overlay,
            **vit,
        )
        channels = self.body.feature_info.channels()[-1]
        self.decoder = nn.Sequential(
            nn.Conv2d(channels, 256, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 6, 1),
        )
        normalisation_buffers(self, encoder, repeat=2)  # the two frames, stacked

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """The 4x4 transform mapping points of ``first``'s camera into ``second``'s camera."""
        pair = (torch.cat([first, second], dim=1) - self.mean) / self.std
        out = self.output_scale * self.decoder(self.body(pair)[-1]).mean(dim=(2, 3))
        return pose_from_axis_angle(out[:, :3], out[:, 3:])


def pose_from_axis_angle(axis_angle: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    """(B,4,4) rigid transforms from (B,3) axis-angle rotations and (B,3) translations."""
    transform = torch.eye(4, dtype=axis_angle.dtype, device=axis_angle.device).repeat(len(axis_angle), 1, 1)
    transform[:, :3, :3] = axis_angle_to_rotation_matrix(axis_angle)
    transform[:, :3, 3] = translation
    return transform
