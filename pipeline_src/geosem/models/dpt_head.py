"""Study B's shared decoder and heads, laid out as DINOv2's depth ``DPTHead`` (docs/study-b.md).

``DPTHead`` (shared by every task) reads the four (tokens, class token) levels of a
``geosem.models.dinov2.FrozenBackbone``:

1. Readout "project": [token, broadcast CLS] (2E) -> E by a 1x1 conv + GELU (DINOv2's Linear + GELU
   per token).
2. Reassemble: 1x1 conv to ``post_process_channels`` ([E/8, E/4, E/2, E] by default; ViT-g
   [192, 384, 768, 1536]), then transposed conv x4, transposed conv x2, identity, 3x3 stride-2 conv
   (tokens at strides p/4, p/2, p, 2p of the padded input, p the patch size), then a bias-free 3x3
   conv to ``channels`` (256).
3. Four fusion blocks, coarse to fine (``geosem.models.dpt.FusionBlock``: residual unit of the skip
   added to the path, a second residual unit, bilinear upsampling with align_corners=True, 1x1 conv).
   Each block upsamples to the next finer level's size (DINOv2 doubles and resizes the skip instead:
   the same for even grids, better aligned for odd ones), the last one by x2.
4. A 3x3 conv + ReLU (DINOv2's ``project`` ConvModule).

Output stride: tokens of a p-pixel patch grid (h, w) come out at (8h, 8w), i.e. stride p / 8 of the
padded input: 1.75 pixels for DINOv2's 14-pixel patches.

Heads end at the input's own size: each resizes its map bilinearly to the padded input size and crops
the centre padding away (``fit_to_input``), so pixel (i, j) of the output is pixel (i, j) of the
unpadded image. ``DepthHead`` is DINOv2's HeadDepth (3x3 C -> C/2, x2 bilinear, 3x3 -> 32, ReLU,
1x1 -> 1; depth = ReLU(x) + min_depth, clamped to max_depth in eval mode, before the resize as DINOv2
clamps). ``DenseHead`` is the small auxiliary head (segmentation / MLDC logits, reconstructed RGB).

``AuxDepthModel`` joins backbone, decoder and heads; auxiliary heads are keyed ``<task>.<dataset>``
(one per source dataset for MIX6: no merged class space).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from geosem.models.dinov2 import FrozenBackbone
from geosem.models.dpt import FusionBlock
from geosem.models.dpt import _resample as reassemble_resampler  # DPT's x4 / x2 / identity / stride 2

DPT_LEVELS = 4
DEPTH_HEAD = "depth"


def default_post_process_channels(embed_dim: int) -> list[int]:
    """DINOv2's reassemble widths for embedding width E: [E/8, E/4, E/2, E]."""
    return [max(embed_dim // 2 ** (DPT_LEVELS - 1 - level), 1) for level in range(DPT_LEVELS)]


def fit_to_input(
    x: torch.Tensor, size: tuple[int, int], padded_size: tuple[int, int] | None = None
) -> torch.Tensor:
    """``x`` resized bilinearly to ``padded_size`` (default ``size``), then centre-cropped to ``size``,
    undoing the backbone's centre padding."""
    height, width = size
    canvas = tuple(padded_size) if padded_size is not None else (height, width)
    if canvas[0] < height or canvas[1] < width:
        raise ValueError(f"padded size {canvas} is smaller than the output size {size}")
    if tuple(x.shape[-2:]) != canvas:
        x = F.interpolate(x, size=canvas, mode="bilinear", align_corners=False)
    # dinov2.centre_padding's split: half the padding before, the odd pixel at the end.
    top, left = (canvas[0] - height) // 2, (canvas[1] - width) // 2
    return x[..., top : top + height, left : left + width]


class DPTHead(nn.Module):
    """DINOv2's DPT decoder: four (tokens (B, E, h, w), CLS (B, E)) levels -> (B, channels, 8h, 8w)."""

    def __init__(self, embed_dim: int, channels: int = 256, post_process_channels: list[int] | None = None):
        super().__init__()
        post = list(post_process_channels or default_post_process_channels(embed_dim))
        if len(post) != DPT_LEVELS or min(post) < 1 or embed_dim < 1 or channels < 2:
            raise ValueError(
                f"DPTHead: embed_dim {embed_dim}, channels {channels} and {DPT_LEVELS} positive "
                f"post_process_channels expected, got {post}"
            )
        self.embed_dim, self.channels, self.post_process_channels = embed_dim, channels, post
        self.readouts = nn.ModuleList(
            nn.Sequential(nn.Conv2d(2 * embed_dim, embed_dim, 1), nn.GELU()) for _ in post
        )
        self.projects = nn.ModuleList(nn.Conv2d(embed_dim, width, 1) for width in post)
        self.resize = nn.ModuleList(reassemble_resampler(width, level) for level, width in enumerate(post))
        self.convs = nn.ModuleList(nn.Conv2d(width, channels, 3, padding=1, bias=False) for width in post)
        # Coarse to fine; the first block has no skip (DINOv2 calls it with the coarsest map alone).
        self.fusion = nn.ModuleList(FusionBlock(channels, channels, has_skip=step > 0) for step in range(4))
        self.project = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU())

    def _reassemble(self, level: int, tokens: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        if tokens.shape[1] != self.embed_dim or cls.shape != tokens.shape[:2]:
            raise ValueError(
                f"DPTHead (embed_dim {self.embed_dim}): level {level} has tokens {tuple(tokens.shape)} "
                f"and class token {tuple(cls.shape)}"
            )
        x = torch.cat([tokens, cls[:, :, None, None].expand_as(tokens)], dim=1)
        x = self.projects[level](self.readouts[level](x))
        return self.convs[level](self.resize[level](x))

    def forward(self, levels: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        """Fused features (B, channels, 8h, 8w) of the backbone's four levels."""
        if len(levels) != DPT_LEVELS:
            raise ValueError(f"DPTHead expects {DPT_LEVELS} backbone levels, got {len(levels)}")
        maps = [self._reassemble(level, tokens, cls) for level, (tokens, cls) in enumerate(levels)]
        finest = maps[0].shape[-2:]
        sizes = [maps[2].shape[-2:], maps[1].shape[-2:], finest, (2 * finest[0], 2 * finest[1])]
        path = maps[3]
        for step, block in enumerate(self.fusion):
            path = block(path, None if step == 0 else maps[3 - step], tuple(sizes[step]))
        return self.project(path)


def initial_depth(min_depth: float, max_depth: float) -> float:
    """The depth head's starting output above ``min_depth``: a quarter of the range (2.5 m of NYU's 10 m,
    20 m of KITTI's 80 m), a scene depth rather than the ReLU's dead zone."""
    return 0.25 * (max_depth - min_depth)


class DepthHead(nn.Module):
    """DINOv2's HeadDepth: decoder features -> metric depth (B, 1, H, W) at the input size."""

    def __init__(self, channels: int, min_depth: float, max_depth: float) -> None:
        super().__init__()
        if not 0 <= min_depth < max_depth:
            raise ValueError(f"DepthHead: need 0 <= min_depth < max_depth, got {min_depth}, {max_depth}")
        self.min_depth, self.max_depth = float(min_depth), float(max_depth)
        self.head = nn.Sequential(
            nn.Conv2d(channels, channels // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(channels // 2, 32, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(32, 1, 1),
        )
        # Start every pixel at a scene depth: DINOv2's output ReLU(x) + min_depth has no gradient where
        # x < 0, and with its default initialisation the last conv can start negative at every pixel, so
        # the run never learns (measured: one of four seeds of the CPU preset ended at abs_rel 0.9997
        # with a zero depth gradient from step 1). A positive bias of a quarter of the depth range keeps
        # the ReLU open at the start; the layout and the loss stay DINOv2's.
        nn.init.constant_(self.head[-1].bias, initial_depth(min_depth, max_depth))

    def forward(
        self, features: torch.Tensor, size: tuple[int, int], padded_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Depth in metres at ``size``; ``padded_size``: the backbone's padded input size, cropped away."""
        depth = F.relu(self.head(features)) + self.min_depth
        if not self.training:
            depth = depth.clamp(max=self.max_depth)
        return fit_to_input(depth, size, padded_size)


class DenseHead(nn.Module):
    """Auxiliary head: 3x3 conv C -> C/2, ReLU, x2 bilinear, 1x1 -> ``out_channels``, at the input size."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"DenseHead: out_channels must be >= 1, got {out_channels}")
        self.out_channels = out_channels
        self.conv = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.classify = nn.Conv2d(channels // 2, out_channels, 1)

    def forward(
        self, features: torch.Tensor, size: tuple[int, int], padded_size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Logits (or RGB) (B, out_channels, H, W) at ``size``."""
        # 1x1 conv before the x2 upsampling: both are linear and the bilinear weights sum to one, so the
        # order does not change the result, and the classifier runs on a quarter of the pixels.
        x = self.classify(F.relu(self.conv(features)))
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return fit_to_input(x, size, padded_size)


def parse_head_key(key: str) -> tuple[str, str]:
    """(task, dataset) of an auxiliary head key ``<task>.<dataset>``."""
    task, _, dataset = key.partition(".")
    if not task or not dataset or "." in dataset or ":" in key:
        raise ValueError(f"auxiliary head key {key!r} is not '<task>.<dataset>'")
    return task, dataset


def _stored(key: str) -> str:
    parse_head_key(key)
    return key.replace(".", ":")  # torch module names cannot hold '.'


class HeadDict(nn.ModuleDict):
    """An ``nn.ModuleDict`` keyed by ``<task>.<dataset>``: stored as ``<task>:<dataset>`` (torch forbids
    '.' in module names, and state-dict keys read ``aux_heads.<task>:<dataset>.*``)."""

    def __getitem__(self, key: str) -> nn.Module:
        return super().__getitem__(_stored(key))

    def __setitem__(self, key: str, module: nn.Module) -> None:
        super().__setitem__(_stored(key), module)

    def __delitem__(self, key: str) -> None:
        super().__delitem__(_stored(key))

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.replace(".", ":"))

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def keys(self) -> list[str]:  # type: ignore[override]
        return [key.replace(":", ".") for key in self._modules]

    def items(self) -> list[tuple[str, nn.Module]]:  # type: ignore[override]
        return [(key.replace(":", "."), module) for key, module in self._modules.items()]

    def pop(self, key: str) -> nn.Module:
        return super().pop(_stored(key))


class AuxDepthModel(nn.Module):
    """Frozen backbone + shared DPT decoder + depth head + auxiliary heads keyed ``<task>.<dataset>``."""

    def __init__(
        self,
        backbone: FrozenBackbone,
        decoder: DPTHead,
        depth_head: DepthHead,
        aux_heads: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        if decoder.embed_dim != backbone.embed_dim:
            raise ValueError(
                f"decoder reads embed_dim {decoder.embed_dim}, backbone {backbone.name!r} gives "
                f"{backbone.embed_dim}"
            )
        self.backbone, self.decoder, self.depth_head = backbone, decoder, depth_head
        self.aux_heads = HeadDict(dict(aux_heads or {}))

    def head_names(self) -> list[str]:
        """``depth`` and the auxiliary head keys."""
        return [DEPTH_HEAD, *self.aux_heads.keys()]

    def head(self, name: str) -> nn.Module:
        """The head ``name`` (``depth`` or ``<task>.<dataset>``); an unknown one lists the known."""
        if name == DEPTH_HEAD:
            return self.depth_head
        if name in self.aux_heads:
            return self.aux_heads[name]
        raise KeyError(f"unknown head {name!r}; the model has: {', '.join(self.head_names())}")

    def features(self, image: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The frozen backbone's levels of ``image`` (no gradient: cacheable per sample)."""
        return self.backbone(image)

    def forward_from_features(
        self, levels: list[tuple[torch.Tensor, torch.Tensor]], size: tuple[int, int], head: str = DEPTH_HEAD
    ) -> torch.Tensor:
        """Head ``head``'s output at ``size`` (the unpadded image size) from backbone ``levels``."""
        module = self.head(head)  # before decoding: an unknown head fails fast
        height, width = int(size[0]), int(size[1])
        return module(self.decoder(levels), (height, width), self.backbone.padded_size(height, width))

    def forward(self, image: torch.Tensor, head: str = DEPTH_HEAD) -> torch.Tensor:
        """Head ``head``'s output for ``image`` (B, 3, H, W) in [0, 1], at (H, W)."""
        return self.forward_from_features(self.features(image), tuple(image.shape[-2:]), head)

    def decoder_parameters(self) -> list[nn.Parameter]:
        """The shared DPT decoder's parameters (the ones the alpha scaling applies to)."""
        return list(self.decoder.parameters())

    def head_parameters(self, head: str) -> list[nn.Parameter]:
        """The parameters of head ``head`` alone."""
        return list(self.head(head).parameters())

    def train(self, mode: bool = True) -> AuxDepthModel:
        """Decoder and heads follow ``mode``; the backbone stays in eval mode."""
        super().train(mode)
        self.backbone.eval()
        return self
