"""The dense prediction model: encoder, multi-scale decoder and one head per output scale.

Two encoder/decoder pairs share this model: a timm CNN pyramid with the monodepth2 decoder
(``MultiScaleDecoder``), and a timm ViT with a DPT decoder (``DPTDecoder``), chosen by the encoder name.
Both decoders take ``(encoder_channels, channels)`` and return features keyed by scale, so heads, head
replacement, decoder reset and freezing do not depend on the pair.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from geosem.models.decoders import MultiScaleDecoder
from geosem.models.dpt import DPTDecoder
from geosem.models.encoders import Encoder, create_encoder
from geosem.models.vit import ViTEncoder

SCALES = (0, 1, 2, 3)


class DenseModel(nn.Module):
    """Encoder + decoder + per-scale heads; ``forward`` returns head outputs keyed by scale.

    ``head_scales`` limits which scales get a head: depth pre-training predicts at all four scales, a
    segmentation fine-tune only at full resolution.
    """

    def __init__(
        self,
        encoder: Encoder | ViTEncoder,
        decoder: MultiScaleDecoder | DPTDecoder,
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

    def freeze_encoder(self, gradients: bool = False) -> None:
        """Freeze the encoder for real: no gradients, and BatchNorm statistics fixed (eval mode).

        The seed code of study A only called ``encoder.eval()``, so its "frozen" encoder kept training
        (docs/protocols.md 1.6); here the encoder's parameters leave the optimiser altogether.
        ``gradients=True`` reproduces the seed code for comparison (the legacy protocol): only the
        BatchNorm running statistics stay fixed, the encoder's weights keep getting gradients and change.
        """
        self.frozen_encoder = True
        if not gradients:
            for parameter in self.encoder.parameters():
                parameter.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> DenseModel:
        super().train(mode)
        if self.frozen_encoder:
            self.encoder.eval()  # model.train() must not wake the frozen BatchNorm layers
        return self

    def reset_decoder(self) -> None:
        """Fresh random decoder weights (the "encoder only" transfer of paper A, Table 3), of the same
        type and widths as the current decoder (monodepth2 or DPT)."""
        self.decoder = type(self.decoder)(self.encoder.channels, self.decoder.channels)

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
    """A DenseModel on timm encoder ``encoder``: a ViT name (``is_vit``: ``vit_small_patch16_224``, ...)
    gets the ViT encoder and a DPT decoder, any other name a feature pyramid and the monodepth2 decoder.
    ``decoder_channels`` are the five decoder widths either way (scale ``s`` has ``decoder_channels[s]``)."""
    enc = create_encoder(encoder, pretrained=pretrained_encoder, weights_file=weights_file)
    dec = decoder_for(enc, tuple(decoder_channels))
    return DenseModel(enc, dec, out_channels, head_scales, head_kernel)


def decoder_for(
    encoder: Encoder | ViTEncoder, channels: tuple[int, ...], encoder_channels: list[int] | None = None
) -> MultiScaleDecoder | DPTDecoder:
    """A fresh decoder that fits ``encoder``: DPT for a ViT, monodepth2's otherwise. ``encoder_channels``
    overrides the encoder's (the siamese flow model decodes two encodings concatenated per level)."""
    kind = DPTDecoder if isinstance(encoder, ViTEncoder) else MultiScaleDecoder
    return kind(list(encoder.channels if encoder_channels is None else encoder_channels), tuple(channels))
