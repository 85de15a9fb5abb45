"""Study-B tables and figures (paper B): finished auxdepth runs -> csv, markdown, DVC metrics, sweep plots.

A setting is one point of a study-B grid (depth dataset, task, auxiliary source, alpha, beta, gamma,
training-set fraction, backbone); its cell is the mean +- standard error (ddof=1) over seeds of AbsRel x
1e4, the paper's number. Each setting is compared with its baseline: the run without auxiliary task
(task none, gamma 1) on the same depth data and backbone. Against it: the Gain % (relative AbsRel
improvement, paper B Table 3: 100 (baseline - setting) / baseline) and a two-sided Welch t-test of the
AbsRel over seeds (``geosem.aggregate.tables.welch_test``). The markdown pivots the settings into the
layout of the study's table or figure (``LAYOUTS``), the best and second-best cell of a row in bold and
italic as in the paper, then the tests and the full metric set.

``aggregate_auxdepth`` writes the summary csv (every number) and renders from it; ``render_auxdepth``
renders markdown, metrics and the sweep plot (``geosem.aggregate.auxdepth_plots``) from a csv alone
(``geosem aggregate-auxdepth``). docs/study-b.md has the layouts.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from geosem.aggregate.dvc_metrics import _significant
from geosem.aggregate.markdown import _p_text, _wrapped, aligned
from geosem.aggregate.tables import _standard_error, welch_test
from geosem.atomic import atomic_write_text
from geosem.metrics.depth import DEPTH_METRIC_NAMES
from geosem.snapshot import read_auxdepth_snapshot

SETTING_KEYS = ["depth", "task", "source", "alpha", "beta", "gamma", "fraction", "backbone"]
BASELINE_TASK = "none"
# Row keys and column keys of each layout; repeat: the baseline column on every row (its baseline).
LAYOUTS: dict[str, dict[str, Any]] = {
    "table3": {"rows": ("depth",), "cols": ("task",), "repeat": True, "title": "Table 3"},
    "table4": {"rows": ("depth",), "cols": ("task",), "repeat": True, "title": "Table 4"},
    "table6": {"rows": ("depth",), "cols": ("task",), "repeat": True, "title": "Table 6"},
    "fig3": {"rows": ("depth",), "cols": ("source", "task"), "repeat": True, "title": "Fig. 3"},
    "fig4": {"rows": ("depth", "fraction"), "cols": ("task",), "repeat": True, "title": "Fig. 4"},
    "fig1": {"rows": ("depth", "alpha"), "cols": ("task",), "repeat": True, "title": "Fig. 1"},
    "fig5": {"rows": ("depth", "knob"), "cols": ("task",), "repeat": False, "title": "Fig. 5"},
}
HEADS = ("AbsRel", "SqRel", "RMSE", "RMSElog", "log10", "SIlog", "δ1", "δ2", "δ3")
METRIC_HEADS = dict(zip(DEPTH_METRIC_NAMES, HEADS, strict=True))


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(snapshot, metrics) of a finished auxdepth run."""
    for name in ("run.yaml", "metrics.json"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"{run_dir / name} is missing: the run has not finished")
    snapshot = read_auxdepth_snapshot(run_dir / "run.yaml")
    return dict(snapshot), json.loads((run_dir / "metrics.json").read_text())


def _source(datasets: list[str], depth: str, mix6: list[str]) -> str:
    """mix6, same (the depth set itself), or the datasets' names; '' without auxiliary data."""
    if not datasets:
        return ""
    if sorted(datasets) == sorted(mix6) and len(datasets) > 1:
        return "mix6"
    return "same" if datasets == [depth] else "+".join(datasets)


