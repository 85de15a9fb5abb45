"""Image reconstruction as an auxiliary task (paper B, section 3, task 3): 3 channels, MSE to the input.

The target is the image as the model sees it: ``batch["image"]``, float RGB in [0, 1] after the
auxiliary resize and flip (``geosem.auxtasks.depth.resize_aux_sample``), before the backbone's own
mean/std normalisation (which the frozen backbone applies inside). The head's output is compared as it
is, with no sigmoid: paper B names none, the MSE of a linear output is plain least-squares regression,
and a squashing sigmoid would make the exact 0 / 1 pixel values of the input unreachable.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from geosem.auxtasks import register_aux_task
from geosem.auxtasks.base import IMAGE_FIELD, AuxTask

RGB_CHANNELS = 3


@register_aux_task("reconstruction")
class Reconstruction(AuxTask):
    """Image reconstruction: mean squared error between the head's RGB output and the input image."""

    fields = (IMAGE_FIELD,)
    needs_labels = False

    def out_channels(self, num_classes: int) -> int:
        return RGB_CHANNELS  # whatever the dataset's label space: no labels are read

    def loss(self, output: Tensor, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        image = batch[IMAGE_FIELD]
        self.check_output(output, image)
        if output.shape[1] != RGB_CHANNELS:
            raise ValueError(
                f"auxiliary task {self.name!r}: head predicts {output.shape[1]} channels, "
                f"needs {RGB_CHANNELS}"
            )
        loss = F.mse_loss(output, image.to(output.dtype))
        return loss, {f"{self.name}_loss": float(loss.detach())}
