"""Networks: timm encoders (CNN feature pyramids and ViTs), a monodepth2-style multi-scale decoder, a
DPT decoder for ViTs, the dense model that joins them, and smp's DeepLabV3 for cross-architecture
fine-tuning."""

from geosem.models.decoders import MultiScaleDecoder
from geosem.models.deeplab import DeepLabV3Model, build_deeplabv3
from geosem.models.dense import DenseModel, build_dense_model, decoder_for
from geosem.models.dpt import DPTDecoder
from geosem.models.encoders import create_encoder
from geosem.models.vit import ViTEncoder, is_vit

__all__ = [
    "DPTDecoder",
    "DeepLabV3Model",
    "DenseModel",
    "MultiScaleDecoder",
    "ViTEncoder",
    "build_deeplabv3",
    "build_dense_model",
    "create_encoder",
    "decoder_for",
    "is_vit",
]
