"""Supervised segmentation as a pre-training on another labelled dataset (paper A, Table 4): planned on
that dataset's shard set and label space, reported unavailable where its data cannot be had, trained on
a tiny ADE20K-like set and transferred to the driving world's 19 classes; and Table 4's study file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import yaml
from geosem.studies import inits, plan_runs
from geosem.studies.inits import dataset_keys, pretrain_task_section
from geosem.tasks import get_task
from geosem.train.jobs import run_job

from tests.helpers import SEG_TASK, pretrained_init, run_snapshot, validated_config, write_run

PRE_ID = "supervised_segmentation-resnet18-synth_ade-64x192-v1-s0"


def _config(tmp_path: Path, inits: list[str], **study: Any) -> dict[str, Any]:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    (studies / "s.yaml").write_text(yaml.safe_dump({"inits": inits, "seeds": [0, 1], **study}))
    return validated_config(studies=["s"], study_dir=str(studies))


def test_it_is_planned_on_the_other_datasets_shards_and_label_space(tmp_path: Path) -> None:
    plan = plan_runs(_config(tmp_path, ["random", "supervised_segmentation"]))
    assert list(plan.pretrain) == [PRE_ID]  # the run id names the dataset it trains on
    pre = plan.pretrain[PRE_ID]
    assert pre["data"]["dataset"] == "synth_ade" and pre["data"]["shards"] == "shards/synth_ade/64x192-v1"
    assert (pre["data"]["label_space"], pre["data"]["num_classes"]) == ("ade150", 150)
    assert plan.shards["synth_ade/64x192-v1"]["converter"] == "ade20k"  # at the pre-training resolution
    # The class count travels in the task section: a fine-tune rebuilds this model from it.
    assert (pre["task"]["num_classes"], pre["task"]["label_space"]) == (150, "ade150")
    fine = plan.finetune["seg-supervised_segmentation-all-resnet18-synth_driving-64x192-v3-n16-s0"]
    assert (fine["data"]["dataset"], fine["data"]["num_classes"]) == ("synth_driving", 19)
    assert fine["init"]["run"]["task"] == pre["task"]
    assert fine["init"]["checkpoint"] == f"runs/pretrain/{PRE_ID}/model.pt"
    # Another resolution's pre-training is still named by its resolution (not by the other variant name).
    plan = plan_runs(
        _config(
            tmp_path,
            ["supervised_segmentation"],
            resolutions=[{"pretrain": [96, 320], "finetune": [64, 192]}],
        )
    )
    assert list(plan.pretrain) == ["supervised_segmentation-resnet18-synth_ade-96x320-v1-s0"]
    assert all("-from96x320-" in run_id for run_id in plan.finetune)


def test_missing_or_stand_in_pretraining_data_makes_the_row_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The paper's data (MS-COCO, here COCO-Stuff) has a converter: the pre-training is planned on it.
    config = _config(tmp_path, ["random", "supervised_segmentation"])
    config["pretrain"]["tasks"]["supervised_segmentation"] = {"dataset": "coco_stuff"}
    plan = plan_runs(config)
    assert list(plan.pretrain) == ["supervised_segmentation-resnet18-coco_stuff-64x192-v1-s0"]
    assert not plan.unavailable.get("s")
    # A dataset GeoSem cannot convert yet: unavailable, naming what is missing, and nothing planned.
    monkeypatch.setattr(inits, "MISSING_DATASETS", {"mscoco": "the MS-COCO converter (issue 12)"})
    config["pretrain"]["tasks"]["supervised_segmentation"] = {"dataset": "mscoco"}
    plan = plan_runs(config)
    (row,) = plan.unavailable["s"]
    assert row["init"] == "supervised_segmentation"
    assert "mscoco" in row["reason"] and "MS-COCO converter" in row["reason"]
    assert not plan.pretrain and not any(key.startswith("mscoco") for key in plan.shards)
    # Studies on a real dataset never pre-train on an embedded world in its place (full scale: KITTI).
    config = _config(tmp_path, ["random", "supervised_segmentation"])
    config["data"] = {**config["data"], "dataset": "kitti", "extra": []}
    plan = plan_runs(config)
    (row,) = plan.unavailable["s"]
    assert "stand-in" in row["reason"] and "`dataset: coco_stuff`" in row["reason"]
    assert list(plan.shards) == ["kitti/64x192-v3"]


def test_an_unknown_dataset_stops_the_plan_even_in_an_unused_entry(tmp_path: Path) -> None:
    config = _config(tmp_path, ["random"])
    config["pretrain"]["tasks"]["supervised_segmentation"] = {"dataset": "synth_aed"}
    with pytest.raises(KeyError, match=r"pretrain.tasks.supervised_segmentation.dataset: .*'synth_aed'"):
        plan_runs(config)


def test_an_init_that_is_both_a_task_and_an_external_checkpoint_is_refused(tmp_path: Path) -> None:
    config = _config(tmp_path, ["random"])
    config["pretrain"]["external"]["supervised_segmentation"] = {"description": "someone's checkpoint"}
    with pytest.raises(ValueError, match=r"\['supervised_segmentation'\] are both a pre-training task"):
        plan_runs(config)
    # The defaults name the published checkpoints apart from the pipeline's own tasks.
    assert not set(validated_config()["pretrain"]["external"]) & set(validated_config()["pretrain"]["tasks"])


EXTERNAL = {"supervised_segmentation_coco", "moco_v2_imagenet", "dino_imagenet"}


def test_table4_runs_every_pipeline_row_offline(tmp_path: Path) -> None:
    study = yaml.safe_load((Path(validated_config()["study_dir"]) / "a_table4_methods.yaml").read_text())
    assert set(study["labels"]) == set(study["inits"]) and study["encoders"] == ["resnet50"]
    assert len(study["seeds"]) >= 3 and study["modes"] == ["all"]
    plan = plan_runs(validated_config(studies=["a_table4_methods"]))
    # Offline: the published checkpoints, and the paper's Depth and Optical Flow (started from ImageNet).
    assert {row["init"] for row in plan.unavailable["a_table4_methods"]} == EXTERNAL | {"depth_mono", "flow"}
    assert len(plan.pretrain) == 7 and len(plan.finetune) == 8 * 3
    assert f"{PRE_ID.replace('resnet18', 'resnet50')}" in plan.pretrain
    # With ImageNet weights on disk (a stand-in file: planning only checks that it exists), only the
    # published checkpoints stay unavailable.
    weights = tmp_path / "resnet50.safetensors"
    weights.write_bytes(b"")
    config = validated_config(studies=["a_table4_methods"])
    config["pretrain"]["imagenet_weights"] = {"resnet50": str(weights)}
    plan = plan_runs(config)
    assert {row["init"] for row in plan.unavailable["a_table4_methods"]} == EXTERNAL
    assert len(plan.pretrain) == 9 and len(plan.finetune) == 10 * 3


def _pretrain_snapshot(shards: Path, steps: int) -> dict[str, Any]:
    task = pretrain_task_section(
        {"pretrain": {"tasks": {"supervised_segmentation": {}}}}, "supervised_segmentation"
    )
    snapshot = run_snapshot(shards, "pretrain", "supseg", steps, task=task, seed=0)
    # As the planner does: the class count of the data the pre-training reads joins its task section.
    snapshot["task"].update(
        dataset_keys(task, snapshot["data"]["label_space"], snapshot["data"]["num_classes"])
    )
    return snapshot


def test_it_trains_on_its_dataset_and_transfers_to_the_target_classes(
    tiny_ade_shards: Path, tiny_shards: Path, tmp_path: Path
) -> None:
    pretrain = _pretrain_snapshot(tiny_ade_shards, 12)
    assert pretrain["data"]["num_classes"] == 150
    pre = write_run(tmp_path, pretrain)
    metrics = run_job(pre, threads=2)
    assert metrics is not None and 0.0 <= metrics["test_miou"] <= 1.0 and metrics["test_samples"] == 3
    assert metrics["test_scored_classes"] > 0 and "test_miou_legacy" not in metrics
    assert json.loads((pre.parent / "metrics.json").read_text())["test_miou"] == metrics["test_miou"]
    losses = pd.read_csv(pre.parent / "curves.csv")["train_loss"]
    assert losses.iloc[-3:].mean() < losses.iloc[:2].mean()

    # The fine-tune rebuilds the 150-class model from its init section, loads it strictly and swaps the
    # classifier for one over the driving world's 19 classes; encoder and decoder come over unchanged.
    init = pretrained_init(pretrain, pre.parent / "model.pt")
    finetune = run_snapshot(tiny_shards, "finetune", "seg", 2, task=SEG_TASK, init=init)
    assert finetune["data"]["num_classes"] == 19
    model = get_task("segmentation")(finetune).build_model()
    trained = torch.load(pre.parent / "model.pt", weights_only=True)["model"]
    state = model.state_dict()
    kept = [key for key in trained if key.startswith(("encoder.", "decoder."))]
    assert kept and all(torch.equal(state[key], trained[key]) for key in kept)
    assert trained["heads.0.weight"].shape[0] == 150 and state["heads.0.weight"].shape[0] == 19
    result = run_job(write_run(tmp_path, finetune), threads=2)
    assert result is not None and 0.0 <= result["test_miou"] <= 1.0


def test_the_pretraining_refuses_data_of_another_dataset(tiny_shards: Path) -> None:
    snapshot = _pretrain_snapshot(tiny_shards, 2)  # the task's ADE classes, the driving world's shards
    snapshot["task"].update(num_classes=150, label_space="ade150")
    with pytest.raises(ValueError, match=r"trains on 'synth_ade' .* the run's data is 'synth_driving'"):
        get_task("supervised_segmentation")(snapshot).build_model()
