"""Study B's auxiliary tasks and depth objective on hand-computed examples, its augmentation's purity and
alignment, and its depth evaluation on a tiny real shard set."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from geosem.auxtasks import create_aux_task, get_aux_task, list_aux_tasks
from geosem.auxtasks.depth import (
    DEPTH_RECIPES,
    DepthObjective,
    DepthRecipe,
    augment_depth_sample,
    evaluate_depth,
    gradient_loss,
    resize_aux_sample,
    sig_loss,
)
from geosem.metrics.depth import DEPTH_CROPS
from geosem.shards import ShardSet, ShardWriter

LN3 = math.log(3.0)


# --- auxiliary tasks -------------------------------------------------------------------------------------


def _mldc_example() -> tuple[torch.Tensor, torch.Tensor]:
    """One 2x2 image, K = 2: pixel softmaxes (0.5, 0.5), (0.75, 0.25), (0.25, 0.75) on class-0 pixels and
    (0.75, 0.25) on an ignored pixel; only class 0 is present."""
    logits = torch.tensor([[[[0.0, LN3], [0.0, LN3]], [[0.0, 0.0], [LN3, 0.0]]]])
    labels = torch.tensor([[[0, 0], [0, 255]]])
    return logits, labels


def test_registry_lists_the_four_tasks_and_names_the_known_on_an_unknown_one() -> None:
    assert list_aux_tasks() == ["mldc", "reconstruction", "segmentation", "sldc"]
    with pytest.raises(KeyError, match=r"unknown auxiliary task 'depthy'; known: \['mldc', 'reconstruction'"):
        get_aux_task("depthy")
    with pytest.raises(ValueError, match="takes: eps, pixels"):
        create_aux_task("mldc", pixel="all")
    assert get_aux_task("reconstruction").needs_labels is False
    assert get_aux_task("reconstruction").fields == ("image",)
    assert get_aux_task("mldc").fields == ("image", "label")
    assert create_aux_task("reconstruction").out_channels(150) == 3
    assert create_aux_task("mldc").out_channels(150) == 150


def test_mldc_matches_the_hand_computed_example() -> None:
    logits, labels = _mldc_example()
    # all pixels (paper B's 1/(HW) sum): y_c = (2.25/4, 1.75/4) = (0.5625, 0.4375), target (1, 0):
    # BCE = -(ln 0.5625 + ln(1 - 0.4375)) / 2 = -ln 0.5625.
    loss, logs = create_aux_task("mldc").loss(logits, {"label": labels})
    assert loss.item() == pytest.approx(-math.log(0.5625), abs=1e-6)
    assert logs["mldc_loss"] == pytest.approx(loss.item())
    # valid pixels only: y_c = (1.5/3, 1.5/3) = (0.5, 0.5): BCE = ln 2.
    valid, _ = create_aux_task("mldc", pixels="valid").loss(logits, {"label": labels})
    assert valid.item() == pytest.approx(math.log(2.0), abs=1e-6)
    # An image with no labelled pixel adds nothing; the target counts a class once however many pixels.
    blank = torch.full_like(labels, 255)
    both, logs = create_aux_task("mldc").loss(
        torch.cat([logits, torch.randn_like(logits)]), {"label": torch.cat([labels, blank])}
    )
    assert both.item() == pytest.approx(loss.item(), abs=1e-6) and logs["mldc_images"] == 1.0


def test_mldc_is_log_safe_and_refuses_labels_beyond_the_head() -> None:
    logits = torch.tensor([[[[50.0]], [[-50.0]]]])  # y_c = (1, 0) in float32, target (0, 1)
    loss, _ = create_aux_task("mldc").loss(logits, {"label": torch.tensor([[[1]]])})
    assert torch.isfinite(loss) and loss.item() == pytest.approx(-math.log(1e-6), rel=1e-3)
    with pytest.raises(ValueError, match=r"labels \[7\] outside the head's 2 classes"):
        create_aux_task("mldc").loss(logits, {"label": torch.tensor([[[7]]])})


def test_sldc_targets_the_dominant_class() -> None:
    logits, _ = _mldc_example()
    labels = torch.tensor([[[1, 0], [1, 255]]])  # class 1 covers 2 of the 3 labelled pixels
    loss, _ = create_aux_task("sldc").loss(logits, {"label": labels})
    assert loss.item() == pytest.approx(-math.log(0.4375), abs=1e-6)  # y_c[1] over all 4 pixels


def test_segmentation_ignores_255() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=generator)
    labels = torch.randint(0, 4, (2, 5, 6), generator=generator)
    labels[:, :2] = 255
    task = create_aux_task("segmentation")
    loss, _ = task.loss(logits, {"label": labels})
    changed = logits.clone()
    changed[:, :, :2] = torch.randn(2, 4, 2, 6, generator=generator) * 10  # only ignored pixels
    assert task.loss(changed, {"label": labels})[0].item() == pytest.approx(loss.item(), abs=1e-6)
    keep = labels != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[keep], labels[keep])
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    empty, _ = task.loss(logits.requires_grad_(), {"label": torch.full_like(labels, 255)})
    empty.backward()
    assert empty.item() == 0.0 and logits.grad is not None and not logits.grad.any()


def test_reconstruction_is_zero_for_a_perfect_output_only() -> None:
    image = torch.rand(2, 3, 8, 10, generator=torch.Generator().manual_seed(1))
    task = create_aux_task("reconstruction")
    assert task.loss(image.clone(), {"image": image})[0].item() == 0.0
    assert task.loss(image + 0.1, {"image": image})[0].item() == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ValueError, match="does not match the batch's"):
        task.loss(image[..., :4], {"image": image})


# --- depth losses ---------------------------------------------------------------------------------------


def test_sig_loss_matches_the_hand_computed_example_with_unbiased_variance() -> None:
    # g = ln(p + 1e-3) - ln(t + 1e-3) = (0, ln 2, 2 ln 2) on the valid pixels; the fourth is invalid.
    pred = torch.tensor([1.0, 2.0, 4.0, 100.0], dtype=torch.float64) - 1e-3
    target = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64) - 1e-3
    valid = torch.tensor([True, True, True, False])
    ln2 = math.log(2.0)
    # unbiased Var(g) = (ln2^2 + 0 + ln2^2) / 2 = ln2^2 (the population variance would be 2/3 ln2^2)
    assert sig_loss(pred, target, valid).item() == pytest.approx(ln2 * math.sqrt(1.15), rel=1e-9)
    assert sig_loss(pred, target, valid, warm_up=True).item() == pytest.approx(
        ln2 * math.sqrt(0.15), rel=1e-9
    )


def _depth_maps(batch: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    target = 1.0 + 9.0 * torch.rand(batch, 1, 16, 20, generator=generator, dtype=torch.float64)
    noise = 1.0 + 0.3 * torch.rand(batch, 1, 16, 20, generator=generator, dtype=torch.float64)
    return target * noise, target


def test_dinov2_gradient_quirk_is_zero_for_two_samples_and_not_for_three() -> None:
    pred, target = _depth_maps(3)
    valid = torch.ones_like(target, dtype=torch.bool)
    assert gradient_loss(pred[:2], target[:2], valid[:2], "dinov2").item() == 0.0
    assert gradient_loss(pred[:1], target[:1], valid[:1], "dinov2").item() == 0.0
    assert gradient_loss(pred, target, valid, "dinov2").item() > 0.01
    assert gradient_loss(pred, target, valid, "off").item() == 0.0


def test_intended_gradient_loss_is_scale_invariant_and_sees_shape_errors() -> None:
    pred, target = _depth_maps(2)
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[:, :, :3] = False
    scaled = 3.0 * target
    assert gradient_loss(scaled, target, valid, "intended", eps=0.0).item() < 1e-12
    assert gradient_loss(scaled, target, valid, "intended").item() < 1e-3  # eps 1e-3 inside the logs
    assert gradient_loss(pred, target, valid, "intended").item() > 0.05
    # per image: it does not vanish for a batch of one, as DINOv2's quirk does
    assert gradient_loss(pred[:1, 0], target[:1, 0], valid[:1, 0], "intended").item() > 0.05
    with pytest.raises(ValueError, match="must be one of"):
        gradient_loss(pred, target, valid, "sobel")


def test_depth_objective_masks_by_the_caps_and_warms_up_by_step() -> None:
    pred, target = _depth_maps(2, seed=3)
    target[0, 0, 0, :5] = 0.0  # invalid ground truth
    target[1, 0, 1, :5] = 50.0  # beyond max_depth
    objective = DepthObjective(min_depth=1e-3, max_depth=10.0, gradient_loss="intended", warm_up_steps=10)
    valid = (target > 1e-3) & (target < 10.0)
    loss, logs = objective.loss(pred, {"depth": target[:, 0]}, step=10)
    expected = sig_loss(pred, target, valid) + 0.5 * gradient_loss(pred, target, valid, "intended")
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)
    assert logs["depth_valid_fraction"] == pytest.approx(1.0 - 10 / (2 * 16 * 20))
    warm, _ = DepthObjective(1e-3, 10.0, gradient_loss="off", warm_up_steps=10).loss(
        pred, {"depth": target}, 9
    )
    assert warm.item() == pytest.approx(sig_loss(pred, target, valid, warm_up=True).item(), rel=1e-9)
    with pytest.raises(ValueError, match="predict at the ground truth's size"):
        objective.loss(pred[..., :8], {"depth": target}, step=0)


# --- augmentation ---------------------------------------------------------------------------------------


def _coordinate_sample(height: int = 40, width: int = 56, depth_2d: bool = True) -> dict[str, torch.Tensor]:
    """Image channels 0 / 1 = x / y (normalised); depth = 1 + x + 100 y: both say where a pixel came from."""
    y, x = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )
    image = torch.stack([x / (width - 1), y / (height - 1), torch.full_like(x, 0.5)])
    depth = 1.0 + x + 100.0 * y
    return {"image": image, "depth": depth if depth_2d else depth[None]}


def _interior(depth: torch.Tensor, height: int = 40, width: int = 56) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood is valid and whose source pixel (decoded from the depth) is off
    the source image's border: where bilinear sampling cannot reach the rotation's zero fill."""
    invalid = (depth == 0).float()[None, None]
    x, y = (depth - 1) % 100, torch.div(depth - 1, 100, rounding_mode="floor")
    inside = (x > 0) & (x < width - 1) & (y > 0) & (y < height - 1)
    return inside & (F.max_pool2d(invalid, 3, stride=1, padding=1)[0, 0] == 0)


