"""Grid expansion: stable readable ids, shared pre-training, exactly-touched snapshots, schema checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from geosem.studies import plan_runs
from geosem.studies.plan import pretrain_task_section
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tests.helpers import CONFIG_SCHEMA, REPO, validated_config


def test_default_study_expands_into_shared_pretraining_and_six_finetunes() -> None:
    plan = plan_runs(validated_config())
    assert list(plan.pretrain) == ["depth_supervised-resnet18-synth_driving-64x192-v3-s0"]
    assert sorted(plan.finetune) == sorted(
        f"seg-{init}-all-resnet18-synth_driving-64x192-v3-n16-s{seed}"
        for init in ("random", "depth_supervised")
        for seed in (0, 1, 2)
    )
    users = [s for s in plan.finetune.values() if s["init"]["name"] == "depth_supervised"]
    assert {s["init"]["checkpoint"] for s in users} == {
        "runs/pretrain/depth_supervised-resnet18-synth_driving-64x192-v3-s0/model.pt"
    }
    assert "checkpoint" not in plan.finetune["seg-random-all-resnet18-synth_driving-64x192-v3-n16-s0"]["init"]


def test_ids_and_snapshots_are_stable() -> None:
    assert plan_runs(validated_config()) == plan_runs(validated_config())


def test_a_finetune_edit_touches_exactly_the_finetune_snapshots() -> None:
    base = plan_runs(validated_config())
    config = validated_config()
    config["finetune"]["lr"] = config["finetune"]["lr"] * 2
    edited = plan_runs(config)
    assert edited.pretrain == base.pretrain
    assert list(edited.finetune) == list(base.finetune)  # same ids: an edit reruns, it does not rename
    assert all(edited.finetune[i] != base.finetune[i] for i in base.finetune)


def test_a_pretrain_loop_edit_changes_only_the_pretraining_snapshot() -> None:
    # Fine-tunes that use the pre-training rerun through their model.pt input (tests/workflow), not
    # through their own snapshot, which holds only what the fine-tune itself reads.
    base = plan_runs(validated_config())
    config = validated_config()
    config["pretrain"]["steps"] += 1
    edited = plan_runs(config)
    assert edited.finetune == base.finetune
    assert edited.pretrain != base.pretrain
    assert list(edited.pretrain) == list(base.pretrain)


def test_an_init_trains_with_its_own_loop_settings_over_the_shared_ones() -> None:
    config = validated_config()
    config["pretrain"]["tasks"]["depth_supervised"]["loop"] = {"lr": 1e-3, "lr_schedule": "cosine"}
    (run,) = plan_runs(config).pretrain.values()
    assert (run["loop"]["lr"], run["loop"]["lr_schedule"]) == (1e-3, "cosine")
    assert run["loop"]["steps"] == config["pretrain"]["steps"]  # the rest stays shared
    assert "loop" not in run["task"]  # loop settings are not task parameters
    config["pretrain"]["tasks"]["depth_supervised"]["loop"] = {"learning_rate": 1e-3}
    with pytest.raises(KeyError, match=r"pretrain.tasks.depth_supervised.loop: unknown key.*learning_rate"):
        plan_runs(config)
    with pytest.raises(WorkflowError):  # the schema refuses it as well
        validate(config, str(CONFIG_SCHEMA))


def test_two_studies_share_identical_runs_and_refuse_conflicting_ones(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "a.yaml").write_text("inits: [random]\nseeds: [0, 1]\n")
    (studies / "b.yaml").write_text("inits: [random]\nseeds: [1, 2]\n")
    plan = plan_runs(validated_config(studies=["a", "b"], study_dir=str(studies)), study_dir=studies)
    assert len(plan.finetune) == 3
    assert plan.studies["b"][0] == plan.studies["a"][1]
    (studies / "c.yaml").write_text("inits: [depth_flow]\nseeds: [0]\n")
    with pytest.raises(KeyError, match="init 'depth_flow'"):
        plan_runs(validated_config(studies=["c"]), study_dir=studies)


def test_schema_rejects_a_bad_value_and_names_the_key() -> None:
    config = validated_config()
    bad = copy.deepcopy(config)
    bad["finetune"]["steps"] = "many"
    with pytest.raises(WorkflowError, match="steps"):
        validate(bad, str(CONFIG_SCHEMA))
    typo = copy.deepcopy(config)
    typo["finetune"]["learning_rate"] = 0.1
    with pytest.raises(WorkflowError, match="learning_rate"):
        validate(typo, str(CONFIG_SCHEMA))


def test_schema_fills_every_default() -> None:
    config: dict[str, Any] = {}
    validate(config, str(CONFIG_SCHEMA))
    assert config["finetune"]["train_size"] == 16
    assert config["studies"] == ["default"]
    # Task parameters come from the task module, not the schema: the planner fills them in.
    assert pretrain_task_section(config, "depth_supervised")["max_depth"] == 100.0


def test_a_task_entry_is_checked_against_the_parameters_its_module_declares() -> None:
    config = validated_config()
    config["pretrain"]["tasks"]["mae_seed"]["patch_size"] = 3
    with pytest.raises(ValueError, match=r"pretrain.tasks.mae_seed: .*'patch_size' was unexpected"):
        plan_runs(config)
    config = validated_config()
    config["pretrain"]["tasks"]["depth_mono_rand"]["smoothness"] = -1
    with pytest.raises(ValueError, match=r"pretrain.tasks.depth_mono_rand.smoothness: -1 is less than"):
        plan_runs(config)


def _study(tmp_path: Path, **study: Any) -> dict[str, Any]:
    studies = tmp_path / "studies"
    studies.mkdir(exist_ok=True)
    (studies / "s.yaml").write_text(yaml.safe_dump(study))
    config = validated_config(studies=["s"])
    config["study_dir"] = str(studies)
    return config


def test_variant_names_carry_converter_version_and_non_default_parameters(monkeypatch: Any) -> None:
    import dataclasses

    from geosem import sources

    plan = plan_runs(validated_config())
    assert "synth_driving/64x192-v3" in plan.shards
    spec = plan.shards["synth_driving/64x192-v3"]
    assert (spec["converter"], spec["converter_version"], spec["label_interpolation"]) == (
        "kitti",
        "3",
        "nearest",
    )
    # A new converter version converts into a new folder: the old shard set (and its runs) stay.
    kitti = sources.converter_spec("kitti")
    monkeypatch.setitem(sources._CONVERTERS, "kitti", dataclasses.replace(kitti, version="4"))
    bumped = plan_runs(validated_config())
    assert "synth_driving/64x192-v4" in bumped.shards and "synth_driving/64x192-v3" not in bumped.shards
    assert all("64x192-v4" in run_id for run_id in bumped.finetune)


def test_grid_axes_sizes_lrs_and_resolution_pairs(tmp_path: Path) -> None:
    config = _study(
        tmp_path,
        inits=["random", "depth_supervised"],
        train_sizes=[16, "all"],
        lrs=[0.001, 0.0001],
        resolutions=[
            {"pretrain": [96, 320], "finetune": [64, 192]},
            {"pretrain": [64, 192], "finetune": [96, 320]},
        ],
        seeds=[0],
    )
    plan = plan_runs(config)
    assert sorted(plan.pretrain) == [
        "depth_supervised-resnet18-synth_driving-64x192-v3-s0",
        "depth_supervised-resnet18-synth_driving-96x320-v3-s0",
    ]
    run_id = "seg-depth_supervised-all-resnet18-synth_driving-64x192-v3-from96x320-nall-lr0.0001-s0"
    run = plan.finetune[run_id]
    assert run["data"]["shards"].endswith("synth_driving/64x192-v3") and run["data"]["train_size"] == 0
    assert run["init"]["checkpoint"].endswith("depth_supervised-resnet18-synth_driving-96x320-v3-s0/model.pt")
    assert run["loop"]["lr"] == 0.0001
    # random has no pre-training resolution: one run per fine-tuning resolution, size, lr and seed.
    assert len([r for r in plan.studies["s"] if r.startswith("seg-random")]) == 2 * 2 * 2
    assert len(plan.studies["s"]) == 8 + 8


def test_the_legacy_protocol_resolves_into_the_published_codes_settings(tmp_path: Path) -> None:
    paper = plan_runs(_study(tmp_path, inits=["random"], modes=["frozen"], seeds=[0]))
    legacy = plan_runs(_study(tmp_path, inits=["random"], modes=["frozen"], seeds=[0], protocol="legacy"))
    (paper_run,) = paper.finetune.values()
    (legacy_id,) = legacy.finetune
    legacy_run = legacy.finetune[legacy_id]
    assert legacy_id == "seg-random-frozen-resnet18-synth_driving-64x192-v3-bicubic-n16-legacy-s0"
    assert (paper_run["loop"]["zero_grad"], legacy_run["loop"]["zero_grad"]) == (True, False)
    assert (paper_run["task"]["hflip"], legacy_run["task"]["hflip"]) == (True, False)
    assert (paper_run["task"]["freeze"], legacy_run["task"]["freeze"]) == ("full", "batchnorm")
    assert (paper_run["task"]["metric"], legacy_run["task"]["metric"]) == ("dataset", "legacy")
    assert (paper_run["data"]["split_rule"], legacy_run["data"]["split_rule"]) == ("heldout", "legacy")
    assert legacy.shards["synth_driving/64x192-v3-bicubic"]["label_interpolation"] == "bicubic"


def test_every_study_file_plans_offline() -> None:
    """Each paper-A study file expands; rows needing ImageNet or external weights are unavailable rows."""
    names = sorted(p.stem for p in (REPO / "config" / "studies").glob("a_*.yaml"))
    assert len(names) == 11
    for name in names:
        validate(
            yaml.safe_load((REPO / "config" / "studies" / f"{name}.yaml").read_text()),
            str(REPO / "workflow" / "schemas" / "study.schema.yaml"),
        )
        plan = plan_runs(validated_config(studies=[name]))
        assert plan.studies[name], name
        for row in plan.unavailable[name]:
            assert row["init"] in (
                "imagenet",
                "depth_mono",
                "flow",
                "supervised_segmentation_coco",
                "dino_imagenet",
                "moco_v2_imagenet",
            )


def test_paired_pretrain_seeds_give_each_finetune_seed_its_own_pretraining(tmp_path: Path) -> None:
    shared = plan_runs(_study(tmp_path, inits=["random", "depth_supervised"], seeds=[0, 1, 2]))
    assert len(shared.pretrain) == 1  # the default: one pre-training serves every fine-tuning seed
    paired = plan_runs(
        _study(tmp_path, inits=["random", "depth_supervised"], seeds=[0, 1, 2], pretrain_seeds="paired")
    )
    assert sorted(paired.pretrain) == [
        f"depth_supervised-resnet18-synth_driving-64x192-v3-s{s}" for s in range(3)
    ]
    assert all(run["seed"] == int(run_id[-1]) for run_id, run in paired.pretrain.items())
    for seed in range(3):
        run = paired.finetune[
            f"seg-depth_supervised-all-resnet18-synth_driving-64x192-v3-n16-ps{seed}-s{seed}"
        ]
        assert run["init"]["run_id"] == f"depth_supervised-resnet18-synth_driving-64x192-v3-s{seed}"
        assert run["init"]["checkpoint"].endswith(f"-s{seed}/model.pt")
    # random has no pre-training: its fine-tunes are the same runs in both modes.
    assert {i for i in paired.finetune if "random" in i} == {i for i in shared.finetune if "random" in i}
