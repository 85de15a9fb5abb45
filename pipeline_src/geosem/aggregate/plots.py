"""Plots of aggregated results (matplotlib, headless)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd


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
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(fd)
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, out)
    finally:
        plt.close(figure)
        Path(tmp).unlink(missing_ok=True)
