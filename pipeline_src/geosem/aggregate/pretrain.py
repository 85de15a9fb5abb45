"""The pre-training table of a study: the depth quality of every pre-training it uses, on ground truth.

One row per init: its name, task, encoder start, encoder and pre-training data, over the pre-training
seeds of that init (a study with ``pretrain_seeds: paired`` has one per fine-tuning seed). Each score is
the mean ± standard error over those seeds (sample standard deviation, ddof=1, over sqrt(n)); a single
seed shows its value alone. The scores: the depth metrics of ``geosem.metrics.depth`` on the test split
(per-image averages, the evaluation's depth cap; median scaling for the scale-ambiguous depth_mono,
stated in its own column), and the task's own score for the non-depth tasks (flow end-point error,
masked-reconstruction L1, MoCo v2's view retrieval top-1 beside that of its untrained network). The csv
keeps one row per pre-training run (column ``seed``), so the summary can be recomputed.

With a plot path, the runs' curves.csv are read too: the markdown gains the score at each evaluation
step (``geosem.aggregate.pretrain_steps``) and the figure shows it against step. Run as
``geosem aggregate-pretrain --study S --runs DIR... --csv OUT --md OUT --plot OUT``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from geosem.atomic import atomic_write_text
from geosem.metrics.depth import DEPTH_METRIC_NAMES, MEDIAN_SCALED_PREFIX
from geosem.snapshot import Snapshot, read_snapshot

DEPTH_COLUMNS = DEPTH_METRIC_NAMES
# The median-scaled scores every depth mode reports too, so metric and scale-ambiguous modes compare.
SCALED_COLUMNS = ("ms_abs_rel", "ms_delta1")
OTHER_SCORES = (
    "test_flow_epe",
    "test_flow_epe_zero",
    "test_masked_l1",
    "test_masked_l1_mean",
    "test_moco_top1",
    "untrained_moco_top1",
    "test_dino_loss",
    "test_dino_retrieval",
    "test_dino_retrieval_untrained",
    "test_miou",
)
SCORE_COLUMNS = (*DEPTH_COLUMNS, *SCALED_COLUMNS, *OTHER_SCORES)
# What makes two pre-training runs the same init, seeds apart: the planner's pre-training id is
# <init>-<encoder>-<dataset>-<variant>-s<seed>, and the task name and encoder start come with the init.
INIT_KEYS = ("init", "task", "encoder_init", "encoder", "dataset", "variant")


def run_identity(snapshot: Snapshot, run_yaml: Path) -> dict[str, Any]:
    """The init keys and seed of a pre-training, from its snapshot (a run id is no name to parse)."""
    task = snapshot["task"]
    if "init" not in task:  # the planner names the init it pre-trains
        raise ValueError(f"{run_yaml}: the pre-training's task does not name its init")
    data = snapshot["data"]
    return {
        "init": task["init"],
        "task": task["name"],
        "encoder_init": task.get("encoder_init", "random"),
        "encoder": snapshot["model"]["encoder"],
        "dataset": data.get("dataset", ""),
        "variant": data.get("variant", ""),
        "seed": snapshot["seed"],
    }


def _run_row(run_dir: Path) -> dict[str, Any]:
    snapshot = read_snapshot(run_dir / "run.yaml")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = run_identity(snapshot, run_dir / "run.yaml")
    row |= {
        "steps": metrics.get("steps"),
        "median_scaled": metrics.get("depth_median_scaled"),
        "crop": metrics.get("depth_eval_crop"),
        "images_scored": metrics.get("depth_images_scored"),
    }
    row |= {name: metrics.get(f"depth_{name}") for name in DEPTH_COLUMNS}
    row |= {name: metrics.get(MEDIAN_SCALED_PREFIX + name.removeprefix("ms_")) for name in SCALED_COLUMNS}
    row |= {name: metrics.get(name) for name in OTHER_SCORES}
    row["run_id"] = snapshot["run_id"]
    return row


def _check_seeds(table: pd.DataFrame) -> None:
    """Two runs of one init with one seed are not seeds apart: something the keys miss tells them apart,
    and averaging them would hide it."""
    repeated = table[table.duplicated([*INIT_KEYS, "seed"], keep=False)]
    if not repeated.empty:
        raise ValueError(
            "pre-training runs of the same init and seed: "
            + ", ".join(repeated["run_id"])
            + " (their init, task, encoder start, encoder, dataset and variant agree)"
        )


def collect_pretrain_runs(run_dirs: list[Path]) -> pd.DataFrame:
    """One row per pre-training run (run.yaml and metrics.json): its init keys, seed and scores."""
    rows = [_run_row(run_dir) for run_dir in map(Path, run_dirs)]
    table = pd.DataFrame(rows)
    if not rows:
        return table
    _check_seeds(table)
    order = ["task", "init", "encoder", "dataset", "variant", "seed"]
    return table.sort_values(order, kind="stable").reset_index(drop=True)


def init_groups(table: pd.DataFrame) -> list[tuple[tuple[Any, ...], pd.DataFrame]]:
    """The runs of each init, in the table's order (task, then init)."""
    if table.empty:
        return []
    return list(table.groupby(list(INIT_KEYS), sort=False, dropna=False))


