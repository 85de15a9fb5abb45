"""A monodepth2-style decoder: 3x3 conv + ELU blocks, nearest x2 upsampling, skip connections.

It returns decoder features at four scales (0 = input resolution, 3 = 1/8); task heads turn those into
disparity, flow, colour or class logits. Keeping the heads separate is what lets a fine-tune replace only
the last layer of a depth network (paper A, Fig. 1b).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvBlock(nn.Module):
    """Reflection-padded 3x3 convolution followed by ELU, as in monodepth2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1, padding_mode="reflect")
        self.act = nn.ELU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class MultiScaleDecoder(nn.Module):
    """U-Net decoder over an encoder pyramid of five levels (reductions 2, 4, 8, 16, 32)."""

    def __init__(
        self, encoder_channels: list[int], channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    ) -> None:
        super().__init__()
        if len(encoder_channels) != 5 or len(channels) != 5:
            raise ValueError(
                "decoder expects a 5-level encoder pyramid and 5 decoder widths, "
                f"got {encoder_channels} / {channels}"
            )
        self.channels = tuple(channels)
        self.reduce = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in range(4, -1, -1):
            in_channels = encoder_channels[-1] if level == 4 else channels[level + 1]
            self.reduce.append(ConvBlock(in_channels, channels[level]))
            skip = encoder_channels[level - 1] if level > 0 else 0
            self.fuse.append(ConvBlock(channels[level] + skip, channels[level]))

    def forward(self, features: list[torch.Tensor]) -> dict[int, torch.Tensor]:
        """Map encoder features to decoder features keyed by scale (0 = full input resolution)."""
        x = features[-1]
        outputs: dict[int, torch.Tensor] = {}
        for step, level in enumerate(range(4, -1, -1)):
            x = self.reduce[step](x)
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            if level > 0:
                x = torch.cat([x, features[level - 1]], dim=1)
            x = self.fuse[step](x)
            if level < 4:
                outputs[level] = x
        return outputs
