"""The COCO-Stuff, Pascal VOC (+ SBD) and Pascal Context converters on tiny raw trees fabricated here in the
real releases' layouts (docs/datasets.md sections 4.4 to 4.6 and the traps of section 7): the exact label
mapping on chosen pixels, the splits, and the errors that name a bad file."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from geosem.labelspaces import (
    CONTEXT59_CLASSES,
    CONTEXT459_IDS_OF_59,
    IGNORE_INDEX,
    class_names,
    coco_stuff_to_train_id,
)
from geosem.shards.reader import ShardSet
from geosem.sources import convert, converter_spec
from PIL import Image
from scipy.io import savemat

H, W = 12, 16
FAST = {"height": H, "width": W, "progress": False}


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (H, W)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)


def _voc_palette() -> list[int]:
    """VOC's bit-interleaved colour map (index 255 = (224, 224, 192)), flattened for Pillow."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette


def _png(path: Path, ids: np.ndarray, palette: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.ascontiguousarray(ids, dtype=np.uint8)
    image = Image.frombytes("P" if palette else "L", (data.shape[1], data.shape[0]), data.tobytes())
    if palette:
        image.putpalette(_voc_palette())  # the values stay indices; the palette gives them VOC's colours
    image.save(path)


def _block_label(values: list[int]) -> np.ndarray:
    """An H x W label whose first row starts with ``values`` (one pixel each), the rest ``values[0]``."""
    label = np.full((H, W), values[0], dtype=np.int64)
    label[0, : len(values)] = values
    return label


def _label(shards: Path, sample_id: str) -> np.ndarray:
    return ShardSet(shards).read(sample_id, ["label"])["label"]


# --- COCO-Stuff 164k ----------------------------------------------------------------------------------

COCO_TRAIN = ["000000000009", "000000000025"]
COCO_VAL = ["000000000139"]


def _coco_tree(root: Path) -> Path:
    """images/{train2017,val2017}/%012d.jpg + annotations/.../%012d.png (greyscale, one palette map)."""
    for n, (folder, ids) in enumerate((("train2017", COCO_TRAIN), ("val2017", COCO_VAL))):
        for k, stem in enumerate(ids):
            _jpeg(root / "images" / folder / f"{stem}.jpg", seed=10 * n + k)
            # 0 person, 12 stop sign (first id after the gap at 11), 91 banner (first stuff), 181 wood, 255
            values = [0, 12, 91, 181, 255, 20 + k]
            _png(root / "annotations" / folder / f"{stem}.png", _block_label(values), palette=k == 1)
    return root


def test_coco_stuff_maps_values_to_171_train_ids_and_splits(tmp_path: Path) -> None:
    raw = _coco_tree(tmp_path / "raw" / "coco_stuff")
    out = convert("coco_stuff", raw, tmp_path / "shards" / f"{H}x{W}", **FAST)
    shards = ShardSet(out)
    assert shards.manifest.label_space == "coco171" and len(class_names("coco171")) == 171
    assert shards.ids("train") == COCO_TRAIN and shards.ids("test") == COCO_VAL
    for stem in COCO_TRAIN + COCO_VAL:
        row = _label(out, stem)[0, :5].tolist()
        assert row == [0, 11, 80, 170, IGNORE_INDEX], stem  # also for the palette map: its index, not RGB
    assert [_label(out, stem)[0, 5] for stem in COCO_TRAIN] == [19, 20]  # values 20, 21: one gap below
    assert class_names("coco171")[11] == "stop sign" and class_names("coco171")[80] == "banner"
    table = coco_stuff_to_train_id()
    assert table[90] == IGNORE_INDEX and table[89] == 79 and table[10] == 10  # gaps close up in order


def test_coco_stuff_unused_id_and_out_of_range_value_stop_naming_the_file(tmp_path: Path) -> None:
    raw = _coco_tree(tmp_path / "raw" / "coco_stuff")
    png = raw / "annotations" / "train2017" / f"{COCO_TRAIN[0]}.png"
    _png(png, _block_label([0, 44]), palette=False)  # 44 = plate, never annotated
    with pytest.raises(ValueError, match=re.escape(str(png)) + r".*\[44\].*unused"):
        convert("coco_stuff", raw, tmp_path / "out", **FAST)
    _png(png, _block_label([0, 200]), palette=False)
    with pytest.raises(ValueError, match=re.escape(str(png)) + r".*\[200\]"):
        convert("coco_stuff", raw, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_coco_stuff_bad_input_is_an_error_naming_the_file(tmp_path: Path) -> None:
    raw = _coco_tree(tmp_path / "raw" / "coco_stuff")
    png = raw / "annotations" / "val2017" / f"{COCO_VAL[0]}.png"
    _png(png, np.zeros((H + 2, W), np.uint8), palette=False)  # a label of another size
    with pytest.raises(ValueError, match=re.escape(str(png)) + r" is \(14, 16\)"):
        convert("coco_stuff", raw, tmp_path / "out", **FAST)
    png.unlink()  # an image without its label
    with pytest.raises(FileNotFoundError, match=re.escape(str(png))):
        convert("coco_stuff", raw, tmp_path / "out", **FAST)
    shutil.rmtree(raw / "images" / "val2017")
    with pytest.raises(FileNotFoundError, match=re.escape(str(raw / "images" / "val2017"))):
        convert("coco_stuff", raw, tmp_path / "out", **FAST)


# --- Pascal VOC 2012 + SBD ----------------------------------------------------------------------------

VOC_TRAIN, VOC_VAL = ["2007_000032", "2007_000039"], ["2007_000033", "2007_000042"]
SBD_TRAIN, SBD_VAL = ["2007_000039", "2008_000002", "2007_000033"], ["2008_000003"]


def _sbd_mat(path: Path, segmentation: np.ndarray) -> None:
    """A ``cls/*.mat`` as SBD ships it: struct GTcls with Boundaries, Segmentation, CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    gt = {
        "Boundaries": np.empty((20, 1), dtype=object),
        "Segmentation": segmentation.astype(np.uint8),
        "CategoriesPresent": np.unique(segmentation[segmentation > 0]).astype(np.uint8).reshape(-1, 1),
    }
    for k in range(20):
        gt["Boundaries"][k, 0] = np.zeros((0, 0))
    savemat(path, {"GTcls": gt}, do_compression=True)


def _voc_tree(root: Path, sbd: bool = True) -> Path:
    voc = root / "VOCdevkit" / "VOC2012"
    sets = voc / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(VOC_TRAIN) + "\n")
    (sets / "val.txt").write_text("\n".join(VOC_VAL) + "\n")
    for k, stem in enumerate(VOC_TRAIN + VOC_VAL):
        _jpeg(voc / "JPEGImages" / f"{stem}.jpg", seed=k)
        # 15 person is colour (192, 128, 128) in the palette; 255 the border, (224, 224, 192)
        _png(voc / "SegmentationClass" / f"{stem}.png", _block_label([0, 15, 255, 20, k + 1]), palette=True)
    if sbd:
        dataset = root / "benchmark_RELEASE" / "dataset"
        dataset.mkdir(parents=True)
        (dataset / "train.txt").write_text("\n".join(SBD_TRAIN) + "\n")
        (dataset / "val.txt").write_text("\n".join(SBD_VAL) + "\n")
        for k, stem in enumerate(SBD_TRAIN + SBD_VAL):
            _sbd_mat(dataset / "cls" / f"{stem}.mat", _block_label([7, 3, 20, 0, k]))
        _jpeg(voc / "JPEGImages" / "2008_000002.jpg", seed=20)
        _jpeg(dataset / "img" / "2008_000003.jpg", seed=21)  # only in SBD's own image folder
    return root


def test_pascal_voc_trainaug_uses_sbd_but_never_voc_val(tmp_path: Path) -> None:
    raw = _voc_tree(tmp_path / "raw" / "pascal_voc")
    out = convert("pascal_voc", raw, tmp_path / "shards" / f"{H}x{W}", **FAST)
    shards = ShardSet(out)
    assert shards.manifest.label_space == "voc21" and class_names("voc21")[15] == "person"
    # VOC train + (SBD train | SBD val) - VOC val: 2007_000033 is in SBD train but is VOC val.
    assert sorted(shards.ids("train")) == sorted([*VOC_TRAIN, "2008_000002", "2008_000003"])
    assert shards.ids("test") == VOC_VAL
    for k, stem in enumerate(VOC_TRAIN + VOC_VAL):  # palette index, border 255 kept as ignore
        assert _label(out, stem)[0, :5].tolist() == [0, 15, IGNORE_INDEX, 20, k + 1], stem
    for k, stem in ((1, "2008_000002"), (3, "2008_000003")):  # SBD class k -> train id k
        assert _label(out, stem)[0, :5].tolist() == [7, 3, 20, 0, k], stem
    assert shards.row("2007_000039")["sequence"] == "voc"  # in SBD too, but VOC's own label wins
    assert shards.row("2008_000002")["sequence"] == "sbd"
    assert "benchmark_RELEASE" in shards.manifest.source_version


def test_pascal_voc_without_sbd_trains_on_voc_train_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = _voc_tree(tmp_path / "raw" / "pascal_voc", sbd=False)
    with caplog.at_level(logging.WARNING, logger="geosem.sources.pascal_voc"):
        out = convert("pascal_voc", raw, tmp_path / "shards" / f"{H}x{W}", **FAST)
    assert ShardSet(out).ids("train") == VOC_TRAIN and ShardSet(out).ids("test") == VOC_VAL
    assert any("benchmark_RELEASE" in r.getMessage() and "trainaug" in r.getMessage() for r in caplog.records)


def test_pascal_voc_bad_labels_stop_naming_the_file(tmp_path: Path) -> None:
    raw = _voc_tree(tmp_path / "raw" / "pascal_voc")
    png = raw / "VOCdevkit" / "VOC2012" / "SegmentationClass" / f"{VOC_VAL[0]}.png"
    Image.open(png).convert("RGB").save(png)  # colours instead of indices
    with pytest.raises(ValueError, match=re.escape(str(png)) + r" is a mode 'RGB' image"):
        convert("pascal_voc", raw, tmp_path / "out", **FAST)
    _png(png, _block_label([0, 21]), palette=True)  # 21 classes: 0..20
    with pytest.raises(ValueError, match=re.escape(str(png)) + r".*\[21\]"):
        convert("pascal_voc", raw, tmp_path / "out", **FAST)
    png.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(png))):
        convert("pascal_voc", raw, tmp_path / "out", **FAST)
    mat = raw / "benchmark_RELEASE" / "dataset" / "cls" / "2008_000002.mat"
    _sbd_mat(mat, _block_label([0, 255]))  # SBD has no borders: 255 is not in its encoding
    _png(png, _block_label([0]), palette=True)
    with pytest.raises(ValueError, match=re.escape(str(mat)) + r".*\[255\]"):
        convert("pascal_voc", raw, tmp_path / "out", **FAST)
    _sbd_mat(mat, np.zeros((H, W + 1), np.uint8))
    with pytest.raises(ValueError, match=re.escape(str(mat)) + r" is \(12, 17\)"):
        convert("pascal_voc", raw, tmp_path / "out", **FAST)


# --- Pascal Context 59 --------------------------------------------------------------------------------

CTX_TRAIN, CTX_VAL = ["2008_000002", "2008_000003"], ["2008_000007"]


def _labels_txt(path: Path) -> None:
    names = {i: f"class{i:03d}" for i in range(1, 460)}
    names.update(dict(zip(CONTEXT459_IDS_OF_59, CONTEXT59_CLASSES, strict=True)))
    names[1], names[308] = "accordion", "potted plant"  # spelt apart: still pottedplant
    path.write_text("".join(f"{i}: {name}\n" for i, name in names.items()))


def _context_tree(root: Path) -> Path:
    voc = root / "VOCdevkit" / "VOC2010"
    main = voc / "ImageSets" / "Main"
    main.mkdir(parents=True)
    (main / "train.txt").write_text("\n".join(CTX_TRAIN) + "\n")
    (main / "val.txt").write_text("\n".join(CTX_VAL) + "\n")
    _labels_txt(root / "labels.txt")
    (root / "trainval").mkdir()
    for k, stem in enumerate([*CTX_TRAIN, *CTX_VAL, "2008_000099"]):  # the last one is in no split list
        _jpeg(voc / "JPEGImages" / f"{stem}.jpg", seed=30 + k)
        # 2 aeroplane, 458 wood, 427 tvmonitor, 1 accordion (not of the 59), 0 unlabelled, 459 the last id
        label = _block_label([2, 458, 427, 1, 0, 459, 397 if k else 33])
        savemat(root / "trainval" / f"{stem}.mat", {"LabelMap": label.astype(np.uint16)})
    return root


def test_pascal_context_maps_459_ids_to_59_classes_background_ignored(tmp_path: Path) -> None:
    raw = _context_tree(tmp_path / "raw" / "pascal_context")
    out = convert("pascal_context", raw, tmp_path / "shards" / f"{H}x{W}", **FAST)
    shards = ShardSet(out)
    assert shards.manifest.label_space == "context59" and len(shards) == 3
    assert shards.ids("train") == CTX_TRAIN and shards.ids("test") == CTX_VAL
    names = class_names("context59")
    ignore = IGNORE_INDEX
    assert _label(out, CTX_TRAIN[0])[0, :7].tolist() == [
        0,
        58,
        54,
        ignore,
        ignore,
        ignore,
        names.index("book"),
    ]
    assert _label(out, CTX_VAL[0])[0, 6] == names.index("table") == 49
    assert (names[0], names[54], names[58]) == ("aeroplane", "tvmonitor", "wood")


def test_pascal_context_bad_input_stops_naming_the_file(tmp_path: Path) -> None:
    raw = _context_tree(tmp_path / "raw" / "pascal_context")
    mat = raw / "trainval" / f"{CTX_VAL[0]}.mat"
    savemat(mat, {"LabelMap": _block_label([0, 460]).astype(np.uint16)})
    with pytest.raises(ValueError, match=re.escape(str(mat)) + r".*\[460\]"):
        convert("pascal_context", raw, tmp_path / "out", **FAST)
    savemat(mat, {"LabelMap": np.zeros((H, W - 1), np.uint16)})
    with pytest.raises(ValueError, match=re.escape(str(mat)) + r" is \(12, 15\)"):
        convert("pascal_context", raw, tmp_path / "out", **FAST)
    savemat(mat, {"Labels": np.zeros((H, W), np.uint16)})
    with pytest.raises(ValueError, match=re.escape(str(mat)) + r" has no variable 'LabelMap'"):
        convert("pascal_context", raw, tmp_path / "out", **FAST)
    mat.write_bytes(mat.read_bytes()[:200])  # a copy cut short
    with pytest.raises(ValueError, match=r"cannot read MAT-file " + re.escape(str(mat))):
        convert("pascal_context", raw, tmp_path / "out", **FAST)
    mat.unlink()  # listed in val.txt but not annotated
    with pytest.raises(FileNotFoundError, match=re.escape(str(mat))):
        convert("pascal_context", raw, tmp_path / "out", **FAST)
    lines = (raw / "labels.txt").read_text().replace("2: aeroplane", "2: airplane")
    (raw / "labels.txt").write_text(lines)  # another id space: refused before any label is mapped
    with pytest.raises(ValueError, match=re.escape(str(raw / "labels.txt")) + r".*2: 'airplane'"):
        convert("pascal_context", raw, tmp_path / "out", **FAST)
    shutil.rmtree(raw / "trainval")
    with pytest.raises(FileNotFoundError, match=re.escape(str(raw / "trainval"))):
        convert("pascal_context", raw, tmp_path / "out", **FAST)


# --- all three ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "label_space", "tree"),
    [
        ("coco_stuff", "coco171", _coco_tree),
        ("pascal_voc", "voc21", _voc_tree),
        ("pascal_context", "context59", _context_tree),
    ],
)
def test_registered_reads_exist_and_labels_resize_nearest(
    tmp_path: Path, name: str, label_space: str, tree: Callable[[Path], Path]
) -> None:
    spec = converter_spec(name)
    assert (spec.label_space, spec.version) == (label_space, "1") and spec.description
    raw = tree(tmp_path / "raw" / name)
    assert all((raw / path).exists() for path in spec.reads), spec.reads  # the workflow's inputs
    out = convert(name, raw, tmp_path / "shards" / "24x8", height=24, width=8, progress=False)
    shards = ShardSet(out)
    for sample_id in shards.ids():
        arrays = shards.read(sample_id, ["image", "label"])
        assert arrays["image"].shape == (24, 8, 3) and arrays["label"].shape == (24, 8)
        known = set(range(len(class_names(label_space)))) | {IGNORE_INDEX}
        assert set(np.unique(arrays["label"]).tolist()) <= known  # nearest: no blended ids