def _mean_se(values: pd.Series) -> tuple[float, float]:
    values = pd.to_numeric(values, errors="coerce").dropna()
    if values.empty:
        return math.nan, math.nan
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return float(values.mean()), float(se)


def _same(values: pd.Series) -> Any:
    """The one value the seeds of an init share (crop, median scaling); differing ones joined by '/'."""
    present = list(dict.fromkeys(v for v in values if v is not None and not pd.isna(v)))
    if len(present) <= 1:
        return present[0] if present else None
    return "/".join(map(str, present))


def summarise_pretrain(table: pd.DataFrame) -> pd.DataFrame:
    """One row per init: ``n_seeds``, ``seeds`` and ``<score>_mean`` / ``<score>_se`` over its seeds."""
    rows = []
    for keys, frame in init_groups(table):
        row: dict[str, Any] = dict(zip(INIT_KEYS, keys, strict=True))
        row |= {"n_seeds": len(frame), "seeds": " ".join(str(s) for s in sorted(frame["seed"]))}
        row |= {name: _same(frame[name]) for name in ("steps", "median_scaled", "crop")}
        for name in SCORE_COLUMNS:
            row[f"{name}_mean"], row[f"{name}_se"] = _mean_se(frame[name])
        rows.append(row)
    return pd.DataFrame(rows)


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _mean_se_cell(mean: float, se: float) -> str:
    return fmt(mean) if pd.isna(se) else f"{fmt(mean)} ± {fmt(se)}"


def data_name(row: pd.Series) -> str:
    return " ".join(str(row[key]) for key in ("dataset", "variant") if row[key])


def _summary_row(row: pd.Series) -> list[str]:
    other = "; ".join(
        f"{name.removeprefix('test_')} {_mean_se_cell(row[f'{name}_mean'], row[f'{name}_se'])}"
        for name in OTHER_SCORES
        if pd.notna(row[f"{name}_mean"])
    )
    cells = [row["init"], row["task"], row["encoder_init"], fmt(row["median_scaled"]), fmt(row["crop"])]
    cells += [
        _mean_se_cell(row[f"{name}_mean"], row[f"{name}_se"]) for name in (*DEPTH_COLUMNS, *SCALED_COLUMNS)
    ]
    return [*cells, other or "–", row["encoder"], data_name(row) or "–", str(row["n_seeds"])]


SUMMARY_NOTE = (
    "One row per init (task, encoder start, encoder, pre-training data) over its n pre-training seeds: "
    "mean ± standard error (sample standard deviation, ddof=1, over sqrt(n)); n = 1 shows the one value. "
    "The csv holds every pre-training run (column seed). "
    "Depth metrics of each pre-trained network on the ground-truth depth of the test split (per-image "
    "averages, evaluation depth cap, inside the crop named (garg: monodepth2's KITTI crop); delta_k = "
    "share with max(g/p, p/g) < 1.25^k). The metric columns use median scaling only "
    "for scale-ambiguous monocular video (depth_mono); stereo uses the known baseline, supervision the "
    "ground truth's scale. ms_abs_rel and ms_delta1 are every mode's scores after per-image median "
    "scaling, which compare the depth structure across modes. Tasks without a "
    "depth output show their own score: flow end-point error in pixels (epe_zero: of a zero flow), "
    "masked-reconstruction L1 (masked_l1_mean: of filling each masked pixel with its image's mean visible "
    "colour), MoCo's top-1 retrieval of each test image's second view among the "
    "first views (untrained_: the same for the run's initial network)."
)


def pretrain_markdown(table: pd.DataFrame, study: str, curves: pd.DataFrame | None = None) -> str:
    """The summary of the per-run ``table``; with ``curves`` (``collect_pretrain_curves``) the score at
    each evaluation step beneath it."""
    header = ["init", "task", "encoder start", "median scaled", "crop", *DEPTH_COLUMNS, *SCALED_COLUMNS]
    header.append("other score")
    header += ["encoder", "data", "n"]
    lines = [
        f"### {study}: pre-training depth quality on the test split",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    summary = summarise_pretrain(table)
    lines += ["| " + " | ".join(_summary_row(row)) + " |" for _, row in summary.iterrows()]
    lines += ["", SUMMARY_NOTE]
    if curves is not None:
        from geosem.aggregate.pretrain_steps import steps_markdown

        lines += ["", steps_markdown(curves, study)]
    return "\n".join(lines) + "\n"


def write_pretrain_table(
    study: str, run_dirs: list[Path], csv_path: Path, md_path: Path, plot_path: Path | None = None
) -> pd.DataFrame:
    """Write the per-run csv and the markdown; with ``plot_path`` read every run's curves.csv as well,
    for the per-step table and the curves figure. Returns the per-run table."""
    table = collect_pretrain_runs(run_dirs)
    curves = None
    if plot_path is not None:
        from geosem.aggregate.plots import plot_pretrain_curves
        from geosem.aggregate.pretrain_steps import collect_pretrain_curves, plot_panels

        curves = collect_pretrain_curves(run_dirs)
        plot_pretrain_curves(curves, Path(plot_path), f"{study}: pre-training", plot_panels(curves))
    atomic_write_text(Path(csv_path), table.to_csv(index=False))
    atomic_write_text(Path(md_path), pretrain_markdown(table, study, curves))
    return table
