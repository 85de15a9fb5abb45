"""Study tables in the papers' layout: rows = pre-training (init), columns = encoder x setting.

Each cell is mean +- standard error over seeds (sample standard deviation, ddof=1, divided by sqrt(n)),
with the number of seeds stated and the delta of the mean to the baseline row (``random``, paper A's
"None"). A cell with one seed has no standard error and says so.

Significance: per setting, a two-sided Welch t-test (unequal variances,
``scipy.stats.ttest_ind(equal_var=False)``) of each init's mIoU over seeds against the ``random`` row's
(csv ``miou_welch_t`` / ``miou_welch_p``, with ``n_seeds`` and ``baseline_n_seeds``). With fewer than 2
seeds on either side there is no variance estimate, so t and p are NaN ("n/a" in the markdown).
Beside it a paired t-test (``scipy.stats.ttest_rel``) over matched seeds: the row's fine-tuning seed s
against the baseline's seed s, which share the few-shot subset and the data order (csv ``miou_paired_t``
/ ``miou_paired_p`` over ``n_pairs``). ``n_pretrain_runs`` counts the pre-training runs behind a row: 1
when one pre-training serves every seed (the spread then covers fine-tuning only), one per seed with a
study's ``pretrain_seeds: paired``, 0 for inits without a pre-training.

Two steps: ``aggregate_study`` reads finished runs and writes the summary csv, the one machine-readable
table (every number, the row names in ``label``, the rows that could not run with their reason in
``unavailable``); ``render_study`` writes the markdown and the DVC metrics from that csv alone, so a
committed table can be rendered again without its runs. ``aggregate_study`` renders through the csv as
well, so both give the same files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from geosem.aggregate.dvc_metrics import write_metrics
from geosem.aggregate.markdown import markdown_table
from geosem.aggregate.settings import BASELINE_INIT, SCORES, SETTING_KEYS, row_name
from geosem.atomic import atomic_write_text
from geosem.snapshot import Snapshot, read_snapshot, resolution

# Integer columns; pandas makes them float once the unavailable rows (no numbers) join the table.
INT_COLUMNS = ("train_size", "train_samples", "n_seeds", "baseline_n_seeds")
TEXT_COLUMNS = (
    "init",
    "encoder",
    "mode",
    "resolution",
    "protocol",
    "pretrain_resolution",
    "seeds",
    "label",
    "unavailable",
)


def _pretrain_resolution(run: Snapshot, run_dir: Path) -> str:
    """The resolution the init was pre-trained at; a random or weight-file init has none of its own."""
    init = run["init"]
    if "run_id" not in init:
        return resolution(run["data"])
    if "height" not in init or "width" not in init:
        raise ValueError(
            f"{run_dir / 'run.yaml'}: init {init['name']!r} does not record its height and width"
        )
    return resolution(init)


def collect_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read run.yaml, metrics.json and curves.csv of finished fine-tunes into a runs and a curves frame."""
    rows, curves = [], []
    for run_dir in map(Path, run_dirs):
        for name in ("run.yaml", "metrics.json", "curves.csv"):
            if not (run_dir / name).is_file():
                raise FileNotFoundError(f"{run_dir / name} is missing: the run has not finished")
        run = read_snapshot(run_dir / "run.yaml")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        fine, pre = resolution(run["data"]), _pretrain_resolution(run, run_dir)
        setting = {
            "run_id": run["run_id"],
            # A pre-training at another resolution than the fine-tune's is another row (paper A, Fig. 5).
            "init": run["init"]["name"] + (f"@{pre}" if pre != fine else ""),
            "encoder": run["model"]["encoder"],
            "mode": run["task"]["mode"],
            "train_size": run["data"]["train_size"],
            "resolution": fine,
            "lr": float(run["loop"]["lr"]),
            "protocol": run.get("protocol", "paper"),
            "seed": run["seed"],
        }
        scores = {key: metrics[source] for key, source in SCORES.items()}
        rows.append(
            {
                **setting,
                **scores,
                "pretrain_resolution": pre,
                "train_samples": metrics["train_samples"],
                "pretrain_run": run["init"].get("run_id", ""),
            }
        )
        # The curves keep each step's scheduled ``lr``; the setting's learning rate joins as ``base_lr``.
        curve_setting = {key: value for key, value in setting.items() if key != "lr"}
        curve = pd.read_csv(run_dir / "curves.csv")
        curves.append(curve.assign(**curve_setting, base_lr=setting["lr"]))
    if not rows:
        raise ValueError("no runs to aggregate")
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def _standard_error(values: pd.Series) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def welch_test(values: pd.Series | np.ndarray, baseline: pd.Series | np.ndarray) -> tuple[float, float]:
    """(t, two-sided p) of Welch's unequal-variance t-test; NaN when either side has < 2 values (no
    variance estimate) or both sides are constant."""
    values, baseline = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if len(values) < 2 or len(baseline) < 2:
        return float("nan"), float("nan")
    if np.ptp(values) == 0 and np.ptp(baseline) == 0:
        return float("nan"), float("nan")  # 0/0: scipy would warn and return NaN as well
    result = stats.ttest_ind(values, baseline, equal_var=False)
    return float(result.statistic), float(result.pvalue)


