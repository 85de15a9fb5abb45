"""Grad-CAM activation maps of a shallow encoder layer, adapted to segmentation (paper A, Fig. 6).

Paper A: "We modify it [Grad-CAM] for segmentation by inspecting the gradient of neural response to the
summation of predicted labels for pixels instead of one single class label. We visualize shallow layers
(before pooling) for high spatial resolution." So the Grad-CAM target here is, for every pixel, the
logit of its predicted (argmax) class, summed over all pixels of the image; the rest is Grad-CAM as
published (Selvaraju et al. 2017): channel weights are the spatial mean of the target's gradient w.r.t.
the layer's activation, CAM = ReLU(sum_c w_c A_c), upsampled bilinearly to the image and scaled per
image to [0, 1]. The shallow layer is the first residual stage (``layer1``, stride 4) of the ResNet
encoder, the deepest block before the feature map is downsampled again (``layer2``); a ViT gets an
early block, its patch tokens reshaped into the patch grid. "Before pooling" could also be read as the
stem's activation before its max pooling (``encoder.body.act1``, stride 2): ``gradcam_figure(layer=...)``
and ``geosem gradcam --layer`` visualise any named module instead.

Hand-written rather than taken from the ``grad-cam`` package (jacobgil/pytorch-grad-cam 1.5.7, the
current release), measured on 2026-11-22 with ``pip download``:

* it is published as an sdist only (44 kB, built at install time), and requires ``ttach`` and
  ``scikit-learn`` (9.3 MB wheel, plus joblib, threadpoolctl, narwhals, cloudpickle), none of them in
  the environment; ``import pytorch_grad_cam`` imports scikit-learn eagerly (its ``__init__`` pulls in
  the NMF and KernelPCA methods), so every ``geosem gradcam`` call would pay for it;
* its ``SemanticSegmentationTarget`` is one category under a mask, not the paper's sum of per-pixel
  argmax logits, so a custom target callable is needed anyway, plus a wrapper because GeoSem models
  return ``{scale: logits}`` rather than a tensor;
* it min-max scales each CAM *before* resizing it with OpenCV, and calls ``model.zero_grad()`` and
  ``backward()``, overwriting the parameters' ``.grad``; here the CAM is upsampled first and divided by
  its maximum (an all-zero CAM stays zero, proportions survive), and gradients come from
  ``torch.autograd.grad`` w.r.t. the activation only, so the model's parameters, their ``requires_grad``
  and ``.grad`` are never touched.

What is left to write is a forward hook and four tensor operations.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geosem.atomic import atomic_write_with
from geosem.labelspaces import CITYSCAPES_COLOURS, CITYSCAPES_LABEL_IDS, IGNORE_INDEX

# ------------------------------------------------------------------------------------------------------
# The layer


def _vit_with_blocks(model: nn.Module) -> nn.Module | None:
    """The first timm VisionTransformer-like module inside ``model``: ``blocks`` + ``patch_embed`` +
    ``num_prefix_tokens`` (what is needed to put its tokens back on the patch grid)."""
    for module in model.modules():
        blocks = getattr(module, "blocks", None)
        if (
            isinstance(blocks, nn.Sequential | nn.ModuleList)
            and len(blocks) > 0
            and hasattr(module, "patch_embed")
            and hasattr(module, "num_prefix_tokens")
        ):
            return module
    return None


def shallow_layer(model: nn.Module) -> nn.Module:
    """The shallow encoder layer that paper A visualises, for the models GeoSem fine-tunes.

    * ``DenseModel``: ``encoder.body.layer1`` (timm ``features_only`` ResNet, first residual stage).
    * Any other model with exactly one module named ``layer1`` (e.g. the DeepLabV3 wrapper around
      segmentation-models-pytorch, whose timm universal encoder keeps it at ``encoder.model.layer1``);
      when several are found, the one(s) under an ``encoder`` are preferred.
    * A timm ViT: the last block of the first quarter of ``blocks`` (block 2 of 12 for ViT-B), the
      counterpart of ResNet's first of four stages; :func:`segmentation_gradcam` reshapes its tokens.

    Raises ``ValueError`` naming the model class when no such layer exists or the choice is ambiguous.
    """
    body = getattr(getattr(model, "encoder", None), "body", None)
    layer = getattr(body, "layer1", None)
    if isinstance(layer, nn.Module):
        return layer
    named = [(name, module) for name, module in model.named_modules() if name.split(".")[-1] == "layer1"]
    if len(named) > 1:
        named = [(name, module) for name, module in named if "encoder" in name.split(".")] or named
    if len(named) == 1:
        return named[0][1]
    if len(named) > 1:
        raise ValueError(
            f"{type(model).__name__}: several candidate shallow layers {[n for n, _ in named]}; "
            "pass the layer to segmentation_gradcam explicitly"
        )
    vit = _vit_with_blocks(model)
    if vit is not None:
        blocks = vit.blocks
        return blocks[max(0, len(blocks) // 4 - 1)]
    if any(name.split(".")[-1] == "blocks" for name, _ in model.named_modules()):
        raise ValueError(
            f"{type(model).__name__}: Grad-CAM on this transformer encoder is not supported (it has "
            "'blocks' but no ViT patch grid, patch_embed + num_prefix_tokens, to map tokens back to pixels)"
        )
    raise ValueError(
        f"{type(model).__name__} has no shallow encoder layer for Grad-CAM: no ResNet stage named "
        "'layer1' and no ViT 'blocks' among its modules"
    )


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next((name for name, module in model.named_modules() if module is layer), type(layer).__name__)


# ------------------------------------------------------------------------------------------------------
# The CAM


def _logits(output: Any) -> torch.Tensor:
    """Full-resolution logits (B, C, H, W) of a model output: GeoSem models return ``{scale: logits}``
    with scale 0 at full resolution; a plain tensor is taken as is."""
    if isinstance(output, dict):
        if 0 in output:
            return output[0]
        if len(output) == 1:
            return next(iter(output.values()))
        raise ValueError(f"model output has keys {sorted(output)} but no scale 0 (full-resolution logits)")
    if isinstance(output, torch.Tensor) and output.dim() == 4:
        return output
    raise TypeError(f"expected logits (B, C, H, W) or {{0: logits}}, got {type(output).__name__}")


def _tokens_to_map(tokens: torch.Tensor, model: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    """(B, N, D) ViT tokens -> (B, D, h, w) on the patch grid, prefix (class/register) tokens dropped."""
    vit = _vit_with_blocks(model)
    patch = getattr(getattr(vit, "patch_embed", None), "patch_size", None)
    if vit is None or patch is None:
        raise ValueError(
            f"{type(model).__name__}: Grad-CAM on a layer with token outputs {tuple(tokens.shape)} is not "
            "supported without a timm ViT patch grid"
        )
    ph, pw = (patch, patch) if isinstance(patch, int) else tuple(patch)
    grid_h, grid_w = size[0] // ph, size[1] // pw
    prefix = int(vit.num_prefix_tokens)
    if tokens.shape[1] != prefix + grid_h * grid_w:
        raise ValueError(
            f"{type(model).__name__}: {tokens.shape[1]} tokens do not match {prefix} prefix tokens + a "
            f"{grid_h}x{grid_w} patch grid; Grad-CAM on this layer is not supported"
        )
    patches = tokens[:, prefix:]
    return patches.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], grid_h, grid_w)


def _gradcam(model: nn.Module, images: torch.Tensor, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(CAMs (B, H, W) in [0, 1], logits (B, C, H, W) detached) from one forward and one backward pass."""
    captured: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"Grad-CAM layer {type(module).__name__} returns {type(output).__name__}")
        # A fresh leaf: gradients are wanted w.r.t. this activation only, whether or not the encoder is
        # frozen, and without back-propagating into (or accumulating .grad on) the layers before it.
        # The clone hands downstream a non-leaf, so in-place operations after the layer stay legal.
        leaf = output.detach().requires_grad_(True)
        captured.append(leaf)
        return leaf.clone()

    was_training = model.training
    handle = layer.register_forward_hook(hook)
    try:
        model.eval()
        with torch.enable_grad():
            logits = _logits(model(images))
            if len(captured) != 1:
                raise ValueError(
                    f"the Grad-CAM layer ran {len(captured)} times in one forward pass (expected once)"
                )
            activation = captured[0]
            # Paper A's target: the sum over pixels of each pixel's predicted-label score. Summing over
            # the batch too is harmless: in eval mode no image's logits depend on another's activation.
            target = logits.max(dim=1).values.sum()
            (gradient,) = torch.autograd.grad(target, activation)
    finally:
        handle.remove()
        model.train(was_training)
    activation, gradient = activation.detach(), gradient.detach()
    if activation.dim() == 3:  # ViT tokens (B, N, D)
        size = (images.shape[-2], images.shape[-1])
        activation = _tokens_to_map(activation, model, size)
        gradient = _tokens_to_map(gradient, model, size)
    if activation.dim() != 4:
        raise ValueError(f"Grad-CAM needs a (B, C, h, w) activation, got {tuple(activation.shape)}")
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
    # An all-zero CAM (no positive evidence anywhere) stays zero instead of becoming 0 / 0.
    cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), torch.zeros_like(cam))
    return cam.clamp_(0.0, 1.0), logits.detach()


