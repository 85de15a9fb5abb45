"""The self-supervised losses on constructed inputs whose answers are known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from geosem.geometry.warp import invert_rigid, reproject, warp_with_depth
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.tasks.depth_mono import photometric_depth_loss
from geosem.tasks.mae import patch_mask, seed_patch_mask
from geosem.tasks.photometric import (
    edge_aware_smoothness,
    mean_normalised,
    photometric_error,
    sigmoid_to_depth,
    ssim,
)


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(2, 3, 16, 20, generator=torch.Generator().manual_seed(seed))


def test_ssim_of_identical_images_is_one_and_error_zero() -> None:
    image = _images()
    assert torch.allclose(ssim(image, image), torch.ones_like(image), atol=1e-5)
    assert photometric_error(image, image).abs().max() < 1e-6


def test_ssim_matches_its_definition_on_one_window() -> None:
    x, y = _images(1), _images(2)
    # Interior pixel (5, 7) of channel 0: SSIM over its 3x3 neighbourhood, population statistics.
    px, py = x[0, 0, 4:7, 6:9].flatten(), y[0, 0, 4:7, 6:9].flatten()
    mx, my = px.mean(), py.mean()
    vx, vy = ((px - mx) ** 2).mean(), ((py - my) ** 2).mean()
    cov = ((px - mx) * (py - my)).mean()
    c1, c2 = 0.01**2, 0.03**2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert torch.isclose(ssim(x, y)[0, 0, 5, 7], expected, atol=1e-5)


def test_photometric_error_weights_l1_and_ssim() -> None:
    x = torch.full((1, 3, 8, 8), 0.2)
    y = torch.full((1, 3, 8, 8), 0.6)
    # Constant images: variances 0, so SSIM = (2 mx my + C1) / (mx^2 + my^2 + C1); L1 = 0.4.
    s = (2 * 0.2 * 0.6 + 1e-4) / (0.2**2 + 0.6**2 + 1e-4)
    expected = 0.85 * (1 - s) / 2 + 0.15 * 0.4
    assert torch.allclose(photometric_error(x, y), torch.full((1, 1, 8, 8), expected), atol=1e-4)


def test_smoothness_of_a_constant_map_is_zero_and_of_a_ramp_is_not() -> None:
    image = _images()
    assert edge_aware_smoothness(torch.full((2, 1, 16, 20), 3.0), image) == 0
    ramp = torch.arange(20.0).expand(2, 1, 16, 20)
    flat = torch.zeros_like(image)
    # On a flat image the weight is exp(0) = 1: the x gradient 1 everywhere, the y gradient 0.
    assert torch.isclose(edge_aware_smoothness(ramp, flat), torch.tensor(1.0))
    assert edge_aware_smoothness(ramp, image) < 1.0  # image edges lower the penalty


def test_mean_normalised_disparity_is_scale_free() -> None:
    disparity = torch.rand(2, 1, 8, 8) + 0.1
    assert torch.allclose(mean_normalised(disparity), mean_normalised(7.0 * disparity), atol=1e-6)


def test_sigmoid_to_depth_spans_the_range() -> None:
    depth = sigmoid_to_depth(torch.tensor([0.0, 1.0]), 0.1, 100.0)
    assert torch.allclose(depth, torch.tensor([100.0, 0.1]))


def _triplet(shards: Path) -> dict[str, torch.Tensor]:
    fields = ("image", "image_prev", "image_next", "depth", "K", "pose_to_prev", "pose_to_next")
    dataset = ShardDataset(ShardSet(shards), ShardSet(shards).ids("train"), fields)
    return {k: torch.stack([dataset[i][k] for i in range(2)]) for k in fields}


def test_neighbours_are_loaded_and_edge_frames_dropped(tiny_shards: Path) -> None:
    shards = ShardSet(tiny_shards)
    train = shards.ids("train")
    dataset = ShardDataset(shards, train, ("image", "image_prev", "image_next"))
    # 2 train sequences of 4 frames: frames 1 and 2 have both neighbours.
    assert len(dataset) == 4
    sample = dataset[0]
    row = shards.row(dataset.ids[0])
    assert torch.equal(sample["image_prev"], ShardDataset(shards, [row["prev_id"]], ("image",))[0]["image"])


def test_warp_with_true_depth_and_pose_reconstructs_the_target(tiny_shards: Path) -> None:
    batch = _triplet(tiny_shards)
    depth = batch["depth"][:, None]
    for source, transform in (
        (batch["image_prev"], batch["pose_to_prev"]),
        (batch["image_next"], batch["pose_to_next"]),
    ):
        warped = reproject(source, depth, transform, batch["K"])
        reference, valid = warp_with_depth(source, depth, transform, batch["K"])
        # Inside the source image the border-padded warp is geometry.warp_with_depth's warp.
        assert torch.allclose(warped * valid, reference * valid, atol=1e-5)
        true_error = photometric_error(warped, batch["image"])[valid].mean()
        true_l1 = (warped - batch["image"]).abs().mean(1, keepdim=True)[valid].mean()
        identity_error = photometric_error(source, batch["image"])[valid].mean()
        wrong = reproject(source, depth * 0.7, transform, batch["K"])
        wrong_error = photometric_error(wrong, batch["image"])[valid].mean()
        # Rendering aliases at 64x96 (the SSIM term sees it most), so not zero, but far below the rest.
        assert true_l1 < 0.05, true_l1
        assert true_error < 0.6 * identity_error, (true_error, identity_error)
        assert true_error < 0.8 * wrong_error, (true_error, wrong_error)


def test_automasking_prefers_the_identity_on_a_static_camera() -> None:
    image = _images()
    intrinsics = torch.tensor([[20.0, 0, 10], [0, 20.0, 8], [0, 0, 1]]).expand(2, 3, 3)
    logits = {s: torch.zeros(2, 1, 16 // 2**s, 20 // 2**s) for s in range(4)}
    moved = torch.eye(4).repeat(2, 1, 1)
    moved[:, 0, 3] = 0.5  # a wrong pose: the warp misaligns a static frame
    loss, logs = photometric_depth_loss(logits, image, [(image.clone(), moved)], intrinsics, 0.1, 100.0)
    # The unwarped source equals the target: the identity error (noise only) wins almost everywhere.
    assert logs["automask_share"] > 0.95
    assert loss < 1e-3


def test_invert_rigid_is_the_matrix_inverse() -> None:
    from geosem.models.pose import pose_from_axis_angle

    transform = pose_from_axis_angle(torch.tensor([[0.1, -0.2, 0.05]]), torch.tensor([[0.3, 0.0, -1.0]]))
    assert torch.allclose(invert_rigid(transform), torch.linalg.inv(transform), atol=1e-6)


def test_mae_masks() -> None:
    rng = np.random.default_rng(0)
    mask = patch_mask((64, 96), patch=8, ratio=0.75, generator=rng)
    assert mask.shape == (64, 96)
    assert abs(float(mask.float().mean()) - 0.75) < 1 / 96
    blocks = mask.reshape(8, 8, 12, 8).permute(0, 2, 1, 3).reshape(96, 64)
    assert bool(((blocks.all(1)) | (~blocks).all(1)).all())  # every 8x8 patch is all-or-nothing
    seeded = seed_patch_mask((64, 96), density=0.01, patch=7, generator=rng)
    assert 0.0 < float(seeded.float().mean()) < 0.6


def test_colour_jitter_is_one_draw_for_all_frames_and_leaves_the_originals() -> None:
    from geosem.tasks.depth_mono import colour_jitter

    image = _images()[0]
    sample = {"image": image, "image_prev": image.clone(), "right": image.flip(-1)}
    jittered = 0
    for seed in range(8):
        out = colour_jitter(sample, np.random.default_rng(seed))
        assert torch.equal(out["image"], image)  # the losses' frames are untouched
        assert torch.allclose(out["image_aug"], out["image_prev_aug"])  # same draw for every frame
        assert torch.allclose(out["right_aug"], out["image_aug"].flip(-1), atol=1e-6)
        jittered += not torch.equal(out["image_aug"], image)
    assert 0 < jittered < 8  # applied with probability 0.5


def test_the_flow_loss_counts_only_pixels_whose_flow_lands_inside_the_source_frame() -> None:
    """A constant flow of 8 px maps the right 8 columns outside frame t-1: their zero-padded warp must not
    count (the photometric term is the mean over the in-image pixels)."""
    from geosem.geometry import warp_with_flow
    from geosem.tasks import get_task
    from geosem.tasks.photometric import photometric_error

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 64, generator=generator)
    prev = torch.rand(1, 3, 32, 64, generator=generator)
    prev[..., 8:] = image[..., :-8]  # frame t's pixel x is frame t-1's pixel x + 8
    flow = torch.zeros(1, 2, 32, 64)
    flow[:, 0] = 8.0

    class ConstantFlow(torch.nn.Module):
        def forward(self, first: torch.Tensor, second: torch.Tensor) -> dict[int, torch.Tensor]:
            return {0: flow}

    task = get_task("flow")({"task": {"smoothness": 0.0}})
    _, logs = task.loss(ConstantFlow(), {"image": image, "image_prev": prev})
    warped, inside = warp_with_flow(prev, flow)
    error = photometric_error(warped, image)
    assert inside[..., -8:].sum() == 0 and inside[..., :-8].all()
    assert logs["photometric"] == pytest.approx(float(error[inside].mean()), rel=1e-6)
    assert logs["photometric"] < 0.5 * float(error.mean())  # the unmasked mean counts the padding


def test_stereo_partner_sits_left_when_flipped_or_swapped_and_right_otherwise() -> None:
    from geosem.geometry.warp import stereo_transform

    baseline = torch.tensor([0.5, 0.5, 0.5, 0.5])
    flipped = torch.tensor([0.0, 1.0, 0.0, 1.0])
    swapped = torch.tensor([0.0, 0.0, 1.0, 1.0])
    shifts = stereo_transform(baseline, flipped, swapped)[:, 0, 3].tolist()
    assert shifts == [-0.5, 0.5, 0.5, -0.5]


@pytest.mark.parametrize("task_name", ["depth_stereo", "depth_mono_stereo"])
def test_stereo_tasks_train_on_both_cameras_as_monodepth2_does(task_name: str) -> None:
    """monodepth2 draws the target side per sample; the right image then is the target, the left its
    partner, and (video + stereo) the temporal sources come from the right camera too."""
    from geosem.tasks import get_task, resolve_parameters

    frames = {name: torch.full((3, 8, 16), float(k)) for k, name in enumerate(
        ("image", "right", "image_prev", "right_prev", "image_next", "right_next")
    )}  # fmt: skip
    sample = {**frames, "K": torch.eye(3), "baseline": torch.tensor(0.5)}
    params = resolve_parameters(task_name, {"hflip": False, "colour_jitter": False}, "test")
    assert params["stereo_side"] == "sample"
    task = get_task(task_name)({"task": params, "model": {"encoder": "resnet18"}})
    rng = np.random.default_rng(0)
    drawn = [task.transform(dict(sample), rng) for _ in range(200)]
    swapped = [out for out in drawn if out["swapped"] == 1.0]
    assert 70 < len(swapped) < 130  # about half of the samples train on the right camera
    for out in swapped:
        assert torch.equal(out["image"], frames["right"]) and torch.equal(out["right"], frames["image"])
        if task_name == "depth_mono_stereo":
            assert torch.equal(out["image_prev"], frames["right_prev"])
            assert torch.equal(out["image_next"], frames["right_next"])
    kept = [out for out in drawn if out["swapped"] == 0.0]
    assert all(torch.equal(out["image"], frames["image"]) for out in kept)
    left = get_task(task_name)({"task": {**params, "stereo_side": "left"}, "model": {"encoder": "resnet18"}})
    assert all(left.transform(dict(sample), rng)["swapped"] == 0.0 for _ in range(50))
