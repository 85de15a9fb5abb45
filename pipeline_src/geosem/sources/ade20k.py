"""Converter ``ade20k``: ADE20K SceneParsing (ADEChallengeData2016, docs/datasets.md section 4.1).

Reads ``ADEChallengeData2016/images/{training,validation}/*.jpg`` and the annotation PNGs of the same
stem under ``annotations/`` (uint8, 0 = other, 1..150 = the classes). ``training`` becomes split
``train``, ``validation`` split ``test``. Labels use mmsegmentation's ``reduce_zero_label``: value k is
train id k - 1 of ``ade150`` and 0 becomes 255 (ignore). Images of any size are resized to the variant
(image: area/linear, label: nearest); no crop, so the aspect ratio is not kept.
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
LABEL_SPACE = "ade150"
_TO_TRAIN = one_based_to_train_id(150)


@register_converter(
    "ade20k", version=CONVERTER_VERSION, label_space=LABEL_SPACE, reads=("ADEChallengeData2016",)
)
def convert_ade20k(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "ade20k",
    samples_per_part: int = 256,
    progress: bool = True,
) -> Path:
    base = Path(raw_dir) / "ADEChallengeData2016"
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is missing")
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(Path(raw_dir), "ADEChallengeData2016"),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE,
        parameters={"height": height, "width": width},
        samples_per_part=samples_per_part,
    ) as writer:
        for folder, split in (("training", "train"), ("validation", "test")):
            images = sorted((base / "images" / folder).glob("*.jpg"))
            if not images:
                raise FileNotFoundError(f"no images in {base / 'images' / folder}")
            for path in tqdm(images, desc=f"convert {dataset} {split}", disable=not progress):
                label_path = base / "annotations" / folder / f"{path.stem}.png"
                label = read_image(label_path)
                if label.ndim != 2:
                    raise ValueError(f"{label_path} has shape {label.shape}: annotations are one channel")
                check_label_values(label, 150, label_path, sample=path.stem)
                image = read_rgb(path)
                if image.shape[:2] != label.shape:
                    raise ValueError(f"{path} is {image.shape[:2]} but its annotation is {label.shape}")
                writer.add(
                    {
                        "image": resize_image(image, height, width),
                        "label": resize_nearest(_TO_TRAIN[label], height, width),
                    },
                    {"id": path.stem, "split": split, "sequence": folder},
                )
    return Path(out_dir)
