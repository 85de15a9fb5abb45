"""The dense prediction model: encoder, multi-scale decoder and one head per output scale."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from geosem.models.decoders import MultiScaleDecoder
from geosem.models.encoders import Encoder, create_encoder

SCALES = (0, 1, 2, 3)


class DenseModel(nn.Module):
    """Encoder + decoder + per-scale heads; ``forward`` returns head outputs keyed by scale.

    ``head_scales`` limits which scales get a head: depth pre-training predicts at all four scales, a
    segmentation fine-tune only at full resolution.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: MultiScaleDecoder,
        out_channels: int,
        head_scales: tuple[int, ...] = SCALES,
        head_kernel: int = 3,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.out_channels = out_channels
        self.head_scales = tuple(head_scales)
        self.heads = nn.ModuleDict(
            {
                str(scale): nn.Conv2d(
                    decoder.channels[scale],
                    out_channels,
                    head_kernel,
                    padding=head_kernel // 2,
                    padding_mode="reflect" if head_kernel > 1 else "zeros",
                )
                for scale in self.head_scales
            }
        )

    frozen_encoder: bool = False

    def freeze_encoder(self) -> None:
        """Freeze the encoder for real: no gradients, and BatchNorm statistics fixed (eval mode).

        The seed code of study A only called ``encoder.eval()``, so its "frozen" encoder kept training
        (protocols.md 1.6); here the encoder's parameters leave the optimiser altogether.
        """
        self.frozen_encoder = True
        for parameter in self.encoder.parameters():
            parameter.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> DenseModel:
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # model.train() must not wake the frozen BatchNorm layers
        return self

    def reset_decoder(self) -> None:
        """Fresh random decoder weights (the "encoder only" transfer of paper A, Table 3)."""
        self.decoder = MultiScaleDecoder(self.encoder.channels, self.decoder.channels)

    def replace_heads(self, out_channels: int, head_scales: tuple[int, ...], head_kernel: int) -> None:
        """Swap the last layer(s) for fresh ones, keeping encoder and decoder weights."""
        fresh = DenseModel(self.encoder, self.decoder, out_channels, head_scales, head_kernel)
        self.out_channels = out_channels
        self.head_scales = fresh.head_scales
        self.heads = fresh.heads

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        decoded = self.decoder(self.encoder(image))
        return {scale: self.heads[str(scale)](decoded[scale]) for scale in self.head_scales}


def build_dense_model(
    encoder: str,
    out_channels: int,
    *,
    decoder_channels: tuple[int, ...] = (16, 32, 64, 128, 256),
    head_scales: tuple[int, ...] = SCALES,
    head_kernel: int = 3,
    pretrained_encoder: bool = False,
    weights_file: Path | str | None = None,
) -> DenseModel:
    enc = create_encoder(encoder, pretrained=pretrained_encoder, weights_file=weights_file)
    dec = MultiScaleDecoder(enc.channels, tuple(decoder_channels))
    return DenseModel(enc, dec, out_channels, head_scales, head_kernel)
