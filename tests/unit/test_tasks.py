"""Every pre-training task trains on the tiny fixture (the KITTI-layout synthetic world through the KITTI
converter: image, right, depth, depth_lidar, neighbours, intrinsics, baseline, poses), and its model
transfers to segmentation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from geosem.geometry.warp import reproject, stereo_transform
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.tasks import get_task, list_tasks
from geosem.tasks.photometric import photometric_error

from tests.helpers import (
    CONFIG_SCHEMA,
    DEPTH_TASK,
    PRETRAIN_TASKS,
    REPO,
    SEG_TASK,
    pretrain_task,
    run_snapshot,
    write_run,
)


def _run(shards: Path, init: str) -> dict[str, Any]:
    return run_snapshot(shards, "pretrain", f"{init}-test", task=pretrain_task(init), seed=0)


def test_every_task_is_registered() -> None:
    expected = {"depth_supervised", "depth_mono", "depth_stereo", "depth_mono_stereo", "depth_lidar"}
    expected |= {"depth_cropped", "flow", "mae", "moco_v2", "dino"}
    assert expected | {"segmentation", "supervised_segmentation"} <= set(list_tasks())
    # The tests' table trains every pre-training task (test_task_trains_with_decreasing_loss_and_transfers).
    assert {pretrain_task(init)["name"] for init in PRETRAIN_TASKS} == expected


def test_the_tests_task_sections_are_resolved_as_the_planner_resolves_them() -> None:
    from geosem.tasks import resolve_parameters

    assert pretrain_task("depth_supervised") == DEPTH_TASK
    assert {"name": "segmentation", **resolve_parameters("segmentation", {}, "finetune")} == SEG_TASK


def test_stereo_warp_with_true_depth_reconstructs_the_left_image(tiny_shards: Path) -> None:
    shards = ShardSet(tiny_shards)
    dataset = ShardDataset(shards, shards.ids("train")[:2], ("image", "right", "depth", "K", "baseline"))
    batch = {k: torch.stack([dataset[i][k] for i in range(2)]) for k in dataset[0]}
    depth = batch["depth"][:, None]
    valid = depth > 0
    flipped = torch.zeros(2)
    true = reproject(batch["right"], depth, stereo_transform(batch["baseline"], flipped), batch["K"])
    wrong_side = reproject(
        batch["right"], depth, stereo_transform(batch["baseline"], flipped + 1), batch["K"]
    )
    l1 = (true - batch["image"]).abs().mean(1, keepdim=True)[valid].mean()
    assert l1 < 0.05, l1
    true_error = photometric_error(true, batch["image"])[valid].mean()
    assert true_error < 0.6 * photometric_error(wrong_side, batch["image"])[valid].mean()
    assert true_error < 0.6 * photometric_error(batch["right"], batch["image"])[valid].mean()


def test_lidar_field_is_sparse_and_loss_ignores_the_gaps(tiny_shards: Path) -> None:
    task = get_task("depth_lidar")(_run(tiny_shards, "depth_lidar"))
    torch.manual_seed(0)
    model = task.build_model()
    image = torch.rand(1, 3, 64, 96)
    lidar = torch.zeros(1, 64, 96)
    lidar[0, ::4, ::2] = 10.0
    model.eval()  # fixed BatchNorm statistics: the two computations below see the same network
    loss, logs = task.loss(model, {"image": image, "depth_lidar": lidar})
    assert logs["valid_share"] == pytest.approx(1 / 8)
    # By hand: L1 of log depth over the returns only, averaged over the four scales.
    with torch.no_grad():
        depths = task.predict_depth(model, image)
    returns = lidar > 0
    expected = torch.stack([(d[returns].log() - np.log(10.0)).abs().mean() for d in depths.values()]).mean()
    assert torch.isclose(loss, expected, atol=1e-5)
    # The loss of the dense map differs: the gaps would count.
    dense = torch.full_like(lidar, 10.0)
    assert not torch.isclose(task.loss(model, {"image": image, "depth_lidar": dense})[0], loss)


@pytest.mark.parametrize("init", list(PRETRAIN_TASKS))
def test_task_trains_with_decreasing_loss_and_transfers(
    tiny_shards: Path, tiny_tall_shards: Path, init: str
) -> None:
    # depth_cropped's 64x64 crops must move in both axes: larger images than the 64x96 set.
    tiny_shards = tiny_tall_shards if init == "depth_cropped" else tiny_shards
    run = _run(tiny_shards, init)
    task = get_task(run["task"]["name"])(run)
    torch.manual_seed(0)
    model = task.build_model()
    shards = ShardSet(tiny_shards)
    dataset = ShardDataset(shards, shards.ids("train"), task.fields, transform=task.transform, seed=0)
    # One fixed batch of two samples (same augmentation draws every step): the loss must fall on it.
    items = [dataset[(i, i)] for i in range(2)]
    batch = {k: torch.stack([item[k] for item in items]) for k in items[0]}
    # 3e-4: with the heads started at a scene depth (initial_depth) the photometric losses start near
    # their minimum on this tiny batch, and 1e-3 overshoots it in stereo's first steps.
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-4)
    losses = []
    for _ in range(6):
        model.train()
        optimiser.zero_grad()
        loss, _ = task.loss(model, batch)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-2:]) < losses[0], losses
    # The labelled test frames have no sequence neighbours, so flow is scored on frame pairs of train.
    eval_ids = shards.ids("train" if run["task"]["name"] == "flow" else "test")
    metrics = task.evaluate(model, shards, eval_ids)
    assert all(np.isfinite(v) for v in metrics.values() if isinstance(v, float))
    if run["task"]["name"].startswith("depth"):
        assert metrics["depth_images_scored"] > 0 and 0 < metrics["depth_abs_rel"] < 10
        assert metrics["depth_median_scaled"] == (run["task"]["name"] == "depth_mono")
    # The transferable part is a DenseModel; its state round-trips and it predicts at full resolution.
    dense = task.transfer_model(model)
    assert set(dense.state_dict()) <= {k.split(".", 1)[-1] for k in model.state_dict()} | set(
        model.state_dict()
    )
    assert dense(batch["image"])[0].shape[-2:] == batch["image"].shape[-2:]


def _zoo_config(study_dir: Path, inits: list[str], **pretrain: Any) -> dict[str, Any]:
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["pretrain"].update(pretrain)
    (study_dir / "zoo.yaml").write_text(yaml.safe_dump({"inits": inits, "seeds": [0]}))
    config.update(studies=["zoo"], study_dir=str(study_dir))
    validate(config, str(CONFIG_SCHEMA))
    return config


def test_the_zoo_study_plans_every_task_offline(tmp_path: Path) -> None:
    from geosem.studies import plan_runs

    config = _zoo_config(tmp_path, [])  # a validated config; then the real study file
    config.update(studies=["pretrain_zoo"], study_dir=str(REPO / "config" / "studies"))
    plan = plan_runs(config)
    tasks = {snapshot["task"]["name"] for snapshot in plan.pretrain.values()}
    assert tasks == {"depth_supervised", "depth_lidar", "depth_cropped", "depth_mono", "depth_stereo"} | {
        "depth_mono_stereo",
        "flow",
        "mae",
    }
    rand = plan.pretrain["depth_mono_rand-resnet18-synth_driving-64x192-v3-s0"]["task"]
    assert rand["name"] == "depth_mono" and rand["encoder_init"] == "random" and "weights_file" not in rand
    assert all(snapshot["task"]["name"] in list_tasks() for snapshot in plan.pretrain.values())


def test_missing_imagenet_weights_make_rows_unavailable_naming_what_to_fetch(tmp_path: Path) -> None:
    from geosem.studies import plan_runs

    fetch = r"resnet18.*(hf download timm/resnet18|imagenet_weights)"
    # Alone, an init without its weights leaves the study nothing to run: the plan stops and says why.
    for inits in (["imagenet"], ["depth_mono"]):
        config = _zoo_config(tmp_path, inits, imagenet_weights={})
        with pytest.raises(ValueError, match=fetch):
            plan_runs(config)
    # Beside runnable rows, it becomes an unavailable row of the table (reported, not dropped).
    config = _zoo_config(tmp_path, ["random", "imagenet", "depth_mono"], imagenet_weights={})
    plan = plan_runs(config)
    assert {s["init"]["name"] for s in plan.finetune.values()} == {"random"}
    assert [row["init"] for row in plan.unavailable["zoo"]] == ["imagenet", "depth_mono"]
    assert all(re.search(fetch, row["reason"]) for row in plan.unavailable["zoo"])
    assert not plan.pretrain


def test_configured_imagenet_weights_are_loaded(tmp_path: Path) -> None:
    import timm
    from geosem.studies import plan_runs

    # A stand-in for the downloaded file: a resnet18 state dict with known values.
    torch.manual_seed(7)
    reference = timm.create_model("resnet18")
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    config = _zoo_config(tmp_path, ["imagenet", "depth_mono"], imagenet_weights={"resnet18": str(weights)})
    plan = plan_runs(config)
    pre = plan.pretrain["depth_mono-resnet18-synth_driving-64x192-v3-s0"]
    assert pre["task"]["weights_file"] == str(weights)
    finetune = next(s for s in plan.finetune.values() if s["init"]["name"] == "imagenet")
    assert finetune["init"]["weights_file"] == str(weights)
    model = get_task("segmentation")(finetune).build_model()
    assert torch.equal(model.encoder.body.conv1.weight, reference.conv1.weight)
    depth_model = get_task("depth_mono")(pre).build_model()
    assert torch.equal(
        depth_model.depth.encoder.body.layer1[0].conv1.weight, reference.layer1[0].conv1.weight
    )
    # The pose network's 6-channel conv1 is the ImageNet one repeated and scaled by 3/6.
    pose_conv1 = depth_model.pose.body.conv1.weight
    assert torch.allclose(pose_conv1, torch.cat([reference.conv1.weight] * 2, dim=1) * 0.5, atol=1e-6)


def test_pretrain_table_lists_depth_metrics_of_each_pretraining(tiny_shards: Path, tmp_path: Path) -> None:
    import json

    import pandas as pd
    from geosem.aggregate.pretrain import write_pretrain_table
    from geosem.metrics.depth import DEPTH_METRIC_NAMES

    runs = []
    for number, (init, scaled) in enumerate(
        [("depth_mono_rand", True), ("depth_stereo_rand", False), ("mae_seed", None)]
    ):
        run_id = f"{init}-resnet18-synth_driving-64x96-s0"
        run_dir = write_run(
            tmp_path, run_snapshot(tiny_shards, "pretrain", run_id, task=pretrain_task(init))
        ).parent
        metrics: dict[str, Any] = {"steps": 3}
        if scaled is not None:
            metrics.update({f"depth_{name}": 0.1 * (number + 1) for name in DEPTH_METRIC_NAMES})
            metrics.update(depth_median_scaled=scaled, depth_images_scored=4, depth_eval_crop="garg")
        else:
            metrics["test_masked_l1"] = 0.25
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        runs.append(run_dir)
    table = write_pretrain_table("zoo", runs, tmp_path / "t.csv", tmp_path / "t.md")
    csv = pd.read_csv(tmp_path / "t.csv")
    assert list(csv["init"]) == ["depth_mono_rand", "depth_stereo_rand", "mae_seed"]  # by task, then init
    assert csv.loc[csv["init"] == "depth_stereo_rand", "abs_rel"].item() == pytest.approx(0.2)
    assert bool(csv.loc[csv["init"] == "depth_mono_rand", "median_scaled"].item()) is True
    md = (tmp_path / "t.md").read_text()
    assert "| depth_mono_rand | depth_mono | random | yes | garg | 0.100 |" in md and "masked_l1 0.250" in md
    assert len(table) == 3


@pytest.mark.parametrize("init", ["depth_supervised", "depth_mono_rand", "depth_stereo_rand"])
@pytest.mark.parametrize("initial_depth", [10.0, 3.0, None])
def test_depth_heads_start_at_the_initial_depth(
    tiny_shards: Path, init: str, initial_depth: float | None
) -> None:
    """An untrained depth network predicts task.initial_depth everywhere up to the spread of its random
    head weights; null keeps monodepth2's start (sigmoid 0.5: 1 / (0.01 + 9.99 / 2) m, about 0.2 m)."""
    run = _run(tiny_shards, init)
    run["task"]["initial_depth"] = initial_depth
    task = get_task(run["task"]["name"])(run)
    torch.manual_seed(0)
    model = task.build_model().eval()
    image = ShardDataset(ShardSet(tiny_shards), ShardSet(tiny_shards).ids("train")[:2], ("image",))[0][
        "image"
    ]
    with torch.no_grad():
        depth = task.predict_depth(model, image[None])
    depth = depth[0] if isinstance(depth, dict) else depth
    expected = initial_depth if initial_depth is not None else 1.0 / (0.01 + 9.99 / 2)
    assert float(depth.median()) == pytest.approx(expected, rel=0.5)


