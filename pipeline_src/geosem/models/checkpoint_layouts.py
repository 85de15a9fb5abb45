"""Encoder checkpoints made elsewhere, mapped onto GeoSem's encoder (timm's key names).

An external init (``pretrain.external``: MoCo v2, DINO, ...) is a file in its release's own layout. Each
layout is one function of a registry: it recognises its release by the key prefixes and returns the
encoder's tensors under timm's names, plus what it leaves behind (projection heads, the momentum
encoder, optimiser state). torchvision and timm name a ResNet's conv/bn/layerN tensors identically; ``fc``
is the classifier head in both. Layouts are tried in registry order; the plain ``timm`` layout comes
last. The result is then checked against the encoder's architecture: a key the encoder does not have, a
key it lacks, or a shape that differs stops the build with an error naming the file, the layout and
the keys, never a silently half-loaded encoder (timm itself loads a ``features_only`` encoder's
weights non-strictly).

The layouts:

* ``moco_v2``: facebookresearch/moco's release ``{"state_dict": {"module.encoder_q.<key>": ...},
  "epoch", "arch", "optimizer"}``. ``module.encoder_q.fc.*`` (MoCo v2's MLP projection head), the
  momentum encoder ``module.encoder_k.*`` and the queue are dropped.
* ``dino``: facebookresearch/dino's full checkpoint ``{"teacher": {...}, "student": {...}, ...}``
  (the teacher is used, as DINO's own evaluations do), or a backbone state dict whose keys carry
  ``module.`` / ``backbone.`` prefixes. ``head.*`` (the DINO projection head) is dropped. DINO's
  published ``dino_resnet50_pretrain.pth`` is a plain torchvision state dict: the ``timm`` layout.
* ``data_parallel``: a plain state dict saved from ``nn.DataParallel`` / DDP (every key ``module.``).
* ``timm``: timm's or torchvision's own keys, plain or as a timm training checkpoint
  (``{"state_dict": ...}``); the classifier head is dropped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

# Keys named in an error message, at most: enough to see the pattern of a wrong layout.
SHOWN_KEYS = 12


class CheckpointLayoutError(ValueError):
    """A checkpoint that maps onto no encoder: unknown layout, unknown, missing or misshapen keys."""


@dataclass
class Mapped:
    """A checkpoint in timm's key names: the encoder's tensors and what the layout left behind."""

    layout: str
    tensors: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)


Layout = Callable[[Mapping[str, Any]], Mapped | None]
_LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str) -> Callable[[Layout], Layout]:
    """Add a layout: a function that returns ``None`` for a checkpoint that is not its release's."""

    def decorator(function: Layout) -> Layout:
        if name in _LAYOUTS:
            raise ValueError(f"checkpoint layout {name!r} registered twice")
        _LAYOUTS[name] = function
        return function

    return decorator


def list_layouts() -> list[str]:
    return list(_LAYOUTS)


