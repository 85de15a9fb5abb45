"""What a study table's rows and columns are, and their short names.

Rows are pre-trainings (inits); a column is a setting: encoder x mode x training set size, plus the
resolution and learning rate where a study varies them and the protocol where it is not the paper's.
A setting's short name (``r18-all-n16``) heads its table column and names its DVC metrics folder
(``results/metrics/<study>/<setting>/<init>.json``), so it depends on the setting and on which keys the
study varies only: a rerun of the same study keeps its paths, and ``dvc metrics diff`` lines them up.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

BASELINE_INIT = "random"
# Score column -> the fine-tune's metrics.json key it is read from.
SCORES = {"miou": "test_miou", "pixel_accuracy": "test_pixel_accuracy"}
# What makes two cells of a study table different settings (columns); rows are inits.
SETTING_KEYS = ["encoder", "mode", "train_size", "resolution", "lr", "protocol"]
# Keys a setting's name spells out only when the study varies them (the rest are stated once).
OPTIONAL_KEYS = ("resolution", "lr")
DEFAULT_PROTOCOL = "paper"

# Short modes keep metrics paths and table headers narrow; the rest are short already.
MODE_SHORT = {"deeplabv3": "dlv3", "encoder_only": "enc"}
_RESNET = re.compile(r"resnet(?P<depth>\d+)")
_VIT = re.compile(r"vit_(?P<size>tiny|small|base|large|huge)_patch(?P<patch>\d+)_\d+")


def short_encoder(encoder: str) -> str:
    """``resnet18`` -> ``r18``, ``vit_tiny_patch16_224`` -> ``vitt16``; other timm names unchanged."""
    if match := _RESNET.fullmatch(encoder):
        return f"r{match['depth']}"
    if match := _VIT.fullmatch(encoder):
        return f"vit{match['size'][0]}{match['patch']}"
    return encoder


def varying_keys(table: pd.DataFrame) -> set[str]:
    """The setting keys that take more than one value among the measured rows."""
    return {key for key in SETTING_KEYS if table[key].nunique() > 1}


def settings_of(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The distinct settings of the measured rows, in order of first appearance."""
    return [
        dict(zip(SETTING_KEYS, values, strict=True))
        for values in table[SETTING_KEYS].drop_duplicates().itertuples(index=False)
    ]


def setting_name(setting: dict[str, Any], varying: set[str]) -> str:
    """``r18-all-n16``; ``nall`` for the whole pool (train_size 0), then ``-96x320``, ``-lr0.001`` where
    the study varies them and ``-legacy`` for a protocol other than the paper's."""
    parts = [
        short_encoder(setting["encoder"]),
        MODE_SHORT.get(setting["mode"], setting["mode"]),
        f"n{int(setting['train_size']) or 'all'}",
    ]
    if "resolution" in varying:
        parts.append(setting["resolution"])
    if "lr" in varying:
        parts.append(f"lr{setting['lr']:g}")
    if setting["protocol"] != DEFAULT_PROTOCOL:
        parts.append(setting["protocol"])
    return "-".join(parts)


def row_name(init: str, labels: dict[str, str]) -> str:
    """The paper's name of a row: ``depth_mono_rand@96x320`` -> ``Depth-Rand (pre-trained at 96x320)``."""
    base, _, pre = init.partition("@")
    name = labels.get(base, base)
    return f"{name} (pre-trained at {pre})" if pre else name