def segmentation_gradcam(model: nn.Module, images: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Grad-CAM maps (B, H, W) in [0, 1] of ``layer`` for a batch of images (B, 3, H, W).

    Target: the sum over pixels of the logit of each pixel's argmax class (paper A). The model runs in
    eval mode (BatchNorm on running statistics) and is put back in its previous mode afterwards; the
    hook is removed whatever happens; parameters, their ``requires_grad`` and ``.grad`` are untouched.
    """
    return _gradcam(model, images, layer)[0]


# ------------------------------------------------------------------------------------------------------
# The figure


def _palette(label_space: str | None) -> np.ndarray:
    """(256, 3) uint8 colours indexed by train id (every value a uint8 label holds); ignore is black.

    Cityscapes-19 uses the Cityscapes colours (GeoSem's table is keyed by label id, mapped here to train
    ids); other label spaces get a fixed colormap (matplotlib's tab20, tab20b, tab20c, then seeded
    random colours), the same for every figure.
    """
    from matplotlib import colormaps

    table = np.zeros((256, 3), dtype=np.uint8)
    fixed = np.concatenate([colormaps[name](np.arange(20))[:, :3] for name in ("tab20", "tab20b", "tab20c")])
    extra = np.random.default_rng(0).uniform(0.1, 0.9, size=(256, 3))
    colours = np.concatenate([fixed, extra])[:256]
    table[:] = np.round(colours * 255).astype(np.uint8)
    if label_space == "cityscapes19":
        for label_id, train_id in CITYSCAPES_LABEL_IDS.values():
            if train_id is not None and label_id in CITYSCAPES_COLOURS:
                table[train_id] = CITYSCAPES_COLOURS[label_id]
    table[IGNORE_INDEX] = 0
    return table


@dataclass
class GradcamFigure:
    """What :func:`gradcam_figure` drew: the sample ids (rows), and per run (keyed by run id, in column
    order) its CAMs (K, H, W) and predicted labels (K, H, W), the layer visualised and the column title."""

    path: Path
    ids: list[str]
    cams: dict[str, np.ndarray] = field(default_factory=dict)
    predictions: dict[str, np.ndarray] = field(default_factory=dict)
    layers: dict[str, str] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, columns) of panels: image, ground truth, then prediction + Grad-CAM per run."""
        return len(self.ids), 2 + 2 * len(self.cams)


def _load_run(run_dir: Path, device: torch.device) -> tuple[dict[str, Any], nn.Module]:
    """The run snapshot and its fine-tuned model, built exactly as the training job built it."""
    from geosem.snapshot import read_snapshot
    from geosem.tasks import get_task

    run = read_snapshot(run_dir / "run.yaml")
    if run.get("kind") != "finetune" or run["task"]["name"] != "segmentation":
        raise ValueError(f"{run_dir}: not a segmentation fine-tune (kind {run.get('kind')!r})")
    weights = run_dir / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} does not exist: the fine-tune {run['run_id']!r} has not finished")
    model = get_task(run["task"]["name"])(run, device).build_model()
    state = torch.load(weights, map_location="cpu", weights_only=True)["model"]
    model.load_state_dict(state, strict=True)
    return run, model.to(device)


