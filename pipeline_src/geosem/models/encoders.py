"""Encoders come from timm (``features_only``), so any timm backbone with a feature pyramid plugs in."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import timm
import torch
from torch import nn

if TYPE_CHECKING:
    from geosem.models.vit import ViTEncoder

# ImageNet statistics: the normalisation of encoders whose timm config names none.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def input_normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the pretrained weights of timm model ``name`` expect: ImageNet's for ResNets, 0.5 for
    timm's default ViT-T/S/B weights. Applied inside the model, once, so a random and a pretrained init
    of one encoder see the same input (the seed code of study A normalised twice for ImageNet inits:
    docs/protocols.md 1.5)."""
    cfg = timm.models.get_pretrained_cfg(name)
    mean = getattr(cfg, "mean", None) if cfg is not None else None
    std = getattr(cfg, "std", None) if cfg is not None else None
    if mean is None or std is None or len(mean) != 3 or len(std) != 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def normalisation_buffers(module: nn.Module, name: str, repeat: int = 1) -> None:
    """Register ``mean`` and ``std`` (1, 3 x repeat, 1, 1) of encoder ``name`` on ``module``."""
    mean, std = input_normalisation(name)
    module.register_buffer("mean", torch.tensor(mean * repeat).view(1, 3 * repeat, 1, 1), persistent=False)
    module.register_buffer("std", torch.tensor(std * repeat).view(1, 3 * repeat, 1, 1), persistent=False)


class Encoder(nn.Module):
    """A timm feature pyramid with the input normalisation folded in; returns features fine to coarse."""

    def __init__(self, name: str, pretrained: bool = False, weights_file: Path | None = None) -> None:
        super().__init__()
        self.name = name
        if pretrained and weights_file is None:
            weights_file = resolve_imagenet_weights(name)
        # The file goes through the checkpoint layouts (MoCo v2, DINO, timm, ...): timm gets the encoder's
        # tensors already in its key names and checked, so its non-strict features_only load hides nothing.
        overlay = {"state_dict": encoder_weights(name, Path(weights_file))} if pretrained else None
        self.body = timm.create_model(
            name, features_only=True, pretrained=pretrained, pretrained_cfg_overlay=overlay
        )
        self.channels: list[int] = list(self.body.feature_info.channels())
        self.reductions: list[int] = list(self.body.feature_info.reduction())
        normalisation_buffers(self, name)

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        return self.body((image - self.mean) / self.std)


def encoder_weights(name: str, weights_file: Path) -> dict[str, torch.Tensor]:
    """The tensors of ``weights_file`` (any layout of ``geosem.models.checkpoint_layouts``) under the
    names of timm model ``name``, checked against its architecture; the classifier head left out."""
    from geosem.models.checkpoint_layouts import encoder_state

    with torch.device("meta"):  # names and shapes only: no memory, no random initialisation
        reference = timm.create_model(name)
    cfg = timm.models.get_pretrained_cfg(name)
    heads = getattr(cfg, "classifier", None) if cfg is not None else None
    heads = (heads,) if isinstance(heads, str) else tuple(heads or ())
    expected = {key: value.shape for key, value in reference.state_dict().items()}
    state, _ = encoder_state(weights_file, expected, heads)
    return state


def resolve_imagenet_weights(name: str, configured: dict[str, str] | None = None) -> Path:
    """The local file holding timm's ImageNet weights of encoder ``name``, never a download.

    Looked up first in ``configured`` (``pretrain.imagenet_weights``: encoder name -> file), then in the
    local Hugging Face cache under timm's default hub id for ``name``. The planner calls this, so a
    missing file stops the plan with what to fetch instead of failing a job hours into a run.
    """
    if configured and name in configured:
        path = Path(configured[name]).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"pretrain.imagenet_weights.{name}: {path} does not exist")
        return path
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(hub_id, filename)
            if isinstance(found, str):
                return Path(found)
    fetch = f"`hf download {hub_id}` (Hugging Face repo {hub_id!r})" if hub_id else "timm's weights for it"
    raise FileNotFoundError(
        f"ImageNet weights of encoder {name!r} are not available offline: fetch {fetch} on a machine with "
        f"network access into the Hugging Face cache, or set pretrain.imagenet_weights.{name} to a local file"
    )


def create_encoder(
    name: str, pretrained: bool = False, weights_file: Path | str | None = None
) -> Encoder | ViTEncoder:
    """Build an encoder by timm name; ``pretrained=True`` loads ImageNet weights from a local file only.

    A plain ViT name (``geosem.models.vit.is_vit``) gives a ``ViTEncoder`` (token maps of four blocks for
    the DPT decoder), any other timm name a feature-pyramid ``Encoder``."""
    from geosem.models.vit import ViTEncoder, is_vit  # vit imports this module's constants

    if name not in timm.list_models():
        raise KeyError(f"unknown encoder {name!r}: not a timm model name")
    file = None if weights_file is None else Path(weights_file)
    if is_vit(name):
        return ViTEncoder(name, pretrained=pretrained, weights_file=file)
    return Encoder(name, pretrained=pretrained, weights_file=file)
