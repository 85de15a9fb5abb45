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
