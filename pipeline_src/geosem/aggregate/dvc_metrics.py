"""A study's DVC metrics: one small JSON per (setting, init), ``<metrics_dir>/<setting>/<init>.json``.

``dvc metrics show`` prints one row per file and one column per key, so every file carries the same few
short keys and the table stays narrow however many settings a study has:

- ``miou``, ``miou_se``: test mIoU, mean and standard error over seeds (ddof=1), in %, 2 decimals;
- ``pacc``: test pixel accuracy, mean over seeds, in %, 2 decimals;
- ``p_welch``: two-sided Welch p of the mIoU against the ``random`` row of the same setting, 3 significant
  digits (left out for the baseline row itself and wherever it is undefined);
- ``p_paired``: two-sided p of the paired t-test over matched fine-tuning seeds, 3 significant digits
  (left out where undefined, and for tables aggregated before it existed);
- ``n``: the number of seeds.

A statistic that is undefined (one seed's SE, the baseline's own test) is left out rather than written as
null: DVC drops nulls anyway. The study table (csv) keeps every number at full precision.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from geosem.aggregate.settings import SETTING_KEYS, setting_name, varying_keys


def _percent(value: float) -> float | None:
    return None if math.isnan(value) else round(100 * value, 2)


def _significant(value: float, digits: int = 3) -> float | None:
    return None if math.isnan(value) else float(f"{value:.{digits}g}")


def metrics_entry(row: pd.Series) -> dict[str, Any]:
    """The keys of one (setting, init) file, undefined ones left out."""
    entry = {
        "miou": _percent(float(row["miou_mean"])),
        "miou_se": _percent(float(row["miou_se"])),
        "pacc": _percent(float(row["pixel_accuracy_mean"])),
        "p_welch": _significant(float(row["miou_welch_p"])),
        "p_paired": _significant(float(row.get("miou_paired_p", float("nan")))),
        "n": int(row["n_seeds"]),
    }
    return {key: value for key, value in entry.items() if value is not None}


def metrics_files(measured: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``<setting>/<init>.json`` -> its keys, for the measured rows of a study table."""
    varying = varying_keys(measured)
    files = {}
    for _, row in measured.iterrows():
        setting = setting_name({key: row[key] for key in SETTING_KEYS}, varying)
        files[f"{setting}/{row['init']}.json"] = metrics_entry(row)
    return files


def write_metrics(measured: pd.DataFrame, metrics_dir: Path) -> None:
    """Replace ``metrics_dir`` by the study's metrics files.

    The folder is built next to the old one and swapped in, so a reader never sees a half-written set and
    a setting dropped from the study leaves no stale file behind. The single nested ``<study>.json`` of
    the earlier layout is removed too, or ``dvc metrics show`` would print its hundred columns again.
    """
    metrics_dir = Path(metrics_dir)
    building = metrics_dir.with_name(f".{metrics_dir.name}.new")
    retired = metrics_dir.with_name(f".{metrics_dir.name}.old")
    for stale in (building, retired):
        shutil.rmtree(stale, ignore_errors=True)
    for relative, entry in metrics_files(measured).items():
        path = building / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(entry, sort_keys=True) + "\n")
    building.mkdir(parents=True, exist_ok=True)  # a study without measured rows: an empty folder
    if metrics_dir.exists():
        os.replace(metrics_dir, retired)
    os.replace(building, metrics_dir)
    shutil.rmtree(retired, ignore_errors=True)
    legacy = metrics_dir.with_name(f"{metrics_dir.name}.json")
    if legacy.is_file():
        legacy.unlink()
