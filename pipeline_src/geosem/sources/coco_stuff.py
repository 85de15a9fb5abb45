"""Converter ``coco_stuff``: COCO-Stuff 164k (docs/datasets.md section 4.4).

Reads the layout mmsegmentation uses after unzipping ``train2017.zip``, ``val2017.zip`` and
``stuffthingmaps_trainval2017.zip``: ``images/{train2017,val2017}/%012d.jpg`` and the stuff+thing map of
the same stem in ``annotations/{train2017,val2017}/%012d.png``. ``train2017`` becomes split ``train``,
``val2017`` split ``test``.

A map's value is COCO category id - 1 (0..181) and 255 is unlabelled. Eleven thing ids were defined but
never annotated; the 171 used values map in order onto ``coco171`` train ids 0..170 (value 0 person -> 0,
value 12 stop sign -> 11, ..., value 181 wood -> 170), 255 stays 255. An unused value, or one above 181,
cannot occur in this encoding (it points at another one, e.g. 1-based ids) and stops the conversion naming
the file, rather than becoming 255 quietly as in mmsegmentation's converter. Images are resized to the
variant (image: area/linear, label: nearest).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from geosem.labelspaces import COCO_STUFF_MAX_VALUE, COCO_STUFF_UNUSED_VALUES, coco_stuff_to_train_id
from geosem.shards.writer import ShardWriter
from geosem.sources import register_converter
from geosem.sources.common import (
    check_label_values,
    check_same_size,
    read_index_png,
    read_rgb,
    resize_image,
    resize_nearest,
    source_version,
)

CONVERTER_VERSION = "1"
LABEL_SPACE = "coco171"
SPLITS = (("train2017", "train"), ("val2017", "test"))
_TO_TRAIN = coco_stuff_to_train_id()


def check_unused_values(label: np.ndarray, path: Path, sample: str) -> None:
    """Refuse the 11 never-annotated category values: they lie inside 0..181, so ``check_label_values``
    lets them through, and the lookup table would quietly make them 255."""
    unused = np.isin(label, COCO_STUFF_UNUSED_VALUES)
    if unused.any():
        raise ValueError(
            f"sample {sample!r}: {path} holds label value(s) {np.unique(label[unused]).tolist()} that are "
            f"unused COCO category ids - 1 ({', '.join(map(str, COCO_STUFF_UNUSED_VALUES))}): not a "
            "COCO-Stuff 164k stuffthingmap (values = category id - 1, 255 = unlabelled)"
        )


@register_converter(
    "coco_stuff",
    version=CONVERTER_VERSION,
    label_space=LABEL_SPACE,
    reads=tuple(f"{kind}/{folder}" for kind in ("images", "annotations") for folder, _ in SPLITS),
)
def convert_coco_stuff(
    raw_dir: Path,
    out_dir: Path,
    *,
    height: int,
    width: int,
    dataset: str = "coco_stuff",
    samples_per_part: int = 256,
    progress: bool = True,
) -> Path:
    root = Path(raw_dir)
    for folder, _ in SPLITS:
        for kind in ("images", "annotations"):
            if not (root / kind / folder).is_dir():
                raise FileNotFoundError(f"{root / kind / folder} is missing")
    with ShardWriter(
        out_dir,
        dataset=dataset,
        variant=Path(out_dir).name,
        source_version=source_version(root, "cocostuff-164k"),
        converter_version=CONVERTER_VERSION,
        label_space=LABEL_SPACE,
        parameters={"height": height, "width": width},
        samples_per_part=samples_per_part,
    ) as writer:
        for folder, split in SPLITS:
            images = sorted((root / "images" / folder).glob("*.jpg"))
            if not images:
                raise FileNotFoundError(f"no images in {root / 'images' / folder}")
            for path in tqdm(images, desc=f"convert {dataset} {split}", disable=not progress):
                label_path = root / "annotations" / folder / f"{path.stem}.png"
                # Pillow, not OpenCV: a palette-mode map would otherwise come back as colours.
                label = read_index_png(label_path)
                check_label_values(label, COCO_STUFF_MAX_VALUE, label_path, sample=path.stem)
                check_unused_values(label, label_path, path.stem)
                image = read_rgb(path)
                check_same_size(image, label, path, label_path)
                writer.add(
                    {
                        "image": resize_image(image, height, width),
                        "label": resize_nearest(_TO_TRAIN[label], height, width),
                    },
                    {"id": path.stem, "split": split, "sequence": folder},
                )
    return Path(out_dir)
