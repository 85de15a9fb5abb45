"""The resumable training checkpoint and atomic torch saves.

The checkpoint is deliberately not a declared workflow output: Snakemake deletes the declared outputs of
a failed job, and the whole point of the checkpoint is to survive that failure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from geosem.atomic import atomic_write_with

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write_with(Path(path), lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    path = Path(path)
    if not path.is_file():
        return None
    # weights_only=False: the checkpoint holds RNG states and curves written by this same code.
    return torch.load(path, map_location="cpu", weights_only=False)


def capture_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The ``.grad`` buffers by parameter name (on the CPU), for loops that never zero them: there the
    buffers carry the sum of all earlier steps' gradients and are as much training state as the weights.
    """
    return {
        name: parameter.grad.detach().cpu().clone()
        for name, parameter in model.named_parameters()
        if parameter.grad is not None
    }


def restore_gradients(model: torch.nn.Module, gradients: dict[str, torch.Tensor]) -> None:
    """Put gradients saved by ``capture_gradients`` back; parameters without a saved one get none."""
    parameters = dict(model.named_parameters())
    unknown = set(gradients) - set(parameters)
    if unknown:
        raise KeyError(f"checkpoint holds gradients of unknown parameters: {sorted(unknown)[:5]}")
    for name, parameter in parameters.items():
        saved = gradients.get(name)
        parameter.grad = None if saved is None else saved.to(parameter.device, parameter.dtype)
