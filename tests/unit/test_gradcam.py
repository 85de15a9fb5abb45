"""Grad-CAM for segmentation (paper A, Fig. 6): the CAM against hand-computed values, on a real GeoSem
model, and the figure of real fine-tuned runs through the API and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import matplotlib.image
import numpy as np
import pytest
import torch
import yaml
from geosem.analysis import gradcam_figure, segmentation_gradcam, shallow_layer
from geosem.analysis.gradcam import _palette
from geosem.cli import main
from geosem.models import build_dense_model
from geosem.snapshot import write_snapshot
from geosem.train.jobs import run_job
from torch import nn

from tests.helpers import DEPTH_TASK, pretrained_init, run_snapshot, write_run

# ------------------------------------------------------------------------------------------------------
# The CAM, by hand


class LinearOnLayer(nn.Module):
    """Logits = a 1x1 convolution of the layer's activation (here the input itself): the gradient of the
    target at a pixel is the weight row of the class predicted there, so the CAM has a closed form."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.layer = nn.Identity()
        self.head = nn.Conv2d(weight.shape[1], weight.shape[0], 1)
        with torch.no_grad():
            self.head.weight.copy_(weight[:, :, None, None])
            self.head.bias.copy_(torch.zeros(weight.shape[0]) if bias is None else bias)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return {0: self.head(self.layer(x))}


def test_two_pixel_example_computed_by_hand() -> None:
    # Channels A0 = [1, 0], A1 = [0, 2] on a 1x2 image; class k's logit is A_k. Pixel 0 predicts class 0,
    # pixel 1 class 1, so the gradients are [1, 0] and [0, 1], the channel weights their mean [0.5, 0.5],
    # the CAM 0.5 * A0 + 0.5 * A1 = [0.5, 1.0], already peaking at 1.
    activation = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    model = LinearOnLayer(torch.eye(2))
    cam = segmentation_gradcam(model, activation, model.layer)
    torch.testing.assert_close(cam, torch.tensor([[[0.5, 1.0]]]))


def test_a_cam_without_positive_evidence_stays_zero() -> None:
    # Logits -A: pixel 0 ([-1, 0]) predicts class 1, pixel 1 ([0, -2]) class 0; weights [-0.5, -0.5],
    # weighted activation [-0.5, -1.0], all negative: ReLU leaves zeros, and they must stay zeros.
    activation = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])
    model = LinearOnLayer(-torch.eye(2))
    cam = segmentation_gradcam(model, activation, model.layer)
    assert torch.equal(cam, torch.zeros(1, 1, 2))


def test_cam_matches_the_closed_form_for_a_linear_head() -> None:
    generator = torch.Generator().manual_seed(0)
    activation = torch.randn(3, 4, 5, 6, generator=generator)
    weight = torch.randn(3, 4, generator=generator)
    bias = torch.randn(3, generator=generator)
    model = LinearOnLayer(weight, bias)
    cam = segmentation_gradcam(model, activation, model.layer)

    a = activation.numpy().astype(np.float64)
    w = weight.numpy().astype(np.float64)
    logits = np.einsum("kc,bchw->bkhw", w, a) + bias.numpy()[None, :, None, None]
    predicted = logits.argmax(axis=1)  # (B, H, W)
    gradient = np.moveaxis(w[predicted], -1, 1)  # d target / d A[b, c, h, w] = W[k(b, h, w), c]
    channel_weights = gradient.mean(axis=(2, 3), keepdims=True)
    expected = np.maximum((channel_weights * a).sum(axis=1), 0.0)
    peak = expected.reshape(3, -1).max(axis=1)
    expected = np.where(peak[:, None, None] > 0, expected / np.maximum(peak, 1e-30)[:, None, None], 0.0)
    assert expected.max() > 0
    np.testing.assert_allclose(cam.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_tensor_outputs_and_upsampling() -> None:
    """A model returning a plain tensor, with the layer at half resolution: the CAM comes back at the
    image size, bilinearly upsampled, and scaled to [0, 1]."""
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1)
    model = nn.Sequential(layer, nn.ReLU(inplace=True), nn.Conv2d(4, 3, 1), nn.Upsample(scale_factor=2))
    cam = segmentation_gradcam(model, torch.rand(2, 3, 8, 10), layer)
    assert cam.shape == (2, 8, 10) and cam.min() >= 0.0 and cam.max() <= 1.0
    assert not layer._forward_hooks


# ------------------------------------------------------------------------------------------------------
# Real GeoSem models


def _dense_model() -> nn.Module:
    torch.manual_seed(0)
    return build_dense_model("resnet18", 5, decoder_channels=(8, 16, 32, 64, 128), head_scales=(0,))