def paired_test(frame: pd.DataFrame, baseline: pd.DataFrame) -> tuple[float, float, int]:
    """(t, two-sided p, pairs) of the paired t-test of ``frame``'s mIoU against ``baseline``'s over the
    seeds both have; NaN below 2 pairs or when every difference is the same (no variance)."""
    pairs = frame[["seed", "miou"]].merge(baseline[["seed", "miou"]], on="seed", suffixes=("", "_baseline"))
    differences = (pairs["miou"] - pairs["miou_baseline"]).to_numpy(dtype=float)
    # Equal differences (also up to rounding) leave no variance: scipy would warn and give nonsense.
    if len(pairs) < 2 or np.allclose(differences, differences[0], rtol=1e-9, atol=1e-12):
        return float("nan"), float("nan"), len(pairs)
    result = stats.ttest_rel(pairs["miou"], pairs["miou_baseline"])
    return float(result.statistic), float(result.pvalue), len(pairs)


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (init, setting): mean, SE and seeds of every score, plus deltas and the Welch test of
    the mIoU against the baseline row of the same setting."""
    keys = ["init", *SETTING_KEYS]
    baseline_runs = runs[runs["init"] == BASELINE_INIT]
    baseline_frames = {setting: frame for setting, frame in baseline_runs.groupby(SETTING_KEYS, sort=False)}
    records = []
    for group, frame in runs.groupby(keys, sort=False):
        record = dict(zip(keys, group, strict=True))
        record["pretrain_resolution"] = frame["pretrain_resolution"].iloc[0]
        record["train_samples"] = int(frame["train_samples"].iloc[0])
        record["n_seeds"] = len(frame)
        record["seeds"] = " ".join(str(s) for s in sorted(frame["seed"]))
        for score in SCORES:
            record[f"{score}_mean"] = float(frame[score].mean())
            record[f"{score}_se"] = _standard_error(frame[score])
        record["n_pretrain_runs"] = int(frame["pretrain_run"][frame["pretrain_run"] != ""].nunique())
        baseline = baseline_frames.get(tuple(record[k] for k in SETTING_KEYS), runs.iloc[0:0])
        record["baseline_n_seeds"] = len(baseline)
        if record["init"] == BASELINE_INIT:
            record["miou_welch_t"], record["miou_welch_p"] = float("nan"), float("nan")
            record["miou_paired_t"], record["miou_paired_p"], record["n_pairs"] = (
                float("nan"),
                float("nan"),
                0,
            )
        else:
            record["miou_welch_t"], record["miou_welch_p"] = welch_test(frame["miou"], baseline["miou"])
            record["miou_paired_t"], record["miou_paired_p"], record["n_pairs"] = paired_test(frame, baseline)
        records.append(record)
    table = pd.DataFrame(records)
    baseline_rows = table[table["init"] == BASELINE_INIT].set_index(SETTING_KEYS)
    for score in SCORES:
        baseline = baseline_rows[f"{score}_mean"]
        table[f"{score}_delta"] = [
            row[f"{score}_mean"] - baseline.get(tuple(row[k] for k in SETTING_KEYS), np.nan)
            for _, row in table.iterrows()
        ]
    # The resolution pair, for the resolution plot (paper A, Fig. 5).
    table["resolution_pair"] = [
        f"{pre} -> {fine}"
        for pre, fine in zip(table["pretrain_resolution"], table["resolution"], strict=True)
    ]
    return table


def study_frame(
    table: pd.DataFrame, labels: dict[str, str] | None = None, unavailable: list[dict[str, str]] | None = None
) -> pd.DataFrame:
    """The summary plus the row names (``label``) and the rows that could not run (``unavailable``: the
    reason; no numbers, ``n_seeds`` 0): everything the markdown and the metrics are rendered from."""
    labels = labels or {}
    measured = table.assign(label=[row_name(init, labels) for init in table["init"]], unavailable="")
    missing = pd.DataFrame(
        [
            {
                "init": row["init"],
                "encoder": row["encoder"],
                "label": row_name(row["init"], labels),
                "n_seeds": 0,
                "unavailable": row["reason"],
            }
            for row in unavailable or []
        ],
        columns=["init", "encoder", "label", "n_seeds", "unavailable"],
    )
    frame = pd.concat([measured, missing], ignore_index=True) if len(missing) else measured
    return frame.astype({column: "Int64" for column in INT_COLUMNS})


def read_table(table_csv: Path) -> pd.DataFrame:
    """A study csv as ``study_frame`` wrote it. Tables written before the ``unavailable`` column existed
    had no unavailable rows; before the ``label`` column, the row names were the init names."""
    # Only an empty field is missing: pandas would read the row name "None" (paper A's random row) as NaN.
    text = {column: str for column in TEXT_COLUMNS}
    frame = pd.read_csv(table_csv, dtype=text, keep_default_na=False, na_values=[""])
    if "label" not in frame:
        frame["label"] = frame["init"]
    frame["unavailable"] = frame["unavailable"].fillna("") if "unavailable" in frame else ""
    return frame.astype({column: "Int64" for column in INT_COLUMNS})


def split_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(measured rows, with plain int columns; rows that could not run)."""
    could_not_run = frame["unavailable"] != ""
    measured = frame[~could_not_run].astype({column: int for column in INT_COLUMNS})
    return measured.reset_index(drop=True), frame[could_not_run].reset_index(drop=True)


