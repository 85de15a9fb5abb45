"""Plots of aggregated results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from geosem.atomic import atomic_write_with


def _save(figure: plt.Figure, out: Path) -> None:
    """Write a figure atomically (a temporary file renamed into place)."""
    try:
        atomic_write_with(out, lambda tmp: figure.savefig(tmp, format="png"))
    finally:
        plt.close(figure)


def _measured(table: pd.DataFrame) -> pd.DataFrame:
    """The rows with numbers: a study csv also lists the rows that could not run, with their reason."""
    return table[table["miou_mean"].notna()]


def plot_sizes(table: pd.DataFrame, out: Path, title: str, labels: dict[str, str] | None = None) -> None:
    """Final test mIoU against the few-shot training set size N (paper A, Fig. 3): one line per init and
    encoder x mode, mean over seeds with +- SE bars; N = all is drawn at the size of the whole pool."""
    labels = labels or {}
    table = _measured(table)
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for (init, encoder, mode), frame in table.groupby(["init", "encoder", "mode"], sort=False):
        frame = frame.sort_values("train_samples")
        name = f"{labels.get(init, init)} ({encoder}, {mode})"
        axis.errorbar(
            frame["train_samples"],
            100 * frame["miou_mean"],
            yerr=100 * frame["miou_se"].fillna(0.0),
            marker="o",
            capsize=3,
            label=name,
        )
    axis.set_xscale("log", base=2)
    axis.set_xlabel("labelled training images N (log scale; rightmost = all)")
    axis.set_ylabel("final test mIoU (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, out)


def plot_resolution(table: pd.DataFrame, out: Path, title: str, labels: dict[str, str] | None = None) -> None:
    """Final test mIoU per (pre-training -> fine-tuning) resolution pair (paper A, Fig. 5): grouped bars,
    one group per pair, one bar per init, +- SE over seeds."""
    labels = labels or {}
    table = _measured(table)
    pairs = list(dict.fromkeys(table["resolution"]))
    inits = list(dict.fromkeys(table["init"]))
    width = 0.8 / max(1, len(inits))
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(pairs)), 4), dpi=120)
    for k, init in enumerate(inits):
        rows = table[table["init"] == init].set_index("resolution")
        xs = [i + k * width for i, pair in enumerate(pairs) if pair in rows.index]
        present = [pair for pair in pairs if pair in rows.index]
        axis.bar(
            xs,
            [100 * rows.loc[p, "miou_mean"] for p in present],
            width=width,
            yerr=[
                100 * (0.0 if pd.isna(rows.loc[p, "miou_se"]) else rows.loc[p, "miou_se"]) for p in present
            ],
            capsize=3,
            label=labels.get(init, init),
        )
    axis.set_xticks([i + 0.4 - width / 2 for i in range(len(pairs))], pairs, fontsize=7)
    axis.set_xlabel("pre-training -> fine-tuning resolution")
    axis.set_ylabel("final test mIoU (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, out)


def plot_curves(curves: pd.DataFrame, out: Path, title: str, score: str = "test_miou") -> None:
    """Test score against fine-tuning step, one line per init: mean over seeds, shaded +- SE."""
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    for (init, encoder, mode, size), frame in curves.groupby(
        ["init", "encoder", "mode", "train_size"], sort=False
    ):
        stats = frame.groupby("step")[score].agg(["mean", "std", "count"])
        se = (stats["std"] / stats["count"].pow(0.5)).fillna(0.0)
        label = f"{init} ({encoder}, {mode}, N={size}, {int(stats['count'].max())} seeds)"
        axis.plot(stats.index, 100 * stats["mean"], label=label)
        axis.fill_between(stats.index, 100 * (stats["mean"] - se), 100 * (stats["mean"] + se), alpha=0.2)
    axis.set_xlabel("fine-tuning step")
    axis.set_ylabel("test mIoU (%)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    _save(figure, out)


def _band(axis: plt.Axes, frame: pd.DataFrame, column: str, label: str) -> None:
    """One init's ``column`` against step: mean over its seeds, shaded +- SE where it has several."""
    stats = frame.dropna(subset=[column]).groupby("step")[column].agg(["mean", "std", "count"])
    se = (stats["std"] / stats["count"].pow(0.5)).fillna(0.0)
    (line,) = axis.plot(stats.index, stats["mean"], marker=".", label=label)
    axis.fill_between(stats.index, stats["mean"] - se, stats["mean"] + se, color=line.get_color(), alpha=0.2)


def plot_pretrain_curves(curves: pd.DataFrame, out: Path, title: str, panels: dict[str, str]) -> None:
    """Each pre-training's test scores against step (``geosem.aggregate.pretrain_steps``): one panel per
    score column in ``panels`` (column -> axis label), one line per init ``label``, mean over its
    pre-training seeds with a +- SE band; a study without a scored step gets a figure that says so."""
    columns = min(3, max(1, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), dpi=120, squeeze=False)
    for axis, (column, ylabel) in zip(axes.flat, panels.items(), strict=False):
        for label, frame in curves.dropna(subset=[column]).groupby("label", sort=False):
            _band(axis, frame, column, str(label))
        axis.set_xlabel("pre-training step")
        axis.set_ylabel(ylabel, fontsize=8)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_axis_off()
    if not panels:
        axis = axes[0, 0]
        axis.text(0.5, 0.5, "no pre-training has a scored step", ha="center", transform=axis.transAxes)
    figure.suptitle(title)
    figure.tight_layout()
    _save(figure, out)
