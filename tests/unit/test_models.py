"""Model output shapes and head replacement."""

from __future__ import annotations

import pytest
import torch
from geosem.models import build_dense_model


def test_depth_model_predicts_four_scales() -> None:
    model = build_dense_model("resnet18", 1, head_scales=(0, 1, 2, 3))
    out = model(torch.rand(2, 3, 64, 96))
    assert {scale: tuple(t.shape) for scale, t in out.items()} == {
        0: (2, 1, 64, 96),
        1: (2, 1, 32, 48),
        2: (2, 1, 16, 24),
        3: (2, 1, 8, 12),
    }


def test_replacing_the_head_keeps_encoder_and_decoder_weights() -> None:
    torch.manual_seed(0)
    model = build_dense_model("resnet18", 1)
    before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("heads.")}
    model.replace_heads(19, (0,), head_kernel=3)
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    logits = model(torch.rand(1, 3, 64, 64))
    assert list(logits) == [0] and logits[0].shape == (1, 19, 64, 64)
    assert model.heads["0"].kernel_size == (3, 3)


def test_input_normalisation_is_inside_the_model() -> None:
    model = build_dense_model("resnet18", 1).eval()
    assert torch.allclose(model.encoder.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))
    assert "encoder.mean" not in model.state_dict()  # not persisted: a constant, not a weight


@pytest.mark.parametrize(
    ("name", "expected"),
    [("resnet18", (0.485, 0.456, 0.406)), ("vit_tiny_patch16_224", (0.5, 0.5, 0.5))],
)
def test_each_encoder_normalises_its_input_as_its_pretrained_weights_expect(
    name: str, expected: tuple[float, ...]
) -> None:
    """timm's default ViT-T/S/B weights expect mean = std = 0.5, ResNets ImageNet's statistics."""
    import timm
    from geosem.models import create_encoder

    cfg = timm.models.get_pretrained_cfg(name)
    encoder = create_encoder(name)
    assert tuple(encoder.mean.flatten().tolist()) == pytest.approx(expected)
    assert tuple(encoder.mean.flatten().tolist()) == pytest.approx(cfg.mean)
    assert tuple(encoder.std.flatten().tolist()) == pytest.approx(cfg.std)


def test_pose_and_deeplab_take_their_encoders_normalisation() -> None:
    from geosem.models import build_deeplabv3, create_encoder
    from geosem.models.pose import PoseNet

    pose = PoseNet("resnet18")
    assert pose.mean.shape == (1, 6, 1, 1)
    assert pose.mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406] * 2)
    deeplab = build_deeplabv3(create_encoder("resnet18"), 19)
    assert deeplab.std.flatten().tolist() == pytest.approx([0.229, 0.224, 0.225])


def test_the_pose_output_scale_multiplies_the_motion_the_decoder_predicts() -> None:
    """pose_scale 1 is 100 times monodepth2's 0.01 on the same weights (axis-angle and translation), and
    the depth_mono task hands its parameter to the pose network."""
    import torch
    from geosem.models.pose import PoseNet
    from geosem.tasks import get_task

    torch.manual_seed(0)
    pose = PoseNet("resnet18").eval()
    first, second = torch.rand(2, 3, 64, 96), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        small = pose(first, second)
        pose.output_scale = 1.0
        large = pose(first, second)
    assert torch.allclose(large[:, :3, 3], 100 * small[:, :3, 3], rtol=1e-3, atol=1e-7)
    assert (large[:, :3, 3].norm(dim=1) > 0).all()
    run = {
        "task": {
            "name": "depth_mono",
            "pose_scale": 0.5,
            "encoder_init": "random",
            "min_depth": 0.1,
            "max_depth": 100.0,
        },
        "model": {"encoder": "resnet18", "decoder_channels": [16, 32, 64, 128, 256]},
    }
    assert get_task("depth_mono")(run, torch.device("cpu")).build_model().pose.output_scale == 0.5