def collect_runs(run_dirs: list[Path], mix6: list[str]) -> pd.DataFrame:
    """One row per run: its setting, seed and every depth metric."""
    rows = []
    for run_dir in map(Path, run_dirs):
        run, metrics = _read_run(run_dir)
        depth, aux = run["depth"], run["aux"]
        missing = [f"depth_{name}" for name in DEPTH_METRIC_NAMES if f"depth_{name}" not in metrics]
        if missing:
            raise KeyError(f"{run_dir / 'metrics.json'} lacks {missing}")
        beta = aux.get("beta")
        rows.append(
            {
                "run_id": run["run_id"],
                "depth": depth["dataset"],
                "task": aux["task"],
                "source": _source([d["dataset"] for d in aux["datasets"]], depth["dataset"], mix6),
                "alpha": float(aux["alpha"]),
                "beta": float("nan") if beta is None else float(beta),
                "gamma": float(run["loop"]["gamma"]),
                "fraction": float(depth["fraction"]),
                "backbone": f"{run['backbone']['name']}:{run['backbone']['layout']}",
                "seed": int(run["seed"]),
                **{name: float(metrics[f"depth_{name}"]) for name in DEPTH_METRIC_NAMES},
            }
        )
    return pd.DataFrame(rows, columns=["run_id", *SETTING_KEYS, "seed", *DEPTH_METRIC_NAMES])


def _baseline_key(row: pd.Series | dict[str, Any]) -> tuple[Any, ...]:
    return (row["depth"], row["fraction"], row["backbone"])


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per setting: mean and SE of every metric over seeds, Gain % and Welch test of the AbsRel
    against the setting's baseline (task none, gamma 1, same depth data and backbone)."""
    is_base = (runs["task"] == BASELINE_TASK) & (runs["gamma"] == 1.0)
    baselines = {
        _baseline_key(f.iloc[0]): f for _, f in runs[is_base].groupby(["depth", "fraction", "backbone"])
    }
    records = []
    for group, frame in runs.groupby(SETTING_KEYS, sort=False, dropna=False):
        record: dict[str, Any] = dict(zip(SETTING_KEYS, group, strict=True))
        record |= {"n_seeds": len(frame), "seeds": " ".join(str(s) for s in sorted(frame["seed"]))}
        for name in DEPTH_METRIC_NAMES:
            record[f"{name}_mean"] = float(frame[name].mean())
            record[f"{name}_se"] = _standard_error(frame[name])
        record["abs_rel_x1e4_mean"] = 1e4 * record["abs_rel_mean"]
        record["abs_rel_x1e4_se"] = 1e4 * record["abs_rel_se"]
        base = baselines.get(_baseline_key(record))
        own = record["task"] == BASELINE_TASK and record["gamma"] == 1.0
        record["baseline_n_seeds"] = 0 if base is None else len(base)
        record["gain_pct"] = float("nan")
        record["welch_t"], record["welch_p"] = float("nan"), float("nan")
        if base is not None and not own:
            base_mean = float(base["abs_rel"].mean())
            record["gain_pct"] = 100.0 * (base_mean - record["abs_rel_mean"]) / base_mean
            record["welch_t"], record["welch_p"] = welch_test(frame["abs_rel"], base["abs_rel"])
        records.append(record)
    return pd.DataFrame(records)


def study_frame(table: pd.DataFrame, unavailable: list[dict[str, str]]) -> pd.DataFrame:
    """The summary plus the settings that could not run here (``unavailable``: the reason, no numbers)."""
    missing = pd.DataFrame(
        [
            {"depth": r["depth"], "task": r["setting"], "n_seeds": 0, "unavailable": r["reason"]}
            for r in unavailable
        ],
        columns=["depth", "task", "n_seeds", "unavailable"],
    )
    frame = (
        table.assign(unavailable="") if len(table) else table.reindex(columns=[*table.columns, "unavailable"])
    )
    return pd.concat([frame, missing], ignore_index=True) if len(missing) else frame


