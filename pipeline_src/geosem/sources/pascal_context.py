"""Converter ``pascal_context``: Pascal Context 59 from the per-image .mat release (docs/datasets.md 4.6).

Reads the VOC 2010 images and split lists (``VOCdevkit/VOC2010/JPEGImages/*.jpg``,
``VOCdevkit/VOC2010/ImageSets/Main/{train,val}.txt``, from ``VOCtrainval_03-May-2010.tar``) and the
Context annotations as ``trainval.tar.gz`` extracts: ``trainval/<id>.mat`` (variable ``LabelMap``, uint16
ids of the 459-class space, 0 = unlabelled) and ``labels.txt`` (``<id>: <name>``, 459 lines). The Detail
API route (``trainval_merged.json``) is not used: its package is not installable.

Convention: mmsegmentation's ``PascalContextDataset59``. The 59 classes, in alphabetical order, are train
ids 0..58 of ``context59``; background, unlabelled and the other 400 classes are 255 (ignored), i.e. the
60-class mapping with ``reduce_zero_label``. The 459-ids of the 59 classes are fixed in
``geosem.labelspaces``; ``labels.txt`` is read to check that the release names them as expected, so a
different id space stops the conversion instead of training on wrong classes.

VOC 2010 Main ``train`` becomes split ``train``, ``val`` split ``test``: these are the image sets the
Context annotations cover. An id in a split list without its ``.mat`` or image is an error naming the
file. Images are resized to the variant (image: area/linear, label: nearest).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from geosem.labelspaces import (
    CONTEXT59_CLASSES,
    CONTEXT459_IDS_OF_59,
    CONTEXT459_MAX_ID,
    context459_to_train_id,
)
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import (
    check_label_values,
    check_same_size,
    read_id_list,
    read_rgb,
    resize_image,
    resize_nearest,
    source_version,
)
from geosem.sources.matfile import load_mat

CONVERTER_VERSION = "1"
LABEL_SPACE = "context59"
VOC = "VOCdevkit/VOC2010"
SPLITS = (("train", "train"), ("val", "test"))
_TO_TRAIN = context459_to_train_id()


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())  # "tv monitor" and "tvmonitor" are one class


def check_labels_txt(path: Path) -> None:
    """Check that ``labels.txt`` names each of the 59 classes at the 459-id GeoSem maps it from."""
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing (the 459 class names of Pascal Context's trainval.tar.gz)"
        )
    names: dict[int, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(\d+)\s*:\s*(.+?)\s*", line)
        if match is None:
            raise ValueError(f"{path} line {number}: {line!r} is not '<id>: <name>'")
        names[int(match.group(1))] = match.group(2)
    wrong = [
        f"{class_id}: {names.get(class_id, '(absent)')!r} (expected {name!r})"
        for class_id, name in zip(CONTEXT459_IDS_OF_59, CONTEXT59_CLASSES, strict=True)
        if _normal(names.get(class_id, "")) != _normal(name)
    ]
    if wrong:
        raise ValueError(
            f"{path} does not name the 59 classes at their 459-class ids: {'; '.join(wrong[:5])}: "
            "this is not the labels.txt of Pascal Context's trainval.tar.gz"
        )


def read_label_map(path: Path) -> np.ndarray:
    """``LabelMap`` of one Context .mat file: 2-D integer ids of the 459-class space."""
    variables = load_mat(path)
    if "LabelMap" not in variables:
        raise ValueError(f"{path} has no variable 'LabelMap': not a Pascal Context trainval file")
    label = np.asarray(variables["LabelMap"])
    if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
        raise ValueError(f"{path}: LabelMap has shape {label.shape} and dtype {label.dtype}")
    return label


@register_converter(
    "pascal_context",
    version=CONVERTER_VERSION,
    label_space=LABEL_SPACE,
    reads=(
        f"{VOC}/JPEGImages",
        f"{VOC}/ImageSets/Main/train.txt",
        f"{VOC}/ImageSets/Main/val.txt",
        "trainval",
        "labels.txt",
    ),
)
def convert_pascal_context(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "pascal_context",
    samples_per_part: int = 256,
    progress: bool = True,
) -> Path:
    root = Path(raw_dir)
    for folder in (root / VOC / "JPEGImages", root / "trainval"):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder} is missing")
    check_labels_txt(root / "labels.txt")
    lists = {split: read_id_list(root / VOC / "ImageSets" / "Main" / f"{name}.txt") for name, split in SPLITS}
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(root, "VOCtrainval_03-May-2010+pascal-context-trainval"),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE,
        parameters={"height": height, "width": width},
        samples_per_part=samples_per_part,
    ) as writer:
        for split, ids in lists.items():
            for sample_id in tqdm(ids, desc=f"convert {dataset} {split}", disable=not progress):
                label_path = root / "trainval" / f"{sample_id}.mat"
                label = read_label_map(label_path)
                # 0 = unlabelled is a value of this encoding; nothing above 459 is.
                check_label_values(label, CONTEXT459_MAX_ID, label_path, allowed=(), sample=sample_id)
                image_path = root / VOC / "JPEGImages" / f"{sample_id}.jpg"
                image = read_rgb(image_path)
                check_same_size(image, label, image_path, label_path)
                writer.add(
                    {
                        "image": resize_image(image, height, width),
                        "label": resize_nearest(_TO_TRAIN[label], height, width),
                    },
                    {"id": sample_id, "split": split, "sequence": "voc2010"},
                )
    return Path(out_dir)