def test_an_initial_depth_outside_the_depth_range_is_refused(tiny_shards: Path) -> None:
    run = _run(tiny_shards, "depth_supervised")
    run["task"]["initial_depth"] = 150.0
    with pytest.raises(ValueError, match=r"initial_depth 150.0 must lie inside \(0.1, 100.0\)"):
        get_task("depth_supervised")(run).build_model()


class _VisibleMeanColour(torch.nn.Module):
    """Outputs, at every scale, the logit of each image's mean colour over its unmasked (non-zero) pixels:
    the mean predictor written as a network, so its masked L1 must equal MAE's mean-predictor score."""

    def forward(self, masked: torch.Tensor) -> dict[int, torch.Tensor]:
        visible = (masked.sum(1, keepdim=True) > 0).float()
        colour = (masked * visible).sum((2, 3), keepdim=True) / visible.sum((2, 3), keepdim=True)
        return {0: torch.logit(colour.clamp(1e-6, 1 - 1e-6)).expand_as(masked).contiguous()}


def test_mae_reports_a_mean_predictor_beside_its_masked_l1(tiny_shards: Path) -> None:
    run = _run(tiny_shards, "mae_patch")
    task = get_task("mae")(run)
    shards = ShardSet(tiny_shards)
    metrics = task.evaluate(_VisibleMeanColour(), shards, shards.ids("test"))
    assert metrics["test_masked_l1_mean"] > 0.01
    assert metrics["test_masked_l1"] == pytest.approx(metrics["test_masked_l1_mean"], rel=1e-4)
    # An untrained network does worse than the mean colour (sigmoid 0.5 grey): the baseline is not trivial.
    torch.manual_seed(0)
    untrained = task.evaluate(task.build_model(), shards, shards.ids("test"))
    assert untrained["test_masked_l1"] > untrained["test_masked_l1_mean"]