@pytest.mark.parametrize("rotate_p, tolerance", [(0.0, 1e-4), (1.0, 0.5 + 1e-4)])
def test_augmentation_keeps_image_and_depth_aligned(
    monkeypatch: pytest.MonkeyPatch, rotate_p: float, tolerance: float
) -> None:
    # Geometry only (colour would change the coordinates the image encodes); rotation: the image is
    # sampled bilinearly at the exact point, depth at the nearest pixel, at most half a pixel apart.
    monkeypatch.setitem(DEPTH_RECIPES, "geometry", DepthRecipe(rotate_p=rotate_p, colour_p=0.0))
    flips = set()
    for seed in range(6):
        out = augment_depth_sample(_coordinate_sample(), np.random.default_rng(seed), "geometry", (32, 48))
        assert out["image"].shape == (3, 32, 48) and out["depth"].shape == (32, 48)
        keep = _interior(out["depth"])
        assert keep.float().mean() > 0.8
        x_image, y_image = out["image"][0] * 55, out["image"][1] * 39
        x_depth, y_depth = (out["depth"] - 1) % 100, torch.div(out["depth"] - 1, 100, rounding_mode="floor")
        assert (x_image - x_depth)[keep].abs().max() <= tolerance
        assert (y_image - y_depth)[keep].abs().max() <= tolerance
        flips.add(bool(x_depth[16, 0] > x_depth[16, -1]))
    assert flips == {True, False}  # both branches were exercised