def _test_images(
    run_dirs: list[Path], runs: list[dict[str, Any]], num_images: int, device: torch.device
) -> tuple[list[str], torch.Tensor, np.ndarray]:
    """The first ``num_images`` test ids, images and labels the runs share; runs that evaluate on other
    images cannot be compared and are refused, naming the run."""
    from geosem.shards.reader import ShardDataset, ShardSet
    from geosem.train.jobs import test_ids

    shard_dir = Path(runs[0]["data"]["shards"]).resolve()
    shards = ShardSet(shard_dir)
    ids = test_ids(shards, runs[0])[:num_images]
    for run_dir, run in zip(run_dirs, runs, strict=True):
        if Path(run["data"]["shards"]).resolve() != shard_dir:
            raise ValueError(
                f"{run_dir}: shard set {run['data']['shards']} differs from {shard_dir} of {run_dirs[0]}; "
                "a Grad-CAM figure compares runs on the same test images"
            )
        if test_ids(shards, run)[:num_images] != ids:
            raise ValueError(f"{run_dir}: test split or stride differs from {run_dirs[0]}")
    dataset = ShardDataset(shards, ids, ("image", "label"))
    samples = [dataset[i] for i in range(len(dataset))]
    shards.close()
    images = torch.stack([s["image"] for s in samples]).to(device)
    return list(ids), images, torch.stack([s["label"] for s in samples]).numpy()


