"""Study tables in the papers' layout: rows = pre-training (init), columns = encoder x setting.

Each cell is mean +- standard error over seeds (sample standard deviation, ddof=1, divided by sqrt(n)),
with the number of seeds stated and the delta of the mean to the baseline row (``random``, paper A's
"None"). A cell with one seed has no standard error and says so.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from geosem.atomic import atomic_write_json, atomic_write_text

BASELINE_INIT = "random"
SCORES = {"miou": "test_miou", "pixel_accuracy": "test_pixel_accuracy"}


def collect_runs(run_dirs: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read run.yaml, metrics.json and curves.csv of finished fine-tunes into a runs and a curves frame."""
    rows, curves = [], []
    for run_dir in map(Path, run_dirs):
        for name in ("run.yaml", "metrics.json", "curves.csv"):
            if not (run_dir / name).is_file():
                raise FileNotFoundError(f"{run_dir / name} is missing: the run has not finished")
        run = yaml.safe_load((run_dir / "run.yaml").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        setting = {
            "run_id": run["run_id"],
            "init": run["init"]["name"],
            "encoder": run["model"]["encoder"],
            "mode": run["task"]["mode"],
            "train_size": run["data"]["train_size"],
            "seed": run["seed"],
        }
        rows.append({**setting, **{key: metrics[source] for key, source in SCORES.items()}})
        curve = pd.read_csv(run_dir / "curves.csv")
        curve = curve.assign(**setting)
        curves.append(curve)
    if not rows:
        raise ValueError("no runs to aggregate")
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def _standard_error(values: pd.Series) -> float:
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (init, encoder, mode, train_size): mean, SE and seeds of every score, plus deltas."""
    keys = ["init", "encoder", "mode", "train_size"]
    records = []
    for group, frame in runs.groupby(keys, sort=False):
        record = dict(zip(keys, group, strict=True))
        record["n_seeds"] = len(frame)
        record["seeds"] = " ".join(str(s) for s in sorted(frame["seed"]))
        for score in SCORES:
            record[f"{score}_mean"] = float(frame[score].mean())
            record[f"{score}_se"] = _standard_error(frame[score])
        records.append(record)
    table = pd.DataFrame(records)
    for score in SCORES:
        baseline = table[table["init"] == BASELINE_INIT].set_index(["encoder", "mode", "train_size"])[
            f"{score}_mean"
        ]
        table[f"{score}_delta"] = [
            row[f"{score}_mean"] - baseline.get((row["encoder"], row["mode"], row["train_size"]), np.nan)
            for _, row in table.iterrows()
        ]
    return table


def _cell(mean: float, se: float, delta: float, n: int, is_baseline: bool) -> str:
    text = f"{100 * mean:.1f}" + (f" ± {100 * se:.1f}" if not math.isnan(se) else " (1 seed, no SE)")
    if not is_baseline and not math.isnan(delta):
        text += f" ({100 * delta:+.1f})"
    return text


def markdown_table(table: pd.DataFrame, study: str) -> str:
    """The paper's layout: one row per init, one mIoU and one pixel-accuracy column per setting."""
    settings = table[["encoder", "mode", "train_size"]].drop_duplicates().itertuples(index=False)
    settings = list(settings)
    inits = list(dict.fromkeys(table["init"]))
    header = ["Pre-training"]
    for encoder, mode, size in settings:
        header += [f"{encoder} {mode} N={size} mIoU", f"{encoder} {mode} N={size} pAcc"]
    lines = [
        f"# Study `{study}`: test mIoU and pixel accuracy (%)",
        "",
        "Mean ± standard error over seeds (ddof=1); in brackets the delta of the mean to the `random` row.",
        "",
        "| " + " | ".join(header) + " | seeds |",
        "|" + "---|" * (len(header) + 1),
    ]
    for init in inits:
        cells = [init]
        seeds = ""
        for encoder, mode, size in settings:
            match = table[
                (table["init"] == init)
                & (table["encoder"] == encoder)
                & (table["mode"] == mode)
                & (table["train_size"] == size)
            ]
            if match.empty:
                cells += ["n/a", "n/a"]
                continue
            row = match.iloc[0]
            for score in SCORES:
                cells.append(
                    _cell(
                        row[f"{score}_mean"],
                        row[f"{score}_se"],
                        row[f"{score}_delta"],
                        row["n_seeds"],
                        init == BASELINE_INIT,
                    )
                )
            seeds = f"{row['n_seeds']} ({row['seeds']})"
        lines.append("| " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines) + "\n"


def metrics_json(table: pd.DataFrame, study: str) -> dict[str, Any]:
    """Nested metrics for ``dvc metrics show``: study -> init -> setting -> score."""
    out: dict[str, Any] = {}
    for _, row in table.iterrows():
        setting = f"{row['encoder']}-{row['mode']}-n{row['train_size']}"
        entry = {"n_seeds": int(row["n_seeds"])}
        for score in SCORES:
            for stat in ("mean", "se", "delta"):
                value = float(row[f"{score}_{stat}"])
                entry[f"{score}_{stat}"] = None if math.isnan(value) else round(value, 6)
        out.setdefault(row["init"], {})[setting] = entry
    return {study: out}


def aggregate_study(
    study: str,
    run_dirs: list[Path],
    *,
    table_csv: Path,
    table_md: Path,
    metrics_path: Path,
    curves_plot: Path,
    curves_csv: Path | None = None,
) -> pd.DataFrame:
    from geosem.aggregate.plots import plot_curves

    runs, curves = collect_runs(run_dirs)
    table = summarise(runs)
    atomic_write_text(Path(table_csv), table.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(Path(table_md), markdown_table(table, study))
    atomic_write_json(Path(metrics_path), metrics_json(table, study))
    if curves_csv is not None:
        atomic_write_text(Path(curves_csv), curves.to_csv(index=False, float_format="%.6f"))
    plot_curves(curves, Path(curves_plot), title=f"{study}: test mIoU during fine-tuning")
    return table
