"""Study B's planning and tables: every b_* study file expands into hand-counted auxdepth runs on the
embedded config and the full-scale preset, ids are stable and readable, snapshots carry the grid point,
missing backbone weights and unconvertible depth sets become unavailable rows (never a crash), a typo in
a study-B file names the file and the key, and the aggregation computes the paper's cells."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml
from geosem.aggregate.auxdepth import aggregate_auxdepth, render_auxdepth
from geosem.studies import plan_runs
from geosem.studies.plan import StudyFileError, check_study_file
from scipy import stats
from snakemake.utils import update_config, validate

from tests.helpers import CONFIG_SCHEMA, REPO, markdown_tables, validated_config

STUDY_SCHEMA = REPO / "workflow" / "schemas" / "study.schema.yaml"
STUDIES = REPO / "config" / "studies"
MAE = "mae_vit-vit_tiny_patch16_224-synth_indoor-96x128-v1-s0"
INDOOR = "auxdepth-vitt16.mae_vit-synth_indoor-96x128-v1"
# Embedded config: (auxdepth runs, backbone pre-trainings), counted by hand from each file's grid. Depth
# datasets: synth_indoor and synth_driving (all), synth_indoor alone (no_driving, main); MIX6 = synth_ade
# + synth_sun; 4 seeds; one MAE ViT-T pre-training (b_table4: the depth ViT-T stand-in instead).
EXPECTED = {
    "b_table3": (2 * 4 * 4, 1),  # 2 depth sets x {baseline, MLDC, seg., recon.} x 4 seeds
    "b_fig3": (4 + 2 * 3 * 4, 1),  # baseline + {MLDC, seg.} x {synth_ade, synth_sun, MIX6}
    "b_fig4": (6 * 2 * 4, 1),  # 6 fractions x {baseline, MLDC}
    "b_fig1": (4 + 3 * 6 * 4, 1),  # baseline (= alpha 1) + 3 tasks x alphas 0 .. 0.9
    "b_fig5": (6 * 4 + 4 + 5 * 4, 1),  # baseline x 6 gammas + MLDC at alpha 0.9 + MLDC x 5 betas
    "b_table4": (2 * 4, 1),
    "b_table6": (4 * 4, 1),  # synth_indoor as its own auxiliary set
    "b_cpu": (4 * 4, 1),
}
# Full scale (weights present): NYUv2 and KITTI run; SUN RGB-D, Matterport3D, Taskonomy and DIODE in/out
# are unavailable. Fig. 3: NYUv2 x (baseline + {MLDC, seg.} x (6 datasets + MIX6)).
FULL_SCALE = {"b_table3": 2 * 4 * 4, "b_fig3": 4 + 2 * 7 * 4, "b_fig4": 48, "b_fig1": 76, "b_fig5": 48}
FULL_SCALE |= {"b_table4": 2 * 4, "b_table6": 4 * 4}
UNCONVERTIBLE = ["sunrgbd", "matterport3d", "taskonomy", "diode_indoor", "diode_outdoor"]


def _preset(*overlays: Path | dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    for overlay in overlays:  # merged as Snakemake merges --configfile: recursively
        update_config(config, overlay if isinstance(overlay, dict) else yaml.safe_load(overlay.read_text()))
    config["study_dir"] = str(STUDIES)
    validate(config, str(CONFIG_SCHEMA))
    return config


def _weights(tmp_path: Path) -> dict[str, Any]:
    """Stand-in weight files (the planner checks that they exist; no job reads them in a plan)."""
    for name in ("vitg14.pth", "da_vitl14.pth"):
        (tmp_path / name).write_bytes(b"weights")
    backbones = {"depth_anything": {"weights": str(tmp_path / "da_vitl14.pth")}}
    return {"auxdepth": {"backbone": {"weights": str(tmp_path / "vitg14.pth")}, "backbones": backbones}}


def test_every_study_b_file_plans_its_hand_counted_runs() -> None:
    names = sorted(p.stem for p in STUDIES.glob("b_*.yaml"))
    assert names == sorted(EXPECTED)
    for name in names:
        study = check_study_file(STUDIES, name, STUDY_SCHEMA)
        assert study["kind"] == "auxdepth"
        plan = plan_runs(validated_config(studies=[name]))
        assert (len(plan.auxdepth), len(plan.pretrain)) == EXPECTED[name], name
        assert plan.studies == {} and plan.finetune == {} and plan.unavailable[name] == []
        assert plan.auxdepth_studies[name]["runs"] == list(plan.auxdepth)
    # Together: runs two files describe identically are planned once (Table 3's MIX6 cells are Fig. 3's,
    # its baseline is Fig. 4's 100 % and Fig. 1's alpha 1, b_cpu is its synth_indoor half).
    plan = plan_runs(validated_config(studies=names))
    assert len(plan.auxdepth) == 32 + 16 + 40 + 60 + 40 + 8 + 12 + 0
    assert sorted(plan.pretrain) == [
        "depth_vit-vit_tiny_patch16_224-synth_indoor-96x128-v1-s0",
        MAE,
    ]
    assert set(plan.auxdepth_studies["b_cpu"]["runs"]) <= set(plan.auxdepth_studies["b_table3"]["runs"])


def test_ids_are_stable_readable_and_an_edit_touches_exactly_its_snapshots() -> None:
    base = plan_runs(validated_config(studies=["b_fig4", "b_fig5"]))
    assert base == plan_runs(validated_config(studies=["b_fig4", "b_fig5"]))
    assert f"{INDOOR}-baseline-s0" in base.auxdepth
    assert f"{INDOOR}-mldc-mix6-a0.9-f0.05-s3" in base.auxdepth
    assert f"{INDOOR}-baseline-g0.5-s1" in base.auxdepth and f"{INDOOR}-mldc-mix6-b0.1-s2" in base.auxdepth
    config = validated_config(studies=["b_fig4", "b_fig5"])
    config["auxdepth"]["loop"]["steps"] += 1
    edited = plan_runs(config)
    assert list(edited.auxdepth) == list(base.auxdepth) and edited.pretrain == base.pretrain
    assert all(edited.auxdepth[i] != base.auxdepth[i] for i in base.auxdepth)
    # The backbone's own training changes its pre-training only; the runs depend on it through model.pt.
    config = validated_config(studies=["b_fig4", "b_fig5"])
    config["pretrain"]["tasks"]["mae_vit"]["loop"]["steps"] += 1
    edited = plan_runs(config)
    assert edited.auxdepth == base.auxdepth and edited.pretrain[MAE] != base.pretrain[MAE]


def test_snapshots_carry_the_grid_point() -> None:
    plan = plan_runs(validated_config(studies=["b_fig1", "b_fig4", "b_fig5", "b_table6"]))
    runs = plan.auxdepth
    gamma = runs[f"{INDOOR}-baseline-g0.5-s1"]
    assert (gamma["aux"], gamma["loop"]["gamma"], gamma["seed"]) == (
        {"task": "none", "datasets": [], "alpha": 1.0, "beta": None},
        0.5,
        1,
    )
    beta = runs[f"{INDOOR}-mldc-mix6-b0.1-s2"]
    assert (beta["aux"]["alpha"], beta["aux"]["beta"], beta["loop"]["gamma"]) == (1.0, 0.1, 1.0)
    assert [(d["dataset"], d["num_classes"], d["split"]) for d in beta["aux"]["datasets"]] == [
        ("synth_ade", 150, "train"),
        ("synth_sun", 37, "train"),
    ]
    assert beta["aux"]["datasets"][0]["shards"] == "shards/synth_ade/96x128-v1"
    alpha = runs[f"{INDOOR}-segmentation-mix6-a0.2-s0".replace("segmentation", "seg")]
    assert (alpha["aux"]["task"], alpha["aux"]["alpha"], alpha["aux"]["beta"]) == ("segmentation", 0.2, None)
    assert not any("-a1-" in run_id for run_id in runs)  # alpha 1 is the baseline run itself
    fraction = runs[f"{INDOOR}-mldc-mix6-a0.9-f0.1-s0"]["depth"]
    assert fraction == {
        "dataset": "synth_indoor",
        "shards": "shards/synth_indoor/96x128-v1",
        "train_split": "train",
        "test_split": "test",
        "fraction": 0.1,
        "crop": [84, 112],
        "augment": "nyu",
        "min_depth": 0.001,
        "max_depth": 10.0,
        "eval_crop": "eigen_nyu",
        "eval_max_depth": 10.0,
        "flip_tta": True,
    }
    same = runs[f"{INDOOR}-recon-synth_indoor-a0.9-s0"]["aux"]["datasets"]
    assert same == [
        {
            "dataset": "synth_indoor",
            "shards": "shards/synth_indoor/96x128-v1",
            "split": "train",
            "num_classes": 40,
        }
    ]
    # The frozen backbone: a ViT-T the zoo pre-trains by MAE on the indoor world, loaded from its model.pt.
    backbone = runs[f"{INDOOR}-baseline-s0"]["backbone"]
    assert backbone == {
        "name": "vit_tiny_patch16_224",
        "weights": f"runs/pretrain/{MAE}/model.pt",
        "layout": "geosem",
        "kwargs": {},
    }
    assert runs[f"{INDOOR}-baseline-s0"]["decoder"] == {"channels": 64}  # the embedded width
    mae = plan.pretrain[MAE]
    assert (mae["task"]["name"], mae["task"]["patch"], mae["model"]["encoder"]) == (
        "mae",
        16,
        "vit_tiny_patch16_224",
    )
    assert mae["data"]["shards"] == "shards/synth_indoor/96x128-v1" and mae["evaluation"]["max_depth"] == 10.0
    driving = plan_runs(validated_config(studies=["b_table3"])).auxdepth
    depth = driving["auxdepth-vitt16.mae_vit-synth_driving-64x192-v3-baseline-s0"]["depth"]
    assert (depth["crop"], depth["eval_crop"], depth["eval_max_depth"], depth["augment"]) == (
        [56, 168],
        "garg",
        80.0,
        "kitti",
    )


def test_the_full_scale_preset_plans_the_papers_grid_and_reports_what_cannot_run(tmp_path: Path) -> None:
    preset = REPO / "config" / "presets" / "b_full_scale.yaml"
    plan = plan_runs(_preset(preset, _weights(tmp_path)))
    for study, count in FULL_SCALE.items():
        assert len(plan.auxdepth_studies[study]["runs"]) == count, study
    assert len(plan.auxdepth) == 240 and plan.pretrain == {}
    assert [r["depth"] for r in plan.unavailable["b_table3"]] == UNCONVERTIBLE
    assert "no depth maps" in plan.unavailable["b_table3"][0]["reason"]
    run = plan.auxdepth["auxdepth-vitg14.timm-nyuv2-480x640-v1-mldc-mix6-a0.9-s0"]
    assert run["backbone"]["weights"] == str(tmp_path / "vitg14.pth") and run["loop"]["steps"] == 38400
    assert run["decoder"] == {"channels": 256} and run["loop"]["warmup_steps"] == 12800
    assert [d["dataset"] for d in run["aux"]["datasets"]] == [
        "ade20k",
        "sunrgbd",
        "cityscapes",
        "coco_stuff",
        "pascal_voc",
        "pascal_context",
    ]
    assert [d["num_classes"] for d in run["aux"]["datasets"]] == [150, 37, 19, 171, 21, 59]
    kitti = plan.auxdepth["auxdepth-vitg14.timm-kitti-352x1216-v3-baseline-s0"]["depth"]
    assert (kitti["crop"], kitti["eval_crop"], kitti["eval_max_depth"]) == ([352, 704], "garg", 80.0)
    table4 = plan.auxdepth[plan.auxdepth_studies["b_table4"]["runs"][0]]["backbone"]
    assert (table4["name"], table4["layout"]) == ("vit_large_patch14_dinov2", "depth_anything")


def test_missing_backbone_weights_make_rows_unavailable_not_a_crash(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *args, **kwargs: None)
    plan = plan_runs(_preset(REPO / "config" / "presets" / "b_full_scale.yaml"))
    assert plan.auxdepth == {} and set(plan.auxdepth_studies) == set(FULL_SCALE)
    (row, *_) = plan.unavailable["b_table3"]
    assert row["depth"] == "nyuv2" and "hf download timm/vit_giant_patch14_dinov2" in row["reason"]
    assert (
        "auxdepth.backbones.depth_anything.weights: not configured"
        in plan.unavailable["b_table4"][0]["reason"]
    )
    cached = tmp_path / "model.safetensors"
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *args, **kwargs: str(cached))
    plan = plan_runs(_preset(REPO / "config" / "presets" / "b_full_scale.yaml"))
    assert len(plan.auxdepth_studies["b_fig1"]["runs"]) == 76  # from the local Hugging Face cache
    # A configured file that is not there names the key and the path.
    config = validated_config(studies=["b_table3"])
    config["auxdepth"]["backbone"].update(weights=str(tmp_path / "nowhere.pth"), layout="dinov2")
    plan = plan_runs(config)
    assert plan.auxdepth == {} and len(plan.unavailable["b_table3"]) == 2
    assert (
        f"auxdepth.backbone.weights: {tmp_path / 'nowhere.pth'} does not exist"
        in plan.unavailable["b_table3"][0]["reason"]
    )


def test_a_depth_set_without_labels_cannot_be_its_own_auxiliary_source(tmp_path: Path) -> None:
    study = yaml.safe_load((STUDIES / "b_table6.yaml").read_text()) | {"depth_datasets": ["synth_driving"]}
    (tmp_path / "b_t6.yaml").write_text(yaml.safe_dump(study | {"name": "b_t6"}))
    plan = plan_runs(validated_config(studies=["b_t6"], study_dir=str(tmp_path)))
    assert {run["aux"]["task"] for run in plan.auxdepth.values()} == {"none"}  # the baseline still runs
    assert [r["setting"] for r in plan.unavailable["b_t6"]] == [
        "mldc-synth_driving",
        "segmentation-synth_driving",
        "reconstruction-synth_driving",
    ]
    (tmp_path / "b_t7.yaml").write_text(yaml.safe_dump(study | {"name": "b_t7", "depth_datasets": ["nyu"]}))
    with pytest.raises(KeyError, match=r"depth dataset 'nyu' has no entry under auxdepth.depth_datasets"):
        plan_runs(validated_config(studies=["b_t7"], study_dir=str(tmp_path)))


def test_a_typo_in_a_study_b_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    study = yaml.safe_load((STUDIES / "b_fig4.yaml").read_text())
    study["alpha"] = study.pop("alphas")
    (tmp_path / "b_fig4.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(
        StudyFileError, match=r"b_fig4.yaml: 1 problem.*\n.*alpha: unknown key \(did you mean 'alphas'\?"
    ):
        check_study_file(tmp_path, "b_fig4", STUDY_SCHEMA)
    study["alphas"] = study.pop("alpha")
    study["fractions"] = [0.1, 2.0]
    (tmp_path / "b_fig4.yaml").write_text(yaml.safe_dump(study))
    with pytest.raises(StudyFileError, match=r"fractions\[1\]: 2.0 is greater than the maximum of 1"):
        check_study_file(tmp_path, "b_fig4", STUDY_SCHEMA)
    del study["layout"]  # a study-B file must say which table it is
    (tmp_path / "b_fig4.yaml").write_text(yaml.safe_dump(study | {"fractions": [0.1]}))
    with pytest.raises(StudyFileError, match="'layout' is a required property"):
        check_study_file(tmp_path, "b_fig4", STUDY_SCHEMA)


# --- the tables ---------------------------------------------------------------------------------------


def _finished(root: Path, plan: Any, study: str, abs_rel: Any) -> list[Path]:
    """Fake finished runs of ``study``: run.yaml from the plan, metrics.json with AbsRel ``abs_rel(run)``."""
    dirs = []
    for run_id in plan.auxdepth_studies[study]["runs"]:
        run = plan.auxdepth[run_id]
        run_dir = root / run_id
        run_dir.mkdir(parents=True)
        (run_dir / "run.yaml").write_text(yaml.safe_dump(run))
        value = abs_rel(run)
        metrics = {f"depth_{name}": value * (k + 1) for k, name in enumerate(["abs_rel", "sq_rel", "rmse"])}
        metrics |= {
            f"depth_{name}": 0.5 for name in ("rmse_log", "log10", "silog", "delta1", "delta2", "delta3")
        }
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        dirs.append(run_dir)
    return dirs


def _spec(plan: Any, study: str) -> dict[str, Any]:
    entry = plan.auxdepth_studies[study]
    return {k: v for k, v in entry.items() if k != "runs"} | {"unavailable": plan.unavailable[study]}


def test_the_table3_cells_gain_and_welch_test_are_the_hand_computed_ones(tmp_path: Path) -> None:
    plan = plan_runs(validated_config(studies=["b_cpu"]))
    offsets = {"none": 0.0, "mldc": -0.02, "segmentation": -0.01, "reconstruction": 0.005}
    noise = [0.0012, -0.002, 0.0005, 0.0015]  # per seed: mean 3e-4, SE 7.95e-4
    dirs = _finished(
        tmp_path / "runs", plan, "b_cpu", lambda r: 0.2 + offsets[r["aux"]["task"]] + noise[r["seed"]]
    )
    out = tmp_path / "b_cpu"
    spec = _spec(plan, "b_cpu") | {
        "unavailable": [{"depth": "taskonomy", "setting": "all", "reason": "no converter"}]
    }
    table = aggregate_auxdepth(
        "b_cpu",
        dirs,
        spec,
        table_csv=out.with_suffix(".csv"),
        table_md=out.with_suffix(".md"),
        metrics_dir=out,
    )
    base = np.array([0.2 + n for n in noise])
    mldc = base - 0.02
    row = table[table["task"] == "mldc"].iloc[0]  # read back from the csv: 6 significant digits
    assert math.isclose(row["abs_rel_x1e4_mean"], 1e4 * mldc.mean(), rel_tol=1e-5)
    assert math.isclose(row["abs_rel_x1e4_se"], 1e4 * mldc.std(ddof=1) / 2, rel_tol=1e-5)
    assert math.isclose(row["gain_pct"], 100 * 0.02 / base.mean(), rel_tol=1e-5)
    assert math.isclose(row["welch_p"], stats.ttest_ind(mldc, base, equal_var=False).pvalue, rel_tol=1e-5)
    markdown = out.with_suffix(".md").read_text()
    header = "| Depth data   | In MIX6 | Baseline | Classification | Segmentation | Reconstruction | Gain % |"
    assert header in markdown
    # Baseline 2003 +- 8, MLDC best (bold), segmentation second (italic), reconstruction; Gain 9.985 %.
    assert (
        "| synth_indoor | ✗       | 2003 ± 8 | **1803 ± 8**   | *1903 ± 8*   | 2053 ± 8       | 10.0   |"
        in markdown
    )
    assert "- taskonomy (all): no converter" in markdown
    cell = json.loads((out / "synth_indoor" / "mldc-mix6.json").read_text())
    assert cell["n"] == 4 and cell["abs_rel_x1e4"] == round(1e4 * mldc.mean(), 1) and cell["gain_pct"] == 9.99
    assert "p_welch" not in json.loads((out / "synth_indoor" / "none.json").read_text())
    # The markdown again from the csv alone: the same file.
    render_auxdepth("b_cpu", out.with_suffix(".csv"), spec, table_md=tmp_path / "again.md")
    assert (tmp_path / "again.md").read_text() == markdown


def test_the_alpha_sweep_ends_every_task_at_the_baseline(tmp_path: Path) -> None:
    plan = plan_runs(validated_config(studies=["b_fig1"]))
    dirs = _finished(
        tmp_path / "runs", plan, "b_fig1", lambda r: 0.2 - 0.01 * r["aux"]["alpha"] + 0.001 * r["seed"]
    )
    csv, plot, sweep = tmp_path / "t.csv", tmp_path / "fig1.png", tmp_path / "sweep.csv"
    aggregate_auxdepth("b_fig1", dirs, _spec(plan, "b_fig1"), table_csv=csv, table_md=tmp_path / "t.md")
    render_auxdepth("b_fig1", csv, _spec(plan, "b_fig1"), plot=plot, sweep_csv=sweep)
    assert plot.stat().st_size > 10_000
    points = pd.read_csv(sweep)
    assert sorted(points.loc[points["series"] == "Classification", "value"]) == [
        0,
        0.2,
        0.4,
        0.6,
        0.8,
        0.9,
        1.0,
    ]
    at_one = points[points["value"] == 1.0]
    assert len(at_one) == 4 and at_one["mean"].nunique() == 1  # the baseline, and each task's alpha 1
    scores = markdown_tables((tmp_path / "t.md").read_text())[0]
    assert [row[1] for row in scores[2:]] == [
        "α = 0",
        "α = 0.2",
        "α = 0.4",
        "α = 0.6",
        "α = 0.8",
        "α = 0.9",
        "α = 1",
    ]
    assert scores[-1][2:] == ["1915 ± 6", "–", "–", "–", "–"]  # alpha 1: the baseline alone (0.19 + 1.5e-3)
