"""Every study file of papers A and B and their presets plan into real Snakemake DAGs (dry runs): each
planned run is one job, rows without their weights are left out of the DAG (and reported unavailable),
and the full-scale presets expand to the papers' grids."""

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


STUDIES_B = sorted(p.stem for p in (REPO / "config" / "studies").glob("b_*.yaml"))
# Study B on the embedded config, by hand (tests/unit/test_plan_auxdepth.py spells out each grid): auxdepth
# runs and backbone pre-trainings (MAE on a ViT-T; b_table4 the depth ViT-T standing in for Depth Anything).
EXPECTED_B = {
    "b_table3": (32, 1),
    "b_fig3": (28, 1),
    "b_fig4": (48, 1),
    "b_fig1": (76, 1),
    "b_fig5": (48, 1),
    "b_table4": (8, 1),
    "b_table6": (16, 1),
    "b_cpu": (16, 1),
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


def test_every_study_b_file_is_a_dag_of_its_planned_runs(tmp_path: Path) -> None:
    assert sorted(EXPECTED_B) == STUDIES_B
    for study in STUDIES_B:
        plan = plan_runs(_config(studies=[study]))
        assert (len(plan.auxdepth), len(plan.pretrain)) == EXPECTED_B[study], study
    # All together: runs shared between files (Table 3's cells are Fig. 3's, Fig. 4's 100 %, Fig. 1's
    # alpha 0.9 and 1, ...) are one job each; each file is one table, each sweep one plot.
    counts = _dry_run(make_workdir(tmp_path), "--config", f"studies=[{','.join(STUDIES_B)}]")
    plan = plan_runs(_config(studies=STUDIES_B))
    assert counts["auxdepth"] == len(plan.auxdepth) == 208
    assert counts["pretrain"] == len(plan.pretrain) == 2
    assert counts["run_snapshot"] == 208 + 2
    assert counts["aggregate_auxdepth"] == len(STUDIES_B) and counts["plot_auxdepth"] == 4  # Figs. 1, 3, 4, 5
    assert "aggregate" not in counts and "finetune" not in counts  # no study-A job


def test_the_study_b_presets_expand_to_their_grids(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    counts = _dry_run(make_workdir(tmp_path / "cpu"), "--configfile", "config/presets/b_cpu.yaml")
    # The indoor world and the two auxiliary worlds, no driving world; one MAE ViT-T, 4 x 4 runs.
    assert (counts["auxdepth"], counts["pretrain"], counts["shards"], counts["aggregate_auxdepth"]) == (
        16,
        1,
        3,
        1,
    )
    assert "driving_drive" not in counts
    # Full scale, with stand-in weight files where the cluster has the real ones (the planner checks only
    # that they exist): NYUv2 and KITTI x every study file; the datasets' downloads are jobs too.
    (tmp_path / "full").mkdir()
    workdir = make_workdir(tmp_path / "full")
    for name in ("vitg14.pth", "da_vitl14.pth"):
        (workdir / name).write_bytes(b"weights")
    weights = {
        "backbone": {"weights": "vitg14.pth"},
        "backbones": {"depth_anything": {"weights": "da_vitl14.pth"}},
    }
    (workdir / "config" / "weights.yaml").write_text(yaml.safe_dump({"auxdepth": weights}))
    counts = _dry_run(workdir, "--configfile", "config/presets/b_full_scale.yaml", "config/weights.yaml")
    assert (counts["auxdepth"], counts["aggregate_auxdepth"], counts["plot_auxdepth"]) == (240, 7, 4)
    # NYUv2, KITTI and the six MIX6 datasets (SUN RGB-D among them), each one shard set.
    assert counts["shards"] == 8 and "pretrain" not in counts
