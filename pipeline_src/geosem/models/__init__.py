"""Networks: timm encoders, a monodepth2-style multi-scale decoder, and the dense model that joins them."""

from geosem.models.decoders import MultiScaleDecoder
from geosem.models.dense import DenseModel, build_dense_model
from geosem.models.encoders import create_encoder

__all__ = ["DenseModel", "MultiScaleDecoder", "build_dense_model", "create_encoder"]