def test_nyu_augmentation_flips_image_and_depth_together() -> None:
    for seed in range(8):
        sample = _coordinate_sample(depth_2d=False)
        sample["depth"] = 1.0 + sample["image"][:1] * 55  # depth = 1 + x only
        out = augment_depth_sample(sample, np.random.default_rng(seed), "nyu", (32, 48))
        assert out["depth"].shape == (1, 32, 48)
        keep = out["depth"][0] > 0
        pair = torch.stack([out["image"][0][keep], out["depth"][0][keep]])
        assert torch.corrcoef(pair)[0, 1] > 0.9  # a flip of one without the other would give about -1
        assert out["image"].min() >= 0.0 and out["image"].max() <= 1.0


@pytest.mark.parametrize("recipe", ["nyu", "kitti"])
def test_augmentation_is_a_pure_function_of_the_generator(recipe: str) -> None:
    sample = _coordinate_sample()

    def run(seed: int) -> dict[str, torch.Tensor]:
        return augment_depth_sample(sample, np.random.default_rng(seed), recipe, (32, 48))

    first, again = run(11), run(11)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert all(not torch.equal(first["image"], run(seed)["image"]) for seed in (12, 13, 14))
    assert torch.equal(sample["depth"], _coordinate_sample()["depth"])  # the input is left untouched


def test_no_augmentation_is_a_centre_crop() -> None:
    sample = _coordinate_sample()
    out = augment_depth_sample(sample, np.random.default_rng(0), "none", (32, 48))
    assert torch.equal(out["depth"], sample["depth"][4:36, 4:52])
    with pytest.raises(ValueError, match="larger than the sample's 40x56"):
        augment_depth_sample(sample, np.random.default_rng(0), "none", (48, 48))


