"""Study tables in the papers' layout: rows = pre-training (init), columns = encoder x setting.

Each cell is mean +- standard error over seeds (sample standard deviation, ddof=1, divided by sqrt(n)),
with the number of seeds stated and the delta of the mean to the baseline row (``random``, paper A's
"None"). A cell with one seed has no standard error and says so.

Significance: per setting, a two-sided Welch t-test (unequal variances,
``scipy.stats.ttest_ind(equal_var=False)``) of each init's mIoU over seeds against the ``random`` row's
(csv ``miou_welch_t`` / ``miou_welch_p``, with ``n_seeds`` and ``baseline_n_seeds``). With fewer than 2
seeds on either side there is no variance estimate, so t and p are NaN ("n/a" in the markdown).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from scipy import stats

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
        fine = _resolution(run["data"]["variant"])
        pre = _resolution(run["init"]["variant"]) if "variant" in run["init"] else fine
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
            {**setting, **scores, "pretrain_resolution": pre, "train_samples": metrics["train_samples"]}
        )
        curve = pd.read_csv(run_dir / "curves.csv")
        curve = curve.assign(**setting)
        curves.append(curve)
    if not rows:
        raise ValueError("no runs to aggregate")
    return pd.DataFrame(rows), pd.concat(curves, ignore_index=True)


def _resolution(variant: str) -> str:
    """``64x192`` of a shard variant name such as ``64x192-v2-bicubic``."""
    return variant.split("-")[0]


# What makes two cells of a study table different settings (columns); rows are inits.
SETTING_KEYS = ["encoder", "mode", "train_size", "resolution", "lr", "protocol"]


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


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (init, setting): mean, SE and seeds of every score, plus deltas and the Welch test of
    the mIoU against the baseline row of the same setting."""
    keys = ["init", *SETTING_KEYS]
    baseline_runs = runs[runs["init"] == BASELINE_INIT]
    baseline_mious = {
        setting: frame["miou"] for setting, frame in baseline_runs.groupby(SETTING_KEYS, sort=False)
    }
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
        baseline = baseline_mious.get(tuple(record[k] for k in SETTING_KEYS), pd.Series(dtype=float))
        record["baseline_n_seeds"] = len(baseline)
        if record["init"] == BASELINE_INIT:
            record["miou_welch_t"], record["miou_welch_p"] = float("nan"), float("nan")
        else:
            record["miou_welch_t"], record["miou_welch_p"] = welch_test(frame["miou"], baseline)
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


def _cell(mean: float, se: float, delta: float, n: int, is_baseline: bool) -> str:
    text = f"{100 * mean:.1f}" + (f" ± {100 * se:.1f}" if not math.isnan(se) else " (1 seed, no SE)")
    if not is_baseline and not math.isnan(delta):
        text += f" ({100 * delta:+.1f})"
    return text


def _p_cell(p: float, n: int, baseline_n: int, is_baseline: bool) -> str:
    if is_baseline:
        return "(baseline)"
    seeds = f"({n} vs {baseline_n} seeds)"
    if math.isnan(p):
        return f"n/a {seeds}"
    return (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}") + f" {seeds}"


def _setting_name(setting: dict[str, Any], varying: set[str]) -> str:
    parts = [setting["encoder"], setting["mode"], f"N={setting['train_size'] or 'all'}"]
    if "resolution" in varying:
        parts.append(setting["resolution"])
    if "lr" in varying:
        parts.append(f"lr={setting['lr']:g}")
    if "protocol" in varying:
        parts.append(setting["protocol"])
    return " ".join(parts)


def _row_name(init: str, labels: dict[str, str]) -> str:
    """The paper's name of a row: ``depth_mono_rand@96x320`` -> ``Depth-Rand (pre-trained at 96x320)``."""
    base, _, pre = init.partition("@")
    name = labels.get(base, base)
    return f"{name} (pre-trained at {pre})" if pre else name


