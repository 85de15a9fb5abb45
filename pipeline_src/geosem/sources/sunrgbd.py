"""Converter ``sunrgbd``: SUN RGB-D 37-class segmentation in the ankurhanda/sunrgbd-meta-data mirror
layout (docs/datasets.md section 4.2).

Reads ``SUNRGBD-test_images/img-%06d.jpg`` (split ``test``), ``SUNRGBD-train_images/img-%06d.jpg``
(split ``train``) and the label PNG of each image id in ``sunrgbd_train_test_labels/img-%06d.png``
(uint8, 0 = void, 1..37 = SUN's classes, equal to NYU-40's first 37), so the split comes from which
image folder holds an id (the mirror's label files run test first). Labels become ``sun37`` train ids
k - 1, void 255; images of every sensor size are resized to the variant.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from geosem.labelspaces import one_based_to_train_id
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import (
    check_label_values,
    read_image,
    read_rgb,
    resize_image,
    resize_nearest,
    source_version,
)

CONVERTER_VERSION = "1"
LABEL_SPACE = "sun37"
_TO_TRAIN = one_based_to_train_id(37)


@register_converter(
    "sunrgbd",
    version=CONVERTER_VERSION,
    label_space=LABEL_SPACE,
    reads=("SUNRGBD-test_images", "SUNRGBD-train_images", "sunrgbd_train_test_labels"),
)
def convert_sunrgbd(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "sunrgbd",
    samples_per_part: int = 256,
    progress: bool = True,
) -> Path:
    root = Path(raw_dir)
    labels = root / "sunrgbd_train_test_labels"
    if not labels.is_dir():
        raise FileNotFoundError(f"{labels} is missing")
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(root, "sunrgbd-meta-data"),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE,
        parameters={"height": height, "width": width},
        samples_per_part=samples_per_part,
    ) as writer:
        for folder, split in (("SUNRGBD-train_images", "train"), ("SUNRGBD-test_images", "test")):
            images = sorted((root / folder).glob("img-*.jpg"))
            if not images:
                raise FileNotFoundError(f"no images in {root / folder}")
            for path in tqdm(images, desc=f"convert {dataset} {split}", disable=not progress):
                label_path = labels / f"{path.stem}.png"
                label = read_image(label_path)
                if label.ndim != 2:
                    raise ValueError(f"{label_path} has shape {label.shape}: labels are one channel")
                check_label_values(label, 37, label_path, sample=path.stem)
                image = read_rgb(path)
                if image.shape[:2] != label.shape:
                    raise ValueError(f"{path} is {image.shape[:2]} but its label is {label.shape}")
                writer.add(
                    {
                        "image": resize_image(image, height, width),
                        "label": resize_nearest(_TO_TRAIN[label], height, width),
                    },
                    {"id": path.stem, "split": split, "sequence": folder},
                )
    return Path(out_dir)