def _target_layer(run_dir: Path, model: nn.Module, layer: str | None) -> nn.Module:
    if layer is None:
        return shallow_layer(model)
    module = dict(model.named_modules()).get(layer)
    if module is None:
        raise ValueError(f"{run_dir}: {type(model).__name__} has no module named {layer!r}")
    return module


def _compute(
    result: GradcamFigure,
    loaded: list[tuple[Path, dict[str, Any], nn.Module]],
    images: torch.Tensor,
    layer: str | None,
) -> None:
    """Each run's Grad-CAM and prediction into ``result``, with a title per run."""
    titles: list[str] = []
    for run_dir, run, model in loaded:
        module = _target_layer(run_dir, model, layer)
        cam, logits = _gradcam(model, images, module)
        key = str(run["run_id"])
        result.cams[key] = cam.cpu().numpy()
        result.predictions[key] = logits.argmax(dim=1).cpu().numpy()
        result.layers[key] = _layer_name(model, module)
        titles.append(f"{run['init']['name']} ({run['task']['mode']})")
    # Several runs of one init (seeds, sizes) would share a title: name them by run id then.
    for index, key in enumerate(result.cams):
        result.titles[key] = titles[index] if titles.count(titles[index]) == 1 else f"{titles[index]}\n{key}"


def _draw(result: GradcamFigure, images: torch.Tensor, labels: np.ndarray, palette: np.ndarray) -> None:
    """Image, ground truth, then prediction and Grad-CAM overlay per run; one row per test image."""
    from matplotlib.figure import Figure

    rows, cols = result.grid
    height, width = images.shape[-2:]
    panel = 2.2  # inches per panel row
    figure = Figure(figsize=(cols * panel * width / height, rows * panel + 0.6), dpi=100)
    axes = figure.subplots(rows, cols, squeeze=False)
    pictures = images.permute(0, 2, 3, 1).clamp(0, 1).cpu().numpy()
    for row in range(rows):
        panels: list[tuple[str, np.ndarray, np.ndarray | None]] = [
            ("image", pictures[row], None),
            ("ground truth", palette[labels[row]], None),
        ]
        for key in result.cams:
            title = result.titles[key]
            panels.append((f"{title}\nprediction", palette[result.predictions[key][row]], None))
            panels.append((f"{title}\nGrad-CAM {result.layers[key]}", pictures[row], result.cams[key][row]))
        for col, (title, picture, cam) in enumerate(panels):
            axis = axes[row, col]
            axis.imshow(picture)
            if cam is not None:
                axis.imshow(cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(title, fontsize=7)
            if col == 0:
                axis.set_ylabel(result.ids[row], fontsize=6)
    figure.tight_layout()
    atomic_write_with(result.path, lambda tmp: figure.savefig(tmp, format="png"))


def gradcam_figure(
    run_dirs: Sequence[Path | str],
    out_png: Path | str,
    num_images: int = 4,
    device: torch.device | str = "cpu",
    layer: str | None = None,
) -> GradcamFigure:
    """Draw paper A's Fig. 6 for fine-tuned segmentation runs (one per init) into ``out_png``.

    Rows: the first ``num_images`` test images of the runs' shard set (test split, test stride).
    Columns: image, ground-truth labels, then for each run its predicted labels and its Grad-CAM of the
    shallow encoder layer overlaid on the image, titled with the run's init name and fine-tuning mode.
    All runs must evaluate on the same shard set and test ids. The PNG is written atomically.

    ``layer``: a module name (as in ``model.named_modules()``, e.g. ``encoder.body.act1`` for the ResNet
    stem before its max pooling) instead of :func:`shallow_layer`'s choice, the same for every run.
    """
    if not run_dirs:
        raise ValueError("gradcam_figure needs at least one run directory")
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    device = torch.device(device)
    paths = [Path(d) for d in run_dirs]
    loaded = [(path, *_load_run(path, device)) for path in paths]
    runs = [run for _, run, _ in loaded]
    ids, images, labels = _test_images(paths, runs, num_images, device)
    result = GradcamFigure(path=Path(out_png), ids=ids)
    _compute(result, loaded, images, layer)
    _draw(result, images, labels, _palette(runs[0]["data"].get("label_space")))
    return result
