"""The training step's fast path: bf16 autocast and channels_last, chosen per run (``compute`` section).

``precision``:

* ``fp32`` (default): every step in float32, as the trainers have always run.
* ``bf16``: the forward pass and the loss under ``torch.autocast(dtype=bfloat16)``; the weights, the
  gradients and Adam's state stay float32, and evaluation always runs in float32, so the reported
  metrics are measured the same way whatever the training precision.
* ``auto``: bf16 where the device does bf16 in hardware (a CUDA GPU that reports bf16 support; a CPU
  with AVX512-BF16 or AMX-BF16 in ``/proc/cpuinfo``), else fp32. The choice is detected, not assumed, and
  logged.

``channels_last`` stores the model's and the images' 4-D tensors NHWC, which oneDNN's and cuDNN's
convolutions prefer.

Neither changes what a run computes beyond rounding, but bf16 does change its numbers, so a
non-default precision is part of the run's snapshot (and its id's digest): a bf16 run is another run.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the planner reads the constants and must stay fast
    import torch
    from torch import nn

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "auto")
# The compute keys of the fast path; a snapshot carries them only when they differ from fp32 / NCHW.
FAST_PATH_KEYS = ("precision", "channels_last")
FAST_PATH_DEFAULTS = {"precision": "fp32", "channels_last": False}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (its flags name AVX512-BF16 or AMX-BF16)."""
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux, or no /proc: nothing to detect, so not claimed
        return False
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    return any(flag in flags for flag in CPU_BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``fp32`` or ``bf16`` for ``device``: ``auto`` becomes bf16 only where the hardware has it."""
    if precision not in PRECISIONS:
        raise ValueError(f"compute.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    import torch

    if device.type == "cuda":
        chosen = "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    else:
        chosen = "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    log.info("compute.precision auto: %s on %s", chosen, device)
    return chosen


@contextlib.contextmanager
def autocast(precision: str, device: torch.device) -> Iterator[None]:
    """The forward pass and loss of one step in ``precision`` (resolved: fp32 or bf16)."""
    if precision == "bf16":
        import torch

        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def to_channels_last(model: nn.Module) -> nn.Module:
    import torch

    return model.to(memory_format=torch.channels_last)


def batch_channels_last(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every 4-D floating tensor of a batch (the images) NHWC; labels, depths and intrinsics unchanged."""
    import torch

    return {
        key: value.contiguous(memory_format=torch.channels_last)
        if value.dim() == 4 and value.is_floating_point()
        else value
        for key, value in batch.items()
    }


@contextlib.contextmanager
def full_precision(like: torch.Tensor) -> Iterator[None]:
    """Autocast off on ``like``'s device: for geometry and losses, whose inputs the caller casts to fp32.
    bf16 has 8 bits of mantissa, so a pixel coordinate of 150 is rounded to whole pixels: a warp
    computed in bf16 moved monodepth2's photometric loss by 28 % on a fixed batch (test_fast_path.py)."""
    import torch

    with torch.autocast(device_type=like.device.type, enabled=False):
        yield
