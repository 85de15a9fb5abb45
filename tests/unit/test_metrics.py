"""Segmentation and depth metrics against hand-computed values."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from geosem.metrics import ConfusionMatrix, depth_metrics, segmentation_scores


def test_confusion_matrix_ignores_255_and_skips_classes_absent_everywhere() -> None:
    # 4 classes. GT and prediction over 8 pixels; two pixels are ignore (255) and must not count.
    gt = np.array([0, 0, 1, 1, 1, 255, 255, 3])
    pred = np.array([0, 1, 1, 1, 0, 2, 3, 3])
    matrix = ConfusionMatrix(4)
    matrix.update(pred, gt)
    expected = np.zeros((4, 4), dtype=np.int64)
    for g, p in [(0, 0), (0, 1), (1, 1), (1, 1), (1, 0), (3, 3)]:
        expected[g, p] += 1
    np.testing.assert_array_equal(matrix.matrix, expected)
    scores = matrix.scores()
    # class 0: TP 1, FP 1 (pixel 4), FN 1 (pixel 1) -> 1/3; class 1: TP 2, FP 1, FN 1 -> 2/4;
    # class 2: absent from GT and (after ignoring 255) from prediction -> undefined, not scored;
    # class 3: TP 1 -> 1.
    iou = scores["per_class_iou"]
    assert iou[2] is None
    assert [iou[0], iou[1], iou[3]] == pytest.approx([1 / 3, 0.5, 1.0])
    assert scores["scored_classes"] == 3
    assert scores["miou"] == pytest.approx((1 / 3 + 0.5 + 1.0) / 3)
    assert scores["pixel_accuracy"] == pytest.approx(4 / 6)


def test_class_predicted_but_absent_from_ground_truth_scores_zero() -> None:
    matrix = np.array([[3, 1], [0, 0]])  # class 1 never in GT, predicted once
    scores = segmentation_scores(matrix)
    assert scores["per_class_iou"] == [0.75, 0.0]
    assert scores["miou"] == pytest.approx(0.375)


def test_dataset_level_not_per_image_average() -> None:
    # Image A: 1 pixel of class 0, right. Image B: 99 pixels class 0, all predicted 1, plus 1 of class 1.
    matrix = ConfusionMatrix(2)
    matrix.update(np.array([0]), np.array([0]))
    matrix.update(np.array([1] * 100), np.array([0] * 99 + [1]))
    scores = matrix.scores()
    assert scores["per_class_iou"] == pytest.approx([1 / 100, 1 / 100])
    assert scores["miou"] == pytest.approx(0.01)


def test_out_of_range_labels_are_rejected() -> None:
    with pytest.raises(ValueError, match="outside"):
        ConfusionMatrix(3).update(np.array([0]), np.array([7]))


def test_depth_metrics_hand_computed() -> None:
    gt = np.array([[[2.0, 4.0], [0.0, 100.0]]])  # 0 invalid, 100 beyond the 80 m cap
    pred = np.array([[[1.0, 4.5], [3.0, 3.0]]])
    m = depth_metrics(gt, pred, max_depth=80.0)
    g, p = np.array([2.0, 4.0]), np.array([1.0, 4.5])
    assert m["abs_rel"] == pytest.approx(np.mean(np.abs(g - p) / g))
    assert m["sq_rel"] == pytest.approx(np.mean((g - p) ** 2 / g))
    assert m["rmse"] == pytest.approx(math.sqrt((1.0 + 0.25) / 2))
    assert m["rmse_log"] == pytest.approx(math.sqrt((math.log(2) ** 2 + math.log(4.5 / 4) ** 2) / 2))
    assert m["log10"] == pytest.approx((math.log10(2) + math.log10(4.5 / 4)) / 2)
    assert m["delta1"] == pytest.approx(0.5)  # ratio 2 fails, ratio 1.125 passes
    assert m["delta2"] == pytest.approx(0.5)  # 2 > 1.5625
    assert m["delta3"] == pytest.approx(0.5)  # 2 > 1.953 still
    assert m["images_scored"] == 1


def test_depth_median_scaling_removes_a_global_scale() -> None:
    rng = np.random.default_rng(0)
    gt = rng.uniform(2, 60, (3, 5, 7))
    m = depth_metrics(gt, gt * 0.1, median_scaling=True)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-12)
    assert m["delta1"] == 1.0
    assert depth_metrics(gt, gt * 0.1)["delta1"] == 0.0


def test_legacy_metrics_follow_the_seed_code_on_a_hand_checked_example() -> None:
    from geosem.metrics.legacy import legacy_scores

    # Image 1 (2x3): road 0, sidewalk 1, pole 5 (not scored), one ignore pixel.
    gt1 = np.array([[0, 0, 1], [5, 255, 1]])
    pred1 = np.array([[0, 1, 1], [0, 0, 1]])
    # road: TP 1, #pred 3 (includes the pole and the ignore pixel), #gt 2 -> 1 / 4
    # sidewalk: TP 2, #pred 3, #gt 2 -> 2 / 3; the other 6 scored classes are absent: NaN
    # image mIoU = (0.25 + 2 / 3) / 2; pixel accuracy = 3 correct of 5 labelled pixels
    # Image 2: only a car pixel, predicted as car, and a sky pixel predicted as car.
    gt2 = np.array([[13, 10, 255], [255, 255, 255]])
    pred2 = np.array([[13, 13, 0], [0, 0, 0]])
    # car: TP 1, #pred 2, #gt 1 -> 0.5; sky: TP 0, #gt 1 -> 0; road: #pred 4, #gt 0 -> 0
    # image mIoU = (0.5 + 0 + 0) / 3; pixel accuracy = 1 of 2
    scores = legacy_scores(np.stack([pred1, pred2]), np.stack([gt1, gt2]))
    assert scores["miou"] == pytest.approx(((0.25 + 2 / 3) / 2 + 0.5 / 3) / 2)
    assert scores["pixel_accuracy"] == pytest.approx((3 / 5 + 1 / 2) / 2)
    # The dataset-level default differs on the same predictions.
    matrix = ConfusionMatrix(19)
    matrix.update(np.stack([pred1, pred2]), np.stack([gt1, gt2]))
    assert matrix.scores()["miou"] != pytest.approx(scores["miou"])


def test_the_garg_crop_scores_only_monodepth2s_kitti_region() -> None:
    from geosem.metrics.depth import DEPTH_CROPS

    gt = np.full((1, 100, 200), 10.0)
    pred = gt.copy()
    pred[:, :40] = 20.0  # wrong only above row 40, which the Garg crop (rows 40.8-99.2 %) leaves out
    pred[:, :, :7] = 20.0  # and in the left 3.5 % of the columns
    assert depth_metrics(gt, pred, crop=DEPTH_CROPS["garg"])["abs_rel"] == 0.0
    assert depth_metrics(gt, pred, crop=DEPTH_CROPS["none"])["abs_rel"] > 0.4


def test_depth_evaluation_brings_predictions_to_the_ground_truths_size_and_states_its_settings(
    tiny_shards: Path,
) -> None:
    import torch
    from geosem.shards.reader import ShardSet
    from geosem.tasks.depth_common import at_resolution, evaluate_depth

    coarse = torch.full((2, 8, 12), 5.0)
    assert at_resolution(coarse, (64, 96)).shape == (2, 64, 96)
    assert torch.allclose(at_resolution(coarse, (64, 96)), torch.tensor(5.0))
    shards = ShardSet(tiny_shards)
    run = {"evaluation": {"batch_size": 2, "max_depth": 80.0, "depth_crop": "garg"}}
    scores = evaluate_depth(
        lambda image: torch.full((len(image), 16, 24), 10.0),  # a quarter of the stored resolution
        run,
        shards,
        shards.ids("test"),
        torch.device("cpu"),
        median_scaling=False,
    )
    assert scores["depth_eval_crop"] == "garg" and scores["depth_eval_max_depth"] == 80.0
    assert scores["depth_eval_resolution"] == "64x96" and scores["depth_images_scored"] > 0


def test_a_metric_depth_mode_reports_median_scaled_scores_beside_its_own(tiny_shards: Path) -> None:
    """A prediction right up to a global factor scores badly as metric depth and perfectly after median
    scaling: both are reported, so metric modes compare with the scale-ambiguous ones."""
    import torch
    from geosem.shards.reader import ShardSet
    from geosem.tasks.depth_common import evaluate_depth

    shards = ShardSet(tiny_shards)
    ids = shards.ids("test")
    gt = {sample_id: torch.from_numpy(shards.read(sample_id, ["depth"])["depth"]) for sample_id in ids}
    batches = iter([torch.stack([gt[i] for i in ids[start : start + 2]]) for start in range(0, len(ids), 2)])
    run = {"evaluation": {"batch_size": 2, "max_depth": 80.0, "depth_crop": "none"}}
    scores = evaluate_depth(
        lambda image: next(batches) * 0.5,
        run,
        shards,
        ids,
        torch.device("cpu"),
        median_scaling=False,
    )
    assert abs(scores["depth_abs_rel"] - 0.5) < 1e-6 and scores["depth_delta1"] == 0.0  # half the depth
    assert scores["depth_median_scaled_abs_rel"] < 1e-6 and scores["depth_median_scaled_delta1"] == 1.0
