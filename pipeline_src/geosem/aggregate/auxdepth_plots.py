"""Study-B sweep figures (paper B Figs. 1, 3, 4, 5) from a study-B summary (``geosem.aggregate.auxdepth``).

AbsRel x 1e4, mean +- SE over seeds, against the swept value: alpha (Fig. 1; alpha = 1 is the baseline,
drawn as its mean and +- SE lines, and every task's line ends at it), the auxiliary source (Fig. 3), the
share of the depth training set (Fig. 4, log axis) and, for Fig. 5, the baseline's gamma and the beta
variant's beta in two panels with the baseline at gamma 1 (dashed) and the method at its alpha
(dash-dot). ``sweep_points`` is also the csv that ``dvc plots`` draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from geosem.aggregate.auxdepth import BASELINE_TASK, _col_label, _name
from geosem.aggregate.plots import _save, plt

SWEEP_AXES = {"fig1": "alpha", "fig3": "auxiliary data", "fig4": "share of the depth training set"}


def sweep_points(measured: pd.DataFrame, layout: str, labels: dict[str, str]) -> pd.DataFrame:
    """The plotted points: depth, panel, series, value (x), AbsRel x 1e4 mean and SE, seeds."""
    base_rows = measured[(measured["task"] == BASELINE_TASK) & (measured["gamma"] == 1.0)]
    points = []
    for _, row in measured.iterrows():
        is_base = row["task"] == BASELINE_TASK
        panel, series, value = "", _col_label(row, ("task",), labels), None
        if layout == "fig1":
            value = row["alpha"]
        elif layout == "fig4":
            value = row["fraction"]
        elif layout == "fig3":
            value = "baseline" if is_base else _name(row["source"], labels)
        elif layout == "fig5":
            panel = "gamma" if is_base else "beta" if not pd.isna(row["beta"]) else "alpha"
            value = row["gamma"] if is_base else row["beta"] if panel == "beta" else row["alpha"]
        points.append(_point(row, panel, series, value, is_base))
    if layout == "fig1":  # alpha = 1 is the baseline: every task's line ends at it
        for _, base in base_rows.iterrows():
            for task in dict.fromkeys(measured.loc[measured["task"] != BASELINE_TASK, "task"]):
                points.append(_point(base, "", _name(task, labels), 1.0, False))
    return pd.DataFrame(points, columns=["depth", "panel", "series", "value", "mean", "se", "n", "baseline"])


def _point(row: pd.Series, panel: str, series: str, value: Any, baseline: bool) -> dict[str, Any]:
    mean, se = row["abs_rel_x1e4_mean"], row["abs_rel_x1e4_se"]
    return {"depth": row["depth"], "panel": panel, "series": series, "value": value} | {
        "mean": mean,
        "se": se,
        "n": row["n_seeds"],
        "baseline": baseline,
    }


def _reference_lines(axis: Any, frame: pd.DataFrame, layout: str) -> pd.DataFrame:
    """Draw the paper's horizontal references and return the points left to draw as series: Fig. 1 the
    baseline's mean (solid) and +- SE (dashed); Fig. 5 the baseline at gamma 1 (dashed) and the method at
    alpha 0.9 (dash-dot)."""
    if layout == "fig1":
        base = frame[frame["baseline"]]
        for _, row in base.iterrows():
            axis.axhline(row["mean"], color="k", lw=1, label=f"{row['series']} (alpha 1)")
            for sign in (-1, 1):
                axis.axhline(
                    row["mean"] + sign * (0 if pd.isna(row["se"]) else row["se"]), color="k", ls="--", lw=0.8
                )
        return frame.drop(base.index)
    if layout == "fig5":
        for _, row in frame[frame["panel"] == "alpha"].iterrows():
            label = f"{row['series']} (alpha {row['value']:g})"
            axis.axhline(row["mean"], color="tab:blue", ls="-.", lw=1, label=label)
        for _, row in frame[(frame["panel"] == "gamma") & (frame["value"] == 1.0)].iterrows():
            axis.axhline(row["mean"], color="k", ls="--", lw=1, label=f"{row['series']} (gamma 1)")
    return frame


def plot_sweep(points: pd.DataFrame, layout: str, out: Path, title: str) -> None:
    """AbsRel x 1e4 (mean +- SE) against the swept value, one panel per depth dataset (Fig. 5: per side)."""
    panels = list(
        dict.fromkeys((d, p) for d, p in zip(points["depth"], points["panel"], strict=True) if p != "alpha")
    )
    figure, axes = plt.subplots(
        1, max(1, len(panels)), figsize=(5 * max(1, len(panels)), 3.8), dpi=120, squeeze=False
    )
    for axis, (depth, panel) in zip(axes[0], panels, strict=False):
        frame = _reference_lines(axis, points[points["depth"] == depth], layout)
        frame = frame[frame["panel"] == panel]
        axis.set_xscale("log" if layout == "fig4" else "linear")  # before the ticks: it resets them
        categories = list(dict.fromkeys(frame["value"])) if layout == "fig3" else []
        for k, (series, line) in enumerate(frame.groupby("series", sort=False)):
            line = line if layout == "fig3" else line.sort_values("value")
            x = [categories.index(v) for v in line["value"]] if categories else line["value"]
            axis.errorbar(
                x,
                line["mean"],
                yerr=line["se"].fillna(0.0),
                marker="osD^v<>"[k % 7],
                capsize=3,
                ls="-" if not categories else "none",
                label=series,
            )
        if categories:
            axis.set_xticks(range(len(categories)), categories, rotation=30, fontsize=7)
        axis.set_xlabel(SWEEP_AXES.get(layout, panel))
        axis.set_ylabel("AbsRel x 1e4")
        axis.set_title(f"{depth} {panel}".strip(), fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no measured runs", ha="center", transform=axes[0, 0].transAxes)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, out)
