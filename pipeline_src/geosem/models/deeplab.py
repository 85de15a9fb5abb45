"""Cross-architecture fine-tuning (paper A, Table 4): an init's encoder inside a standard DeepLabV3.

The network is segmentation-models-pytorch's ``DeepLabV3`` on the timm universal encoder
``tu-<timm name>`` (ASPP + 3x3 conv + BatchNorm + ReLU, a 1x1 classifier, bilinear upsampling to the
input resolution), built without weights; the init's encoder weights are then copied into smp's encoder
tensor by tensor. GeoSem's ``Encoder`` and smp's ``TimmUniversalEncoder`` both hold a timm
``features_only`` model (``Encoder.body`` / ``encoder.model``), so the keys map one to one; a key
without a partner or a tensor of another shape is an error naming it, never a silent partial load.

Output stride: smp's ``DeepLabV3`` defaults to output stride 8 with ASPP rates (12, 24, 36)
(``encoder_output_stride=8``, ``decoder_atrous_rates=(12, 24, 36)`` in smp 0.6.0). The published code of
paper A used output stride 16 (layer4 dilated by 2) with ASPP rates (6, 12, 18) (docs/protocols.md 1.8), which
is what this module builds by default (``DEEPLAB_OUTPUT_STRIDE``, ``DEEPLAB_ATROUS_RATES``). Dilation
changes no weight shape, so the copy is the same either way. Inputs need sides divisible by the output
stride (smp checks), and training needs batches of at least 2 (the ASPP pooling branch has a BatchNorm
over a 1x1 map).

The ImageNet normalisation stays inside the model, applied once, as in ``Encoder.forward``.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
from torch import nn

from geosem.models.encoders import Encoder, normalisation_buffers

DEEPLAB_OUTPUT_STRIDE = 16
DEEPLAB_ATROUS_RATES = (6, 12, 18)
SMP_ENCODER_PREFIX = "encoder.model."


class DeepLabV3Model(nn.Module):
    """smp DeepLabV3 on a timm encoder, with input normalisation; ``forward`` returns ``{0: logits}``
    (logits at input resolution), the output of ``DenseModel`` with ``head_scales=(0,)``, so the
    segmentation task's loss and evaluation work unchanged."""

    def __init__(
        self,
        encoder_name: str,
        num_classes: int,
        output_stride: int = DEEPLAB_OUTPUT_STRIDE,
        atrous_rates: tuple[int, int, int] = DEEPLAB_ATROUS_RATES,
    ) -> None:
        super().__init__()
        self.encoder_name = encoder_name
        self.net = smp.DeepLabV3(
            encoder_name=f"tu-{encoder_name}",
            encoder_weights=None,
            encoder_output_stride=output_stride,
            decoder_atrous_rates=tuple(atrous_rates),
            classes=num_classes,
        )
        normalisation_buffers(self, encoder_name)

    def encoder_state(self) -> dict[str, torch.Tensor]:
        """smp's encoder tensors (parameters and BatchNorm buffers) under the timm model's own keys."""
        return {
            key[len(SMP_ENCODER_PREFIX) :]: value
            for key, value in self.net.state_dict().items()
            if key.startswith(SMP_ENCODER_PREFIX)
        }

    @torch.no_grad()
    def load_encoder(self, encoder: Encoder) -> None:
        """Copy every tensor of ``encoder.body`` into smp's encoder; strict in both directions."""
        if getattr(encoder, "name", self.encoder_name) != self.encoder_name:
            raise ValueError(
                f"cannot load a {encoder.name!r} encoder into a DeepLabV3 on {self.encoder_name!r}"
            )
        source = encoder.body.state_dict()
        target = self.encoder_state()
        unmapped = sorted(set(source) - set(target))
        missing = sorted(set(target) - set(source))
        if unmapped or missing:
            raise KeyError(
                f"encoder keys do not map onto smp's DeepLabV3 encoder ({self.encoder_name}): "
                f"unmapped {unmapped[:10]}, missing {[SMP_ENCODER_PREFIX + k for k in missing[:10]]}"
            )
        for key, value in source.items():
            if value.shape != target[key].shape or value.dtype != target[key].dtype:
                raise ValueError(
                    f"encoder tensor {key!r}: {tuple(value.shape)} {value.dtype} does not match smp's "
                    f"{SMP_ENCODER_PREFIX + key} {tuple(target[key].shape)} {target[key].dtype}"
                )
            target[key].copy_(value)  # state_dict tensors share storage with the module's

    def forward(self, image: torch.Tensor) -> dict[int, torch.Tensor]:
        return {0: self.net((image - self.mean) / self.std)}


def build_deeplabv3(
    encoder: Encoder,
    num_classes: int,
    output_stride: int = DEEPLAB_OUTPUT_STRIDE,
    atrous_rates: tuple[int, int, int] = DEEPLAB_ATROUS_RATES,
) -> DeepLabV3Model:
    """A DeepLabV3 whose encoder holds exactly ``encoder``'s weights (fresh ASPP head and classifier)."""
    if not isinstance(encoder, Encoder):
        raise TypeError(
            f"the deeplabv3 mode needs a CNN feature-pyramid encoder, got {type(encoder).__name__} "
            f"({getattr(encoder, 'name', '?')})"
        )
    model = DeepLabV3Model(encoder.name, num_classes, output_stride, atrous_rates)
    model.load_encoder(encoder)
    return model