def _tensors(obj: Any) -> dict[str, torch.Tensor] | None:
    """``obj`` as a state dict (str -> tensor), or None when it is not one."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {str(k): v for k, v in obj.items()}
    return None


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _others(checkpoint: Mapping[str, Any], used: str) -> list[str]:
    """The top-level entries a layout does not read (epoch, arch, optimizer, args, ...)."""
    return [str(k) for k in checkpoint if k != used]


@register_layout("moco_v2")
def moco_v2(checkpoint: Mapping[str, Any]) -> Mapped | None:
    state = _tensors(checkpoint.get("state_dict"))
    if state is None or not any(k.startswith("module.encoder_q.") for k in state):
        return None
    tensors: dict[str, torch.Tensor] = {}
    dropped = _others(checkpoint, "state_dict")
    for key, value in state.items():
        if key.startswith("module.encoder_q.fc.") or key.startswith(("module.encoder_k.", "module.queue")):
            dropped.append(key)  # the MLP projection head, the momentum encoder, the queue of negatives
        elif key.startswith("module.encoder_q."):
            tensors[key.removeprefix("module.encoder_q.")] = value
        else:
            tensors[key] = value  # not MoCo's: left as it is, so the check below names it
    return Mapped("moco_v2", tensors, dropped)


def _dino_backbone(state: dict[str, torch.Tensor], layout: str, dropped: list[str]) -> Mapped:
    tensors: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        bare = key.removeprefix("module.")
        if bare.startswith("head."):
            dropped.append(key)  # the DINO projection head (MLP + weight-normalised last layer)
        else:
            tensors[bare.removeprefix("backbone.")] = value
    return Mapped(layout, tensors, dropped)


@register_layout("dino")
def dino(checkpoint: Mapping[str, Any]) -> Mapped | None:
    teacher = _tensors(checkpoint.get("teacher"))
    if teacher is not None:
        # DINO's evaluations read the teacher (--checkpoint_key teacher); the student is dropped whole.
        return _dino_backbone(teacher, "dino", _others(checkpoint, "teacher"))
    state = _tensors(checkpoint)
    if state is None or not any(k.startswith(("backbone.", "module.backbone.")) for k in state):
        return None
    return _dino_backbone(state, "dino", [])


@register_layout("data_parallel")
def data_parallel(checkpoint: Mapping[str, Any]) -> Mapped | None:
    state = _tensors(checkpoint)
    if state is None or not all(k.startswith("module.") for k in state):
        return None
    return Mapped("data_parallel", _strip(state, "module."), [])


@register_layout("timm")
def timm_layout(checkpoint: Mapping[str, Any]) -> Mapped | None:
    state = _tensors(checkpoint)
    if state is not None:
        return Mapped("timm", state, [])
    wrapped = _tensors(checkpoint.get("state_dict"))  # timm's train.py checkpoint
    if wrapped is not None:
        return Mapped("timm", wrapped, _others(checkpoint, "state_dict"))
    return None


def read_checkpoint(path: Path) -> Mapping[str, Any]:
    """The object stored in ``path``: a safetensors file, or a torch file loaded with
    ``weights_only`` (tensors and plain containers only; no code from the file runs). DINO's and timm's
    training checkpoints keep their ``argparse.Namespace`` of arguments, the one class allowed besides."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    with torch.serialization.safe_globals([argparse.Namespace]):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointLayoutError(f"{path}: holds a {type(checkpoint).__name__}, not a state dict")
    return checkpoint


def _shown(keys: Sequence[str]) -> str:
    more = f", ... ({len(keys)} in all)" if len(keys) > SHOWN_KEYS else ""
    return ", ".join(keys[:SHOWN_KEYS]) + more


def map_checkpoint(checkpoint: Mapping[str, Any], path: Path) -> Mapped:
    """``checkpoint`` in timm's key names, by the first registered layout that recognises it."""
    for function in _LAYOUTS.values():
        mapped = function(checkpoint)
        if mapped is not None:
            return mapped
    raise CheckpointLayoutError(
        f"{path}: no known checkpoint layout (known: {', '.join(_LAYOUTS)}); its top-level keys: "
        f"{_shown([str(k) for k in checkpoint])}"
    )


def encoder_state(
    path: Path | str,
    expected: Mapping[str, torch.Size],
    heads: Sequence[str] = ("fc",),
) -> tuple[dict[str, torch.Tensor], Mapped]:
    """The tensors of ``path`` for an encoder whose full timm model has the tensors ``expected``
    (name -> shape), and the mapping. ``heads``: the module names of the classifier, dropped wherever
    present. BatchNorm's ``num_batches_tracked`` counters may be missing (older torchvision files):
    torch fills them in. Anything else unknown, missing or misshapen raises, naming the file."""
    path = Path(path)
    checkpoint = read_checkpoint(path)
    mapped = map_checkpoint(checkpoint, path)
    is_head = tuple(f"{head}." for head in heads)
    state: dict[str, torch.Tensor] = {}
    for key, value in mapped.tensors.items():
        if key.startswith(is_head):
            mapped.dropped.append(key)
        else:
            state[key] = value
    wanted = {k for k in expected if not k.startswith(is_head)}
    unknown = sorted(set(state) - wanted)
    missing = sorted(k for k in wanted - set(state) if not k.endswith("num_batches_tracked"))
    misshapen = sorted(
        f"{k} {tuple(state[k].shape)} (encoder {tuple(expected[k])})"
        for k in set(state) & wanted
        if state[k].shape != expected[k]
    )
    problems = [
        f"{what} keys: {_shown(keys)}"
        for what, keys in (("unknown", unknown), ("missing", missing), ("misshapen", misshapen))
        if keys
    ]
    if problems:
        arch = checkpoint.get("arch")  # MoCo's and timm's training checkpoints name their architecture
        made_for = f", saved for arch {arch!r}" if isinstance(arch, str) else ""
        raise CheckpointLayoutError(
            f"{path} (read as layout {mapped.layout!r}{made_for}) does not fit the encoder: "
            + "; ".join(problems)
        )
    return state, mapped
