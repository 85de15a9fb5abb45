"""Grid expansion: stable readable ids, shared pre-training, exactly-touched snapshots, schema checks."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from geosem.studies import plan_runs
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from tests.conftest import REPO

SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def _config(**overrides: Any) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config.update(overrides)
    config["study_dir"] = str(REPO / "config" / "studies")
    validate(config, str(SCHEMA))
    return config


def test_default_study_expands_into_shared_pretraining_and_six_finetunes() -> None:
    plan = plan_runs(_config())
    assert list(plan.pretrain) == ["depth_supervised-resnet18-synth_driving-64x192-s0"]
    assert sorted(plan.finetune) == sorted(
        f"seg-{init}-all-resnet18-synth_driving-64x192-n16-s{seed}"
        for init in ("random", "depth_supervised")
        for seed in (0, 1, 2)
    )
    users = [s for s in plan.finetune.values() if s["init"]["name"] == "depth_supervised"]
    assert {s["init"]["checkpoint"] for s in users} == {
        "runs/pretrain/depth_supervised-resnet18-synth_driving-64x192-s0/model.pt"
    }
    assert "checkpoint" not in plan.finetune["seg-random-all-resnet18-synth_driving-64x192-n16-s0"]["init"]


def test_ids_and_snapshots_are_stable() -> None:
    assert plan_runs(_config()) == plan_runs(_config())


def test_a_finetune_edit_touches_exactly_the_finetune_snapshots() -> None:
    base = plan_runs(_config())
    config = _config()
    config["finetune"]["lr"] = config["finetune"]["lr"] * 2
    edited = plan_runs(config)
    assert edited.pretrain == base.pretrain
    assert list(edited.finetune) == list(base.finetune)  # same ids: an edit reruns, it does not rename
    assert all(edited.finetune[i] != base.finetune[i] for i in base.finetune)


def test_a_pretrain_loop_edit_changes_only_the_pretraining_snapshot() -> None:
    # Fine-tunes that use the pre-training rerun through their model.pt input (tests/workflow), not
    # through their own snapshot, which holds only what the fine-tune itself reads.
    base = plan_runs(_config())
    config = _config()
    config["pretrain"]["steps"] += 1
    edited = plan_runs(config)
    assert edited.finetune == base.finetune
    assert edited.pretrain != base.pretrain
    assert list(edited.pretrain) == list(base.pretrain)


def test_two_studies_share_identical_runs_and_refuse_conflicting_ones(tmp_path: Path) -> None:
    studies = tmp_path / "studies"
    studies.mkdir()
    (studies / "a.yaml").write_text("inits: [random]\nseeds: [0, 1]\n")
    (studies / "b.yaml").write_text("inits: [random]\nseeds: [1, 2]\n")
    plan = plan_runs(_config(studies=["a", "b"], study_dir=str(studies)), study_dir=studies)
    assert len(plan.finetune) == 3
    assert plan.studies["b"][0] == plan.studies["a"][1]
    (studies / "c.yaml").write_text("inits: [depth_flow]\nseeds: [0]\n")
    with pytest.raises(KeyError, match="init 'depth_flow'"):
        plan_runs(_config(studies=["c"]), study_dir=studies)


def test_schema_rejects_a_bad_value_and_names_the_key() -> None:
    config = _config()
    bad = copy.deepcopy(config)
    bad["finetune"]["steps"] = "many"
    with pytest.raises(WorkflowError, match="steps"):
        validate(bad, str(SCHEMA))
    typo = copy.deepcopy(config)
    typo["finetune"]["learning_rate"] = 0.1
    with pytest.raises(WorkflowError, match="learning_rate"):
        validate(typo, str(SCHEMA))


def test_schema_fills_every_default() -> None:
    config: dict[str, Any] = {}
    validate(config, str(SCHEMA))
    assert config["finetune"]["train_size"] == 16
    assert config["pretrain"]["tasks"]["depth_supervised"]["max_depth"] == 100.0
    assert config["studies"] == ["default"]
