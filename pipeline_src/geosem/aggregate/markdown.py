"""A study table as markdown, in the papers' layout, aligned so it also reads as plain text.

Two tables. The scores: rows = pre-training, columns = setting (encoder x mode x N ...), each split into
mIoU and P.Acc. Markdown has one header row only, so the setting names head the columns and the first
body row names the sub-columns. Beneath it the tests: the same rows, one column per setting, the Welch p
of the mIoU against the baseline row with the seed counts of both sides.

Rendered from the study's summary frame alone (``geosem.aggregate.tables.read_table``): row names come
from its ``label`` column, rows that could not run from its ``unavailable`` column.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any

import pandas as pd

from geosem.aggregate.settings import (
    BASELINE_INIT,
    MODE_SHORT,
    SCORES,
    setting_name,
    settings_of,
    short_encoder,
    varying_keys,
)


def _score_cell(mean: float, se: float, delta: float, is_baseline: bool) -> str:
    text = f"{100 * mean:.1f}" + (f" ± {100 * se:.1f}" if not math.isnan(se) else " (1 seed, no SE)")
    if not is_baseline and not math.isnan(delta):
        text += f" ({100 * delta:+.1f})"
    return text


def _p_text(p: float) -> str:
    return "n/a" if math.isnan(p) else f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _p_cell(row: pd.Series, is_baseline: bool) -> str:
    """Welch p (seeds of both sides), then the paired p (matched seeds) where the table has one."""
    if is_baseline:
        return f"baseline ({row['n_seeds']})"
    text = f"{_p_text(row['miou_welch_p'])} ({row['n_seeds']} vs {row['baseline_n_seeds']})"
    pairs = row.get("n_pairs")
    if pairs is not None and not pd.isna(pairs):
        text += f"; paired {_p_text(float(row['miou_paired_p']))} ({int(pairs)})"
    return text


def _pretrain_runs(rows: list[pd.Series]) -> str:
    """How many pre-training runs a row's numbers come from ("–": no pre-training, "?": not recorded)."""
    counts = {row.get("n_pretrain_runs") for row in rows}
    if any(count is None or pd.isna(count) for count in counts):
        return "?"
    return "–" if counts == {0} else "/".join(str(int(count)) for count in sorted(counts))


def aligned(rows: list[list[str]]) -> list[str]:
    """A markdown table whose columns are padded to one width: the first row is the header."""
    widths = [max(len(row[col]) for row in rows) for col in range(len(rows[0]))]

    def line(row: list[str]) -> str:
        return "| " + " | ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) + " |"

    return [line(rows[0]), "|" + "|".join("-" * (width + 2) for width in widths) + "|"] + [
        line(row) for row in rows[1:]
    ]


def _match(measured: pd.DataFrame, init: str, setting: dict[str, Any]) -> pd.Series | None:
    mask = measured["init"] == init
    for key, value in setting.items():
        mask &= measured[key] == value
    rows = measured[mask]
    return None if rows.empty else rows.iloc[0]


def _legend(measured: pd.DataFrame) -> str:
    """Which abbreviations the setting names use (only those that occur)."""
    shorts = {short_encoder(e): e for e in dict.fromkeys(measured["encoder"]) if short_encoder(e) != e}
    shorts |= {MODE_SHORT[m]: m for m in dict.fromkeys(measured["mode"]) if m in MODE_SHORT}
    parts = [f"{short} = {long}" for short, long in shorts.items()]
    sizes = {int(size) for size in measured["train_size"]}
    if example := min(sizes - {0}, default=0):
        parts.append(f"n{example} = {example} labelled training images")
    if 0 in sizes:
        parts.append("nall = all labelled training images")
    return "Settings are named encoder-mode-N, like the DVC metrics folders (" + "; ".join(parts) + ")."


def _constants(measured: pd.DataFrame, varying: set[str]) -> str:
    constant = {key: measured[key].iloc[0] for key in ("resolution", "lr", "protocol") if key not in varying}
    return ", ".join(
        f"{key}: {value:g}" if isinstance(value, float) else f"{key}: {value}"
        for key, value in constant.items()
    )


