"""The resumable training checkpoint and atomic torch saves.

The checkpoint is deliberately not a declared workflow output: Snakemake deletes the declared outputs of
a failed job, and the whole point of the checkpoint is to survive that failure.

A run keeps two checkpoints, ``checkpoint.pt`` (the newest) and ``checkpoint.prev.pt`` (the one before):
a new checkpoint is written to a temporary file and renamed into place, and only then does the one it
replaces become the previous one. Each carries a digest of its own content, so a file damaged after it
was written (a truncated copy, a flipped bit on a failing disk) is recognised, reported with its path,
and the run resumes from the other one instead of from a silently wrong state.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosem.atomic import TEMP_SUFFIX, atomic_write_with, temp_name_prefix

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
DIGEST_KEY = "content_sha256"


def atomic_torch_save(obj: Any, path: Path, before_replace: Callable[[], None] | None = None) -> None:
    """``torch.save`` through ``atomic_write_with``. Serialised in memory first: torch's own file writer
    reports a full disk as "unexpected pos" with no errno, a Python write raises ENOSPC."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(buffer.getbuffer())

    atomic_write_with(Path(path), write, before_replace)


def _leaves(value: Any, where: str = "") -> Iterator[tuple[str, bytes]]:
    """(key path, bytes) of every leaf of a checkpoint, in a fixed order: what its digest covers."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _leaves(value[key], f"{where}/{key}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{where}/{i}")
    elif isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        yield f"{where}:{value.dtype}:{tuple(value.shape)}", flat.view(torch.uint8).numpy().tobytes()
    elif isinstance(value, np.ndarray):
        yield f"{where}:{value.dtype}:{value.shape}", np.ascontiguousarray(value).tobytes()
    else:
        yield where, repr(value).encode()


def content_digest(state: dict[str, Any]) -> str:
    """sha256 over every tensor's bytes and every other value's repr (the digest key itself excluded)."""
    digest = hashlib.sha256()
    for where, data in _leaves({k: v for k, v in state.items() if k != DIGEST_KEY}):
        digest.update(where.encode())
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return digest.hexdigest()


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file that cannot be read back or whose content does not match its digest."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load one checkpoint file and check its digest; CorruptCheckpoint names the file and the fault."""
    try:
        # weights_only=False: the checkpoint holds RNG states and curves written by this same code.
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # a truncated zip, a damaged pickle: torch raises several kinds
        raise CorruptCheckpoint(f"{path}: cannot be read ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or DIGEST_KEY not in state:
        raise CorruptCheckpoint(f"{path}: not a GeoSem checkpoint (no {DIGEST_KEY!r} entry)")
    actual = content_digest(state)
    if actual != state[DIGEST_KEY]:
        raise CorruptCheckpoint(
            f"{path}: content sha256 {actual} does not match the {state[DIGEST_KEY]} it was written with"
        )
    return state


def save_checkpoint(state: dict[str, Any], run_dir: Path) -> None:
    """Write ``state`` as the run's newest checkpoint; the newest one so far becomes the previous one.

    The previous checkpoint is replaced only once the new one is complete on disk, so a kill (or a full
    disk) during the write leaves both earlier files as they were.
    """
    run_dir = Path(run_dir)
    newest, previous = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_CHECKPOINT_NAME
    state = {**state, DIGEST_KEY: content_digest(state)}

    def retire_newest() -> None:
        if newest.exists():
            # Killed between this rename and the next one, the run has only checkpoint.prev.pt, and
            # load_checkpoint resumes from it.
            os.replace(newest, previous)

    atomic_torch_save(state, newest, before_replace=retire_newest)


def load_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest readable checkpoint of a run, or None when it has none.

    A damaged file is reported (path and fault) and the previous checkpoint is tried; temporary files a
    killed writer left behind are removed.
    """
    run_dir = Path(run_dir)
    for stale in run_dir.glob(f"{temp_name_prefix(run_dir / CHECKPOINT_NAME)}*{TEMP_SUFFIX}"):
        log.warning("removing %s: a checkpoint write that did not complete", stale)
        stale.unlink(missing_ok=True)
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        path = run_dir / name
        if not path.is_file():
            continue
        try:
            return read_checkpoint(path)
        except CorruptCheckpoint as error:
            log.error("%s; trying the previous checkpoint", error)
    return None


def remove_checkpoints(run_dir: Path) -> None:
    """Delete a finished run's checkpoints (its final outputs are written)."""
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        (Path(run_dir) / name).unlink(missing_ok=True)


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