def test_dense_model_cam_is_a_normalised_map_and_leaves_the_model_as_it_was() -> None:
    model = _dense_model()
    model.train()
    layer = shallow_layer(model)
    assert layer is model.encoder.body.layer1
    images = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}

    cam = segmentation_gradcam(model, images, layer)

    assert cam.shape == (2, 64, 96)
    assert torch.isfinite(cam).all() and cam.min() >= 0.0 and cam.max() <= 1.0
    for image_cam in cam:
        assert image_cam.max() == pytest.approx(1.0) and image_cam.std() > 0.01  # not flat
    assert not layer._forward_hooks and not any(m._forward_hooks for m in model.modules())
    assert model.training  # back in the mode it was in
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    # eval mode during the pass: BatchNorm running statistics were not updated
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_frozen_encoder_still_gets_a_cam() -> None:
    model = _dense_model()
    model.freeze_encoder()
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    cam = segmentation_gradcam(model, images, shallow_layer(model))
    assert cam.max() == pytest.approx(1.0)
    assert not any(p.requires_grad for p in model.encoder.parameters())


def test_hook_is_removed_when_the_forward_fails() -> None:
    model = _dense_model()
    layer = shallow_layer(model)
    with pytest.raises(RuntimeError):
        segmentation_gradcam(model, torch.rand(1, 5, 64, 96), layer)  # 5 channels: conv1 fails
    assert not layer._forward_hooks


def test_shallow_layer_of_an_smp_deeplab_with_a_timm_universal_encoder() -> None:
    import segmentation_models_pytorch as smp

    model = smp.DeepLabV3(encoder_name="tu-resnet18", encoder_weights=None, classes=4)
    layer = shallow_layer(model)
    assert layer is dict(model.named_modules())["encoder.model.layer1"]
    cam = segmentation_gradcam(model, torch.rand(1, 3, 64, 96), layer)
    assert cam.shape == (1, 64, 96) and cam.max() == pytest.approx(1.0)


def test_geosem_deeplabv3_uses_layer1_of_its_smp_encoder() -> None:
    from geosem.models import deeplab

    torch.manual_seed(0)
    model = deeplab.DeepLabV3Model("resnet18", 4)
    layer = shallow_layer(model)
    assert layer is dict(model.named_modules())["net.encoder.model.layer1"]
    cam = segmentation_gradcam(model, torch.rand(2, 3, 64, 96), layer)
    assert cam.shape == (2, 64, 96) and cam.max() == pytest.approx(1.0) and cam.std() > 0.01


def test_geosem_vit_dense_model_uses_an_early_block() -> None:
    torch.manual_seed(0)
    model = build_dense_model(
        "vit_tiny_patch16_224", 5, decoder_channels=(8, 16, 32, 64, 128), head_scales=(0,)
    )
    layer = shallow_layer(model)
    assert layer is model.encoder.body.blocks[2]  # of 12: the first DPT level
    cam = segmentation_gradcam(model, torch.rand(2, 3, 64, 96), layer)
    assert cam.shape == (2, 64, 96) and cam.max() == pytest.approx(1.0) and cam.std() > 0.01
    assert not layer._forward_hooks