def _score_rows(measured: pd.DataFrame, settings: list[dict[str, Any]], names: list[str]) -> list[list[str]]:
    rows = [["Pre-training"] + [cell for name in names for cell in (name, "")]]
    rows.append([""] + ["mIoU", "P.Acc"] * len(settings))
    for init, label in _inits(measured):
        cells = [label]
        for setting in settings:
            row = _match(measured, init, setting)
            if row is None:
                cells += ["n/a", "n/a"]
                continue
            cells += [
                _score_cell(
                    row[f"{score}_mean"], row[f"{score}_se"], row[f"{score}_delta"], init == BASELINE_INIT
                )
                for score in SCORES
            ]
        rows.append(cells)
    return rows


def _test_rows(measured: pd.DataFrame, settings: list[dict[str, Any]], names: list[str]) -> list[list[str]]:
    rows = [["Pre-training", *names, "seeds", "pre-trainings"]]
    for init, label in _inits(measured):
        cells, seeds, matched = [label], set(), []
        for setting in settings:
            row = _match(measured, init, setting)
            if row is None:
                cells.append("n/a")
                continue
            cells.append(_p_cell(row, init == BASELINE_INIT))
            seeds |= {int(seed) for seed in str(row["seeds"]).split()}
            matched.append(row)
        rows.append([*cells, " ".join(str(seed) for seed in sorted(seeds)), _pretrain_runs(matched)])
    return rows


def _inits(measured: pd.DataFrame) -> list[tuple[str, str]]:
    """(init, row name) of the measured rows, in table order."""
    return list(dict.fromkeys(zip(measured["init"], measured["label"], strict=True)))


def _unavailable_rows(
    unavailable: pd.DataFrame, settings: list[dict[str, Any]], cells_per_setting: int, tail: list[str]
) -> list[list[str]]:
    """One row per init that could not run: ``unavailable`` under the settings of its encoders."""
    rows = []
    for label, frame in unavailable.groupby("label", sort=False):
        encoders = set(frame["encoder"])
        cells = [str(label)]
        for setting in settings:
            cells += ["unavailable" if setting["encoder"] in encoders else "n/a"] * cells_per_setting
        rows.append(cells + tail)
    return rows


def _wrapped(paragraph: str) -> list[str]:
    """A paragraph in lines of at most 110 characters: markdown joins them, a terminal shows them whole."""
    return textwrap.wrap(paragraph, width=110, break_long_words=False, break_on_hyphens=False)


def markdown_table(measured: pd.DataFrame, study: str, unavailable: pd.DataFrame | None = None) -> str:
    """The scores table, the tests table beneath it, and the reasons of the rows that could not run."""
    unavailable = unavailable if unavailable is not None else pd.DataFrame(columns=["label", "encoder"])
    settings = settings_of(measured)
    varying = varying_keys(measured)
    names = [setting_name(setting, varying) for setting in settings]
    baseline = next((label for init, label in _inits(measured) if init == BASELINE_INIT), BASELINE_INIT)
    scores = _score_rows(measured, settings, names) + _unavailable_rows(unavailable, settings, 2, [])
    tests = _test_rows(measured, settings, names) + _unavailable_rows(unavailable, settings, 1, ["–", "–"])
    lines = [
        f"# Study `{study}`: test mIoU and pixel accuracy (%)",
        "",
        *_wrapped(
            "Mean ± standard error over seeds (ddof=1); in brackets the delta of the mean to the "
            f"`{baseline}` row. {_legend(measured)} {_constants(measured, varying)}."
        ),
        "",
        *aligned(scores),
        "",
        *_wrapped(
            f"Two-sided Welch t-test of the mIoU over seeds against the `{baseline}` row of the same "
            "setting: p, in brackets the seeds of the row vs the baseline's (n/a with fewer than 2 on either "
            "side); then the paired t-test over matched fine-tuning seeds (seed s against the baseline's "
            "seed s: the same few-shot subset and data order), in brackets the pairs. pre-trainings: the "
            "pre-training runs behind the row (1: one shared by every seed, so the spread is fine-tuning "
            "noise only)."
        ),
        "",
        *aligned(tests),
    ]
    if not unavailable.empty:
        lines += ["", "Unavailable on this machine (not run):", ""]
        lines += [
            f"- {row['label']} ({row['encoder']}): {row['unavailable']}" for _, row in unavailable.iterrows()
        ]
    return "\n".join(lines) + "\n"
