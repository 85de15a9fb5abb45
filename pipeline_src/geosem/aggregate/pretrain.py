"""The pre-training table of a study: the depth quality of every pre-training it uses, on ground truth.

One row per pre-training run (init name, task, encoder start), with the depth metrics of
``geosem.metrics.depth`` on the test split (per-image averages, the evaluation's depth cap; median
scaling for the scale-ambiguous depth_mono, stated in its own column), and the task's own score for the
non-depth tasks (flow end-point error, masked-reconstruction L1, MoCo v2's view retrieval top-1 beside
that of its untrained network). Run as
``geosem aggregate-pretrain --study S --runs DIR... --csv OUT --md OUT``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from geosem.atomic import atomic_write_text
from geosem.metrics.depth import DEPTH_METRIC_NAMES
from geosem.snapshot import read_snapshot

DEPTH_COLUMNS = DEPTH_METRIC_NAMES
OTHER_SCORES = (
    "test_flow_epe",
    "test_flow_epe_zero",
    "test_masked_l1",
    "test_moco_top1",
    "untrained_moco_top1",
    "test_dino_loss",
    "test_dino_retrieval",
    "test_dino_retrieval_untrained",
    "test_miou",
)


def collect_pretrain_runs(run_dirs: list[Path]) -> pd.DataFrame:
    rows: list[dict[str, Any]] = []
    for run_dir in map(Path, run_dirs):
        snapshot = read_snapshot(run_dir / "run.yaml")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        task = snapshot["task"]
        if "init" not in task:  # the planner names the init it pre-trains; a run id is no name to parse
            raise ValueError(f"{run_dir / 'run.yaml'}: the pre-training's task does not name its init")
        row: dict[str, Any] = {
            "init": task["init"],
            "task": task["name"],
            "encoder_init": task.get("encoder_init", "random"),
            "encoder": snapshot["model"]["encoder"],
            "steps": metrics.get("steps"),
            "median_scaled": metrics.get("depth_median_scaled"),
            "crop": metrics.get("depth_eval_crop"),
            "images_scored": metrics.get("depth_images_scored"),
        }
        row.update({name: metrics.get(f"depth_{name}") for name in DEPTH_COLUMNS})
        row.update({name: metrics.get(name) for name in OTHER_SCORES})
        row["run_id"] = snapshot["run_id"]
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["task", "init"], kind="stable").reset_index(drop=True) if rows else table


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pretrain_markdown(table: pd.DataFrame, study: str) -> str:
    header = ["init", "task", "encoder start", "median scaled", "crop", *DEPTH_COLUMNS, "other score"]
    lines = [
        f"### {study}: pre-training depth quality on the test split",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for _, row in table.iterrows():
        other = "; ".join(
            f"{name.removeprefix('test_')} {_fmt(row[name])}" for name in OTHER_SCORES if pd.notna(row[name])
        )
        cells = [row["init"], row["task"], row["encoder_init"], _fmt(row["median_scaled"]), _fmt(row["crop"])]
        cells += [_fmt(row[name]) for name in DEPTH_COLUMNS] + [other or "–"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += [
        "",
        "Depth metrics of each pre-trained network on the ground-truth depth of the test split (per-image "
        "averages, evaluation depth cap, inside the crop named (garg: monodepth2's KITTI crop); delta_k = "
        "share with max(g/p, p/g) < 1.25^k). Median scaling only "
        "for scale-ambiguous monocular video (depth_mono); stereo uses the known baseline. Tasks without a "
        "depth output show their own score: flow end-point error in pixels (epe_zero: of a zero flow), "
        "masked-reconstruction L1, MoCo's top-1 retrieval of each test image's second view among the "
        "first views (untrained_: the same for the run's initial network).",
    ]
    return "\n".join(lines) + "\n"


def write_pretrain_table(study: str, run_dirs: list[Path], csv_path: Path, md_path: Path) -> pd.DataFrame:
    table = collect_pretrain_runs(run_dirs)
    atomic_write_text(Path(csv_path), table.to_csv(index=False))
    atomic_write_text(Path(md_path), pretrain_markdown(table, study))
    return table