class TinyViTSegmenter(nn.Module):
    """A timm ViT whose patch tokens become a map, a 1x1 classifier and an upsampling."""

    def __init__(self) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.vit = VisionTransformer(
            img_size=(32, 48), patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=0
        )
        self.head = nn.Conv2d(32, 3, 1)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        grid = tokens.transpose(1, 2).reshape(x.shape[0], 32, x.shape[2] // 8, x.shape[3] // 8)
        return {0: nn.functional.interpolate(self.head(grid), size=x.shape[-2:], mode="bilinear")}


def test_vit_uses_an_early_block_with_tokens_on_the_patch_grid() -> None:
    torch.manual_seed(0)
    model = TinyViTSegmenter()
    layer = shallow_layer(model)
    assert layer is model.vit.blocks[0]  # last block of the first quarter of 4
    cam = segmentation_gradcam(model, torch.rand(2, 3, 32, 48), layer)
    assert cam.shape == (2, 32, 48) and torch.isfinite(cam).all()
    assert cam.min() >= 0.0 and cam.max() <= 1.0


def test_models_without_a_shallow_layer_are_named() -> None:
    with pytest.raises(ValueError, match="Sequential has no shallow encoder layer"):
        shallow_layer(nn.Sequential(nn.Conv2d(3, 3, 1)))

    class Blocky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.blocks = nn.Sequential(nn.Linear(4, 4))

    with pytest.raises(ValueError, match="Blocky: Grad-CAM on this transformer encoder is not supported"):
        shallow_layer(Blocky())


def test_cityscapes_palette_uses_cityscapes_colours() -> None:
    palette = _palette("cityscapes19")
    assert tuple(palette[0]) == (128, 64, 128)  # road
    assert tuple(palette[13]) == (0, 0, 142)  # car
    assert tuple(palette[255]) == (0, 0, 0)  # ignore
    other = _palette("nyu40")
    assert len({tuple(c) for c in other[:40]}) == 40  # distinct colours for every class


# ------------------------------------------------------------------------------------------------------
# The figure of real fine-tuned runs


def _train(root: Path, snapshot: dict[str, Any]) -> Path:
    path = write_run(root, snapshot)
    run_job(path, threads=1)
    return path.parent


@pytest.fixture(scope="module")
def finetuned_runs(tiny_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two 2-step fine-tunes on the tiny shards: from a random init and from a 2-step depth pre-training."""
    root = tmp_path_factory.mktemp("gradcam_runs")
    pretrain = run_snapshot(tiny_shards, "pretrain", "depth", task=DEPTH_TASK)
    depth_init = pretrained_init(pretrain, _train(root, pretrain) / "model.pt")
    return [
        _train(root, run_snapshot(tiny_shards, "finetune", "seg-random", init={"name": "random"})),
        _train(root, run_snapshot(tiny_shards, "finetune", "seg-depth", init=depth_init)),
    ]


def test_figure_has_one_column_pair_per_run(finetuned_runs: list[Path], tmp_path: Path) -> None:
    one = gradcam_figure(finetuned_runs[:1], tmp_path / "one.png", num_images=3)
    two = gradcam_figure(finetuned_runs, tmp_path / "two.png", num_images=3)

    assert one.grid == (3, 4) and two.grid == (3, 6)
    assert two.ids == one.ids and len(two.ids) == 3
    assert list(two.titles.values()) == ["random (all)", "depth_supervised (all)"]
    assert set(two.layers.values()) == {"encoder.body.layer1"}
    for run_id, cam in two.cams.items():
        assert cam.shape == (3, 64, 96) and cam.min() >= 0.0 and cam.max() <= 1.0
        assert np.allclose(cam.reshape(3, -1).max(axis=1), 1.0)
        assert two.predictions[run_id].shape == (3, 64, 96)
        assert two.predictions[run_id].max() < 19
    # The same run gives the same CAM in both figures.
    np.testing.assert_allclose(one.cams["seg-random"], two.cams["seg-random"], atol=1e-6)

    small = matplotlib.image.imread(tmp_path / "one.png")
    large = matplotlib.image.imread(tmp_path / "two.png")
    assert small.ndim == large.ndim == 3
    assert large.shape[0] == small.shape[0]  # same rows
    # 6 panels instead of 4, all of the same width: the width grows by half.
    assert large.shape[1] / small.shape[1] == pytest.approx(6 / 4, rel=0.02)
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left by the atomic write


def test_another_layer_can_be_named(finetuned_runs: list[Path], tmp_path: Path) -> None:
    # The ResNet stem's activation, before its max pooling: stride 2 instead of layer1's 4.
    figure = gradcam_figure(
        finetuned_runs[:1], tmp_path / "stem.png", num_images=1, layer="encoder.body.act1"
    )
    assert figure.layers == {"seg-random": "encoder.body.act1"}
    assert figure.cams["seg-random"].shape == (1, 64, 96)
    with pytest.raises(ValueError, match=r"no module named 'encoder\.nope'"):
        gradcam_figure(finetuned_runs[:1], tmp_path / "x.png", num_images=1, layer="encoder.nope")


def test_runs_on_other_shards_are_refused(finetuned_runs: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / finetuned_runs[1].name  # a run's folder is named by its id
    shutil.copytree(finetuned_runs[1], other)
    run = yaml.safe_load((other / "run.yaml").read_text())
    run["data"]["shards"] = str(tmp_path / "other_shards")
    write_snapshot(run, other / "run.yaml")
    with pytest.raises(ValueError, match="shard set"):
        gradcam_figure([finetuned_runs[0], other], tmp_path / "x.png", num_images=1)
    assert not (tmp_path / "x.png").exists()


def test_cli_writes_the_figure(finetuned_runs: list[Path], tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "figures" / "gradcam.png"
    argv = ["gradcam", "--runs", *map(str, finetuned_runs), "--out", str(out), "--images", "2"]
    assert main(argv) == 0
    picture = matplotlib.image.imread(out)
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]
    assert "2 test images x 6 panels" in capsys.readouterr().out