def markdown_table(
    table: pd.DataFrame,
    study: str,
    labels: dict[str, str] | None = None,
    unavailable: list[dict[str, str]] | None = None,
) -> str:
    """The paper's layout: one row per init; per setting an mIoU, a pixel-accuracy and a p column. Rows
    that could not run here (missing weights) are listed as unavailable, with the reason."""
    labels = labels or {}
    unavailable = unavailable or []
    settings = [
        dict(zip(SETTING_KEYS, values, strict=True))
        for values in table[SETTING_KEYS].drop_duplicates().itertuples(index=False)
    ]
    varying = {key for key in SETTING_KEYS if table[key].nunique() > 1}
    constant = {key: table[key].iloc[0] for key in ("resolution", "lr", "protocol") if key not in varying}
    inits = list(dict.fromkeys(table["init"]))
    header = ["Pre-training"]
    for setting in settings:
        name = _setting_name(setting, varying)
        header += [
            f"{name} mIoU",
            f"{name} pAcc",
            f"{name} p (Welch vs {labels.get(BASELINE_INIT, BASELINE_INIT)})",
        ]
    baseline_name = labels.get(BASELINE_INIT, BASELINE_INIT)
    lines = [
        f"# Study `{study}`: test mIoU and pixel accuracy (%)",
        "",
        "Mean ± standard error over seeds (ddof=1); in brackets the delta of the mean to the "
        f"`{baseline_name}` row. p: two-sided Welch t-test of the mIoU over seeds against the "
        f"`{baseline_name}` row of the same setting (n/a with fewer than 2 seeds on either side). "
        + ", ".join(
            f"{key}: {value:g}" if isinstance(value, float) else f"{key}: {value}"
            for key, value in constant.items()
        )
        + ".",
        "",
        "| " + " | ".join(header) + " | seeds |",
        "|" + "---|" * (len(header) + 1),
    ]
    for init in inits:
        cells = [_row_name(init, labels)]
        seeds = ""
        for setting in settings:
            mask = table["init"] == init
            for key, value in setting.items():
                mask &= table[key] == value
            match = table[mask]
            if match.empty:
                cells += ["n/a", "n/a", "n/a"]
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
            cells.append(
                _p_cell(row["miou_welch_p"], row["n_seeds"], row["baseline_n_seeds"], init == BASELINE_INIT)
            )
            seeds = f"{row['n_seeds']} ({row['seeds']})"
        lines.append("| " + " | ".join(cells) + f" | {seeds} |")
    # Unavailable rows: one line per init, its settings marked, the reasons below the table.
    missing: dict[str, list[dict[str, str]]] = {}
    for row in unavailable:
        missing.setdefault(row["init"], []).append(row)
    for init, rows in missing.items():
        encoders = {row["encoder"] for row in rows}
        cells = [_row_name(init, labels)]
        for setting in settings:
            text = "unavailable" if setting["encoder"] in encoders else "n/a"
            cells += [text, text, text]
        lines.append("| " + " | ".join(cells) + " | 0 |")
    if missing:
        lines += ["", "Unavailable on this machine (not run):", ""]
        for init, rows in missing.items():
            for row in rows:
                lines.append(f"- {_row_name(init, labels)} ({row['encoder']}): {row['reason']}")
    return "\n".join(lines) + "\n"


def metrics_json(table: pd.DataFrame, study: str) -> dict[str, Any]:
    """Nested metrics for ``dvc metrics show``: study -> init -> setting -> score."""
    out: dict[str, Any] = {}
    for _, row in table.iterrows():
        setting = f"{row['encoder']}-{row['mode']}-n{row['train_size']}"
        # Only the default-valued parts stay out of the key, so earlier results keep their keys.
        if row["resolution"] != row["pretrain_resolution"] or len(table["resolution"].unique()) > 1:
            setting += f"-{row['resolution']}"
        if len(table["lr"].unique()) > 1:
            setting += f"-lr{row['lr']:g}"
        if row["protocol"] != "paper":
            setting += f"-{row['protocol']}"
        entry = {"n_seeds": int(row["n_seeds"]), "baseline_n_seeds": int(row["baseline_n_seeds"])}
        for score in SCORES:
            for stat in ("mean", "se", "delta"):
                value = float(row[f"{score}_{stat}"])
                entry[f"{score}_{stat}"] = None if math.isnan(value) else round(value, 6)
        for key in ("miou_welch_t", "miou_welch_p"):
            value = float(row[key])
            entry[key] = None if math.isnan(value) else round(value, 6)
        # Undefined statistics (one seed's SE, the baseline's own delta and t-test) are left out: DVC's
        # metrics show and diff drop nulls anyway.
        entry = {key: value for key, value in entry.items() if value is not None}
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
    labels: dict[str, str] | None = None,
    unavailable: list[dict[str, str]] | None = None,
) -> pd.DataFrame:
    from geosem.aggregate.plots import plot_curves

    runs, curves = collect_runs(run_dirs)
    table = summarise(runs)
    table["label"] = [_row_name(init, labels or {}) for init in table["init"]]
    out = table
    if unavailable:
        # Rows that could not run are in the csv too, with their reason and no numbers.
        missing = pd.DataFrame(
            [
                {
                    "init": r["init"],
                    "encoder": r["encoder"],
                    "label": _row_name(r["init"], labels or {}),
                    "n_seeds": 0,
                    "unavailable": r["reason"],
                }
                for r in unavailable
            ]
        )
        out = pd.concat([table.assign(unavailable=""), missing], ignore_index=True)
    atomic_write_text(Path(table_csv), out.to_csv(index=False, float_format="%.6f"))
    atomic_write_text(Path(table_md), markdown_table(table, study, labels, unavailable))
    atomic_write_json(Path(metrics_path), metrics_json(table, study))
    if curves_csv is not None:
        atomic_write_text(Path(curves_csv), curves.to_csv(index=False, float_format="%.6f"))
    plot_curves(curves, Path(curves_plot), title=f"{study}: test mIoU during fine-tuning")
    return table