def test_aux_resize_is_nearest_for_labels_and_flips_both() -> None:
    labels = torch.zeros(30, 40, dtype=torch.int64)
    labels[:, 20:] = 7
    labels[:3] = 255
    sample = {"image": _coordinate_sample(30, 40)["image"], "label": labels}
    flipped = {}
    for seed in range(6):
        out = resize_aux_sample(sample, (32, 48), np.random.default_rng(seed))
        assert out["image"].shape == (3, 32, 48) and out["label"].shape == (32, 48)
        assert set(out["label"].unique().tolist()) == {0, 7, 255} and out["label"].dtype == torch.int64
        # the label edge and the image's x ramp move together
        right = bool(out["label"][16, -1] == 7)
        assert right == bool(out["image"][0, 16, -1] > out["image"][0, 16, 0])
        flipped[right] = seed
    assert set(flipped) == {True, False}


# --- evaluation -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def depth_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 test images at 48x64 whose depth is 1 + 9 R / 255 (a function of the red channel)."""
    out = tmp_path_factory.mktemp("shards") / "unit_depth" / "48x64"
    rng = np.random.default_rng(0)
    with ShardWriter(
        out, dataset="unit_depth", variant="48x64", source_version="t", converter_version="0",
        label_space=None, parameters={}, samples_per_part=2,
    ) as writer:  # fmt: skip
        for i in range(3):
            image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            depth = (1.0 + 9.0 * image[..., 0] / 255.0).astype(np.float32)
            writer.add({"image": image, "depth": depth}, {"id": f"d-{i}", "split": "test", "frame": i})
    return out


def _from_red(image: torch.Tensor) -> torch.Tensor:
    return 1.0 + 9.0 * image[:, :1]


def test_evaluate_depth_scores_and_reports_its_settings(depth_shards: Path) -> None:
    shards = ShardSet(depth_shards)
    ids = shards.ids("test")
    settings = {"crop": "eigen_nyu", "min_depth": 1e-3, "max_depth": 10.0, "batch_size": 2}
    perfect = evaluate_depth(_from_red, shards, ids, flip_tta=False, **settings)
    assert perfect["depth_abs_rel"] < 1e-6 and perfect["depth_delta1"] == 1.0
    high = evaluate_depth(lambda image: 1.1 * _from_red(image), shards, ids, flip_tta=True, **settings)
    # 10 % too deep wherever 1.1 x the truth stays under the 10 m cap
    assert 0.09 < high["depth_abs_rel"] <= 0.1 + 1e-6
    assert high["depth_abs_rel_x1e4"] == pytest.approx(high["depth_abs_rel"] * 1e4)
    assert {k: v for k, v in high.items() if k.startswith("depth_eval_")} == {
        "depth_eval_crop": "eigen_nyu",
        "depth_eval_min_depth": 1e-3,
        "depth_eval_max_depth": 10.0,
        "depth_eval_flip_tta": True,
        "depth_eval_images": 3,
        "depth_eval_median_scaled": False,
        "depth_eval_resolution": "48x64",
    }
    assert high["depth_images_scored"] == 3
    with pytest.raises(ValueError, match="must be one of"):
        evaluate_depth(_from_red, shards, ids, flip_tta=False, **{**settings, "crop": "eigen"})


def test_flip_tta_of_a_flip_equivariant_predictor_changes_nothing(depth_shards: Path) -> None:
    shards = ShardSet(depth_shards)
    ids = shards.ids("test")
    settings = {"crop": "none", "min_depth": 1e-3, "max_depth": 10.0, "batch_size": 2}

    def scores(predict: Callable[[torch.Tensor], torch.Tensor], flip_tta: bool) -> dict[str, float]:
        out = evaluate_depth(predict, shards, ids, flip_tta=flip_tta, **settings)
        return {k: v for k, v in out.items() if isinstance(v, float)}  # the scores, not the settings

    def skewed(image: torch.Tensor) -> torch.Tensor:  # adds a left-to-right ramp: not equivariant
        return _from_red(image) * torch.linspace(0.8, 1.2, image.shape[-1])

    def blurred(image: torch.Tensor) -> torch.Tensor:  # a symmetric filter: equivariant, not pixelwise
        return F.avg_pool2d(_from_red(image), 3, stride=1, padding=1) * 1.05

    assert scores(blurred, True) == pytest.approx(scores(blurred, False))
    assert scores(skewed, True)["depth_abs_rel"] != pytest.approx(scores(skewed, False)["depth_abs_rel"])


def test_eigen_nyu_crop_is_rows_45_471_and_columns_41_601_at_480x640() -> None:
    top, bottom, left, right = DEPTH_CROPS["eigen_nyu"]
    assert (int(top * 480), int(bottom * 480), int(left * 640), int(right * 640)) == (45, 471, 41, 601)