def render_study(study: str, table_csv: Path, *, table_md: Path, metrics_dir: Path) -> pd.DataFrame:
    """Write a study's markdown table and DVC metrics from its summary csv alone; return the measured rows."""
    measured, unavailable = split_table(read_table(Path(table_csv)))
    if measured.empty:
        raise ValueError(f"{table_csv} has no measured rows to render")
    atomic_write_text(Path(table_md), markdown_table(measured, study, unavailable))
    write_metrics(measured, Path(metrics_dir))
    return measured


def aggregate_study(
    study: str,
    run_dirs: list[Path],
    *,
    table_csv: Path,
    table_md: Path,
    metrics_dir: Path,
    curves_plot: Path,
    curves_csv: Path | None = None,
    labels: dict[str, str] | None = None,
    unavailable: list[dict[str, str]] | None = None,
) -> pd.DataFrame:
    """Summarise finished fine-tunes into the study csv, then render markdown and metrics from it; write
    the curves. Returns the summary at full precision, with its ``label`` column."""
    from geosem.aggregate.plots import plot_curves

    runs, curves = collect_runs(run_dirs)
    table = summarise(runs)
    frame = study_frame(table, labels, unavailable)
    atomic_write_text(Path(table_csv), frame.to_csv(index=False, float_format="%.6g"))
    render_study(study, table_csv, table_md=table_md, metrics_dir=metrics_dir)
    if curves_csv is not None:
        atomic_write_text(Path(curves_csv), curves.to_csv(index=False, float_format="%.6f"))
    plot_curves(curves, Path(curves_plot), title=f"{study}: test mIoU during fine-tuning")
    return table.assign(label=[row_name(init, labels or {}) for init in table["init"]])
