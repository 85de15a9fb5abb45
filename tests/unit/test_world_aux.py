"""Study B's auxiliary segmentation sources: ADE20K-like and SUN RGB-D-like sets in their real layouts,
each read back by its converter into its own label space."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from geosem.labelspaces import ADE150_CLASSES, IGNORE_INDEX, SUN37_CLASSES
from geosem.shards.reader import ShardSet
from geosem.sources import convert
from geosem.worlds.aux_writer import AuxWorldConfig, write_ade, write_sun

CONFIG = AuxWorldConfig(seed=2, images=8, test_share=0.25)


def _labels(shards: ShardSet) -> set[int]:
    return set(np.concatenate([np.unique(shards.read(i, ["label"])["label"]) for i in shards.ids()]).tolist())


def test_ade_layout_and_conversion(tmp_path: Path) -> None:
    root = tmp_path / "synth_ade"
    write_ade(CONFIG, root)
    base = root / "ADEChallengeData2016"
    train = sorted((base / "images" / "training").glob("*.jpg"))
    val = sorted((base / "images" / "validation").glob("*.jpg"))
    assert [p.name for p in val] == ["ADE_val_00000001.jpg", "ADE_val_00000002.jpg"] and len(train) == 6
    sizes = {cv2.imread(str(p)).shape[:2] for p in train + val}
    assert len(sizes) > 1  # image sizes vary, as in ADE20K
    info = (base / "objectInfo150.txt").read_text().splitlines()
    assert info[0] == "Idx\tRatio\tTrain\tVal\tName" and info[1].endswith("\twall") and len(info) == 151
    assert {line.split()[1] for line in (base / "sceneCategories.txt").read_text().splitlines()} == {
        "street",
        "room",
    }
    out = convert(
        "ade20k",
        root,
        tmp_path / "shards" / "32x32",
        height=32,
        width=32,
        dataset="synth_ade",
        progress=False,
    )
    shards = ShardSet(out)
    assert shards.manifest.splits == {"test": 2, "train": 6} and shards.manifest.classes == list(
        ADE150_CLASSES
    )
    labels = _labels(shards)
    assert labels <= set(range(150)) | {IGNORE_INDEX}
    # Streets and rooms both present: e.g. road (6) or sky (2) and floor (3) or ceiling (5).
    assert labels & {2, 6} and labels & {3, 5}


def test_sun_layout_and_conversion(tmp_path: Path) -> None:
    root = tmp_path / "synth_sun"
    write_sun(CONFIG, root)
    test_ids = sorted(p.name for p in (root / "SUNRGBD-test_images").glob("*.jpg"))
    train_ids = sorted(p.name for p in (root / "SUNRGBD-train_images").glob("*.jpg"))
    assert test_ids == ["img-000001.jpg", "img-000002.jpg"]  # the mirror puts the test set first
    assert train_ids[0] == "img-000003.jpg" and len(train_ids) == 6
    assert len(list((root / "sunrgbd_train_test_labels").glob("*.png"))) == 8
    out = convert(
        "sunrgbd",
        root,
        tmp_path / "shards" / "32x32",
        height=32,
        width=32,
        dataset="synth_sun",
        progress=False,
    )
    shards = ShardSet(out)
    assert shards.manifest.splits == {"test": 2, "train": 6} and shards.manifest.classes == list(
        SUN37_CLASSES
    )
    labels = _labels(shards)
    assert labels <= set(range(37)) | {IGNORE_INDEX} and {0, 1} <= labels  # wall and floor
