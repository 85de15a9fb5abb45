"""Every study file of paper A and both presets plan into real Snakemake DAGs (dry runs): each planned
run is one job, rows without their weights are left out of the DAG (and reported unavailable), and the
full-scale preset expands to the paper's grid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from geosem.studies import plan_runs
from snakemake.utils import update_config, validate

from tests.helpers import REPO, cli_env, job_counts, make_workdir

pytestmark = pytest.mark.workflow

STUDIES = [*sorted(p.stem for p in (REPO / "config" / "studies").glob("a_*.yaml")), "cpu_study"]
# Fine-tunes and pre-trainings each study runs offline (no ImageNet or external weights), counted by hand:
# inits that can run x modes x encoders x sizes x lrs x resolution pairs x seeds.
EXPECTED = {
    "a_table1": (2 * 3 * 2 * 3, 2),  # random, Depth-Rand x all/deeplabv3/frozen x R18/R50 x 3 seeds
    "a_table1_legacy": (2 * 3 * 2 * 3, 2),  # the same grid, legacy runs; the pre-trainings are shared
    "a_fig2_curves": (2 * 2 * 3, 2),
    "a_fig3_sizes": (2 * 5 * 3, 1),
    "a_table2_supervision": (5 * 3, 4),
    "a_fig4_frozen": (2 * 2 * 2 * 3, 2),
    "a_table3_encoder_only": (3 * 3 * 3, 6),  # random, Depth-Rand, Depth sup. x 3 encoders
    "a_fig5_resolution": (2 * 3 + 4 * 3, 2),  # random at 2 fine-tuning sizes; Depth-Rand at 4 pairs
    "a_fig6_gradcam": (2, 1),
    "a_fig7_flow": (3 * 3, 2),
    # random + 7 pipeline pre-trainings from scratch (supervised segmentation on synth_ade, Depth-Rand,
    # both reconstructions, DINO, Flow-Rand, MoCo v2) x R50 x 3 seeds; the ImageNet-started Depth and
    # Optical Flow and the three published checkpoints are unavailable offline.
    "a_table4_methods": (8 * 3, 7),
    # random + 6 pre-trainings from scratch x all/frozen x 3 seeds, each seed its own pre-training.
    "cpu_study": (7 * 2 * 3, 6 * 3),
}


def _dry_run(workdir: Path, *args: str) -> dict[str, int]:
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "2", *args],
        cwd=workdir,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return job_counts(result.stdout + result.stderr)


def _config(*overlays: Path, **overrides: Any) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for overlay in overlays:
        # Merged as Snakemake merges a --configfile: recursively (a preset may set one task's key).
        update_config(config, yaml.safe_load(overlay.read_text()))
    config.update(overrides, study_dir=str(REPO / "config" / "studies"))
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    return config


def test_every_study_file_is_a_dag_of_its_planned_runs(tmp_path: Path) -> None:
    for study in STUDIES:
        plan = plan_runs(_config(studies=[study]))
        assert (len(plan.finetune), len(plan.pretrain)) == EXPECTED[study], study
    # One dry run of all of them together (each dry run of a big grid costs ~20 s): every planned run is
    # one job, runs shared between studies once, and each study's figures are jobs.
    workdir = make_workdir(tmp_path)
    counts = _dry_run(workdir, "--config", f"studies=[{','.join(STUDIES)}]")
    plan = plan_runs(_config(studies=STUDIES))
    assert counts["finetune"] == len(plan.finetune) and counts["pretrain"] == len(plan.pretrain)
    assert counts["aggregate"] == len(STUDIES)
    figures = plan.figures.values()
    assert counts["plot_sizes"] == sum("sizes" in f["plots"] for f in figures) == 1
    assert counts["plot_resolution"] == sum("resolution" in f["plots"] for f in figures) == 1
    assert counts["gradcam"] == sum(f["gradcam"] is not None for f in figures) == 1


def test_the_full_scale_preset_expands_to_the_papers_grid(tmp_path: Path) -> None:
    workdir = make_workdir(tmp_path)
    # Where the real KITTI tree goes on the cluster: the paths its converter declares it reads.
    kitti = workdir / "raw" / "kitti"
    (kitti / "data_semantics").mkdir(parents=True)
    (kitti / "devkit" / "mapping").mkdir(parents=True)
    (kitti / "devkit" / "mapping" / "train_mapping.txt").write_text("")
    preset = REPO / "config" / "presets" / "full_scale.yaml"
    counts = _dry_run(workdir, "--configfile", "config/presets/full_scale.yaml")
    plan = plan_runs(_config(preset))
    studies = yaml.safe_load(preset.read_text())["studies"]
    assert len(studies) == 11 and counts["aggregate"] == 11
    # Runs shared between studies (Table 1's fine-tune-all rows are Fig. 2's) are planned once.
    assert counts["finetune"] == len(plan.finetune) == len({r for ids in plan.studies.values() for r in ids})
    assert counts["pretrain"] == len(plan.pretrain)
    # 192x640, the resolution study's 288x960, and the legacy protocol's bicubic-label 192x640 variant.
    assert counts["shards"] == 3
    run = next(iter(plan.finetune.values()))
    assert run["loop"]["steps"] == 20000 and run["loop"]["batch_size"] == 16 and run["loop"]["lr"] == 1e-5
    # monodepth2's pre-training schedule: one drop to a tenth after 14 of 20 epochs.
    pre = next(iter(plan.pretrain.values()))["loop"]
    assert (pre["lr_schedule"], pre["lr_step_at"], pre["lr_step_factor"]) == ("step", 0.7, 0.1)
    assert run["data"]["shards"].startswith("shards/kitti/192x640-v3")
    assert {s["model"]["encoder"] for s in plan.finetune.values()} >= {"resnet18", "resnet50"}


def test_the_table4_cpu_preset_runs_every_offline_row_of_table4(tmp_path: Path) -> None:
    preset = REPO / "config" / "presets" / "table4_cpu.yaml"
    plan = plan_runs(_config(preset))
    assert list(plan.studies) == ["a_table4_methods"]
    assert (len(plan.finetune), len(plan.pretrain)) == EXPECTED["a_table4_methods"]
    assert {s["model"]["encoder"] for s in [*plan.pretrain.values(), *plan.finetune.values()]} == {"resnet50"}
    # The driving world's shards and the ADE20K-like set that supervised segmentation pre-trains on.
    assert sorted(plan.shards) == ["synth_ade/64x192-v1", "synth_driving/64x192-v3"]
    counts = _dry_run(make_workdir(tmp_path), "--configfile", "config/presets/table4_cpu.yaml")
    assert (counts["pretrain"], counts["finetune"], counts["shards"]) == (7, 24, 2)