def read_table(table_csv: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(measured settings, settings unavailable here) of a study-B csv."""
    text = {key: str for key in ("depth", "task", "source", "backbone", "seeds", "unavailable")}
    frame = pd.read_csv(table_csv, dtype=text, keep_default_na=False, na_values=[""])
    for key in text:
        frame[key] = frame[key].fillna("") if key in frame else ""
    for key in ("n_seeds", "baseline_n_seeds"):  # absent when nothing could run
        frame[key] = frame[key].fillna(0) if key in frame else 0
    could_not_run = frame["unavailable"] != ""
    measured = frame[~could_not_run].astype({"n_seeds": int, "baseline_n_seeds": int})
    return measured.reset_index(drop=True), frame[could_not_run].reset_index(drop=True)


# --- labels and the pivot ---------------------------------------------------------------------------


def _name(value: str, labels: dict[str, str]) -> str:
    return labels.get(value, value)


def _knob(row: pd.Series) -> str:
    """Fig. 5's row: the baseline's gamma, the beta variant's beta, or the method's alpha."""
    if row["task"] == BASELINE_TASK:
        return f"γ = {row['gamma']:g}"
    return f"β = {row['beta']:g}" if not pd.isna(row["beta"]) else f"α = {row['alpha']:g}"


def _row_label(row: pd.Series, keys: tuple[str, ...]) -> tuple[str, ...]:
    names = {
        "depth": row["depth"],
        "fraction": f"{100 * row['fraction']:g} %",
        "alpha": f"α = {row['alpha']:g}",
    }
    return tuple(_knob(row) if key == "knob" else names[key] for key in keys)


def _col_label(row: pd.Series, keys: tuple[str, ...], labels: dict[str, str]) -> str:
    if row["task"] == BASELINE_TASK:
        return _name(BASELINE_TASK, labels)
    parts = [_name(row["task"], labels)]
    if "source" in keys:
        parts.insert(0, _name(row["source"], labels))
    return " ".join(parts)


def pivot(
    measured: pd.DataFrame, layout: str, labels: dict[str, str]
) -> dict[tuple[str, ...], dict[str, pd.Series]]:
    """Row label -> column label -> the setting shown there, in the layout's order (baseline first)."""
    spec = LAYOUTS[layout]
    rows: dict[tuple[str, ...], dict[str, pd.Series]] = {}
    base = measured[(measured["task"] == BASELINE_TASK) & (measured["gamma"] == 1.0)]
    baselines = {_baseline_key(row): row for _, row in base.iterrows()}
    ordered = pd.concat([base, measured.drop(base.index)]) if spec["repeat"] else measured
    for _, row in ordered.iterrows():
        label = _row_label(row, spec["rows"])
        cells = rows.setdefault(label, {})
        if spec["repeat"] and _baseline_key(row) in baselines:
            cells.setdefault(_name(BASELINE_TASK, labels), baselines[_baseline_key(row)])
        cells[_col_label(row, spec["cols"], labels)] = row
    if spec["rows"][1:] in (("alpha",), ("fraction",)):  # sweeps read in order, whatever the grid's order
        depths = list(dict.fromkeys(measured["depth"]))
        value = {_row_label(r, spec["rows"]): r[spec["rows"][1]] for _, r in measured.iterrows()}
        rows = dict(sorted(rows.items(), key=lambda item: (depths.index(item[0][0]), value[item[0]])))
    return rows


def _cell(row: pd.Series | None, rank: int) -> str:
    if row is None:
        return "–"
    se = row["abs_rel_x1e4_se"]
    text = f"{row['abs_rel_x1e4_mean']:.0f}" + (f" ± {se:.0f}" if not math.isnan(se) else " (1 seed)")
    return f"**{text}**" if rank == 0 else f"*{text}*" if rank == 1 else text


def _score_rows(
    rows: dict, columns: list[str], layout: str, mix6: list[str], head: list[str]
) -> list[list[str]]:
    in_mix6 = layout == "table3"
    out = [[*head, *(["In MIX6"] if in_mix6 else []), *columns, "Gain %"]]
    for label, cells in rows.items():
        # Ranked as the paper marks them: the best of two or more, the second best of three or more.
        order = sorted(cells, key=lambda c: cells[c]["abs_rel_mean"])[: max(0, len(cells) - 1)][:2]
        gains = [cells[c]["gain_pct"] for c in cells if not math.isnan(cells[c]["gain_pct"])]
        line = [*label, *(["✓" if label[0] in mix6 else "✗"] if in_mix6 else [])]
        line += [_cell(cells.get(c), order.index(c) if c in order else -1) for c in columns]
        out.append([*line, f"{max(gains):.1f}" if gains else "–"])
    return out


def _test_rows(rows: dict, columns: list[str], head: list[str]) -> list[list[str]]:
    out = [[*head, *columns]]
    for label, cells in rows.items():
        line = list(label)
        for column in columns:
            row = cells.get(column)
            if row is None:
                line.append("–")
            elif math.isnan(row["gain_pct"]):
                line.append(f"baseline ({row['n_seeds']})")
            else:
                line.append(f"{_p_text(row['welch_p'])} ({row['n_seeds']} vs {row['baseline_n_seeds']})")
        out.append(line)
    return out


def _metric_rows(measured: pd.DataFrame, layout: str, labels: dict[str, str]) -> list[list[str]]:
    spec = LAYOUTS[layout]
    out = [["Setting", *METRIC_HEADS.values(), "seeds"]]
    for _, row in measured.iterrows():
        name = " / ".join([*_row_label(row, spec["rows"]), _col_label(row, spec["cols"], labels)])
        cells = [
            f"{row[f'{m}_mean']:.4g}" + ("" if math.isnan(row[f"{m}_se"]) else f" ± {row[f'{m}_se']:.2g}")
            for m in METRIC_HEADS
        ]
        out.append([name, *cells, str(row["seeds"])])
    return out


def markdown(study: str, measured: pd.DataFrame, unavailable: pd.DataFrame, spec: dict[str, Any]) -> str:
    layout, labels, mix6 = spec["layout"], spec.get("labels", {}), spec.get("mix6", [])
    lines = [f"# Study `{study}` (paper B, {LAYOUTS[layout]['title']}): AbsRel x 1e4 (lower is better)", ""]
    if len(measured):
        rows = pivot(measured, layout, labels)
        columns = list(dict.fromkeys(c for cells in rows.values() for c in cells))
        head = ["Depth data" if k == "depth" else "" for k in LAYOUTS[layout]["rows"]]
        seeds = " ".join(sorted(set(" ".join(measured["seeds"]).split()), key=int))
        lines += _wrapped(
            f"Mean ± standard error over seeds ({seeds}; ddof=1); per row the best in bold, the second best "
            "in italic. Gain %: the best cell's relative AbsRel improvement over the row's baseline (no "
            "auxiliary task, same data and backbone); alpha = 1 is the baseline itself."
        )
        lines += ["", *aligned(_score_rows(rows, columns, layout, mix6, head)), ""]
        lines += _wrapped(
            "Two-sided Welch t-test of the AbsRel over seeds against the row's baseline: p (seeds vs seeds)."
        )
        lines += ["", *aligned(_test_rows(rows, columns, head)), "", "Every metric (mean ± SE):", ""]
        lines += aligned(_metric_rows(measured, layout, labels))
    else:
        lines.append("No setting of this study could run on this machine.")
    if len(unavailable):
        lines += ["", "Unavailable on this machine (not run):", ""]
        lines += [f"- {r['depth']} ({r['task']}): {r['unavailable']}" for _, r in unavailable.iterrows()]
    return "\n".join(lines) + "\n"


# --- DVC metrics -------------------------------------------------------------------------------


def _row_slug(row: pd.Series, keys: tuple[str, ...]) -> str:
    """``synth_indoor``, ``synth_indoor-f0.1``, ``synth_indoor-a0.2``, ``synth_indoor-g0.5``: a cell's
    row in ASCII, from its values (a label may change, a metrics path should not)."""
    parts = [row["depth"]]
    for key in keys[1:]:
        if key == "fraction":
            parts.append(f"f{row['fraction']:g}")
        elif key == "alpha" or (key == "knob" and row["task"] != BASELINE_TASK and pd.isna(row["beta"])):
            parts.append(f"a{row['alpha']:g}")
        else:
            parts.append(f"g{row['gamma']:g}" if row["task"] == BASELINE_TASK else f"b{row['beta']:g}")
    return "-".join(parts)


def metrics_files(measured: pd.DataFrame, layout: str) -> dict[str, dict[str, Any]]:
    """``<row>/<column>.json`` -> the few keys of one cell (undefined ones left out)."""
    spec, files = LAYOUTS[layout], {}
    for _, row in measured.iterrows():
        entry = {
            "abs_rel_x1e4": round(float(row["abs_rel_x1e4_mean"]), 1),
            "abs_rel_x1e4_se": _significant(float(row["abs_rel_x1e4_se"])),
            "rmse": _significant(float(row["rmse_mean"]), 4),
            "delta1": _significant(float(row["delta1_mean"]), 4),
            "gain_pct": _significant(float(row["gain_pct"])),
            "p_welch": _significant(float(row["welch_p"])),
            "n": int(row["n_seeds"]),
        }
        column = row["task"] + (f"-{row['source']}" if row["source"] else "")
        path = f"{_row_slug(row, spec['rows'])}/{column}.json"
        files[path] = {key: value for key, value in entry.items() if value is not None}
    return files


def write_metrics(files: dict[str, dict[str, Any]], metrics_dir: Path) -> None:
    """Replace ``metrics_dir`` by ``files``, built beside it and swapped in (no half-written set)."""
    building = metrics_dir.with_name(f".{metrics_dir.name}.new")
    retired = metrics_dir.with_name(f".{metrics_dir.name}.old")
    for stale in (building, retired):
        shutil.rmtree(stale, ignore_errors=True)
    building.mkdir(parents=True)
    for relative, entry in files.items():
        (building / relative).parent.mkdir(parents=True, exist_ok=True)
        (building / relative).write_text(json.dumps(entry, sort_keys=True) + "\n")
    if metrics_dir.exists():
        os.replace(metrics_dir, retired)
    os.replace(building, metrics_dir)
    shutil.rmtree(retired, ignore_errors=True)


def render_auxdepth(
    study: str,
    table_csv: Path,
    spec: dict[str, Any],
    *,
    table_md: Path | None = None,
    metrics_dir: Path | None = None,
    plot: Path | None = None,
    sweep_csv: Path | None = None,
) -> pd.DataFrame:
    """Write what is asked for (markdown, metrics, plot and its points) from the study csv alone."""
    measured, unavailable = read_table(Path(table_csv))
    layout = spec["layout"]
    if table_md is not None:
        atomic_write_text(Path(table_md), markdown(study, measured, unavailable, spec))
    if metrics_dir is not None:
        write_metrics(metrics_files(measured, layout), Path(metrics_dir))
    if plot is not None or sweep_csv is not None:
        from geosem.aggregate.auxdepth_plots import plot_sweep, sweep_points  # matplotlib only here

        points = sweep_points(measured, layout, spec.get("labels", {}))
        if sweep_csv is not None:
            atomic_write_text(
                Path(sweep_csv), points.assign(study=study).to_csv(index=False, float_format="%.6g")
            )
        if plot is not None:
            plot_sweep(points, layout, Path(plot), f"{study} (paper B {LAYOUTS[layout]['title']})")
    return measured


def aggregate_auxdepth(
    study: str, run_dirs: list[Path], spec: dict[str, Any], *, table_csv: Path, **outputs: Any
) -> pd.DataFrame:
    """Summarise finished auxdepth runs into the study csv, then render the asked outputs from it."""
    runs = collect_runs(run_dirs, spec.get("mix6", []))
    frame = study_frame(summarise(runs) if len(runs) else pd.DataFrame(), spec.get("unavailable", []))
    atomic_write_text(Path(table_csv), frame.to_csv(index=False, float_format="%.6g"))
    return render_auxdepth(study, table_csv, spec, **outputs)
