"""A study file's grid: loading it, and the axes whose values need resolving (sizes, resolutions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# Inits that need no pre-training run: a random encoder, or timm's ImageNet weights (from a local file).
BASELINE_INITS = ("random", "imagenet")


def load_study(study_dir: Path, name: str) -> dict[str, Any]:
    path = Path(study_dir) / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"study {name!r} has no file {path}")
    study = yaml.safe_load(path.read_text()) or {}
    study.setdefault("name", name)
    if study["name"] != name:
        raise ValueError(f"{path}: name {study['name']!r} differs from its file name {name!r}")
    return study


def train_size(value: int | str) -> int:
    """``all`` (or 0) is the whole train split."""
    return 0 if value in ("all", 0) else int(value)


Resolution = tuple[int, int]


def resolutions(study: dict[str, Any], data_cfg: dict[str, Any]) -> list[tuple[Resolution, Resolution]]:
    """(pre-training, fine-tuning) resolution pairs; by default the config's one resolution for both.

    A pair's side is ``[height, width]``, or a scale factor of ``data.height`` x ``data.width`` rounded to
    multiples of 32 (so one study file serves the CPU preset's 64x192 and the paper's 192x640)."""
    default = (data_cfg["height"], data_cfg["width"])

    def size(value: Any) -> Resolution:
        if value is None:
            return default
        if isinstance(value, int | float):
            height, width = (max(64, 32 * round(side * value / 32)) for side in default)
            return height, width
        return int(value[0]), int(value[1])

    return [
        (size(entry.get("pretrain")), size(entry.get("finetune"))) for entry in study.get("resolutions", [{}])
    ]


def same_setting(run: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two fine-tunes differ in their init only."""
    return (
        run["model"]["encoder"] == other["model"]["encoder"]
        and run["task"]["mode"] == other["task"]["mode"]
        and run["data"]["train_size"] == other["data"]["train_size"]
        and run["data"]["variant"] == other["data"]["variant"]
        and run["loop"]["lr"] == other["loop"]["lr"]
        and run["seed"] == other["seed"]
    )


def gradcam_runs(study: dict[str, Any], finetunes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The fine-tunes a study's Grad-CAM figure compares: one per init, all of one setting (the grid's
    first encoder, mode, train size, resolution and seed)."""
    if "gradcam" not in study or not finetunes:
        return None
    chosen: dict[str, str] = {}
    for run in finetunes:
        if same_setting(run, finetunes[0]):
            chosen.setdefault(run["init"]["name"], run["run_id"])
    return {"images": study["gradcam"].get("images", 4), "runs": list(chosen.values())}
