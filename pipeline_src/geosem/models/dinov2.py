"""Study B's frozen backbone: a timm ViT (DINOv2's by default) read the way DINOv2's depther reads it.

``create_backbone(name, weights, layout, **timm_kwargs)`` builds timm model ``name`` with
``pretrained=False`` and loads ``weights`` itself (``None``: random init, for tests and for backbones
the pipeline pre-trains itself). ``FrozenBackbone.forward`` returns four (patch tokens (B, E, h, w),
class token (B, E)) pairs, the input to ``geosem.models.dpt_head.DPTHead``.

* Layers: DINOv2's own for its four ViTs (``DINOV2_LAYERS``: ViT-L takes [4, 11, 17, 23], not the
  evenly spaced [5, 11, 17, 23]); any other depth (small test ViTs built with timm kwargs, the offline
  ViT-T) takes four evenly spaced blocks ending at the last (``geosem.models.vit.vit_block_indices``).
  Blocks after the last taken one, the final norm and the classifier are pruned: raw block outputs
  without the final norm are what DINOv2's depther reads (``norm=False``).
* Padding: DINOv2's CenterPadding, to a multiple of the patch size (14), split as evenly as possible
  with the odd pixel at the end (bottom / right). The image is normalised first and then padded with
  zeros, as DINOv2's depther pads the already normalised tensor, so the border is the mean colour.
  ``dynamic_img_size`` lets timm interpolate the position embedding to any padded grid; the heads crop
  the padding away again (``geosem.models.dpt_head``), so outputs align with the unpadded input.
* Normalisation: the weights' mean / std from timm's pretrained config (ImageNet's for DINOv2).
* Frozen: every parameter has ``requires_grad`` False, ``train()`` leaves the module in eval mode,
  and ``forward`` runs under ``torch.no_grad``, so no step, optimiser or parent ``.train()`` can touch
  it. ``frozen_digest()`` hashes its state dict (runs record it; tests compare it).

Checkpoint layouts (``layout``; the file is read by ``checkpoint_layouts.read_checkpoint``):

* ``timm``: timm's keys (the Hugging Face ``timm/<name>.lvd142m`` files), plain or under ``state_dict``;
* ``dinov2``: Meta's hub checkpoints (``dinov2_vit?14_pretrain.pth``), converted by timm's own DINOv2
  conversion (drops ``mask_token``; ViT-g's SwiGLU ``mlp.w12`` / ``mlp.w3`` -> ``mlp.fc1`` / ``mlp.fc2``;
  ``register_tokens`` -> ``reg_token``, folding the class token's position into it);
* ``depth_anything``: Depth Anything's releases (``geosem.models.depth_anything``): ``pretrained.``
  stripped, ``depth_head.*`` dropped, then as ``dinov2``;
* ``geosem``: a study-A pre-training's ``model.pt`` (a ``DenseModel`` with a ``ViTEncoder``), whose
  encoder tensors are ``model["encoder.body.*"]``.

Every layout then goes through timm's ``checkpoint_filter_fn`` (position-embedding resampling to the
model's grid) and a strict check: a key the model lacks or does not expect, or a shape that differs,
raises an error naming the file, the layout and the first such keys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer, _convert_dinov2, checkpoint_filter_fn
from torch import nn

from geosem.models import depth_anything
from geosem.models.checkpoint_layouts import SHOWN_KEYS, CheckpointLayoutError, read_checkpoint
from geosem.models.encoders import normalisation_buffers
from geosem.models.vit import VIT_LEVELS, vit_block_indices
from geosem.train.checkpoint import content_digest

DINOV2_LAYERS: dict[str, list[int]] = {
    "vit_small_patch14_dinov2": [2, 5, 8, 11],
    "vit_base_patch14_dinov2": [2, 5, 8, 11],
    "vit_large_patch14_dinov2": [4, 11, 17, 23],
    "vit_giant_patch14_dinov2": [9, 19, 29, 39],
}
WEIGHTS_KEY = "auxdepth.backbone.weights"
GEOSEM_ENCODER_PREFIX = "encoder.body."


def backbone_layers(name: str, depth: int) -> list[int]:
    """The blocks DINOv2 reads for timm model ``name`` with ``depth`` blocks: its own table for the
    standard DINOv2 ViTs (``*_reg4_*`` included), four evenly spaced blocks for any other depth."""
    base = name.split(".")[0].replace("_reg4", "")
    standard = DINOV2_LAYERS.get(base)
    if standard is not None and standard[-1] == depth - 1:
        return list(standard)
    return vit_block_indices(depth, VIT_LEVELS)


def centre_padding(length: int, patch: int) -> tuple[int, int]:
    """(before, after) padding of one side to a multiple of ``patch``: even split, odd pixel after."""
    total = math.ceil(length / patch) * patch - length
    return total // 2, total - total // 2


class FrozenBackbone(nn.Module):
    """A timm ViT that is never trained: four (tokens (B, E, h, w), class token (B, E)) levels of a
    [0, 1] image, centre-padded to a multiple of the patch size (module docstring)."""

    def __init__(self, name: str, body: VisionTransformer) -> None:
        super().__init__()
        if getattr(body, "cls_token", None) is None:
            raise ValueError(f"backbone {name!r} has no class token, which the DPT readout reads")
        patch = tuple(body.patch_embed.patch_size)
        if patch[0] != patch[1]:
            raise ValueError(f"backbone {name!r}: non-square patches {patch} are not supported")
        self.name = name
        self.body = body
        self.patch = int(patch[0])
        self.embed_dim = int(body.embed_dim)
        self.layers = backbone_layers(name, len(body.blocks))
        normalisation_buffers(self, name)
        self.requires_grad_(False)
        super().train(False)

    def train(self, mode: bool = True) -> FrozenBackbone:
        """Always eval mode (no dropout, no drop-path), whatever a parent module asks."""
        return super().train(False)

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The input size after centre padding to a multiple of the patch size."""
        return math.ceil(height / self.patch) * self.patch, math.ceil(width / self.patch) * self.patch

    def padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """(left, right, top, bottom) centre padding of a ``height`` x ``width`` input (F.pad's order)."""
        return (*centre_padding(width, self.patch), *centre_padding(height, self.patch))

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Four (patch tokens (B, E, h, w), class token (B, E)) pairs of ``image`` (B, 3, H, W) in [0, 1];
        h = ceil(H / patch), w = ceil(W / patch)."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(
                f"backbone {self.name!r}: expected (B, 3, H, W) images, got {tuple(image.shape)}"
            )
        height, width = image.shape[-2:]
        x = F.pad((image - self.mean) / self.std, self.padding(height, width))  # zeros = the mean colour
        levels = self.body.forward_intermediates(
            x,
            indices=self.layers,
            return_prefix_tokens=True,
            norm=False,
            stop_early=True,
            output_fmt="NCHW",
            intermediates_only=True,
        )
        return [(tokens, prefix[:, 0]) for tokens, prefix in levels]

    def frozen_digest(self) -> str:
        """sha256 of the state dict: equal before and after any training of the model around it."""
        return content_digest(dict(self.state_dict()))


