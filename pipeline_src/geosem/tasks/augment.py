"""Views for contrastive and self-distillation pre-training (MoCo v2, DINO): random resized crop, colour
jitter, grayscale, Gaussian blur and horizontal flip, from torchvision's transforms.v2.

torchvision draws its randomness from torch's global generator. A task's ``transform`` gets a numpy
generator seeded per sample draw (that is what makes a resumed run draw the same views), so each view is
made inside ``torch.random.fork_rng`` with the global generator seeded from it: the views depend only on
the draw, and the global generator (dropout, the loop's own draws) is left exactly as it was.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import v2


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view. Defaults: MoCo v2's recipe (its paper's appendix; torchvision's parameters)."""

    size: tuple[int, int]
    scale: tuple[float, float] = (0.2, 1.0)
    jitter_p: float = 0.8
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    grayscale_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    flip: bool = True

    def pipeline(self) -> v2.Compose:
        # Blur kernel about a tenth of the view's shorter side, odd, as the recipes scale it to 224 px.
        kernel = max(3, int(0.1 * min(self.size)) // 2 * 2 + 1)
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(self.size, scale=self.scale, antialias=True),
            v2.RandomApply([v2.ColorJitter(*self.jitter)], p=self.jitter_p),
            v2.RandomGrayscale(p=self.grayscale_p),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=self.blur_sigma)], p=self.blur_p),
        ]
        if self.flip:
            steps.append(v2.RandomHorizontalFlip())
        return v2.Compose(steps)


def make_views(image: torch.Tensor, specs: list[ViewSpec], rng: np.random.Generator) -> list[torch.Tensor]:
    """One augmented view of ``image`` (float CHW in [0, 1]) per spec, drawn from ``rng`` alone."""
    seed = int(rng.integers(0, 2**62))
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also reseed CUDA's, which fork_rng(devices=[])
        # does not restore.
        torch.default_generator.manual_seed(seed)
        return [spec.pipeline()(image).clamp(0.0, 1.0).contiguous() for spec in specs]
