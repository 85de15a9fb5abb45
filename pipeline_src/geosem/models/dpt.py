"""A DPT-style decoder (Ranftl et al. 2021; DINOv2's DPT head, docs/protocols.md 3.1) behind the interface of
``MultiScaleDecoder``: ``DPTDecoder(encoder_channels, channels)``, ``.channels`` indexed by scale, and
``forward(features) -> {scale: tensor}`` for scales 0..3 (0 = input resolution, s = 1/2^s). Heads,
``replace_heads``, ``reset_decoder`` and the pre-training tasks therefore treat both decoders alike.

Stages, for the four token maps of ``ViTEncoder`` (stride 16, [patch token, class token] channels):

1. Readout "project": 1x1 conv [token, CLS] (2E) -> E + GELU (DPT's Linear(2E -> E) per token).
2. Reassemble: 1x1 projection to E/8, E/4, E/2, E channels, then resampling to strides 4, 8, 16, 32
   (transposed conv x4, transposed conv x2, identity, 3x3 stride-2 conv), then a bias-free 3x3 conv to the
   fusion width of that level.
3. Fusion, coarse to fine: each block adds a residual conv unit of the reassembled map to the coarser
   path, applies a second residual conv unit (pre-activation ReLU, 3x3 convs), upsamples bilinearly
   (align_corners=True) to the next finer stride and projects with a 1x1 conv. The blocks end at strides
   16, 8, 4 and 2; the last three are the outputs of scales 3, 2 and 1.
4. Scale 0: DPT's head stem: 3x3 conv, x2 bilinear upsampling to input resolution, 3x3 conv + ReLU; the
   task's head (``DenseModel.heads``) is the last layer on top.

Widths: DPT fuses at one width (256). Here the fusion width follows the decoder widths so that the scale
``s`` output has ``channels[s]`` channels, like the monodepth2 decoder (MiDaS's ``expand`` variant also
narrows the fusion width towards fine scales). ``channels=(128, 256, 256, 256, 256)`` gives DPT's widths;
the default (16, 32, 64, 128, 256) keeps the monodepth2 decoder's, so one config serves both encoders.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DPT_LEVELS = 4


class ResidualConvUnit(nn.Module):
    """DPT's pre-activation residual unit: x + conv(relu(conv(relu(x))))."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ReLU not in place: ``x`` is needed unchanged for the residual sum.
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """One DPT fusion step: (coarser path [+ unit(skip)]) -> unit -> upsample to ``size`` -> 1x1 conv."""

    def __init__(self, in_channels: int, out_channels: int, has_skip: bool) -> None:
        super().__init__()
        self.skip_unit = ResidualConvUnit(in_channels) if has_skip else None
        self.unit = ResidualConvUnit(in_channels)
        self.project = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, path: torch.Tensor, skip: torch.Tensor | None, size: tuple[int, int]) -> torch.Tensor:
        if self.skip_unit is not None and skip is not None:
            path = path + self.skip_unit(skip)
        path = self.unit(path)
        path = F.interpolate(path, size=size, mode="bilinear", align_corners=True)
        return self.project(path)


def _resample(channels: int, level: int) -> nn.Module:
    """Stride-16 tokens to stride 4 (level 0), 8, 16 or 32 (level 3), as in DPT's reassemble."""
    if level == 0:
        return nn.ConvTranspose2d(channels, channels, 4, stride=4)
    if level == 1:
        return nn.ConvTranspose2d(channels, channels, 2, stride=2)
    if level == 2:
        return nn.Identity()
    return nn.Conv2d(channels, channels, 3, stride=2, padding=1)


class DPTDecoder(nn.Module):
    """DPT reassemble + fusion over four ViT token maps; outputs keyed by scale 0..3 like
    ``MultiScaleDecoder``. ``encoder_channels``: the four levels' channels ([token, CLS], so twice the
    embedding width); ``channels``: five widths, ``channels[s]`` for the scale ``s`` output."""

    def __init__(
        self, encoder_channels: list[int], channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    ) -> None:
        super().__init__()
        if len(encoder_channels) != DPT_LEVELS or len(channels) != 5:
            raise ValueError(
                "DPT decoder expects 4 token levels and 5 decoder widths, "
                f"got {encoder_channels} / {channels}"
            )
        if any(c % 2 or c < 16 for c in encoder_channels):
            raise ValueError(
                f"encoder levels must be [token, CLS] pairs of even width, got {encoder_channels}"
            )
        self.channels = tuple(channels)
        # Fusion widths of the reassembled levels at strides 4, 8, 16, 32: the scale 2, 3 and 4 widths
        # (the two coarsest levels share channels[4]: the stride-32 block only feeds the stride-16 one).
        fusion = (channels[2], channels[3], channels[4], channels[4])
        self.readout = nn.ModuleList()
        self.reassemble = nn.ModuleList()
        for level, width in enumerate(encoder_channels):
            embed = width // 2
            post = max(embed // 2 ** (DPT_LEVELS - 1 - level), 1)  # E/8, E/4, E/2, E
            self.readout.append(nn.Sequential(nn.Conv2d(width, embed, 1), nn.GELU()))
            self.reassemble.append(
                nn.Sequential(
                    nn.Conv2d(embed, post, 1),
                    _resample(post, level),
                    nn.Conv2d(post, fusion[level], 3, padding=1, bias=False),
                )
            )
        # Fusion blocks from coarse (stride 32 -> 16) to fine (stride 4 -> 2); the output of the block
        # that ends at stride 2^s has channels[s] channels.
        self.fusion = nn.ModuleList(
            [
                FusionBlock(channels[4], channels[4], has_skip=False),
                FusionBlock(channels[4], channels[3], has_skip=True),
                FusionBlock(channels[3], channels[2], has_skip=True),
                FusionBlock(channels[2], channels[1], has_skip=True),
            ]
        )
        self.stem_in = nn.Conv2d(channels[1], channels[0], 3, padding=1)
        self.stem_out = nn.Conv2d(channels[0], channels[0], 3, padding=1)

    def forward(self, features: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Map the encoder's token maps to decoder features keyed by scale (0 = full input resolution)."""
        maps = [
            self.reassemble[level](self.readout[level](x)) for level, x in enumerate(features)
        ]  # strides 4, 8, 16, 32
        finest = maps[0].shape[-2:]
        # Target size of each fusion block: the next finer reassembled map, then stride 2. Sizes are
        # taken from the maps, not x2, so odd token grids (e.g. 80 px -> 5 tokens) still line up.
        sizes = [maps[2].shape[-2:], maps[1].shape[-2:], finest, (2 * finest[0], 2 * finest[1])]
        outputs: dict[int, torch.Tensor] = {}
        path = maps[3]
        for step, block in enumerate(self.fusion):
            skip = None if step == 0 else maps[3 - step]
            path = block(path, skip, tuple(sizes[step]))
            if step > 0:
                outputs[4 - step] = path  # strides 8, 4, 2: scales 3, 2, 1
        x = self.stem_in(path)
        x = F.interpolate(x, size=(4 * finest[0], 4 * finest[1]), mode="bilinear", align_corners=True)
        outputs[0] = F.relu(self.stem_out(x))
        return outputs
