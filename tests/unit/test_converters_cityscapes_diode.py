"""The Cityscapes and DIODE converters on tiny trees fabricated here in the real layouts: label ids to
train ids, disparity to depth, the bottom crop, sequence neighbours, DIODE's mask, cap and scene filter,
and one error per kind of bad input."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from geosem.geometry.camera import scale_intrinsics
from geosem.labelspaces import IGNORE_INDEX, cityscapes_id_to_train_id
from geosem.shards.reader import ShardDataset, ShardSet
from geosem.sources import convert
from geosem.sources.catalog import dataset_spec
from geosem.tasks import get_task

H, W = 32, 64  # raw Cityscapes frames here (the real ones are 1024 x 2048)
FX, FY, U0, V0, BASELINE = 70.0, 71.0, 30.5, 15.25, 0.2
KEYFRAMES = {  # folder -> (city, sequence) of each labelled frame (frame 19 of its snippet)
    "train": [("aachen", "000000"), ("aachen", "000001"), ("bad-honnef", "000007")],
    "val": [("lindau", "000003")],
}
CAR, PARKING = 26, 9  # label ids: train id 13, and 255 (not one of the 19)


def _rng(*key: int | str) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, str(k))) for k in key])


def _rgb(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image[:, :, ::-1])  # RGB -> OpenCV's BGR


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def _frame_image(stem: str, side: str) -> np.ndarray:
    return _rng(stem, side).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _label_ids(stem: str) -> np.ndarray:
    ids = _rng(stem, "label").integers(0, 34, (H, W)).astype(np.uint8)
    ids[1, 1], ids[1, 2], ids[1, 3] = CAR, PARKING, 0
    return ids


def _disparity(stem: str) -> np.ndarray:
    p = _rng(stem, "disparity").integers(2, 20000, (H, W)).astype(np.uint16)
    p[2, 3], p[2, 4], p[2, 5] = 1 + 256 * 8, 0, 1  # d = 8; invalid; zero disparity
    return p


def _cityscapes(root: Path, *, sequence: bool = True, stereo: bool = True, depth: bool = True) -> Path:
    for folder, frames in KEYFRAMES.items():
        for city, seq in frames:
            stem = f"{city}_{seq}_000019"
            where = f"{folder}/{city}/{stem}"
            _rgb(root / f"leftImg8bit/{where}_leftImg8bit.png", _frame_image(stem, "left"))
            _png(root / f"gtFine/{where}_gtFine_labelIds.png", _label_ids(stem))
            if stereo:
                _rgb(root / f"rightImg8bit/{where}_rightImg8bit.png", _frame_image(stem, "right"))
            if depth:
                _png(root / f"disparity/{where}_disparity.png", _disparity(stem))
                camera = {
                    "extrinsic": {"baseline": BASELINE, "pitch": 0.04, "x": 1.7, "y": 0.1, "z": 1.2},
                    "intrinsic": {"fx": FX, "fy": FY, "u0": U0, "v0": V0},
                }
                (root / f"camera/{where}_camera.json").parent.mkdir(parents=True, exist_ok=True)
                (root / f"camera/{where}_camera.json").write_text(json.dumps(camera))
            for frame in (18, 19, 20) if sequence else ():
                neighbour = f"{city}_{seq}_{frame:06d}"
                base = f"{folder}/{city}/{neighbour}"
                _rgb(root / f"leftImg8bit_sequence/{base}_leftImg8bit.png", _frame_image(neighbour, "left"))
                if stereo:
                    _rgb(
                        root / f"rightImg8bit_sequence/{base}_rightImg8bit.png",
                        _frame_image(neighbour, "right"),
                    )
    # The test split has no public labels: its images must be left out.
    _rgb(
        root / "leftImg8bit/test/berlin/berlin_000000_000019_leftImg8bit.png", _frame_image("berlin", "left")
    )
    return root


@pytest.fixture(scope="module")
def city_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _cityscapes(tmp_path_factory.mktemp("cityscapes"))


@pytest.fixture(scope="module")
def city_shards(city_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> ShardSet:
    out = tmp_path_factory.mktemp("city_shards") / f"{H}x{W}-v1"
    return ShardSet(convert("cityscapes", city_raw, out, height=H, width=W, progress=False))


def test_cityscapes_labels_depth_right_and_camera(city_shards: ShardSet) -> None:
    shards = city_shards
    assert shards.manifest.label_space == "cityscapes19" and len(shards.manifest.classes) == 19
    assert shards.manifest.splits == {"test": 1, "test_context": 2, "train": 3, "train_context": 6}
    assert not any("berlin" in i for i in shards.ids())
    stem = "aachen_000001_000019"
    sample = shards.read(stem, ["image", "right", "label", "depth"])
    assert np.array_equal(sample["image"], _frame_image(stem, "left"))
    assert np.array_equal(sample["right"], _frame_image(stem, "right"))
    label = sample["label"]
    assert (label[1, 1], label[1, 2], label[1, 3]) == (13, IGNORE_INDEX, IGNORE_INDEX)
    assert np.array_equal(label, cityscapes_id_to_train_id()[_label_ids(stem)])
    depth = sample["depth"]
    assert depth[2, 3] == np.float32(BASELINE * FX / ((1 + 256 * 8 - 1) / 256))  # 1.75 m
    assert depth[2, 4] == 0.0 and depth[2, 5] == 0.0  # p = 0 invalid, p = 1 no finite depth
    p = _disparity(stem).astype(np.float64)
    expected = BASELINE * FX / ((np.maximum(p, 2) - 1) / 256)  # max: no division by zero below
    assert np.allclose(depth, np.where(p > 1, expected, 0.0), rtol=1e-6)
    row = shards.row(stem)
    assert (row["fx"], row["fy"], row["cx"], row["cy"], row["baseline"]) == (FX, FY, U0, V0, BASELINE)
    assert (row["split"], row["sequence"], row["frame"]) == ("train", "aachen_000001", 19)


def test_cityscapes_neighbours_are_frames_minus_and_plus_one(city_shards: ShardSet) -> None:
    shards = city_shards
    row = shards.row("bad-honnef_000007_000019")
    assert (row["prev_id"], row["next_id"]) == ("bad-honnef_000007_000018", "bad-honnef_000007_000020")
    for neighbour in (row["prev_id"], row["next_id"]):
        stored = shards.read(neighbour, ["image", "right", "label", "depth"])
        assert np.array_equal(stored["image"], _frame_image(neighbour, "left"))
        assert np.array_equal(stored["right"], _frame_image(neighbour, "right"))
        # Stored only to be read as a neighbour: no label, no depth (no disparity_sequence/ here).
        assert (stored["label"] == IGNORE_INDEX).all() and (stored["depth"] == 0).all()
        context = shards.row(neighbour)
        assert context["split"] == "train_context" and context["fx"] == FX
        assert pd.isna(context["prev_id"]) and pd.isna(context["next_id"])
    assert shards.row("lindau_000003_000020")["split"] == "test_context"


@pytest.mark.parametrize("task", ["segmentation", "depth_mono", "depth_stereo", "depth_mono_stereo"])
def test_tasks_read_cityscapes_through_their_own_field_lists(city_shards: ShardSet, task: str) -> None:
    fields = get_task(task).fields
    dataset = ShardDataset(city_shards, city_shards.ids("train"), fields)
    assert len(dataset) == 3  # every labelled frame has both neighbours
    sample = dataset[0]
    assert set(sample) == set(fields)
    assert sample["image"].shape == (3, H, W)
    if "image_prev" in fields:
        prev = city_shards.row(dataset.ids[0])["prev_id"]
        assert np.array_equal(
            (sample["image_prev"] * 255).round().byte().permute(1, 2, 0).numpy(), _frame_image(prev, "left")
        )
    if "K" in fields:
        assert sample["K"][0, 0] == FX and sample["K"][1, 2] == V0


def test_cityscapes_bottom_crop_cuts_every_field_before_resizing(city_raw: Path, tmp_path: Path) -> None:
    kept = H - H // 4
    cropped = ShardSet(
        convert(
            "cityscapes", city_raw, tmp_path / "a", height=kept, width=W, bottom_crop=0.25, progress=False
        )
    )
    assert cropped.manifest.parameters["bottom_crop"] == 0.25
    stem = "aachen_000000_000019"
    sample = cropped.read(stem, ["image", "right", "label", "depth"])
    full = ShardSet(convert("cityscapes", city_raw, tmp_path / "b", height=H, width=W, progress=False)).read(
        stem, ["image", "right", "label", "depth"]
    )
    for name in sample:
        assert np.array_equal(sample[name], full[name][:kept]), name
    neighbour = cropped.row(stem)["prev_id"]
    assert np.array_equal(cropped.read(neighbour, ["image"])["image"], _frame_image(neighbour, "left")[:kept])
    assert cropped.row(stem)["cy"] == V0  # cutting rows at the bottom moves no pixel
    # Resized after the crop: intrinsics scaled from the cropped size, labels and depth NEAREST.
    small = ShardSet(
        convert("cityscapes", city_raw, tmp_path / "c", height=12, width=32, bottom_crop=0.25, progress=False)
    )
    row = small.row(stem)
    expected = scale_intrinsics((FX, FY, U0, V0), (kept, W), (12, 32))
    assert np.allclose([row["fx"], row["fy"], row["cx"], row["cy"]], expected)
    label = small.read(stem, ["label"])["label"]
    assert set(np.unique(label)) <= set(np.unique(sample["label"]))


def test_cityscapes_without_the_optional_folders(tmp_path: Path) -> None:
    raw = _cityscapes(tmp_path / "raw", sequence=False, stereo=False, depth=False)
    shards = ShardSet(convert("cityscapes", raw, tmp_path / "out", height=16, width=32, progress=False))
    assert set(shards.manifest.fields) == {"image", "label"}
    assert shards.manifest.splits == {"test": 1, "train": 3}
    assert shards.index["prev_id"].isna().all() and shards.index["fx"].isna().all()
    assert len(ShardDataset(shards, shards.ids("train"), get_task("segmentation").fields)) == 3


def _drop(path: str) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        target = root / path
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return target

    return mutate


def _camera_without(section: str, key: str) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        path = root / "camera/train/aachen/aachen_000000_000019_camera.json"
        data = json.loads(path.read_text())
        del data[section][key]
        path.write_text(json.dumps(data))
        return path

    return mutate


def _wrong_label_size(root: Path) -> Path:
    path = root / "gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"
    _png(path, np.zeros((H // 2, W), np.uint8))
    return path


@pytest.mark.parametrize(
    ("mutate", "error", "words"),
    [
        (_drop("leftImg8bit"), FileNotFoundError, "is missing"),
        (
            _drop("gtFine/train/aachen/aachen_000001_000019_gtFine_labelIds.png"),
            FileNotFoundError,
            "the label of",
        ),
        (
            _drop("disparity/val/lindau/lindau_000003_000019_disparity.png"),
            FileNotFoundError,
            "the disparity of",
        ),
        (
            _drop("leftImg8bit_sequence/train/aachen/aachen_000000_000020_leftImg8bit.png"),
            FileNotFoundError,
            "neighbour",
        ),
        (_drop("rightImg8bit_sequence"), FileNotFoundError, "need theirs"),
        (_camera_without("intrinsic", "fx"), KeyError, "intrinsic.fx"),
        (_camera_without("extrinsic", "baseline"), KeyError, "extrinsic.baseline"),
        (_wrong_label_size, ValueError, "but"),
    ],
)
def test_cityscapes_bad_input_names_the_file(
    city_raw: Path, tmp_path: Path, mutate: Callable[[Path], Path], error: type[Exception], words: str
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(city_raw, raw)
    culprit = mutate(raw)
    with pytest.raises(error, match=f"{re.escape(str(culprit))}.*{words}|{words}.*{re.escape(str(culprit))}"):
        convert("cityscapes", raw, tmp_path / "out", height=H, width=W, progress=False)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------------
# DIODE

DH, DW = 12, 16
SCANS = {  # (folder, scene type) -> its scene and scan numbers
    ("train", "indoors"): [(0, 0), (0, 1)],
    ("train", "outdoor"): [(1, 2)],
    ("val", "indoors"): [(2, 3)],
    ("val", "outdoor"): [(3, 4)],
}


def _scan_name(kind: str, scene: int, scan: int) -> str:
    return f"{scene:05d}_{scan:05d}_{kind}_000_010"


def _diode_depth(name: str) -> tuple[np.ndarray, np.ndarray]:
    depth = _rng(name, "depth").uniform(0.6, 60.0, (DH, DW, 1)).astype(np.float32)
    mask = np.ones((DH, DW), np.float32)
    mask[0, 0] = 0  # masked
    depth[0, 1], depth[0, 2], depth[0, 3] = 90.0, 80.0, np.nan  # above the cap, at the cap, not a number
    return depth, mask


def _diode(root: Path) -> Path:
    for (folder, kind), scans in SCANS.items():
        for scene, scan in scans:
            name = _scan_name(kind, scene, scan)
            where = root / folder / kind / f"scene_{scene:05d}" / f"scan_{scan:05d}"
            _rgb(where / f"{name}.png", _rng(name).integers(0, 256, (DH, DW, 3), dtype=np.uint8))
            depth, mask = _diode_depth(name)
            np.save(where / f"{name}_depth.npy", depth)
            np.save(where / f"{name}_depth_mask.npy", mask)
    return root


@pytest.fixture(scope="module")
def diode_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _diode(tmp_path_factory.mktemp("diode"))


def test_diode_mask_cap_splits_and_no_label_space(diode_raw: Path, tmp_path: Path) -> None:
    # label_interpolation=nearest is what the workflow passes to every converter.
    out = convert(
        "diode", diode_raw, tmp_path / "d", height=DH, width=DW, progress=False, label_interpolation="nearest"
    )
    shards = ShardSet(out)
    assert shards.manifest.label_space is None and shards.manifest.classes == []
    assert set(shards.manifest.fields) == {"image", "depth"}
    assert shards.manifest.splits == {"test": 2, "train": 3}
    assert dataset_spec("diode").label_space == ""  # the registry's "no label space"
    for (folder, kind), scans in SCANS.items():
        for scene, scan in scans:
            name = _scan_name(kind, scene, scan)
            depth = shards.read(f"{folder}-{name}", ["depth"])["depth"]
            raw = _diode_depth(name)[0][:, :, 0]
            assert depth[0, 0] == 0 and depth[0, 3] == 0  # masked; NaN
            assert depth[0, 2] == 80.0  # the cap itself is kept
            assert depth[0, 1] == (0.0 if kind == "outdoor" else 90.0)  # the cap is outdoor's only
            assert np.array_equal(depth[1:], raw[1:])
    sample = ShardDataset(shards, shards.ids("train"), get_task("depth_supervised").fields)[0]
    assert sample["image"].shape == (3, DH, DW) and sample["depth"].shape == (DH, DW)


def test_diode_scene_type_filter_and_nearest_depth(diode_raw: Path, tmp_path: Path) -> None:
    for kind in ("indoors", "outdoor"):
        shards = ShardSet(
            convert("diode", diode_raw, tmp_path / kind, height=DH, width=DW, scene_type=kind, progress=False)
        )
        assert {s.split("/")[0] for s in shards.index["sequence"]} == {kind}
        assert shards.manifest.parameters["scene_type"] == kind
    with pytest.raises(ValueError, match="unknown scene_type 'indoor'"):
        convert("diode", diode_raw, tmp_path / "x", height=DH, width=DW, scene_type="indoor", progress=False)
    small = ShardSet(
        convert(
            "diode",
            diode_raw,
            tmp_path / "small",
            height=DH // 2,
            width=DW // 2,
            max_depth=50,
            progress=False,
        )
    )
    name = _scan_name("outdoor", 1, 2)
    depth = small.read(f"train-{name}", ["depth"])["depth"]
    raw = _diode_depth(name)[0][:, :, 0]
    kept = np.where(raw <= 50, raw, 0)
    assert set(np.unique(depth)) <= set(np.unique(kept)) | {0.0}  # sampled, never averaged
    assert (depth <= 50).all()


def _scan(folder: str = "train", kind: str = "indoors") -> Path:
    scene, scan = SCANS[(folder, kind)][0]
    return Path(folder, kind, f"scene_{scene:05d}", f"scan_{scan:05d}", _scan_name(kind, scene, scan))


def _diode_drop(suffix: str) -> Callable[[Path], Path]:
    def mutate(root: Path) -> Path:
        path = root / f"{_scan()}{suffix}"
        path.unlink()
        return path

    return mutate


def _diode_mask_shape(root: Path) -> Path:
    path = root / f"{_scan()}_depth_mask.npy"
    np.save(path, np.ones((DH, DW + 1), np.float32))
    return path


@pytest.mark.parametrize(
    ("mutate", "error", "words"),
    [
        (_diode_drop("_depth.npy"), FileNotFoundError, "the depth of"),
        (_diode_drop("_depth_mask.npy"), FileNotFoundError, "the depth mask of"),
        (_diode_mask_shape, ValueError, "but"),
        (_drop("val/outdoor"), FileNotFoundError, "missing"),
    ],
)
def test_diode_bad_input_names_the_file(
    diode_raw: Path, tmp_path: Path, mutate: Callable[[Path], Path], error: type[Exception], words: str
) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(diode_raw, raw)
    culprit = mutate(raw)
    with pytest.raises(error, match=f"{re.escape(str(culprit))}.*{words}|{words}.*{re.escape(str(culprit))}"):
        convert("diode", raw, tmp_path / "out", height=DH, width=DW, progress=False)