# --- checkpoint layouts ----------------------------------------------------------------------------

BackboneLayout = Callable[[Mapping[str, Any], Path, VisionTransformer], dict[str, torch.Tensor]]
_LAYOUTS: dict[str, BackboneLayout] = {}


def register_backbone_layout(name: str) -> Callable[[BackboneLayout], BackboneLayout]:
    """Add a layout: (checkpoint, its path, the timm model) -> the tensors under timm's names."""

    def decorator(function: BackboneLayout) -> BackboneLayout:
        if name in _LAYOUTS:
            raise ValueError(f"backbone checkpoint layout {name!r} registered twice")
        _LAYOUTS[name] = function
        return function

    return decorator


def list_backbone_layouts() -> list[str]:
    return list(_LAYOUTS)


def _state_dict(checkpoint: Mapping[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a plain state dict, or of one wrapped under ``state_dict`` / ``model``."""
    for candidate in (checkpoint, checkpoint.get("state_dict"), checkpoint.get("model")):
        tensors = isinstance(candidate, Mapping) and all(
            isinstance(v, torch.Tensor) for v in candidate.values()
        )
        if tensors and candidate:
            return {str(k): v for k, v in candidate.items()}
    shown = ", ".join(str(k) for k in list(checkpoint)[:SHOWN_KEYS])
    raise CheckpointLayoutError(f"{path}: no state dict of tensors in it; its top-level keys: {shown}")


@register_backbone_layout("timm")
def timm_layout(
    checkpoint: Mapping[str, Any], path: Path, body: VisionTransformer
) -> dict[str, torch.Tensor]:
    return _state_dict(checkpoint, path)


@register_backbone_layout("dinov2")
def dinov2_layout(
    checkpoint: Mapping[str, Any], path: Path, body: VisionTransformer
) -> dict[str, torch.Tensor]:
    return _convert_dinov2(_state_dict(checkpoint, path), body)


@register_backbone_layout("depth_anything")
def depth_anything_layout(
    checkpoint: Mapping[str, Any], path: Path, body: VisionTransformer
) -> dict[str, torch.Tensor]:
    return _convert_dinov2(depth_anything.encoder_tensors(checkpoint, path), body)


@register_backbone_layout("geosem")
def geosem_layout(
    checkpoint: Mapping[str, Any], path: Path, body: VisionTransformer
) -> dict[str, torch.Tensor]:
    state = _state_dict(checkpoint, path)
    encoder = {
        k.removeprefix(GEOSEM_ENCODER_PREFIX): v
        for k, v in state.items()
        if k.startswith(GEOSEM_ENCODER_PREFIX)
    }
    if not encoder:
        raise CheckpointLayoutError(
            f"{path}: no {GEOSEM_ENCODER_PREFIX}* tensors (layout 'geosem' reads a study-A pre-training's "
            "model.pt with a ViT encoder)"
        )
    return encoder  # the decoder and heads of the pre-training are left behind


def _shown(keys: list[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def _check_keys(
    state: Mapping[str, torch.Tensor], body: nn.Module, full_keys: set[str], where: str
) -> dict[str, torch.Tensor]:
    """``state`` without the pruned parts' tensors (final norm, head, unused blocks); raises on any
    unexpected, missing or misshapen key. The position embedding's grid may differ (timm resamples it)."""
    expected = body.state_dict()
    kept = {k: v for k, v in state.items() if k in expected or k not in full_keys}
    unexpected = sorted(set(kept) - set(expected))
    missing = sorted(set(expected) - set(kept))
    misshapen = sorted(
        f"{k} {tuple(kept[k].shape)} (model {tuple(expected[k].shape)})"
        for k in set(kept) & set(expected)
        if k != "pos_embed" and kept[k].shape != expected[k].shape
    )
    problems = [
        f"{what} keys: {_shown(keys)}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("misshapen", misshapen))
        if keys
    ]
    if problems:
        raise CheckpointLayoutError(f"{where} does not fit the model: " + "; ".join(problems))
    return kept


def load_backbone_weights(body: VisionTransformer, path: Path, layout: str, full_keys: set[str]) -> None:
    """Load ``path`` (in ``layout``) into ``body`` exactly; ``full_keys``: the unpruned model's keys."""
    if layout not in _LAYOUTS:
        raise KeyError(f"unknown backbone checkpoint layout {layout!r} (known: {', '.join(_LAYOUTS)})")
    where = f"{path} (layout {layout!r})"
    state = _LAYOUTS[layout](read_checkpoint(path), path, body)
    state = checkpoint_filter_fn(_check_keys(state, body, full_keys, where), body)
    try:
        body.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a position embedding of another width
        raise CheckpointLayoutError(f"{where} does not fit the model: {error}") from error


def create_backbone(
    name: str, weights: Path | str | None = None, layout: str = "timm", **timm_kwargs: Any
) -> FrozenBackbone:
    """A frozen timm ViT ``name`` (``vit_{small,base,large,giant}_patch14_dinov2``, or any timm ViT);
    ``weights``: a checkpoint file in ``layout`` (``None``: random init); ``timm_kwargs``: timm's
    architecture arguments (``embed_dim``, ``depth``, ``num_heads``, ``img_size``) for small ViTs."""
    if name.split(".")[0] not in timm.list_models():
        raise KeyError(f"unknown backbone {name!r}: not a timm model name")
    if "pretrained" in timm_kwargs:
        raise ValueError(f"backbone {name!r}: weights come from a file ({WEIGHTS_KEY}), not pretrained=")
    options = {"num_classes": 0, "dynamic_img_size": True, **timm_kwargs}
    body = timm.create_model(name, pretrained=False, **options)
    if not isinstance(body, VisionTransformer):
        raise ValueError(f"backbone {name!r} is a {type(body).__name__}, not a timm VisionTransformer")
    full_keys = set(body.state_dict())
    body.prune_intermediate_layers(backbone_layers(name, len(body.blocks)), prune_norm=True, prune_head=True)
    if weights is not None:
        load_backbone_weights(body, Path(weights), layout, full_keys)
    return FrozenBackbone(name, body)


# --- finding the weights ---------------------------------------------------------------------------


def _hub_files(name: str, layout: str) -> list[tuple[str, str]]:
    """(Hugging Face repo, file) that may hold ``name``'s weights in ``layout``."""
    if layout == "depth_anything":
        return depth_anything.release_files(name)
    if layout != "timm":
        return []
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    return [(hub_id, "model.safetensors"), (hub_id, "pytorch_model.bin")] if hub_id else []


def _meta_release(name: str) -> tuple[str, Path] | None:
    """(download URL, torch hub cache path) of Meta's own checkpoint of ``name``, if timm names one."""
    cfg = timm.models.get_pretrained_cfg(name)
    url = getattr(cfg, "url", None) if cfg is not None else None
    if not url:
        return None
    return url, Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _fetch_hint(name: str, layout: str) -> str:
    files = _hub_files(name, layout)
    if files:
        repo, filename = files[0]
        return f"`hf download {repo} {filename}` into the Hugging Face cache"
    meta = _meta_release(name) if layout == "dinov2" else None
    if meta is not None:
        return f"{meta[0]} into {meta[1].parent}"
    if layout == "geosem":
        return "nothing: a 'geosem' checkpoint is a study-A pre-training's model.pt, made by the pipeline"
    return f"a {layout!r} checkpoint of {name} (no known release)"


def resolve_backbone_weights(name: str, configured: Path | str | None = None, layout: str = "timm") -> Path:
    """The local file with backbone ``name``'s weights in ``layout``, never a download.

    ``configured`` (``auxdepth.backbone.weights``) wins; else the local Hugging Face cache (timm's hub
    file, or Depth Anything's releases), else for ``dinov2`` torch hub's cache of Meta's file. A missing
    file raises, naming the model, what to fetch and the config key to set."""
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{WEIGHTS_KEY}: {path} does not exist (backbone {name!r}, {layout})")
        return path
    from huggingface_hub import try_to_load_from_cache

    for repo, filename in _hub_files(name, layout):
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return Path(found)
    meta = _meta_release(name) if layout == "dinov2" else None
    if meta is not None and meta[1].is_file():
        return meta[1]
    raise FileNotFoundError(
        f"weights of backbone {name!r} (layout {layout!r}) are not on this machine: fetch "
        f"{_fetch_hint(name, layout)} on a machine with network access, or set {WEIGHTS_KEY} to a local file"
    )
