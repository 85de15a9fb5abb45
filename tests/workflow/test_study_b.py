"""Study B end to end: a real Snakemake run of a tiny study-B file on the tiny world.

World and shards, the frozen backbone's MAE pre-training, four auxdepth runs (baseline and MIX6 MLDC,
two seeds each) and the study's table, all through the rules and the ``geosem`` command line.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from tests.helpers import REPO, job_counts, make_workdir, snakemake

pytestmark = pytest.mark.workflow

STUDY = "b_tiny"


@pytest.fixture(scope="module")
def study_b_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    workdir = make_workdir(tmp_path_factory.mktemp("study_b"))
    shutil.copy2(REPO / "tests" / "config" / "tiny_b.yaml", workdir / "config" / "tiny_b.yaml")
    shutil.copy2(
        REPO / "tests" / "config" / "studies" / f"{STUDY}.yaml",
        workdir / "config" / "studies" / f"{STUDY}.yaml",
    )
    args = ("--configfile", "config/tiny.yaml", "config/tiny_b.yaml")
    plan = snakemake(workdir, *args, "-n")
    snakemake(workdir, *args)
    rerun = snakemake(workdir, *args, "-n")
    return workdir, plan.stdout, rerun.stdout


def _runs(workdir: Path) -> list[Path]:
    return sorted((workdir / "runs" / "auxdepth").iterdir())


def test_study_b_plans_one_backbone_and_four_runs(study_b_run: tuple[Path, str, str]) -> None:
    _, plan, rerun = study_b_run
    counts = job_counts(plan)
    assert counts["auxdepth"] == 4 and counts["pretrain"] == 1 and counts["aggregate_auxdepth"] == 1
    # A finished study has nothing left to do: the second dry run plans no job.
    assert "Nothing to be done" in rerun, rerun[-2000:]


def test_study_b_runs_share_one_frozen_backbone(study_b_run: tuple[Path, str, str]) -> None:
    workdir, _, _ = study_b_run
    runs = _runs(workdir)
    assert len(runs) == 4
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs]
    # The backbone is frozen and re-created from the same pre-training: one digest for every run.
    assert len({m["backbone_digest"] for m in metrics}) == 1
    for run, m in zip(runs, metrics, strict=True):
        snapshot = yaml.safe_load((run / "run.yaml").read_text())
        assert snapshot["backbone"]["layout"] == "geosem"
        assert snapshot["backbone"]["weights"].startswith("runs/pretrain/mae_vit-")
        assert 0 < m["depth_abs_rel"] < 10 and m["depth_abs_rel_x1e4"] == pytest.approx(
            m["depth_abs_rel"] * 1e4
        )
        assert m["depth_eval_crop"] == "eigen_nyu" and m["steps"] == 4
        state = torch.load(run / "model.pt", map_location="cpu", weights_only=False)
        keys = set(state["model"]) if "model" in state else set(state)
        assert not any(key.startswith("backbone.") for key in keys), "the frozen backbone is not saved"
    mldc = [m for run, m in zip(runs, metrics, strict=True) if "-mldc-" in run.name]
    assert len(mldc) == 2 and all(m["aux_task"] == "mldc" for m in mldc)


def test_study_b_table_has_both_rows_over_two_seeds(study_b_run: tuple[Path, str, str]) -> None:
    workdir, _, _ = study_b_run
    table = pd.read_csv(workdir / "results" / "tables" / f"{STUDY}.csv")
    assert set(table["task"]) >= {"none", "mldc"}, table
    assert (table["n_seeds"] == 2).all()
    markdown = (workdir / "results" / "tables" / f"{STUDY}.md").read_text()
    assert "Baseline" in markdown and "Classification" in markdown and "Gain" in markdown
