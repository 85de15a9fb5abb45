"""The pre-trainings' scores against step: read from each run's curves.csv, shown as a markdown table
(one row per init, one column per evaluation step) and as the curves figure's panels.

A depth task is shown by abs_rel and delta1, any other task by its own score (flow end-point error,
masked-reconstruction L1, MoCo's or DINO's view retrieval, mIoU). Values at a step are means over the
init's pre-training seeds; the figure adds ± one standard error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from geosem.aggregate.markdown import aligned
from geosem.aggregate.pretrain import INIT_KEYS, data_name, fmt, init_groups, run_identity
from geosem.snapshot import read_snapshot

DEPTH_CURVES = {"depth_abs_rel": "abs_rel (lower is better)", "depth_delta1": "delta1 (higher is better)"}
# The one score of each non-depth task that is shown against step, in curves.csv's names.
OWN_CURVES = {
    "test_flow_epe": "flow end-point error, px (lower is better)",
    "test_masked_l1": "masked-reconstruction L1 (lower is better)",
    "test_moco_top1": "MoCo view retrieval top-1 (higher is better)",
    "test_dino_retrieval": "DINO view retrieval top-1 (higher is better)",
    "test_miou": "test mIoU (higher is better)",
}
CURVE_COLUMNS = (*DEPTH_CURVES, *OWN_CURVES)
# More steps than this make the table too wide to read; the figure has them all.
MAX_STEP_COLUMNS = 8


def _run_curves(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "curves.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: a finished pre-training writes it beside metrics.json (rule pretrain); "
            "train the run again before aggregating"
        )
    frame = pd.read_csv(path)
    if "step" not in frame.columns:
        raise ValueError(f"{path}: no step column (columns: {', '.join(frame.columns)})")
    scores = [name for name in CURVE_COLUMNS if name in frame.columns]
    # Every row is an evaluation step (geosem.train.loop); a task without a score there keeps its rows,
    # so its init still has a row, of dashes, in the step table.
    frame = frame[["step", *scores]]
    identity = run_identity(read_snapshot(run_dir / "run.yaml"), run_dir / "run.yaml")
    return frame.assign(**identity).reindex(columns=[*INIT_KEYS, "seed", "step", *CURVE_COLUMNS])


def _labels(curves: pd.DataFrame) -> pd.Series:
    """Legend names: the init, its encoder and seed count, and its data where the study has several."""
    several = curves[["dataset", "variant"]].drop_duplicates().shape[0] > 1
    seeds = curves.groupby(list(INIT_KEYS), dropna=False)["seed"].transform("nunique")
    data = (" " + curves["dataset"] + " " + curves["variant"]) if several else ""
    return curves["init"] + " (" + curves["encoder"] + data + ", n=" + seeds.astype(str) + ")"


def collect_pretrain_curves(run_dirs: list[Path]) -> pd.DataFrame:
    """Long form: one row per run and evaluation step, with the init keys, seed, a legend ``label`` and
    the shown scores (NaN where the task has none)."""
    frames = [_run_curves(run_dir) for run_dir in map(Path, run_dirs)]
    columns = [*INIT_KEYS, "seed", "step", *CURVE_COLUMNS, "label"]
    if not frames:
        return pd.DataFrame(columns=columns)
    curves = pd.concat(frames, ignore_index=True)
    order = ["task", "init", "encoder", "dataset", "variant", "seed", "step"]
    curves = curves.sort_values(order, kind="stable").reset_index(drop=True)
    return curves.assign(label=_labels(curves))[columns]


def plot_panels(curves: pd.DataFrame) -> dict[str, str]:
    """The figure's panels: column -> axis label, for each score some run has at some step."""
    names = DEPTH_CURVES | OWN_CURVES
    return {name: names[name] for name in CURVE_COLUMNS if curves[name].notna().any()}


def shown_steps(steps: list[int], limit: int = MAX_STEP_COLUMNS) -> list[int]:
    """At most ``limit`` of ``steps``, evenly spread, the first and the last always among them."""
    if len(steps) <= limit:
        return steps
    picks = np.linspace(0, len(steps) - 1, limit).round().astype(int)
    return [steps[i] for i in dict.fromkeys(picks.tolist())]


def _shown_score(frame: pd.DataFrame) -> tuple[str, list[str]]:
    """The score a row shows: abs_rel / delta1 for a depth task, else the task's own score."""
    if frame["depth_abs_rel"].notna().any():
        return "abs_rel / delta1", list(DEPTH_CURVES)
    for name in OWN_CURVES:
        if frame[name].notna().any():
            return name.removeprefix("test_"), [name]
    return "none in curves.csv", []


def _step_row(frame: pd.DataFrame, steps: list[int]) -> list[str]:
    first = frame.iloc[0]
    score, columns = _shown_score(frame)
    means = frame.groupby("step")[columns].mean() if columns else pd.DataFrame()
    cells = []
    for step in steps:
        values = means.loc[step] if step in means.index else None
        cells.append("–" if values is None else " / ".join(fmt(values[c]) for c in columns))
    n = str(frame["seed"].nunique())
    return [first["init"], first["encoder"], data_name(first) or "–", n, score, *cells]


def steps_markdown(curves: pd.DataFrame, study: str) -> str:
    """The score of each init at each evaluation step, means over its pre-training seeds."""
    title = f"### {study}: abs_rel / delta1 (or own score) against pre-training step"
    scored = curves.dropna(subset=list(CURVE_COLUMNS), how="all")
    if scored.empty:
        return f"{title}\n\nNo pre-training has a scored evaluation step.\n"
    steps = sorted(int(s) for s in scored["step"].unique())
    shown = shown_steps(steps)
    header = ["init", "encoder", "data", "n", "score", *(f"step {s}" for s in shown)]
    rows = [_step_row(frame, shown) for _, frame in init_groups(curves)]
    note = (
        "Test-split score at each evaluation step, mean over the init's n pre-training seeds (the curves "
        "figure adds ± one standard error): abs_rel / delta1 for depth tasks, else the task's own score "
        "(named in the score column); – where the init was not evaluated at that step."
    )
    if shown != steps:
        note += f" {len(shown)} of {len(steps)} evaluation steps shown, evenly spread; the figure has all."
    return "\n".join([title, "", *aligned([header, *rows]), "", note]) + "\n"
